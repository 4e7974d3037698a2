"""The learned (coding-rate) split: its rate algebra, that it recovers a planted identity subspace, that it only
improves on its scatter initialization, and that its Decoupler round-trips and plugs into fit / CLI / MDLTerm."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gmia.decoupling import (CodingRateConfig, Decoupler, FitConfig, MDLTerm, audit, fit_coding_rate,
                             fit_from_features, fit_scatter, load_decoupler, save_decoupler)
from gmia.decoupling import coding_rate as cr
from gmia.decoupling.cli import fit_decoupler_command
from gmia.errors import ConfigError, InputError
from gmia.networks import MFMNet

# small and fast: the planted set converges in a few dozen steps
FAST = CodingRateConfig(betas=(1.0,), steps=60, eval_every=20)


def principal_angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False).clip(-1, 1)
    return np.degrees(np.arccos(s))


def _logdet(m: np.ndarray) -> float:
    return float(np.linalg.slogdet(m)[1])


def test_rate_terms_match_direct_logdets():
    """Both parametrizations (a basis of Q, or of the semantic complement) give the direct Gaussian rates."""
    rng = np.random.default_rng(0)
    d, k, n = 10, 3, 200
    c = rng.normal(size=(n, d)) + np.repeat(rng.normal(size=(50, d)), 4, 0) * np.linspace(1, 0, d)
    labels = (rng.random((n, 2)) < 0.4).astype(float)
    c[:, 4] += 2 * labels[:, 0]
    pat = np.repeat(np.arange(50), 4)
    stats = cr.RateStats(c, pat, labels, eps2=0.5)
    q, _ = np.linalg.qr(rng.normal(size=(d, k)))
    p = cr._complement(q)
    m_t, m_w = stats.m_t.numpy(), stats.m_w.numpy()

    def delta_r(s, m_a, m_b):
        return 0.5 * (_logdet(s.T @ m_a @ s) - _logdet(s.T @ m_b @ s))

    expect = {"id_patients": delta_r(q, m_t, m_w), "sem_patients": delta_r(p, m_t, m_w),
              "sem_findings": [delta_r(p, m_t, m_t - cf * np.outer(dl, dl))
                               for dl, cf in zip(stats.deltas.numpy().T, stats.coefs.numpy())]}
    for basis, complement in ((q, False), (p, True)):
        got = cr.rate_terms(stats, torch.from_numpy(basis), complement)
        for key, val in expect.items():
            np.testing.assert_allclose(got[key].numpy(), val, rtol=1e-6, atol=1e-8)
    assert expect["id_patients"] > 0 and min(expect["sem_findings"]) >= 0


def test_chance_correction_is_zero_without_identity(planted_sets):
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(240, 32))
    pat = np.repeat(np.arange(60), 4)
    none = cr._Evaluator(noise, pat, (rng.random((240, 2)) < 0.3).astype(float), 0.5, 4, 0)
    val = planted_sets[1]
    some = cr._Evaluator(fit_scatter(val["features"], val["patients"]).coordinates(val["features"]),
                         val["patients"], val["labels"], 0.5, 4, 0)
    assert abs(none.raw_patients) < 0.05 * some.raw_patients and abs(none.raw_findings) < 0.1 * some.raw_findings


@pytest.fixture(scope="module")
def learned(planted_sets):
    return fit_coding_rate(planted_sets[0], planted_sets[1], FAST)


def test_recovers_planted_subspace(planted_sets, learned):
    fit, _, test = planted_sets
    dec = learned.decoupler
    assert learned.rank >= 4 and dec.code_rank == 4
    angles = principal_angles_deg(fit["A_id"], dec.patterns.double().numpy())
    assert angles.max() < 10.0, angles
    rep = audit(dec, fit["features"], fit["patients"], fit["labels"], test["features"], test["patients"],
                test["labels"])
    assert rep["identity"]["identity_auc"] >= 0.90
    assert rep["semantic"]["identity_auc"] <= 0.60
    assert rep["semantic"]["finding_auroc"] >= 0.95 * rep["raw"]["finding_auroc"]
    assert rep["random"]["dim"] == 32 - learned.rank and rep["acceptance"]["passed"]
    assert learned.info["candidates"][0]["step"] == 0  # the scatter split of each rank is a candidate


@pytest.mark.parametrize("rank", [8, 26])  # Q itself is optimized at 8, its semantic complement at 26 > d/2
def test_never_worse_than_scatter_init(planted_sets, rank):
    """Q₀ = [I; 0] is exactly the scatter split of that rank; Adam only raises J, and at a rank large enough to
    cut into the findings it gives them back."""
    fit = planted_sets[0]
    scatter = fit_scatter(fit["features"], fit["patients"])
    c = scatter.coordinates(fit["features"])
    stats = cr.RateStats(c, fit["patients"], fit["labels"], FAST.eps2)
    q0 = np.eye(32)[:, :rank]
    init_dec, scatter_dec = cr.to_decoupler(scatter, q0), Decoupler.from_scatter(scatter, rank)
    f = torch.from_numpy(fit["features"][:5])
    torch.testing.assert_close(init_dec.semantic(f), scatter_dec.semantic(f), atol=1e-4, rtol=1e-4)
    q = cr.train_subspace(c, fit["patients"], fit["labels"], rank, 1.0, FAST, stats=stats)
    np.testing.assert_allclose(q.T @ q, np.eye(rank), atol=1e-8)
    before = cr.rate_terms(stats, torch.from_numpy(q0))
    after = cr.rate_terms(stats, torch.from_numpy(q))
    j0, j1 = (float(cr.objective(t, 1.0, FAST.eta)) for t in (before, after))
    assert j1 >= j0 - 1e-9
    if rank == 26:  # the 6 kept scatter coordinates lose the findings; the learned 6 keep them
        assert float(after["sem_findings"].mean()) > 2 * float(before["sem_findings"].mean())
        assert j1 > j0 + 0.1


def test_minibatches_of_whole_patients(planted_sets):
    """batch_patients = P: each step sees the statistics of P whole patients; it still recovers the findings."""
    fit = planted_sets[0]
    c = fit_scatter(fit["features"], fit["patients"]).coordinates(fit["features"])
    stats = cr.RateStats(c, fit["patients"], fit["labels"], FAST.eps2)
    cfg = CodingRateConfig(betas=(1.0,), steps=40, batch_patients=40)
    q = cr.train_subspace(c, fit["patients"], fit["labels"], 26, 1.0, cfg)
    before = cr.rate_terms(stats, torch.from_numpy(np.eye(32)[:, :26]))
    after = cr.rate_terms(stats, torch.from_numpy(q))
    assert float(cr.objective(after, 1.0, cfg.eta)) > float(cr.objective(before, 1.0, cfg.eta))
    with pytest.raises(InputError, match="batch_patients"):
        CodingRateConfig(batch_patients=1)


def test_roundtrip_projection_and_term(learned, tmp_path):
    dec = learned.decoupler
    f = torch.randn(4, 32) * 3
    s, u = dec(f)
    assert s.shape == (4, 32) and u.shape == (4, dec.code_rank)
    torch.testing.assert_close(dec.identity(s + dec.mean), torch.zeros_like(u), atol=1e-3, rtol=0)
    torch.testing.assert_close(dec.semantic(s + dec.mean), s, atol=1e-3, rtol=1e-4)
    save_decoupler(dec, tmp_path, meta={"method": "coding_rate"})
    back = load_decoupler(tmp_path)
    assert (back.rank, back.code_rank) == (dec.rank, dec.code_rank)
    torch.testing.assert_close(back.semantic(f), dec.semantic(f))
    torch.testing.assert_close(back.identity(f), dec.identity(f))
    torch.manual_seed(0)
    mfm = MFMNet(in_channels=1, resolution=16, widths=(4, 8), latent_channels=2).frozen()  # features: 32
    term = MDLTerm(mfm, back, margin=-1.0)
    x = torch.rand(2, 1, 16, 16)
    ref = term.reference(x)
    assert ref.shape == (2, 32 + dec.code_rank) and term.loss(x, ref).shape == (2,)
    with pytest.raises(InputError, match="code_rank"):
        Decoupler(32, 4, code_rank=5)


def test_fit_from_features_dispatch(planted_sets):
    dec, info = fit_from_features(planted_sets[0], planted_sets[1],
                                  FitConfig(method="coding_rate", rank=8, coding_rate=FAST))
    assert info["method"] == "coding_rate" and dec.rank == info["rank"] == 8 and dec.code_rank == 4
    assert -1.0 < dec.margin < 1.0 and dec.semantic_scale > 0 and "scatter" in info
    assert info["coding_rate"]["code_rank"] == 4 and info["coding_rate"]["ranks"] == [8]
    with pytest.raises(ConfigError, match="coding_rate"):
        FitConfig(method="vae")


def test_cli_coding_rate_from_cache(planted_sets, tmp_path):
    """`gmia fit-decoupler --method coding_rate` on cached features (no MFM needed)."""
    cache = tmp_path / "feats.npz"
    names = {"train": planted_sets[0], "val": planted_sets[1], "test": planted_sets[2]}
    np.savez(cache, findings=np.asarray(["a", "b"]),
             **{f"{s}/{k}": v[k] for s, v in names.items() for k in ("features", "patients", "labels")})
    out = tmp_path / "dec"
    args = ["--data", str(tmp_path), "--out", str(out), "--cache", str(cache), "--method", "coding_rate",
            "--rank", "4", "--no-sweep"]
    res = CliRunner().invoke(fit_decoupler_command, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "decoupler (coding_rate)" in res.output and "PASS" in res.output
    card = json.loads((out / "decoupler.json").read_text())
    assert card["meta"]["method"] == "coding_rate" and card["meta"]["config"]["coding_rate"]["eta"] == FAST.eta
    assert load_decoupler(out).rank == 4
