"""Realism of the phantom benchmark: a learned re-identifier beats chance by far, raw-pixel nearest
neighbour does much worse, every finding is learnable and none is determined by identity.
Run with `-s` to see the numbers (about 5 minutes per domain on one CPU thread)."""

import json

import pytest

from gmia.data import phantoms
from gmia.data.phantoms.realism import check


def _rounded(r: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else
            {n: round(x, 3) for n, x in v.items()} if isinstance(v, dict) else v for k, v in r.items()}


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize("domain", ["cxr", "face"])
def test_phantoms_are_hard_the_way_real_data_is(domain):
    # re-identification needs many training patients (420 here); 180 held-out patients are the gallery
    ps = phantoms.generate(domain, patients=600, studies=4, size=64, seed=11)
    r = check(ps, epochs=10, seed=0, test_fraction=0.3)
    print(f"\n[{domain}] " + json.dumps(_rounded(r)))
    # (a) a small CNN re-identifies held-out patients across studies far above chance
    assert r["cnn_rank1"] >= 10 * r["chance"]
    assert r["cnn_verification_auc"] >= 0.85
    # (b) raw-pixel nearest neighbour does much worse: identity is in the structure, not the brightness
    assert r["pixel_nn_rank1"] <= r["cnn_rank1"] / 2
    assert r["pixel_verification_auc"] <= r["cnn_verification_auc"] - 0.1
    # (c) each finding is learnable ...
    for name, auc in r["finding_auroc"].items():
        assert auc >= 0.8, f"{name} not learnable: AUROC {auc:.3f}"
    # ... and not determined by identity
    for name, auc in r["finding_from_identity_auroc"].items():
        assert 0.35 <= auc <= 0.65, f"{name} predictable from identity: AUROC {auc:.3f}"
    for name, frac in r["finding_varies_within_patient"].items():
        assert frac >= 0.3, f"{name} is (nearly) constant within patients"
