"""Fidelity: how close anonymized images (and stage-1 reconstructions) stay to their sources, and to the data.

- PSNR and SSIM per image against the source (kornia, through ``gmia.projection.project.reconstruction_metrics``:
  11×11 Gaussian SSIM window, PSNR capped at 100 dB for identical images), averaged.
- A perceptual distance: LPIPS (AlexNet) when its trunk weights are in the local torch hub cache (never
  downloaded), else the relative squared distance of MFM features ``|f(x̂) − f(x)|² / |f(x)|²`` — reported under
  the name of what it is (``lpips`` or ``mfm_feature_distance``), never as "LPIPS".
- Fréchet distance between the Gaussians fitted to two sets of features,
  ``FD = |μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½)``, in the feature space of the preset's MFM (a
  self-supervised encoder of the domain trained without labels; an ImageNet Inception would measure the wrong
  domain). The matrix square roots come from symmetric eigendecompositions in float64, so no scipy is needed:
  Σ₁^½ = V diag(√λ) Vᵀ, and tr((Σ₁^½ Σ₂ Σ₁^½)^½) is the sum of the square roots of that symmetric PSD
  matrix's eigenvalues (equal to tr((Σ₁Σ₂)^½)). Fréchet distances from a few hundred images are biased upwards;
  compare them only between sets of the same size (the reconstructions' value is the reference).
"""

from __future__ import annotations

import numpy as np
import torch

from ..projection.losses import FeatureLoss, LpipsLoss, PerceptualLoss, local_alexnet_weights
from ..projection.project import reconstruction_metrics

__all__ = ["frechet_distance", "image_fidelity", "perceptual_metric"]


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(f1, f2) -> float:
    """Fréchet distance between Gaussians fitted to features f1 (N1, D) and f2 (N2, D) (see the module doc)."""
    a = torch.as_tensor(np.asarray(f1), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(f2), dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: features must be (N, D) with equal D; got {tuple(a.shape)}, {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    r1 = _sqrt_psd(s1)
    cross = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp(min=0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross
    return float(fd.clamp(min=0))


def perceptual_metric(mfm=None) -> PerceptualLoss | None:
    """LPIPS when its local weights exist, else the MFM feature distance, else None."""
    weights = local_alexnet_weights()
    if weights is not None:
        return LpipsLoss(weights).freeze()
    if mfm is not None:
        return FeatureLoss(mfm, name="mfm_feature_distance")
    return None


@torch.no_grad()
def image_fidelity(x: torch.Tensor, ref: torch.Tensor, perceptual: PerceptualLoss | None = None,
                   batch_size: int = 128) -> dict[str, float]:
    """Mean PSNR (dB), SSIM and perceptual distance of images x against ref, both (N, C, S, S) in [0, 1]."""
    sums: dict[str, float] = {}
    for s in range(0, len(x), batch_size):
        m = reconstruction_metrics(x[s:s + batch_size], ref[s:s + batch_size], perceptual)
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
    return {k: v / max(len(x), 1) for k, v in sums.items()}
