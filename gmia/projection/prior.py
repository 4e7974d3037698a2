"""A Gaussian prior over the stage-1 latent space: w = μ + A z, z ~ N(0, I), fitted to encoded images.

    prior = LatentPrior.fit(model, x_train)          # μ, A from E(x) of training images
    w = prior.sample([seed_1, seed_2])               # one code per seed, reproducible
    prior.save(folder); LatentPrior.load(folder)     # latent-prior.safetensors + its card latent-prior.json
    fit_prior("checkpoints/phantom-cxr64", "data/phantom-cxr64", split="train")   # = gmia fit-prior

The AE-GAN has no mapping network (its generator is only ever driven by E(x)), so "a random face or chest
X-ray of nobody" needs a distribution over W. A full-covariance Gaussian fitted to E(x) of the training images,
with the covariance shrunk towards its diagonal, is the simplest one that keeps samples on the generator's
manifold. Two users: membership inference (generated samples for the nearest-sample attack) and stage 2's
surrogate identities (``gmia.anonymization.surrogate``).

Like every checkpoint file, the prior has a card (``latent-prior.json``, gmia.checkpoints format: shape and image
count as kwargs, the file's sha256, what it was fitted to); ``load`` refuses a file that does not match it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from ..checkpoints import check_fitted, read_card, read_verified, write_card
from ..errors import CheckpointError
from ..fileio import atomic_path

__all__ = ["LatentPrior", "PRIOR_CLASS", "PRIOR_FILE", "PRIOR_NAME", "fit_prior"]

PRIOR_NAME = "latent-prior"                   # checkpoint name: latent-prior.safetensors + latent-prior.json
PRIOR_FILE = f"{PRIOR_NAME}.safetensors"
PRIOR_CLASS = "gmia.projection.LatentPrior"   # the card's class (not an nn.Module: load_module refuses it)


class LatentPrior:
    """w = μ + A z: ``mu`` (D,), ``a`` (D, D) with A Aᵀ = Σ, ``shape`` the code shape (w_dim,) or (num_ws, w_dim)."""

    def __init__(self, mu: torch.Tensor, a: torch.Tensor, shape: tuple[int, ...], images: int = 0,
                 meta: dict | None = None):
        self.mu, self.a, self.shape, self.images = mu.double(), a.double(), tuple(shape), int(images)
        self.meta = dict(meta or {})  # provenance for the card; kept when a loaded prior is saved elsewhere
        self.sha256: str | None = None  # of the file it was loaded from

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

    def whitening(self) -> torch.Tensor:
        """A⁻¹ (D, D) float64 (pseudo-inverse, cached): z = A⁻¹(w − μ) has unit covariance under the prior."""
        if getattr(self, "_a_inv", None) is None:
            self._a_inv = torch.linalg.pinv(self.a)
        return self._a_inv

    def sample_z(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (N, *shape) float32 for standard-normal draws ``z`` (N, D)."""
        return (self.mu + z.double() @ self.a.T).float().reshape(len(z), *self.shape)

    def sample(self, seeds: list[int], device=None) -> torch.Tensor:
        """One code per seed (N, *shape): the same seed always gives the same code, whatever the batch."""
        z = torch.stack([torch.randn(self.a.shape[1], generator=torch.Generator().manual_seed(int(s)),
                                     dtype=torch.float64) for s in seeds])
        return self.sample_z(z).to(device or "cpu")

    def save(self, folder: str | Path, meta: dict | None = None) -> Path:
        """Write ``latent-prior.safetensors`` and its card ``latent-prior.json`` (``meta``, else the meta this
        prior was loaded with); returns the weights file."""
        folder = Path(folder)
        path = folder / PRIOR_FILE
        with atomic_path(path) as tmp:  # shape and images are in the card; one metadata key keeps the bytes stable
            save_file({"mu": self.mu.float().contiguous(), "a": self.a.float().contiguous()}, str(tmp),
                      metadata={"format": "pt"})
        write_card(folder, PRIOR_NAME, PRIOR_CLASS, {"shape": list(self.shape), "images": self.images},
                   self.meta if meta is None else meta, dtype="float32", num_tensors=2)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "LatentPrior":
        """The prior in ``folder``, after checking ``latent-prior.safetensors`` against the sha256 of its card."""
        folder = Path(folder)
        path, card_path = folder / PRIOR_FILE, folder / f"{PRIOR_NAME}.json"
        fix = f"refit it with `gmia fit-prior --data DIR --checkpoint {folder}`"
        if not path.is_file():
            raise CheckpointError(f"no latent prior: expected {path}. Fit it on training images with "
                                  f"`gmia fit-prior --data DIR --checkpoint {folder}`")
        if not card_path.is_file():
            raise CheckpointError(f"{path}: its card {card_path.name} is missing, so the file cannot be checked "
                                  f"against a sha256; {fix}")
        try:
            card = read_card(folder, PRIOR_NAME)
            if card["class"] != PRIOR_CLASS:
                raise CheckpointError(f"{card_path}: a card of a {card['class']!r}, not of a latent prior")
            data = read_verified(folder, PRIOR_NAME, card)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; or {fix}") from None
        # fitted to the stage-1 model beside it: another generator's codes have other statistics
        check_fitted(folder, PRIOR_NAME, card, fix)
        shape, images = card["kwargs"].get("shape"), card["kwargs"].get("images", 0)
        try:
            t = load_safetensors(data)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: unreadable safetensors file ({exc}); {fix}") from None
        ok_shape = isinstance(shape, list) and shape and all(type(v) is int and v > 0 for v in shape)
        dim = math.prod(shape) if ok_shape else -1
        if (not ok_shape or type(images) is not int or set(t) != {"mu", "a"} or tuple(t["mu"].shape) != (dim,)
                or tuple(t["a"].shape) != (dim, dim)):
            raise CheckpointError(f"{path}: not a gmia latent prior (needs mu (D,) and a (D, D) with D the product "
                                  f"of the card's kwargs.shape); {fix}")
        prior = cls(t["mu"], t["a"], tuple(shape), images, card.get("meta"))
        prior.sha256 = card["sha256"]
        return prior


def fit_prior(checkpoint: str | Path, data: str | Path, split: str | None = "train", limit: int | None = None,
              shrinkage: float = 0.1, device=None) -> Path:
    """Fit the prior of the stage-1 model in ``checkpoint`` (a folder with aegan.*) to the images of ``data``
    (phantom folder and ``split``, or an image folder) and save it there; returns the file written."""
    from ..runs import environment, log
    from ..data import open as open_data
    from .project import load_aegan

    model = load_aegan(Path(checkpoint), device or "cpu")
    ds = open_data(data, split=split, size=model.img_resolution, channels=model.img_channels)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n < 2:
        raise CheckpointError(f"{data}: a latent prior needs at least 2 images, found {n}")
    x = torch.stack([ds[i]["image"] for i in range(n)])
    env = environment()
    meta = {"fitted_to": {"aegan_sha256": read_card(checkpoint, "aegan")["sha256"]},
            "data": {"root": str(data), "split": split, "images": n}, "shrinkage": shrinkage,
            "command": " ".join(env["argv"]), "environment": env}
    path = LatentPrior.fit(model, x, shrinkage).save(checkpoint, meta)
    log(None, f"latent prior fitted to E(x) of {n} images of {data} -> {path}")
    return path
