"""Description lengths: how many bits knowing the patient saves, and how many bits the findings cost.

**Rank selection (identity subspace size k).** In the Fisher coordinates of ``scatter.fit_scatter`` each
coordinate j is coded on its own, under one of two Gaussian models fitted on the *fitting* patients:

* iid:             every study's c_j ~ N(0, w_j + b_j)                       (the patient is unknown)
* random effect:   a patient's n studies (c_1..c_n)_j ~ N(0, w_j I + b_j 11')  (the patient partition is known)

The bits the second model saves on the studies of *held-out* patients (``identity_bits``) measure how much
identity coordinate j carries — an estimate of I(c_j; patient) that, being measured on unseen patients, does
not reward directions whose between-patient variance was an accident of the fitting sample. The identity
subspace is then a two-part MDL choice::

    k* = argmin_k   k · ½ log2(N_fit)                       (bits to state b_1..b_k: the model)
                  + Σ_{j≤k} L_RE(c_j) + Σ_{j>k} L_iid(c_j)  (bits of the held-out data given the model)

i.e. a coordinate joins the identity part when describing it patient-by-patient is shorter, parameters
included. Coordinates are ordered by their fitted ratio, so the objective is a cumulative sum.

**Report code lengths.** ``online_codelength`` is the prequential (online) code of Voita & Titov (2020): a
logistic probe trained on a growing prefix codes the next block; ``compression = uniform bits / online bits``
(1.0 = the features do not help predict the labels at all).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.linear_model import LogisticRegression

from .scatter import ScatterFit, group_index

__all__ = ["identity_bits", "select_rank", "online_codelength", "findings_codelength", "BLOCKS"]

LOG2E = 1.0 / math.log(2.0)
# prefix fractions of the online code (the first block is sent with the uniform code)
BLOCKS = (0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0)


def identity_bits(coords, patients, within, between) -> np.ndarray:
    """(d,) bits saved, over the whole set, by coding each coordinate patient-by-patient.

    coords (N, d): held-out coordinates; patients (N,); within / between (d,): model variances from the fitting
    set. Positive = knowing the patient shortens the description of that coordinate.
    """
    x = np.asarray(coords, np.float64)
    inv, counts = group_index(patients)
    s1 = np.zeros((len(counts), x.shape[1]))
    s2 = np.zeros_like(s1)
    np.add.at(s1, inv, x)
    np.add.at(s2, inv, x * x)
    n = counts[:, None].astype(np.float64)                                # (P, 1)
    w = np.maximum(np.asarray(within, np.float64), 1e-12)[None]           # (1, d)
    b = np.maximum(np.asarray(between, np.float64), 0.0)[None]
    # −2 ln p, dropping the n·ln 2π shared by both models (Σ = wI + b11': det = w^{n−1}(w + nb))
    nll_re = (n - 1) * np.log(w) + np.log(w + n * b) + (s2 - b * s1 ** 2 / (w + n * b)) / w
    nll_iid = n * np.log(w + b) + s2 / (w + b)
    return 0.5 * (nll_iid - nll_re).sum(0) * LOG2E


def select_rank(fit: ScatterFit, heldout_feats, heldout_patients, max_rank: int | None = None,
                param_bits: float | None = None) -> dict:
    """The MDL rank k* (≥ 1) of the identity subspace, and the curve it came from.

    param_bits: cost of one coordinate's between-patient variance (default ½·log2(images used in the fit)).
    Returns {"rank", "param_bits", "saved_bits" (d,) per-coordinate held-out saving, "objective" (K+1,): the
    bits of model + data relative to k = 0 (lower is better), "heldout_images"}.
    """
    coords = fit.coordinates(heldout_feats)
    saved = identity_bits(coords, heldout_patients, fit.within, fit.between)
    cost = 0.5 * math.log2(max(fit.images, 2)) if param_bits is None else float(param_bits)
    kmax = len(saved) if max_rank is None else max(1, min(int(max_rank), len(saved)))
    objective = np.concatenate([[0.0], np.cumsum(cost - saved[:kmax])])
    rank = int(np.argmin(objective[1:])) + 1  # at least one identity coordinate
    return {"rank": rank, "param_bits": cost, "saved_bits": saved, "objective": objective,
            "heldout_images": int(len(coords))}


def _predict_proba(x_train, y_train, x_code, c: float) -> np.ndarray:
    """P(y = 1) for the block to code, from a probe trained on the prefix (Laplace rule if one class only)."""
    if y_train.min() == y_train.max():
        p = (y_train.sum() + 1.0) / (len(y_train) + 2.0)
        return np.full(len(x_code), p)
    clf = LogisticRegression(C=c, max_iter=500).fit(x_train, y_train)
    return clf.predict_proba(x_code)[:, 1]


def online_codelength(x, y, blocks=BLOCKS, c: float = 1.0, seed: int = 0) -> dict:
    """Prequential code length (bits) of binary labels y (N,) given features x (N, D).

    The rows are shuffled once (seeded); the first block is sent at 1 bit per label; each later block is coded
    with a logistic probe trained on everything before it. Returns {"bits", "uniform_bits", "compression"}.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y).astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    ends = sorted({max(1, min(len(y), int(round(f * len(y))))) for f in blocks} | {len(y)})
    bits = float(ends[0])  # uniform code for the first block (K = 2 classes)
    for start, end in zip(ends[:-1], ends[1:]):
        p = np.clip(_predict_proba(x[:start], y[:start], x[start:end], c), 1e-6, 1 - 1e-6)
        yb = y[start:end]
        bits += float(-(yb * np.log2(p) + (1 - yb) * np.log2(1 - p)).sum())
    uniform = float(len(y))
    return {"bits": bits, "uniform_bits": uniform, "compression": uniform / max(bits, 1e-12)}


def findings_codelength(x, labels, c: float = 0.01, seed: int = 0) -> dict:
    """Online code length of every finding column (NaN = unknown rows left out), summed.

    c: inverse ridge strength. Strong by default: with a few hundred images of a 512-d feature, a weak ridge
    overfits the early prefixes so badly that the online code is *longer* than 1 bit per label.
    Returns {"bits_per_image", "compression"} (total uniform bits / total online bits).
    """
    x, labels = np.asarray(x, np.float64), np.asarray(labels, np.float64)
    bits = uniform = 0.0
    for f in range(labels.shape[1]):
        known = ~np.isnan(labels[:, f])
        if known.sum() < 10:
            continue
        out = online_codelength(x[known], labels[known, f] > 0.5, c=c, seed=seed + f)
        bits += out["bits"]
        uniform += out["uniform_bits"]
    return {"bits_per_image": bits / max(len(x), 1), "compression": uniform / bits if bits else float("nan")}
