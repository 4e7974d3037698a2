"""The common interface of the networks that score images: E_id, E_ut, the MFM and the attacker.

Every such network takes float NCHW images in [0, 1] with 1 or 3 channels at any square size, and adapts them
inside (grey ↔ RGB, resize to its own resolution, then its own normalization). It is batched and
differentiable with respect to its input, so stage 2 can back-propagate through it into the generator.

    >>> net = gmia.networks.load("phantom-cxr64", "identity")   # frozen: eval() + requires_grad_(False)
    >>> e = net.embed(x)                                        # x (N, 1, 64, 64) in [0, 1] → (N, 512)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["FrozenNet", "check_images", "adapt_channels", "adapt_resolution", "plain_cnn", "RANGE_TOLERANCE"]

RANGE_TOLERANCE = 1e-3  # resampling may overshoot [0, 1] by rounding; anything beyond is a caller bug
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights for RGB → grey


def check_images(x: torch.Tensor, name: str = "images", check_range: bool = True) -> None:
    """Raise InputError unless ``x`` is a float (N, C, H, W) tensor, C in {1, 3}, H == W, values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise InputError(f"{name}: expected shape (N, C, H, W), got {tuple(x.shape)}; "
                         "add a batch dimension with x[None] for one image")
    if not x.is_floating_point():
        raise InputError(f"{name}: expected float values in [0, 1], got dtype {x.dtype}; "
                         "convert integer pixels with gmia.data.preprocess.from_uint")
    if x.shape[1] not in (1, 3):
        raise InputError(f"{name}: expected 1 (grey) or 3 (RGB) channels, got {x.shape[1]} in shape {tuple(x.shape)}")
    if x.shape[2] != x.shape[3]:
        raise InputError(f"{name}: expected square images, got {x.shape[2]}x{x.shape[3]}; "
                         "crop or pad to a square first (gmia.data.preprocess)")
    if check_range and x.numel():
        lo, hi = torch.aminmax(x.detach())
        lo, hi = float(lo), float(hi)
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise InputError(f"{name}: expected values in [0, 1], got [{lo:.4g}, {hi:.4g}]; "
                             "images in [-1, 1] need (x + 1) / 2, generator outputs need .clamp(0, 1)")


def adapt_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey → RGB by repetition, RGB → grey by BT.601 luma (both differentiable)."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] == 3 and channels == 1:
        w = x.new_tensor(_LUMA).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
    raise InputError(f"cannot adapt {x.shape[1]} channels to {channels}")


def adapt_resolution(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize to ``resolution``² (antialiased when shrinking), differentiable."""
    if x.shape[-1] == resolution:
        return x
    shrink = x.shape[-1] > resolution
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrink)


def plain_cnn(in_channels: int, widths: tuple, convs: tuple) -> tuple[nn.Sequential, int]:
    """A VGG-style trunk: per stage, ``convs[i]`` conv3x3-BN-ReLU layers of ``widths[i]`` channels, then a 2x2
    max-pool; no residual or dense connections. Returns it and its output channels."""
    layers, c = [], in_channels
    for w, n in zip(widths, convs):
        for _ in range(n):
            layers += [nn.Conv2d(c, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers), c


class FrozenNet(nn.Module):
    """Base class: interface kwargs (``in_channels``, ``resolution``) plus the input boundary.

    Subclasses call ``self.prepare(x)`` first in each public verb. ``frozen()`` switches to inference for
    good: eval mode, no parameter gradients, and ``train()`` no longer flips batch-norm back to training
    (so a frozen net inside a larger module stays frozen). Gradients still flow to the *input*.
    """

    def __init__(self, in_channels: int, resolution: int):
        super().__init__()
        if in_channels not in (1, 3):
            raise InputError(f"in_channels must be 1 or 3, got {in_channels}")
        self.in_channels = int(in_channels)
        self.resolution = int(resolution)
        self.check_range = True  # set False in hot loops whose inputs are known to be clamped
        self._is_frozen = False

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Check the [0, 1] NCHW boundary, then adapt channels and resolution to this network."""
        check_images(x, f"{type(self).__name__} input", check_range=self.check_range)
        return adapt_resolution(adapt_channels(x, self.in_channels), self.resolution)

    def frozen(self) -> "FrozenNet":
        """eval() + requires_grad_(False), permanently; returns self."""
        self._is_frozen = True
        self.requires_grad_(False)
        return super().train(False)

    @property
    def is_frozen(self) -> bool:
        return self._is_frozen

    def train(self, mode: bool = True):
        return super().train(mode and not self._is_frozen)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, resolution={self.resolution}, frozen={self._is_frozen}"
