"""A Gaussian prior over the stage-1 latent space: w = μ + A z, z ~ N(0, I), fitted to encoded images.

    prior = LatentPrior.fit(model, x_train)          # μ, A from E(x) of training images
    w = prior.sample([seed_1, seed_2])               # one code per seed, reproducible
    prior.save(folder); LatentPrior.load(folder)     # latent-prior.safetensors beside aegan.*
    fit_prior("checkpoints/phantom-cxr64", "data/phantom-cxr64", split="train")   # = gmia fit-prior

The AE-GAN has no mapping network (its generator is only ever driven by E(x)), so "a random face or chest
X-ray of nobody" needs a distribution over W. A full-covariance Gaussian fitted to E(x) of the training images,
with the covariance shrunk towards its diagonal, is the simplest one that keeps samples on the generator's
manifold. Two users: membership inference (generated samples for the nearest-sample attack) and stage 2's
surrogate identities (``gmia.anonymization.surrogate``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

__all__ = ["LatentPrior", "PRIOR_FILE", "fit_prior"]

PRIOR_FILE = "latent-prior.safetensors"


class LatentPrior:
    """w = μ + A z: ``mu`` (D,), ``a`` (D, D) with A Aᵀ = Σ, ``shape`` the code shape (w_dim,) or (num_ws, w_dim)."""

    def __init__(self, mu: torch.Tensor, a: torch.Tensor, shape: tuple[int, ...], images: int = 0):
        self.mu, self.a, self.shape, self.images = mu.double(), a.double(), tuple(shape), int(images)

    @classmethod
    @torch.no_grad()
    def fit(cls, model, x: torch.Tensor, shrinkage: float = 0.1, batch_size: int = 64) -> "LatentPrior":
        """Fit to E(x) of images ``x`` (N, C, R, R) in [0, 1]; Σ ← (1 − shrinkage) Σ + shrinkage diag(Σ)."""
        device = next(model.parameters()).device
        w = torch.cat([model.encode(x[s:s + batch_size].to(device)).cpu() for s in range(0, len(x), batch_size)])
        shape = tuple(w.shape[1:])
        w = w.flatten(1).double()
        mu = w.mean(0)
        cov = torch.cov(w.T) if len(w) > 1 else torch.zeros(w.shape[1], w.shape[1], dtype=w.dtype)
        cov = (1 - shrinkage) * cov + shrinkage * torch.diag(torch.diag(cov))
        vals, vecs = torch.linalg.eigh(cov)
        return cls(mu, vecs * vals.clamp(min=0).sqrt(), shape, len(w))

    def sample_z(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (N, *shape) float32 for standard-normal draws ``z`` (N, D)."""
        return (self.mu + z.double() @ self.a.T).float().reshape(len(z), *self.shape)

    def sample(self, seeds: list[int], device=None) -> torch.Tensor:
        """One code per seed (N, *shape): the same seed always gives the same code, whatever the batch."""
        z = torch.stack([torch.randn(self.a.shape[1], generator=torch.Generator().manual_seed(int(s)),
                                     dtype=torch.float64) for s in seeds])
        return self.sample_z(z).to(device or "cpu")

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / PRIOR_FILE
        save_file({"mu": self.mu.float().contiguous(), "a": self.a.float().contiguous()}, str(path),
                  metadata={"shape": ",".join(map(str, self.shape)), "images": str(self.images)})
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "LatentPrior":
        path = Path(folder) / PRIOR_FILE
        if not path.is_file():
            raise CheckpointError(f"no latent prior: expected {path}. Fit it on training images with "
                                  f"`gmia fit-prior --data DIR --checkpoint {Path(folder)}`")
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        t = load_file(str(path))
        if "shape" not in meta or set(t) != {"mu", "a"}:
            raise CheckpointError(f"{path}: not a gmia latent prior (needs tensors mu, a and a 'shape' entry)")
        shape = tuple(int(v) for v in meta["shape"].split(","))
        return cls(t["mu"], t["a"], shape, int(meta.get("images", 0)))


def fit_prior(checkpoint: str | Path, data: str | Path, split: str | None = "train", limit: int | None = None,
              shrinkage: float = 0.1, device=None) -> Path:
    """Fit the prior of the stage-1 model in ``checkpoint`` (a folder with aegan.*) to the images of ``data``
    (phantom folder and ``split``, or an image folder) and save it there; returns the file written."""
    from ..runs import log
    from .project import load_aegan, open_images

    model = load_aegan(Path(checkpoint), device or "cpu")
    ds = open_images(data, split, model.img_resolution, model.img_channels)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n < 2:
        raise CheckpointError(f"{data}: a latent prior needs at least 2 images, found {n}")
    x = torch.stack([ds[i]["image"] for i in range(n)])
    path = LatentPrior.fit(model, x, shrinkage).save(checkpoint)
    log(None, f"latent prior fitted to E(x) of {n} images of {data} -> {path}")
    return path
