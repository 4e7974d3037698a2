"""The re-identification attacker used by evaluation only: the optimizer never sees it.

It must not share the optimizer's blind spots, so it differs from E_id in every design choice we control:
architecture family (a plain VGG-style CNN without residual connections, with ReLU instead of PReLU),
pooling (learned generalized-mean pooling instead of a flattened map), loss (CosFace instead of ArcFace),
augmentation and seed, and it is a different class stored under a different checkpoint name
(``attacker``), so no code path can load one in place of the other.

    >>> atk = AttackerNet(in_channels=1)
    >>> e = atk.embed(x)                 # (N, 512), unit norm
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FrozenNet, plain_cnn

__all__ = ["AttackerNet", "GeM"]


class GeM(nn.Module):
    """Generalized-mean pooling: (mean x^p)^(1/p) over space, p learned (p = 1 average, p → ∞ max)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x):  # (N, C, H, W) → (N, C)
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class AttackerNet(FrozenNet):
    """VGG-style re-identifier; ``embed(x)`` → (N, embed_dim) unit-norm vectors, compared by cosine."""

    def __init__(self,
                 in_channels: int = 1,                 # image channels: 1 (X-ray) or 3 (face)
                 resolution: int = 64,                 # side of the square image the trunk sees
                 widths: tuple = (32, 64, 128, 256),   # channels per stage; a 2x2 max-pool ends each stage
                 convs: tuple = (2, 2, 2, 2),          # conv3x3-BN-ReLU layers per stage
                 embed_dim: int = 512,                 # embedding size
                 gem_p: float = 3.0,                   # initial GeM exponent
                 ):
        super().__init__(in_channels, resolution)
        self.embed_dim = int(embed_dim)
        self.trunk, c = plain_cnn(in_channels, widths, convs)
        self.pool = GeM(gem_p)
        self.fc = nn.Linear(c, embed_dim)
        self.bn = nn.BatchNorm1d(embed_dim)

    def raw_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(N, embed_dim) before normalization; x already prepared."""
        return self.bn(self.fc(self.pool(self.trunk(x - 0.5))))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings (N, embed_dim) of images x (N, 1|3, S, S) in [0, 1]."""
        return F.normalize(self.raw_embedding(self.prepare(x)), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)
