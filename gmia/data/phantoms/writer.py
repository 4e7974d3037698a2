"""Write a PhantomSet as a folder: images/, masks/, metadata.csv and phantom.json.

File names are ``<patient>_<study>.png``; metadata.csv has one row per image: image, mask, patient, study,
split, one 0/1 column per finding, and ``id_<param>`` identity parameters (ground truth for analysis).
Bytes are deterministic: same PhantomSet → same files.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ... import __version__
from ...errors import InputError
from ...fileio import atomic_file, atomic_path
from ..preprocess import to_uint8
from .base import PhantomSet

__all__ = ["write", "patient_name"]


def patient_name(p: int) -> str:
    return f"p{int(p):05d}"


def _save_png(array: np.ndarray, path: Path) -> None:
    """(C, H, W) uint8 → PNG, atomically (temp file + rename) so a killed run never leaves half a file."""
    mode = "L" if array.shape[0] == 1 else "RGB"
    img = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0), mode=mode)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", compress_level=6)


def write(ps: PhantomSet, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``ps`` under ``out``; refuses to write into a folder that already holds a phantom set."""
    out = Path(out)
    if (out / "metadata.csv").exists() and not overwrite:
        raise InputError(f"{out / 'metadata.csv'} already exists; choose another --out folder or delete it first")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    images, masks = to_uint8(ps.images), (ps.masks > 0).astype(np.uint8) * 255
    split = ps.meta.get("split", np.full(len(ps), "train", dtype=object))
    names = list(ps.findings)
    rows = []
    for i in range(len(ps)):
        stem = f"{patient_name(ps.patient[i])}_{int(ps.study[i]):02d}"
        _save_png(images[i], out / "images" / f"{stem}.png")
        _save_png(masks[i], out / "masks" / f"{stem}.png")
        row = {"image": f"images/{stem}.png", "mask": f"masks/{stem}.png", "patient": patient_name(ps.patient[i]),
               "study": int(ps.study[i]), "split": split[i]}
        row.update({k: int(ps.findings[k][i]) for k in names})
        row.update({f"id_{k}": f"{float(v[i]):.6g}" for k, v in ps.identity.items()})
        rows.append(row)
    with atomic_file(out / "metadata.csv", text=True) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    card = {"domain": ps.domain, "findings": names, "identity_params": list(ps.identity),
            "size": int(ps.images.shape[-1]), "channels": int(ps.images.shape[1]), "images": len(ps),
            **{k: ps.meta[k] for k in ("seed", "patients", "studies") if k in ps.meta}, "gmia_version": __version__}
    (out / "phantom.json").write_text(json.dumps(card, indent=2) + "\n")
    return out
