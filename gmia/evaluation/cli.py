"""Click commands of the evaluation: ``gmia evaluate``, ``gmia mia``, ``gmia sweep``, ``gmia report``.

Each reads options, builds a config and calls one library function. Register them on the main group with
``cli.add_command(evaluate_cmd)`` etc. (they are named ``evaluate``, ``mia``, ``sweep`` and ``report``).
"""

from __future__ import annotations

import dataclasses

import click

from ..cli_options import labels_columns, labels_options, machine_options
from ..config import PRESETS, PRIVACY_LEVELS

__all__ = ["evaluate_cmd", "mia_cmd", "sweep_cmd", "calibrate_cmd", "report_cmd", "COMMANDS"]

_preset = click.option("--preset", default="phantom-cxr64", show_default=True, type=click.Choice(list(PRESETS)))
_ckpt = click.option("--checkpoints", type=click.Path(file_okay=False), default="checkpoints", show_default=True,
                     help="Folder holding <preset>/{attacker,identity,utility,mfm,aegan}.*")
_boot = click.option("--bootstrap", type=int, default=None, help="Bootstrap resamples for 95% intervals (0: none).")


def _set_threads(threads):
    from ..machine import set_threads  # torch: only when a command runs

    set_threads(threads)


@click.command("evaluate")
@_preset
@click.option("--real", "real_dir", type=click.Path(file_okay=False, exists=True), required=True,
              help="The real dataset the run anonymized (phantom folder, or your own folder with --labels).")
@click.option("--anon", "anon_dir", type=click.Path(file_okay=False, exists=True), required=True,
              help="The anonymization run folder (needs private/linkage.csv: anonymize with --write-linkage).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Where metrics.json and figures go.")
@_ckpt
@click.option("--anon-train", type=click.Path(file_okay=False, exists=True), default=None,
              help="An anonymization run of TRAINING patients: enables the adaptive attacker and train-on-anonymized.")
@labels_options
@_boot
@click.option("--limit", type=int, default=None, help="Evaluate only the first N released images.")
@click.option("--adaptive-epochs", type=int, default=None, help="Epochs of the adaptive attacker's retraining.")
@click.option("--adaptive-seeds", type=int, default=None,
              help="Runs per adaptive attacker family (default 3; the strongest run is reported).")
@machine_options
def evaluate_cmd(preset, real_dir, anon_dir, out, checkpoints, anon_train, labels, image_column, patient_column,
                 findings, bootstrap, limit, adaptive_epochs, adaptive_seeds, device, threads):
    """Privacy (independent + adaptive attacker), control, utility, fidelity, record-level privacy."""
    from .evaluate import EvalConfig, evaluate
    from ..config import override

    _set_threads(threads)
    cfg = EvalConfig()
    adaptive = override(cfg.adaptive, epochs=adaptive_epochs, seeds=adaptive_seeds)
    cfg = dataclasses.replace(override(cfg, bootstrap=bootstrap, limit=limit), adaptive=adaptive)
    evaluate(preset, real_dir, anon_dir, out, checkpoints=checkpoints, anon_train=anon_train, cfg=cfg, device=device,
             labels=labels, **labels_columns(labels, image_column, patient_column, findings))


@click.command("mia")
@_preset
@click.option("--members", type=click.Path(file_okay=False, exists=True), required=True,
              help="The generator's training images (phantom folder: its --members-split).")
@click.option("--nonmembers", type=click.Path(file_okay=False, exists=True), required=True,
              help="Held-out patients of the same distribution (phantom folder: its --nonmembers-split).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Where mia.json goes.")
@click.option("--members-split", default="train", show_default=True, help="Split of --members (phantom folders).")
@click.option("--nonmembers-split", default="test", show_default=True, help="Split of --nonmembers (phantom folders).")
@click.option("--latent-fit", type=click.Path(file_okay=False, exists=True), default=None,
              help="Disjoint images to fit the latent Gaussian on (default: the pooled queries).")
