"""Metrics shared by network training and evaluation: pure functions on arrays, no gmia imports.

Inputs may be numpy arrays or torch tensors (detached and moved to the CPU here); outputs are Python floats
or numpy arrays. ROC quantities come from scikit-learn.

    >>> emb = np.random.default_rng(0).normal(size=(40, 8)); ids = np.repeat(np.arange(10), 4)
    >>> verification_auc(emb, ids)            # ~0.5 for random embeddings
    >>> rank_k(emb[::4], ids[::4], emb[1::4], ids[1::4], k=1)

Conventions
- Embeddings are compared by cosine similarity (normalized here, so unit-norm input is not required).
- Verification pairs are all unordered pairs i < j of one set; a pair is positive when both ids are equal.
  ``exclude`` (e.g. a study key) drops the pairs that share it: on the phantoms, an anonymized image and its
  own source share a study, and "same patient, *other* study" is the harder, honest question.
- Label matrices may hold NaN for "unknown"; such entries are left out of that finding's AUROC.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = [
    "cosine_matrix", "verification_scores", "verification_auc", "eer", "rank_k",
    "per_finding_auroc", "macro_auroc", "dice", "bootstrap_ci", "probe_identity", "probe_findings", "fit_lda",
]


def _np(x, dtype=None) -> np.ndarray:
    """numpy view of an array or a (possibly CUDA, possibly grad-carrying) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _unit(emb) -> np.ndarray:
    e = _np(emb, np.float64)
    if e.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {e.shape}")
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def cosine_matrix(a, b) -> np.ndarray:
    """(Na, Nb) cosine similarities between the rows of ``a`` (Na, D) and ``b`` (Nb, D)."""
    return _unit(a) @ _unit(b).T


