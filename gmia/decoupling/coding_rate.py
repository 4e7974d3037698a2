"""Learned identity subspace: a coding-rate (MCR²-style) refinement of the scatter split (reference §3.1, option A).

    fit = fit_coding_rate(train, val, CodingRateConfig())      # {"features", "patients", "labels"} per split
    dec = fit.decoupler                                        # a plain ``Decoupler``: save / calibrate / MDLTerm

**Where the split lives.** ``scatter.fit_scatter`` on the train patients gives full bases V₀, A₀ (d, d) with
V₀'A₀ = I, so c = (f − μ)V₀ are within-patient whitened coordinates and f − μ = cA₀'. We learn an orthonormal
Q (d, k) in c-space and set::

    filters V = V₀ Q T,      patterns A = A₀ Q T⁻ᵀ         (T (k, k) invertible: the identity code's basis)

so V'A = I and semantic(f) = (c − cQQ')A₀': an orthogonal projection in the within-patient whitened metric, the
same (oblique in feature space) geometry as the scatter split. At Q = [I_k; 0] it *is* the scatter split of
rank k — that is the initialization, so the learned split can only move away from scatter where the objective
says so. (Least-squares patterns given free filters would also work, but would lose the exact projection
property and the "init = scatter" identity.) The semantic part depends on span(Q) only; T is chosen at the end
(below) and changes the identity code alone.

**Coding rate** (Yu et al. 2020, MCR²), Gaussian form. For a code whose covariance (in whitened units: the
within-patient noise has variance 1 per coordinate) is Σ, coded up to a distortion ε²::

    R(Σ) = ½ logdet(I + Σ/ε²)                                         nats per sample
    ΔR(Z | Π) = R(Σ_total) − Σ_j π_j R(Σ_j)                           nats saved by knowing the partition Π

with Σ_j the covariance *around group j's mean* (the group means are side information). Two partitions:

* patients: with ~4 studies per patient a per-patient covariance is singular, so all patients share one pooled
  within-patient covariance Σ_w (dof N − P): ΔR(Z | patients) = R(Σ_t) − R(Σ_w), the Gaussian information the
  code carries about who the patient is;
* finding f (known labels only): the classes share one pooled covariance Σ_t − π₀π₁δδ' (δ = class-mean
  difference; the LDA model): ΔR(Z | f) = −½ log(1 − π₀π₁/ε² · δ'(…)⁻¹δ), the information about the finding.

For a subspace S (orthonormal columns) the code's covariance is S'ΣS, so R_S = ½ logdet(S'MS) with
M = I + Σ/ε². The complementary subspace follows from Jacobi's identity det(P'MP) = det M · det(Q'M⁻¹Q) for an
orthogonal [Q P], so every term of both parts costs O(d²·min(k, d − k)): the free matrix is a basis of the
smaller side (Q itself, or the semantic subspace P = Q⊥ when k > d/2; rank-one terms use Sherman–Morrison).

**Objective** (maximized with Adam; Q = QR factor of a free matrix)::

    J(Q) = ΔR(Z_id | patients)  −  β · ΔR(Z_sem | patients)  +  η · mean_f ΔR(Z_sem | finding f)

The second term is the MDL statement "knowing the patient must not shorten the description of the semantic
part", the third keeps the findings' directions out of the removed subspace — the scatter ordering ignores the
findings, which is why large scatter ranks lose them; with it, k can grow until the semantic part keeps little
more than the findings. The statistics (Σ_t, Σ_w, δ_f) are accumulated over the train split in minibatches of
whole patients; by default every Adam step uses all of them (the objective depends on the data only through
these d×d statistics, so this is exact and deterministic); ``batch_patients`` = P instead draws one minibatch of
P whole patients per step (stochastic statistics, noisier at d ≈ hundreds).

Why this form and not MCR²'s sample form (normalized codes, ½ logdet of each group's n×n Gram), even
chance-corrected: with 4 studies per patient its per-patient term is a 4×4 logdet. On the phantom MFM features
(d = 512) it is noisy and overfits: on val the semantic part's identity rate goes up.
The covariance form is exact given the statistics, cheap, and has a closed-form complement.

**Chance correction** (evaluation only). On a few hundred val images a d×d covariance is rank deficient, and
ΔR is then biased upward even for pure noise. Val numbers are therefore excesses over shuffled partitions with
the same group sizes: ΔR̃ = ΔR(true) − mean ΔR(shuffled) (expectation 0 when the code ignores the partition).

**Selection on val** (train fits, val chooses, test only reports, as in ``fit.py``). For every candidate rank k
and trade-off β, every ``eval_every`` steps (step 0 = the scatter split of that rank), the val patients give::

    leak = ΔR̃(Z_sem | patients) / ΔR̃(c | patients)        share of the raw features' identity information left
    keep = Σ_f ΔR̃(Z_sem | f) / Σ_f ΔR̃(c | f)             share of the raw features' finding information kept

and the chosen (k, β, step) has the least leak among those with keep ≥ ``keep_min`` — the smallest k whose leak
is within ``leak_tol`` of the least, so ranks that remove nothing more measurable are not taken (none with
enough keep: the maximal keep).

**Identity code (T, m).** Inside the chosen span(Q) the code is rotated to that subspace's own Fisher basis
(train patients; ordered by between/within ratio λ, within-whitened) and coordinate j is scaled by
√(λ_j/(1 + λ_j)) (λ floored): the cosine of the scaled code weighs each coordinate as a Gaussian verifier would
(the stage-2 hinge and ``calibrate`` use cosines of this code). A large k removes many directions that carry
only within-patient noise; the code keeps the first m coordinates (``Decoupler.code_rank``), m chosen by the
same held-out two-part code length as the scatter rank (``mdl.select_rank`` on val). The semantic part still
removes all k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from .decoupler import Decoupler
from .mdl import select_rank
from .scatter import ScatterFit, fit_scatter, group_index

__all__ = ["CodingRateConfig", "CodingRateFit", "RateStats", "fit_coding_rate", "train_subspace", "rate_terms",
           "objective", "candidate_ranks", "identity_code", "to_decoupler"]


@dataclass(frozen=True)
class CodingRateConfig:
    ranks: tuple | None = None       # candidate k; None: ``candidate_ranks`` around the scatter MDL rank
    betas: tuple = (1.0, 4.0)        # β: weight of the semantic part's patient rate reduction
    eta: float = 20.0                # η: weight of the semantic part's (mean per-finding) rate reduction
    eps2: float = 0.5                # ε²: distortion, in units of the within-patient variance of a coordinate
    steps: int = 200                 # Adam steps per candidate
    eval_every: int = 25             # val evaluation period (step 0 = the scatter split is always a candidate)
    lr: float = 0.01                 # Adam learning rate on the free basis (unit columns at init)
    batch_patients: int | None = None  # None: full train statistics per step; P: a minibatch of P patients
    keep_min: float = 0.95           # val: the chosen split keeps at least this share of the finding information
    leak_tol: float = 0.02           # val: leaks within this of the least count as equal (the smaller k wins)
    shuffles: int = 4                # val: shuffled partitions of the chance correction
    weight_floor: float = 0.01       # λ floor of the identity code's coordinate weights √(λ/(1+λ))

    def __post_init__(self):
        if self.ranks is not None and (len(self.ranks) == 0 or min(self.ranks) < 1):
            raise InputError(f"coding-rate ranks must be positive, got {self.ranks}")
        if not self.betas or min(self.betas) < 0 or self.eta < 0 or self.eps2 <= 0:
            raise InputError("coding-rate betas / eta must be >= 0 and eps2 > 0")
        if self.steps < 0 or self.eval_every < 1 or (self.batch_patients is not None and self.batch_patients < 2):
            raise InputError("coding-rate: steps >= 0, eval_every >= 1, batch_patients None or >= 2 required")


@dataclass
class CodingRateFit:
    """The learned split. ``basis`` Q (d, k) is orthonormal in the scatter's whitened coordinates."""

    decoupler: Decoupler
    scatter: ScatterFit
    basis: np.ndarray          # (d, k) Q: the removed (identity) subspace, whitened coordinates
    code: np.ndarray           # (k, k) T: identity code = c Q T (Fisher-rotated, weighted; ``identity_code``)
    ratio: np.ndarray          # (k,) between/within ratio of the identity-code coordinates (train)
    rank: int
    beta: float
    step: int
    selection: dict = field(default_factory=dict)  # the scatter's MDL rank selection on val (``mdl.select_rank``)
    info: dict = field(default_factory=dict)   # JSON-friendly: the chosen candidate, all candidates' val numbers


