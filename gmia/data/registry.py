"""Opening any input: ``gmia.data.open`` is the one door every command goes through.

    open("data/phantom-cxr64", split="test", size=64, channels=1)        # a phantom folder (phantom.json)
    open("/data/mine", labels="/data/mine/labels.csv", size=64, channels=1)  # a folder of your own (PNG, DICOM...)
    open("/data/mimic-cxr-jpg", "mimic", split="test", size=256, channels=1)  # a public dataset by name

``open_dataset`` (by name) and ``open_folder`` (your own folder) are the two halves it dispatches to."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gmia.data.adapters import CheXpert, ChestXray14, DicomFolder, MimicCXR
from gmia.data.datasets import ImageDataset, ImageFolder, PhantomFolder
from gmia.data.preprocess import Preprocess
from gmia.data.reading import DICOM_SUFFIXES
from gmia.errors import ConfigError, InputError

__all__ = ["DATASETS", "open", "open_dataset", "open_folder", "is_phantom_folder"]

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


def is_phantom_folder(root) -> bool:
    """A phantom folder has splits (``phantom.json``); any other image folder has none."""
    return (Path(root) / "phantom.json").is_file()


def open(root, dataset: str | None = None, *, split: str | None = None, size: int | None = None,  # noqa: A001
         channels: int | None = None, labels=None, image_column: str | None = None,
         patient_column: str | None = None, findings: Sequence[str] | None = None) -> ImageDataset:
    """Any input as (channels, size, size) images in [0, 1]: ``root`` is a phantom folder (``split`` selects
    rows), a folder of your own images or DICOM files (``labels``: an optional CSV, with its ``image_column``,
    ``patient_column`` and ``findings``), or, with ``dataset`` (mimic, chexpert, nih, folder, dicom, phantom),
    a dataset by name. Errors say which option to change."""
    prep = Preprocess(size=size, channels=channels)
    columns = dict(image_column=image_column, patient_column=patient_column, findings=findings)
    if dataset is not None:
        kwargs = {"split": split} if split else {}
        if labels is not None:
            if dataset not in ("folder", "dicom"):
                raise ConfigError(f"--labels describes a folder of your own (--input DIR, or --dataset folder/dicom); "
                                  f"--dataset {dataset} reads its own label files")
            kwargs.update(labels_csv=labels, file_column=image_column, patient_column=patient_column,
                          findings=None if findings is None else list(findings))
        return open_dataset(dataset, root, preprocess=prep, **kwargs)
    root = Path(root)
    if is_phantom_folder(root):
        if labels is not None:
            raise ConfigError(f"{root} is a phantom folder: its labels come from its metadata.csv; leave --labels "
                              "unset (--labels is for a folder of your own images)")
        ds = PhantomFolder(root, split=split)  # stored at the benchmark's size: preprocess only when it differs
        if (channels is not None and ds.channels != channels) or \
                (size is not None and int(ds.card.get("size", size)) != size):
            ds = PhantomFolder(root, split=split, preprocess=prep)
        return ds
    if split is not None:
        raise InputError(f"{root}: --split {split!r} needs a phantom folder (phantom.json); this is a plain image "
                         "folder, so leave --split unset")
    return open_folder(root, labels, preprocess=prep, **columns)
