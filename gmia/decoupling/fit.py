"""Fit a decoupler on a phantom (or any patient-split) dataset's MFM features, audit it, save it.

    report = fit_decoupler("phantom-cxr64", "data/phantom-cxr64", "runs/decoupler-phantom-cxr64")

Three disjoint sets of patients, so that no number is measured on the patients that produced it:

* ``train``: the scatter (directions) is fitted here — and, for ``method="coding_rate"``, the learned
             subspace (``coding_rate``) — and the report's probes are trained here;
* ``val``:   the MDL rank k and the hinge margin m' are chosen here (held-out code length, impostor cosines;
             for ``coding_rate``: rank, trade-off and step by the val rate reductions);
* ``test``:  the report (``report.audit``) is measured here.

The checkpoint card's ``meta`` carries the report, the MDL curve and the provenance (MFM sha256, data).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import networks
from ..checkpoints import read_card
from ..data.datasets import PhantomFolder
from ..errors import ConfigError, InputError
from ..fileio import jsonable
from ..metrics import verification_scores
from .coding_rate import CodingRateConfig, fit_coding_rate
from .decoupler import Decoupler, save_decoupler
from .mdl import select_rank
from .report import audit, format_table, rank_sweep
from .scatter import fit_scatter

__all__ = ["FitConfig", "METHODS", "extract_features", "fit_from_features", "fit_decoupler", "calibrate"]

METHODS = ("scatter", "coding_rate")


@dataclass(frozen=True)
class FitConfig:
    # ``coding_rate`` (learned refinement of the scatter split, default) or ``scatter`` (closed form). On the
    # phantom-cxr64 MFM, 200 held-out patients: semantic-part identity AUC 0.572 vs 0.699, findings kept 1.035 vs
    # 0.991 of raw, identity-code AUC 0.950 vs 0.958 -- only coding_rate meets all three targets.
    method: str = "coding_rate"
    shrinkage: float = 0.01        # δ: within-scatter regularization, relative to its mean eigenvalue
    max_rank: int | None = None    # cap on k (None: up to the feature size)
    rank: int | None = None        # force k (skips the MDL choice; for ablations)
    margin_quantile: float = 0.95  # m' = this quantile of impostor cosines of identity codes (val patients)
    sweep: bool = True             # also audit the semantic part at 2k, 4k, 8k (the privacy/findings trade-off)
    seed: int = 0
    coding_rate: CodingRateConfig = field(default_factory=CodingRateConfig)  # method="coding_rate" only

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown decoupler method {self.method!r}; valid: {', '.join(METHODS)}")
        if not 0.0 < self.margin_quantile < 1.0:
            raise ConfigError(f"margin_quantile must be in (0, 1), got {self.margin_quantile}")


@torch.no_grad()
def extract_features(mfm, dataset, batch_size: int = 128, device="cpu") -> dict[str, np.ndarray]:
    """{"features" (N, d) float32, "patients" (N,), "labels" (N, F)} of a dataset through the frozen MFM."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                                         collate_fn=lambda b: torch.stack([s["image"] for s in b]))
    feats = [mfm.features(x.to(device)).float().cpu() for x in loader]
    return {"features": torch.cat(feats).numpy(), "patients": np.asarray(dataset.patients()),
            "labels": np.asarray(dataset.labels(), np.float32)}


def calibrate(decoupler: Decoupler, feats, patients, quantile: float = 0.95) -> tuple[float, float]:
    """(margin m', semantic scale) from held-out features: m' = the ``quantile`` of impostor cosines of the
    identity codes ("x_A's identity code must look like someone else's"); the scale = RMS semantic distance
    between two studies of one patient (so λ_sem = 1 weighs one study-to-study change)."""
    with torch.no_grad():
        s, u = (t.double().numpy() for t in decoupler(torch.as_tensor(feats, dtype=torch.float32)))
    labels, scores = verification_scores(u, patients, max_pairs=200_000)
    impostor = scores[labels == 0]
    order = np.argsort(np.asarray(patients), kind="stable")
    pat = np.asarray(patients)[order]
    # same-patient pairs without an (N, N) matrix: pairs (a, b) of neighbours in the sorted order, a < b
    i, j = [], []
    for gap in range(1, 8):  # up to 8 studies per patient are paired exhaustively; enough for a scale
        same = pat[gap:] == pat[:-gap]
        i.append(order[:-gap][same])
        j.append(order[gap:][same])
    i, j = np.concatenate(i), np.concatenate(j)
    scale = float(np.sqrt(((s[i] - s[j]) ** 2).sum(1).mean())) if len(i) else 1.0
    return float(np.quantile(impostor, quantile)), scale


