"""The `gmia` command line: a thin click layer. Each command reads options, builds a config and calls one
library function; a GmiaError reaches the user as one line (the traceback only with --debug)."""

from __future__ import annotations

import errno
import importlib
import sys
from pathlib import Path

import click

from . import __version__
from .errors import GmiaError


# Commands that live beside their library code, imported only when they run or show their own help: `gmia --help`
# lists them from this table, so it does not import torch. name -> (module, attribute, one-line help); a test
# checks each line against the command's own help.
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("gmia.cli_train", "train",
              "Train one network of a preset: E_id, E_ut, E_ut2, the MFM, the attacker, stage 1 or the amortized "
              "anonymizer."),
    "project": ("gmia.projection.cli", "project",
                "Project images to latent codes; write latents, reconstructions and metrics.json."),
    "anonymize": ("gmia.anonymization.cli", "anonymize",
                  "Anonymize a dataset (stage 2): writes OUT/images, labels.csv, manifest.jsonl, run.json."),
    "fit-decoupler": ("gmia.decoupling.cli", "fit_decoupler_command",
                      "Fit the MDL feature decoupler (P_id, P_sem) on an MFM's features and print its held-out audit."),
    "fit-prior": ("gmia.projection.cli", "fit_prior_command",
                  "Fit the Gaussian latent prior (surrogate identities, MIA sampling) to E(x) of training images."),
    "fit-domain": ("gmia.anonymization.cli", "fit_domain_command",
                   "Calibrate the out-of-domain guard (reconstruction error, E_ut feature distance) on training "
                   "images."),
    "fit-split": ("gmia.anonymization.cli", "fit_split_command",
                  "Fit the finding subspace of the latent space that a re-drawn start keeps (--redraw)."),
    "fit": ("gmia.fit.cli", "fit_command",
            "Train every network of a preset on your data: E_id, E_ut, the MFM and its decoupler, the attacker, "
            "stage 1 (AE-GAN) and its latent prior, in order; each stage resumes, and is skipped when done."),
    "import-weights": ("gmia.fit.cli", "import_weights_command",
                       "Import weights you already have as a role's checkpoint (with its card); `gmia fit` then skips "
                       "that role."),
    "evaluate": ("gmia.evaluation.cli", "evaluate_cmd",
                 "Privacy (independent + adaptive attacker), control, utility, fidelity, record-level privacy."),
    "mia": ("gmia.evaluation.cli", "mia_cmd",
            "Membership inference against the stage-1 generator (GAN-Leaks style, calibrated)."),
    "sweep": ("gmia.evaluation.cli", "sweep_cmd",
              "Anonymize + evaluate at several margins: curve.csv and curve.png (attacker AUC vs. utility AUROC)."),
    "calibrate": ("gmia.evaluation.cli", "calibrate_cmd",
                  "Measure the adaptive attacker's AUC and utility at several re-draw strengths (for --target-auc)."),
    "report": ("gmia.evaluation.cli", "report_cmd", "One self-contained HTML page of an evaluation folder."),
}


class _Group(click.Group):
    """Turns GmiaError into a one-line click error unless --debug was given; loads ``LAZY_COMMANDS`` on use."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and name in LAZY_COMMANDS:
            module, attribute, _ = LAZY_COMMANDS[name]
            command = getattr(importlib.import_module(module), attribute)
            self.add_command(command, name)
        return command

    def format_commands(self, ctx, formatter):
        """The command list from the table for commands not loaded yet (no import just to show a line)."""
        limit = formatter.width - 6 - max(len(n) for n in self.list_commands(ctx))
        rows = []
        for name in self.list_commands(ctx):
            loaded = self.commands.get(name)
            rows.append((name, loaded.get_short_help_str(limit) if loaded is not None else
                         click.utils.make_default_short_help(LAZY_COMMANDS[name][2], limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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


def main(argv=None):
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="gmia")


if __name__ == "__main__":
    sys.exit(main())
