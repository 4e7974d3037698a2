"""The container every phantom generator returns, and the per-patient seeding they share.

A phantom set is a batch of synthetic studies: each patient has fixed identity parameters, each study adds
pose, exposure and findings. Ground truth of identity is known exactly, which real data never gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PhantomSet", "patient_rng", "study_rng"]


@dataclass
class PhantomSet:
    """An in-memory phantom set of N images.

    images:   (N, C, S, S) float32 in [0, 1]; C = 1 for chest X-rays, 3 for faces.
    masks:    (N, 1, S, S) uint8 in {0, 1}: the lesion mask (all zeros when the study has no lesion).
    patient:  (N,) int64 patient index (0..P-1).
    study:    (N,) int64 study index within the patient (0..K-1).
    findings: finding name -> (N,) uint8 0/1 labels, in a fixed order.
    identity: identity parameter name -> (N,) float32 (the patient's value, repeated per study).
    """

    domain: str
    images: np.ndarray
    masks: np.ndarray
    patient: np.ndarray
    study: np.ndarray
    findings: dict[str, np.ndarray]
    identity: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def finding_names(self) -> tuple[str, ...]:
        return tuple(self.findings)

    def labels(self) -> np.ndarray:
        """(N, F) uint8 matrix of findings, columns in ``finding_names`` order."""
        return np.stack([self.findings[k] for k in self.findings], axis=1)


def patient_rng(seed: int, patient: int) -> np.random.Generator:
    """The generator for one patient's identity: depends only on (seed, patient), never on batch layout."""
    return np.random.default_rng([int(seed), 0, int(patient)])


def study_rng(seed: int, patient: int, study: int) -> np.random.Generator:
    """The generator for one study of one patient."""
    return np.random.default_rng([int(seed), 1, int(patient), int(study)])