def fit_from_features(train: dict, val: dict, cfg: FitConfig = FitConfig()) -> tuple[Decoupler, dict]:
    """Fit on ``train``, choose k (and, for ``coding_rate``, the trade-off and step) and m' on ``val``;
    returns (decoupler, fit info). ``info["scatter"]`` is the ScatterFit (not JSON; dropped before saving)."""
    if cfg.method == "coding_rate":
        learned = fit_coding_rate(train, val, cfg.coding_rate, shrinkage=cfg.shrinkage, rank=cfg.rank,
                                  max_rank=cfg.max_rank, seed=cfg.seed)
        fit, dec, sel = learned.scatter, learned.decoupler, learned.selection
        rank, ratio = learned.rank, learned.ratio
        extra = {"coding_rate": {k: v for k, v in learned.info.items() if k not in ("rank", "rank_mdl", "ratio")}}
    else:
        fit = fit_scatter(train["features"], train["patients"], cfg.shrinkage)
        sel = select_rank(fit, val["features"], val["patients"], max_rank=cfg.max_rank)
        rank = sel["rank"] if cfg.rank is None else int(cfg.rank)
        dec, ratio, extra = Decoupler.from_scatter(fit, rank), fit.ratio, {}
    margin, scale = calibrate(dec, val["features"], val["patients"], cfg.margin_quantile)
    dec.margin, dec.semantic_scale = margin, scale
    top = min(len(fit.ratio), max(2 * sel["rank"], 32))
    info = {"method": cfg.method, "rank": rank, "rank_mdl": sel["rank"], "margin": margin,
            "semantic_scale": scale, "fit_patients": fit.patients, "fit_images": fit.images,
            "heldout_images": sel["heldout_images"], "param_bits": sel["param_bits"],
            "mdl_objective_bits": [round(float(v), 2) for v in sel["objective"][:top + 1]],
            "saved_bits": [round(float(v), 2) for v in sel["saved_bits"][:top]],
            "ratio": [round(float(v), 4) for v in ratio[:top]], **extra, "scatter": fit}
    return dec, info


def _splits(data_dir) -> dict:
    try:
        return {s: PhantomFolder(data_dir, split=s) for s in ("train", "val", "test")}
    except ConfigError as e:
        raise InputError(f"{data_dir}: fit-decoupler needs a phantom-style folder with train, val and test "
                         f"patient splits ({e})") from None


def fit_decoupler(preset: str, data_dir, out_dir, *, mfm_checkpoints="checkpoints", cfg: FitConfig = FitConfig(),
                  device="cpu", batch_size: int = 128, cache: str | Path | None = None, verbose: bool = True) -> dict:
    """Extract MFM features of train/val/test patients, fit, audit on test, save ``out_dir/decoupler.*``.

    cache: an .npz of the extracted features (read when it exists, written otherwise). Returns the report.
    """
    t0 = time.time()
    cache = Path(cache) if cache else None
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        feats = {s: {k: z[f"{s}/{k}"] for k in ("features", "patients", "labels")} for s in ("train", "val", "test")}
        findings = [str(f) for f in z["findings"]]
    else:
        mfm = networks.load(preset, "mfm", mfm_checkpoints, device=device)
        splits = _splits(data_dir)
        findings = list(splits["train"].findings)
        feats = {s: extract_features(mfm, ds, batch_size, device) for s, ds in splits.items()}
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, findings=np.asarray(findings),
                     **{f"{s}/{k}": v for s, d in feats.items() for k, v in d.items()})
    t1 = time.time()
    dec, info = fit_from_features(feats["train"], feats["val"], cfg)
    tr, te = feats["train"], feats["test"]
    report = audit(dec, tr["features"], tr["patients"], tr["labels"], te["features"], te["patients"], te["labels"],
                   findings=findings, seed=cfg.seed)
    fit = info.pop("scatter")
    if cfg.sweep and cfg.method == "coding_rate":
        # the scatter split it started from (same rank) and the scatter MDL rank: what the learning changed
        ranks = sorted({info["rank_mdl"], dec.rank})
        report["rank_sweep"] = [dict(row, split="scatter") for row in rank_sweep(
            fit, ranks, tr["features"], tr["patients"], tr["labels"], te["features"], te["patients"], te["labels"])]
    elif cfg.sweep:
        ranks = sorted({min(r, dec.feature_dim - 1) for r in (2 * dec.rank, 4 * dec.rank, 8 * dec.rank)} - {dec.rank})
        report["rank_sweep"] = rank_sweep(fit, ranks, tr["features"], tr["patients"], tr["labels"], te["features"],
                                          te["patients"], te["labels"])
    report["fit"] = info
    report["seconds"] = {"features": round(t1 - t0, 1), "fit_and_audit": round(time.time() - t1, 1)}
    try:
        mfm_card = read_card(networks.checkpoint_dir(preset, mfm_checkpoints), "mfm")
        mfm_sha = mfm_card.get("sha256")
    except Exception:  # features from a cache whose MFM folder is gone: provenance is then unknown
        mfm_sha = None
    meta = {"preset": preset, "method": cfg.method, "config": asdict(cfg), "mfm_sha256": mfm_sha,
            "data": str(data_dir), "findings": findings, "report": report}
    save_decoupler(dec, out_dir, meta=jsonable(meta))
    if verbose:
        code = f", identity code of {dec.code_rank}" if dec.code_rank != dec.rank else ""
        print(f"decoupler ({cfg.method}): k = {info['rank']} identity coordinates of {dec.feature_dim}{code} "
              f"(scatter MDL choice {info['rank_mdl']}), m' = {info['margin']:.3f}; fit on "
              f"{info['fit_patients']} patients, audit on {report['held_out']['patients']} held-out patients")
        print(format_table(report))
        print(f"saved {Path(out_dir) / 'decoupler.json'}")
    return report
