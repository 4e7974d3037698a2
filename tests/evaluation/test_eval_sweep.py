"""The margin sweep end to end (real stage 2 on toy networks) and its helpers."""

import csv
import json

import pytest

from gmia.errors import ConfigError
from gmia.evaluation import AdaptiveConfig, EvalConfig
from gmia.evaluation.sweep import is_monotone, parse_margins, sweep


def test_parse_margins():
    assert parse_margins("0.3, 0,-0.3") == [0.3, 0.0, -0.3]
    with pytest.raises(ConfigError, match="cosines"):
        parse_margins("2")
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_margins("a,b")


def test_monotone_check():
    rows = [{"margin": 0.3, "attacker_auc_own_source": 0.9}, {"margin": 0.0, "attacker_auc_own_source": 0.7},
            {"margin": -0.3, "attacker_auc_own_source": 0.705}]
    assert is_monotone(rows, tolerance=0.01) and not is_monotone(rows, tolerance=0.0)


@pytest.mark.slow
def test_sweep_writes_curve(tmp_path, eval_data, eval_checkpoints):
    # margins near 1 are always met by random toy networks, so every image is released after a few steps
    rows = sweep("phantom-cxr64", [1.0, 0.95], eval_data, tmp_path, checkpoints=eval_checkpoints, limit=9,
                 eval_cfg=EvalConfig(bootstrap=0, adaptive=AdaptiveConfig(epochs=1, batch_size=16, seeds=1,
                                                                           architectures=("attacker",))),
                 device="cpu", progress=False, train_images=12,
                 anonymize_overrides={"max_steps": 3, "batch_size": 9, "patience": 1, "hinge_slack": 0.0})
    assert [r["margin"] for r in rows] == [1.0, 0.95]
    assert all(r["released"] == 9 and r["attacker_auc_own_source"] is not None for r in rows)
    # the curve also shows the attacker who knows the method: retrained on training patients anonymized alike
    assert all(r["adaptive_auc_own_source"] is not None for r in rows)
    assert (tmp_path / "m+0.95" / "anon-train" / "manifest.jsonl").is_file()
    with open(tmp_path / "curve.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and "utility_macro_auroc" in table[0]
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert "monotone_attacker_auc" in json.loads((tmp_path / "curve.json").read_text())
    assert (tmp_path / "m+1.00" / "eval" / "metrics.json").is_file()
