"""``gmia calibrate``: the privacy knob in attacker terms, and ``--target-auc`` that reads it.

    table = calibrate("phantom-cxr64", "data/phantom-cxr64", "checkpoints/phantom-cxr64/calibration.json")
    setting = pick_setting(table, target_auc=0.9)     # {"redraw": 0.39, "expected_auc": 0.9, ...}
    table = load_calibration("checkpoints/phantom-cxr64", margin=0.0)   # the table of one level, as shipped

A margin on E_id's cosine is not what a data steward needs to know; the chance that an attacker links a released
image to its source is. ``calibrate`` anonymizes, at each re-draw strength s of a grid (``redraw.py``: 0 = the
source's code, 1 = only its findings kept), a set of held-out patients and a set of training patients, trains
the adaptive attackers on the latter (``gmia evaluate``: two families x seeds, the strongest reported) and records
the own-source AUC with its patient-bootstrap interval, the same-patient AUC, release membership and utility (the
independent classifier and E_ut). ``pick_setting`` interpolates that table: the smallest s whose expected
own-source AUC is at most the target (the most utility for the privacy asked), and refuses a target below what
the table reaches. A table is measured at one margin: the file holds one table per privacy level measured
(``"tables"``), and ``--target-auc`` reads the one of the run's level. A table belongs to the weights it was
measured with: it stores their sha256s and ``gmia anonymize`` refuses a table made for other weights.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checkpoints import changed_weights, read_card
from ..errors import ConfigError
from ..fileio import atomic_write_json
from ..runs import environment, log
from .adaptive import AdaptiveConfig
from .evaluate import EvalConfig, evaluate

__all__ = ["CalibrationConfig", "calibrate", "pick_setting", "load_calibration", "check_settings", "settings_of",
           "CALIBRATION_FILE"]

CALIBRATION_FILE = "calibration.json"  # beside the weights: checkpoints/<preset>/calibration.json
_ROLES = ("aegan", "identity", "utility", "latent-prior", "latent-split")
_MDL_ROLES = ("mfm", "decoupler")


@dataclass(frozen=True)
class CalibrationConfig:
    strengths: tuple = (0.0, 0.5, 0.75, 1.0)  # re-draw strengths measured (the face curve bends between 0.5 and 1)
    train_images: int = 400                # anonymized training-patient images the adaptive attackers learn from
    test_images: int = 200                 # held-out images attacked
    test_split: str = "val"                # held-out patients (phantom split); never the test split
    privacy: str | None = None             # the privacy level the table is measured at (None: the preset's own);
    #                                        the file keeps the tables of the other levels
    # A curve, not the acceptance run: both attacker families with one seed each, and utility as E_ut sees it (the
    # independent classifier, minutes per setting on a CPU, is `gmia evaluate`'s)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(
        bootstrap=200, independent_classifier=False, adaptive=AdaptiveConfig(seeds=1)))


def _row(strength: float, m: dict) -> dict:
    ada = m["privacy"]["adaptive_attacker"]
    ind = m["utility"].get("independent_classifier", {})
    return {"redraw": strength,
            "adaptive_auc_own_source": ada.get("auc_own_source"), "adaptive_auc_own_source_ci95":
            ada.get("auc_own_source_ci95"), "adaptive_linkability_own_source": ada.get("auc_own_source_linkability"),
            "adaptive_auc_same_patient": ada.get("auc_same_patient_other_study"),
            "adaptive_membership_auc": ada.get("membership", {}).get("auc"),
            "strongest": ada.get("strongest"),
            "attacker_auc_own_source": m["privacy"]["attacker"].get("auc_own_source"),
            "independent_classifier_ratio": ind.get("ratio"),
            "e_ut_macro_auroc": m["utility"].get("macro_auroc"),
            "released": m["inputs"]["manifest"].get("released"), "withheld": m["inputs"]["manifest"].get("withheld")}


def _evaluated(folder: Path, runs: dict, cfg: CalibrationConfig) -> dict | None:
    """The metrics a killed calibration already measured for this setting, if they are of these runs as they are
    now (the same numbers of released images) and of this privacy protocol (the same evaluation config, the utility
    extras aside); else None."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    released = {split: json.loads((r / "run.json").read_text()).get("summary", {}).get("released")
                for split, r in runs.items()}
    trained = m.get("privacy", {}).get("adaptive_attacker", {}).get("training", {}).get("anonymized_images")
    extras = ("independent_classifier", "classifier", "segmenter")
    privacy_only = lambda c: {k: v for k, v in c.items() if k not in extras}  # noqa: E731
    same = (privacy_only(m.get("config") or {}) == privacy_only(json.loads(json.dumps(dataclasses.asdict(cfg.eval))))
            and m.get("inputs", {}).get("manifest", {}).get("released") == released[cfg.test_split]
            and trained == released["train"])
    return m if same else None