def verification_scores(emb, ids, exclude=None, max_pairs: int | None = None,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of the verification pairs of one set: label 1 = same id, score = cosine.

    emb: (N, D); ids: (N,) any hashable values; exclude: optional (N,) keys, pairs sharing a key are dropped.
    max_pairs: keep a seeded random subset of that many pairs (all positives are kept first when possible,
    since they are the rare class).
    """
    e, ids = _unit(emb), _np(ids)
    if len(ids) != len(e):
        raise ValueError(f"ids has {len(ids)} entries for {len(e)} embeddings")
    i, j = np.triu_indices(len(e), k=1)
    keep = np.ones(len(i), dtype=bool)
    if exclude is not None:
        ex = _np(exclude)
        keep &= ex[i] != ex[j]
    i, j = i[keep], j[keep]
    labels = (ids[i] == ids[j]).astype(np.int64)
    if max_pairs is not None and len(i) > max_pairs:
        rng = np.random.default_rng(seed)
        pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        n_pos = min(len(pos), max_pairs // 2)
        pick = np.concatenate([rng.choice(pos, n_pos, replace=False),
                               rng.choice(neg, min(len(neg), max_pairs - n_pos), replace=False)])
        i, j, labels = i[pick], j[pick], labels[pick]
    # in chunks of pairs: gathering all pairs of high-dimensional vectors at once can take gigabytes
    step = max(1, 2**24 // max(1, e.shape[1]))
    scores = np.concatenate([np.einsum("nd,nd->n", e[i[k:k + step]], e[j[k:k + step]])
                             for k in range(0, len(i), step)]) if len(i) else np.zeros(0)
    return labels, scores


def _auc(labels, scores) -> float:
    labels = _np(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")  # no pair, or one class only: AUC undefined
    return float(roc_auc_score(labels, _np(scores)))


def verification_auc(emb, ids, exclude=None, max_pairs: int | None = None, seed: int = 0) -> float:
    """ROC AUC of "same id" vs "different id" over the pairs of one set (NaN if a class is missing).

    ``exclude=study_keys`` gives the phantom variant that leaves out same-study pairs.
    """
    return _auc(*verification_scores(emb, ids, exclude=exclude, max_pairs=max_pairs, seed=seed))


def eer(labels, scores) -> float:
    """Equal error rate: the point of the ROC where false accepts = false rejects (higher score = positive)."""
    labels, scores = _np(labels), _np(scores, np.float64)
    if labels.min(initial=1) == labels.max(initial=0):
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    k = int(np.argmin(np.abs(fnr - fpr)))
    # linear interpolation between the two ROC points that bracket fpr = fnr
    if k + 1 < len(fpr) and (fnr[k] - fpr[k]) * (fnr[k + 1] - fpr[k + 1]) < 0:
        d0, d1 = fnr[k] - fpr[k], fnr[k + 1] - fpr[k + 1]
        t = d0 / (d0 - d1)
        return float(fpr[k] + t * (fpr[k + 1] - fpr[k]))
    return float((fpr[k] + fnr[k]) / 2)


def rank_k(gallery_emb, gallery_ids, probe_emb, probe_ids, k: int = 1) -> float:
    """Closed-set retrieval: fraction of probes whose id is among the ids of their ``k`` most similar
    gallery items (cosine). Probes whose id is absent from the gallery are not counted."""
    g_ids, p_ids = _np(gallery_ids), _np(probe_ids)
    sim = cosine_matrix(probe_emb, gallery_emb)  # (P, G)
    known = np.isin(p_ids, g_ids)
    if not known.any():
        raise ValueError("no probe id occurs in the gallery; rank-k is undefined")
    sim, p_ids = sim[known], p_ids[known]
    k = min(int(k), sim.shape[1])
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # (P, k)
    hit = (g_ids[top] == p_ids[:, None]).any(axis=1)
    return float(hit.mean())


def per_finding_auroc(y, scores) -> np.ndarray:
    """(F,) AUROC per finding column; NaN where the known labels of a column hold a single class.

    y: (N, F) 0/1 with NaN = unknown; scores: (N, F) logits or probabilities (any monotone scale).
    """
    y, s = _np(y, np.float64), _np(scores, np.float64)
    if y.ndim == 1:
        y, s = y[:, None], s[:, None]
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must have the same shape (N, F)")
    out = np.full(y.shape[1], np.nan)
    for f in range(y.shape[1]):
        known = ~np.isnan(y[:, f])
        out[f] = _auc(y[known, f] > 0.5, s[known, f])
    return out


def macro_auroc(y, scores) -> float:
    """Mean AUROC over the findings that have both classes (NaN if none has)."""
    per = per_finding_auroc(y, scores)
    return float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")


def dice(pred, target, threshold: float = 0.5, reduction: str = "mean", eps: float = 1e-6):
    """Dice overlap of binary masks, per image.

    pred: (N, ...) probabilities or 0/1 (binarized at ``threshold``); target: (N, ...) 0/1.
    reduction: "none" → (N,) array (1.0 where both masks are empty); "mean" → mean over all images;
    "positive" → mean over images whose target is non-empty (the honest number for rare, small lesions);
    "global" → one Dice over all pixels pooled.
    """
    p = _np(pred, np.float64) > threshold
    t = _np(target, np.float64) > 0.5
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and target {t.shape} must have the same shape")
    p, t = p.reshape(len(p), -1), t.reshape(len(t), -1)
    inter, total = (p & t).sum(1), p.sum(1) + t.sum(1)
    per = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, eps))
    if reduction == "none":
        return per
    if reduction == "mean":
        return float(per.mean())
    if reduction == "positive":
        pos = t.any(1)
        return float(per[pos].mean()) if pos.any() else float("nan")
    if reduction == "global":
        return float(2.0 * inter.sum() / max(total.sum(), eps)) if total.sum() else 1.0
    raise ValueError(f"unknown reduction {reduction!r}; valid: none, mean, positive, global")


def bootstrap_ci(fn: Callable[..., float], *arrays, n: int = 1000, seed: int = 0, alpha: float = 0.05,
                 groups=None) -> tuple[float, float, float]:
    """(estimate, low, high): ``fn(*arrays)`` and its percentile bootstrap (1 − alpha) interval.

    Rows of all ``arrays`` are resampled together. With ``groups`` (e.g. patient ids) whole groups are
    resampled (cluster bootstrap), which respects the correlation between studies of one patient.
    Resamples where ``fn`` is undefined (NaN, or a ValueError such as a single class) are skipped.
    Note: for verification AUC, bootstrap the *pairs* (``bootstrap_ci(roc_auc_score, *verification_scores(..))``),
    not the images: a resampled duplicate image would pair with itself as a perfect "same patient" pair.
    """
    arrays = [_np(a) for a in arrays]
    m = len(arrays[0])
    if any(len(a) != m for a in arrays):
        raise ValueError(f"all arrays must have the same length; got {[len(a) for a in arrays]}")
    estimate = float(fn(*arrays))
    rng = np.random.default_rng(seed)
    if groups is not None:
        g = _np(groups)
        uniq, inv = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inv == u) for u in range(len(uniq))]
    values = []
    for _ in range(int(n)):
        if groups is None:
            idx = rng.integers(0, m, m)
        else:
            idx = np.concatenate([members[u] for u in rng.integers(0, len(members), len(members))])
        try:
            v = float(fn(*[a[idx] for a in arrays]))
        except ValueError:
            continue
        if np.isfinite(v):
            values.append(v)
    if not values:
        return estimate, float("nan"), float("nan")
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return estimate, float(low), float(high)


def probe_identity(train_feats, train_ids, test_feats, test_ids, exclude=None,
                   max_dim: int = 256) -> dict[str, float]:
    """Linear identity probe that transfers to unseen patients.

    A linear discriminant projection is fitted on the training patients (it learns which directions
    separate patients), then held-out patients are verified by cosine in that space. Also reports the
    verification AUC of the raw features. Returns {"probe_auc", "raw_auc"}.
    """
    xtr, xte = _np(train_feats, np.float64), _np(test_feats, np.float64)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    ids = _np(train_ids)
    # a patient seen once has no within-class spread to learn from (and makes the shrinkage estimate warn)
    values, counts = np.unique(ids, return_counts=True)
    keep = np.isin(ids, values[counts >= 2])
    n_ids = int((counts >= 2).sum())
    if n_ids < 2:
        raise ValueError(f"probe_identity: need at least 2 training identities with 2+ samples; got {n_ids}")
    lda = fit_lda(xtr[keep], ids[keep], min(max_dim, n_ids - 1, xtr.shape[1]))
    return {"probe_auc": verification_auc(lda.transform(xte), test_ids, exclude=exclude),
            "raw_auc": verification_auc(xte, test_ids, exclude=exclude)}


def fit_lda(x, ids, n_components: int) -> LinearDiscriminantAnalysis:
    """LDA (eigen solver) with Ledoit-Wolf shrinkage; where that estimate of the within-class scatter is still
    singular (few images per patient, more dimensions than images), with a fixed shrinkage of 0.5."""
    try:
        return LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto", n_components=n_components).fit(x, ids)
    except np.linalg.LinAlgError:
        return LinearDiscriminantAnalysis(solver="eigen", shrinkage=0.5, n_components=n_components).fit(x, ids)


def probe_findings(train_feats, train_y, test_feats, test_y, c: float = 1.0,
                   names: Sequence[str] | None = None) -> dict[str, float]:
    """Linear finding probe: one logistic regression per finding on the training features, AUROC on the
    test features. Returns {"macro_auroc", "auroc/<name>"...} (NaN for untestable findings)."""
    xtr, xte = _np(train_feats, np.float64), _np(test_feats, np.float64)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    ytr, yte = _np(train_y, np.float64), _np(test_y, np.float64)
    scores = np.zeros_like(yte)
    for f in range(ytr.shape[1]):
        known = ~np.isnan(ytr[:, f])
        yk = ytr[known, f] > 0.5
        if yk.size == 0 or yk.min() == yk.max():  # no known label, or one class only: nothing to learn
            scores[:, f] = 0.0
            continue
        clf = LogisticRegression(C=c, max_iter=2000).fit(xtr[known], yk)
        scores[:, f] = clf.decision_function(xte)
    per = per_finding_auroc(yte, scores)
    names = list(names) if names is not None else [str(f) for f in range(len(per))]
    return {"macro_auroc": macro_auroc(yte, scores), **{f"auroc/{k}": float(v) for k, v in zip(names, per)}}
