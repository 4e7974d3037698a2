"""The training data of a fit: any dataset gmia opens, split by patient once, preprocessed once.

    data = prepare_data("gmia-cxr256", DataSpec(dataset="mimic", data_root="/data/mimic-cxr-jpg"), "models/m")
    data.fingerprint                      # what the stages' cards record: index, patients, labels, preset size
    data.images("train")                  # the training images as a dataset (for stage 1, the prior, features)
    data.network_data()                   # the same, split, as the scoring networks' trainer reads it

What it writes into the output folder:

    splits.json          patients of each split (made once; rerunning reads it back). Patient ids name patients:
                         keep this file with the source data
    work/cache/          every image preprocessed to the preset's size, as uint8, split-major (images.u8, a
                         memory-mapped array), with cache.json; built once with DataLoader workers, resumable.
                         Unreadable files are recorded in errors.txt and left out of every split
    work/private/        patient.key: the key of the DICOM PatientID pseudonyms (so splits stay the same)

A phantom folder keeps its own splits (metadata.csv); any other dataset is split by patient on a hash of the
patient id (80/10/10, at least two patients in val and test).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import get_preset
from ..errors import ConfigError, InputError
from ..fileio import atomic_write, atomic_write_json
from ..runs import log

__all__ = ["DataSpec", "FitData", "CachedImages", "prepare_data", "SPLITS", "FRACTIONS"]

SPLITS = ("train", "val", "test")
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
SPLIT_SEED = 0


@dataclass(frozen=True)
class DataSpec:
    """How the user named the data: a folder (``input``, optional ``labels`` CSV and its columns) or a dataset
    adapter (``dataset`` + ``data_root``)."""

    input: str | None = None
    labels: str | None = None
    image_column: str | None = None
    patient_column: str | None = None
    findings: str | None = None          # "a,b": the finding columns of ``labels``
    dataset: str | None = None           # mimic, chexpert, nih, folder, dicom
    data_root: str | None = None

    def describe(self) -> str:
        return self.input if self.input is not None else f"{self.dataset}:{self.data_root}"


def open_spec(preset: str, spec: DataSpec):
    """The dataset of ``spec``, preprocessed to the preset's channels and resolution."""
    from ..cli_options import open_input

    return open_input(preset, spec.input, spec.dataset, spec.data_root, None, spec.labels, spec.image_column,
                      spec.patient_column, spec.findings)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def fingerprint(dataset, preset: str) -> str:
    """sha256 of what the networks learn from: keys, patients, findings and labels, and the preset's image
    format. A replaced file under the same name is not seen (that would mean reading every image)."""
    p = get_preset(preset)
    return _digest(p.resolution, p.channels, type(dataset).__name__, "\n".join(dataset.keys()),
                   "\n".join(dataset.patients()), "\n".join(dataset.findings),
                   np.ascontiguousarray(dataset.labels()).tobytes())


