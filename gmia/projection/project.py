"""Projection: images -> latent codes with the stage-1 encoder, optionally refined on the reconstruction loss.

    model = load_aegan("checkpoints/phantom-cxr64")
    out = project_images(model, x, refine_steps=100)   # x (N, C, R, R) in [0, 1]
    out["w"], out["x_hat"], out["metrics"]["ssim"]     # (N, w_dim) or (N, num_ws, w_dim); (N, C, R, R); (N,)

    summary = project_dataset(model, dataset, "out/", refine_steps=100)
    # out/latents.safetensors ("w", "w_encoder"; keys in its metadata), out/reconstructions/<key>.png,
    # out/metrics.json (PSNR, SSIM, perceptual per image and mean, encoder-only and refined)

Refinement is batched but per image: the loss is a sum of per-image losses and Adam acts elementwise, so an
image's result does not depend on which images share its batch. Each image keeps its best code so far, so
refinement never makes a reconstruction worse than the encoder's (in the refinement loss).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import kornia
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from gmia import data
from gmia.checkpoints import load_module, sha256_file
from gmia.data.datasets import ImageDataset
from gmia.data.preprocess import save_image
from gmia.errors import CheckpointError, InputError
from gmia.fileio import atomic_write_json
from gmia.machine import resolve_device
from gmia.runs import log

from .config import ProjectionConfig
from .losses import PerceptualLoss, ReconstructionLoss, build_perceptual, ssim_per_image
from .model import AEGAN

__all__ = ["LatentRefiner", "encoder_fidelity", "load_aegan", "project_codes", "project_dataset",
           "project_images", "reconstruction_metrics", "run_projection", "save_grid"]

LATENTS_FORMAT = "gmia-latents/1"
PSNR_CAP = 100.0  # dB, for identical images (keeps metrics.json finite)


def load_aegan(path_dir: str | Path, device: str | torch.device = "cpu") -> AEGAN:
    """The exported stage-1 model (``aegan.safetensors`` + ``aegan.json``) from a checkpoint folder, eval mode."""
    model = load_module(path_dir, "aegan", device=device)
    if not isinstance(model, AEGAN):
        raise CheckpointError(f"{Path(path_dir) / 'aegan.json'}: holds a {type(model).__name__}, not a stage-1 AEGAN")
    return model.requires_grad_(False)


# ---- metrics ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruction_metrics(x_hat: torch.Tensor, x: torch.Tensor,
                           perceptual: PerceptualLoss | None = None) -> dict[str, torch.Tensor]:
    """Per-image fidelity (N,) of reconstructions (clamped to [0, 1]) against x: "psnr" (dB, kornia, capped at
    100), "ssim" (kornia, 11x11 Gaussian window, mean over the map) and, with a perceptual module, its name."""
    if x_hat.shape != x.shape:
        raise ValueError(f"metrics: reconstruction {tuple(x_hat.shape)} vs image {tuple(x.shape)}")
    x_hat = x_hat.clamp(0, 1)
    psnr = torch.stack([kornia.metrics.psnr(x_hat[i:i + 1], x[i:i + 1], 1.0) for i in range(len(x))])
    ssim = ssim_per_image(x_hat, x)
    out = {"psnr": psnr.nan_to_num(posinf=PSNR_CAP).clamp(max=PSNR_CAP), "ssim": ssim}
    if perceptual is not None:
        out[perceptual.name] = perceptual(x_hat, x)
    return out


# ---- refinement ------------------------------------------------------------------------------------------------
class LatentRefiner:
    """Adam on the latent codes of one batch against ``loss`` (a ReconstructionLoss); cosine lr ramp-down.

    ``step()`` runs one update and returns the per-image loss (N,) of the codes it started from; ``best``
    holds each image's best code so far and ``best_loss`` its loss.
    """

    def __init__(self, model: AEGAN, x: torch.Tensor, w_init: torch.Tensor, loss: ReconstructionLoss,
                 steps: int, lr: float = 0.03, noise_mode: str = "const", noise_seeds: list[int] | None = None):
        self.model, self.x, self.loss, self.steps, self.lr = model, x, loss, int(steps), float(lr)
        self.noise_mode = noise_mode
        self.noise_seeds = noise_seeds  # per-image fixed noise (stage 2 renders with the same), else noise_mode
        self.w = w_init.detach().clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.w], lr=lr, betas=(0.9, 0.999))
        self.best = w_init.detach().clone()
        self.best_loss = torch.full((len(x),), math.inf, device=x.device)
        self.t = 0

    def _evaluate(self) -> torch.Tensor:
        if self.noise_seeds is not None:
            x_hat = self.model.synthesize(self.w, noise_seeds=self.noise_seeds)
        else:
            x_hat = self.model.synthesize(self.w, noise_mode=self.noise_mode)
        total, _ = self.loss(x_hat, self.x)
        return total  # (N,)

    def _keep_best(self, total: torch.Tensor) -> None:
        better = total.detach() < self.best_loss
        self.best_loss = torch.where(better, total.detach(), self.best_loss)
        self.best[better] = self.w.detach()[better]

    def step(self) -> torch.Tensor:
        for group in self.opt.param_groups:
            group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * self.t / max(self.steps, 1)))
        total = self._evaluate()
        self._keep_best(total)
        (grad,) = torch.autograd.grad(total.sum(), self.w)  # no parameter gradients accumulate in the model
        self.w.grad = grad
        self.opt.step()
        self.t += 1
        return total.detach()

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(best codes, their per-image loss), after scoring the last update too."""
        with torch.enable_grad():
            self._keep_best(self._evaluate())
        return self.best, self.best_loss


