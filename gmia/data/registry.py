"""One line to open a dataset by name: ``open_dataset("mimic", "/data/mimic-cxr-jpg", split="train")``."""

from __future__ import annotations

from gmia.data.adapters import CheXpert, ChestXray14, DicomFolder, MimicCXR
from gmia.data.datasets import ImageDataset, ImageFolder, PhantomFolder
from gmia.errors import ConfigError

__all__ = ["DATASETS", "open_dataset"]

DATASETS: dict[str, type[ImageDataset]] = {
    "phantom": PhantomFolder,   # a folder written by `gmia phantom`
    "folder": ImageFolder,      # any image folder, optional labels CSV
    "dicom": DicomFolder,       # a folder of DICOM files, patients from PatientID
    "mimic": MimicCXR,          # MIMIC-CXR-JPG 2.0.0
    "chexpert": CheXpert,       # CheXpert v1.0 (small or full)
    "nih": ChestXray14,         # NIH ChestX-ray14
}


def open_dataset(name: str, root, **kw) -> ImageDataset:
    """Open the dataset ``name`` at ``root``; ``kw`` go to its class (e.g. ``preprocess=Preprocess(size=64)``).

    Unknown names raise ConfigError listing the valid ones.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name](root, **kw)
