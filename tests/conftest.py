"""Shared fixtures: tiny phantom sets and temporary folders. Nothing here touches the network."""

from __future__ import annotations

import numpy as np
import pytest

from gmia.data.phantoms.base import PhantomSet


def toy_phantom_set(patients: int = 4, studies: int = 3, size: int = 16, channels: int = 1, seed: int = 0) -> PhantomSet:
    """A hand-made PhantomSet (random blobs), independent of the real generators: for I/O tests."""
    rng = np.random.default_rng(seed)
    n = patients * studies
    images = rng.random((n, channels, size, size), dtype=np.float32)
    masks = (rng.random((n, 1, size, size)) > 0.8).astype(np.uint8)
    patient = np.repeat(np.arange(patients), studies)
    study = np.tile(np.arange(studies), patients)
    findings = {"finding_a": rng.integers(0, 2, n).astype(np.uint8), "finding_b": rng.integers(0, 2, n).astype(np.uint8)}
    identity = {"width": np.repeat(rng.random(patients), studies).astype(np.float32)}
    return PhantomSet("cxr" if channels == 1 else "face", images, masks, patient, study, findings, identity,
                      meta={"seed": seed, "patients": patients, "studies": studies,
                            "split": np.array(["train"] * (n - studies) + ["test"] * studies, dtype=object)})


@pytest.fixture
def toy_set():
    return toy_phantom_set()