def _hash_unit(patient: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{SPLIT_SEED}:{patient}".encode()).digest()[:8], "big") / 2.0 ** 64


def make_splits(dataset) -> tuple[dict[str, list[str]], str]:
    """{split: sorted patients}, method. Phantom folders keep theirs; others: patients ordered by a hash of
    their id, cut at 80/10/10 (val and test get at least two patients each when there are six or more)."""
    patients = dataset.patients()
    meta = getattr(dataset, "metadata", None)
    if meta is not None and "split" in meta:
        out = {s: sorted({p for p, t in zip(patients, meta["split"]) if t == s}) for s in SPLITS}
        return out, "phantom metadata.csv"
    unique = sorted(set(patients), key=lambda p: (_hash_unit(p), p))
    n = len(unique)
    n_val = max(round(n * FRACTIONS["val"]), 2 if n >= 6 else 1 if n >= 3 else 0)
    n_test = max(round(n * FRACTIONS["test"]), 2 if n >= 6 else 1 if n >= 3 else 0)
    n_train = n - n_val - n_test
    out = {"train": sorted(unique[:n_train]), "val": sorted(unique[n_train:n_train + n_val]),
           "test": sorted(unique[n_train + n_val:])}
    return out, "patients ordered by sha256(seed:patient), cut at 80/10/10"


def _study_ids(keys: list[str], patients: list[str]) -> np.ndarray:
    """One integer per image naming its study within its patient: the image's folder when folders are finer
    than patients (MIMIC s<study>/, CheXpert study<k>/), else its order among the patient's images."""
    parents = [k.rsplit("/", 1)[0] if "/" in k else "" for k in keys]
    by_folder = len(set(zip(patients, parents))) > len(set(patients))
    seen: dict[str, dict[str, int]] = {}
    out = np.zeros(len(keys), np.int64)
    for i, (p, folder) in enumerate(zip(patients, parents)):
        ids = seen.setdefault(p, {})
        tag = folder if by_folder else str(i)
        out[i] = ids.setdefault(tag, len(ids))
    return out


class CachedImages(torch.utils.data.Dataset):
    """Rows of the preprocessed cache as a dataset: ``[i]`` → {"image" (C, R, R) float in [0, 1], "key",
    "patient", "labels", "index"}; ``keys()``, ``patients()``, ``labels()`` read no image."""

    def __init__(self, data: "FitData", rows: np.ndarray):
        self.data, self.rows = data, np.asarray(rows, np.int64)
        self.findings = data.findings

    def __len__(self) -> int:
        return len(self.rows)

    def keys(self) -> list[str]:
        return [self.data.keys[self.data.order[r]] for r in self.rows]

    def patients(self) -> list[str]:
        return [self.data.patients[self.data.order[r]] for r in self.rows]

    def labels(self) -> np.ndarray:
        return self.data.labels[self.data.order[self.rows]]

    def images(self, start: int, stop: int) -> torch.Tensor:
        """Images [start, stop) of this view, (n, C, R, R) float in [0, 1]."""
        rows = self.rows[start:stop]
        return torch.from_numpy(np.ascontiguousarray(self.data.pixels[rows])).float().div_(255.0)

    def __getitem__(self, i: int) -> dict:
        r = int(self.rows[i])
        j = int(self.data.order[r])
        return {"image": torch.from_numpy(np.array(self.data.pixels[r])).float().div_(255.0),
                "key": self.data.keys[j], "patient": self.data.patients[j],
                "labels": torch.from_numpy(self.data.labels[j].copy()), "index": i}

    def __repr__(self) -> str:
        return f"CachedImages({self.data.spec.describe()}, n={len(self)})"


class _LazyStack:
    """``len()`` and ``[a:b]`` → a stacked batch: what LatentPrior.fit reads, without holding every image."""

    def __init__(self, view: CachedImages):
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, s: slice) -> torch.Tensor:
        return self.view.images(*s.indices(len(self.view))[:2])


