"""evaluate(): the attack is real on the worst anonymizer (identity) and at chance on noise; keys and files."""

import json

import numpy as np
import pytest

from gmia.errors import InputError
from gmia.evaluation import EvalConfig, evaluate
from gmia.evaluation.records import read_anonymized



@pytest.fixture
def identity_metrics(identity_eval):
    return identity_eval


def test_identity_anonymizer_is_fully_reidentified(identity_metrics):
    out, m = identity_metrics
    atk = m["privacy"]["attacker"]
    # an 'anonymized' image identical to its source has cos 1 with it: AUC and rank-1 with the source are perfect
    assert atk["auc_own_source"] == pytest.approx(1.0)
    assert atk["rank1_with_source"] == pytest.approx(1.0)
    lo, hi = atk["auc_own_source_ci95"]
    assert lo <= 1.0 <= hi + 1e-9
    # the attacker on anonymized images sees exactly what it sees on the originals
    assert atk["auc_same_patient_other_study"] == pytest.approx(
        m["control"]["attacker_on_originals"]["auc_same_patient_other_study"])
    assert m["record_privacy"]["hidden_rate"] == pytest.approx(0.0)
    assert m["fidelity"]["anonymized_vs_source"]["psnr"] == pytest.approx(100.0)
    assert m["utility"]["macro_auroc"] == pytest.approx(m["utility"]["macro_auroc_originals"])


def test_metrics_json_sections_and_keys(identity_metrics):
    out, m = identity_metrics
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["privacy"]["attacker"]["auc_own_source"] == pytest.approx(1.0)
    for section in ("privacy", "control", "utility", "fidelity", "record_privacy", "inputs", "networks"):
        assert section in on_disk
    for key in ("auc_own_source", "auc_own_source_ci95", "auc_same_patient_other_study", "rank1", "rank5",
                "n_pairs_different_patient"):
        assert key in on_disk["privacy"]["attacker"]
    assert "optimizer's own" in on_disk["privacy"]["e_id"]["view"]
    adaptive = on_disk["privacy"]["adaptive_attacker"]
    assert "auc_own_source" in adaptive and adaptive["training"]["patients"] == 4
    # two families, and the reported run is the strongest of them (two-sided own-source linkability)
    assert {r["architecture"] for r in adaptive["runs"]} == {"attacker", "resnet"}
    assert adaptive["auc_own_source_linkability"] == max(r["auc_own_source_linkability"] for r in adaptive["runs"])
    assert adaptive["strongest"]["architecture"] in ("attacker", "resnet")
    floor = on_disk["privacy"]["floor"]   # labels and masks only: an attack no useful release can avoid
    assert 0.0 <= floor["auc_own_source"] <= 1.0 and "lesion masks" in floor["view"]
    assert "auc_own_source" in on_disk["control"]["attacker"]                       # reconstructions
    u = on_disk["utility"]
    assert set(u["per_finding"]) == {"finding_a", "finding_b"}
    assert u["train_on_anonymized"]["protocol"].startswith("anon-train")
    assert "gap" in u["train_on_anonymized"] and "mfm" in u["train_on_anonymized"]["features"]
    assert "dice_anonymized" in u["lesion_dice"]
    # the ResNet-18 needs a real training set (tests/evaluation/test_classifier.py); this toy one is too small
    assert "training originals" in u["independent_classifier"]["skipped"]
    assert "training originals with masks" in u["independent_segmenter"]["skipped"]
    f = on_disk["fidelity"]
    assert f["perceptual"] in ("lpips", "mfm_feature_distance")
    assert f["frechet"]["anonymized_vs_originals"] == pytest.approx(0.0, abs=1e-6)
    assert f["frechet"]["reconstructions_vs_originals"] > 0
    r = on_disk["record_privacy"]
    assert {"dcr_median", "dcr_holdout_median", "nndr_mean", "hidden_rate", "hidden_rate_patient"} <= set(r)
    assert on_disk["inputs"]["manifest"] == {"released": 17, "withheld": 1, "error": 0}
    assert (out / "examples.png").stat().st_size > 1000 and (out / "roc.png").is_file()


def test_noise_anonymizer_is_at_chance(tmp_path, eval_data, anon_noise, eval_checkpoints):
    m = evaluate("phantom-cxr64", eval_data, anon_noise, tmp_path / "noise", checkpoints=eval_checkpoints,
                 cfg=EvalConfig(bootstrap=0), device="cpu")
    atk = m["privacy"]["attacker"]
    assert 0.2 < atk["auc_own_source"] < 0.8         # 17 positives: chance within sampling error
    assert m["privacy"]["adaptive_attacker"]["skipped"].startswith("no anonymized training-patient set")
    assert m["utility"]["train_on_anonymized"]["protocol"].startswith("patient-2fold")
    assert m["record_privacy"]["hidden_rate"] > 0.5
    assert m["fidelity"]["anonymized_vs_source"]["psnr"] < 15


def test_missing_linkage_is_a_clear_error(tmp_path, anon_identity):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(anon_identity, copy)
    (copy / "private" / "linkage.csv").unlink()
    with pytest.raises(InputError, match="--write-linkage"):
        read_anonymized(copy)


def test_frechet_distance_matches_closed_form():
    from gmia.evaluation.fidelity import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    b = rng.standard_normal((4000, 3)) * 2 + 1
    # N(0, I) vs N(1, 4I) in 3-D: |mu|^2 = 3, tr = 3 + 12 - 2 * 3 * 2 = 3 -> 6
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_anti_similar_images_are_reported_as_linkable():
    """Images pushed to the opposite of their source (AUC << 0.5) are as linkable as copies: linkability ~ 1."""
    import numpy as np

    from gmia.evaluation.privacy import reid_metrics

    rng = np.random.default_rng(0)
    n = 30
    gallery = rng.standard_normal((n, 16)).astype(np.float32)
    ids = np.arange(n)
    out = reid_metrics(-gallery, ids, ids, gallery, ids, ids)
    assert out["auc_own_source"] < 0.05 and out["auc_own_source_linkability"] > 0.95


def test_release_membership_scores_patients_in_the_release_above_outsiders():
    from gmia.evaluation.evaluate import release_membership

    rng = np.random.default_rng(0)
    released = rng.standard_normal((10, 8))
    members = released + 0.1 * rng.standard_normal((10, 8))        # originals of the released patients
    outsiders = rng.standard_normal((10, 8))
    m = release_membership(released, members, outsiders)
    assert m["auc"] > 0.9 and m["members"] == 10 and m["outsiders"] == 10
    assert release_membership(released, members, np.zeros((0, 8)))["skipped"]


def test_learning_rows_drop_evaluated_patients_and_follow_the_sources_not_the_pseudonyms():
    from types import SimpleNamespace

    from gmia.evaluation.evaluate import learning_rows

    evaluated = SimpleNamespace(anon_patient=np.array(["p9"]))
    run_a = SimpleNamespace(anon_patient=np.array(["p1", "p9", "p2", "p1"]), anon_source=np.array([7, 3, 5, 1]))
    # the same records released under other pseudonyms: another row order
    run_b = SimpleNamespace(anon_patient=np.array(["p2", "p1", "p1", "p9"]), anon_source=np.array([5, 1, 7, 3]))
    rows_a, rows_b = learning_rows(run_a, evaluated), learning_rows(run_b, evaluated)
    assert run_a.anon_source[rows_a].tolist() == run_b.anon_source[rows_b].tolist() == [1, 5, 7]
