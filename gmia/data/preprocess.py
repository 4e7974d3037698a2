"""Image I/O and preprocessing shared by every stage.

Convention: float32 tensors in [0, 1], shape (C, H, W) for one image or (N, C, H, W) for a batch.
These converters are the single place where integer pixels become floats and back.

The geometry of preprocessing (square by padding or cropping, then resize) is recorded in a
:class:`Geometry`, so :func:`restore` can map a processed S×S output back onto the original H×W frame
when outputs are written. ``Geometry`` is a ``NamedTuple`` of ints, so a DataLoader collates it.

Example::

    x = load_image("chest.png", channels=1)           # (1, H, W)
    y, g = Preprocess(size=256, square="pad")(x)      # (1, 256, 256), Geometry
    save_image(restore(y, g), "out.png", bits=16)      # written in the original H×W frame
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import kornia
import numpy as np
import torch
from PIL import Image

from gmia.data.reading import (DICOM_SUFFIXES, IMAGE_SUFFIXES, MAX_PIXELS, check_pixel_count, from_uint,
                               load_image, regular_file, source_bits, to_channels)
from gmia.errors import ConfigError, InputError
from gmia.fileio import atomic_file

__all__ = [
    "to_uint8", "to_uint16", "from_uint",
    "IMAGE_SUFFIXES", "DICOM_SUFFIXES",
    "load_image", "save_image", "check_image", "source_bits", "regular_file", "check_pixel_count", "MAX_PIXELS",
    "to_channels", "resize", "square", "apply_geometry", "restore", "Geometry", "Preprocess",
]

_SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
_SQUARE_MODES = ("pad", "crop", "stretch")
def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[0, 1] floats → uint8 (round to nearest, clamp)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def to_uint16(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[0, 1] floats → uint16 (round to nearest, clamp)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.clip(np.rint(a.astype(np.float64) * 65535.0), 0, 65535).astype(np.uint16)


def check_image(x: torch.Tensor, channels: int | None = None, size: int | None = None,
                source: object = "image") -> torch.Tensor:
    """Check one (C, H, W) image against the expected channels and square size; InputError names ``source``."""
    want_c = "C" if channels is None else str(channels)
    want_s = "H×W" if size is None else f"{size}×{size}"
    bad = x.ndim != 3 or (channels is not None and x.shape[0] != channels) or \
        (size is not None and tuple(x.shape[-2:]) != (size, size))
    if bad:
        raise InputError(f"{source}: expected an image of shape {want_c}×{want_s}, got "
                         f"{'×'.join(map(str, x.shape))}. Pass preprocess=Preprocess(size=..., channels=...) "
                         "or convert the file.")
    return x


# ---------------------------------------------------------------------------------------------- writing


def save_image(x: torch.Tensor | np.ndarray, path: str | os.PathLike, bits: int = 8) -> Path:
    """Write one (C, H, W) or (H, W) image in [0, 1] atomically; C = 1 (gray) or 3 (RGB).

    The format follows the suffix (.png, .jpg/.jpeg, .tif/.tiff). ``bits=16`` is for grayscale PNG/TIFF.
    The bytes go to a temporary file in the same folder, then ``os.replace`` puts it in place, so a killed
    process never leaves a half-written image under ``path``. Returns ``path``.
    """
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"cannot write {path}: unsupported suffix {path.suffix!r}; use one of "
                          f"{sorted(_SAVE_FORMATS)}.")
    if bits not in (8, 16):
        raise ConfigError(f"bits must be 8 or 16, got {bits!r}.")
    t = torch.as_tensor(x).detach().cpu()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"save_image expects (C, H, W) with C in (1, 3) or (H, W), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"save_image: image for {path} contains NaN or inf values")
    if bits == 16 and (t.shape[0] == 3 or fmt == "JPEG"):
        raise ConfigError(f"cannot write {path} with 16 bits: 16-bit output is for grayscale PNG/TIFF; "
                          "use bits=8 (RGB or JPEG) or a .png suffix.")
    a = (to_uint16 if bits == 16 else to_uint8)(t.float())
    a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W) or (H, W, 3)
    image = Image.fromarray(np.ascontiguousarray(a))
    options = {"quality": 95} if fmt == "JPEG" else {}

    with atomic_file(path) as f:
        image.save(f, format=fmt, **options)
    return path


# ---------------------------------------------------------------------------------------------- tensors


def resize(x: torch.Tensor, size: int | tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """Resize (C, H, W) or (N, C, H, W) to ``size`` (int = square, or (h, w)); antialiased when shrinking.

    Uses kornia (Gaussian prefilter, then bilinear); the result is clamped to [0, 1].
    """
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    y = kornia.geometry.transform.resize(x, hw, interpolation=interpolation, align_corners=False,
                                         antialias=True)
    return y.clamp_(0.0, 1.0)


class Geometry(NamedTuple):
    """How an original H×W image maps to a processed out_h×out_w image (all ints).

    The image is placed on a canvas_h×canvas_w canvas whose pixel (i, j) is the original pixel
    (i + top, j + left) — negative offsets pad, positive ones crop — and the canvas is resized to
    out_h×out_w. A DataLoader collates it field by field; :meth:`unbatch` splits it back.
    """

    height: int
    width: int
    channels: int
    top: int
    left: int
    canvas_h: int
    canvas_w: int
    out_h: int
    out_w: int

    @staticmethod
    def identity(x: torch.Tensor) -> "Geometry":
        """The geometry of an image left as it is: (C, H, W) → (C, H, W)."""
        c, h, w = x.shape[-3:]
        return Geometry(h, w, c, 0, 0, h, w, h, w)

    @staticmethod
    def unbatch(g: "Geometry") -> list["Geometry"]:
        """A collated Geometry (fields are (N,) tensors) → N plain Geometry tuples."""
        cols = [torch.as_tensor(f).reshape(-1).tolist() for f in g]
        return [Geometry(*map(int, row)) for row in zip(*cols)]


def _plan(h: int, w: int, c: int, mode: str, size: int | None) -> Geometry:
    if mode == "pad":
        side = max(h, w)
        top, left, ch, cw = -((side - h) // 2), -((side - w) // 2), side, side
    elif mode == "crop":
        side = min(h, w)
        top, left, ch, cw = (h - side) // 2, (w - side) // 2, side, side
    elif mode == "stretch":
        top, left, ch, cw = 0, 0, h, w
    else:
        raise ConfigError(f"square mode must be one of {_SQUARE_MODES}, got {mode!r}")
    oh, ow = (ch, cw) if size is None else (size, size)
    return Geometry(h, w, c, top, left, ch, cw, oh, ow)


def _paste(src: torch.Tensor, dst: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Copy ``src`` into ``dst`` where src pixel (i, j) lands on dst pixel (i + top, j + left)."""
    sh, sw = src.shape[-2:]
    dh, dw = dst.shape[-2:]
    r0, r1 = max(0, top), min(dh, top + sh)
    c0, c1 = max(0, left), min(dw, left + sw)
    if r1 > r0 and c1 > c0:
        dst[..., r0:r1, c0:c1] = src[..., r0 - top:r1 - top, c0 - left:c1 - left]
    return dst


