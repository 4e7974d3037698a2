"""Click command of stage 2: ``gmia anonymize``. Reads options, resolves the config, calls ``anonymize_dataset``."""

from __future__ import annotations

import json

import click
import torch

from ..config import PRIVACY_LEVELS, get_preset
from ..errors import ConfigError
from .config import PRECISIONS, PRESETS, SPEED_PROFILES, anonymize_config, config_dict

__all__ = ["anonymize", "open_input"]


def open_input(preset: str, input_dir: str | None, dataset: str | None, data_root: str | None, split: str | None):
    """The dataset to anonymize, preprocessed to the preset's channels and resolution."""
    from ..data.preprocess import Preprocess
    from ..data.registry import open_dataset
    from ..projection.project import open_images

    p = get_preset(preset)
    if (input_dir is None) == (dataset is None):
        raise ConfigError("give exactly one input: --input DIR (a phantom or image folder), or --dataset NAME "
                          "--data-root DIR (mimic, chexpert, nih, folder, dicom)")
    if input_dir is not None:
        return open_images(input_dir, split, p.resolution, p.channels)
    if data_root is None:
        raise ConfigError(f"--dataset {dataset} needs --data-root DIR: the folder holding the {dataset} files")
    kwargs = {"split": split} if split else {}
    return open_dataset(dataset, data_root, preprocess=Preprocess(size=p.resolution, channels=p.channels), **kwargs)


@click.command()
@click.option("--preset", default="phantom-cxr64", show_default=True, type=click.Choice(list(PRESETS)))
@click.option("--input", "input_dir", type=click.Path(file_okay=False), default=None,
              help="A phantom folder or an image folder (optionally with labels.csv).")
@click.option("--dataset", default=None, help="Real dataset adapter: mimic, chexpert, nih, folder, dicom.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Root folder of --dataset.")
@click.option("--split", default=None, help="Split to anonymize (phantom folders: train/val/test; default all).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder (never overwritten).")
@click.option("--privacy", type=click.Choice(list(PRIVACY_LEVELS)), default=None,
              help="Named privacy level: " + ", ".join(f"{k} (m={v:g})" for k, v in PRIVACY_LEVELS.items()) + ".")
@click.option("--margin", type=float, default=None, help="Identity margin m in [-1, 1] (lower = more private).")
@click.option("--checkpoints", type=click.Path(file_okay=False), default="checkpoints", show_default=True,
              help="Folder holding <preset>/{aegan,identity,utility}.*")
@click.option("--batch-size", type=int, default=None, help="Images optimized together.")
@click.option("--max-steps", type=int, default=None, help="Steps per image before it is withheld.")
@click.option("--lr", type=float, default=None, help="Adam learning rate on the latent codes.")
@click.option("--patience", type=int, default=None,
              help="Steps without a utility gain before a private image stops (0: stop at the hinge, fastest).")
@click.option("--refine-steps", type=int, default=None, help="Projection refinement steps for w_0 (0: E(x) only).")
@click.option("--speed", type=click.Choice(list(SPEED_PROFILES)), default=None,
              help="quality (default): refined start, utility polish after the hinge. fast: stop at the hinge from "
                   "E(x), lr 0.1, bf16 where the hardware has it (flags below still win).")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default=None,
              help="Optimization precision (auto: bf16 on CUDA, fp32 on CPU; auto-bf16: also bf16 on CPUs with "
                   "native bf16); the privacy gate is always fp32.")
@click.option("--lambda-mdl", type=float, default=None,
              help="Weight of the MFM/MDL third term (0: off). Needs <preset>/mfm.* and decoupler.* checkpoints.")
@click.option("--lambda-sem", type=float, default=None, help="MDL term: weight of the semantic-part distance.")
@click.option("--lambda-mid", type=float, default=None, help="MDL term: weight of the MFM identity-part hinge.")
@click.option("--mdl-margin", type=float, default=None, help="MDL term: margin m' of the identity-part hinge "
              "(default: the decoupler's calibrated one).")
@click.option("--lambda-lesion", type=float, default=None,
              help="Weight of the lesion-map term (1 - soft Dice of E_ut's lesion maps; face presets).")
@click.option("--lambda-surrogate", type=float, default=None,
              help="Weight of the pull towards a generated surrogate identity (0: off). Needs "
                   "<preset>/latent-prior.safetensors.")
@click.option("--surrogate-cos", type=float, default=None,
              help="Surrogate pull: cosine to the surrogate identity at which it is met.")
@click.option("--limit", type=int, default=None, help="Only the first N records (of this shard).")
@click.option("--shard", default=None, help="i/n: this process takes records i, i+n, ... (same --out for all).")
@click.option("--resume", is_flag=True, help="Finish a killed run in --out (same settings).")
@click.option("--write-linkage", is_flag=True,
              help="Also write private/linkage.csv (source → pseudonym). It RE-IDENTIFIES the released set: keep "
                   "it with the source data, never release it.")
@click.option("--seed", type=int, default=None)
@click.option("--device", default=None, help="cpu, cuda ... (default: cuda if available).")
@click.option("--threads", type=int, default=None, help="CPU threads.")
@click.option("--fail-on-error", is_flag=True, help="Exit with status 3 when any input could not be read.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def anonymize(preset, input_dir, dataset, data_root, split, out, privacy, margin, checkpoints, batch_size, max_steps,
              lr, patience, refine_steps, speed, precision, lambda_mdl, lambda_sem, lambda_mid, mdl_margin,
              lambda_lesion, lambda_surrogate, surrogate_cos, limit, shard, resume, write_linkage, seed, device,
              threads, fail_on_error, dry_run, quiet):
    """Anonymize a dataset (stage 2): writes OUT/images, labels.csv, manifest.jsonl, run.json.

    OUT/private/ holds the resume key (and the linkage with --write-linkage): never release that folder."""
    from .runner import anonymize_dataset, parse_shard

    cfg = anonymize_config(preset, privacy=privacy, margin=margin, speed=speed, batch_size=batch_size,
                           max_steps=max_steps, lr=lr, patience=patience, refine_steps=refine_steps,
                           precision=precision, lambda_mdl=lambda_mdl, lambda_sem=lambda_sem, lambda_mid=lambda_mid,
                           mdl_margin=mdl_margin, lambda_lesion=lambda_lesion,
                           lambda_surrogate=lambda_surrogate, surrogate_cos=surrogate_cos,
                           seed=seed)
    shard_t = parse_shard(shard)
    if dry_run:
        click.echo(json.dumps({"out": out, "shard": shard_t, "limit": limit, "config": config_dict(cfg)}, indent=2))
        return
    if threads:
        torch.set_num_threads(threads)
    data = open_input(preset, input_dir, dataset, data_root, split)
    summary = anonymize_dataset(cfg, data, out, checkpoints=checkpoints, device=device, resume=resume,
                                shard=shard_t, limit=limit, write_linkage=write_linkage, progress=not quiet)
    click.echo(json.dumps(summary, indent=2))
    if fail_on_error and summary["this_call"]["error"]:
        raise SystemExit(3)
