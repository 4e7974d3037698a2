"""Reading what an evaluation compares: the real dataset, an anonymized run folder, and the link between them.

    anon = read_anonymized("outputs/anon")            # released images + their (private) source keys
    real = data.open("data/phantom-cxr64", size=64, channels=1)
    cohort = match(real, anon)                         # indices of sources, patients, reference pools

The anonymized folder is the one ``gmia anonymize`` writes (see ``gmia.anonymization.outputs``). Evaluation
needs ``private/linkage.csv`` (source key → pseudonym, written with ``--write-linkage``): without it nobody, the
evaluator included, can tell which original an anonymized image came from — which is the point of the release.

Images are read lazily from the datasets and only the tensors a metric needs are materialized; the phantom
benchmarks at 64 px fit in memory, real datasets would be evaluated on a sample (``limit``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import ImageDataset
from ..data.preprocess import load_image
from ..errors import InputError

__all__ = ["AnonymizedSet", "Cohort", "read_anonymized", "match", "load_real", "load_anonymized", "batched"]


@dataclass
class AnonymizedSet:
    """The evaluable part of an anonymization run: released images that have a linkage row."""

    root: Path
    pseudonyms: list[str]            # released, linked, sorted by pseudonym
    sources: list[str]               # their source keys (relative paths in the real dataset), aligned
    manifest: list[dict]             # every manifest row (released, withheld, error)
    run: dict                        # run.json ({} if absent)
    unlinked: int = 0                # released images without a linkage row (not evaluable)
    files: list[str] = field(default_factory=list)  # their file names in images/ (.png or .dcm), aligned

    def image_path(self, i: int) -> Path:
        name = self.files[i] if i < len(self.files) else f"{self.pseudonyms[i]}.png"
        return self.root / "images" / name

    def status_counts(self) -> dict[str, int]:
        counts = {"released": 0, "withheld": 0, "error": 0}
        for row in self.manifest:
            counts[row.get("status", "error")] = counts.get(row.get("status", "error"), 0) + 1
        return counts


def read_anonymized(anon_dir: str | Path) -> AnonymizedSet:
    """Read OUT/manifest.jsonl, OUT/run.json and OUT/private/linkage.csv of an anonymization run."""
    root = Path(anon_dir)
    manifest_path = root / "manifest.jsonl"
    if not manifest_path.is_file():
        raise InputError(f"{root} is not an anonymization run: {manifest_path} not found. Pass the --out folder "
                         "of `gmia anonymize` (a finished run).")
    manifest = [json.loads(line) for line in manifest_path.read_text().splitlines() if line.strip()]
    run = json.loads((root / "run.json").read_text()) if (root / "run.json").is_file() else {}
    linkage_path = root / "private" / "linkage.csv"
    if not linkage_path.is_file():
        raise InputError(f"{linkage_path} not found: evaluation needs to know which original each anonymized "
                         "image came from. Rerun the same gmia anonymize command with --resume --write-linkage: it "
                         "recomputes the links from private/resume.key without redoing any image.")
    with open(linkage_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"source", "pseudonym"} <= set(rows[0]):
        raise InputError(f"{linkage_path}: expected columns source,pseudonym; found {list(rows[0])}")
    by_pseudonym = {r["pseudonym"]: r["source"] for r in rows}
    names = {r["pseudonym"]: Path(r.get("image") or f"{r['pseudonym']}.png").name  # .png, or .dcm (DICOM output)
             for r in manifest if r.get("status") == "released"}
    released = sorted(names)
    linked = [p for p in released if p in by_pseudonym and (root / "images" / names[p]).is_file()]
    if not linked:
        raise InputError(f"{root}: no released image has a linkage row and an image file; nothing to evaluate")
    return AnonymizedSet(root, linked, [by_pseudonym[p] for p in linked], manifest, run,
                         unlinked=len(released) - len(linked), files=[names[p] for p in linked])


@dataclass
class Cohort:
    """How the anonymized images relate to the real dataset (all arrays aligned with their own set).

    anon_source:  (N,) index into the real dataset of each anonymized image's source
    real_patient: (M,) integer patient code of every real record (codes shared by all arrays)
    gallery:      indices of the real records of the evaluated patients (sources and their other studies)
    reference:    indices of the "training originals" for record-level privacy: the real records of patients
                  that are not evaluated, restricted to the train split when the dataset has splits
    """

    anon_source: np.ndarray
    anon_patient: np.ndarray
    real_patient: np.ndarray
    gallery: np.ndarray
    reference: np.ndarray
    patient_names: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)   # split → number of evaluated sources in it


def _real_splits(real: ImageDataset) -> np.ndarray | None:
    meta = getattr(real, "metadata", None)
    if meta is not None and "split" in meta:
        return meta["split"].astype(str).to_numpy()
    return None


def match(real: ImageDataset, anon: AnonymizedSet) -> Cohort:
    """Locate every anonymized image's source in ``real`` and build the comparison pools."""
    index = {k: i for i, k in enumerate(real.keys())}
    missing = [s for s in anon.sources if s not in index]
    if missing:
        raise InputError(f"{len(missing)} linkage sources are not records of {real.root} (e.g. {missing[0]!r}); "
                         "pass the dataset folder the run anonymized as --real")
    names = real.patients()
    codes = {p: k for k, p in enumerate(sorted(set(names)))}
    real_patient = np.array([codes[p] for p in names], dtype=np.int64)
    anon_source = np.array([index[s] for s in anon.sources], dtype=np.int64)
    anon_patient = real_patient[anon_source]
    evaluated = np.isin(real_patient, np.unique(anon_patient))
    gallery = np.flatnonzero(evaluated)
    splits = _real_splits(real)
    others = ~evaluated & ((splits == "train") if splits is not None else True)
    split_counts = {}
    if splits is not None:
        values, counts = np.unique(splits[anon_source], return_counts=True)
        split_counts = {str(v): int(c) for v, c in zip(values, counts)}
    return Cohort(anon_source, anon_patient, real_patient, gallery, np.flatnonzero(others),
                  sorted(codes, key=codes.get), split_counts)


def batched(indices, size: int = 128):
    """Consecutive chunks of ``indices``."""
    indices = list(indices)
    for start in range(0, len(indices), size):
        yield indices[start:start + size]


def load_real(real: ImageDataset, indices, with_masks: bool = False):
    """Images (K, C, S, S) of the real records ``indices`` (and their masks (K, 1, S, S) when asked)."""
    samples = [real[int(i)] for i in indices]
    x = torch.stack([s["image"] for s in samples]) if samples else torch.zeros(0)
    if with_masks:
        return x, torch.stack([s["mask"] for s in samples])
    return x


def load_anonymized(anon: AnonymizedSet, indices, channels: int, size: int) -> torch.Tensor:
    """Released images ``indices`` as (K, C, S, S) in [0, 1], checked against the preset's format."""
    out = []
    for i in indices:
        path = anon.image_path(int(i))
        x = load_image(path, channels=channels)
        if tuple(x.shape) != (channels, size, size):
            raise InputError(f"{path}: image is {tuple(x.shape)}, the preset expects {(channels, size, size)}; "
                             "evaluate with the preset the run was made with")
        out.append(x.float())
    return torch.stack(out)
