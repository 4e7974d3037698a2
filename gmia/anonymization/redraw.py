"""Re-draw everything but the findings: the start of stage 2 shares with its source only what utility must keep.

    split = LatentSplit.load(folder)                 # latent-split.safetensors + its card latent-split.json
    w0 = split.redraw(w, w_t, prior, strength=1.0)   # w = E(x), w_t = the record's surrogate code
    fit_split("checkpoints/phantom-cxr64", "data/phantom-cxr64")   # = gmia fit-split

Why. The per-image optimizer moves only what E_id sees. Whatever E_id does not weigh (pose, exposure, the
placement of devices, most of a face) stays in the code, and an attacker trained on anonymized images learns it
back: on phantom-cxr64 the adaptive attacker links 0.79 of own sources after optimization, and G(E(x)) itself is
linked at 1.00. Re-drawing removes the link at its root: in the whitened latent space of the prior (z = A⁻¹(w − μ),
where every direction has unit variance) a small subspace K is fitted, on training images only, to predict the
findings and where they are (reduced-rank ridge regression of the finding labels and the lesion masks, pooled to
8 × 8). The start code keeps the source's component in K and takes everything else from the record's surrogate:

    z_0 = z + s · (I − K Kᵀ)(z_T − z)        s = strength: 0 = the source, 1 = only the findings kept

so identity, pose and exposure come from a generated nobody (drawn by the record's seed, independent of the
source) and the findings from the source. The optimizer then restores, under the identity hinge, what the linear
subspace misses of the findings. Measured with ``experiments/latent_split.py`` (docs/results.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from ..checkpoints import check_fitted, read_card, read_verified, write_card
from ..errors import CheckpointError
from ..fileio import atomic_path

__all__ = ["LatentSplit", "SPLIT_NAME", "fit_split", "split_of", "split_fitted_to", "finding_basis"]

SPLIT_NAME = "latent-split"
SPLIT_CLASS = "gmia.anonymization.LatentSplit"
POOL = 8  # lesion masks pooled to POOL x POOL targets: where a finding is, coarsely


def finding_basis(z: torch.Tensor, labels: np.ndarray, masks: torch.Tensor | None, rank: int,
                  ridge: float = 10.0) -> torch.Tensor:
    """Orthonormal (D, rank) basis of the directions of whitened codes ``z`` (N, D) that predict the finding
    ``labels`` (N, F; NaN = unknown, read as 0) and, when given, the lesion ``masks`` (N, 1, S, S) pooled to 8 × 8.

    Reduced-rank ridge regression: fit all targets (standardized) on z, take the ``rank`` leading directions of
    the fitted values, map them back to z space."""
    z = z.double()
    t = torch.as_tensor(np.nan_to_num(np.asarray(labels, dtype=np.float64)))
    if masks is not None:
        t = torch.cat([t, torch.nn.functional.adaptive_avg_pool2d(masks.double(), POOL).flatten(1)], 1)
    t = (t - t.mean(0)) / t.std(0).clamp_min(1e-6)
    zc = z - z.mean(0)
    coef = torch.linalg.solve(zc.T @ zc + ridge * torch.eye(z.shape[1], dtype=z.dtype), zc.T @ t)    # (D, T)
    _, _, vh = torch.linalg.svd(zc @ coef, full_matrices=False)
    rank = min(rank, vh.shape[0])
    basis, _ = torch.linalg.qr(coef @ vh[:rank].T)
    return basis


class LatentSplit:
    """The kept subspace ``keep`` (D, R), orthonormal in the prior's whitened space."""

    def __init__(self, keep: torch.Tensor, meta: dict | None = None):
        self.keep = keep.double()
        self.meta = dict(meta or {})
        self.sha256: str | None = None

    @property
    def rank(self) -> int:
        return self.keep.shape[1]

    def redraw(self, w: torch.Tensor, w_t: torch.Tensor, prior, strength: float = 1.0) -> torch.Tensor:
        """Start codes (N, ...) that keep ``w``'s finding component and take the rest from ``w_t`` (module doc)."""
        shape, dtype = w.shape, w.dtype
        a_inv = prior.whitening()
        z = (w.flatten(1).double().cpu() - prior.mu) @ a_inv.T
        z_t = (w_t.flatten(1).double().cpu() - prior.mu) @ a_inv.T
        delta = z_t - z
        delta = delta - (delta @ self.keep) @ self.keep.T
        out = prior.mu + (z + strength * delta) @ prior.a.T
        return out.to(device=w.device, dtype=dtype).reshape(shape)

    def save(self, folder: str | Path, meta: dict | None = None) -> Path:
        folder = Path(folder)
        path = folder / f"{SPLIT_NAME}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"keep": self.keep.float().contiguous()}, str(tmp), metadata={"format": "pt"})
        write_card(folder, SPLIT_NAME, SPLIT_CLASS, {"dim": self.keep.shape[0], "rank": self.rank},
                   self.meta if meta is None else meta, dtype="float32", num_tensors=1)
        return path

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / f"{SPLIT_NAME}.json").is_file()

    @classmethod
    def load(cls, folder: str | Path) -> "LatentSplit":
        """The split in ``folder``, checked against its card's sha256 and shape."""
        folder = Path(folder)
        fix = f"fit it with `gmia fit-split --preset PRESET --data DIR --checkpoints {folder}`"
        if not cls.exists(folder):
            raise CheckpointError(f"no latent split: expected {folder / SPLIT_NAME}.json and .safetensors; {fix}")
        try:
            card = read_card(folder, SPLIT_NAME)
            if card["class"] != SPLIT_CLASS:
                raise CheckpointError(f"{folder / SPLIT_NAME}.json: a card of a {card['class']!r}, not of a latent split")
            t = load_safetensors(read_verified(folder, SPLIT_NAME, card))
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; or {fix}") from None
        check_fitted(folder, SPLIT_NAME, card, fix)
        keep = t.get("keep")
        dim, rank = card["kwargs"].get("dim"), card["kwargs"].get("rank")
        if keep is None or tuple(keep.shape) != (dim, rank):
            raise CheckpointError(f"{folder / SPLIT_NAME}.safetensors: needs a tensor 'keep' of shape (dim, rank) "
                                  f"= ({dim}, {rank}) as its card says; {fix}")
        split = cls(keep, card.get("meta"))
        split.sha256 = card["sha256"]
        return split


