"""Pure-PyTorch ops for StyleGAN2-ADA: FIR resampling, bias + activation, (modulated) convolution.

No compiled extensions. Every op is written from the published semantics (spec §1.3, §8):

* FIR resampling uses the 4x4 filter ``outer([1,3,3,1], [1,3,3,1]) / 64`` as a depthwise convolution.
  ``upsample2d`` is zero insertion + true convolution with ``4 f``; ``downsample2d`` is true convolution with
  ``f`` + keeping every second pixel. Both are one depthwise call (``groups = C``), the fastest form on CPU.
* ``conv2d_resample`` is a convolution with padding ``k // 2`` relative to the resampled image. Upsampling layers
  are *true* convolutions (the stored weight is not flipped), so they run as ``conv_transpose2d`` with the
  weight's in/out axes swapped, followed by the FIR. Downsampling layers are correlations (``F.conv2d``).
* ``modulated_conv2d`` has two execution paths with identical maths: non-fused (scale activations, one shared
  convolution, scale outputs) and fused (one grouped convolution with per-sample weights).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS",
    "DEMOD_EPS",
    "bias_act",
    "conv2d_resample",
    "downsample2d",
    "modulated_conv2d",
    "normalize_2nd_moment",
    "resolve_fused_modconv",
    "setup_filter",
    "upsample2d",
]

DEMOD_EPS = 1e-8  # epsilon inside the demodulation rsqrt (spec §1.4)


def _lrelu(x: torch.Tensor, alpha: float, inplace: bool) -> torch.Tensor:
    return F.leaky_relu_(x, alpha) if inplace else F.leaky_relu(x, alpha)


def _relu(x: torch.Tensor, alpha: float, inplace: bool) -> torch.Tensor:
    return F.relu_(x) if inplace else F.relu(x)


# name -> (function(x, alpha, inplace), default alpha, default gain)   (spec §1.3)
ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor, float, bool], torch.Tensor], float, float]] = {
    "linear": (lambda x, a, i: x, 0.0, 1.0),
    "relu": (_relu, 0.0, math.sqrt(2)),
    "lrelu": (_lrelu, 0.2, math.sqrt(2)),
    "tanh": (lambda x, a, i: torch.tanh(x), 0.0, 1.0),
    "sigmoid": (lambda x, a, i: torch.sigmoid(x), 0.0, 1.0),
    "elu": (lambda x, a, i: F.elu(x), 0.0, 1.0),
    "selu": (lambda x, a, i: F.selu(x), 0.0, 1.0),
    "softplus": (lambda x, a, i: F.softplus(x), 0.0, 1.0),
    "swish": (lambda x, a, i: x * torch.sigmoid(x), 0.0, math.sqrt(2)),
}


def setup_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """The 2-D resampling filter: outer product of a 4-tap 1-D filter, normalised to sum 1. (4, 4) float32."""
    taps = [float(t) for t in taps]
    if len(taps) != 4:
        raise ValueError(f"resample_filter must have 4 taps (e.g. [1, 3, 3, 1]); got {taps}")
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """``clamp(act(x + b) * gain, -clamp, clamp)``, with ``b`` broadcast over dim 1.

    ``alpha`` and ``gain`` default per activation (lrelu: 0.2 and sqrt(2)). ``inplace=True`` reuses ``x``'s
    memory; use it only on fresh intermediates, never on a caller's tensor.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; valid: {sorted(ACTIVATIONS)}")
    fn, def_alpha, def_gain = ACTIVATIONS[act]
    alpha = def_alpha if alpha is None else float(alpha)
    gain = def_gain if gain is None else float(gain)
    if inplace and torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad)):
        inplace = False  # autograd saves intermediates that later in-place ops would overwrite
    if b is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        b = b.to(x.dtype).reshape(shape)
        x = x.add_(b) if inplace else x + b
    x = fn(x, alpha, inplace)
    if gain != 1:
        x = x.mul_(gain) if inplace else x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp_(-clamp, clamp) if inplace else x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """``x / sqrt(mean(x**2, dim) + eps)`` (spec §1.4)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def _depthwise(f: torch.Tensor, channels: int, dtype: torch.dtype, gain: float = 1.0, flip: bool = False):
    """The FIR filter as a depthwise weight (C, 1, 4, 4)."""
    f = f.to(dtype)
    if flip:
        f = f.flip([0, 1])
    if gain != 1:
        f = f * gain
    return f[None, None].repeat(channels, 1, 1, 1)


def _fir(x: torch.Tensor, f: torch.Tensor, pad: int, gain: float = 1.0) -> torch.Tensor:
    """True convolution of every channel with ``f`` (zero padding ``pad`` on every side), stride 1."""
    c = x.shape[1]
    return F.conv2d(x, _depthwise(f, c, x.dtype, gain, flip=True), padding=pad, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x FIR upsampling, (N, C, H, W) -> (N, C, 2H, 2W).

    Equals upfirdn2d(up=2, pad=[2, 1, 2, 1], gain=4): zero insertion after each pixel, then true convolution
    with ``4 f``. ``conv_transpose2d`` scatters, i.e. it is a true convolution, so the filter is not flipped.
    """
    c = x.shape[1]
    return F.conv_transpose2d(x, _depthwise(f, c, x.dtype, gain=4.0), stride=2, padding=1, groups=c)


def downsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x FIR downsampling, (N, C, H, W) -> (N, C, H/2, W/2). Equals upfirdn2d(down=2, pad=[1, 1, 1, 1])."""
    c = x.shape[1]
    return F.conv2d(x, _depthwise(f, c, x.dtype, flip=True), stride=2, padding=1, groups=c)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Convolution with ``w`` (O, I/groups, k, k), padding ``k // 2``, optionally with 2x FIR resampling.

    * ``up=2``: a true convolution of the 2x zero-inserted image (official ``flip_weight=False``), then the FIR
      ``4 f``; for 1x1 kernels, the convolution followed by ``upsample2d``. (N, I, H, W) -> (N, O, 2H, 2W).
    * ``down=2``: the FIR ``f``, then a strided correlation; for 1x1 kernels, ``downsample2d`` then the
      convolution. (N, I, H, W) -> (N, O, H/2, W/2).
    Resampling supports kernel sizes 1 and 3 (all that StyleGAN2 uses).
    """
    k = w.shape[-1]
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=k // 2, groups=groups)
    if f is None:
        raise ValueError("conv2d_resample: resampling needs the FIR filter f")
    if (up, down) not in ((2, 1), (1, 2)) or k not in (1, 3):
        raise ValueError(f"conv2d_resample supports up=2 or down=2 with kernel 1 or 3; got up={up}, down={down}, k={k}")
    if up == 2:
        if k == 1:
            return upsample2d(F.conv2d(x, w, groups=groups), f)
        o, i = w.shape[0], w.shape[1]
        # conv_transpose2d wants (in, out/groups, k, k): swap in/out inside each group.
        wt = w.reshape(groups, o // groups, i, k, k).transpose(1, 2).reshape(groups * i, o // groups, k, k)
        y = F.conv_transpose2d(x, wt, stride=2, groups=groups)  # (N, O, 2H+1, 2W+1)
        return _fir(y, f, pad=1, gain=4.0)  # -> (N, O, 2H, 2W)
    if k == 1:
        return F.conv2d(downsample2d(x, f), w, groups=groups)
    y = _fir(x, f, pad=2)  # (N, I, H+1, W+1)
    return F.conv2d(y, w, stride=2, groups=groups)


def resolve_fused_modconv(fused_modconv: bool | None, device: torch.device) -> bool:
    """``None`` -> fused (grouped conv) on CUDA, non-fused elsewhere.

    This differs from the official rule (fused at inference in fp32): on CPU, oneDNN grouped convolutions are
    slower than the non-fused path (spec §8.4), and both paths compute the same function.
    """
    if fused_modconv is None:
        return torch.device(device).type == "cuda"
    return bool(fused_modconv)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    fused: bool = False,
) -> torch.Tensor:
    """Modulated convolution (spec §2.4), x (N, I, H, W), weight (O, I, k, k), styles (N, I) -> (N, O, H', W').

    ``W'[n,o,i] = W[o,i] * s[n,i]``; with ``demodulate``, ``W''[n,o] = W'[n,o] / sqrt(sum W'[n,o]**2 + 1e-8)``.
    ``noise`` (broadcastable to the output) is added after demodulation. ``fused`` picks the grouped-conv path.
    """
    n, i = x.shape[0], x.shape[1]
    o, wi, k, _ = weight.shape
    if wi != i or styles.shape != (n, i):
        raise ValueError(f"modulated_conv2d: x {tuple(x.shape)}, weight {tuple(weight.shape)}, styles "
                         f"{tuple(styles.shape)} do not fit (expected styles ({n}, {i}))")
    dcoefs = None
    if demodulate:
        # sum_{i,kh,kw} (W[o,i] s[n,i])^2 = sum_i s[n,i]^2 * sum_{kh,kw} W[o,i]^2   -> (N, O), kept in fp32
        dt = torch.float64 if styles.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            sq = styles.to(dt).square() @ weight.to(dt).square().sum(dim=[2, 3]).t()
            dcoefs = (sq + DEMOD_EPS).rsqrt()
    if not fused:
        x = x * styles.to(x.dtype).reshape(n, i, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up)
        if dcoefs is not None:
            d = dcoefs.reshape(n, o, 1, 1)
            if noise is not None and x.dtype == d.dtype == noise.dtype:
                return torch.addcmul(noise, x, d)
            x = x * d.to(x.dtype)
        return x if noise is None else x + noise.to(x.dtype)
    w = weight.unsqueeze(0) * styles.reshape(n, 1, i, 1, 1)  # (N, O, I, k, k)
    if dcoefs is not None:
        w = w * dcoefs.reshape(n, o, 1, 1, 1)
    x = x.reshape(1, n * i, *x.shape[2:])
    x = conv2d_resample(x, w.reshape(n * o, i, k, k).to(x.dtype), resample_filter, up=up, groups=n)
    x = x.reshape(n, o, *x.shape[2:])
    return x if noise is None else x + noise.to(x.dtype)
