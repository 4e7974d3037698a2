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
import stat
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import kornia
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gmia.errors import ConfigError, InputError

__all__ = [
    "to_uint8", "to_uint16", "from_uint",
    "IMAGE_SUFFIXES", "DICOM_SUFFIXES",
    "load_image", "save_image", "check_image", "source_bits", "regular_file", "check_pixel_count", "MAX_PIXELS",
    "to_channels", "resize", "square", "apply_geometry", "restore", "Geometry", "Preprocess",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
_SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
_SQUARE_MODES = ("pad", "crop", "stretch")
# Decoded pixels an input may have (36 M: a 6000 × 6000 image; the largest radiographs are about 4300 × 3500).
# Well below Pillow's own warning threshold (~89 M), and checked before decoding.
MAX_PIXELS = 36_000_000


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[0, 1] floats → uint8 (round to nearest, clamp)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def to_uint16(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[0, 1] floats → uint16 (round to nearest, clamp)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.clip(np.rint(a.astype(np.float64) * 65535.0), 0, 65535).astype(np.uint16)


def from_uint(a: np.ndarray) -> torch.Tensor:
    """uint8 / uint16 array → float32 tensor in [0, 1] (dtype decides the scale)."""
    if a.dtype == np.uint8:
        scale = 255.0
    elif a.dtype == np.uint16:
        scale = 65535.0
    else:
        raise TypeError(f"from_uint expects uint8 or uint16, got {a.dtype}")
    return torch.from_numpy(a.astype(np.float32) / scale)


# ---------------------------------------------------------------------------------------------- reading


def _is_dicom(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in IMAGE_SUFFIXES or not path.is_file():
        return False
    with open(path, "rb") as f:  # DICOM Part 10 files carry "DICM" after a 128-byte preamble
        head = f.read(132)
    return head[128:132] == b"DICM"


def _pil_to_array(im: Image.Image, path: Path) -> np.ndarray:
    """A decoded Pillow image → uint8/uint16 array (H, W) or (H, W, 3), or float32 already in [0, 1]."""
    mode = im.mode
    if mode in ("1", "LA", "La"):
        im = im.convert("L")
    elif mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    elif mode == "I":
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise InputError(f"{path}: 32-bit integer pixels outside 0..65535; expected 8- or 16-bit "
                             "grayscale. Re-export it as a 16-bit PNG.")
        return a.astype(np.uint16)
    elif mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if not np.isfinite(a).all() or (a.size and (a.min() < 0 or a.max() > 1)):
            raise InputError(f"{path}: floating-point pixels outside [0, 1]; expected values in [0, 1]. "
                             "Rescale it to [0, 1] or re-export it as a 16-bit PNG.")
        return a
    elif mode not in ("L", "RGB"):
        im = im.convert("RGB")  # P, RGBA, CMYK, YCbCr...: alpha is dropped, colour kept
    return np.asarray(im)


def _read_pillow(path: Path, max_pixels: int) -> torch.Tensor:
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: the size is checked here, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as im:
            check_pixel_count(im.size[0] * im.size[1], max_pixels, path)  # before decoding: a tiny file can
            # claim a huge canvas (a 1-bit PNG of 12 000² is 22 KB on disk and 144 M pixels decoded)
            if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation (phone photos): show it upright
                from PIL import ImageOps
                im = ImageOps.exif_transpose(im)
            im.load()
            a = _pil_to_array(im, path)
    except InputError:
        raise
    except FileNotFoundError as e:
        raise InputError(f"image file not found: {path}. Check the dataset root and the file paths "
                         "in its CSV.", reason="image file not found") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot read image {path}: {e}. Expected a PNG, JPEG, TIFF or DICOM file; "
                         "re-export the file or remove it from the dataset.",
                         reason="cannot read image: not a decodable PNG, JPEG, TIFF or DICOM file") from e
    x = torch.from_numpy(a) if a.dtype == np.float32 else from_uint(a)
    return x[None] if x.ndim == 2 else x.permute(2, 0, 1).contiguous()  # (H, W, C) -> (C, H, W)


def check_pixel_count(pixels: int, max_pixels: int | None, path: object) -> None:
    """Refuse an image whose declared pixel count is above ``max_pixels``, before any pixel is decoded."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if pixels > limit:
        raise InputError(f"{path}: the image declares {pixels:,} pixels, above the limit of {limit:,}; "
                         "downscale it first, or raise the limit with --max-pixels if it is genuine.",
                         reason=f"image too large (more than {limit:,} pixels)")


def regular_file(path: Path) -> Path:
    """``path`` if it is a regular file (symlinks followed); InputError otherwise.

    Only regular files are opened: a FIFO named ``x.png`` would block the reader forever, and a device or a
    socket is never an image."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"image file not found: {path}. Check the dataset root and the file paths in its CSV.",
                         reason="image file not found") from None
    except OSError as e:
        raise InputError(f"cannot open {path}: {e.strerror}. Check its permissions.",
                         reason="file not readable") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"expected an image file, found a folder: {path}.", reason="not a file")
    if not stat.S_ISREG(mode):
        raise InputError(f"{path} is not a regular file (a FIFO, device or socket); only regular image files are "
                         "read. Remove it from the dataset.", reason="not a regular file")
    return path


def load_image(path: str | os.PathLike, channels: int | None = None, max_pixels: int | None = None) -> torch.Tensor:
    """Read one image file as float32 (C, H, W) in [0, 1].

    PNG (8/16-bit), JPEG, TIFF and BMP go through Pillow (16-bit → /65535, 8-bit → /255, alpha dropped,
    EXIF orientation applied); DICOM (``.dcm``/``.dicom`` or a ``DICM`` preamble) goes through
    :func:`gmia.data.adapters.dicom.read_dicom`. ``channels`` (1 or 3) converts gray ↔ RGB.
    Only regular files are read, and an image declaring more than ``max_pixels`` (default ``MAX_PIXELS``) is
    refused before decoding. Raises :class:`InputError` naming the file when it is missing, not a regular
    file, too large, unreadable or corrupt.
    """
    path = regular_file(Path(path))
    if _is_dicom(path):
        from gmia.data.adapters.dicom import read_dicom  # lazy: pydicom is only needed for DICOM input
        x = read_dicom(path, max_pixels=max_pixels)
    else:
        x = _read_pillow(path, max_pixels)
    if channels is not None and x.shape[0] != channels:
        x = to_channels(x, channels)
    return x


def source_bits(path: str | os.PathLike) -> int:
    """Bit depth to write an image derived from ``path`` with: 16 for 16-bit PNG/TIFF and DICOM, else 8.

    Reads the header only. An unreadable file gives 8 (reading it properly reports the error)."""
    path = Path(path)
    if not path.is_file():  # only regular files are opened (a FIFO would block)
        return 8
    try:
        if _is_dicom(path):
            return 16
        with Image.open(path) as im:
            return 16 if im.mode.startswith("I") else 8
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return 8


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

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=fmt, **options)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------- tensors


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray ↔ RGB on (C, H, W) or (N, C, H, W): 1 → 3 repeats, 3 → 1 is ITU-R 601 luma (as Pillow 'L')."""
    c = x.shape[-3]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    if c == 3 and channels == 1:
        return kornia.color.rgb_to_grayscale(x)
    raise ValueError(f"to_channels converts between 1 and 3 channels; got {c} channels → {channels}")


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
