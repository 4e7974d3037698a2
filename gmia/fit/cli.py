"""``gmia fit`` and ``gmia import-weights``: thin click layers over ``gmia.fit.fit`` and the weight importers."""

from __future__ import annotations

import click

from ..cli_options import input_options, machine_options, quiet_dry_run
from ..config import PRESETS

__all__ = ["fit_command", "import_weights_command"]


@click.command("fit")
@click.option("--preset", default="gmia-cxr256", show_default=True, type=click.Choice(list(PRESETS)))
@input_options
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Checkpoint folder to fill (what `gmia anonymize --checkpoints` takes). Rerun to resume.")
@click.option("--variant", type=click.Choice(["tiny"]), default=None,
              help="tiny: toy widths and steps, the same stages (for tests and trying the machinery).")
@click.option("--set", "sets", multiple=True, metavar="STAGE.FIELD=VALUE",
              help="Change one setting of a stage (STAGE may be a glob), e.g. aegan.kimg=200, 'aegan*.batch=32'.")
@click.option("--only", multiple=True, metavar="STAGE", help="Run only these stages (their inputs must be done).")
@machine_options
@click.option("--workers", type=int, default=None, help="Processes that decode images for the one-time cache.")
@click.option("--lpips-weights", type=click.Path(dir_okay=False), default=None,
              help="torchvision AlexNet weights for stage 1's LPIPS term (else the trained MFM stands in).")
@quiet_dry_run
def fit_command(preset, input_dir, dataset, data_root, out, variant, sets, only, device, threads, workers,
                lpips_weights, dry_run, quiet, labels=None, image_column=None, patient_column=None, findings=None):
    """Train every network of a preset on your data: E_id, E_ut, the MFM and its decoupler, the attacker,
    stage 1 (AE-GAN) and its latent prior, in order; each stage resumes, and is skipped when done."""
    from .data import DataSpec
    from .pipeline import dry_run as show, fit
    from .recipe import parse_override

    overrides: dict[str, dict] = {}
    for text in sets:
        stage, name, value = parse_override(text)
        overrides.setdefault(stage, {})[name] = value
    spec = None
    if input_dir or dataset:
        spec = DataSpec(input=input_dir, labels=labels, image_column=image_column, patient_column=patient_column,
                        findings=findings, dataset=dataset, data_root=data_root)
    if dry_run:
        click.echo(show(preset, spec, out, variant=variant, overrides=overrides, only=list(only) or None))
        return
    if spec is None:
        raise click.UsageError("give the data: --input DIR [--labels CSV], or --dataset NAME --data-root DIR")
    fit(preset, spec, out, variant=variant, overrides=overrides, only=list(only) or None, device=device,
        threads=threads, workers=workers, lpips_weights=lpips_weights, progress=not quiet)


@click.command("import-weights")
@click.argument("role", type=click.Choice(["identity", "utility", "mfm"]))
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Checkpoint folder (e.g. a fit's OUT).")
@click.option("--preset", default="gmia-cxr256", show_default=True, type=click.Choice(list(PRESETS)))
@click.option("--format", "fmt", type=click.Choice(["published", "xrv"]), default="published", show_default=True,
              help="published: the GMIA method's state dicts (identity: insightface IResNet; utility: its "
                   "DenseNet-121); xrv: a torchxrayvision DenseNet (utility) or autoencoder (mfm) weights file.")
@click.option("--findings", default=None,
              help="utility, published: comma-separated names of the classifier's outputs, in order.")
def import_weights_command(role, src, out, preset, fmt, findings):
    """Import weights you already have as a role's checkpoint (with its card); `gmia fit` then skips that role.

    Files are read with torch.load(weights_only=True) (or as safetensors): no code in them runs."""
    from ..networks.published import import_weights

    names = None if findings is None else tuple(f.strip() for f in findings.split(",") if f.strip())
    card = import_weights(role, src, out, preset=preset, fmt=fmt, finding_names=names)
    click.echo(f"imported {src} as {role} -> {card}")