@dataclass
class FitData:
    """The dataset of a fit, split and cached. ``order[row]`` is the dataset index of cache row ``row``."""

    spec: DataSpec
    preset: str
    fingerprint: str
    findings: tuple[str, ...]
    keys: list[str]
    patients: list[str]
    labels: np.ndarray                    # (N, F) float32, NaN = unknown, dataset order
    study: np.ndarray                     # (N,) study index within the patient
    split_patients: dict[str, list[str]]
    split_method: str
    order: np.ndarray                     # (N,) cache rows → dataset indices (split-major)
    ranges: dict[str, tuple[int, int]]    # split → [start, stop) of its cache rows
    bad: np.ndarray                       # (N,) bool per cache row: the file could not be read
    pixels: np.ndarray | None = None      # (N, C, R, R) uint8 memmap, split-major
    masks: np.ndarray | None = None       # (N, 1, R, R) uint8 memmap (datasets with lesion masks)

    def rows(self, split: str) -> np.ndarray:
        """Cache rows of ``split`` that could be read."""
        a, b = self.ranges[split]
        r = np.arange(a, b)
        return r[~self.bad[a:b]]

    def images(self, split: str, limit: int | None = None) -> CachedImages:
        rows = self.rows(split)
        return CachedImages(self, rows if limit is None else rows[:limit])

    def lazy(self, split: str, limit: int | None = None) -> _LazyStack:
        return _LazyStack(self.images(split, limit))

    def summary(self) -> dict:
        """What cards record about the data (no patient ids)."""
        return {"source": asdict(self.spec), "fingerprint": self.fingerprint, "images": len(self.keys),
                "unreadable": int(self.bad.sum()), "findings": list(self.findings), "splits": self.split_method,
                **{f"{s}_patients": len(self.split_patients[s]) for s in SPLITS},
                **{f"{s}_images": len(self.rows(s)) for s in SPLITS}}

    def network_data(self, splits=SPLITS):
        """The splits as the scoring networks' trainer reads them (``gmia.networks.training.data.PhantomData``);
        images stay memory-mapped."""
        from ..networks.training.data import PhantomData, Split

        p = get_preset(self.preset)
        out = {}
        for s in splits:
            rows = self.rows(s)
            if not len(rows):
                continue
            a, b = self.ranges[s]
            contiguous = len(rows) == b - a
            idx = self.order[rows]
            names = [self.patients[j] for j in idx]
            patients = sorted(set(names))
            index = {q: k for k, q in enumerate(patients)}
            images = torch.from_numpy(self.pixels[a:b] if contiguous else self.pixels[rows])
            masks = None
            if self.masks is not None:
                masks = torch.from_numpy(self.masks[a:b] if contiguous else self.masks[rows])
            out[s] = Split(images=images, labels=torch.from_numpy(self.labels[idx]).float(), masks=masks,
                           patient=torch.tensor([index[q] for q in names], dtype=torch.int64),
                           study=torch.from_numpy(self.study[idx]), patients=patients)
        for required in ("train", "test"):
            if required not in out:
                raise InputError(f"{self.spec.describe()}: the {required} split holds no readable image; a fit needs "
                                 "patients in train, val and test (at least 6 patients)")
        return PhantomData(root=Path(self.spec.describe()), domain=p.domain, findings=self.findings,
                           channels=p.channels, size=p.resolution, seed=None,
                           card={"fingerprint": self.fingerprint, "source": asdict(self.spec)}, splits=out)


# ---- preparation ---------------------------------------------------------------------------------------------
def _patient_key(work: Path) -> bytes:
    path = work / "private" / "patient.key"
    if not path.is_file():
        atomic_write(path, secrets.token_bytes(32), mode=0o600)
    return path.read_bytes()


def _load_or_make_splits(out: Path, dataset, fp: str, main: bool) -> tuple[dict[str, list[str]], str]:
    """splits.json when it exists (new patients placed by the hash rule), else new splits, written once."""
    path = out / "splits.json"
    if path.is_file():
        rec = json.loads(path.read_text())
        known = {p: s for s in SPLITS for p in rec["patients"].get(s, [])}
        fresh = set(dataset.patients()) - set(known)
        splits, method = {s: sorted(rec["patients"].get(s, [])) for s in SPLITS}, rec["method"]
        if fresh:  # patients the recorded splits do not know: placed by the same rule, apart from the others
            made, _ = make_splits(dataset)
            splits = {s: sorted(set(splits[s]) | (set(made[s]) & fresh)) for s in SPLITS}
            method += f"; {len(fresh)} patients added later by the same rule"
        elif rec.get("fingerprint") == fp:
            return splits, method
    else:
        splits, method = make_splits(dataset)
    if main:
        atomic_write_json(path, {"method": method, "seed": SPLIT_SEED, "fractions": FRACTIONS, "fingerprint": fp,
                                 "counts": {s: len(v) for s, v in splits.items()}, "patients": splits})
    return splits, method


