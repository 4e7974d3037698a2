"""Click commands of stage 1: ``aegan`` (for the ``gmia train`` group), ``project`` and ``fit-prior`` (top level).

Each reads options, resolves a config (flags override only what they set), and calls one library function;
``--dry-run`` prints the resolved config. ``gmia.cli_train`` adds ``aegan`` to the ``gmia train`` group, and
``gmia.cli`` loads ``project`` and ``fit_prior_command`` from its table of commands.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from ..cli_options import machine_options
from ..machine import set_threads
from .config import PERCEPTUAL_KINDS, PRESETS, ProjectionConfig, aegan_config, config_dict

__all__ = ["aegan", "project", "fit_prior_command"]

_PERCEPTUAL = click.Choice(PERCEPTUAL_KINDS)


@click.command("aegan")
@click.option("--preset", default="phantom-cxr64", show_default=True, type=click.Choice(list(PRESETS)))
@click.option("--data", type=click.Path(file_okay=False), default=None, help="Phantom or image folder; default data/<preset>.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder; rerun with --resume to continue.")
@click.option("--kimg", type=float, default=None, help="Training length in thousands of images.")
@click.option("--batch", type=int, default=None, help="Images per step.")
@click.option("--latent", type=click.Choice(["w", "w+"]), default=None, help="W (published) or W+ encoder.")
@click.option("--perceptual", type=_PERCEPTUAL, default=None,
              help="Perceptual term (auto: lpips if local, else MFM; utility: E_ut's and E_ut2's features).")
@click.option("--lpips-weights", type=click.Path(dir_okay=False), default=None, help="torchvision AlexNet weights file.")
@click.option("--lambda-mse", type=float, default=None, help="Weight of pixel MSE.")
@click.option("--lambda-perc", type=float, default=None, help="Weight of the perceptual term (0 on the 64-px presets).")
@click.option("--lambda-ssim", type=float, default=None, help="Weight of 1 - SSIM.")
@click.option("--lambda-gan", type=float, default=None, help="Weight of the GAN term for E + G.")
@click.option("--lr", type=float, default=None, help="Adam learning rate.")
@click.option("--init-from", type=click.Path(exists=True), default=None,
              help="Fine-tune: start from a training-state snapshot or a checkpoint folder (fresh optimizers).")
@click.option("--freeze-generator", is_flag=True, help="Train E only (G frozen; needs --lambda-gan 0).")
@click.option("--synthetic-fraction", type=float, default=None,
              help="Share of each batch drawn as G(w), w from the --init-from folder's latent prior.")
@click.option("--e-channel-base", type=int, default=None, help="Encoder capacity (default: the generator's).")
@click.option("--e-channel-max", type=int, default=None, help="Encoder channel cap (default: the generator's).")
@click.option("--fresh-encoder", is_flag=True, help="Take only G (and D) from --init-from; E starts fresh.")
@click.option("--grow-encoder", is_flag=True,
              help="Grow --init-from's E into the wider one of --e-channel-base/--e-channel-max (same function at first).")
@click.option("--split", default=None,
              help="Phantom split to train on (default train; 'all': every image). Plain image folders: all images.")
@click.option("--seed", type=int, default=None)
@machine_options
@click.option("--resume", is_flag=True, help="Continue from the newest snapshot in --out.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def aegan(preset, data, out, kimg, batch, latent, perceptual, lpips_weights, lambda_mse, lambda_perc, lambda_ssim,
          lambda_gan, lr, freeze_generator, synthetic_fraction, e_channel_base, e_channel_max, fresh_encoder,
          grow_encoder, init_from, split, seed, device, threads, resume, dry_run, quiet):
    """Stage 1: co-train the encoder and generator against a discriminator (AE-GAN)."""
    from ..data import is_phantom_folder, open as open_data
    from .training import train_aegan

    data = data or f"data/{preset}"
    cfg = aegan_config(preset, kimg=kimg, batch=batch, latent=latent, perceptual=perceptual,
                       lpips_weights=lpips_weights, lambda_mse=lambda_mse, lambda_perc=lambda_perc,
                       lambda_ssim=lambda_ssim, lambda_gan=lambda_gan, lr=lr, init_from=init_from, split=split, seed=seed,
                       train_generator=False if freeze_generator else None, synthetic_fraction=synthetic_fraction,
                       e_channel_base=e_channel_base, e_channel_max=e_channel_max,
                       fresh_encoder=True if fresh_encoder else None, grow_encoder=True if grow_encoder else None)
    # "all", and an unset --split on a plain image folder (a user's own dataset has no splits), train on every image
    if split == "all" or (split is None and not is_phantom_folder(data)):
        cfg = dataclasses.replace(cfg, split=None)
    if dry_run:
        click.echo(json.dumps({"data": data, "out": out, "resume": resume, "config": config_dict(cfg)}, indent=2))
        return
    set_threads(threads)  # this process is the command's own
    dataset = open_data(data, split=cfg.split, size=cfg.resolution, channels=cfg.img_channels)
    info = {"root": str(data), "split": cfg.split, "phantom": getattr(dataset, "card", None)}
    result = train_aegan(cfg, dataset, out, resume=resume, device=device, progress=not quiet, data_info=info)
    if result.interrupted:
        raise SystemExit(130)


@click.command("project")
@click.option("--preset", default="phantom-cxr64", show_default=True, help="Preset whose stage-1 model to use.")
@click.option("--input", "input_dir", type=click.Path(file_okay=False, exists=True), required=True,
              help="Phantom folder or image folder.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--checkpoint", type=click.Path(file_okay=False), default=None,
              help="Folder with aegan.safetensors + aegan.json; default checkpoints/<preset>.")
@click.option("--split", default=None, help="Phantom split to project (default: all images).")
@click.option("--refine-steps", type=int, default=None, help="Adam steps on the codes after E(x) (0: encoder only).")
@click.option("--refine-lr", type=float, default=None)
@click.option("--refine-space", type=click.Choice(["w", "w+"]), default=None,
              help="Refine one code per layer (w+) even for a W model (default: the model's space).")
@click.option("--lambda-ssim", type=float, default=None, help="Weight of 1 - SSIM in the refinement loss.")
@click.option("--batch-size", type=int, default=None)
@click.option("--perceptual", type=_PERCEPTUAL, default=None)
@click.option("--lpips-weights", type=click.Path(dir_okay=False), default=None)
@machine_options
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def project(preset, input_dir, out, checkpoint, split, refine_steps, refine_lr, refine_space, lambda_ssim, batch_size,
            perceptual, lpips_weights, device, threads, dry_run, quiet):
    """Project images to latent codes; write latents, reconstructions and metrics.json."""
    from .project import run_projection

    cfg = dataclasses.replace(ProjectionConfig(), **{k: v for k, v in dict(
        refine_steps=refine_steps, refine_lr=refine_lr, refine_space=refine_space, lambda_ssim=lambda_ssim,
        batch_size=batch_size, perceptual=perceptual,
        lpips_weights=lpips_weights, split=split).items() if v is not None})
    checkpoint = Path(checkpoint or Path("checkpoints") / preset)
    if dry_run:
        click.echo(json.dumps({"input": input_dir, "out": out, "checkpoint": str(checkpoint), "preset": preset,
                               "config": dataclasses.asdict(cfg)}, indent=2))
        return
    set_threads(threads)
    run_projection(cfg, preset, input_dir, out, checkpoint, device=device, progress=not quiet)


@click.command("fit-prior")
@click.option("--preset", default="phantom-cxr64", show_default=True, help="Preset whose stage-1 model to use.")
@click.option("--data", type=click.Path(file_okay=False, exists=True), required=True,
              help="The stage-1 model's training images (phantom folder or image folder).")
@click.option("--split", default="train", show_default=True, help="Phantom split (ignored for image folders).")
@click.option("--checkpoint", type=click.Path(file_okay=False), default=None,
              help="Folder with aegan.*; the prior is written there. Default checkpoints/<preset>.")
@click.option("--limit", type=int, default=None, help="Only the first N images.")
@click.option("--threads", type=int, default=None, help="CPU threads.")
def fit_prior_command(preset, data, split, checkpoint, limit, threads):
    """Fit the Gaussian latent prior (surrogate identities, MIA sampling) to E(x) of training images."""
    from .prior import fit_prior
    from ..data import is_phantom_folder

    set_threads(threads)
    folder = Path(checkpoint or Path("checkpoints") / preset)
    fit_prior(folder, data, split if is_phantom_folder(data) else None, limit)
