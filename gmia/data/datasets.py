"""The dataset interface every stage reads, and the two generic datasets: phantom folders and image folders.

A dataset is an *index* (one record per image: relative path = key, patient, labels, optional mask path)
plus a root folder; images are decoded only in ``__getitem__``, so a 400k-image dataset costs a few tens
of MB, never the pixels. A sample is a dict with fixed keys::

    "image"    (C, H, W) float32 in [0, 1]   — preprocessed when the dataset has a Preprocess
    "key"      str    stable record key: the image path relative to the root, POSIX-style
    "patient"  str    patient id (splits are by patient)
    "labels"   (F,) float32, one per name in ``dataset.findings``; NaN = unknown
    "mask"     (1, H, W) float32 in {0, 1}   — only when ``dataset.has_masks``
    "index"    int    position in this dataset
    "geometry" Geometry  how "image" maps back to the file's frame (see ``preprocess.restore``)

Example::

    ds = PhantomFolder("phantoms/cxr64", split="train")
    sample = ds[0]; sample["image"].shape   # (1, 64, 64)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from gmia.data.preprocess import Geometry, Preprocess
from gmia.data.reading import DICOM_SUFFIXES, IMAGE_SUFFIXES, load_image, to_channels
from gmia.errors import ConfigError, InputError

__all__ = ["ImageDataset", "ImageFolder", "PhantomFolder", "split_by_patient", "patient_split"]


class _Strings:
    """N strings packed in one byte buffer plus offsets.

    No per-item Python objects: DataLoader workers forked from the main process would otherwise copy a
    400k-entry list page by page as they touch reference counts.
    """

    def __init__(self, items: Iterable[str]):
        encoded = [str(s).encode("utf-8") for s in items]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._data = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._data[self._offsets[i]:self._offsets[i + 1]].tobytes().decode("utf-8")

    def tolist(self) -> list[str]:
        return [self[i] for i in range(len(self))]

    def take(self, idx: np.ndarray) -> "_Strings":
        return _Strings(self[int(i)] for i in idx)


class ImageDataset(Dataset):
    """Base class: a lazily-read index of images with patients, labels and optional masks.

    Subclasses build the index (``keys`` relative to ``root``) and may override ``_read_image`` and
    ``_lookup_patient``. ``keys()``, ``patients()`` and ``labels()`` read no image.
    """

    has_masks: bool = False
    max_pixels: int | None = None   # decoded pixels a file may have (None: preprocess.MAX_PIXELS)

    def __init__(self, root, keys: Sequence[str], patients: Sequence[str] | None, labels: np.ndarray | None,
                 findings: Sequence[str], *, masks: Sequence[str] | None = None,
                 preprocess: Preprocess | None = None, channels: int | None = None, size: int | None = None,
                 strict: bool = False, source: object = None):
        self.root = Path(root)
        self.findings = tuple(str(f) for f in findings)
        self.preprocess = preprocess
        self.source = source if source is not None else self.root  # what the index came from, for errors
        self._channels = channels   # declared channel count (None: from the first image)
        self._size = size           # declared square size of the files (checked when strict)
        self._strict = strict       # strict: a file of other size/channels is an error, not converted
        n = len(keys)
        dupes = pd.Index(keys)[pd.Index(keys).duplicated()]
        if len(dupes):
            raise InputError(f"{self.source}: image {dupes[0]!r} is listed {list(keys).count(dupes[0])} times; "
                             "each image must appear once. Remove the duplicate rows.")
        self._keys = _Strings(keys)
        self._patients = None if patients is None else _Strings(patients)
        labels = np.zeros((n, 0), np.float32) if labels is None else np.asarray(labels, dtype=np.float32)
        if labels.shape != (n, len(self.findings)):
            raise ValueError(f"labels must be ({n}, {len(self.findings)}), got {labels.shape}")
        self._labels = np.ascontiguousarray(labels)
        self._masks = None if masks is None else _Strings(masks)
        self.has_masks = masks is not None

    # ---- index (no image reads) -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list[str]:
        """The N record keys (relative image paths), in dataset order."""
        return self._keys.tolist()

    def patients(self) -> list[str]:
        """The N patient ids, in dataset order."""
        if self._patients is None:
            self._patients = _Strings(self._lookup_patient(i) for i in range(len(self)))
        return self._patients.tolist()

    def labels(self) -> np.ndarray:
        """(N, F) float32 label matrix (NaN = unknown), columns in ``findings`` order."""
        return self._labels.copy()

    def use_patient_key(self, key: bytes) -> None:
        """Key the patient ids this dataset derives from identifying data (DICOM PatientID) with ``key``.
        An anonymization run hands its own secret; datasets whose ids are given as they are ignore it."""

    @property
    def channels(self) -> int:
        """Channels of ``sample["image"]``: the Preprocess's, the dataset's, or the first image's."""
        if self.preprocess is not None and self.preprocess.channels is not None:
            return self.preprocess.channels
        if self._channels is None:
            self._channels = int(self._read_image(0).shape[0]) if len(self) else 1
        return self._channels

    # ---- subsets ----------------------------------------------------------------------------------
    def select(self, indices: Sequence[int] | np.ndarray) -> "ImageDataset":
        """A dataset of the same class holding only ``indices`` (keys and labels are kept)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        new = copy.copy(self)
        new._keys = self._keys.take(idx)
        new._patients = None if self._patients is None else self._patients.take(idx)
        new._labels = self._labels[idx]
        new._masks = None if self._masks is None else self._masks.take(idx)
        new._after_select(idx)
        return new

    def filter_patients(self, patients: Iterable[str]) -> "ImageDataset":
        """The records whose patient is in ``patients``."""
        keep = set(map(str, patients))
        return self.select([i for i, p in enumerate(self.patients()) if p in keep])

    def _after_select(self, idx: np.ndarray) -> None:
        """Hook for subclasses holding more per-record columns."""

    # ---- reading ----------------------------------------------------------------------------------
    def _image_path(self, i: int) -> Path:
        return self.root / self._keys[i]

    def path_of(self, index: int) -> Path:
        """The file record ``index`` is read from (for bit depth and error reports; never for output names)."""
        return self._image_path(int(index) % len(self))

    def _read_image(self, i: int) -> torch.Tensor:
        return load_image(self._image_path(i), max_pixels=self.max_pixels)

    def _lookup_patient(self, i: int) -> str:
        return self._keys[i]

    def _conform(self, x: torch.Tensor, path: Path) -> torch.Tensor:
        """Check (strict) or convert the raw image to the dataset's channels."""
        if self._strict:
            want = (self._channels, self._size, self._size)
            got = tuple(x.shape)
            if (want[0] is not None and got[0] != want[0]) or (self._size and got[1:] != want[1:]):
                raise InputError(f"{path}: expected a {'×'.join(str(v) for v in want if v)} image "
                                 f"(C×H×W) as declared by {self.source}, got {'×'.join(map(str, got))}. "
                                 "Regenerate the folder or fix that file.")
        target = self.channels
        if x.shape[0] != target:
            if x.shape[0] not in (1, 3):
                raise InputError(f"{path}: has {x.shape[0]} channels; expected 1 (gray) or 3 (RGB).")
            x = to_channels(x, target)
        return x

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        i = int(index) % n
        path = self._image_path(i)
        x = self._conform(self._read_image(i), path)
        if self.preprocess is not None:
            x, geometry = self.preprocess(x)
        else:
            geometry = Geometry.identity(x)
        sample = {
            "image": x.float().contiguous(),
            "key": self._keys[i],
            "patient": self._patients[i] if self._patients is not None else self._lookup_patient(i),
            "labels": torch.from_numpy(self._labels[i].copy()),
            "index": i,
            "geometry": geometry,
        }
        if self.has_masks:
            sample["mask"] = self._read_mask(i, geometry, path)
        return sample

    def _read_mask(self, i: int, g: Geometry, image_path: Path) -> torch.Tensor:
        rel = self._masks[i]
        if not rel:  # a record without a lesion mask: all zeros
            m = torch.zeros(1, g.height, g.width)
        else:
            mpath = self.root / rel
            m = (load_image(mpath, channels=1) >= 0.5).float()
            if tuple(m.shape[-2:]) != (g.height, g.width):
                raise InputError(f"mask {mpath} is {m.shape[-2]}×{m.shape[-1]} but its image {image_path} is "
                                 f"{g.height}×{g.width}; a mask must have its image's size. Fix or remove it.")
        return self.preprocess.mask(m, g) if self.preprocess is not None else m

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)}, findings={len(self.findings)}, "
                f"masks={self.has_masks})")