class _Rows(torch.utils.data.Dataset):
    """Dataset rows in cache order, as (row, uint8 image, uint8 mask, error) for the cache writer's workers."""

    def __init__(self, dataset, order: np.ndarray, shape: tuple[int, ...]):
        self.dataset, self.order, self.shape = dataset, order, shape

    def __len__(self):
        return len(self.order)

    def __getitem__(self, row: int):
        try:
            s = self.dataset[int(self.order[row])]
            x = s["image"]
            if tuple(x.shape) != self.shape:
                raise InputError(f"preprocessed to {tuple(x.shape)}, expected {self.shape}")
            img = (x.clamp(0, 1) * 255.0).round().to(torch.uint8)
            mask = (s["mask"] > 0.5).to(torch.uint8) if "mask" in s else torch.zeros(0, dtype=torch.uint8)
            return row, img, mask, ""
        except Exception as exc:  # noqa: BLE001 - one bad file is recorded and left out, the fit goes on
            return row, torch.zeros(self.shape, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8), \
                f"{type(exc).__name__}: {str(exc)[:300]}"


def _build_cache(cache: Path, dataset, order: np.ndarray, shape: tuple[int, ...], masks: bool, fp: str,
                 workers: int, progress: bool) -> None:
    """Fill images.u8 (and masks.u8) in cache-row order; cache.json counts the rows written (resumable)."""
    from tqdm import tqdm

    cache.mkdir(parents=True, exist_ok=True)
    record_path = cache / "cache.json"
    n = len(order)
    rec = json.loads(record_path.read_text()) if record_path.is_file() else {}
    fresh = rec.get("fingerprint") != fp or rec.get("shape") != list(shape)
    if fresh:
        rec = {"fingerprint": fp, "shape": list(shape), "rows": n, "filled": 0, "masks": masks, "bad": []}
    mode = "w+" if fresh or not (cache / "images.u8").is_file() else "r+"
    pixels = np.memmap(cache / "images.u8", np.uint8, mode, shape=(n, *shape))
    mask_mm = np.memmap(cache / "masks.u8", np.uint8, mode, shape=(n, 1, *shape[1:])) if masks else None
    start = int(rec["filled"])
    rows = _Rows(dataset, order, shape)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(rows, range(start, n)), batch_size=32,
                                         num_workers=workers, collate_fn=lambda b: b)
    bad = list(rec.get("bad", []))
    errors = []
    bar = tqdm(total=n, initial=start, unit="img", desc="preprocess", disable=not progress)
    for k, batch in enumerate(loader):
        for row, img, mask, err in batch:
            pixels[row] = img.numpy()
            if mask_mm is not None and mask.numel():
                mask_mm[row] = mask.numpy()
            if err:
                bad.append(int(row))
                errors.append(f"{dataset.keys()[int(order[row])]}\t{err}")
        bar.update(len(batch))
        if k % 50 == 49 or batch[-1][0] == n - 1:
            pixels.flush()
            if mask_mm is not None:
                mask_mm.flush()
            if errors:
                with open(cache / "errors.txt", "a") as f:
                    f.write("\n".join(errors) + "\n")
                errors = []
            rec.update(filled=int(batch[-1][0]) + 1, bad=bad)
            atomic_write_json(record_path, rec)
    bar.close()
    rec.update(filled=n, bad=bad, done=True)
    atomic_write_json(record_path, rec)


def _wait_for(path: Path, check, what: str, poll: float = 2.0) -> None:
    """Other ranks of a torchrun job wait here while rank 0 prepares ``what``."""
    import time

    while not (path.is_file() and (check is None or check(json.loads(path.read_text())))):
        time.sleep(poll)


