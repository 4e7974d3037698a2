"""The four StyleGAN2-ADA layers: equalized-lr FC and conv, the modulated synthesis conv, and ToRGB.

Parameter and buffer names and shapes follow the official networks (spec §1, §2.4, §2.5, §4), so official state
dicts load with ``strict=True``. Stored weights are the unscaled values; the equalized-learning-rate gains are
applied at run time.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .ops import ACTIVATIONS, bias_act, conv2d_resample, modulated_conv2d, setup_filter

__all__ = ["Conv2dLayer", "FullyConnectedLayer", "NoiseGenerator", "SynthesisLayer", "ToRGBLayer", "NOISE_MODES"]

NOISE_MODES = ("random", "const", "none")

# What a SynthesisLayer accepts for random noise: one torch.Generator for the whole batch, or one per sample
# (so a sample's noise does not depend on which other samples share its batch).
NoiseGenerator = torch.Generator | Sequence[torch.Generator] | None


def _check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}")
    return activation


class FullyConnectedLayer(nn.Module):
    """Equalized-lr linear layer: ``act(x @ (weight * lr_mul / sqrt(in)).T + bias * lr_mul)``.

    Parameters: ``weight`` (out, in), ``bias`` (out). x (N, in) -> (N, out).
    """

    def __init__(
        self,
        in_features: int,       # input width
        out_features: int,      # output width
        bias: bool = True,      # learn a bias
        activation: str = "linear",  # 'linear', 'lrelu', ... (ops.ACTIVATIONS)
        lr_multiplier: float = 1.0,  # learning-rate multiplier (0.01 in the mapping network)
        bias_init: float = 0.0,  # initial bias value (1 for the style affines)
    ):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.activation = _check_activation(activation)
        self.weight = nn.Parameter(torch.randn([self.out_features, self.in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([self.out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(self.in_features)
        self.bias_gain = float(lr_multiplier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return bias_act(x, b, act=self.activation, inplace=True)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """Equalized-lr convolution with optional 2x FIR up/downsampling (D, the GMIA encoder, G resnet skips).

    Parameters: ``weight`` (out, in, k, k), ``bias`` (out) unless ``bias=False``. Buffer: ``resample_filter``
    (4, 4), registered even when the layer never resamples. ``trainable=False`` (Freeze-D) stores weight and
    bias as buffers under the same names.
    """

    def __init__(
        self,
        in_channels: int,        # input channels
        out_channels: int,       # output channels
        kernel_size: int,        # 1 or 3 (any odd size without resampling)
        bias: bool = True,       # learn a bias
        activation: str = "linear",  # 'linear' or 'lrelu' (ops.ACTIVATIONS)
        up: int = 1,             # 2: upsample before the conv
        down: int = 1,           # 2: downsample after the conv
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # 1-D FIR taps
        conv_clamp: float | None = None,  # clamp outputs to +-conv_clamp (scaled by gain)
        channels_last: bool = False,  # accepted for compatibility with official kwargs; no effect here
        trainable: bool = True,  # False: weight and bias are buffers (frozen layers)
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"Conv2dLayer: kernel_size must be odd; got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), int(kernel_size)
        self.activation = _check_activation(activation)
        self.up, self.down = int(up), int(down)
        self.conv_clamp = conv_clamp
        self.channels_last = bool(channels_last)
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ACTIVATIONS[activation][2]
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        bias_t = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias_t) if bias_t is not None else None
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias_t)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """x (N, in, H, W) -> (N, out, H*up/down, W*up/down)."""
        w = self.weight.to(x.dtype) * self.weight_gain
        x = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp, inplace=True)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, k={self.kernel_size}, act={self.activation}, "
                f"up={self.up}, down={self.down}")


def _draw_noise(n: int, res: int, device: torch.device, generator: NoiseGenerator) -> torch.Tensor:
    """Standard-normal noise (N, 1, res, res), drawn on the generator's device, then moved to ``device``."""
    if generator is None:
        return torch.randn([n, 1, res, res], device=device)
    if isinstance(generator, torch.Generator):
        return torch.randn([n, 1, res, res], generator=generator, device=generator.device).to(device)
    if len(generator) != n:
        raise ValueError(f"noise_generator: got {len(generator)} generators for a batch of {n}; give one per sample")
    return torch.stack([torch.randn([1, res, res], generator=g, device=g.device) for g in generator]).to(device)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + noise + bias + lrelu (spec §2.4). No weight gain: demodulation makes it moot.

    Parameters: ``weight`` (out, in, k, k), ``noise_strength`` (scalar), ``bias`` (out); child ``affine``
    (w_dim -> in, bias 1). Buffers: ``resample_filter`` (4, 4), ``noise_const`` (res, res) if ``use_noise``.
    """

    def __init__(
        self,
        in_channels: int,        # input channels
        out_channels: int,       # output channels
        w_dim: int,              # latent width
        resolution: int,         # output resolution (size of the noise map)
        kernel_size: int = 3,    # convolution size
        up: int = 1,             # 2 for the first conv of a block
        use_noise: bool = True,  # per-pixel noise with a learned strength
        activation: str = "lrelu",  # activation after the bias
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # 1-D FIR taps
        conv_clamp: float | None = None,  # clamp outputs to +-conv_clamp (scaled by gain)
        channels_last: bool = False,  # accepted for compatibility with official kwargs; no effect here
    ):
        super().__init__()
        self.resolution, self.up, self.use_noise = int(resolution), int(up), bool(use_noise)
        self.activation = _check_activation(activation)
        self.conv_clamp = conv_clamp
        self.channels_last = bool(channels_last)
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATIONS[activation][2]
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if self.use_noise:
            self.register_buffer("noise_const", torch.randn([self.resolution, self.resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def make_noise(self, n: int, device: torch.device, noise_mode: str, generator: NoiseGenerator = None):
        """The noise term to add, or None: 'random' (fresh normal noise), 'const' (the buffer), 'none'."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}; got {noise_mode!r}")
        if not self.use_noise or noise_mode == "none":
            return None
        if noise_mode == "const":
            return self.noise_const * self.noise_strength
        return _draw_noise(n, self.resolution, device, generator) * self.noise_strength

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool = False,
        gain: float = 1.0,
        noise_generator: NoiseGenerator = None,
    ) -> torch.Tensor:
        """x (N, in, H, W), w (N, w_dim) -> (N, out, H*up, W*up)."""
        styles = self.affine(w)
        noise = self.make_noise(x.shape[0], x.device, noise_mode, noise_generator)
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up,
                             resample_filter=self.resample_filter, demodulate=True, fused=fused_modconv)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp, inplace=True)

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, up={self.up}, use_noise={self.use_noise}"


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels, without demodulation (spec §2.5).

    Parameters: ``weight`` (img_channels, in, k, k), ``bias`` (img_channels); child ``affine`` (w_dim -> in).
    """

    def __init__(
        self,
        in_channels: int,        # feature channels
        out_channels: int,       # image channels
        w_dim: int,              # latent width
        kernel_size: int = 1,    # convolution size
        conv_clamp: float | None = None,  # clamp outputs to +-conv_clamp
        channels_last: bool = False,  # accepted for compatibility with official kwargs; no effect here
    ):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.channels_last = bool(channels_last)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = False) -> torch.Tensor:
        """x (N, in, H, W), w (N, w_dim) -> (N, img_channels, H, W)."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_modconv)
        return bias_act(x, self.bias, clamp=self.conv_clamp, inplace=True)
