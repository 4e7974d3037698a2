"""Image I/O and preprocessing shared by every stage.

Convention: float32 tensors in [0, 1], shape (C, H, W) for one image or (N, C, H, W) for a batch.
These converters are the single place where integer pixels become floats and back.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_uint8", "to_uint16", "from_uint"]


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
