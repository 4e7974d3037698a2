"""What the adaptive attacker sees under each stage-2 variant: anonymize, retrain the attacker, attack.

    python experiments/adaptive_attack.py --variants fast-high,fast-max,surrogate-high-t07 --test 64 --train 192

Per variant: anonymize the first ``--test`` test images and the first ``--train`` training images (shipped
phantom-cxr64 weights), then ``gmia evaluate`` with the training run as the adaptive attacker's material, and
print one row: the independent attacker's AUC (own source) and its *linkability* max(AUC, 1 − AUC) — an AUC far
below 0.5 means the images are systematically unlike their source, which an attacker exploits by reversing the
ranking — the adaptive attacker's AUC with its 95% interval, and E_ut's macro AUROC. Writes
``OUT/adaptive_attack.json``. A variant is a name and the anonymize flags it sets (``VARIANTS`` below); runs
are resumable, so a rerun only evaluates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


from gmia.anonymization import anonymize_config, anonymize_dataset
from gmia.data.datasets import PhantomFolder
from gmia.evaluation.evaluate import EvalConfig, evaluate
from gmia.machine import set_threads

VARIANTS = {
    # the preset as shipped (surrogate cosine 0.9, E(x) start, lr 0.1, patience 10) at m = -0.3
    "default": dict(),
    # hinge only, w_0 refined 50 steps, lr 0.03, utility polish (patience 20)
    "hinge-refined-polish": dict(lambda_surrogate=0.0, refine_steps=50, lr=0.03, patience=20),
    # hinge only, stop at the hinge from E(x) (--speed fast), at growing margins
    "fast-high": dict(speed="fast"),
    "fast-m05": dict(speed="fast", margin=-0.5),
    "fast-max": dict(speed="fast", privacy="max"),
    # the refined start and the utility polish, one at a time
    "fast-high-refine50": dict(speed="fast", refine_steps=50),
    "fast-high-patience20": dict(speed="fast", patience=20),
    # surrogate identities (gmia/anonymization/surrogate.py): target cosine and margin
    "surrogate-high-t05": dict(speed="fast", patience=10, lambda_surrogate=1.0, surrogate_cos=0.5),
    "surrogate-high-t07": dict(speed="fast", patience=10, lambda_surrogate=1.0, surrogate_cos=0.7),
    "surrogate-medium-t05": dict(speed="fast", patience=10, lambda_surrogate=1.0, surrogate_cos=0.5, privacy="medium"),
    "surrogate-medium-t07": dict(speed="fast", patience=10, lambda_surrogate=1.0, surrogate_cos=0.7, privacy="medium"),
}


def run_variant(name: str, flags: dict, data: Path, out: Path, n_test: int, n_train: int, threads: int) -> dict:
    cfg = anonymize_config("phantom-cxr64", **flags)
    runs = {}
    for split, limit in (("test", n_test), ("train", n_train)):
        runs[split] = out / name / split
        anonymize_dataset(cfg, PhantomFolder(data, split=split), runs[split], limit=limit, write_linkage=True,
                          resume=runs[split].exists(), progress=False)
    m = evaluate("phantom-cxr64", data, runs["test"], out / name / "metrics", anon_train=runs["train"],
                 cfg=EvalConfig(bootstrap=200))
    p = m["privacy"]
    att, ada = p["attacker"], p["adaptive_attacker"]
    return {"variant": name, "flags": flags, "config": dataclasses.asdict(cfg),
            "attacker_auc_own_source": att["auc_own_source"],
            "attacker_linkability": max(att["auc_own_source"], 1 - att["auc_own_source"]),
            "adaptive_auc_own_source": ada["auc_own_source"], "adaptive_ci95": ada["auc_own_source_ci95"],
            "adaptive_auc_other_study": ada["auc_same_patient_other_study"],
            "utility_macro_auroc": m["utility"]["macro_auroc"],
            "ssim": m["fidelity"]["anonymized_vs_source"].get("ssim")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="fast-high,fast-max,surrogate-high-t05,surrogate-high-t07")
    ap.add_argument("--data", default="data/phantom-cxr64")
    ap.add_argument("--out", default="outputs/adaptive-attack")
    ap.add_argument("--test", type=int, default=64)
    ap.add_argument("--train", type=int, default=192)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    out = Path(args.out)
    rows = []
    for name in args.variants.split(","):
        rows.append(run_variant(name, VARIANTS[name], Path(args.data), out, args.test, args.train, args.threads))
        r = rows[-1]
        print(f"{name:22s} attacker AUC {r['attacker_auc_own_source']:.3f} (linkability "
              f"{r['attacker_linkability']:.3f})  adaptive {r['adaptive_auc_own_source']:.3f} "
              f"[{r['adaptive_ci95'][0]:.3f}, {r['adaptive_ci95'][1]:.3f}]  utility {r['utility_macro_auroc']:.4f}",
              flush=True)
    (out / "adaptive_attack.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