# ---------------------------------------------------------------------------------------------- splits


def patient_split(patient: str, fractions: dict[str, float], seed: int = 0) -> str:
    """The split of one patient, from a hash of (seed, patient id): the same on every machine, and a
    patient's split never changes when more patients are added to the dataset."""
    total = sum(fractions.values())
    u = int.from_bytes(hashlib.sha256(f"{seed}:{patient}".encode()).digest()[:8], "big") / 2.0 ** 64
    acc = 0.0
    for name, frac in fractions.items():
        acc += frac / total
        if u < acc:
            return name
    return name


def split_by_patient(dataset: ImageDataset, split: str,
                     fractions: dict[str, float] | None = None, seed: int = 0) -> ImageDataset:
    """The records of ``dataset`` whose patient falls in ``split`` (default train/val/test = 0.8/0.1/0.1)."""
    fractions = fractions or {"train": 0.8, "val": 0.1, "test": 0.1}
    if split not in fractions:
        raise ConfigError(f"unknown split {split!r}; valid: {sorted(fractions)}")
    return dataset.select([i for i, p in enumerate(dataset.patients())
                           if patient_split(p, fractions, seed) == split])


# ---------------------------------------------------------------------------------------------- folders


def _relative(root: Path, p: str, source: object) -> str:
    """A CSV file entry → POSIX path relative to root (absolute paths must lie inside root)."""
    p = str(p).strip().replace("\\", "/")
    if os.path.isabs(p):
        try:
            p = Path(p).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            raise InputError(f"{source}: file {p!r} is outside the dataset root {root}; list files "
                             "relative to the root.") from None
    rel = PurePosixPath(os.path.normpath(p)).as_posix()
    if rel.startswith("../") or rel == "..":
        raise InputError(f"{source}: file {p!r} points outside the dataset root {root}.")
    return rel


