"""Writing a released image as a DICOM file, and the bit depth of a DICOM source.

    save_dicom(x, "out.dcm", header, bits=12)    # x (1, H, W) in [0, 1]; header from dicom_deid.release_header

The stored values are round(x · (2^bits − 1)), MONOCHROME2, no rescale, and a linear window (centre 2^(bits−1),
width 2^bits) that maps them exactly back to x's grid: ``read_dicom`` of the file gives x to half a grey level,
and so does any viewer. The file is written to a temporary name in the same folder and moved into place.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch

from gmia.errors import ConfigError
from gmia.fileio import atomic_file

__all__ = ["save_dicom", "stored_bits"]


def stored_bits(path: str | os.PathLike) -> int:
    """Bits per sample of a DICOM file's pixels (BitsStored, clamped to 8..16; colour: 8). Header only."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["BitsStored", "SamplesPerPixel", "PhotometricInterpretation"])
        bits = int(ds.get("BitsStored", 16) or 16)
        colour = int(ds.get("SamplesPerPixel", 1) or 1) > 1
    except Exception:  # unreadable: reading the pixels reports it properly
        return 16
    return 8 if colour else min(max(bits, 8), 16)


def save_dicom(x: torch.Tensor, path: str | os.PathLike, header, bits: int = 16) -> Path:
    """Write one (C, H, W) image in [0, 1] as a DICOM file with ``header`` (``dicom_deid.release_header``).

    Gray: MONOCHROME2, BitsStored = ``bits`` (8..16; BitsAllocated 8 or 16), no rescale, and a linear window
    (centre 2^(bits-1), width 2^bits) that maps the stored range exactly onto the display range. RGB: 8 bits.
    Written to a temporary file in the same folder, then moved into place (atomic)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    path = Path(path)
    t = torch.as_tensor(x).detach().cpu().float()
    if t.ndim != 3 or t.shape[0] not in (1, 3) or not torch.isfinite(t).all():
        raise ValueError(f"save_dicom expects a finite (C, H, W) image with C in (1, 3), got {tuple(t.shape)}")
    if not 8 <= bits <= 16:
        raise ConfigError(f"DICOM output needs 8 to 16 bits per sample, got {bits}")
    a = t.clamp(0, 1).numpy().astype(np.float64)
    ds = copy.deepcopy(header)
    if t.shape[0] == 3:
        bits = 8
        ds.set_pixel_data(np.rint(np.moveaxis(a, 0, -1) * 255).astype(np.uint8), "RGB", 8,
                          generate_instance_uid=False)
    else:
        dtype = np.uint8 if bits == 8 else np.uint16
        ds.set_pixel_data(np.rint(a[0] * (2 ** bits - 1)).astype(dtype), "MONOCHROME2", bits,
                          generate_instance_uid=False)
        ds.WindowCenter, ds.WindowWidth = 2 ** (bits - 1), 2 ** bits
        ds.VOILUTFunction = "LINEAR"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    with atomic_file(path) as f:
        ds.save_as(f, enforce_file_format=True)
    return path
