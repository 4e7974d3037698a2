"""Re-identification metrics of anonymized images against a gallery of originals, and record-level privacy.

Pure functions on embeddings (numpy), so any embedder (the attacker, E_id, an adaptive attacker) plugs in.

Pairs (probe = an anonymized image, gallery = originals of the evaluated patients):
- *own source*: (probe, the original it was made from) — the question a linkage attack asks;
- *same patient, other study*: (probe, another original of the same patient) — the harder, biometric question;
- *different patient*: (probe, an original of another patient) — the negatives of both AUCs.
Scores are cosine similarities of the embeddings; AUC = P(score of a positive pair > a negative pair).
Bootstrap intervals resample *probe patients* (cluster bootstrap), since all pairs of one probe are correlated.

Record-level privacy (in the same embedding space, distance d = 1 − cos):
- DCR: distance from each anonymized image to its closest record among training originals; compared with the
  same distance for the held-out originals themselves (``dcr_holdout``), a released set much closer to the
  training records than fresh real images are would signal memorization;
- NNDR: nearest / second-nearest distance to the training records (near 0: one record stands out);
- hidden rate: the fraction of anonymized images whose nearest original — among the training originals and the
  originals of the evaluated patients together — is NOT their own source (``hidden_rate``), or belongs to another
  patient altogether (``hidden_rate_patient``). 1.0 means no image points back at its source.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from .. import metrics

__all__ = ["fast_auc", "roc_points", "reid_pairs", "reid_metrics", "rank_excluding_source", "record_privacy", "auc_with_ci", "unit"]


def unit(e) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def reid_pairs(probe_emb, probe_patient, probe_source, gallery_emb, gallery_patient, gallery_index,
               max_negatives: int = 20000, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Scores and probe-patient groups of the three pair kinds.

    probe_source: (P,) real-record index of each probe's source; gallery_index: (G,) real-record index of each
    gallery item. Negatives are a seeded subsample of at most ``max_negatives`` different-patient pairs.
    Returns {"own": {...}, "other": {...}, "negative": {...}} with "score" and "group" arrays each.
    """
    sim = unit(probe_emb) @ unit(gallery_emb).T                                    # (P, G)
    same = np.asarray(probe_patient)[:, None] == np.asarray(gallery_patient)[None, :]
    own = np.asarray(probe_source)[:, None] == np.asarray(gallery_index)[None, :]
    rows = np.broadcast_to(np.asarray(probe_patient)[:, None], sim.shape)
    out = {}
    for name, mask in (("own", own), ("other", same & ~own), ("negative", ~same)):
        out[name] = {"score": sim[mask], "group": rows[mask]}
    neg = out["negative"]
    if len(neg["score"]) > max_negatives:
        pick = np.random.default_rng(seed).choice(len(neg["score"]), max_negatives, replace=False)
        out["negative"] = {"score": neg["score"][pick], "group": neg["group"][pick]}
    return out


def fast_auc(labels, scores) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula with tied scores sharing their mean rank; NaN when a class
    is missing. Equal to sklearn's roc_auc_score, without its per-call validation (bootstraps call it 1000s of times)."""
    y = np.asarray(labels) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)       # 1-based mean rank of each tie group
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


_auc = fast_auc


def auc_with_ci(pos: dict, neg: dict, bootstrap: int, seed: int = 0) -> tuple[float, list | None]:
    """AUC of positive vs negative pairs and its cluster-bootstrap 95% interval (None without bootstrap)."""
    if len(pos["score"]) == 0 or len(neg["score"]) == 0:
        return float("nan"), None
    labels = np.concatenate([np.ones(len(pos["score"])), np.zeros(len(neg["score"]))])
    scores = np.concatenate([pos["score"], neg["score"]])
    groups = np.concatenate([pos["group"], neg["group"]])
    if bootstrap <= 0:
        return _auc(labels, scores), None
    est, lo, hi = metrics.bootstrap_ci(_auc, labels, scores, n=bootstrap, seed=seed, groups=groups)
    return est, [lo, hi]


def rank_excluding_source(probe_emb, probe_patient, probe_source, gallery_emb, gallery_patient, gallery_index,
                          ks=(1, 5), keep_source: bool = False) -> dict[str, float]:
    """Closed-set retrieval of the probe's patient among the originals.

    Without ``keep_source`` the probe's own source is removed from the gallery (so a hit needs another study of
    the same patient); probes whose patient then has no gallery item are left out.
    """
    sim = unit(probe_emb) @ unit(gallery_emb).T                                    # (P, G)
    gp = np.asarray(gallery_patient)
    pp = np.asarray(probe_patient)
    if not keep_source:
        sim = np.where(np.asarray(probe_source)[:, None] == np.asarray(gallery_index)[None, :], -np.inf, sim)
    reachable = ((gp[None, :] == pp[:, None]) & np.isfinite(sim)).any(axis=1)
    out = {}
    if not reachable.any():
        return {f"rank{k}": float("nan") for k in ks}
    order = np.argsort(-sim[reachable], axis=1, kind="stable")
    hits = gp[order] == pp[reachable][:, None]                                     # (P', G) sorted
    for k in ks:
        out[f"rank{k}"] = float(hits[:, :k].any(axis=1).mean())
    return out


