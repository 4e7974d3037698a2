"""E_ut2, the second utility network: a finding classifier of another family than E_ut, read by stage 2 beside it.

Why a second one: the optimizer pleases the networks it is given, and E_ut (a DenseNet) accepts renderings that a
classifier of another family reads less well. On 200 chest validation images an independent ResNet-18 kept 0.972x
its AUROC on originals with E_ut alone and 0.983x with this network's features kept too (docs/results.md, "What G
can render"). A weak second classifier did harm (a MobileNetV3-small at macro AUROC 0.78: 0.932x): what its
features ask for is more than the findings. So this one is plain and accurate: stages of 3x3 convolution + batch
norm + ReLU ended by 2x2 max-pooling, no residual or dense connections, its features the spatial mean of the last
map (the head reads them through one linear layer).

    >>> net = PlainUtilityNet(in_channels=1, num_findings=6)
    >>> f, logits = net.features(x), net.logits(x)        # (N, 256), (N, 6)
"""

from __future__ import annotations

import torch
from torch import nn

from .base import FrozenNet, plain_cnn

__all__ = ["PlainUtilityNet"]


class PlainUtilityNet(FrozenNet):
    """Plain CNN finding classifier; ``features`` (N, widths[-1]) is what stage 2 keeps (``lambda_ut2``)."""

    has_segmentation = False

    def __init__(self,
                 in_channels: int = 1,                 # image channels: 1 (X-ray) or 3 (face)
                 resolution: int = 64,                 # side of the square image the trunk sees
                 num_findings: int = 6,                # outputs of the multi-label head
                 finding_names: tuple = (),            # their names, in order (kept in the checkpoint card)
                 widths: tuple = (32, 64, 128, 256),   # channels per stage; a 2x2 max-pool ends each stage
                 convs: tuple = (2, 2, 2, 2),          # conv3x3-BN-ReLU layers per stage
                 ):
        super().__init__(in_channels, resolution)
        if finding_names and len(finding_names) != num_findings:
            raise ValueError(f"{len(finding_names)} finding names for {num_findings} findings")
        if len(widths) != len(convs) or not widths:
            raise ValueError(f"widths and convs must be as long as each other (one per stage), got {widths}, {convs}")
        self.finding_names, self.num_findings = tuple(finding_names), int(num_findings)
        self.feature_dim = int(widths[-1])
        self.trunk, c = plain_cnn(in_channels, widths, convs)
        self.head = nn.Linear(c, num_findings)

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One pass: {"features" (N, feature_dim), "logits" (N, num_findings)}."""
        feats = self.trunk(self.prepare(x) * 2 - 1).mean(dim=(2, 3))
        return {"features": feats, "logits": self.head(feats)}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, feature_dim) of images x (N, 1|3, S, S) in [0, 1]."""
        return self.outputs(x)["features"]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Finding logits (N, num_findings); sigmoid gives probabilities."""
        return self.outputs(x)["logits"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
