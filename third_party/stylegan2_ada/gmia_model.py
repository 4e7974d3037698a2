"""GMIA's encoder + synthesis model ("ESModel", Li et al., ISBI 2025), compatible with its checkpoints.

* ``Encoder`` is the StyleGAN2 ResNet discriminator trunk (blocks b{R}..b8, same names) with an epilogue of one
  3x3 conv (no minibatch std) and one FC with lrelu to ``w_dim``; that single w is broadcast to all ``num_ws``
  style inputs (W space, not W+).
* ``ESModel`` has children ``synthesis`` (a standard SynthesisNetwork) and ``encoder``; there is no mapping
  network, so no z, no ``w_avg`` and no truncation.

Image range: GMIA trains on images in **[0, 1]** (no ``* 2 - 1``), so the encoder expects [0, 1] inputs and the
synthesis output is to be read as [0, 1] (raw, not clamped).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .discriminator import DiscriminatorTrunk
from .generator import SynthesisNetwork
from .layers import Conv2dLayer, FullyConnectedLayer

__all__ = ["ESModel", "Encoder", "EncoderEpilogue"]

# SynthesisNetwork kwargs that GMIA's encoder shares with the synthesis network.
_SHARED_WITH_ENCODER = ("channel_base", "channel_max", "num_fp16_res", "conv_clamp")


class EncoderEpilogue(nn.Module):
    """4x4 head of the encoder: [fromrgb ('skip')], conv 3x3 (lrelu), fc (lrelu) -> (N, w_dim)."""

    def __init__(
        self,
        in_channels: int,        # channels at 4x4
        w_dim: int,              # output width
        resolution: int,         # 4
        img_channels: int,       # image channels (for 'skip')
        architecture: str = "resnet",  # 'orig', 'skip' or 'resnet'
        activation: str = "lrelu",  # conv/fc activation
        conv_clamp: float | None = None,  # clamp conv outputs
    ):
        super().__init__()
        self.in_channels, self.w_dim, self.resolution = in_channels, w_dim, resolution
        self.img_channels, self.architecture = img_channels, architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.conv = Conv2dLayer(in_channels, in_channels, kernel_size=3, activation=activation, conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, w_dim, activation=activation)

    def forward(self, x: torch.Tensor, img: torch.Tensor | None) -> torch.Tensor:
        x = x.float()
        if self.architecture == "skip":
            x = x + self.fromrgb(img.float())
        return self.fc(self.conv(x).flatten(1))


class Encoder(DiscriminatorTrunk):
    """img (N, K, R, R) in [0, 1] -> ws (N, num_ws, w_dim): one w repeated over all style inputs."""

    def __init__(
        self,
        c_dim: int,              # must be 0 (GMIA's encoder is unconditional)
        num_ws: int,             # style inputs of the synthesis network
        img_resolution: int,     # input resolution
        img_channels: int,       # input channels
        w_dim: int = 512,        # latent width
        architecture: str = "resnet",  # trunk architecture
        channel_base: int = 32768,  # channels at resolution r: min(channel_base // r, channel_max)
        channel_max: int = 512,  # channel cap
        num_fp16_res: int = 0,   # official mixed precision (recorded; we compute in fp32 / autocast)
        conv_clamp: float | None = None,  # clamp conv outputs
        block_kwargs: dict | None = None,  # DiscriminatorBlock kwargs
        epilogue_kwargs: dict | None = None,  # EncoderEpilogue kwargs (activation)
    ):
        super().__init__()
        if c_dim != 0:
            raise ValueError(f"Encoder: GMIA's encoder is unconditional (c_dim=0); got c_dim={c_dim}")
        self.c_dim, self.num_ws, self.w_dim = c_dim, num_ws, w_dim
        channels = self._build_trunk(img_resolution, img_channels, architecture, channel_base, channel_max,
                                     num_fp16_res, conv_clamp, dict(block_kwargs or {}))
        self.b4 = EncoderEpilogue(channels[4], w_dim=w_dim, resolution=4, img_channels=img_channels,
                                  architecture=architecture, conv_clamp=conv_clamp, **dict(epilogue_kwargs or {}))

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x, img = self._run_trunk(img)
        w = self.b4(x, img)  # (N, w_dim)
        return w.unsqueeze(1).repeat(1, self.num_ws, 1)  # (N, num_ws, w_dim)


class ESModel(nn.Module):
    """GMIA's AE-GAN generator: ``synthesis(encoder(img))``, images in [0, 1].

    Verbs: ``encode(img) -> ws (N, num_ws, w_dim)``, ``synthesize(ws or w) -> img``; ``forward`` does both.
    ``z_dim`` is recorded for compatibility with the checkpoint's constructor arguments and is unused.
    """

    def __init__(
        self,
        z_dim: int,              # unused (no mapping network); kept for checkpoint compatibility
        c_dim: int,              # must be 0
        w_dim: int,              # latent width (512)
        img_resolution: int,     # image resolution (256 in GMIA)
        img_channels: int,       # image channels (1 in GMIA)
        synthesis_kwargs: dict | None = None,  # SynthesisNetwork kwargs; the capacity ones also shape the encoder
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        synthesis_kwargs = dict(synthesis_kwargs or {})
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        shared = {k: synthesis_kwargs[k] for k in _SHARED_WITH_ENCODER if k in synthesis_kwargs}
        self.encoder = Encoder(c_dim, self.num_ws, img_resolution, img_channels, w_dim=w_dim, **shared)

    def encode(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """img (N, K, R, R) in [0, 1] -> ws (N, num_ws, w_dim)."""
        return self.encoder(img, c)

    def synthesize(self, ws: torch.Tensor, **synthesis_kwargs: Any) -> torch.Tensor:
        """ws (N, num_ws, w_dim) or w (N, w_dim) -> img (N, K, R, R), nominally [0, 1]."""
        return self.synthesis(ws, **synthesis_kwargs)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None, **synthesis_kwargs: Any) -> torch.Tensor:
        return self.synthesis(self.encoder(img, c), **synthesis_kwargs)
