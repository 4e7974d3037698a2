"""Patient-level splits: every study of a patient lands in the same split, so no test patient is ever seen
in training (the leak that makes re-identification numbers meaningless)."""

from __future__ import annotations

import numpy as np

__all__ = ["SPLIT_FRACTIONS", "assign_splits"]

SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def assign_splits(patients: int, seed: int) -> np.ndarray:
    """(patients,) array of "train"/"val"/"test", a seeded permutation cut at 70/10/20 (at least one test
    patient whenever there are two or more patients)."""
    order = np.random.default_rng([int(seed), 2]).permutation(patients)
    n_test = max(1 if patients > 1 else 0, int(round(patients * SPLIT_FRACTIONS["test"])))
    n_val = int(round(patients * SPLIT_FRACTIONS["val"])) if patients - n_test > 2 else 0
    split = np.full(patients, "train", dtype=object)
    split[order[:n_test]] = "test"
    split[order[n_test:n_test + n_val]] = "val"
    return split
