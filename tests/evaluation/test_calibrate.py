"""The knob in attacker terms: picking a re-draw strength from a calibration table, and refusing what it cannot."""

import json

import pytest

from gmia.errors import ConfigError
from gmia.evaluation.calibrate import CALIBRATION_FILE, load_calibration, pick_setting, weights_of

TABLE = {"rows": [{"redraw": 0.0, "adaptive_auc_own_source": 0.80},
                  {"redraw": 0.5, "adaptive_auc_own_source": 0.70},
                  {"redraw": 1.0, "adaptive_auc_own_source": 0.56}]}


def test_pick_interpolates_between_measured_strengths():
    s = pick_setting(TABLE, 0.63)
    assert s["redraw"] == pytest.approx(0.75) and s["expected_auc"] == pytest.approx(0.63)
    assert pick_setting(TABLE, 0.70)["redraw"] == pytest.approx(0.5)
    # a target the weakest setting already meets: no re-draw at all, and the AUC it is expected to give
    weak = pick_setting(TABLE, 0.9)
    assert weak["redraw"] == 0.0 and weak["expected_auc"] == pytest.approx(0.80)


def test_pick_refuses_a_target_the_table_cannot_reach():
    with pytest.raises(ConfigError, match=r"out of reach.*0\.560"):
        pick_setting(TABLE, 0.52)


def test_pick_never_credits_a_stronger_setting_with_less_privacy():
    bumpy = {"rows": [{"redraw": 0.0, "adaptive_auc_own_source": 0.8},
                      {"redraw": 0.5, "adaptive_auc_own_source": 0.6},
                      {"redraw": 1.0, "adaptive_auc_own_source": 0.65}]}   # noise: a bump up at 1.0
    assert pick_setting(bumpy, 0.6)["redraw"] == pytest.approx(0.5)
    assert pick_setting(bumpy, 0.7)["redraw"] == pytest.approx(0.25)


def test_a_table_of_other_weights_is_refused(eval_checkpoints):
    folder = eval_checkpoints / "phantom-cxr64"
    table = {**TABLE, "weights": weights_of(folder)}
    (folder / CALIBRATION_FILE).write_text(json.dumps(table))
    try:
        assert load_calibration(folder)["rows"] == TABLE["rows"]
        table["weights"]["aegan"] = "0" * 64
        (folder / CALIBRATION_FILE).write_text(json.dumps(table))
        with pytest.raises(ConfigError, match="other weights.*aegan.*gmia calibrate"):
            load_calibration(folder)
    finally:
        (folder / CALIBRATION_FILE).unlink()
    with pytest.raises(ConfigError, match="calibration.json not found.*gmia calibrate"):
        load_calibration(folder)


def test_target_auc_sets_the_redraw_and_refuses_the_unreachable(eval_checkpoints, eval_data):
    from click.testing import CliRunner

    from gmia.cli import cli as main

    folder = eval_checkpoints / "phantom-cxr64"
    (folder / CALIBRATION_FILE).write_text(json.dumps({**TABLE, "weights": weights_of(folder)}))
    try:
        args = ["anonymize", "--input", str(eval_data), "--out", "unused", "--checkpoints", str(eval_checkpoints),
                "--dry-run"]
        ok = CliRunner().invoke(main, args + ["--target-auc", "0.63"])
        assert ok.exit_code == 0, ok.output
        plan = json.loads(ok.stdout[ok.stdout.index("{"):])
        assert plan["config"]["redraw"] == pytest.approx(0.75) and plan["calibration"]["expected_auc"] == 0.63
        far = CliRunner().invoke(main, args + ["--target-auc", "0.52"])
        assert far.exit_code != 0 and "out of reach" in far.output
        both = CliRunner().invoke(main, args + ["--target-auc", "0.6", "--privacy", "max"])
        assert both.exit_code != 0 and "leave out --privacy" in both.output
        # the table's margin is part of the setting: a table measured at another level than the default runs there
        (folder / CALIBRATION_FILE).write_text(json.dumps({**TABLE, "margin": -0.5, "weights": weights_of(folder)}))
        at = CliRunner().invoke(main, args + ["--target-auc", "0.63"])
        plan = json.loads(at.stdout[at.stdout.index("{"):])
        assert plan["config"]["margin"] == -0.5 and plan["calibration"]["margin"] == -0.5, at.output
    finally:
        (folder / CALIBRATION_FILE).unlink()


@pytest.mark.slow
def test_calibrate_measures_each_strength_and_writes_a_table_anonymize_can_read(tmp_path, eval_data, eval_checkpoints):
    from gmia.evaluation import AdaptiveConfig, EvalConfig
    from gmia.evaluation.calibrate import CalibrationConfig, calibrate

    cfg = CalibrationConfig(strengths=(0.0, 1.0), train_images=9, test_images=9, test_split="test",
                            eval=EvalConfig(bootstrap=10, adaptive=AdaptiveConfig(epochs=1, batch_size=16, seeds=1,
                                                                                  resnet_epochs=1)))
    out = tmp_path / "calibration.json"
    table = calibrate("phantom-cxr64", eval_data, out, checkpoints=eval_checkpoints, cfg=cfg, work=tmp_path / "runs")
    assert [r["redraw"] for r in table["rows"]] == [0.0, 1.0]
    assert all(0 <= r["adaptive_auc_own_source"] <= 1 and r["released"] == 9 for r in table["rows"])
    assert json.loads(out.read_text())["weights"] == weights_of(eval_checkpoints / "phantom-cxr64")
    runs = tmp_path / "runs" / f"m{table['margin']:g}"   # one folder per margin: its runs are other images
    assert (runs / "redraw1.00" / "train" / "manifest.jsonl").is_file()
    # every row at the table's margin, the E(x) row included (its own default level would be another)
    assert {json.loads((runs / f"redraw{s:.2f}" / "test" / "run.json").read_text())["config"]["margin"]
            for s in (0.0, 1.0)} == {table["margin"]}
    # a rerun finishes a killed calibration: what was measured is read back, not measured again
    measured = runs / "redraw0.00" / "eval" / "metrics.json"
    stamp = measured.stat().st_mtime_ns
    again = calibrate("phantom-cxr64", eval_data, out, checkpoints=eval_checkpoints, cfg=cfg, work=tmp_path / "runs")
    assert measured.stat().st_mtime_ns == stamp and again["rows"] == table["rows"]
