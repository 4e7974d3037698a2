"""One line to open a dataset by name: ``open_dataset("mimic", "/data/mimic-cxr-jpg", split="train")``, and
one to open a folder of your own: ``open_folder("/data/mine", "/data/mine/labels.csv", patient_column="mrn")``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gmia.data.adapters import CheXpert, ChestXray14, DicomFolder, MimicCXR
from gmia.data.datasets import ImageDataset, ImageFolder, PhantomFolder
from gmia.data.preprocess import DICOM_SUFFIXES, Preprocess
from gmia.errors import ConfigError

__all__ = ["DATASETS", "open_dataset", "open_folder"]

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


def open_folder(root, labels=None, *, image_column: str | None = None, patient_column: str | None = None,
                findings: Sequence[str] | None = None, preprocess: Preprocess | None = None) -> ImageDataset:
    """A folder of your own: every image under ``root``, or the files the ``labels`` CSV lists, with its
    finding columns (``findings``; default: every column but the image and patient ones) and its patient column
    (grouping only). A folder whose records are all DICOM files opens as a :class:`DicomFolder` (patients from
    the PatientID tags, keyed, unless the CSV names them)."""
    kw = dict(findings=None if findings is None else list(findings), file_column=image_column,
              patient_column=patient_column, preprocess=preprocess)
    ds = ImageFolder(root, labels, **kw)
    if len(ds) and all(Path(k).suffix.lower() in DICOM_SUFFIXES for k in ds.keys()):
        return DicomFolder(root, labels, **kw)
    return ds
