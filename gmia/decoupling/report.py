"""The decoupler's audit on held-out patients: what identity and what findings each part of the features keeps.

Four feature sets are compared (reference mdl_decoupling §3.6a): the raw features, the semantic part, the
identity code, and a control — a random orthonormal subspace of the same rank as the semantic part, which shows
that the *split*, not the loss of dimensions, removes identity. A fifth row, ``findings``, holds only the
per-finding logistic scores: how much identity the finding predictions themselves carry. For each set:

* ``identity_auc``: verification AUC on held-out patients after a linear identity probe (shrinkage LDA) fitted
  on the training patients' features of that set — an attacker that learns which directions separate people;
* ``identity_auc_cosine``: verification AUC of plain cosine similarity, no training;
* ``identity_rank1``: rank-1 retrieval in the probe space (gallery: each held-out patient's first study);
* ``identity_bits``: bits per image that knowing the patient saves in coding the set (held-out Gaussian
  random-effect code, ``mdl.identity_bits``; 0 = identity is useless to describe it);
* ``finding_auroc``: macro AUROC of one logistic probe per finding (trained on train, tested on held-out);
* ``finding_bits`` / ``finding_compression``: online code length of the held-out finding labels.
"""

from __future__ import annotations

import numpy as np

from ..metrics import fit_lda, probe_findings, rank_k, verification_auc
from .mdl import findings_codelength, identity_bits
from .scatter import fit_scatter, group_index

__all__ = ["evaluate_features", "finding_scores", "audit", "rank_sweep", "format_table", "COLUMNS"]

COLUMNS = ("dim", "identity_auc", "identity_auc_cosine", "identity_rank1", "identity_bits", "finding_auroc",
           "finding_bits", "finding_compression")


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = train.mean(0), train.std(0) + 1e-6
    return (train - mu) / sd, (test - mu) / sd


def _reduce(train: np.ndarray, test: np.ndarray, rel: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in the training set's principal subspace: a projected (rank-deficient) set becomes full rank."""
    mu = train.mean(0)
    _, s, vt = np.linalg.svd(train - mu, full_matrices=False)
    keep = s ** 2 > rel * max(float((s ** 2).max()), 1e-30)
    return (train - mu) @ vt[keep].T, (test - mu) @ vt[keep].T


def _first_study_split(patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gallery mask, probe mask): the first image of each patient vs. the rest."""
    seen, gallery = set(), np.zeros(len(patients), bool)
    for i, p in enumerate(patients):
        if p not in seen:
            seen.add(p)
            gallery[i] = True
    return gallery, ~gallery


def evaluate_features(train, train_patients, train_labels, test, test_patients, test_labels,
                      findings=None, max_dim: int = 256, seed: int = 0) -> dict:
    """The audit numbers (``COLUMNS``) of one feature set: train (N, D) for the probes, test (M, D) held out."""
    train, test = np.asarray(train, np.float64), np.asarray(test, np.float64)
    ptr, pte = np.asarray(train_patients), np.asarray(test_patients)
    xtr, xte = _reduce(train, test)
    out = {"dim": int(train.shape[1]), "rank": int(xtr.shape[1])}
    ztr, zte = _standardize(xtr, xte)
    n_ids = len(np.unique(ptr))
    probe = fit_lda(ztr, ptr, min(max_dim, n_ids - 1, ztr.shape[1])).transform(zte)
    gallery, probes = _first_study_split(pte)
    out["identity_auc"] = verification_auc(probe, pte)
    out["identity_auc_cosine"] = verification_auc(test, pte)
    out["identity_rank1"] = rank_k(probe[gallery], pte[gallery], probe[probes], pte[probes], k=1)
    fit = fit_scatter(xtr, ptr)
    saved = identity_bits(fit.coordinates(xte), pte, fit.within, fit.between)
    out["identity_bits"] = float(saved.clip(min=0).sum() / len(xte))
    fnd = probe_findings(xtr, train_labels, xte, test_labels, names=findings)
    out["finding_auroc"] = fnd["macro_auroc"]
    out["finding_per"] = {k.removeprefix("auroc/"): v for k, v in fnd.items() if k.startswith("auroc/")}
    code = findings_codelength(zte, test_labels, seed=seed)
    out["finding_bits"] = code["bits_per_image"]
    out["finding_compression"] = code["compression"]
    return out


def finding_scores(train, train_labels, test, c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(train (N, F), test (M, F)) decision values of one logistic probe per finding fitted on ``train``: the
    smallest "semantic code" that keeps the linear finding predictions. Its identity AUC is a floor for any
    semantic part from which those predictions can still be read."""
    from sklearn.linear_model import LogisticRegression

    xtr, xte = _standardize(*_reduce(np.asarray(train, np.float64), np.asarray(test, np.float64)))
    ytr = np.asarray(train_labels, np.float64)
    cols_tr, cols_te = [], []
    for f in range(ytr.shape[1]):
        known = ~np.isnan(ytr[:, f])
        yk = ytr[known, f] > 0.5
        if yk.size == 0 or yk.min() == yk.max():  # no known label, or one class only
            continue
        clf = LogisticRegression(C=c, max_iter=2000).fit(xtr[known], yk)
        cols_tr.append(clf.decision_function(xtr))
        cols_te.append(clf.decision_function(xte))
    return np.stack(cols_tr, 1), np.stack(cols_te, 1)


def audit(decoupler, train_feats, train_patients, train_labels, test_feats, test_patients, test_labels,
          findings=None, seed: int = 0) -> dict:
    """The report of a decoupler: {"raw", "semantic", "identity", "random"} → ``evaluate_features`` numbers,
    plus "acceptance" ratios (semantic finding AUROC / raw's)."""
    import torch

    with torch.no_grad():
        def split(f):
            s, u = decoupler(torch.as_tensor(np.asarray(f), dtype=torch.float32))
            return s.double().numpy(), u.double().numpy()

        s_tr, u_tr = split(train_feats)
        s_te, u_te = split(test_feats)
    # k = directions the semantic part removes (the identity code may keep fewer: Decoupler.code_rank)
    d, k = s_tr.shape[1], int(getattr(decoupler, "rank", u_tr.shape[1]))
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d - k)))  # random subspace, rank d − k
    mu = np.asarray(train_feats, np.float64).mean(0)
    sets = {"raw": (train_feats, test_feats), "semantic": (s_tr, s_te), "identity": (u_tr, u_te),
            "random": ((np.asarray(train_feats) - mu) @ q, (np.asarray(test_feats) - mu) @ q)}
    sets["findings"] = finding_scores(train_feats, train_labels, test_feats)
    report = {name: evaluate_features(tr, train_patients, train_labels, te, test_patients, test_labels,
                                      findings=findings, seed=seed)
              for name, (tr, te) in sets.items()}
    raw = report["raw"]["finding_auroc"]
    report["acceptance"] = {
        "semantic_identity_auc": report["semantic"]["identity_auc"],
        "semantic_finding_ratio": report["semantic"]["finding_auroc"] / raw if raw else float("nan"),
        "identity_identity_auc": report["identity"]["identity_auc"],
        # identity left in the finding predictions themselves: above 0.60, no semantic part that keeps them
        # can meet the first target (the findings, not the decoupler, carry that identity)
        "findings_only_identity_auc": report["findings"]["identity_auc"],
        "passed": bool(report["semantic"]["identity_auc"] <= 0.60
                       and report["semantic"]["finding_auroc"] >= 0.95 * raw
                       and report["identity"]["identity_auc"] >= 0.90),
    }
    report["held_out"] = {"images": int(len(test_feats)), "patients": int(len(group_index(test_patients)[1]))}
    return report


