"""The privacy gate: judge the file that will be released, not the tensor that was optimized.

The published pipeline checks the identity hinge on a float image rendered under other noise, then writes a
JPEG (reference §13.6). Here each image is decoded with its own noise, quantized and written as PNG (8- or
16-bit) or DICOM into a staging folder, read back from disk, and embedded again by E_id. Only a file whose
cosine to its source is at most the margin m is moved into ``images/``; the runner retries or withholds the
others.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.preprocess import load_image, save_image
from .config import bf16_autocast
from .losses import identity_cosine
from .optimizer import noise_seeds

__all__ = ["GateResult", "write_and_check", "release"]


@dataclass
class GateResult:
    staged: Path          # the written file, still in staging
    cos_saved: float      # cos(E_id(source), E_id(file as read back))
    passed: bool          # cos_saved <= margin


@torch.no_grad()
def write_and_check(model, e_id, w: torch.Tensor, seeds: list[int], refs_id: torch.Tensor, paths: list[Path],
                    bits: list[int], margin: float, noise: str = "per-image",
                    writers: list[Callable[[torch.Tensor, Path], object]] | None = None,
                    bf16: bool = False) -> list[GateResult]:
    """Decode codes ``w`` (n, ...) with their per-image noise, write ``paths`` (PNG, ``bits`` each; or with
    ``writers[i](image, path)``, e.g. a DICOM file with its header), reload them through the same reader as
    any input (``load_image``: Pillow, or ``read_dicom`` for .dcm) and compare E_id of the reloaded pixels with
    ``refs_id`` (n, D). ``bf16``: G renders under bf16 autocast (the file is what it rendered); the check is fp32."""
    with bf16_autocast(w.device, bf16):
        x = model.render(w, noise_seeds(seeds, noise)).float().cpu()
    for i, (img, path, b) in enumerate(zip(x, paths, bits)):
        if writers is not None:
            writers[i](img, path)
        else:
            save_image(img, path, bits=b if img.shape[0] == 1 else 8)
    reloaded = torch.stack([load_image(p, channels=x.shape[1]) for p in paths]).to(refs_id.device)
    cos = identity_cosine(e_id.embed(reloaded), refs_id).tolist()
    return [GateResult(p, c, c <= margin) for p, c in zip(paths, cos)]


def release(staged: Path, final: Path, mtime: int) -> None:
    """Move a checked file into the released folder with a neutral timestamp (atomic on one filesystem)."""
    os.utime(staged, (mtime, mtime))
    os.replace(staged, final)