def _scan(root: Path, suffixes: Sequence[str]) -> list[str]:
    """Relative POSIX paths of all files under root with one of ``suffixes``, sorted.

    Hidden files (``.name.png``) are records like any other: the user put them there, and one that cannot be
    read gets its error row instead of vanishing. Hidden folders (``.git``, ``.ipynb_checkpoints``, ...) hold
    tool copies, not data: they are skipped, with a warning that says how many images they held."""
    suffixes = tuple(s.lower() for s in suffixes)
    found, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root)
        hidden = [d for d in dirnames if d.startswith(".")]
        for d in hidden:
            skipped += [f for _, _, files in os.walk(Path(dirpath) / d) for f in files if f.lower().endswith(suffixes)]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [(base / f).as_posix() for f in filenames if f.lower().endswith(suffixes)]
    if skipped:
        warnings.warn(f"{root}: skipped {len(skipped)} image file(s) inside hidden folders (names starting with "
                      "'.'); move them out of the hidden folder to include them", stacklevel=3)
    return sorted(found)


def _read_table(path: Path, what: str, fix: str) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(f"{what} not found: expected {path}. {fix}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"cannot parse {what} {path}: {e}. Expected a comma-separated file with a header row.") from e


def _numeric(table: pd.DataFrame, columns: Sequence[str], path: Path) -> np.ndarray:
    """Finding columns → (N, F) float32; empty cells are NaN (unknown)."""
    out = np.empty((len(table), len(columns)), np.float32)
    for j, c in enumerate(columns):
        col = table[c].str.strip().replace("", np.nan)
        values = pd.to_numeric(col, errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy() & col.notna().to_numpy())
        if len(bad):  # the line, not the value: a mistyped column may hold names or ids
            raise InputError(f"{path}: finding column {c!r} must hold numbers (0/1, empty = unknown); line "
                             f"{bad[0] + 2} does not ({len(bad)} such rows). Fix the file, or name the finding "
                             "columns to read (--findings A,B) to leave text columns out.")
        out[:, j] = values.to_numpy(np.float32)
    return out


class ImageFolder(ImageDataset):
    """All images under ``root`` (recursive), or the files listed in a labels CSV.

    Without ``labels_csv`` every .png/.jpg/.jpeg/.tif/.tiff/.bmp/.dcm file is a record, with no labels and
    patient = key. With ``labels_csv`` (path, or relative to root) the CSV lists the records: a file
    column (``image``, ``file``, ``path`` or ``filename``, relative to root), finding columns (0/1, empty =
    unknown; ``findings=None`` takes every other column except the patient one) and an optional patient
    column (``patient``/``patient_id``; empty → key). Files are not opened until read.
    """

    suffixes: tuple[str, ...] = IMAGE_SUFFIXES + DICOM_SUFFIXES

    def __init__(self, root, labels_csv=None, *, findings: Sequence[str] | None = None,
                 file_column: str | None = None, patient_column: str | None = None,
                 preprocess: Preprocess | None = None, channels: int | None = None):
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"image folder not found: {root}. Pass the folder that holds the images.")
        if labels_csv is None:
            keys = _scan(root, self.suffixes)
            if not keys:
                raise InputError(f"no image files under {root}; expected files ending in {', '.join(self.suffixes)}.")
            super().__init__(root, keys, None, None, (), preprocess=preprocess, channels=channels, source=root)
            return
        csv = Path(labels_csv)
        csv = csv if csv.is_absolute() or csv.exists() else root / csv
        table = _read_table(csv, "labels CSV", "Pass labels_csv=PATH to a CSV with a file column and finding "
                                              "columns, or leave it unset to use every image without labels.")
        cols = list(table.columns)
        file_column = file_column or next((c for c in ("image", "file", "path", "filename") if c in cols), None)
        if file_column not in cols:
            wanted = f"image column {file_column!r} not found" if file_column else \
                "no image column (image, file, path or filename)"
            raise InputError(f"{csv}: {wanted}; its columns are {cols}. Name the column that holds the image "
                             "paths with --image-column (file_column=...).")
        patient_column = patient_column or next((c for c in ("patient", "patient_id") if c in cols), None)
        if patient_column is not None and patient_column not in cols:
            raise InputError(f"{csv}: patient column {patient_column!r} not found; its columns are {cols}. Pass "
                             "--patient-column (patient_column=...) with one of them.")
        if findings is None:
            findings = [c for c in cols if c not in (file_column, patient_column)]
        missing = [f for f in findings if f not in cols]
        if missing:
            raise InputError(f"{csv}: finding column {missing[0]!r} not found; its columns are {cols}. Pass "
                             "--findings (findings=...) with some of them.")
        keys = [_relative(root, p, csv) for p in table[file_column]]
        patients = None
        if patient_column is not None:
            patients = [p.strip() or k for p, k in zip(table[patient_column], keys)]
        super().__init__(root, keys, patients, _numeric(table, findings, csv), findings,
                         preprocess=preprocess, channels=channels, source=csv)