def format_table(report: dict) -> str:
    """A fixed-width table of the four feature sets."""
    head = ("features", "dim", "id AUC", "id AUC cos", "id rank1", "id bits/img", "find AUROC", "find bits/img",
            "find C")
    keys = ("dim", "identity_auc", "identity_auc_cosine", "identity_rank1", "identity_bits", "finding_auroc",
            "finding_bits", "finding_compression")
    lines = ["  ".join(f"{h:>12}" for h in head)]
    for name in ("raw", "semantic", "identity", "random", "findings"):
        if name not in report:
            continue
        row = report[name]
        cells = [f"{name:>12}"] + [f"{row[k]:>12d}" if k == "dim" else f"{row[k]:>12.3f}" for k in keys]
        lines.append("  ".join(cells))
    acc = report.get("acceptance")
    if acc:
        lines.append(f"acceptance: semantic id AUC {acc['semantic_identity_auc']:.3f} (<= 0.60), semantic/raw finding "
                     f"AUROC {acc['semantic_finding_ratio']:.3f} (>= 0.95), identity id AUC "
                     f"{acc['identity_identity_auc']:.3f} (>= 0.90): {'PASS' if acc['passed'] else 'FAIL'}; "
                     f"id AUC of the finding scores alone: {acc['findings_only_identity_auc']:.3f}")
    for row in report.get("rank_sweep", []):
        split = f"{row['split']} " if "split" in row else ""
        lines.append(f"  {split}rank {row['rank']:>4}: semantic id AUC {row['identity_auc']:.3f}, finding AUROC "
                     f"{row['finding_auroc']:.3f}")
    return "\n".join(lines)


def rank_sweep(fit, ranks, train_feats, train_patients, train_labels, test_feats, test_patients, test_labels) -> list:
    """Semantic-part identity AUC and finding AUROC at other identity ranks (same scatter fit): the trade-off
    the MDL rank sits on. ``fit`` is a ``scatter.ScatterFit``."""
    import torch

    from .decoupler import Decoupler

    rows = []
    for k in ranks:
        dec = Decoupler.from_scatter(fit, int(k))
        with torch.no_grad():
            s_tr = dec.semantic(torch.as_tensor(np.asarray(train_feats), dtype=torch.float32)).double().numpy()
            s_te = dec.semantic(torch.as_tensor(np.asarray(test_feats), dtype=torch.float32)).double().numpy()
        xtr, xte = _reduce(s_tr, s_te)
        ztr, zte = _standardize(xtr, xte)
        lda = fit_lda(ztr, train_patients, min(256, len(np.unique(train_patients)) - 1, ztr.shape[1]))
        auc = verification_auc(lda.transform(zte), test_patients)
        rows.append({"rank": int(k), "identity_auc": auc,
                     "finding_auroc": probe_findings(xtr, train_labels, xte, test_labels)["macro_auroc"]})
    return rows
