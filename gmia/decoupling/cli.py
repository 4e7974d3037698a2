"""`gmia fit-decoupler`: thin click layer over ``gmia.decoupling.fit_decoupler``."""

from __future__ import annotations

import click

from .fit import METHODS, FitConfig

__all__ = ["fit_decoupler_command"]


@click.command("fit-decoupler")
@click.option("--preset", default="phantom-cxr64", show_default=True, help="Preset whose MFM is used.")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset folder with train/val/test patient splits (e.g. a phantom folder).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for decoupler.safetensors + decoupler.json (the card holds the report).")
@click.option("--mfm-checkpoints", default="checkpoints", show_default=True,
              help="Folder holding <preset>/mfm.safetensors + mfm.json.")
@click.option("--method", type=click.Choice(METHODS), default="coding_rate", show_default=True,
              help="coding_rate: learned split, refined from the closed-form scatter split (scatter).")
@click.option("--shrinkage", type=float, default=None, help="Within-scatter regularization δ (default 0.01).")
@click.option("--rank", type=int, default=None, help="Force the identity rank k (default: MDL choice).")
@click.option("--max-rank", type=int, default=None, help="Upper bound on the MDL rank.")
@click.option("--cache", type=click.Path(dir_okay=False), default=None,
              help="Features .npz: read if it exists, else written (skips the MFM on reruns).")
@click.option("--sweep/--no-sweep", default=True, show_default=True,
              help="Also audit the semantic part at 2k, 4k and 8k identity coordinates.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the resolved config and stop.")
def fit_decoupler_command(preset, data_dir, out_dir, mfm_checkpoints, method, shrinkage, rank, max_rank, cache,
                          sweep, device, dry_run):
    """Fit the MDL feature decoupler (P_id, P_sem) on an MFM's features and print its held-out audit."""
    from .fit import fit_decoupler

    changes = {k: v for k, v in dict(shrinkage=shrinkage, rank=rank, max_rank=max_rank).items() if v is not None}
    cfg = FitConfig(method=method, sweep=sweep, **changes)
    if dry_run:
        click.echo(f"{cfg} preset={preset} data={data_dir} out={out_dir} mfm={mfm_checkpoints}")
        return
    fit_decoupler(preset, data_dir, out_dir, mfm_checkpoints=mfm_checkpoints, cfg=cfg, device=device, cache=cache)
