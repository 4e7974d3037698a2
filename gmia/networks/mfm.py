"""The medical foundation model (MFM) stand-in: a general-purpose image encoder trained without labels.

Stage 2 uses it through ``features(x)`` only, frozen. Its features must carry *both* identity and findings
(the MDL decoupler splits them apart). Two label-free objectives are implemented in
gmia/networks/training: contrastive (SimCLR: two augmented views of an image must find each other in the
batch; the default, chosen on linear-probe numbers, see ``MFMConfig``) and a masked (denoising) autoencoder,
for which this class also holds a decoder.

Encoder: ``len(widths)`` stride-2 residual stages, then a 1x1 conv to ``latent_channels`` → the code
z (N, latent_channels, S/2^k, S/2^k); ``features(x)`` is z flattened (512-d at the 64 px defaults).
The decoder mirrors it (nearest upsample + conv) back to the image.

    >>> mfm = MFMNet(in_channels=1)
    >>> f = mfm.features(x)              # (N, 512)
    >>> x_hat = MFMNet(decoder=True).reconstruct(x)   # autoencoder variant: (N, 1, 64, 64) in [0, 1]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FrozenNet

__all__ = ["MFMNet"]


def _gn(c: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: the features of one image must not depend on the rest of its batch
    return nn.GroupNorm(min(8, c), c)


class _ResDown(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), _gn(cout), nn.SiLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1), _gn(cout))
        self.skip = nn.Conv2d(cin, cout, 1, 2)

    def forward(self, x):
        return F.silu(self.body(x) + self.skip(x))


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1),
                                  _gn(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, 1, 1), _gn(cout), nn.SiLU())

    def forward(self, x):
        return self.body(x)


class MFMNet(FrozenNet):
    """Self-supervised image encoder (+ decoder); ``features(x)`` → (N, latent_channels · side²)."""

    def __init__(self,
                 in_channels: int = 1,                 # image channels: 1 (X-ray) or 3 (face)
                 resolution: int = 64,                 # side of the square image the encoder sees
                 widths: tuple = (32, 64, 128, 256),   # channels of the stride-2 encoder stages
                 latent_channels: int = 32,            # channels of the code z; features = z flattened
                 decoder: bool = False,                # build the decoder (autoencoder objectives)
                 projection_dim: int = 0,              # > 0: projection MLP for a contrastive objective
                 ):
        super().__init__(in_channels, resolution)
        widths = tuple(widths)
        self.side = resolution // 2 ** len(widths)
        if self.side < 1:
            raise ValueError(f"resolution {resolution} is too small for {len(widths)} stride-2 stages")
        self.feature_dim = latent_channels * self.side ** 2
        stages, c = [], in_channels
        for w in widths:
            stages.append(_ResDown(c, w))
            c = w
        self.encoder = nn.Sequential(*stages, nn.Conv2d(c, latent_channels, 1))
        self.decoder = None
        if decoder:
            ups, c = [nn.Conv2d(latent_channels, widths[-1], 3, 1, 1), nn.SiLU()], widths[-1]
            for w in reversed((widths[0],) + widths[:-1]):
                ups.append(_Up(c, w))
                c = w
            ups.append(nn.Conv2d(c, in_channels, 3, 1, 1))
            self.decoder = nn.Sequential(*ups)
        self.projector = None
        if projection_dim:
            self.projector = nn.Sequential(nn.Linear(self.feature_dim, 512), nn.ReLU(),
                                           nn.Linear(512, projection_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code z (N, latent_channels, side, side) of images in [0, 1]."""
        return self.encoder(self.prepare(x) * 2 - 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction in [0, 1] at this network's resolution."""
        if self.decoder is None:
            raise NotImplementedError("this MFMNet was built without a decoder")
        return torch.sigmoid(self.decoder(z))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """General-purpose features (N, feature_dim) of images x (N, 1|3, S, S) in [0, 1]."""
        return self.encode(x).flatten(1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
