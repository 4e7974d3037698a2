"""Click command of stage 2: ``gmia anonymize``. Reads options, resolves the config, calls ``anonymize_dataset``."""

from __future__ import annotations

import json

import click

from ..cli_options import input_options, machine_options, open_input, quiet_dry_run
from ..config import PRIVACY_LEVELS
from .config import ENGINES, PRECISIONS, PRESETS, SPEED_PROFILES, UTILITY_FORMS, anonymize_config, config_dict

__all__ = ["anonymize", "fit_domain_command", "fit_split_command", "dicom_policy"]


def dicom_policy(dates: str | None, max_shift: int | None, keep_sex_age: bool):
    """The DICOM header options given on the command line (None when none is)."""
    from ..data.adapters.dicom_deid import DicomPolicy

    if dates is None and max_shift is None and not keep_sex_age:
        return None
    default = DicomPolicy()
    return DicomPolicy(dates=dates or default.dates, max_shift_days=max_shift or default.max_shift_days,
                       characteristics="banded" if keep_sex_age else default.characteristics)


@click.command()
@click.option("--preset", default="phantom-cxr64", show_default=True, type=click.Choice(list(PRESETS)))
@input_options
@click.option("--output-format", type=click.Choice(["dicom", "png"]), default=None,
              help="Released files: dicom (header de-identified by the DICOM PS3.15 Basic Profile, see docs/dicom.md) "
                   "or png. Default: the input's (DICOM files in: dicom; anything else: png).")
@click.option("--dicom-dates", type=click.Choice(["shift", "remove"]), default=None,
              help="DICOM output: dates moved back by a keyed per-patient offset (shift, the default) or removed.")
@click.option("--dicom-max-shift", type=click.IntRange(min=1), default=None,
              help="DICOM output: the largest date shift, in days (default 3650).")
@click.option("--dicom-keep-sex-age", is_flag=True,
              help="DICOM output: keep the patient's sex, and the age in 5-year bands (90+ as one band).")
@click.option("--split", default=None, help="Split to anonymize (phantom folders: train/val/test; default all).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder (never overwritten).")
@click.option("--privacy", type=click.Choice(list(PRIVACY_LEVELS)), default=None,
              help="Named privacy level: " + ", ".join(f"{k} (m={v:g})" for k, v in PRIVACY_LEVELS.items()) +
                   ". Default: the preset's (phantoms: medium with their re-drawn start, high from E(x)).")
@click.option("--margin", type=float, default=None, help="Identity margin m in [-1, 1] (lower = more private).")
@click.option("--checkpoints", type=click.Path(file_okay=False), default="checkpoints", show_default=True,
              help="Folder holding <preset>/{aegan,identity,utility}.*")
@click.option("--engine", type=click.Choice(list(ENGINES)), default=None,
              help="optimize: the per-image latent optimizer; amortized: one pass of the preset's trained anonymizer "
                   "network (`gmia train anonymizer`), the optimizer only for files the privacy gate refuses. "
                   "Default: the preset's.")
@click.option("--correction", type=click.FloatRange(0, 1), default=None,
              help="--engine amortized: the share of the network's learned correction applied to the re-drawn start "
                   "(1: all; less brings back less of the source, findings and patient cues alike, and sends more "
                   "files to the nudge). Default: the preset's.")
@click.option("--batch-size", type=int, default=None, help="Images optimized together.")
@click.option("--max-steps", type=int, default=None, help="Steps per image before it is withheld.")
@click.option("--lr", type=float, default=None, help="Adam learning rate on the latent codes.")
@click.option("--patience", type=int, default=None,
              help="Steps without a utility gain before a private image stops (0: stop at the hinge, fastest).")