def settings_of(anon_cfg) -> dict:
    """The stage-2 settings a table holds for: every field that changes what is released, but the two a table sets
    (redraw, margin) and the ones that change the pixels and not the method (the run seed, precision, bit depth)."""
    from ..anonymization.config import RESULT_FIELDS, config_dict

    d = config_dict(anon_cfg)
    return {k: d[k] for k in RESULT_FIELDS if k not in ("redraw", "margin", "seed", "precision", "output_bits")}


def check_settings(table: dict, anon_cfg, path) -> None:
    """Refuse a run whose stage-2 settings are not the ones ``table`` was measured with: its AUCs are those of the
    settings measured (a table that did not record them is taken as it is)."""
    from ..anonymization.config import RESULT_DEFAULTS

    held = table.get("settings")
    if held is None:
        return
    now = settings_of(anon_cfg)
    # a setting added after the table was measured was measured at its default (what every run did before it)
    held = {**{k: RESULT_DEFAULTS[k] for k in now if k in RESULT_DEFAULTS}, **held}
    changed = [k for k in now if k in held and held[k] != now[k]]
    if changed:
        raise ConfigError(f"{path}: the table at m = {table.get('margin'):g} was measured with "
                          + ", ".join(f"{k}={held[k]}" for k in changed) + "; this run sets "
                          + ", ".join(f"{k}={now[k]}" for k in changed) + ". Its AUCs hold for the settings "
                          "measured: leave those flags out, or measure a table with these settings as the preset's "
                          "(`gmia calibrate`)")


def weights_of(folder: Path, anon_cfg=None) -> dict:
    """sha256 of each file a calibration depends on (the ones present): with the MFM term on (``anon_cfg``), the
    foundation model and its decoupler too, and with the second utility network on, that network."""
    out = {}
    roles = _ROLES + (_MDL_ROLES if anon_cfg is not None and anon_cfg.lambda_mdl > 0 else ())
    roles += ("utility2",) if anon_cfg is not None and anon_cfg.lambda_ut2 > 0 else ()
    for role in roles:
        try:
            out[role] = read_card(folder, role)["sha256"]
        except Exception:  # a preset without that file: not part of the fingerprint
            continue
    return out


def calibrate(preset: str, data_dir: str | Path, out_file: str | Path, *, checkpoints: str | Path = "checkpoints",
              cfg: CalibrationConfig = CalibrationConfig(), work: str | Path | None = None, device=None,
              progress: bool = False) -> dict:
    """Measure the grid (module doc) and write the table to ``out_file``; returns it. ``work`` holds the runs
    (default: outputs/calibration/<preset>, one folder per margin); rerunning resumes them."""
    from .. import data
    from ..anonymization import anonymize_config, anonymize_dataset
    from ..config import get_preset
    from ..networks import checkpoint_dir

    p = get_preset(preset)
    out_file = Path(out_file)
    work = Path(work) if work is not None else Path("outputs") / "calibration" / preset
    if not data.is_phantom_folder(data_dir):
        raise ConfigError(f"{data_dir}: calibration needs a folder with patient splits (a phantom folder or your own "
                          "data written as one): training patients for the attacker, held-out ones to attack")
    # one level for every row, named: left to the preset, a strength-0 row would take the E(x) start's level
    level = cfg.privacy or anonymize_config(preset).privacy
    margin = anonymize_config(preset, privacy=level).margin
    work = work / f"m{margin:g}"  # one table per margin: the runs of another margin are other images
    rows = []
    for s in cfg.strengths:
        runs = {}
        anon_cfg = anonymize_config(preset, privacy=level, redraw=float(s))
        for split, n in (("train", cfg.train_images), (cfg.test_split, cfg.test_images)):
            runs[split] = work / f"redraw{s:.2f}" / split
            ds = data.open(data_dir, split=split, size=p.resolution, channels=p.channels)
            anonymize_dataset(anon_cfg, ds, runs[split], checkpoints=checkpoints, device=device, resume=True,
                              limit=n, write_linkage=True, progress=progress)
        m = _evaluated(work / f"redraw{s:.2f}" / "eval", runs, cfg)
        if m is None:
            m = evaluate(preset, data_dir, runs[cfg.test_split], work / f"redraw{s:.2f}" / "eval",
                         checkpoints=checkpoints, anon_train=runs["train"], cfg=cfg.eval, device=device)
        rows.append(_row(float(s), m))
        log(None, f"calibrate: redraw {s:.2f}: adaptive own-source AUC {rows[-1]['adaptive_auc_own_source']:.3f}")
    table = {"preset": preset, "privacy": level, "margin": margin,
             "weights": weights_of(checkpoint_dir(preset, checkpoints), anon_cfg), "settings": settings_of(anon_cfg),
             "protocol": {"data": str(data_dir), **{k: v for k, v in dataclasses.asdict(cfg).items() if k != "eval"},
                          "eval": dataclasses.asdict(cfg.eval)},
             "rows": rows, "environment": environment()}
    kept = [t for t in _read_tables(out_file) if t.get("margin") != margin and t.get("weights") == table["weights"]]
    tables = sorted(kept + [table], key=lambda t: -t["margin"])  # the least private level first
    atomic_write_json(out_file, {"preset": preset, "tables": tables})
    margins = ", ".join(f"{t['margin']:g}" for t in tables)
    log(None, f"calibration of {preset} at m = {margin:g}: {len(rows)} settings -> {out_file} "
              f"(tables at m = {margins})")
    return table