def apply_geometry(x: torch.Tensor, g: Geometry, fill: float = 0.0) -> torch.Tensor:
    """Apply ``g`` forward: (C, H, W) → (C, out_h, out_w) (pad/crop onto the canvas, then resize)."""
    if tuple(x.shape[-2:]) != (g.height, g.width):
        raise ValueError(f"apply_geometry: image is {tuple(x.shape[-2:])}, geometry expects "
                         f"{(g.height, g.width)}")
    if (g.top, g.left, g.canvas_h, g.canvas_w) != (0, 0, g.height, g.width):
        canvas = x.new_full((*x.shape[:-2], g.canvas_h, g.canvas_w), fill)
        x = _paste(x, canvas, -g.top, -g.left)  # canvas pixel (i, j) = original (i + top, j + left)
    return resize(x, (g.out_h, g.out_w))


def square(x: torch.Tensor, mode: str = "pad", fill: float = 0.0) -> tuple[torch.Tensor, Geometry]:
    """Make (C, H, W) square: ``"pad"`` centres it on a max(H, W) canvas filled with ``fill``, ``"crop"``
    keeps the central min(H, W) square. Returns (x, geometry); ``restore(x, geometry)`` undoes it exactly.
    """
    g = _plan(*x.shape[-2:], x.shape[-3], mode, None)
    return apply_geometry(x, g, fill), g