@click.option("--refine-steps", type=int, default=None, help="Projection refinement steps for w_0 (0: E(x) only).")
@click.option("--speed", type=click.Choice(list(SPEED_PROFILES)), default=None,
              help="quality (default): the preset's settings (surrogate pull, utility polish after the hinge). "
                   "fast: stop at the hinge from E(x), no surrogate, lr 0.1, bf16 where the hardware has it "
                   "(flags still win).")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default=None,
              help="Optimization precision (auto: bf16 on CUDA, fp32 on CPU; auto-bf16: also bf16 on CPUs with "
                   "native bf16); default auto, auto-bf16 with --engine amortized. The privacy gate is always fp32.")
@click.option("--lambda-mdl", type=float, default=None,
              help="Weight of the MFM/MDL third term (0: off). Needs <preset>/mfm.* and decoupler.* checkpoints.")
@click.option("--lambda-sem", type=float, default=None, help="MDL term: weight of the semantic-part distance.")
@click.option("--lambda-mid", type=float, default=None, help="MDL term: weight of the MFM identity-part hinge.")
@click.option("--mdl-margin", type=float, default=None, help="MDL term: margin m' of the identity-part hinge "
              "(default: the decoupler's calibrated one).")
@click.option("--lambda-lesion", type=float, default=None,
              help="Weight of the lesion-map term (1 - soft Dice of E_ut's lesion maps; face presets).")
@click.option("--lambda-place", type=float, default=None,
              help="Weight of the finding-place term: pixel difference where E_ut sees the findings (0: off).")
@click.option("--place-findings", default=None,
              help="Comma-separated findings whose place that term keeps (default: all of E_ut's).")
@click.option("--lambda-surrogate", type=float, default=None,
              help="Weight of the pull towards a generated surrogate identity (0: off). Needs "
                   "<preset>/latent-prior.safetensors.")
@click.option("--surrogate-cos", type=float, default=None,
              help="Surrogate pull: cosine to the surrogate identity at which it is met.")
@click.option("--redraw", type=click.FloatRange(0, 1), default=None,
              help="Start from a code that keeps only the source's findings, the rest re-drawn from a surrogate "
                   "(0: off, 1: all but the findings). Needs <preset>/latent-split.* (gmia fit-split).")
@click.option("--target-auc", type=click.FloatRange(0.5, 1.0), default=None,
              help="The privacy asked in attacker terms: the adaptive attacker's expected own-source AUC on held-out "
                   "patients. Sets --redraw from the table of the privacy level (--privacy, default the preset's) in "
                   "<preset>/calibration.json (gmia calibrate); refuses a target the table cannot reach.")
@click.option("--lambda-ut", type=float, default=None, help="Weight of the utility distance (1: the published "
              "setting; higher keeps more of the findings, and more of whatever else E_ut sees).")
@click.option("--lambda-ut2", type=float, default=None,
              help="Weight of the second utility network's feature distance (a plain CNN classifier, "
                   "<preset>/utility2.*; 0: off): utility kept as two network families read it.")
@click.option("--utility-form", type=click.Choice(list(UTILITY_FORMS)), default=None,
              help="Utility distance: l2/mse on E_ut's features, or 'findings' (its finding probabilities only).")
@click.option("--utility-jitter", type=click.IntRange(min=0), default=None,
              help="E_ut reads each step's image shifted by up to this many pixels (another shift each step), "
                   "against the source read the same way: utility kept by what survives a shift (0: off).")
@click.option("--limit", type=int, default=None, help="Only the first N records (of this shard).")
@click.option("--shard", default=None, help="i/n: this process takes records i, i+n, ... (same --out for all).")
@click.option("--resume", is_flag=True, help="Finish a killed run in --out (same settings).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run on a Ray cluster through Ray Data: --ray alone starts one on this machine; --ray auto joins "
                   "the cluster this machine belongs to; --ray ray://HOST:10001 a remote one. Needs "
                   "pip install 'gmia[ray]'.")
@click.option("--ray-actors", type=click.IntRange(min=1), default=2, show_default=True,
              help="With --ray: copies of the networks (actors), each with --threads CPU threads or one GPU.")
@click.option("--write-linkage", is_flag=True,
              help="Also write private/linkage.csv (source → pseudonym). It RE-IDENTIFIES the released set: keep "
                   "it with the source data, never release it.")
