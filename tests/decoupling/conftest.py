"""Synthetic MFM features with a planted identity subspace, and one-thread torch for every test."""

from __future__ import annotations

import numpy as np
import pytest



def planted(patients: int = 120, studies: int = 4, d: int = 32, k: int = 4, findings: int = 2, seed: int = 0,
            mixing: np.ndarray | None = None) -> dict:
    """g = A_id z_patient + A_sem (findings + study noise) + noise.

    k directions (columns of A_id) carry identity only; the findings and per-study variation live in other
    directions, which overlap A_id's only by chance (random, not orthogonal, as in a real feature space).
    Returns {"features" (N, d), "patients" (N,), "labels" (N, F), "A_id" (d, k)} (``mixing`` reuses A's).
    """
    rng = np.random.default_rng(seed)
    a_id, a_sem = mixing if mixing is not None else (rng.normal(size=(d, k)), rng.normal(size=(d, findings + 4)))
    n = patients * studies
    pid = np.repeat(np.arange(patients), studies)
    z_id = rng.normal(size=(patients, k))[pid] * 1.5
    y = (rng.random((n, findings)) < 0.3).astype(np.float32)
    z_sem = np.concatenate([2.0 * y + 0.3 * rng.normal(size=(n, findings)), rng.normal(size=(n, 4))], 1)
    g = z_id @ a_id.T + z_sem @ a_sem.T + 0.3 * rng.normal(size=(n, d))
    return {"features": g.astype(np.float32), "patients": np.array([f"p{p:04d}" for p in pid]), "labels": y,
            "A_id": a_id, "mixing": (a_id, a_sem)}


@pytest.fixture(scope="session")
def planted_sets():
    """Disjoint fit / val / test patients drawn from one planted model (k = 4 of d = 32)."""
    fit = planted(seed=0)
    val = planted(patients=60, seed=1, mixing=fit["mixing"])
    test = planted(patients=60, seed=2, mixing=fit["mixing"])
    return fit, val, test
