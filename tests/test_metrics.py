import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from gmia import metrics


def _clusters(n_ids=6, per=4, dim=16, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    ids = np.repeat(np.arange(n_ids), per)
    return centres[ids] + noise * rng.normal(size=(len(ids), dim)), ids


def test_verification_auc_separates_clusters_and_is_chance_for_noise():
    emb, ids = _clusters()
    assert metrics.verification_auc(emb, ids) == pytest.approx(1.0)
    rnd = np.random.default_rng(1).normal(size=(200, 16))
    assert abs(metrics.verification_auc(rnd, np.repeat(np.arange(50), 4)) - 0.5) < 0.1
    assert metrics.verification_auc(torch.from_numpy(emb).requires_grad_(), ids) == pytest.approx(1.0)


def test_exclude_drops_same_study_pairs():
    emb, ids = _clusters(n_ids=3, per=2)
    study = np.arange(len(ids)) // 2  # each pair of images shares a study: every positive pair is excluded
    labels, _ = metrics.verification_scores(emb, ids, exclude=study)
    assert labels.sum() == 0 and len(labels) == 15 - 3
    assert np.isnan(metrics.verification_auc(emb, ids, exclude=study))


def test_max_pairs_keeps_positives():
    emb, ids = _clusters(n_ids=20, per=3)
    labels, scores = metrics.verification_scores(emb, ids, max_pairs=100, seed=0)
    assert len(labels) == 100 and labels.sum() == 50


def test_eer():
    assert metrics.eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.0)
    assert metrics.eer([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.5)
    assert np.isnan(metrics.eer([1, 1], [0.1, 0.2]))


def test_rank_k():
    g = np.eye(3)
    p = np.array([[1.0, 0.1, 0], [0, 0.2, 1.0], [0.9, 1.0, 0]])
    assert metrics.rank_k(g, [0, 1, 2], p, [0, 2, 0], k=1) == pytest.approx(2 / 3)
    assert metrics.rank_k(g, [0, 1, 2], p, [0, 2, 0], k=2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no probe id"):
        metrics.rank_k(g, [0, 1, 2], p, [7, 8, 9])


def test_auroc_skips_single_class_and_unknown():
    y = np.array([[0, 1, np.nan], [1, 1, 0], [0, 1, 1], [1, 1, np.nan]])
    s = np.array([[0.1, 0.3, 0.0], [0.9, 0.2, 0.2], [0.2, 0.5, 0.1], [0.8, 0.1, 5.0]])
    per = metrics.per_finding_auroc(y, s)
    assert per[0] == pytest.approx(1.0) and np.isnan(per[1]) and per[2] == pytest.approx(0.0)
    assert metrics.macro_auroc(y, s) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same shape"):
        metrics.per_finding_auroc(y, s[:, :2])


def test_dice_reductions():
    t = np.zeros((3, 1, 4, 4))
    t[0, 0, :2, :2] = 1
    t[1, 0, 0, 0] = 1
    p = t.copy()
    p[1] = 0  # missed the small lesion; image 2 empty/empty
    assert metrics.dice(p, t, reduction="none").tolist() == [1.0, 0.0, 1.0]
    assert metrics.dice(p, t, reduction="positive") == pytest.approx(0.5)
    assert metrics.dice(p, t, reduction="global") == pytest.approx(8 / 9)
    assert metrics.dice(torch.tensor(p) * 0.7, t) == pytest.approx(2 / 3)  # probabilities, threshold 0.5


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = y + rng.normal(size=200)
    a = metrics.bootstrap_ci(roc_auc_score, y, s, n=200, seed=3)
    assert a == metrics.bootstrap_ci(roc_auc_score, y, s, n=200, seed=3)
    assert a[1] < a[0] < a[2]
    g = metrics.bootstrap_ci(roc_auc_score, y, s, n=100, seed=3, groups=np.arange(200) // 4)
    assert g[1] < g[0] < g[2]


def test_linear_probes():
    emb, ids = _clusters(n_ids=30, per=4, noise=0.3)
    tr, te = ids < 20, ids >= 20
    out = metrics.probe_identity(emb[tr], ids[tr], emb[te], ids[te])
    assert out["probe_auc"] > 0.9 and out["raw_auc"] > 0.9
    # patients seen once are left out of the fit, without a warning; too few usable patients is an error
    singles = np.concatenate([emb[tr], emb[te][:3]]), np.concatenate([ids[tr], 100 + np.arange(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = metrics.probe_identity(*singles, emb[te], ids[te])
    assert again["probe_auc"] > 0.9
    with pytest.raises(ValueError, match=r"2\+ samples"):
        metrics.probe_identity(emb[:3], np.arange(3), emb[te], ids[te])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = np.stack([(x[:, 0] > 0), (x[:, 1] > 0)], 1).astype(float)
    fp = metrics.probe_findings(x[:150], y[:150], x[150:], y[150:], names=["a", "b"])
    assert fp["macro_auroc"] > 0.95 and set(fp) == {"macro_auroc", "auroc/a", "auroc/b"}