@torch.no_grad()
def split_of(model, prior, batches, labels: np.ndarray, rank: int = 48) -> LatentSplit:
    """The finding subspace of the images in ``batches`` (an iterable of (images (n, C, R, R) in [0, 1], their lesion
    masks (n, 1, R, R) or None)) with finding ``labels`` (N, F) in the same order, in the whitened space of the
    stage-1 ``model``'s latent ``prior``."""
    codes, masks = [], []
    for x, m in batches:
        codes.append(model.encode(x.to(model_device(model))).cpu())
        if m is not None:
            masks.append(m.float())
    n = sum(len(c) for c in codes)
    if n < 2 * rank:
        raise CheckpointError(f"a latent split of rank {rank} needs at least {2 * rank} labelled images, found {n}")
    z = (torch.cat(codes).flatten(1).double() - prior.mu) @ prior.whitening().T
    return LatentSplit(finding_basis(z, labels, torch.cat(masks) if masks else None, rank))


def fit_split(checkpoint: str | Path, data: str | Path, split: str | None = "train", rank: int = 48,
              limit: int | None = None, device=None, batch_size: int = 128) -> Path:
    """Fit the finding subspace of the stage-1 model and latent prior in ``checkpoint`` on the labelled images
    of ``data`` (and their lesion masks, when the dataset has them); save it there and return the file."""
    from ..data import open as open_data
    from ..projection.prior import LatentPrior
    from ..projection.project import load_aegan
    from ..runs import environment, log

    folder = Path(checkpoint)
    model = load_aegan(folder, device or "cpu")
    prior = LatentPrior.load(folder)
    ds = open_data(data, split=split, size=model.img_resolution, channels=model.img_channels)
    n = len(ds) if limit is None else min(limit, len(ds))
    if not ds.findings:
        raise CheckpointError(f"{data}: a latent split needs finding labels (a labels file), found none")
    if n < 2 * rank:
        raise CheckpointError(f"{data}: a latent split of rank {rank} needs at least {2 * rank} images, found {n}")

    def batches():
        for start in range(0, n, batch_size):
            samples = [ds[i] for i in range(start, min(n, start + batch_size))]
            yield (torch.stack([s["image"] for s in samples]),
                   torch.stack([s["mask"] for s in samples]) if ds.has_masks else None)

    fitted = split_of(model, prior, batches(), ds.labels()[:n], rank)
    env = environment()
    meta = {"fitted_to": split_fitted_to(folder),
            "data": {"root": str(data), "split": split, "images": n, "findings": list(ds.findings),
                     "lesion_masks": bool(ds.has_masks)},
            "command": " ".join(env["argv"]), "environment": env}
    path = fitted.save(folder, meta)
    log(None, f"latent split (rank {fitted.rank}) fitted to {n} images of {data} -> {path}")
    return path


def split_fitted_to(folder: str | Path) -> dict[str, str]:
    """What a latent split in ``folder`` is fitted to: the sha256s of the stage-1 model and the latent prior there."""
    return {"aegan_sha256": read_card(folder, "aegan")["sha256"],
            "latent_prior_sha256": read_card(folder, "latent-prior")["sha256"]}


def model_device(model) -> torch.device:
    return next(model.parameters()).device
