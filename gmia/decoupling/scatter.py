"""Closed-form identity directions: between- vs. within-patient scatter of frozen features (Fisher / LDA).

Model (a random-effects view of a feature g of study i of patient p)::

    g_pi = μ + b_p + e_pi,    Cov(b_p) = B (between patients),   Cov(e_pi) = W (within a patient)

The directions along which patients differ *relative to how much one patient's studies differ* solve the
generalized eigenproblem ``C v = ρ (W + δ·tr(W)/d·I) v``, with C the covariance of the patient means. Since
E[C] = B + h·W (h = mean of 1/n_p), ρ = λ + h where λ = v'Bv / v'Wv is the identity-to-study variance ratio of
the direction; we report λ. The shrinkage δ keeps W invertible when d is close to the within degrees of freedom.

Two bases come out, both (d, d), sorted by λ descending:

* ``filters`` V (V' W_δ V = I): coordinates ``c = V'(g − μ)``, within-patient whitened and jointly diagonal
  (uncorrelated) under both B and W, so each coordinate can be coded on its own (``mdl.identity_bits``);
* ``patterns`` A = W_δ V (V'A = I): the feature-space direction each coordinate moves, so
  ``g − μ = A c`` exactly (A = V^{-T}).

The identity projector keeps the top-k coordinates, ``P_id = A_k V_k'``, and the semantic projector is its
complement ``P_sem = I − A_k V_k'``: an *oblique* projection, orthogonal in the W_δ^{-1} (within-patient
Mahalanobis) metric. Why not the Euclidean complement ``I − U U'``: that one also shifts the remaining Fisher
coordinates (c_j − v_j'UU'g mixes identity back into them), whereas P_sem zeroes c_1..c_k and leaves c_{k+1..d},
where the study-level content (findings, pose, exposure) lives, bit-for-bit unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["ScatterFit", "fit_scatter", "group_index"]


def group_index(patients) -> tuple[np.ndarray, np.ndarray]:
    """(inverse, counts): patient index per row (0..P-1) and images per patient."""
    _, inv, counts = np.unique(np.asarray(patients), return_inverse=True, return_counts=True)
    return inv, counts


@dataclass
class ScatterFit:
    """The fitted scatter model; arrays are float64 numpy."""

    mean: np.ndarray        # (d,) feature mean of the fitting images
    filters: np.ndarray     # (d, d) V, columns sorted by ratio descending; c = V'(g - mean)
    patterns: np.ndarray    # (d, d) A = W_δ V; g - mean = A c
    ratio: np.ndarray       # (d,) λ_j: between-patient / within-patient variance of coordinate j
    within: np.ndarray      # (d,) w_j: within-patient variance of coordinate j on the fitting data (≤ 1; 1 at δ = 0)
    between: np.ndarray     # (d,) b_j ≥ 0: between-patient variance of coordinate j (bias-corrected)
    patients: int           # patients used (≥ 2 images each)
    images: int             # images used

    def coordinates(self, feats: np.ndarray) -> np.ndarray:
        """(N, d) Fisher coordinates of features (N, d)."""
        return (np.asarray(feats, np.float64) - self.mean) @ self.filters


def _moments(coords: np.ndarray, inv: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate within variance w and bias-corrected between variance b (the random-effects moments)."""
    means = np.zeros((len(counts), coords.shape[1]))
    np.add.at(means, inv, coords)
    means /= counts[:, None]
    resid = coords - means[inv]
    w = (resid ** 2).sum(0) / max(len(coords) - len(counts), 1)
    var_means = ((means - coords.mean(0)) ** 2).mean(0)
    b = np.maximum(var_means - w * np.mean(1.0 / counts), 0.0)
    return w, b


def fit_scatter(feats, patients, shrinkage: float = 0.01) -> ScatterFit:
    """Fit the scatter model on features (N, d) of patients (N,); patients with one image are left out.

    shrinkage δ: W is regularized to W + δ·tr(W)/d·I (relative, so the scale of the features does not matter).
    """
    g = np.asarray(feats, np.float64)
    if g.ndim != 2:
        raise InputError(f"features must be (N, d), got shape {g.shape}")
    inv, counts = group_index(patients)
    if len(inv) != len(g):
        raise InputError(f"patients has {len(inv)} entries for {len(g)} feature rows")
    keep = counts[inv] >= 2  # a single image says nothing about within-patient variation
    if keep.sum() < 4 or (counts >= 2).sum() < 2:
        raise InputError(f"need at least 2 patients with 2 or more images each to fit the scatter; got "
                         f"{int((counts >= 2).sum())} such patients of {len(counts)}")
    g, inv = g[keep], np.unique(inv[keep], return_inverse=True)[1]
    counts = np.bincount(inv)
    d = g.shape[1]
    mean = g.mean(0)
    means = np.zeros((len(counts), d))
    np.add.at(means, inv, g)
    means /= counts[:, None]
    resid = g - means[inv]                                               # (N, d) within-patient deviations
    within = resid.T @ resid / max(len(g) - len(counts), 1)
    dm = means - mean
    cov_means = dm.T @ dm / len(counts)
    w_reg = within + shrinkage * np.trace(within) / d * np.eye(d)
    # C v = ρ W_δ v  ⇔  (L⁻¹ C L⁻ᵀ) u = ρ u with W_δ = L Lᵀ, v = L⁻ᵀ u
    chol = np.linalg.cholesky(w_reg)
    m = np.linalg.solve(chol, np.linalg.solve(chol, cov_means).T)       # L⁻¹ C L⁻ᵀ (C symmetric)
    rho, u = np.linalg.eigh((m + m.T) / 2)
    order = np.argsort(rho)[::-1]
    u = u[:, order]
    filters = np.linalg.solve(chol.T, u)                                 # V = L⁻ᵀ U
    patterns = w_reg @ filters                                           # A = W_δ V, so V'A = I
    w, b = _moments((g - mean) @ filters, inv, counts)
    return ScatterFit(mean=mean, filters=filters, patterns=patterns, ratio=b / np.maximum(w, 1e-12),
                      within=w, between=b, patients=len(counts), images=len(g))
