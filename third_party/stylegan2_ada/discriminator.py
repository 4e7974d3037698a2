"""The StyleGAN2-ADA discriminator (spec §3): a ResNet trunk of blocks b{R}..b8, then the 4x4 epilogue.

The trunk (``DiscriminatorTrunk``) is shared with GMIA's encoder, which registers the same blocks under the same
names and swaps the epilogue. Inputs are images in the model's range (official: [-1, 1]).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .generator import ARCHITECTURES, MappingNetwork, channels_per_resolution, fp16_resolution
from .layers import Conv2dLayer, FullyConnectedLayer
from .ops import downsample2d, setup_filter

__all__ = ["Discriminator", "DiscriminatorBlock", "DiscriminatorEpilogue", "DiscriminatorTrunk", "MinibatchStdLayer"]


class DiscriminatorBlock(nn.Module):
    """[fromrgb], conv0 (3x3), conv1 (3x3, down 2), [skip (1x1, down 2, no bias)] (spec §3.1)."""

    def __init__(
        self,
        in_channels: int,        # channels from the previous block (0 for the first block)
        tmp_channels: int,       # channels inside the block
        out_channels: int,       # channels to the next block
        resolution: int,         # input resolution of this block
        img_channels: int,       # image channels
        first_layer_idx: int,    # index of this block's first layer (Freeze-D counting)
        architecture: str = "resnet",  # 'orig', 'skip' or 'resnet'
        activation: str = "lrelu",  # conv activation
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # 1-D FIR taps
        conv_clamp: float | None = None,  # clamp conv outputs
        use_fp16: bool = False,  # recorded (official fp16 block); we compute in fp32 / autocast
        fp16_channels_last: bool = False,  # accepted for compatibility; no effect here
        freeze_layers: int = 0,  # layers with index below this are frozen (buffers, not parameters)
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {architecture!r}")
        self.in_channels, self.resolution, self.img_channels = in_channels, resolution, img_channels
        self.first_layer_idx, self.architecture, self.use_fp16 = first_layer_idx, architecture, use_fp16
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_layers = 0
        common = dict(activation=activation, resample_filter=resample_filter, conv_clamp=conv_clamp,
                      channels_last=fp16_channels_last)

        def trainable() -> bool:
            idx = first_layer_idx + self.num_layers
            self.num_layers += 1
            return idx >= freeze_layers

        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, trainable=trainable(), **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, trainable=trainable(), **common)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, down=2, trainable=trainable(), **common)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=trainable(), resample_filter=resample_filter,
                                    channels_last=fp16_channels_last)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (N, in, r, r) or None, img (N, K, r, r) -> (N, out, r/2, r/2), downsampled img ('skip') or None."""
        if self.in_channels == 0 or self.architecture == "skip":
            y = self.fromrgb(img.float())
            x = y if x is None else x + y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img


