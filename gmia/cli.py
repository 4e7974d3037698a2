"""The `gmia` command line: a thin click layer. Each command reads options, builds a config and calls one
library function; a GmiaError reaches the user as one line (the traceback only with --debug)."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import click

from . import __version__
from .errors import GmiaError


class _Group(click.Group):
    """Turns GmiaError into a one-line click error unless --debug was given."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GmiaError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(str(e)) from None
        except OSError as e:  # full disk, read-only or forbidden folder: one line with the path and the fix
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(os_error_line(e)) from None


_OS_FIXES = {
    errno.ENOSPC: "free some space (or choose another --out)",
    errno.EDQUOT: "free some space within your quota (or choose another --out)",
    errno.EROFS: "the file system is read-only: choose a writable --out",
    errno.EACCES: "check the permissions of that folder, or choose another --out",
    errno.EPERM: "check the permissions of that folder, or choose another --out",
}


def os_error_line(e: OSError) -> str:
    """An OSError as one line: what failed, on which path, and what to do. A run folder stays resumable after
    any of these (every record is journaled only once its file is in place)."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f) or "(no path)"
    fix = _OS_FIXES.get(e.errno, "check the path")
    return f"{e.strerror or e} ({where}); {fix}, then rerun the same command (add --resume for an anonymization run)"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gmia")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx, debug):
    """gmia: generative anonymization of medical images (chest X-rays, patient faces)."""
    ctx.obj = {"debug": debug}


@cli.command()
@click.option("--preset", default=None, help="Take domain, size, patients, studies and seed from a preset's benchmark.")
@click.option("--domain", type=click.Choice(["cxr", "face"]), default=None, help="cxr (1 channel) or face (RGB).")
@click.option("--patients", type=int, default=None, help="Number of synthetic patients.")
@click.option("--studies", type=int, default=None, help="Studies (images) per patient.")
@click.option("--size", type=int, default=None, help="Image side in pixels (64 default; 256 for GPU runs).")
@click.option("--seed", type=int, default=None, help="Seed; same seed, same bytes.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder (must not hold a set).")
def phantom(preset, domain, patients, studies, size, seed, out):
    """Generate a synthetic phantom dataset (images/, masks/, metadata.csv, phantom.json)."""
    from .data.phantoms.cli import make_phantom_set

    summary = make_phantom_set(Path(out), preset=preset, domain=domain, patients=patients, studies=studies,
                               size=size, seed=seed)
    click.echo(summary)


@cli.command("import-checkpoint")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", type=click.Path(file_okay=False))
def import_checkpoint(src, dst):
    """Convert an official StyleGAN2-ADA or GMIA .pkl into safetensors + JSON cards, safely.

    No code inside the pickle is ever run: only an exact allowlist of globals is accepted."""
    from .checkpoints import import_official_pickle

    out = import_official_pickle(Path(src), Path(dst))
    click.echo(f"imported {src} -> {out}")


def _register_subcommands() -> None:
    """Commands that live beside their library code (each module keeps its own click wrappers thin)."""
    from .anonymization.cli import anonymize
    from .decoupling.cli import fit_decoupler_command
    from .evaluation.cli import COMMANDS as evaluation_commands
    from .cli_train import train
    from .fit.cli import fit_command, import_weights_command
    from .projection.cli import aegan, fit_prior_command, project

    train.add_command(aegan)
    cli.add_command(train)
    cli.add_command(project)
    cli.add_command(anonymize)
    cli.add_command(fit_decoupler_command)
    cli.add_command(fit_prior_command)
    cli.add_command(fit_command)
    cli.add_command(import_weights_command)
    for command in evaluation_commands:
        cli.add_command(command)


_register_subcommands()


def main(argv=None):
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="gmia")


if __name__ == "__main__":
    sys.exit(main())
