"""Additive-margin softmax heads for training identity embedders (not used at inference).

With unit embeddings e and unit class centres W_c, the target logit cos θ_y is replaced by
    ArcFace  (Deng et al. 2019):  s · cos(θ_y + m)
    CosFace  (Wang et al. 2018):  s · (cos θ_y − m)
and the other logits stay s · cos θ_j; cross-entropy on these logits pulls a patient's studies together
on the sphere and pushes patients apart by a margin. One function (``margin_logits``) plus a thin module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["margin_logits", "MarginHead", "ArcFaceHead", "CosFaceHead"]


def margin_logits(cosine: torch.Tensor, target: torch.Tensor, kind: str, scale: float,
                  margin: float) -> torch.Tensor:
    """Logits (N, K) from cosines (N, K) to the class centres, with the margin on each target column."""
    target_cos = cosine.gather(1, target[:, None]).squeeze(1)  # (N,)
    if kind == "arcface":
        sin = (1.0 - target_cos.square()).clamp(min=1e-7).sqrt()
        shifted = target_cos * math.cos(margin) - sin * math.sin(margin)   # cos(θ + m)
        # beyond θ = π − m, cos(θ + m) would rise again; fall back to a linear penalty to stay monotone
        shifted = torch.where(target_cos > math.cos(math.pi - margin), shifted,
                              target_cos - margin * math.sin(margin))
    elif kind == "cosface":
        shifted = target_cos - margin
    else:
        raise ValueError(f"unknown margin kind {kind!r}; valid: arcface, cosface")
    logits = cosine.scatter(1, target[:, None], shifted[:, None].to(cosine.dtype))
    return scale * logits


class MarginHead(nn.Module):
    """Class centres W (K, D) and the margin softmax loss; ``forward(emb, target)`` → scalar loss."""

    kind = "arcface"

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 32.0, margin: float = 0.3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embed_dim) * 0.01)
        self.scale, self.margin = float(scale), float(margin)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(emb, dim=1) @ F.normalize(self.weight, dim=1).T  # (N, K)

    def forward(self, emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = margin_logits(self.cosine(emb), target, self.kind, self.scale, self.margin)
        return F.cross_entropy(logits, target)


class ArcFaceHead(MarginHead):
    kind = "arcface"


class CosFaceHead(MarginHead):
    kind = "cosface"