def _read_tables(path: Path) -> list[dict]:
    """The tables of the calibration file ``path`` (none when it is missing or unreadable)."""
    try:
        return _tables_of(json.loads(Path(path).read_text()))
    except (OSError, ValueError, AttributeError):
        return []


def _tables_of(doc: dict) -> list[dict]:
    """A calibration file's tables, one per margin; a file of one table without ``"tables"`` is that table."""
    return list(doc.get("tables", [doc] if "rows" in doc else []))


def load_calibration(folder: str | Path, margin: float) -> dict:
    """The calibration table at ``margin`` beside the weights in ``folder``, checked against their sha256s."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        raise ConfigError(f"--target-auc needs a calibration of these weights: {path} not found; measure one with "
                          f"`gmia calibrate --preset PRESET --data DIR --out {path}`")
    try:
        tables = _tables_of(json.loads(path.read_text()))
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: unreadable calibration table ({exc}); recalibrate with `gmia calibrate`") from None
    table = next((t for t in tables if t.get("margin") is not None and abs(t["margin"] - margin) < 1e-9), None)
    if table is None:
        held = ", ".join(f"{t.get('privacy') or 'a level'} (m = {t['margin']:g})" for t in tables
                         if t.get("margin") is not None) or "none"
        raise ConfigError(f"{path} has no table at m = {margin:g}, only at: {held}. Pass that level with --privacy, "
                          f"or measure this one with `gmia calibrate --privacy LEVEL --out {path}`")
    stale = changed_weights(folder, table.get("weights", {}))
    if stale:
        raise ConfigError(f"{path} was measured with other weights ({', '.join(stale)} changed); recalibrate with "
                          f"`gmia calibrate --out {path}`")
    return table


def pick_setting(table: dict, target_auc: float) -> dict:
    """The smallest re-draw strength whose expected adaptive own-source AUC is at most ``target_auc``, by linear
    interpolation between measured strengths (the curve is made non-increasing first: a stronger re-draw is
    never credited with less privacy than a weaker one), at the margin the table was measured with."""
    rows = sorted((r for r in table["rows"] if r.get("adaptive_auc_own_source") is not None),
                  key=lambda r: r["redraw"])
    if not rows:
        raise ConfigError("the calibration table has no adaptive-attacker measurements")
    s = np.array([r["redraw"] for r in rows], dtype=float)
    auc = np.minimum.accumulate(np.array([r["adaptive_auc_own_source"] for r in rows], dtype=float))
    if target_auc < auc[-1]:
        raise ConfigError(f"--target-auc {target_auc:g} is out of reach: the strongest calibrated setting "
                          f"(redraw {s[-1]:g}) gives an adaptive own-source AUC of {auc[-1]:.3f} on held-out patients "
                          f"(reachable: {auc[-1]:.3f} to {auc[0]:.3f})")
    if target_auc >= auc[0]:
        strength, expected = float(s[0]), float(auc[0])
    else:
        k = int(np.flatnonzero(auc <= target_auc)[0])           # first measured strength at or below the target
        s0, s1, a0, a1 = s[k - 1], s[k], auc[k - 1], auc[k]
        t = (a0 - target_auc) / (a0 - a1) if a0 > a1 else 1.0
        strength, expected = float(s0 + t * (s1 - s0)), float(target_auc)
    return {"redraw": round(strength, 4), "margin": table.get("margin"), "target_auc": float(target_auc),
            "expected_auc": expected,
            "measured": [{"redraw": float(a), "adaptive_auc_own_source": float(b)} for a, b in zip(s, auc)]}
