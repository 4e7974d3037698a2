"""Reading one file into pixels: PNG, JPEG, TIFF and BMP through Pillow, DICOM through pydicom.

Every reader returns float32 (C, H, W) in [0, 1] and raises :class:`InputError` naming the file. Files are
checked before any pixel is decoded: only regular files are opened (a FIFO would block), and an image declaring
more than ``MAX_PIXELS`` is refused (a tiny file can claim a huge canvas).

The DICOM display pipeline follows the standard: Modality LUT (or Rescale Slope/Intercept), then VOI LUT (or
Window Center/Width), then MONOCHROME1 inversion (low values are white), then scaling to [0, 1]. With a VOI
the output range of the VOI decides the scale; without one, the image's own min..max does (what viewers do).

This module is the bottom of the data layer: it imports nothing else from ``gmia.data``.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import kornia
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gmia.errors import InputError

__all__ = ["IMAGE_SUFFIXES", "DICOM_SUFFIXES", "MAX_PIXELS", "from_uint", "load_image", "source_bits", "is_dicom",
           "regular_file", "check_pixel_count", "to_channels", "read_dicom", "dicom_to_tensor", "dcmread"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
# Decoded pixels an input may have (36 M: a 6000 × 6000 image; the largest radiographs are about 4300 × 3500).
# Well below Pillow's own warning threshold (~89 M), and checked before decoding.
MAX_PIXELS = 36_000_000


def from_uint(a: np.ndarray) -> torch.Tensor:
    """uint8 / uint16 array → float32 tensor in [0, 1] (dtype decides the scale)."""
    if a.dtype == np.uint8:
        scale = 255.0
    elif a.dtype == np.uint16:
        scale = 65535.0
    else:
        raise TypeError(f"from_uint expects uint8 or uint16, got {a.dtype}")
    return torch.from_numpy(a.astype(np.float32) / scale)




def is_dicom(path: Path) -> bool:
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
    :func:`read_dicom`. ``channels`` (1 or 3) converts gray ↔ RGB.
    Only regular files are read, and an image declaring more than ``max_pixels`` (default ``MAX_PIXELS``) is
    refused before decoding. Raises :class:`InputError` naming the file when it is missing, not a regular
    file, too large, unreadable or corrupt.
    """
    path = regular_file(Path(path))
    if is_dicom(path):
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
        if is_dicom(path):
            return 16
        with Image.open(path) as im:
            return 16 if im.mode.startswith("I") else 8
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return 8



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



# ---------------------------------------------------------------------------------------------- DICOM

_FIX = "Check that it is a complete single-image DICOM file, or remove it from the dataset."


def dcmread(path: Path, **kw):
    import pydicom  # lazy: only DICOM users pay for it

    try:
        return pydicom.dcmread(path, **kw)
    except FileNotFoundError as e:
        raise InputError(f"DICOM file not found: {path}. Check the dataset root.", reason="file not found") from e
    except Exception as e:  # noqa: BLE001 - a malformed file raises many kinds of pydicom/struct errors
        raise _malformed(path, e) from e


def _malformed(path, e: Exception) -> InputError:
    text = " ".join(str(e).split())[:300]  # one line: pydicom's messages can span several
    return InputError(f"cannot read DICOM {path}: {type(e).__name__}: {text}. {_FIX}",
                      reason="cannot read DICOM: malformed or unsupported file")


def _voi_range(ds) -> tuple[float, float] | None:
    """The output range of the dataset's VOI transform, found by pushing the extremes through it."""
    from pydicom.pixels import apply_voi_lut

    if not any(k in ds for k in ("WindowCenter", "WindowWidth", "VOILUTSequence")):
        return None
    with np.errstate(all="ignore"):  # a SIGMOID window overflows exp() at the extremes: harmless
        lo, hi = apply_voi_lut(np.array([-(2 ** 31), 2 ** 31 - 1], np.int64), ds).astype(np.float64)
    return (min(lo, hi), max(lo, hi)) if hi != lo else None


def dicom_to_tensor(ds, path: os.PathLike | str = "<dicom>") -> torch.Tensor:
    """A pydicom Dataset (with pixel data) → (1, H, W) gray or (3, H, W) RGB float32 in [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "PixelData" not in ds:
        raise InputError(f"{path}: the DICOM file has no pixel data; expected an image. {_FIX}")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:  # refused before decoding: a cine loop or a tomosynthesis stack is not one radiograph
        raise InputError(f"{path}: multi-frame DICOM ({frames} frames); expected one 2-D image. Split it first.",
                         reason=f"multi-frame DICOM ({frames} frames): one 2-D image per file is supported")
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises a variety of errors for missing decoders or broken data
        raise InputError(f"cannot decode pixels of {path}: {e}. If it is compressed, decompress it first "
                         "(e.g. `gdcmconv --raw`), or install a pydicom pixel-data plugin.") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise InputError(f"{path}: unsupported photometric interpretation {photometric}; expected "
                             "MONOCHROME1, MONOCHROME2 or 3-sample colour.")
        bits = int(ds.get("BitsStored", 8))
        x = torch.from_numpy(arr.astype(np.float32) / float(2 ** bits - 1)).permute(2, 0, 1)
        return x.clamp_(0, 1).contiguous()
    try:
        values = apply_modality_lut(arr, ds)  # stays integer without rescale: what a VOI LUT indexes with
        window = _voi_range(ds)
        if window is not None:
            values = apply_voi_lut(values, ds)
            lo, hi = window
        else:
            lo, hi = float(values.min()), float(values.max())
    except (ValueError, TypeError, IndexError, AttributeError) as e:
        raise InputError(f"{path}: invalid Modality/VOI LUT or window: {e}. {_FIX}") from e
    values = values.astype(np.float64)
    x = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    x = np.clip(x, 0.0, 1.0)
    if photometric == "MONOCHROME1":  # MONOCHROME1: the minimum value is displayed white
        x = 1.0 - x
    return torch.from_numpy(x.astype(np.float32))[None]


def read_dicom(path: os.PathLike | str, max_pixels: int | None = None) -> torch.Tensor:
    """Read one DICOM file as (1, H, W) float32 in [0, 1] ((3, H, W) for colour); InputError names the file.

    The declared size (Rows × Columns × frames) is checked against ``max_pixels`` before pixels are decoded."""
    path = Path(path)
    ds = dcmread(path)
    try:  # pydicom parses elements lazily: a malformed one raises its own error types on first access
        pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * max(int(ds.get("NumberOfFrames", 1) or 1), 1)
        check_pixel_count(pixels, max_pixels, path)
        return dicom_to_tensor(ds, path)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _malformed(path, e) from e
