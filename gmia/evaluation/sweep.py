"""``gmia sweep``: the privacy knob, measured. Anonymize and evaluate the same images at several margins.

    rows = sweep("phantom-cxr64", [0.3, 0.0, -0.3], "data/phantom-cxr64", "outputs/sweep", limit=64)

Layout: OUT/m<margin>/anon (an anonymization run, with linkage), OUT/m<margin>/eval (metrics.json ...),
OUT/curve.csv (one row per margin), OUT/curve.png (attacker AUC vs. utility AUROC), OUT/curve.json (rows and
the monotonicity check). Rerunning the same command finishes what a killed sweep left (each run resumes).

The design requires the curve to be monotone: a lower margin must never make the attacker *more* successful.
``monotone`` checks that the attacker's own-source AUC does not rise by more than ``tolerance`` as the margin
decreases. Each margin also anonymizes ``train_images`` training-patient images (OUT/m<margin>/anon-train) for the
adaptive attacker, so the curve shows the privacy against an attacker who knows the method, not only against one
who never saw an anonymized image (``train_images=0`` or a folder without a train split: left out).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path

from ..anonymization import anonymize_config, anonymize_dataset
from .. import data
from ..config import get_preset
from ..errors import ConfigError
from ..fileio import atomic_write, atomic_write_json
from ..runs import log
from .evaluate import EvalConfig, evaluate
from .plots import curve_plot

__all__ = ["sweep", "parse_margins", "curve_row", "CURVE_COLUMNS", "is_monotone"]

CURVE_COLUMNS = ("margin", "released", "withheld", "attacker_auc_own_source", "attacker_auc_other_study",
                 "adaptive_auc_own_source", "adaptive_auc_other_study",
                 "attacker_rank1", "e_id_auc_own_source", "control_auc_other_study", "utility_macro_auroc",
                 "utility_macro_auroc_originals", "psnr", "ssim", "hidden_rate")


def parse_margins(text: str) -> list[float]:
    """'0.3,0,-0.3' → [0.3, 0.0, -0.3], each a cosine in [-1, 1]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--margins must be comma-separated numbers, e.g. 0.3,0,-0.3; got {text!r}") from None
    bad = [v for v in values if not -1 <= v <= 1]
    if not values or bad:
        raise ConfigError(f"--margins must be cosines in [-1, 1]; got {text!r}")
    return values


def curve_row(margin: float, m: dict) -> dict:
    """The numbers of one margin's metrics.json that make the curve."""
    g = lambda *path: _get(m, path)  # noqa: E731
    return {"margin": margin, "released": g("inputs", "manifest", "released"),
            "withheld": g("inputs", "manifest", "withheld"),
            "attacker_auc_own_source": g("privacy", "attacker", "auc_own_source"),
            "attacker_auc_other_study": g("privacy", "attacker", "auc_same_patient_other_study"),
            "adaptive_auc_own_source": g("privacy", "adaptive_attacker", "auc_own_source"),
            "adaptive_auc_other_study": g("privacy", "adaptive_attacker", "auc_same_patient_other_study"),
            "attacker_rank1": g("privacy", "attacker", "rank1"),
            "e_id_auc_own_source": g("privacy", "e_id", "auc_own_source"),
            "control_auc_other_study": g("control", "attacker", "auc_same_patient_other_study"),
            "utility_macro_auroc": g("utility", "macro_auroc"),
            "utility_macro_auroc_originals": g("utility", "macro_auroc_originals"),
            "psnr": g("fidelity", "anonymized_vs_source", "psnr"), "ssim": g("fidelity", "anonymized_vs_source", "ssim"),
            "hidden_rate": g("record_privacy", "hidden_rate")}


def _get(d: dict, path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def is_monotone(rows: list[dict], key: str = "attacker_auc_own_source", tolerance: float = 0.01) -> bool:
    """True when ``key`` never rises by more than ``tolerance`` as the margin decreases."""
    ordered = [r[key] for r in sorted(rows, key=lambda r: -r["margin"]) if r.get(key) is not None]
    return all(b <= a + tolerance for a, b in zip(ordered, ordered[1:]))


def sweep(preset: str, margins: list[float], input_dir: str | Path, out_dir: str | Path, *,
          checkpoints: str | Path = "checkpoints", split: str | None = "test", limit: int | None = None,
          eval_cfg: EvalConfig = EvalConfig(), anonymize_overrides: dict | None = None, tolerance: float = 0.01,
          device=None, progress: bool = True, train_images: int = 400) -> list[dict]:
    """Anonymize ``input_dir`` at each margin, evaluate each run, write the curve; returns its rows."""
    p = get_preset(preset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = split if data.is_phantom_folder(input_dir) else None
    dataset = data.open(input_dir, split=split, size=p.resolution, channels=p.channels)
    train_set = None
    if train_images and split is not None and split != "train":
        train_set = data.open(input_dir, split="train", size=p.resolution, channels=p.channels)
        train_set = train_set if len(train_set) else None
    rows = []
    for margin in margins:
        run = out_dir / f"m{margin:+.2f}"
        cfg = anonymize_config(preset, margin=margin, **(anonymize_overrides or {}))
        log(None, f"sweep: margin {margin:+.2f} -> {run}")
        # resume=True: a fresh folder starts, a killed one finishes, a finished one is left as it is
        anonymize_dataset(cfg, dataset, run / "anon", checkpoints=checkpoints, device=device, resume=True,
                          limit=limit, write_linkage=True, progress=progress)
        if train_set is not None:  # material for the adaptive attacker, anonymized at the same margin
            anonymize_dataset(cfg, train_set, run / "anon-train", checkpoints=checkpoints, device=device, resume=True,
                              limit=train_images, write_linkage=True, progress=progress)
        metrics = evaluate(preset, input_dir, run / "anon", run / "eval", checkpoints=checkpoints, cfg=eval_cfg,
                           device=device, anon_train=run / "anon-train" if train_set is not None else None)
        rows.append(curve_row(margin, metrics))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CURVE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if r[k] is None else r[k]) for k in CURVE_COLUMNS} for r in rows])
    atomic_write(out_dir / "curve.csv", buf.getvalue())
    curve_plot(rows, out_dir / "curve.png")
    monotone = is_monotone(rows, tolerance=tolerance)
    atomic_write_json(out_dir / "curve.json", {"preset": preset, "input": str(input_dir), "split": split,
                                               "limit": limit, "monotone_attacker_auc": monotone,
                                               "tolerance": tolerance, "eval_config": asdict(eval_cfg), "rows": rows})
    log(None, f"sweep: {len(rows)} margins, attacker AUC monotone in the margin: {monotone} -> {out_dir / 'curve.csv'}")
    return rows
