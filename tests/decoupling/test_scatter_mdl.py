"""The closed-form fit recovers a planted identity subspace, and its rank is the MDL choice."""

from __future__ import annotations

import numpy as np
import pytest

from gmia.decoupling import fit_from_features, fit_scatter, findings_codelength, identity_bits, online_codelength, \
    select_rank
from gmia.errors import InputError


def principal_angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False).clip(-1, 1)
    return np.degrees(np.arccos(s))


def test_bases_are_dual_and_whiten_within(planted_sets):
    fit = fit_scatter(planted_sets[0]["features"], planted_sets[0]["patients"])
    d = fit.filters.shape[0]
    np.testing.assert_allclose(fit.filters.T @ fit.patterns, np.eye(d), atol=1e-8)  # V'A = I: A = V^{-T}
    assert np.all(np.diff(fit.ratio[:8]) <= 1e-9) or fit.ratio[0] >= fit.ratio[7]   # sorted, most identity first
    assert np.all(fit.within <= 1.0 + 1e-9)  # shrinkage only adds to W_δ
    exact = fit_scatter(planted_sets[0]["features"], planted_sets[0]["patients"], shrinkage=0.0)
    np.testing.assert_allclose(exact.within, 1.0, atol=1e-6)  # δ = 0: coordinates are within-whitened


def test_mdl_recovers_planted_rank_and_subspace(planted_sets):
    fit, val, _ = planted_sets
    scatter = fit_scatter(fit["features"], fit["patients"])
    sel = select_rank(scatter, val["features"], val["patients"])
    assert sel["rank"] == 4
    assert sel["saved_bits"][:4].min() > 100 and sel["saved_bits"][4:].max() < 20  # identity vs. the rest
    angles = principal_angles_deg(scatter.patterns[:, :4], fit["A_id"])
    assert angles.max() < 10.0, angles


def test_fit_from_features_calibrates(planted_sets):
    dec, info = fit_from_features(planted_sets[0], planted_sets[1])
    assert info["rank"] == info["rank_mdl"] == 4 == dec.rank
    assert -1.0 < dec.margin < 1.0 and dec.semantic_scale > 0


def test_identity_bits_zero_without_identity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    pat = np.repeat(np.arange(100), 4)
    x[:, 0] += np.repeat(rng.normal(size=100), 4) * 2  # only coordinate 0 carries the patient
    saved = identity_bits(x, pat, within=np.ones(3), between=np.array([4.0, 0.0, 0.0]))
    assert saved[0] > 100 and abs(saved[1]) < 1e-9 and abs(saved[2]) < 1e-9


def test_online_codelength_compression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    informative = online_codelength(x, x[:, 0] > 0)
    noise = online_codelength(x, rng.random(300) > 0.5)
    assert informative["compression"] > 2.0
    assert 0.8 < noise["compression"] < 1.1
    both = findings_codelength(x, np.stack([x[:, 0] > 0, x[:, 1] > 0], 1).astype(float), c=1.0)
    assert both["compression"] > 2.0 and both["bits_per_image"] < 1.0


def test_fit_needs_repeat_patients():
    with pytest.raises(InputError, match="2 or more images"):
        fit_scatter(np.zeros((5, 3)), ["a", "b", "c", "d", "e"])