@click.option("--latent-fit-split", default="val", show_default=True)
@click.option("--reference-checkpoint", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder with a reference aegan.* trained WITHOUT the members (GAN-Leaks calibration).")
@_ckpt
@click.option("--limit", type=int, default=None, help="Queries per side (default 500).")
@click.option("--samples", type=int, default=None, help="Generated samples K for the nearest-sample attack.")
@click.option("--refine-steps", type=int, default=None, help="Latent optimization steps of the white-box attack.")
@_boot
@machine_options
def mia_cmd(preset, members, nonmembers, out, members_split, nonmembers_split, latent_fit, latent_fit_split,
            reference_checkpoint, checkpoints, limit, samples, refine_steps, bootstrap, device, threads):
    """Membership inference against the stage-1 generator (GAN-Leaks style, calibrated)."""
    from ..config import override
    from .mia import MIAConfig, membership_inference

    _set_threads(threads)
    cfg = override(MIAConfig(), limit=limit, samples=samples, refine_steps=refine_steps, bootstrap=bootstrap)
    membership_inference(preset, members, nonmembers, out, checkpoints=checkpoints, members_split=members_split,
                         nonmembers_split=nonmembers_split, latent_fit=latent_fit, latent_fit_split=latent_fit_split,
                         reference_checkpoint=reference_checkpoint, cfg=cfg, device=device)


@click.command("sweep")
@_preset
@click.option("--margins", default="0.3,0,-0.3", show_default=True, help="Comma-separated identity margins.")
@click.option("--input", "input_dir", type=click.Path(file_okay=False, exists=True), required=True)
@click.option("--split", default="test", show_default=True, help="Split to anonymize (phantom folders).")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--limit", type=int, default=None, help="Only the first N records per margin.")
@click.option("--max-steps", type=int, default=None, help="Stage-2 steps per image.")
@click.option("--batch-size", type=int, default=None, help="Stage-2 batch size.")
@click.option("--train-images", type=int, default=400, show_default=True,
              help="Training-patient images anonymized per margin for the adaptive attacker (0: leave it out).")
@_ckpt
@_boot
@machine_options
def sweep_cmd(preset, margins, input_dir, split, out, limit, max_steps, batch_size, train_images, checkpoints,
              bootstrap, device, threads):
    """Anonymize + evaluate at several margins: curve.csv and curve.png (attacker AUC vs. utility AUROC)."""
    from ..config import override
    from .evaluate import EvalConfig
    from .sweep import parse_margins, sweep

    _set_threads(threads)
    sweep(preset, parse_margins(margins), input_dir, out, checkpoints=checkpoints, split=split, limit=limit,
          eval_cfg=override(EvalConfig(), bootstrap=bootstrap),
          anonymize_overrides={"max_steps": max_steps, "batch_size": batch_size}, device=device,
          train_images=train_images)


@click.command("calibrate")
@_preset
@click.option("--data", "data_dir", type=click.Path(file_okay=False, exists=True), required=True,
              help="A folder with patient splits (phantom folder): training patients train the attacker, held-out "
                   "ones are attacked.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="The file (default <checkpoints>/<preset>/calibration.json, where --target-auc reads it); it keeps "
                   "one table per privacy level, this level's replaced.")
@click.option("--strengths", default="0,0.5,0.75,1", show_default=True, help="Re-draw strengths to measure.")
@click.option("--train-images", type=int, default=None, help="Anonymized training images (default 400).")
@click.option("--test-images", type=int, default=None, help="Held-out images attacked (default 200).")
@click.option("--test-split", default=None, help="Split of the held-out patients (default val).")
@click.option("--adaptive-seeds", type=int, default=None, help="Seeds per attacker family (default 1).")
@click.option("--privacy", type=click.Choice(list(PRIVACY_LEVELS)), default=None,
              help="Privacy level to measure at (default: the preset's); `gmia anonymize --target-auc` reads the "
                   "table of its run's level.")
@_ckpt
@_boot
@machine_options
def calibrate_cmd(preset, data_dir, out, strengths, train_images, test_images, test_split, adaptive_seeds, privacy,
                  checkpoints, bootstrap, device, threads):
    """Measure the adaptive attacker's AUC and utility at several re-draw strengths (for --target-auc)."""
    from pathlib import Path

    from ..config import override
    from ..networks import checkpoint_dir
    from .calibrate import CALIBRATION_FILE, CalibrationConfig, calibrate

    _set_threads(threads)
    try:
        grid = tuple(float(v) for v in strengths.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"comma-separated numbers in [0, 1], got {strengths!r}", param_hint="--strengths")
    base = CalibrationConfig()
    ev = dataclasses.replace(override(base.eval, bootstrap=bootstrap),
                             adaptive=override(base.eval.adaptive, seeds=adaptive_seeds))
    cfg = dataclasses.replace(override(base, train_images=train_images, test_images=test_images,
                                       test_split=test_split, privacy=privacy), strengths=grid, eval=ev)
    out = Path(out) if out else checkpoint_dir(preset, checkpoints) / CALIBRATION_FILE
    table = calibrate(preset, data_dir, out, checkpoints=checkpoints, cfg=cfg, device=device)
    for row in table["rows"]:
        click.echo(f"margin {table['margin']:g}, redraw {row['redraw']:.2f}: adaptive own-source AUC "
                   f"{row['adaptive_auc_own_source']:.3f} "
                   f"{row['adaptive_auc_own_source_ci95']}, same patient {row['adaptive_auc_same_patient']:.3f}, "
                   f"independent classifier ratio {row['independent_classifier_ratio']}")


@click.command("report")
@click.argument("eval_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="HTML file (default EVAL_DIR/report.html).")
@click.option("--sweep", "sweep_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="A `gmia sweep` folder whose curve to include.")
@click.option("--mia", "mia_path", type=click.Path(exists=True), default=None, help="A mia.json (or its folder).")
def report_cmd(eval_dir, out, sweep_dir, mia_path):
    """One self-contained HTML page of an evaluation folder."""
    from .report import write_report

    click.echo(write_report(eval_dir, out, sweep=sweep_dir, mia=mia_path))


COMMANDS = (evaluate_cmd, mia_cmd, sweep_cmd, calibrate_cmd, report_cmd)
