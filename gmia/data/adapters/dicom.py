"""DICOM input via pydicom: pixel values → display values in [0, 1], and a folder-of-DICOM dataset.

The display pipeline follows the standard: Modality LUT (or Rescale Slope/Intercept), then VOI LUT (or
Window Center/Width), then MONOCHROME1 inversion (low values are white), then scaling to [0, 1]. With a VOI
the output range of the VOI decides the scale; without one, the image's own min..max does (what viewers do).

Patient ids come from the PatientID tag and are only used to group records; the sample carries a keyed
pseudonym (``pid-`` + 16 hex digits of HMAC-SHA256(key, PatientID)), never the tag itself nor an unsalted hash
of it. An anonymization run keys it with its own secret (``use_patient_key``); otherwise the key is random per
dataset object. De-identified DICOM output: ``dicom_deid``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gmia.data.datasets import ImageFolder
from gmia.data.preprocess import DICOM_SUFFIXES, Preprocess, check_pixel_count
from gmia.errors import InputError

__all__ = ["read_dicom", "dicom_to_tensor", "patient_pseudonym", "DicomFolder"]

_FIX = "Check that it is a complete single-image DICOM file, or remove it from the dataset."


def _dcmread(path: Path, **kw):
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
    ds = _dcmread(path)
    try:  # pydicom parses elements lazily: a malformed one raises its own error types on first access
        pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * max(int(ds.get("NumberOfFrames", 1) or 1), 1)
        check_pixel_count(pixels, max_pixels, path)
        return dicom_to_tensor(ds, path)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _malformed(path, e) from e


def patient_pseudonym(patient_id: str, key: bytes) -> str:
    """A stand-in for a PatientID: ``pid-`` + 16 hex digits of HMAC-SHA256(key, PatientID). It groups a
    patient's files; without the key it can neither be recomputed from a known id nor linked across runs."""
    return "pid-" + hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


class DicomFolder(ImageFolder):
    """All DICOM files (.dcm, .dicom) under ``root``; patients grouped by the PatientID tag (pseudonymized).

    Same options as :class:`ImageFolder` (``labels_csv`` etc.). Patient ids are read from the file headers
    (pixels skipped) the first time ``patients()`` or a sample needs them, then cached; a file without a
    PatientID is its own patient. A labels CSV with a patient column overrides the tags.
    """

    suffixes: tuple[str, ...] = DICOM_SUFFIXES

    def __init__(self, root, labels_csv=None, *, findings: Sequence[str] | None = None,
                 file_column: str | None = None, patient_column: str | None = None,
                 preprocess: Preprocess | None = None, channels: int | None = 1):
        super().__init__(root, labels_csv, findings=findings, file_column=file_column,
                         patient_column=patient_column, preprocess=preprocess, channels=channels)
        self._patients_from_tags = self._patients is None  # a CSV patient column overrides the tags
        self._patient_key = secrets.token_bytes(32)

    def use_patient_key(self, key: bytes) -> None:
        """Key the PatientID pseudonyms with ``key`` (an anonymization run hands its own, so that they are the
        same on every resume and shard). Until then a random key of this dataset object is used: patients group
        correctly within the process, and nothing derived from a PatientID is reproducible outside it."""
        self._patient_key = bytes(key)
        if self._patients_from_tags:
            self._patients = None  # recomputed from the headers under the new key

    def _lookup_patient(self, i: int) -> str:
        ds = _dcmread(self._image_path(i), stop_before_pixels=True, specific_tags=["PatientID"])
        pid = str(ds.get("PatientID", "") or "").strip()
        return patient_pseudonym(pid, self._patient_key) if pid else self._keys[i]
