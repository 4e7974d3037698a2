"""``gmia mia``: membership inference against the stage-1 generator (GAN-Leaks style, Chen et al. CCS 2020).

    from gmia.evaluation.mia import MIAConfig, membership_inference
    r = membership_inference("phantom-cxr64", "data/phantom-cxr64", "data/phantom-cxr64", "outputs/mia")
    r["attacks"]["latent_reconstruction"]["auc"]

Members are the generator's training images (phantom: the train split), non-members held-out patients of the
same distribution (the test split). Every attack gives one score per query, higher = "member"; the idea is that
a generator reproduces its training images better than unseen ones. Attacks, weakest access first:

- ``nearest_generated`` (black-box): distance from the query to the closest of K generated samples G(w_k). This
  AE-GAN has no mapping network, so "sampling the generator" needs a latent distribution: w_k ~ N(μ, Σ)
  (``gmia.projection.prior``) fitted to the encoder codes E(x) of a *latent-fit* set disjoint from members and
  non-members (phantom: the val split; if none is given, the pooled queries themselves, unlabelled — a slightly
  stronger attacker). Σ is shrunk
  towards its diagonal (rank-deficient with few images). Distance: per-pixel MSE.
- ``encoder_only`` (partial white-box): the reconstruction error ‖G(E(x)) − x‖² of the encoder alone.
- ``latent_reconstruction`` (white-box): the encoder's code refined by ``refine_steps`` Adam steps on the MSE
  (``gmia.projection.project.project_images``); score = −error.
- calibrated versions, which remove per-image difficulty (a busy image is hard for any model):
  ``calibrated_reference``: error(victim) − error(reference model trained without the members) — GAN-Leaks'
  calibration, when ``--reference-checkpoint`` gives such a model;
  ``calibrated_complexity``: log error(victim) − log error(4× down/up-sampling), a model-free difficulty score;
  ``calibrated_encoder``: log error(refined) − log error(encoder): how much optimization helps beyond the
  encoder (the encoder itself was trained on the members, so this can cancel the signal; reported, not favoured).

Metrics: ROC AUC (patient-cluster bootstrap 95% interval), TPR at FPR 1%, 0.1% and 0 (meaningful only with
≥ 100 / ≥ 1000 non-members: ``n_nonmembers`` is recorded), and the attacker advantage max_t (TPR − FPR).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_curve

from .. import data, metrics
from ..config import get_preset
from ..errors import InputError
from ..fileio import atomic_write_json, jsonable
from ..machine import resolve_device
from ..projection.prior import LatentPrior
from ..projection.project import load_aegan, project_images
from ..runs import log
from .evaluate import _folder
from .privacy import fast_auc
from .records import load_real

__all__ = ["MIAConfig", "membership_inference", "attack_metrics", "mia_scores"]


@dataclass(frozen=True)
class MIAConfig:
    limit: int | None = 500          # queries per side (first N of each set, seeded shuffle)
    samples: int = 2000              # K generated samples for nearest_generated
    refine_steps: int = 50           # Adam steps of the latent reconstruction attack
    refine_lr: float = 0.03
    shrinkage: float = 0.1           # Σ ← (1 − a) Σ + a diag(Σ)
    batch_size: int = 64
    bootstrap: int = 500
    seed: int = 0


def _tpr_at(fpr, tpr, target: float) -> float:
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def attack_metrics(member_scores, nonmember_scores, groups=None, bootstrap: int = 0, seed: int = 0) -> dict:
    """AUC (+ interval), TPR at 1% / 0.1% / 0% FPR and advantage of scores (higher = member).

    An AUC far below 0.5 is a signal too (an attacker reverses the score), so ``auc_linkability`` =
    max(AUC, 1 − AUC) and ``advantage_two_sided`` = max |TPR − FPR| are reported beside them."""
    s = np.r_[np.asarray(member_scores, float), np.asarray(nonmember_scores, float)]
    y = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    fpr, tpr, _ = roc_curve(y, s)
    out = {"auc": fast_auc(y, s)}
    if bootstrap > 0:
        _, lo, hi = metrics.bootstrap_ci(fast_auc, y, s, n=bootstrap, seed=seed, groups=groups)
        out["auc_ci95"] = [lo, hi]
    out.update(tpr_at_1pct_fpr=_tpr_at(fpr, tpr, 0.01), tpr_at_0_1pct_fpr=_tpr_at(fpr, tpr, 0.001),
               tpr_at_0_fpr=_tpr_at(fpr, tpr, 0.0), advantage=float((tpr - fpr).max()),
               auc_linkability=max(out["auc"], 1.0 - out["auc"]), advantage_two_sided=float(np.abs(tpr - fpr).max()))
    return out


@torch.no_grad()
def _nearest_generated(model, queries: list[torch.Tensor], prior: LatentPrior, cfg: MIAConfig) -> list[torch.Tensor]:
    """Min MSE of each query to K samples G(μ + A z), generated once in chunks (const noise)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    device = next(model.parameters()).device
    flat = [q.flatten(1).cpu() for q in queries]
    best = [torch.full((len(q),), float("inf")) for q in queries]
    for s in range(0, cfg.samples, cfg.batch_size):
        k = min(cfg.batch_size, cfg.samples - s)
        z = torch.randn(k, prior.a.shape[1], generator=gen, dtype=torch.float64)
        w = prior.sample_z(z).to(device)
        g = model.synthesize(w).clamp(0, 1).flatten(1).cpu()                       # (k, D)
        for i, q in enumerate(flat):
            d = torch.cdist(q, g).square() / g.shape[1]                  # (N, k) per-pixel MSE
            best[i] = torch.minimum(best[i], d.min(dim=1).values)
    return best


