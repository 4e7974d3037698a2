"""The StyleGAN2-ADA generator: mapping network z -> w, synthesis network ws -> image (spec §2).

Official models produce images in [-1, 1] (NCHW float32); these networks return the raw output and never
convert. GMIA's synthesis network is the same class, trained on [0, 1] images (see ``gmia_model``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from .layers import Conv2dLayer, FullyConnectedLayer, NoiseGenerator, SynthesisLayer, ToRGBLayer
from .ops import normalize_2nd_moment, resolve_fused_modconv, setup_filter, upsample2d

__all__ = ["Generator", "MappingNetwork", "SynthesisBlock", "SynthesisNetwork", "channels_per_resolution"]

ARCHITECTURES = ("orig", "skip", "resnet")


def channels_per_resolution(img_resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """{resolution: min(channel_base // resolution, channel_max)} for 4, 8, ..., img_resolution."""
    log2 = int(math.log2(img_resolution)) if img_resolution > 0 else 0
    if img_resolution < 4 or 2**log2 != img_resolution:
        raise ValueError(f"img_resolution must be a power of two >= 4; got {img_resolution}")
    return {2**i: min(channel_base // 2**i, channel_max) for i in range(2, log2 + 1)}


def fp16_resolution(img_resolution: int, num_fp16_res: int) -> int:
    """Lowest resolution the official code runs in fp16 (never below 8). Recorded only: we compute in fp32."""
    return max(2 ** (int(math.log2(img_resolution)) + 1 - num_fp16_res), 8)


class MappingNetwork(nn.Module):
    """z (N, z_dim) [+ c (N, c_dim)] -> w (N, num_ws, w_dim), or (N, w_dim) when ``num_ws`` is None.

    Children ``embed`` (only when c_dim > 0) and ``fc0..fc{L-1}``; buffer ``w_avg`` (w_dim) when num_ws and
    w_avg_beta are set. Truncation: ``w <- w_avg + psi (w - w_avg)`` on the first ``truncation_cutoff`` ws.
    """

    def __init__(
        self,
        z_dim: int,              # latent z width (0: none, as in D's label mapping)
        c_dim: int,              # conditioning label width (0: unconditional)
        w_dim: int,              # output width
        num_ws: int | None,      # number of ws to broadcast to (None: return (N, w_dim))
        num_layers: int = 8,     # FC layers
        embed_features: int | None = None,  # label embedding width (None: w_dim; 0 when c_dim = 0)
        layer_features: int | None = None,  # hidden width (None: w_dim)
        activation: str = "lrelu",  # hidden activation
        lr_multiplier: float = 0.01,  # learning-rate multiplier of the FC layers
        w_avg_beta: float | None = 0.995,  # decay of the tracked w average (None: no w_avg)
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        skip_w_avg_update: bool = False,
    ) -> torch.Tensor:
        x = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"mapping: expected z (N, {self.z_dim}); got {None if z is None else tuple(z.shape)}")
            x = normalize_2nd_moment(z.float())
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"mapping: expected c (N, {self.c_dim}); got {None if c is None else tuple(c.shape)}")
            y = normalize_2nd_moment(self.embed(c.float()))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if self.training and not skip_w_avg_update and hasattr(self, "w_avg"):
            with torch.no_grad():
                self.w_avg.copy_(x.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)  # (N, num_ws, w_dim)
        if truncation_psi != 1:
            if not hasattr(self, "w_avg"):
                raise ValueError("truncation needs w_avg (a mapping network built with num_ws and w_avg_beta)")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = x.clone()
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: [const | conv0 (up 2)], conv1, [torgb], [skip]."""

    def __init__(
        self,
        in_channels: int,        # channels from the previous block (0 for the 4x4 block)
        out_channels: int,       # channels of this block
        w_dim: int,              # latent width
        resolution: int,         # this block's resolution
        img_channels: int,       # image channels
        is_last: bool,           # the highest-resolution block
        architecture: str = "skip",  # 'orig', 'skip' or 'resnet'
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # 1-D FIR taps
        conv_clamp: float | None = None,  # clamp conv outputs
        use_fp16: bool = False,  # recorded (official fp16 block); we compute in fp32 / autocast
        fp16_channels_last: bool = False,  # accepted for compatibility; no effect here
        **layer_kwargs: Any,     # SynthesisLayer kwargs: use_noise, activation, kernel_size
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {architecture!r}")
        self.in_channels, self.w_dim, self.resolution = in_channels, w_dim, resolution
        self.img_channels, self.is_last, self.architecture = img_channels, is_last, architecture
        self.use_fp16 = use_fp16
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=fp16_channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=fp16_channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=fp16_channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=fp16_channels_last)

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool = False,
        noise_generator: NoiseGenerator = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ws (N, num_conv + num_torgb, w_dim); returns (features, image so far in float32)."""
        w_iter = iter(ws.unbind(dim=1))
        layer_args = dict(noise_mode=noise_mode, fused_modconv=fused_modconv, noise_generator=noise_generator)
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, next(w_iter), **layer_args)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), **layer_args)
            x = self.conv1(x, next(w_iter), gain=math.sqrt(0.5), **layer_args)
            x = y.add_(x) if not torch.is_grad_enabled() else y + x
        else:
            x = self.conv0(x, next(w_iter), **layer_args)
            x = self.conv1(x, next(w_iter), **layer_args)
        if img is not None:
            with torch.autocast(device_type=img.device.type, enabled=False):  # the image accumulator stays fp32
                img = upsample2d(img.float(), self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).float()
            img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (N, num_ws, w_dim) -> image (N, img_channels, R, R), float32, raw (official: [-1, 1]).

    Children ``b4, b8, ..., b{R}``; ``num_ws = 2 log2(R) - 2`` with the skip architecture.
    """

    def __init__(
        self,
        w_dim: int,              # latent width
        img_resolution: int,     # output resolution, a power of two >= 4
        img_channels: int,       # output channels (1 for X-rays, 3 for faces)
        channel_base: int = 32768,  # channels at resolution r: min(channel_base // r, channel_max)
        channel_max: int = 512,  # channel cap
        num_fp16_res: int = 0,   # official mixed precision (recorded; we compute in fp32 / autocast)
        **block_kwargs: Any,     # SynthesisBlock / SynthesisLayer kwargs (architecture, conv_clamp, ...)
    ):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.channel_base, self.channel_max, self.num_fp16_res = channel_base, channel_max, num_fp16_res
        channels = channels_per_resolution(img_resolution, channel_base, channel_max)
        self.block_resolutions = list(channels)
        fp16_res = fp16_resolution(img_resolution, num_fp16_res)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=res == img_resolution,
                                   use_fp16=res >= fp16_res, **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: str = "random",
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
        noise_generator: NoiseGenerator = None,
    ) -> torch.Tensor:
        """Synthesize images.

        ws: (N, num_ws, w_dim), or (N, w_dim) for one w broadcast to all layers (W space, as in GMIA).
        noise_mode: 'random' (fresh noise each call), 'const' (the ``noise_const`` buffers), 'none'.
        noise_generator: for 'random', a torch.Generator, or a list of N generators (one per sample: each
            sample's noise then depends only on its own generator, not on the batch; draws happen on the
            generator's device, so CPU generators give the same noise on any device).
        fused_modconv: None -> fused on CUDA, non-fused elsewhere (``ops.resolve_fused_modconv``).
        force_fp32: accepted for API compatibility; computation is always fp32 (or autocast).
        Returns (N, img_channels, R, R) float32.
        """
        if ws.ndim == 2:
            ws = ws.unsqueeze(1).expand(-1, self.num_ws, -1)
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"synthesis: expected ws (N, {self.num_ws}, {self.w_dim}); got {tuple(ws.shape)}")
        ws = ws.float()
        fused = resolve_fused_modconv(fused_modconv, ws.device)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv  # a block's torgb shares its w with the next block's conv0
            x, img = block(x, img, block_ws, noise_mode=noise_mode, fused_modconv=fused,
                           noise_generator=noise_generator)
        return img


class Generator(nn.Module):
    """z (N, z_dim) [, c] -> image (N, img_channels, R, R); official images are in [-1, 1].

    Children ``synthesis`` then ``mapping`` (official order). ``mapping_kwargs`` go to MappingNetwork,
    ``synthesis_kwargs`` to SynthesisNetwork.
    """

    def __init__(
        self,
        z_dim: int,              # input latent width (512)
        c_dim: int,              # conditioning label width (0: unconditional)
        w_dim: int,              # intermediate latent width (512)
        img_resolution: int,     # output resolution
        img_channels: int,       # output channels
        mapping_kwargs: dict | None = None,   # MappingNetwork kwargs (num_layers, lr_multiplier, ...)
        synthesis_kwargs: dict | None = None,  # SynthesisNetwork kwargs (channel_base, conv_clamp, ...)
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **dict(synthesis_kwargs or {}))
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, num_ws=self.num_ws, **dict(mapping_kwargs or {}))

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        **synthesis_kwargs: Any,
    ) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)
