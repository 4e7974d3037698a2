"""A PhantomSet served through the common dataset interface, without touching the disk.

Samples are the same dicts as ``PhantomFolder`` gives for the written folder (same keys, patients, labels and
masks), so code can switch between the in-memory and the on-disk form freely.
"""

from __future__ import annotations

import numpy as np
import torch

from ..datasets import ImageDataset
from .base import PhantomSet
from .writer import patient_name

__all__ = ["PhantomDataset"]


class PhantomDataset(ImageDataset):
    """``PhantomDataset(ps, split="test")``: the images of ``ps`` (optionally one split) as samples."""

    has_masks = True

    def __init__(self, ps: PhantomSet, split: str | None = None):
        rows = np.arange(len(ps))
        if split is not None:
            rows = rows[ps.meta["split"][rows] == split]
        stems = [f"{patient_name(ps.patient[i])}_{int(ps.study[i]):02d}" for i in rows]
        super().__init__(".", keys=[f"images/{s}.png" for s in stems],
                         patients=[patient_name(ps.patient[i]) for i in rows],
                         labels=ps.labels()[rows].astype(np.float32), findings=ps.finding_names,
                         masks=[f"masks/{s}.png" for s in stems], channels=int(ps.images.shape[1]),
                         source=f"in-memory {ps.domain} phantom set")
        self._set, self._rows = ps, rows

    def _after_select(self, idx: np.ndarray) -> None:
        self._rows = self._rows[idx]

    def _read_image(self, i: int) -> torch.Tensor:
        # the same quantisation as the PNG files, so in-memory and on-disk samples are equal
        x = self._set.images[self._rows[i]]
        return torch.from_numpy(np.rint(np.clip(x, 0, 1) * 255).astype(np.float32) / 255)

    def _read_mask(self, i, g, image_path) -> torch.Tensor:
        m = torch.from_numpy((self._set.masks[self._rows[i]] > 0).astype(np.float32))
        return self.preprocess.mask(m, g) if self.preprocess is not None else m