def _reconstruction_errors(model, x: torch.Tensor, cfg: MIAConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder-only MSE, refined MSE) per image."""
    enc, ref = [], []
    for s in range(0, len(x), cfg.batch_size):
        r = project_images(model, x[s:s + cfg.batch_size], refine_steps=cfg.refine_steps, refine_lr=cfg.refine_lr,
                           lambda_mse=1.0, lambda_perc=0.0)
        enc.append(r["loss_encoder"].detach().cpu())
        ref.append(r["loss"].detach().cpu())
    return torch.cat(enc), torch.cat(ref)


def _complexity(x: torch.Tensor) -> torch.Tensor:
    """MSE of a 4x bilinear down/up-sampling: how much fine detail an image has, whatever the model."""
    s = x.shape[-1]
    y = F.interpolate(F.interpolate(x, size=(max(1, s // 4),) * 2, mode="bilinear", antialias=True,
                                    align_corners=False), size=(s, s), mode="bilinear", align_corners=False)
    return (y - x).square().flatten(1).mean(1)


def mia_scores(model, queries: list[torch.Tensor], fit: torch.Tensor, cfg: MIAConfig, reference=None) -> list[dict]:
    """Per query set, {attack: (N,) scores, higher = member} (see the module doc)."""
    eps = 1e-12
    prior = LatentPrior.fit(model, fit, cfg.shrinkage, cfg.batch_size)
    nearest = _nearest_generated(model, queries, prior, cfg)
    out = []
    for q, near in zip(queries, nearest):
        enc, ref = _reconstruction_errors(model, q, cfg)
        scores = {"nearest_generated": -near, "encoder_only": -enc, "latent_reconstruction": -ref,
                  "calibrated_complexity": -(torch.log(ref + eps) - torch.log(_complexity(q) + eps)),
                  "calibrated_encoder": -(torch.log(ref + eps) - torch.log(enc + eps))}
        if reference is not None:
            _, ref_other = _reconstruction_errors(reference, q, cfg)
            scores["calibrated_reference"] = -(ref - ref_other)
        out.append({k: v.double().numpy() for k, v in scores.items()})
    return out


def _sample(ds, n: int | None, seed: int):
    idx = np.random.default_rng(seed).permutation(len(ds))
    return np.sort(idx[:n] if n is not None else idx)


def membership_inference(preset: str, members: str | Path, nonmembers: str | Path, out_dir: str | Path, *,
                         checkpoints: str | Path = "checkpoints", members_split: str | None = "train",
                         nonmembers_split: str | None = "test", latent_fit: str | Path | None = None,
                         latent_fit_split: str | None = "val", reference_checkpoint: str | Path | None = None,
                         cfg: MIAConfig = MIAConfig(), device=None) -> dict:
    """Run the attacks of the module doc; write and return ``out_dir/mia.json``.

    Splits apply to phantom folders only (pass None for plain image folders).
    """
    device = resolve_device(device)
    p = get_preset(preset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = _folder(preset, Path(checkpoints), "aegan")
    model = load_aegan(folder, device)
    reference = load_aegan(reference_checkpoint, device) if reference_checkpoint else None
    opened = lambda d, s: data.open(d, split=s if data.is_phantom_folder(d) else None,  # noqa: E731
                                    size=p.resolution, channels=p.channels)
    m_ds, n_ds = opened(members, members_split), opened(nonmembers, nonmembers_split)
    overlap = set(m_ds.patients()) & set(n_ds.patients())
    if overlap:
        raise InputError(f"members and non-members share {len(overlap)} patients (e.g. {sorted(overlap)[0]!r}); "
                         "non-members must be held-out patients (phantom: --members-split train --nonmembers-split test)")
    m_idx, n_idx = _sample(m_ds, cfg.limit, cfg.seed), _sample(n_ds, cfg.limit, cfg.seed + 1)
    x_m, x_n = load_real(m_ds, m_idx).to(device), load_real(n_ds, n_idx).to(device)
    if latent_fit is not None:
        f_ds = opened(latent_fit, latent_fit_split)
        x_fit, fit_desc = load_real(f_ds, _sample(f_ds, cfg.limit, cfg.seed + 2)).to(device), \
            f"{latent_fit} (split {latent_fit_split})"
    else:
        x_fit, fit_desc = torch.cat([x_m, x_n]), "pooled queries (members + non-members, unlabelled)"
    log(None, f"mia: {len(x_m)} members, {len(x_n)} non-members, latent fit on {fit_desc}, K={cfg.samples}")
    s_m, s_n = mia_scores(model, [x_m, x_n], x_fit, cfg, reference)
    names = np.array(m_ds.patients())[m_idx].tolist() + np.array(n_ds.patients())[n_idx].tolist()
    groups = np.unique(names, return_inverse=True)[1]
    attacks = {k: attack_metrics(s_m[k], s_n[k], groups, cfg.bootstrap, cfg.seed) for k in s_m}
    result = jsonable({
        "inputs": {"preset": preset, "members": f"{members} (split {members_split})",
                   "nonmembers": f"{nonmembers} (split {nonmembers_split})", "latent_fit": fit_desc,
                   "reference_checkpoint": None if reference_checkpoint is None else str(reference_checkpoint),
                   "n_members": len(x_m), "n_nonmembers": len(x_n), "checkpoint": str(folder)},
        "config": asdict(cfg),
        "score_convention": "higher = predicted member; errors are per-pixel MSE of images in [0, 1]",
        "attacks": attacks,
        "mean_errors": {"members_latent_reconstruction": float(-s_m["latent_reconstruction"].mean()),
                        "nonmembers_latent_reconstruction": float(-s_n["latent_reconstruction"].mean())},
    })
    if len(x_n) < 1000:
        result["note"] = (f"TPR at 0.1% FPR needs >= 1000 non-members to be resolved; with {len(x_n)} the smallest "
                          f"non-zero FPR is {1 / len(x_n):.4f}")
    atomic_write_json(out_dir / "mia.json", result)
    best = max(attacks, key=lambda k: attacks[k]["auc_linkability"] or 0)
    log(None, f"mia: strongest attack {best} AUC {attacks[best]['auc']:.3f} (linkability "
              f"{attacks[best]['auc_linkability']:.3f}) -> {out_dir / 'mia.json'}")
    return result