# ------------------------------------------------------------------------------------------------ statistics


def _chol_inv_logdet(m: np.ndarray) -> tuple[np.ndarray, float]:
    chol = np.linalg.cholesky(m)
    inv = np.linalg.inv(chol)
    return inv.T @ inv, 2.0 * float(np.log(np.diag(chol)).sum())


class RateStats:
    """The sufficient statistics of the rates of one set of whitened codes c (N, d):
    M_t = I + Σ_t/ε², M_w = I + Σ_w/ε² (and inverses, logdets), and per finding the class-mean difference δ_f and
    c_f = π₀π₁/ε² (so that M_f = M_t − c_f δ_f δ_f'). ``rng``: shuffle the patients and each finding column
    first (the chance-correction reference)."""

    def __init__(self, c: np.ndarray, patients, labels, eps2: float, rng: np.random.Generator | None = None):
        c = np.asarray(c, np.float64)
        patients = np.asarray(patients)
        labels = np.asarray(labels, np.float64).reshape(len(c), -1)
        if rng is not None:
            patients = rng.permutation(patients)
            labels = np.stack([rng.permutation(col) for col in labels.T], 1) if labels.shape[1] else labels
        n, d = c.shape
        x = c - c.mean(0)
        inv, counts = group_index(patients)
        means = np.zeros((len(counts), d))
        np.add.at(means, inv, x)
        means /= counts[:, None]
        resid = x - means[inv]
        eye = np.eye(d)
        m_t = eye + x.T @ x / (n * eps2)
        m_w = eye + resid.T @ resid / (max(n - len(counts), 1) * eps2)
        mt_inv, self.logdet_t = _chol_inv_logdet(m_t)
        mw_inv, self.logdet_w = _chol_inv_logdet(m_w)
        deltas, coefs = [], []
        for col in labels.T:
            known = ~np.isnan(col)
            pos = known & (col > 0.5)
            neg = known & ~(col > 0.5)
            if pos.sum() < 2 or neg.sum() < 2:
                continue
            p1 = pos.sum() / known.sum()
            deltas.append(x[pos].mean(0) - x[neg].mean(0))
            coefs.append(p1 * (1.0 - p1) / eps2)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
        self.m_t, self.m_w, self.mt_inv, self.mw_inv = t(m_t), t(m_w), t(mt_inv), t(mw_inv)
        self.deltas = t(np.stack(deltas, 1) if deltas else np.zeros((d, 0)))          # (d, F)
        self.coefs = t(np.asarray(coefs, np.float64))                                 # (F,)
        self.g = self.mt_inv @ self.deltas                                             # M_t⁻¹ δ (d, F)
        # −½ log(1 − c δ'M_t⁻¹δ): the raw features' finding information (clamped against tiny sample effects)
        self.q_full = (self.coefs * (self.deltas * self.g).sum(0)).clamp(max=1 - 1e-9)
        self.raw_patients = 0.5 * (self.logdet_t - self.logdet_w)
        self.raw_findings = -0.5 * torch.log1p(-self.q_full)                          # (F,)


