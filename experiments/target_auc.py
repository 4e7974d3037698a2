"""Does ``--target-auc`` deliver? Anonymize held-out *test* patients at the setting the shipped calibration picks
for a target, and measure the adaptive attacker the way the table was measured.

    python experiments/target_auc.py --preset phantom-cxr64 --target 0.9                  # the default level's table
    python experiments/target_auc.py --preset phantom-cxr64 --target 0.85 --privacy high   # the table of level high

The table (``checkpoints/<preset>/calibration.json``) was measured on validation patients; this anonymizes the
first 200 test images (and 400 training images for the attackers) at the picked re-draw strength and margin, runs
``gmia evaluate``'s adaptive attackers with the table's protocol (``CalibrationConfig().eval``: both families, one
seed each, the strongest reported) and prints the target, the table's expectation and the achieved own-source AUC
with its patient-bootstrap interval. Runs resume: a second call reuses the anonymized images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gmia import data
from gmia.anonymization import anonymize_config, anonymize_dataset
from gmia.config import PRIVACY_LEVELS, get_preset
from gmia.evaluation.calibrate import CalibrationConfig, load_calibration, pick_setting
from gmia.evaluation.evaluate import evaluate
from gmia.machine import set_threads
from gmia.networks import checkpoint_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="phantom-cxr64")
    ap.add_argument("--data", default=None, help="phantom folder (default data/<preset>)")
    ap.add_argument("--target", type=float, required=True, help="the adaptive own-source AUC asked for")
    ap.add_argument("--privacy", default=None, choices=list(PRIVACY_LEVELS),
                    help="the level whose table is read (default: the preset's)")
    ap.add_argument("--checkpoints", default="checkpoints")
    ap.add_argument("--test-images", type=int, default=200)
    ap.add_argument("--train-images", type=int, default=400)
    ap.add_argument("--out", default=None, help="work folder (default outputs/target-auc/<preset>/auc<target>)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    p = get_preset(args.preset)
    data_dir = args.data or f"data/{args.preset}"
    margin = anonymize_config(args.preset, privacy=args.privacy).margin
    out = Path(args.out or f"outputs/target-auc/{args.preset}/m{margin:g}-auc{args.target:g}")
    setting = pick_setting(load_calibration(checkpoint_dir(args.preset, args.checkpoints), margin), args.target)
    cfg = anonymize_config(args.preset, margin=setting["margin"], redraw=setting["redraw"])
    runs = {}
    for split, n in (("test", args.test_images), ("train", args.train_images)):
        runs[split] = out / f"anon-{split}"
        ds = data.open(data_dir, split=split, size=p.resolution, channels=p.channels)
        anonymize_dataset(cfg, ds, runs[split], checkpoints=args.checkpoints, resume=True, limit=n,
                          write_linkage=True, calibration=setting)
    m = evaluate(args.preset, data_dir, runs["test"], out / "eval", checkpoints=args.checkpoints,
                 anon_train=runs["train"], cfg=CalibrationConfig().eval)
    ada = m["privacy"]["adaptive_attacker"]
    achieved = ada["auc_own_source"]
    print(json.dumps({"preset": args.preset, "target_auc": args.target, "redraw": setting["redraw"],
                      "margin": setting["margin"], "expected_auc": setting["expected_auc"],
                      "achieved_auc_own_source": achieved, "ci95": ada.get("auc_own_source_ci95"),
                      "strongest": ada.get("strongest"), "same_patient": ada.get("auc_same_patient_other_study"),
                      "e_ut_macro_auroc": m["utility"].get("macro_auroc"),
                      "within_0.05": abs(achieved - args.target) <= 0.05}, indent=1))


if __name__ == "__main__":
    main()