class MinibatchStdLayer(nn.Module):
    """Appends the per-group standard deviation as ``num_channels`` extra feature maps (spec §3.2).

    Groups are strided: group j holds samples j, j + N/G, j + 2N/G, ... The batch must divide by
    G = min(group_size, N).
    """

    def __init__(self, group_size: int | None, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        f = self.num_channels
        if n % g != 0:
            raise ValueError(f"minibatch std: batch {n} is not divisible by the group size {g}")
        y = x.float().reshape(g, -1, f, c // f, h, w)  # (G, N/G, F, C/F, H, W)
        y = (y - y.mean(dim=0)).square().mean(dim=0)   # population variance over the group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])       # (N/G, F)
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)   # (N, F, H, W)
        return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head: [fromrgb], mbstd, conv 3x3, fc (lrelu), out -> logits (N, 1) (spec §3.3)."""

    def __init__(
        self,
        in_channels: int,        # channels at 4x4
        cmap_dim: int,           # conditioning projection width (0: unconditional)
        resolution: int,         # 4
        img_channels: int,       # image channels (for 'skip')
        architecture: str = "resnet",  # 'orig', 'skip' or 'resnet'
        mbstd_group_size: int | None = 4,  # minibatch-std group (None: whole batch)
        mbstd_num_channels: int = 1,  # minibatch-std features (0: none)
        activation: str = "lrelu",  # conv/fc activation
        conv_clamp: float | None = None,  # clamp conv outputs
    ):
        super().__init__()
        self.in_channels, self.cmap_dim, self.resolution = in_channels, cmap_dim, resolution
        self.img_channels, self.architecture = img_channels, architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, img: torch.Tensor | None, cmap: torch.Tensor | None) -> torch.Tensor:
        x = x.float()
        if self.architecture == "skip":
            x = x + self.fromrgb(img.float())
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.fc(self.conv(x).flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x


class DiscriminatorTrunk(nn.Module):
    """Base for networks made of DiscriminatorBlocks b{R}..b8 registered directly on the module."""

    def _build_trunk(
        self,
        img_resolution: int,
        img_channels: int,
        architecture: str,
        channel_base: int,
        channel_max: int,
        num_fp16_res: int,
        conv_clamp: float | None,
        block_kwargs: dict,
    ) -> dict[int, int]:
        """Registers b{R}..b8 and returns the channels per resolution."""
        self.img_resolution, self.img_channels = img_resolution, img_channels
        channels = channels_per_resolution(img_resolution, channel_base, channel_max)
        self.block_resolutions = [r for r in sorted(channels, reverse=True) if r > 4]
        fp16_res = fp16_resolution(img_resolution, num_fp16_res)
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res], channels[res // 2],
                                       resolution=res, img_channels=img_channels, first_layer_idx=layer_idx,
                                       architecture=architecture, conv_clamp=conv_clamp,
                                       use_fp16=res >= fp16_res, **block_kwargs)
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        return channels

    def _run_trunk(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise ValueError(f"{type(self).__name__}: expected images (N, {', '.join(map(str, expected))}); "
                             f"got {tuple(img.shape)}")
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img)
        return x, img


class Discriminator(DiscriminatorTrunk):
    """img (N, K, R, R) [, c (N, c_dim)] -> logits (N, 1). ResNet architecture by default."""

    def __init__(
        self,
        c_dim: int,              # conditioning label width (0: unconditional)
        img_resolution: int,     # input resolution
        img_channels: int,       # input channels
        architecture: str = "resnet",  # 'orig', 'skip' or 'resnet'
        channel_base: int = 32768,  # channels at resolution r: min(channel_base // r, channel_max)
        channel_max: int = 512,  # channel cap
        num_fp16_res: int = 0,   # official mixed precision (recorded; we compute in fp32 / autocast)
        conv_clamp: float | None = None,  # clamp conv outputs
        cmap_dim: int | None = None,  # conditioning projection width (None: channels at 4x4)
        block_kwargs: dict | None = None,  # DiscriminatorBlock kwargs (activation, freeze_layers, ...)
        mapping_kwargs: dict | None = None,  # label MappingNetwork kwargs
        epilogue_kwargs: dict | None = None,  # epilogue kwargs (mbstd_group_size, mbstd_num_channels, ...)
    ):
        super().__init__()
        self.c_dim = c_dim
        channels = self._build_trunk(img_resolution, img_channels, architecture, channel_base, channel_max,
                                     num_fp16_res, conv_clamp, dict(block_kwargs or {}))
        if c_dim == 0:
            cmap_dim = 0
        elif cmap_dim is None:
            cmap_dim = channels[4]
        self.cmap_dim = cmap_dim
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **dict(mapping_kwargs or {}))
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, img_channels=img_channels,
                                        architecture=architecture, conv_clamp=conv_clamp,
                                        **dict(epilogue_kwargs or {}))

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None, force_fp32: bool = False) -> torch.Tensor:
        """Logits (N, 1). ``force_fp32`` is accepted for API compatibility; we always compute in fp32."""
        x, img = self._run_trunk(img)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap)