def prepare_data(preset: str, spec: DataSpec, out: str | Path, *, rank: int = 0, workers: int | None = None,
                 progress: bool = True, build_cache: bool = True) -> FitData:
    """Open the data of ``spec``, make (or read back) its patient splits and fill the preprocessed cache under
    ``out`` (rank 0; other ranks wait for it). ``build_cache=False``: index and splits only (a dry run)."""
    out = Path(out)
    work = out / "work"
    main = rank == 0
    write = main and build_cache  # a dry run writes nothing
    p = get_preset(preset)
    dataset = open_spec(preset, spec)
    key_file = work / "private" / "patient.key"
    if write:
        out.mkdir(parents=True, exist_ok=True)
        dataset.use_patient_key(_patient_key(work))
    elif key_file.is_file():
        dataset.use_patient_key(key_file.read_bytes())
    elif not main:
        _wait_for(key_file, None, "the patient key")
        dataset.use_patient_key(key_file.read_bytes())
    if len(dataset) == 0:
        raise InputError(f"{spec.describe()}: no images")
    fp = fingerprint(dataset, preset)
    if not main:
        _wait_for(out / "splits.json", lambda r: r.get("fingerprint") == fp, "splits")
    splits, method = _load_or_make_splits(out, dataset, fp, write)
    if len(splits["train"]) < 2 or not splits["val"] or not splits["test"]:
        raise InputError(f"{spec.describe()}: {sum(len(v) for v in splits.values())} patients; a fit needs patients "
                         "in train, val and test (6 or more). Check the patient column (--patient-column)")
    keys, patients = dataset.keys(), dataset.patients()
    where = {q: s for s in SPLITS for q in splits[s]}
    order, ranges, start = [], {}, 0
    for s in SPLITS:
        idx = [i for i, q in enumerate(patients) if where.get(q) == s]
        order += idx
        ranges[s] = (start, start + len(idx))
        start += len(idx)
    order = np.asarray(order, np.int64)
    shape = (p.channels, p.resolution, p.resolution)
    has_masks = bool(getattr(dataset, "has_masks", False))
    labels = np.asarray(dataset.labels(), np.float32)
    train_rows = order[ranges["train"][0]:ranges["train"][1]]
    known = ~np.isnan(labels[train_rows]).all(axis=0) if len(train_rows) else np.zeros(labels.shape[1], bool)
    if not known.all():  # a finding no training image is labelled for cannot be learned (or measured)
        log(None, f"[fit] findings without a known label in the train split, left out: "
                  f"{[f for f, k in zip(dataset.findings, known) if not k]}")
    data = FitData(spec=spec, preset=preset, fingerprint=fp,
                   findings=tuple(f for f, k in zip(dataset.findings, known) if k), keys=keys,
                   patients=patients, labels=labels[:, known],
                   study=_study_ids(keys, patients), split_patients=splits, split_method=method, order=order,
                   ranges=ranges, bad=np.zeros(len(order), bool))
    if not build_cache:
        return data
    cache = work / "cache"
    done = lambda r: r.get("done") and r.get("fingerprint") == fp and r.get("shape") == list(shape)  # noqa: E731
    if main:
        rec = json.loads((cache / "cache.json").read_text()) if (cache / "cache.json").is_file() else {}
        if not done(rec):
            workers = min(8, max((os.cpu_count() or 1) - 1, 0)) if workers is None else workers
            log(None, f"[fit] preprocessing {len(order)} images of {spec.describe()} to {shape} once -> {cache}")
            _build_cache(cache, dataset, order, shape, has_masks, fp, workers, progress)
    else:
        _wait_for(cache / "cache.json", done, "cache")
    rec = json.loads((cache / "cache.json").read_text())
    data.bad[np.asarray(rec.get("bad", []), np.int64)] = True
    if data.bad.any():
        log(None, f"[fit] {int(data.bad.sum())} unreadable image(s) left out; see {cache / 'errors.txt'}")
    data.pixels = np.memmap(cache / "images.u8", np.uint8, "c", shape=(len(order), *shape))
    if has_masks:
        data.masks = np.memmap(cache / "masks.u8", np.uint8, "c", shape=(len(order), 1, *shape[1:]))
    return data


def check_labels(data: FitData, role: str) -> None:
    """A finding classifier needs findings: say how to give them (or import one instead)."""
    if role == "utility" and not data.findings:
        raise ConfigError(f"{data.spec.describe()} has no finding labels, so E_ut cannot be trained: give --labels "
                          "CSV (one 0/1 column per finding), or import a classifier first (`gmia import-weights "
                          "utility --xrv FILE --out OUT`) and the fit skips this stage")
