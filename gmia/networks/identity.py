"""E_id, the patient-identity embedder the optimizer pushes against: an ArcFace-style IResNet.

The layout follows the insightface IResNet used by the published method (stride-1 stem, pre-activation
"IBasicBlock" BN-conv-BN-PReLU-conv(stride)-BN plus shortcut, final BN → flatten → FC → BN1d), scaled by
kwargs: ``IdentityNet()`` is a 3.7 M-parameter "IResNet-lite" for 64 px phantoms, and
``IdentityNet(resolution=256, widths=(64, 128, 256, 512), blocks=(3, 4, 14, 3))`` is the IResNet-50 of
the reference (≈98 M parameters, most of them in the 131072 → 512 FC).

    >>> net = IdentityNet(in_channels=1, resolution=64)
    >>> e = net.embed(torch.rand(8, 1, 64, 64))                 # (8, 512), unit norm
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FrozenNet

__all__ = ["IdentityNet", "IBasicBlock"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class IBasicBlock(nn.Module):
    """BN-conv3x3-BN-PReLU-conv3x3(stride)-BN, plus a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + self.shortcut(x)


class IdentityNet(FrozenNet):
    """Patient-identity embedder; ``embed(x)`` → (N, embed_dim) unit-norm vectors, compared by cosine."""

    def __init__(self,
                 in_channels: int = 1,                  # image channels: 1 (X-ray) or 3 (face)
                 resolution: int = 64,                  # side of the square image the trunk sees
                 widths: tuple = (32, 64, 128, 256),    # channels of the four stages
                 blocks: tuple = (1, 2, 2, 1),          # IBasicBlocks per stage; each stage halves the size
                 stem_width: int | None = None,         # stem channels (default: widths[0])
                 stem_stride: int = 1,                  # 1 as in IResNet; 2 halves the compute at large sizes
                 embed_dim: int = 512,                  # embedding size
                 dropout: float = 0.0,                  # dropout before the embedding FC
                 input_range: str = "signed",           # what the stem sees: "signed" 2x - 1, "unit" x as it is
                                                        # (the published E_id; see gmia.networks.published)
                 ):
        super().__init__(in_channels, resolution)
        widths, blocks = tuple(widths), tuple(blocks)
        stem_width = stem_width or widths[0]
        self.embed_dim = int(embed_dim)
        if input_range not in ("signed", "unit"):
            raise ValueError(f"input_range must be 'signed' or 'unit', got {input_range!r}")
        self.input_range = input_range
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_width, 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(stem_width), nn.PReLU(stem_width))
        stages, cin = [], stem_width
        for width, n in zip(widths, blocks):
            stage = [IBasicBlock(cin, width, stride=2)] + [IBasicBlock(width, width, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            cin = width
        self.stages = nn.Sequential(*stages)
        side = resolution // stem_stride // 2 ** len(widths)
        if side < 1:
            raise ValueError(f"resolution {resolution} is too small for {len(widths)} stages and stem stride {stem_stride}")
        self.bn_out = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin * side * side, embed_dim)
        # insightface keeps the scale of the feature BN fixed at 1 and learns only its shift
        self.features_bn = nn.BatchNorm1d(embed_dim, eps=1e-5)
        nn.init.ones_(self.features_bn.weight)
        self.features_bn.weight.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def raw_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(N, embed_dim) embedding before normalization (what the margin head sees); x already prepared."""
        h = self.stages(self.stem(x * 2 - 1 if self.input_range == "signed" else x))  # (N, C, side, side)
        h = self.dropout(self.bn_out(h)).flatten(1)  # (N, C * side * side)
        return self.features_bn(self.fc(h))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm identity embeddings (N, embed_dim) of images x (N, 1|3, S, S) in [0, 1]."""
        return F.normalize(self.raw_embedding(self.prepare(x)), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)