def _half_logdet(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.cholesky((a + a.T) / 2).diagonal().log().sum()


def _quad_inv(k: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """diag(u' K⁻¹ u) per column of u (s, F), K (s, s) SPD."""
    chol = torch.linalg.cholesky((k + k.T) / 2)
    return torch.cholesky_solve(u, chol).mul(u).sum(0)


def rate_terms(stats: RateStats, basis: torch.Tensor, complement: bool = False) -> dict:
    """{"id_patients", "sem_patients", "sem_findings" (F,)} in nats per sample.

    basis: orthonormal (d, s): Q (the identity subspace), or with ``complement`` a basis of the semantic
    subspace P = Q⊥. Side "direct" = the span of ``basis``: ½ logdet(S'MS); the other side by Jacobi's identity
    ½(logdet M + logdet(S'M⁻¹S))."""
    s = basis
    k_t, k_w = s.T @ stats.m_t @ s, s.T @ stats.m_w @ s
    l_t, l_w = s.T @ stats.mt_inv @ s, s.T @ stats.mw_inv @ s
    direct = _half_logdet(k_t) - _half_logdet(k_w)                                          # ΔR on span(S)
    other = 0.5 * (stats.logdet_t - stats.logdet_w) + _half_logdet(l_t) - _half_logdet(l_w)  # ΔR on S⊥
    if complement:  # span(S) is the semantic part: findings directly, −½ log(1 − c u'K_t⁻¹u)
        find = -0.5 * torch.log1p(-(stats.coefs * _quad_inv(k_t, s.T @ stats.deltas)).clamp(max=1 - 1e-9))
    else:           # semantic = S⊥: logdet M_f = logdet M_t + log(1 − q), M_f⁻¹ = M_t⁻¹ + γ gg' (Sherman–Morrison)
        gamma = stats.coefs / (1.0 - stats.q_full)
        v = s.T @ stats.g
        find = -0.5 * (torch.log1p(-stats.q_full) + torch.log1p(gamma * _quad_inv(l_t, v)))
    return {"id_patients": other if complement else direct, "sem_patients": direct if complement else other,
            "sem_findings": find}


def objective(terms: dict, beta: float, eta: float) -> torch.Tensor:
    """J = ΔR(Z_id | patients) − β ΔR(Z_sem | patients) + η mean_f ΔR(Z_sem | f)  (maximized)."""
    find = terms["sem_findings"].mean() if terms["sem_findings"].numel() else terms["id_patients"].new_zeros(())
    return terms["id_patients"] - beta * terms["sem_patients"] + eta * find


def _patient_batches(patients: np.ndarray, per_batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of shuffled minibatches of whole patients (a short last batch joins the previous one)."""
    inv, counts = group_index(patients)
    order = rng.permutation(len(counts))
    chunks = [order[i:i + per_batch] for i in range(0, len(order), per_batch)]
    if len(chunks) > 1 and len(chunks[-1]) < per_batch:
        chunks[-2] = np.concatenate([chunks[-2], chunks.pop()])
    rows = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    return [np.concatenate([rows[starts[p]:starts[p + 1]] for p in chunk]) for chunk in chunks]


class _Evaluator:
    """Chance-corrected val numbers of a split (see the module doc): {"leak", "keep", "sem_patients", ...}."""

    def __init__(self, c, patients, labels, eps2: float, shuffles: int, seed: int):
        rng = np.random.default_rng(seed)
        self.true = RateStats(c, patients, labels, eps2)
        self.shuffled = [RateStats(c, patients, labels, eps2, rng) for _ in range(shuffles)]
        ref = lambda attr: getattr(self.true, attr) - sum(getattr(s, attr) for s in self.shuffled) / len(self.shuffled)
        self.raw_patients = float(ref("raw_patients"))
        self.raw_findings = float(ref("raw_findings").sum())

    @torch.no_grad()
    def __call__(self, basis: np.ndarray, complement: bool) -> dict:
        b = torch.from_numpy(np.ascontiguousarray(basis))
        terms = [rate_terms(s, b, complement) for s in [self.true] + self.shuffled]
        corr = {k: float(terms[0][k].sum()) - sum(float(t[k].sum()) for t in terms[1:]) / len(self.shuffled)
                for k in terms[0]}
        corr["leak"] = corr["sem_patients"] / max(self.raw_patients, 1e-12)
        corr["keep"] = corr["sem_findings"] / self.raw_findings if self.raw_findings > 1e-12 else 1.0
        return corr


# ---------------------------------------------------------------------------------------------- optimization


def _orthonormal(m: torch.Tensor) -> torch.Tensor:
    """Q of m = QR with a positive diagonal R (an orthonormal m maps to itself)."""
    q, r = torch.linalg.qr(m)
    return q * torch.where(r.diagonal() < 0, -1.0, 1.0)


def _complement(basis: np.ndarray) -> np.ndarray:
    """An orthonormal basis (d, d − s) of the orthogonal complement of an orthonormal (d, s)."""
    u, _, _ = np.linalg.svd(basis, full_matrices=True)
    return u[:, basis.shape[1]:]


def identity_basis(basis: np.ndarray, complement: bool) -> np.ndarray:
    """Q (d, k) from the optimized basis (itself, or the complement of a semantic-subspace basis)."""
    return _complement(basis) if complement else basis


def train_subspace(c: np.ndarray, patients, labels, rank: int, beta: float,
                   cfg: CodingRateConfig = CodingRateConfig(), seed: int = 0, callback=None,
                   stats: RateStats | None = None) -> np.ndarray:
    """Adam on J(Q) from Q₀ = [I_k; 0]; c: whitened train codes (N, d), columns in scatter order.

    The free matrix is a (d, k) basis of Q when k ≤ d/2, else a (d, d − k) basis of the semantic subspace
    (init [0; I]). ``callback(step, basis, complement)`` runs at step 0, every ``eval_every`` steps and at the
    end. stats: the full-train ``RateStats`` (built here when needed). Returns the final Q (d, k)."""
    c = np.asarray(c, np.float64)
    patients, labels = np.asarray(patients), np.asarray(labels, np.float64)
    d = c.shape[1]
    if not 1 <= rank < d:
        raise InputError(f"coding-rate rank must be in [1, {d - 1}], got {rank}")
    rng = np.random.default_rng(seed)
    complement = rank > d // 2
    init = np.eye(d)[:, rank:] if complement else np.eye(d)[:, :rank]
    free = torch.nn.Parameter(torch.from_numpy(init.copy()))
    opt = torch.optim.Adam([free], lr=cfg.lr)
    if cfg.batch_patients is None and stats is None:
        stats = RateStats(c, patients, labels, cfg.eps2)
    batches: list = []

    def current() -> np.ndarray:
        with torch.no_grad():
            return _orthonormal(free).numpy().copy()

    if callback is not None:
        callback(0, current(), complement)
    for step in range(1, cfg.steps + 1):
        if cfg.batch_patients is None:
            step_stats = stats
        else:
            if not batches:
                batches = _patient_batches(patients, cfg.batch_patients, rng)
            rows = batches.pop()
            step_stats = RateStats(c[rows], patients[rows], labels[rows], cfg.eps2)
        loss = -objective(rate_terms(step_stats, _orthonormal(free), complement), beta, cfg.eta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if callback is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            callback(step, current(), complement)
    return identity_basis(current(), complement)


def candidate_ranks(mdl_rank: int, d: int, findings: int) -> list[int]:
    """The scatter MDL rank k₀ and its doublings, and d − r for small semantic ranks r (≥ 2·findings + 2)."""
    ks = {mdl_rank * 2 ** i for i in range(12)}
    ks |= {d - r for r in (64, 32, 16) if r >= 2 * findings + 2}
    return sorted(k for k in ks if 1 <= k < d)


def _select(cands: list[dict], keep_min: float, leak_tol: float) -> dict:
    """Among candidates keeping ≥ keep_min of the finding information, the smallest rank whose leak is within
    leak_tol of the least leak (then its least leak); none keeping enough: the one keeping the most."""
    ok = [c for c in cands if c["keep"] >= keep_min]
    if not ok:
        return max(cands, key=lambda c: (c["keep"], -c["leak"]))
    least = min(c["leak"] for c in ok)
    return min((c for c in ok if c["leak"] <= least + leak_tol), key=lambda c: (c["rank"], c["leak"], c["step"]))


def identity_code(q: np.ndarray, c_train: np.ndarray, patients, c_val: np.ndarray, val_patients,
                  shrinkage: float = 0.01, floor: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(T, T⁻ᵀ, λ, m) for the identity code c Q T: T = R·diag(w), R the Fisher basis of the train codes cQ
    (sorted by between/within ratio λ, within-whitened), w = √(λ/(1+λ)) with λ floored at ``floor``; m = the
    code rank, the held-out MDL choice (``mdl.select_rank``, val) among these coordinates."""
    sub = fit_scatter(np.asarray(c_train) @ q, patients, shrinkage)
    lam = np.maximum(sub.ratio, floor)
    w = np.sqrt(lam / (1.0 + lam))
    code_rank = select_rank(sub, np.asarray(c_val) @ q, val_patients)["rank"]
    return sub.filters * w[None], sub.patterns / w[None], sub.ratio, code_rank


def to_decoupler(scatter: ScatterFit, q: np.ndarray, code: np.ndarray | None = None,
                 code_dual: np.ndarray | None = None, code_rank: int | None = None) -> Decoupler:
    """Decoupler with filters V₀QT and patterns A₀QT⁻ᵀ (T = I by default): V'A = Q'Q = I."""
    d, k = q.shape
    t = np.eye(k) if code is None else np.asarray(code)
    t_dual = np.linalg.inv(t).T if code_dual is None else np.asarray(code_dual)
    dec = Decoupler(d, k, code_rank=code_rank)
    with torch.no_grad():
        dec.mean.copy_(torch.from_numpy(scatter.mean))
        dec.filters.copy_(torch.from_numpy(scatter.filters @ q @ t))
        dec.patterns.copy_(torch.from_numpy(scatter.patterns @ q @ t_dual))
    return dec


def fit_coding_rate(train: dict, val: dict, cfg: CodingRateConfig = CodingRateConfig(), shrinkage: float = 0.01,
                    rank: int | None = None, max_rank: int | None = None, seed: int = 0,
                    verbose: bool = False) -> CodingRateFit:
    """Scatter on train → for each candidate (k, β): Adam on J from the scatter split of rank k, val numbers
    every ``eval_every`` steps → the (k, β, step) chosen on val (module doc) → the Decoupler (its margin and
    semantic scale are left at the defaults: ``fit.calibrate`` sets them)."""
    scatter = fit_scatter(train["features"], train["patients"], shrinkage)
    d = len(scatter.mean)
    sel = select_rank(scatter, val["features"], val["patients"], max_rank=max_rank)
    c_tr, c_va = scatter.coordinates(train["features"]), scatter.coordinates(val["features"])
    p_tr, y_tr = np.asarray(train["patients"]), np.asarray(train["labels"], np.float64)
    if rank is not None:
        ranks = [int(rank)]
    elif cfg.ranks is not None:
        ranks = sorted({int(k) for k in cfg.ranks})
    else:
        ranks = candidate_ranks(sel["rank"], d, y_tr.shape[1])
    if max_rank is not None:
        ranks = [k for k in ranks if k <= max_rank] or [int(max_rank)]
    ranks = [k for k in ranks if 1 <= k < d]
    if not ranks:
        raise InputError(f"no valid coding-rate rank in [1, {d - 1}]; got rank={rank}, max_rank={max_rank}")
    evaluator = _Evaluator(c_va, val["patients"], val["labels"], cfg.eps2, cfg.shuffles, seed + 1)
    stats = RateStats(c_tr, p_tr, y_tr, cfg.eps2) if cfg.batch_patients is None else None
    # a candidate can only be chosen if it is the best of its rank (least leak if it keeps enough, else most
    # keep): one basis per rank and kind is enough
    cands, kept = [], {}
    for k in ranks:
        for beta in (cfg.betas if cfg.steps > 0 else cfg.betas[:1]):
            def record(step, basis, complement, k=k, beta=float(beta)):
                ev = evaluator(basis, complement)
                row = {"rank": k, "beta": beta, "step": step, "leak": round(ev["leak"], 5),
                       "keep": round(ev["keep"], 5), "id_patients": round(ev["id_patients"], 4)}
                cands.append(row)
                kind = row["keep"] >= cfg.keep_min
                order = (lambda r: (r["leak"],)) if kind else (lambda r: (-r["keep"], r["leak"]))
                old = kept.get((k, kind))
                if old is None or order(row) < order(old[1]):
                    kept[(k, kind)] = (identity_basis(basis, complement), row)
                if verbose:
                    print(f"  k={k:4d} beta={beta:g} step={step:4d}: val leak {ev['leak']:.3f} keep "
                          f"{ev['keep']:.3f} id {ev['id_patients']:.2f} nats", flush=True)

            train_subspace(c_tr, p_tr, y_tr, k, beta, cfg, seed=seed, callback=record, stats=stats)
    best = _select(cands, cfg.keep_min, cfg.leak_tol)
    q = kept[(best["rank"], best["keep"] >= cfg.keep_min)][0]
    code, code_dual, ratio, code_rank = identity_code(q, c_tr, p_tr, c_va, val["patients"], shrinkage,
                                                      cfg.weight_floor)
    dec = to_decoupler(scatter, q, code, code_dual, code_rank)
    info = {"rank": best["rank"], "code_rank": code_rank, "beta": best["beta"], "step": best["step"],
            "val_leak": best["leak"],
            "val_keep": best["keep"], "rank_mdl": sel["rank"], "ranks": ranks,
            "val_raw_patients_nats": evaluator.raw_patients, "val_raw_findings_nats": evaluator.raw_findings,
            "ratio": [round(float(v), 4) for v in ratio[:64]], "candidates": cands}
    return CodingRateFit(decoupler=dec, scatter=scatter, basis=q, code=code, ratio=ratio, rank=best["rank"],
                         beta=best["beta"], step=best["step"], selection=sel, info=info)