@torch.no_grad()
def project_codes(model: AEGAN, x: torch.Tensor, refine_steps: int = 0, refine_lr: float = 0.03,
                  noise_seeds: list[int] | None = None, start: torch.Tensor | None = None) -> torch.Tensor:
    """Just the codes of x: E(x) (or ``start``, E(x) the caller already has), refined on pixel MSE for
    ``refine_steps`` under each image's noise (``noise_seeds``) or constant noise. What stage 2 starts from; no
    reconstructions, no metrics."""
    w0 = model.encode(x) if start is None else start
    if refine_steps <= 0:
        return w0
    return _refine(model, x, w0, ReconstructionLoss(1.0, 0.0, None), refine_steps, refine_lr, noise_seeds)[0]


def _refine(model: AEGAN, x, w0, loss: ReconstructionLoss, steps: int, lr: float, noise_seeds) -> tuple:
    """(best codes, their loss (N,)) after ``steps`` batched refinement steps from ``w0``."""
    refiner = LatentRefiner(model, x, w0, loss, steps, lr=lr, noise_seeds=noise_seeds)
    with torch.enable_grad():
        for _ in range(steps):
            refiner.step()
    return refiner.finish()


def project_images(model: AEGAN, x: torch.Tensor, refine_steps: int = 0, refine_lr: float = 0.03,
                   perceptual: PerceptualLoss | None = None, lambda_mse: float = 1.0,
                   lambda_perc: float = 1.0, noise_seeds: list[int] | None = None, *, lambda_ssim: float = 0.0,
                   refine_space: str | None = None) -> dict:
    """Project a batch x (N, C, R, R) in [0, 1].

    Returns {"w_encoder", "x_hat_encoder", "metrics_encoder"} and, refined (or equal without refinement),
    {"w", "x_hat", "metrics"}, plus "loss_encoder"/"loss" (N,) in the refinement loss
    (λ_mse·MSE + λ_perc·perceptual + λ_ssim·(1 - SSIM)). Codes: (N, w_dim) in W space, (N, num_ws, w_dim) in W+.
    refine_space "w+" refines one code per style input even for a W model (its E(x) copied to every layer):
    more room to fit the image, at the price of leaving the encoder's space (None: the model's own space).
    """
    if refine_space not in (None, "w", "w+"):
        raise ValueError(f"refine_space must be None, 'w' or 'w+'; got {refine_space!r}")
    expected = (model.img_channels, model.img_resolution, model.img_resolution)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise InputError(f"project: expected images (N, {', '.join(map(str, expected))}); got {tuple(x.shape)}")
    loss = ReconstructionLoss(lambda_mse, lambda_perc, perceptual, lambda_ssim)
    with torch.no_grad():
        w0 = model.encode(x)
        x0 = model.synthesize(w0)
        loss0, _ = loss(x0, x)
    out = {"w_encoder": w0, "x_hat_encoder": x0, "metrics_encoder": reconstruction_metrics(x0, x, perceptual),
           "loss_encoder": loss0}
    if refine_steps > 0:
        start = model.broadcast(w0) if refine_space == "w+" else w0
        w, best_loss = _refine(model, x, start, loss, refine_steps, refine_lr, noise_seeds)
        with torch.no_grad():
            x_hat = model.synthesize(w)
        out.update(w=w, x_hat=x_hat, metrics=reconstruction_metrics(x_hat, x, perceptual), loss=best_loss)
    else:
        out.update(w=w0, x_hat=x0, metrics=out["metrics_encoder"], loss=loss0)
    return out