_DOMAIN_CHANNELS = {"cxr": 1, "face": 3}
_PHANTOM_FIX = "Generate the folder with `gmia phantom DIR`."


class PhantomFolder(ImageDataset):
    """A folder written by ``gmia phantom``: images/, masks/, metadata.csv and phantom.json.

    ``split`` ("train", "val", "test" or a list of them) keeps only those rows. ``metadata`` is the
    (filtered) metadata table, with the study index and the ``id_*`` identity ground truth.
    Files must match phantom.json (size, channels of the domain); a mismatching file is an InputError.
    """

    def __init__(self, root, split: str | Sequence[str] | None = None, preprocess: Preprocess | None = None):
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"phantom folder not found: {root}. {_PHANTOM_FIX}")
        card = root / "phantom.json"
        if not card.is_file():
            raise InputError(f"{root} is not a phantom folder: expected {card}. {_PHANTOM_FIX}")
        try:
            self.card = json.loads(card.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"cannot parse {card}: {e}. {_PHANTOM_FIX}") from e
        domain = self.card.get("domain")
        if domain not in _DOMAIN_CHANNELS:
            raise InputError(f"{card}: domain must be one of {sorted(_DOMAIN_CHANNELS)}, got {domain!r}.")
        self.domain = domain
        findings = [str(f) for f in self.card.get("findings", [])]
        csv = root / "metadata.csv"
        table = _read_table(csv, "phantom metadata", _PHANTOM_FIX)
        missing = [c for c in ("image", "patient", "split", *findings) if c not in table.columns]
        if missing:
            raise InputError(f"{csv}: missing columns {missing} (findings come from {card}). {_PHANTOM_FIX}")
        if split is not None:
            wanted = [split] if isinstance(split, str) else list(split)
            valid = sorted(set(table["split"]))
            bad = [s for s in wanted if s not in valid]
            if bad:
                raise ConfigError(f"split {bad[0]!r} not in {csv}; valid splits: {valid}")
            table = table[table["split"].isin(wanted)].reset_index(drop=True)
        self.metadata = table.copy()
        for c in table.columns.difference(["image", "mask", "patient", "split"]):
            try:  # study, findings and id_* parameters as numbers, for analysis
                self.metadata[c] = pd.to_numeric(table[c])
            except (ValueError, TypeError):
                pass
        masks = [_relative(root, m, csv) if m.strip() else "" for m in table["mask"]] if "mask" in table else None
        super().__init__(root, [_relative(root, p, csv) for p in table["image"]], list(table["patient"]),
                         _numeric(table, findings, csv), findings, masks=masks, preprocess=preprocess,
                         channels=int(self.card.get("channels", _DOMAIN_CHANNELS[domain])),
                         size=self.card.get("size"), strict=True, source=csv)

    def _after_select(self, idx: np.ndarray) -> None:
        self.metadata = self.metadata.iloc[idx].reset_index(drop=True)
