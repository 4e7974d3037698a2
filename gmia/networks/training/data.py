"""Training data for the scoring networks: a phantom folder read once into memory, split by patient.

A 64 px phantom benchmark (a few thousand images) fits in memory as uint8, which makes an epoch a few
tensor slices instead of thousands of PNG decodes. Any other dataset comes through ``gmia.fit``, which
preprocesses it once into a memory-mapped uint8 array and hands the same ``PhantomData`` to the trainer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...config import get_preset
from ...errors import ConfigError, InputError

__all__ = ["Split", "PhantomData", "load_phantom_data"]


@dataclass
class Split:
    """The images of one split, in memory.

    images: (N, C, S, S) uint8; labels: (N, F) float32, NaN = unknown; masks: (N, 1, S, S) uint8 or None;
    patient: (N,) int64 index into ``patients``; study: (N,) int64 study index within the patient.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    patient: torch.Tensor
    study: torch.Tensor
    patients: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, idx: torch.Tensor, device) -> dict[str, torch.Tensor]:
        """Items ``idx`` as float tensors on ``device`` (images and masks in [0, 1])."""
        out = {"image": self.images[idx].to(device).float().div_(255.0),
               "labels": self.labels[idx].to(device), "patient": self.patient[idx].to(device),
               "study": self.study[idx]}
        if self.masks is not None:
            out["mask"] = self.masks[idx].to(device).float()
        return out

    @property
    def study_keys(self) -> np.ndarray:
        """(N,) one integer per (patient, study): what "same study" means for the verification metrics."""
        return (self.patient * 10_000 + self.study).numpy()

    def first_study_mask(self) -> np.ndarray:
        """(N,) True for the first listed image of each patient (the retrieval gallery)."""
        p = self.patient.numpy()
        first = np.zeros(len(p), dtype=bool)
        first[np.unique(p, return_index=True)[1]] = True
        return first


@dataclass
class PhantomData:
    root: Path
    domain: str
    findings: tuple[str, ...]
    channels: int
    size: int
    seed: int | None                 # the phantom generator's seed (the "data seed")
    card: dict
    splits: dict[str, Split]


def _read_split(root: Path, split: str) -> Split:
    from ...data.datasets import PhantomFolder

    ds = PhantomFolder(root, split=split)
    n = len(ds)
    if n == 0:
        raise InputError(f"{root}/metadata.csv has no '{split}' rows; regenerate the phantom set with more patients")
    items = [ds[i] for i in range(n)]
    images = torch.stack([(it["image"] * 255.0).round().to(torch.uint8) for it in items])
    masks = torch.stack([(it["mask"] > 0.5).to(torch.uint8) for it in items]) if ds.has_masks else None
    names = [it["patient"] for it in items]
    patients = sorted(set(names))
    index = {p: k for k, p in enumerate(patients)}
    study = ds.metadata["study"].astype(int).to_numpy() if "study" in ds.metadata else np.zeros(n, int)
    return Split(images=images, labels=torch.from_numpy(ds.labels()).float(), masks=masks,
                 patient=torch.tensor([index[p] for p in names], dtype=torch.int64),
                 study=torch.from_numpy(study.astype(np.int64)), patients=patients)


def load_phantom_data(root, preset: str, splits=("train", "val", "test")) -> PhantomData:
    """Read the ``splits`` of the phantom folder ``root`` and check it fits ``preset`` (channels, size)."""
    root = Path(root)
    card_path = root / "phantom.json"
    if not card_path.is_file():
        raise InputError(f"{root} is not a phantom folder (no phantom.json). Generate it with "
                         f"`gmia phantom --preset {preset} --out {root}`")
    card = json.loads(card_path.read_text())
    p = get_preset(preset)
    channels, size = int(card.get("channels", 0)), int(card.get("size", 0))
    if channels != p.channels or size != p.resolution:
        raise ConfigError(f"{root} holds {channels}x{size}x{size} images but preset {preset!r} trains on "
                          f"{p.channels}x{p.resolution}x{p.resolution}; generate data with "
                          f"`gmia phantom --preset {preset} --out DIR` or choose the matching preset")
    present = set(pd.read_csv(root / "metadata.csv", usecols=["split"])["split"])
    for required in ("train", "test"):
        if required in splits and required not in present:
            raise InputError(f"{root}/metadata.csv has no '{required}' patients; generate more patients")
    data = {s: _read_split(root, s) for s in splits if s in present}
    return PhantomData(root=root, domain=card.get("domain", p.domain), findings=tuple(card.get("findings", ())),
                       channels=channels, size=size, seed=card.get("seed"), card=card, splits=data)
