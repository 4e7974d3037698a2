"""`gmia train ...`: train the networks that score images (E_id, E_ut, E_ut2, MFM, attacker) on a phantom folder,
stage 1 (`aegan`) and the amortized anonymizer (`anonymizer`).

Each command reads options, resolves the preset's training config, calls ``gmia.networks.training.train``
and prints one summary line. Registered in ``gmia.cli`` with ``cli.add_command(train)``.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import click

from .cli_options import machine_options, quiet_dry_run

__all__ = ["train"]


def _options(f):
    """The options every `gmia train ROLE` command shares."""
    opts = [
        click.option("--preset", default="phantom-cxr64", show_default=True, help="Preset (image format + recipe)."),
        click.option("--data", "data", type=click.Path(file_okay=False), default=None,
                     help="Phantom folder (`gmia phantom`); default data/<preset>."),
        click.option("--out", type=click.Path(file_okay=False), default=None,
                     help="Checkpoint folder; default checkpoints/<preset>. Rerun to resume."),
        click.option("--epochs", type=int, default=None, help="Override the preset's epochs."),
        click.option("--seed", type=int, default=None, help="Override the preset's seed."),
        click.option("--batch-size", type=int, default=None, help="Override the preset's batch size."),
        click.option("--lr", type=float, default=None, help="Override the preset's learning rate."),
        machine_options,
        quiet_dry_run,
    ]
    return functools.reduce(lambda g, opt: opt(g), reversed(opts), f)


def _run(role: str, preset, data, out, epochs, seed, batch_size, lr, device, threads, dry_run, quiet) -> None:
    from .config import override
    from .networks.training import get_train_config, train as train_network

    cfg = override(get_train_config(preset, role), epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
                   device=device, threads=threads)
    data = data or f"data/{preset}"
    out = out or f"checkpoints/{preset}"
    if dry_run:
        click.echo(json.dumps({"data": data, "out": out, "config": dataclasses.asdict(cfg)}, indent=2))
        return
    click.echo(train_network(cfg, data=data, out=out, progress=not quiet).summary())


@click.group()
def train():
    """Train one network of a preset: E_id, E_ut, E_ut2, the MFM, the attacker, stage 1 or the amortized anonymizer."""


@train.command()
@_options
def identity(**kw):
    """E_id: patient-identity embedder (IResNet + ArcFace); test metrics: verification AUC, EER, rank-1."""
    _run("identity", **kw)


@train.command()
@_options
def utility(**kw):
    """E_ut: multi-label finding classifier (+ lesion mask on faces); test metrics: AUROC, Dice."""
    _run("utility", **kw)


@train.command()
@_options
def utility2(**kw):
    """E_ut2: a second finding classifier of another family (plain CNN), kept by stage 2 with --lambda-ut2."""
    _run("utility2", **kw)


@train.command()
@_options
def mfm(**kw):
    """MFM: label-free encoder (SimCLR by default); test metrics: linear identity and finding probes."""
    _run("mfm", **kw)


@train.command()
@_options
def attacker(**kw):
    """The evaluation-only re-identifier (VGG-style + CosFace, own seed); never used by the optimizer."""
    _run("attacker", **kw)


@train.command()
@click.option("--preset", default="phantom-cxr64", show_default=True, help="Preset whose stage-2 objective it learns.")
@click.option("--data", "data", type=click.Path(file_okay=False), default=None,
              help="Training images: a phantom folder (train split; val for the held-out check) or your own "
                   "folder; default data/<preset>.")
@click.option("--checkpoints", type=click.Path(file_okay=False), default="checkpoints", show_default=True,
              help="Folder holding <preset>/{aegan,identity,utility,latent-prior}.*; anonymizer.* is written there.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Write anonymizer.* here instead (then copy it beside the weights).")
@click.option("--epochs", type=int, default=None, help="Passes over the training images.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--lambda-adv", type=float, default=None,
              help="Weight of the adversarial linker term (0: the stage-2 objective only).")
@click.option("--link-to", type=click.Choice(["source", "both"]), default=None,
              help="What the adversarial linker matches an output to: its source image, or also another study of "
                   "the same patient (where the data names patients). Default: source.")
@click.option("--private-tolerance", type=click.FloatRange(0, 1), default=None,
              help="Weights kept: of the epochs whose held-out images are private within this fraction of the most "
                   "private epoch's, the one of best utility (default 0.02).")
@click.option("--read-identity/--no-read-identity", default=None,
              help="Whether the network reads E_id(x), the identity to move away from (default: it does).")
@click.option("--redraw", type=click.FloatRange(0, 1), default=None,
              help="The start it learns to correct: the re-drawn code of this strength (0: the surrogate); "
                   "default: the preset's (`gmia anonymize --redraw`).")
@click.option("--limit", type=int, default=None, help="Only the first N training images.")
@click.option("--seed", type=int, default=None)
@machine_options
@quiet_dry_run
def anonymizer(preset, data, checkpoints, out, epochs, batch_size, lr, lambda_adv, link_to, private_tolerance,
               read_identity, redraw, limit, seed, device, threads, dry_run, quiet):
    """The amortized anonymizer: one forward pass per image (`gmia anonymize --engine amortized`)."""
    from .config import override
    from .anonymization.train_amortized import AmortizedConfig

    cfg = override(AmortizedConfig(), epochs=epochs, batch_size=batch_size, lr=lr, lambda_adv=lambda_adv,
                   link_to=link_to, private_tolerance=private_tolerance, read_identity=read_identity,
                   limit=limit, seed=seed, redraw=redraw)
    data = data or f"data/{preset}"
    if dry_run:
        click.echo(json.dumps({"data": data, "checkpoints": checkpoints, "out": out,
                               "config": dataclasses.asdict(cfg)}, indent=2))
        return
    from .anonymization.train_amortized import train_anonymizer
    from .machine import set_threads

    set_threads(threads)
    click.echo(f"anonymizer -> {train_anonymizer(preset, data, checkpoints, cfg, device, not quiet, out)}")


def _add_stage1() -> None:
    """`gmia train aegan` lives beside stage 1's code; it joins this group here, the one place the group is built."""
    from .projection.cli import aegan

    train.add_command(aegan)


_add_stage1()
