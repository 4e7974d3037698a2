"""The knob in attacker terms: picking a re-draw strength from a calibration table, and refusing what it cannot."""

import json

import pytest

from gmia.errors import ConfigError
from gmia.evaluation.calibrate import CALIBRATION_FILE, load_calibration, pick_setting, weights_of

TABLE = {"margin": 0.0, "rows": [{"redraw": 0.0, "adaptive_auc_own_source": 0.80},   # the phantoms' default level
                                 {"redraw": 0.5, "adaptive_auc_own_source": 0.70},
                                 {"redraw": 1.0, "adaptive_auc_own_source": 0.56}]}
HIGH = {"privacy": "high", "margin": -0.3, "rows": [{"redraw": 0.0, "adaptive_auc_own_source": 0.76},
                                                    {"redraw": 1.0, "adaptive_auc_own_source": 0.52}]}


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
        assert load_calibration(folder, 0.0)["rows"] == TABLE["rows"]   # a file of one table, without "tables"
        table["weights"]["aegan"] = "0" * 64
        (folder / CALIBRATION_FILE).write_text(json.dumps(table))
        with pytest.raises(ConfigError, match="other weights.*aegan.*gmia calibrate"):
            load_calibration(folder, 0.0)
    finally:
        (folder / CALIBRATION_FILE).unlink()
    with pytest.raises(ConfigError, match="calibration.json not found.*gmia calibrate"):
        load_calibration(folder, 0.0)


def test_a_table_measured_with_the_mfm_term_also_belongs_to_the_foundation_model(eval_checkpoints):
    from gmia.anonymization import anonymize_config

    folder = eval_checkpoints / "phantom-cxr64"
    without, with_term = (weights_of(folder, anonymize_config("phantom-cxr64", lambda_mdl=v, lambda_ut2=0.0))
                          for v in (0.0, 1.0))
    assert "mfm" not in without and without == weights_of(folder)
    # ... and one measured with the second utility network to that network
    assert weights_of(folder, anonymize_config("phantom-cxr64", lambda_ut2=0.2)) == {
        **without, "utility2": json.loads((folder / "utility2.json").read_text())["sha256"]}
    # the toy folder has an MFM and no decoupler: the roles present are fingerprinted
    assert with_term == {**without, "mfm": json.loads((folder / "mfm.json").read_text())["sha256"]}


def test_one_table_per_level_and_a_level_not_measured_is_named(eval_checkpoints):
    folder = eval_checkpoints / "phantom-cxr64"
    w = weights_of(folder)
    (folder / CALIBRATION_FILE).write_text(json.dumps({"tables": [{**TABLE, "weights": w}, {**HIGH, "weights": w}]}))
    try:
        assert load_calibration(folder, 0.0)["rows"] == TABLE["rows"]
        assert load_calibration(folder, -0.3)["rows"] == HIGH["rows"]
        with pytest.raises(ConfigError, match=r"no table at m = -0.7, only at: .*high \(m = -0.3\).*--privacy"):
            load_calibration(folder, -0.7)
    finally:
        (folder / CALIBRATION_FILE).unlink()


def test_target_auc_sets_the_redraw_and_refuses_the_unreachable(eval_checkpoints, eval_data):
    from click.testing import CliRunner

    from gmia.cli import cli as main

    folder = eval_checkpoints / "phantom-cxr64"
    w = weights_of(folder)
    (folder / CALIBRATION_FILE).write_text(json.dumps({"tables": [{**TABLE, "weights": w}, {**HIGH, "weights": w}]}))
    try:
        args = ["anonymize", "--input", str(eval_data), "--out", "unused", "--checkpoints", str(eval_checkpoints),
                "--dry-run"]
        ok = CliRunner().invoke(main, args + ["--target-auc", "0.63"])   # the default level's table (m = 0)
        assert ok.exit_code == 0, ok.output
        plan = json.loads(ok.stdout[ok.stdout.index("{"):])
        assert plan["config"]["redraw"] == pytest.approx(0.75) and plan["calibration"]["expected_auc"] == 0.63
        assert plan["config"]["margin"] == 0.0 == plan["calibration"]["margin"]
        far = CliRunner().invoke(main, args + ["--target-auc", "0.52"])
        assert far.exit_code != 0 and "out of reach" in far.output
        # --privacy picks the level's table, and the run goes at that level's margin
        high = CliRunner().invoke(main, args + ["--target-auc", "0.64", "--privacy", "high"])
        plan = json.loads(high.stdout[high.stdout.index("{"):])
        assert plan["config"]["margin"] == -0.3 and plan["calibration"]["margin"] == -0.3, high.output
        assert plan["config"]["redraw"] == pytest.approx(0.5)
        unmeasured = CliRunner().invoke(main, args + ["--target-auc", "0.6", "--privacy", "max"])
        assert unmeasured.exit_code != 0 and "no table at m = -0.7" in unmeasured.output
        both = CliRunner().invoke(main, args + ["--target-auc", "0.6", "--margin", "-0.1"])
        assert both.exit_code != 0 and "leave out --margin" in both.output
    finally:
        (folder / CALIBRATION_FILE).unlink()


