"""The linkage that utility costs, alone: ``gmia evaluate``'s ``privacy.floor`` for an anonymization run.

    python experiments/utility_floor.py --preset phantom-cxr64 --real data/phantom-cxr64 --anon outputs/eval/phantom-cxr64/anon-test-medium

An attacker who sees only what a useful release must keep of each image (its finding labels and, where E_ut
segments lesions, the lesion's place) and compares it with each original's: own-source and same-patient AUC
with patient-bootstrap intervals. No network is trained; seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from gmia import data, networks
from gmia.config import get_preset
from gmia.evaluation.evaluate import utility_floor
from gmia.evaluation.records import load_real, match, read_anonymized


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="phantom-cxr64")
    ap.add_argument("--real", default="data/phantom-cxr64")
    ap.add_argument("--anon", required=True)
    ap.add_argument("--bootstrap", type=int, default=500)
    args = ap.parse_args()
    p = get_preset(args.preset)
    real = data.open(args.real, size=p.resolution, channels=p.channels)
    cohort = match(real, read_anonymized(args.anon))
    segments = getattr(networks.load(args.preset, "utility"), "has_segmentation", False)
    masks = gal_masks = None
    if segments and real.has_masks:
        masks = load_real(real, cohort.anon_source, with_masks=True)[1]
        gal_masks = load_real(real, cohort.gallery, with_masks=True)[1]
    floor = utility_floor(real, cohort, masks, gal_masks, dict(bootstrap=args.bootstrap, max_negatives=20000, seed=0))
    keys = ("auc_own_source", "auc_own_source_ci95", "auc_same_patient_other_study",
            "auc_same_patient_other_study_ci95", "view", "n_probes")
    print(json.dumps({k: floor.get(k) for k in keys}, indent=1, default=lambda v: np.asarray(v).tolist()))


if __name__ == "__main__":
    main()