@click.option("--seed", type=int, default=None)
@machine_options
@click.option("--fail-on-error", is_flag=True, help="Exit with status 3 when any input could not be read.")
@click.option("--allow-out-of-domain", is_flag=True,
              help="Release inputs the domain guard says the model cannot represent (not a chest X-ray for a chest "
                   "preset, another modality...) instead of withholding them. They are marked in manifest.jsonl.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse input images declaring more pixels than this, before decoding (default 36 000 000).")
@quiet_dry_run
def anonymize(preset, input_dir, dataset, data_root, split, out, privacy, margin, checkpoints, engine, correction,
              batch_size, max_steps, lr, patience, refine_steps, speed, precision, lambda_mdl, lambda_sem, lambda_mid,
              mdl_margin, lambda_lesion, lambda_place, place_findings, lambda_surrogate, surrogate_cos, redraw,
              target_auc, lambda_ut, lambda_ut2, utility_form, utility_jitter,
              limit, shard, resume, ray_address, ray_actors, write_linkage, seed, device, threads,
              fail_on_error, allow_out_of_domain, max_pixels, dry_run, quiet, labels=None, image_column=None,
              patient_column=None, findings=None, output_format=None, dicom_dates=None, dicom_max_shift=None,
              dicom_keep_sex_age=False):
    """Anonymize a dataset (stage 2): writes OUT/images, labels.csv, manifest.jsonl, run.json.

    OUT/private/ holds the resume key (and the linkage with --write-linkage): never release that folder."""
    from .runner import anonymize_dataset, parse_shard

    calibration = table = None
    if target_auc is not None:
        calibration, table = _calibrated(preset, checkpoints, target_auc, privacy, margin, redraw)
        redraw, margin = calibration["redraw"], calibration.get("margin")  # the setting the table measured
    cfg = anonymize_config(preset, privacy=privacy, margin=margin, speed=speed, batch_size=batch_size,
                           max_steps=max_steps, lr=lr, patience=patience, refine_steps=refine_steps,
                           precision=precision, lambda_mdl=lambda_mdl, lambda_sem=lambda_sem, lambda_mid=lambda_mid,
                           mdl_margin=mdl_margin, lambda_lesion=lambda_lesion, lambda_place=lambda_place,
                           place_findings=None if place_findings is None else
                           tuple(f.strip() for f in place_findings.split(",") if f.strip()),
                           lambda_surrogate=lambda_surrogate, surrogate_cos=surrogate_cos,
                           redraw=redraw, lambda_ut=lambda_ut, lambda_ut2=lambda_ut2, utility_form=utility_form,
                           utility_jitter=utility_jitter, seed=seed, engine=engine, correction=correction)
    if table is not None:  # the table's AUCs are those of the stage-2 settings it was measured with
        from ..evaluation.calibrate import check_settings
        from ..networks import checkpoint_dir

        check_settings(table, cfg, checkpoint_dir(preset, checkpoints) / "calibration.json")
    shard_t = parse_shard(shard)
    # opened before --dry-run returns, so that a dry run also checks the input (its index: no image is read)
    data = open_input(preset, input_dir, dataset, data_root, split, labels, image_column, patient_column, findings)
    data.max_pixels = max_pixels
    if dry_run:
        click.echo(json.dumps({"out": out, "shard": shard_t, "limit": limit, "config": config_dict(cfg),
                               "calibration": calibration,
                               "input": {"records": len(data), "findings": list(data.findings)}}, indent=2))
        return
    from ..machine import set_threads  # here, not at the top: `gmia anonymize --help` stays fast (no torch)

    set_threads(threads)
    summary = anonymize_dataset(cfg, data, out, checkpoints=checkpoints, device=device, resume=resume,
                                shard=shard_t, limit=limit, write_linkage=write_linkage, progress=not quiet,
                                output_format=output_format,
                                dicom=dicom_policy(dicom_dates, dicom_max_shift, dicom_keep_sex_age),
                                allow_out_of_domain=allow_out_of_domain, ray_address=ray_address,
                                ray_actors=ray_actors, ray_threads=threads, calibration=calibration)
    click.echo(json.dumps(summary, indent=2))
    if fail_on_error and summary["this_call"]["error"]:
        raise SystemExit(3)