def test_target_auc_refuses_settings_the_table_was_not_measured_with(eval_checkpoints, eval_data):
    from click.testing import CliRunner

    from gmia.anonymization import anonymize_config
    from gmia.cli import cli as main
    from gmia.evaluation.calibrate import settings_of

    folder = eval_checkpoints / "phantom-cxr64"
    settings = settings_of(anonymize_config("phantom-cxr64"))
    assert "redraw" not in settings and settings["lambda_mdl"] == 0.0
    (folder / CALIBRATION_FILE).write_text(json.dumps({"tables": [{**TABLE, "weights": weights_of(folder),
                                                                    "settings": settings}]}))
    try:
        args = ["anonymize", "--input", str(eval_data), "--out", "unused", "--checkpoints", str(eval_checkpoints),
                "--dry-run", "--target-auc", "0.63"]
        assert CliRunner().invoke(main, args).exit_code == 0                     # the preset's own settings
        assert CliRunner().invoke(main, args + ["--seed", "3"]).exit_code == 0   # the same method, other noise
        other = CliRunner().invoke(main, args + ["--lambda-mdl", "1"])
        assert other.exit_code != 0
        assert "measured with lambda_mdl=0.0; this run sets lambda_mdl=1.0" in other.output, other.output
        # a table from before a setting existed was measured at that setting's default
        older = {k: v for k, v in settings.items() if k != "lambda_ut2"}
        (folder / CALIBRATION_FILE).write_text(json.dumps({"tables": [{**TABLE, "weights": weights_of(folder),
                                                                        "settings": older}]}))
        assert CliRunner().invoke(main, args + ["--lambda-ut2", "0"]).exit_code == 0
        other = CliRunner().invoke(main, args + ["--lambda-ut2", "0.5"])
        assert other.exit_code != 0 and "measured with lambda_ut2=0.0; this run sets lambda_ut2=0.5" in other.output
    finally:
        (folder / CALIBRATION_FILE).unlink()


@pytest.mark.slow
def test_calibrate_measures_each_strength_and_writes_a_table_anonymize_can_read(tmp_path, eval_data, eval_checkpoints):
    from gmia.anonymization import anonymize_config
    from gmia.evaluation import AdaptiveConfig, EvalConfig
    from gmia.evaluation.calibrate import CalibrationConfig, calibrate

    cfg = CalibrationConfig(strengths=(0.0, 1.0), train_images=9, test_images=9, test_split="test",
                            eval=EvalConfig(bootstrap=10, adaptive=AdaptiveConfig(epochs=1, batch_size=16, seeds=1,
                                                                                  resnet_epochs=1)))
    out = tmp_path / "calibration.json"
    w = weights_of(eval_checkpoints / "phantom-cxr64", anonymize_config("phantom-cxr64"))  # the preset's networks
    stale = {**HIGH, "margin": 0.3, "weights": {**w, "aegan": "0" * 64}}
    out.write_text(json.dumps({"tables": [{**HIGH, "weights": w}, stale]}))   # another level, and a stale table
    table = calibrate("phantom-cxr64", eval_data, out, checkpoints=eval_checkpoints, cfg=cfg, work=tmp_path / "runs")
    assert [r["redraw"] for r in table["rows"]] == [0.0, 1.0]
    assert all(0 <= r["adaptive_auc_own_source"] <= 1 and r["released"] == 9 for r in table["rows"])
    # the file: the new level's table beside the other level's, the table of other weights dropped
    tables = json.loads(out.read_text())["tables"]
    assert [t["margin"] for t in tables] == [0.0, -0.3] and tables[0]["weights"] == w
    assert tables[0]["privacy"] == "medium" and tables[1]["rows"] == HIGH["rows"]
    assert tables[0]["settings"]["lambda_surrogate"] == 1.0 and "redraw" not in tables[0]["settings"]
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


@pytest.mark.parametrize("preset", ["phantom-cxr64", "phantom-face64"])
def test_the_shipped_tables_hold_for_the_shipped_presets(preset):
    """`--target-auc` on a phantom preset reads checkpoints/<preset>/calibration.json: each of its tables must be of
    the shipped weights and of the preset's stage-2 settings at its level, or a user's first `--target-auc` fails."""
    from pathlib import Path

    from gmia.anonymization import anonymize_config
    from gmia.evaluation.calibrate import check_settings, load_calibration

    folder = Path(__file__).resolve().parents[2] / "checkpoints" / preset
    tables = json.loads((folder / CALIBRATION_FILE).read_text())["tables"]
    assert {t["privacy"] for t in tables} >= {"medium", "high"}
    for t in tables:
        assert load_calibration(folder, t["margin"])["rows"], t["privacy"]    # the weights' sha256s match
        check_settings(t, anonymize_config(preset, privacy=t["privacy"]), folder / CALIBRATION_FILE)