def restore(y: torch.Tensor, g: Geometry, fill: float = 0.0, base: torch.Tensor | None = None,
            channels: int | None = None) -> torch.Tensor:
    """Map a processed (C, out_h, out_w) image back to the original (C', H, W) frame.

    Undoes the resize, then the pad (exactly: the padding is cut away) or the crop (the cut-away border
    is ``fill``, or taken from ``base`` (C, H, W) when given — note that pasting an original's border
    back into an anonymized image re-exposes that border). The result has the original channel count
    unless ``channels`` says otherwise. With no resize (out = canvas) pad/crop round-trips are exact.
    """
    if y.ndim != 3 or tuple(y.shape[-2:]) != (g.out_h, g.out_w):
        raise ValueError(f"restore: expected (C, {g.out_h}, {g.out_w}), got {tuple(y.shape)}")
    y = resize(y, (g.canvas_h, g.canvas_w))
    if base is None:
        out = y.new_full((y.shape[0], g.height, g.width), fill)
    else:
        if tuple(base.shape[-2:]) != (g.height, g.width):
            raise ValueError(f"restore: base is {tuple(base.shape)}, expected (C, {g.height}, {g.width})")
        out = to_channels(base.to(y), y.shape[0]).clone()
    out = _paste(y, out, g.top, g.left)
    return to_channels(out, g.channels if channels is None else channels)


@dataclass(frozen=True)
class Preprocess:
    """The preprocessing every stage shares: channels, square (pad/crop/stretch), resize to size×size.

    ``Preprocess(size=64, channels=1)(x)`` maps (C, H, W) in [0, 1] to ((1, 64, 64), Geometry).
    ``size=None`` keeps the squared size; ``channels=None`` keeps the channel count.
    """

    size: int | None = None     # output side S (None: no resize)
    channels: int | None = None  # 1 (gray) or 3 (RGB); None keeps the input's
    square: str = "pad"          # "pad" (keep everything), "crop" (central square), "stretch" (no aspect)
    fill: float = 0.0            # value of padded pixels, in [0, 1]

    def __post_init__(self):
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise ConfigError(f"Preprocess.size must be a positive int or None, got {self.size!r}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"Preprocess.channels must be 1, 3 or None, got {self.channels!r}")
        if self.square not in _SQUARE_MODES:
            raise ConfigError(f"Preprocess.square must be one of {_SQUARE_MODES}, got {self.square!r}")

    def plan(self, x: torch.Tensor) -> Geometry:
        """The geometry this preprocessing applies to ``x`` (C, H, W), without touching pixels."""
        return _plan(*x.shape[-2:], x.shape[-3], self.square, self.size)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, Geometry]:
        g = self.plan(x)
        if self.channels is not None:
            x = to_channels(x, self.channels)
        return apply_geometry(x, g, self.fill), g

    def mask(self, m: torch.Tensor, g: Geometry) -> torch.Tensor:
        """Apply the same geometry to a (1, H, W) mask; the result is binary {0, 1} float32."""
        return (apply_geometry(m.float(), g, 0.0) >= 0.5).float()