def _calibrated(preset, checkpoints, target_auc, privacy, margin, redraw) -> tuple[dict, dict]:
    """--target-auc: the setting the preset's calibration table gives (gmia.evaluation.calibrate), and the table."""
    from ..errors import ConfigError
    from ..evaluation.calibrate import load_calibration, pick_setting
    from ..networks import checkpoint_dir

    if margin is not None or redraw is not None:
        raise ConfigError("--target-auc sets the re-draw strength from the calibration table of a privacy level; "
                          "leave out --margin and --redraw (--privacy picks the level's table)")
    folder = checkpoint_dir(preset, checkpoints)
    level_margin = anonymize_config(preset, privacy=privacy).margin  # the named level's, or the preset's default
    table = load_calibration(folder, level_margin)
    setting = pick_setting(table, target_auc)
    at = f", margin {setting['margin']:g}" if setting.get("margin") is not None else ""
    click.echo(f"--target-auc {target_auc:g}: redraw {setting['redraw']:g}{at}, expected adaptive own-source AUC "
               f"{setting['expected_auc']:.3f} ({folder / 'calibration.json'})", err=True)
    return setting, table


@click.command("fit-domain")
@click.option("--preset", default="phantom-cxr64", show_default=True, type=click.Choice(list(PRESETS)))
@click.option("--data", type=click.Path(file_okay=False, exists=True), required=True,
              help="The model's training images (a phantom folder, or your own image folder).")
@click.option("--split", default="train", show_default=True,
              help="Phantom split the feature statistics come from (ignored for image folders).")
@click.option("--calibration-split", default="val", show_default=True,
              help="Phantom split of held-out patients that sets the thresholds (ignored for image folders).")
@click.option("--checkpoints", type=click.Path(file_okay=False), default="checkpoints", show_default=True,
              help="Folder holding <preset>/{aegan,utility}.*; domain-guard.* is written beside them.")
@click.option("--limit", type=int, default=2000, show_default=True, help="At most N images of each split.")
@machine_options
def fit_domain_command(preset, data, split, calibration_split, checkpoints, limit, device, threads):
    """Calibrate the out-of-domain guard (reconstruction error, E_ut feature distance) on training images."""
    from ..machine import set_threads
    from .domain import fit_domain_guard

    set_threads(threads)
    fit_domain_guard(preset, checkpoints, data, split, limit, device, calibration_split)


@click.command("fit-split")
@click.option("--preset", default="phantom-cxr64", show_default=True, type=click.Choice(list(PRESETS)))
@click.option("--data", type=click.Path(file_okay=False, exists=True), required=True,
              help="Labelled training images (a phantom folder, or your own folder with a labels file).")
@click.option("--split", default="train", show_default=True, help="Phantom split (ignored for image folders).")
@click.option("--checkpoints", type=click.Path(file_okay=False), default="checkpoints", show_default=True,
              help="Folder holding <preset>/{aegan,latent-prior}.*; latent-split.* is written beside them.")
@click.option("--rank", type=int, default=48, show_default=True, help="Directions of the kept finding subspace.")
@click.option("--limit", type=int, default=None, help="Only the first N images.")
@machine_options
def fit_split_command(preset, data, split, checkpoints, rank, limit, device, threads):
    """Fit the finding subspace of the latent space that a re-drawn start keeps (--redraw)."""
    from ..data import is_phantom_folder
    from ..machine import set_threads
    from ..networks import checkpoint_dir
    from .redraw import fit_split

    set_threads(threads)
    fit_split(checkpoint_dir(preset, checkpoints), data, split if is_phantom_folder(data) else None, rank, limit,
              device)