def encoder_fidelity(model: AEGAN, dataset: ImageDataset, batch_size: int = 100) -> dict[str, float]:
    """Mean SSIM and PSNR of G(E(x)) over every image of ``dataset`` (encoder only, in batches)."""
    parts = {"ssim": [], "psnr": []}
    for i in range(0, len(dataset), batch_size):
        x = torch.stack([dataset[j]["image"] for j in range(i, min(i + batch_size, len(dataset)))])
        with torch.no_grad():
            metrics = reconstruction_metrics(model.reconstruct(x), x)
        for k in parts:
            parts[k].append(metrics[k])
    return {k: float(torch.cat(v).mean()) for k, v in parts.items()}


# ---- files -----------------------------------------------------------------------------------------------------
def save_grid(real: torch.Tensor, recon: torch.Tensor, path: str | Path) -> Path:
    """PNG of (real | reconstruction) pairs, (N, C, R, R) each in [0, 1], about square."""
    n, c, r, _ = real.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = torch.ones(c, rows * r, cols * 2 * r)
    for i in range(n):
        top, left = (i // cols) * r, (i % cols) * 2 * r
        grid[:, top:top + r, left:left + r] = real[i].cpu()
        grid[:, top:top + r, left + r:left + 2 * r] = recon[i].detach().cpu().clamp(0, 1)
    return save_image(grid, path)


def _recon_path(out_dir: Path, key: str) -> Path:
    return (out_dir / "reconstructions" / key).with_suffix(".png")


def _mean(rows: list[dict], name: str) -> float:
    values = [r[name] for r in rows if r.get(name) is not None]
    return float(sum(values) / len(values)) if values else float("nan")


def project_dataset(model: AEGAN, dataset: ImageDataset, out_dir: str | Path, refine_steps: int = 0,
                    refine_lr: float = 0.03, perceptual: PerceptualLoss | None = None, batch_size: int = 32,
                    lambda_mse: float = 1.0, lambda_perc: float = 1.0, progress: bool = True,
                    checkpoint: str | Path | None = None, lambda_ssim: float = 0.0,
                    refine_space: str | None = None) -> dict:
    """Project every image of ``dataset`` and write latents, reconstructions and metrics to ``out_dir``.

    Returns the "mean" block of metrics.json (PSNR, SSIM, perceptual; "_encoder" suffix = before refinement).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    keys, ws, ws0, rows = [], [], [], []
    n = len(dataset)
    if n == 0:
        raise InputError(f"{dataset}: no images to project")
    bar = tqdm(total=n, unit="img", desc="project", disable=not progress, dynamic_ncols=True)
    for start in range(0, n, batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, n))]
        x = torch.stack([s["image"] for s in samples]).to(device)
        res = project_images(model, x, refine_steps, refine_lr, perceptual, lambda_mse, lambda_perc,
                             lambda_ssim=lambda_ssim, refine_space=refine_space)
        for i, s in enumerate(samples):
            save_image(res["x_hat"][i].clamp(0, 1), _recon_path(out_dir, s["key"]))
            row = {"key": s["key"]}
            row.update({k: float(v[i]) for k, v in res["metrics"].items()})
            if refine_steps > 0:
                row.update({f"{k}_encoder": float(v[i]) for k, v in res["metrics_encoder"].items()})
            rows.append(row)
        keys += [s["key"] for s in samples]
        ws.append(res["w"].cpu())
        ws0.append(res["w_encoder"].cpu())
        bar.update(len(samples))
        bar.set_postfix(ssim=f"{_mean(rows, 'ssim'):.4f}", psnr=f"{_mean(rows, 'psnr'):.2f}")
    bar.close()
    space = refine_space if refine_steps > 0 and refine_space else model.latent
    meta = {"format": LATENTS_FORMAT, "keys": json.dumps(keys), "latent": space,
            "refine_steps": str(refine_steps)}
    tmp = out_dir / ".latents.safetensors.tmp"
    save_file({"w": torch.cat(ws).contiguous(), "w_encoder": torch.cat(ws0).contiguous()}, str(tmp), metadata=meta)
    tmp.replace(out_dir / "latents.safetensors")
    names = [k for k in rows[0] if k != "key"]
    mean = {k: _mean(rows, k) for k in names}
    record = {"n": n, "mean": mean, "per_image": rows,
              "settings": {"refine_steps": refine_steps, "refine_lr": refine_lr, "lambda_mse": lambda_mse,
                           "lambda_perc": lambda_perc, "lambda_ssim": lambda_ssim,
                           "perceptual": perceptual.name if perceptual else None, "latent": space,
                           "noise_mode": "const"},
              "checkpoint": None if checkpoint is None else
              {"dir": str(checkpoint), "sha256": sha256_file(Path(checkpoint) / "aegan.safetensors")}}
    atomic_write_json(out_dir / "metrics.json", record)
    parts = [f"{k} {v:.4f}" for k, v in mean.items()]
    log(None, f"projected {n} images -> {out_dir}: mean " + ", ".join(parts))
    return mean


def run_projection(cfg: ProjectionConfig, preset: str | None, input_dir: str | Path, out_dir: str | Path,
                   checkpoint: str | Path, device: str | torch.device | None = None, progress: bool = True) -> dict:
    """``gmia project``: load the stage-1 model from ``checkpoint``, project ``input_dir``, write ``out_dir``."""
    device = resolve_device(device)
    model = load_aegan(checkpoint, device=device)
    dataset = data.open(input_dir, split=cfg.split, size=model.img_resolution, channels=model.img_channels)
    try:
        # the MFM is looked up beside the stage-1 checkpoint first (a user's folder), then in checkpoints/
        mfm_root = checkpoint if (Path(checkpoint) / "mfm.json").is_file() else "checkpoints"
        perceptual = build_perceptual(cfg.perceptual, preset, cfg.lpips_weights, device, checkpoints=mfm_root)
    except CheckpointError as exc:
        if cfg.perceptual != "auto":
            raise
        perceptual = None
        log(None, f"perceptual metric and term: none ({exc})")
    return project_dataset(model, dataset, out_dir, refine_steps=cfg.refine_steps, refine_lr=cfg.refine_lr,
                           perceptual=perceptual, batch_size=cfg.batch_size, lambda_mse=cfg.lambda_mse,
                           lambda_perc=cfg.lambda_perc, progress=progress, checkpoint=checkpoint,
                           lambda_ssim=cfg.lambda_ssim, refine_space=cfg.refine_space)