def reid_metrics(probe_emb, probe_patient, probe_source, gallery_emb, gallery_patient, gallery_index,
                 bootstrap: int = 0, own_source: bool = True, max_negatives: int = 20000,
                 seed: int = 0) -> dict:
    """The verification and retrieval numbers of one embedder on one probe set (see the module doc).

    own_source=False for probes that *are* the originals (their own-source pair is the identical image).
    """
    pairs = reid_pairs(probe_emb, probe_patient, probe_source, gallery_emb, gallery_patient, gallery_index,
                       max_negatives, seed)
    out: dict = {}
    kinds = (("own_source", "own"), ("same_patient_other_study", "other")) if own_source else \
        (("same_patient_other_study", "other"),)
    for name, key in kinds:
        auc, ci = auc_with_ci(pairs[key], pairs["negative"], bootstrap, seed)
        out[f"auc_{name}"] = auc
        # An AUC far below 0.5 leaks too: the images are systematically *unlike* their source, and an attacker
        # who flips the sign of the score links them. The linkability is the distance from chance either way.
        out[f"auc_{name}_linkability"] = max(auc, 1.0 - auc) if auc == auc else auc
        if ci is not None:
            out[f"auc_{name}_ci95"] = ci
        out[f"cos_{name}_mean"] = float(pairs[key]["score"].mean()) if len(pairs[key]["score"]) else float("nan")
        if len(pairs[key]["score"]) and len(pairs["negative"]["score"]):
            labels = np.r_[np.ones(len(pairs[key]["score"])), np.zeros(len(pairs["negative"]["score"]))]
            out[f"eer_{name}"] = metrics.eer(labels, np.r_[pairs[key]["score"], pairs["negative"]["score"]])
    out["cos_different_patient_mean"] = float(pairs["negative"]["score"].mean())
    out.update(rank_excluding_source(probe_emb, probe_patient, probe_source, gallery_emb, gallery_patient,
                                     gallery_index))
    if own_source:
        with_src = rank_excluding_source(probe_emb, probe_patient, probe_source, gallery_emb, gallery_patient,
                                         gallery_index, keep_source=True)
        out.update({f"{k}_with_source": v for k, v in with_src.items()})
    out.update(n_probes=int(len(probe_emb)), n_gallery=int(len(gallery_emb)),
               n_pairs_own_source=int(len(pairs["own"]["score"])) if own_source else 0,
               n_pairs_other_study=int(len(pairs["other"]["score"])),
               n_pairs_different_patient=int(len(pairs["negative"]["score"])))
    return out


def roc_points(pairs: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of positive kind ``key`` vs the negatives, for plots."""
    labels = np.r_[np.ones(len(pairs[key]["score"])), np.zeros(len(pairs["negative"]["score"]))]
    fpr, tpr, _ = roc_curve(labels, np.r_[pairs[key]["score"], pairs["negative"]["score"]])
    return fpr, tpr


def _two_nearest(query, reference, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d1, d2, argmin) of d = 1 − cos from each query row to the reference rows (chunked over queries)."""
    q, r = unit(query), unit(reference)
    d1, d2, arg = [], [], []
    for s in range(0, len(q), chunk):
        d = 1.0 - q[s:s + chunk] @ r.T                                            # (chunk, R)
        part = np.partition(d, 1, axis=1)[:, :2] if d.shape[1] > 1 else np.c_[d, d]
        d1.append(part[:, 0])
        d2.append(part[:, 1])
        arg.append(d.argmin(axis=1))
    return np.concatenate(d1), np.concatenate(d2), np.concatenate(arg)


def record_privacy(anon_emb, source_emb, source_patient, train_emb, gallery_emb, gallery_patient,
                   gallery_is_source) -> dict:
    """DCR, NNDR and hidden rates (see the module doc).

    anon_emb (N, D) and source_emb (N, D): anonymized images and their sources, aligned; train_emb (R, D):
    training originals (patients not evaluated); gallery_emb (G, D): originals of the evaluated patients with
    gallery_patient (G,) and gallery_is_source (N, G) bool (True where gallery item g is image n's source).
    """
    out: dict = {"distance": "1 - cosine of attacker embeddings", "n_training_records": int(len(train_emb))}
    if len(train_emb) >= 2:
        d1, d2, _ = _two_nearest(anon_emb, train_emb)
        h1, _, _ = _two_nearest(source_emb, train_emb)
        out.update(dcr_median=float(np.median(d1)), dcr_mean=float(d1.mean()), dcr_p05=float(np.quantile(d1, 0.05)),
                   dcr_holdout_median=float(np.median(h1)), dcr_holdout_p05=float(np.quantile(h1, 0.05)),
                   dcr_below_holdout_p05=float((d1 < np.quantile(h1, 0.05)).mean()),
                   nndr_mean=float((d1 / np.maximum(d2, 1e-12)).mean()))
    else:
        out["dcr_skipped"] = "fewer than 2 training originals (the real dataset has no other train-split patients)"
    # hidden rate: nearest original among training originals + evaluated patients' originals
    pool = np.concatenate([gallery_emb, train_emb]) if len(train_emb) else gallery_emb
    _, _, nearest = _two_nearest(anon_emb, pool)
    in_gallery = nearest < len(gallery_emb)
    g = np.where(in_gallery, nearest, 0)
    is_source = in_gallery & np.asarray(gallery_is_source)[np.arange(len(g)), g]
    same_patient = in_gallery & (np.asarray(gallery_patient)[g] == np.asarray(source_patient))
    out.update(hidden_rate=float(1.0 - is_source.mean()), hidden_rate_patient=float(1.0 - same_patient.mean()))
    return out
