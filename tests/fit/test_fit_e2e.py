"""`gmia fit` end to end on 256-px chest phantoms: a MIMIC-CXR-JPG tree and a labelled folder of your own, each
fitted with the tiny variant of gmia-cxr256 (the same stages and code paths, toy widths and steps) on the CPU,
then anonymized with `gmia anonymize --checkpoints OUT` as it is."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gmia.checkpoints import read_card
from gmia.cli import cli
from gmia.fit import DataSpec, fit, recipe

from tests.fit.conftest import TINY_SETTINGS, fit_args

ROLES = ("aegan", "identity", "utility", "utility2", "mfm", "attacker", "decoupler", "latent-prior", "latent-split")


def _anonymize(data_args, ckpt, out, *extra):
    args = ["anonymize", "--preset", "gmia-cxr256", *data_args, "--checkpoints", str(ckpt), "--out", str(out),
            "--limit", "6", "--margin", "0.3", "--max-steps", "20", "--batch-size", "6", "--quiet", *extra]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


def _check_release(out, n):
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == n and {r["status"] for r in rows} <= {"released", "withheld"}  # complete, no error
    released = [r for r in rows if r["status"] == "released"]
    assert released, rows
    for r in released:  # the gate re-checked the saved file against the margin
        assert r["cos_id_saved"] <= 0.3 + 1e-6
        assert (out / "images" / f"{r['pseudonym']}.png").is_file()
    return rows


@pytest.mark.slow
def test_mimic_tree_fit_then_anonymize(fitted_mimic, mimic_root, tmp_path):
    out, summary = fitted_mimic
    stages = [s.name for s in recipe("gmia-cxr256")]
    assert [r["stage"] for r in summary["stages"]] == stages
    assert all(r["status"] == "trained" for r in summary["stages"])
    for name in ROLES:  # the checkpoint folder: every card, each with the stage and key that made it
        card = read_card(out, name)
        fit_meta = card["meta"]["fit"]
        assert fit_meta["key"] and fit_meta["data"]["fingerprint"] == summary["data"]["fingerprint"]
    assert read_card(out, "aegan")["meta"]["metrics"]["test_split"]["test_images"] > 0  # the stage-1 report
    splits = json.loads((out / "splits.json").read_text())
    assert sum(splits["counts"].values()) == 40 and min(splits["counts"].values()) >= 2
    assert not set(splits["patients"]["train"]) & set(splits["patients"]["test"])
    assert summary["data"]["images"] == 80  # the lateral view is not a training image

    again = fit("gmia-cxr256", DataSpec(dataset="mimic", data_root=str(mimic_root)), out, **TINY_SETTINGS)
    assert {r["status"] for r in again["stages"]} == {"skipped"}  # nothing changed: nothing trains

    anon = _anonymize(["--dataset", "mimic", "--data-root", str(mimic_root)], out, tmp_path / "anon")
    _check_release(anon, 6)
    # the fit folder holds the second utility network too: its term runs on it
    anon2 = _anonymize(["--dataset", "mimic", "--data-root", str(mimic_root)], out, tmp_path / "anon2",
                       "--lambda-ut2", "0.2")
    _check_release(anon2, 6)
    assert "utility2" in json.loads((anon2 / "run.json").read_text())["checkpoints"]
    run = json.loads((anon / "run.json").read_text())
    assert run["checkpoints"]["aegan"] == read_card(out, "aegan")["sha256"]
    # the folder holds the latent split too: the re-drawn start (--redraw, --target-auc) runs on it as it is
    redrawn = _anonymize(["--dataset", "mimic", "--data-root", str(mimic_root)], out, tmp_path / "redrawn",
                         "--redraw", "1")
    _check_release(redrawn, 6)
    assert json.loads((redrawn / "run.json").read_text())["config"]["redraw"] == 1.0


@pytest.mark.slow
def test_labelled_folder_through_the_cli(labelled_root, tmp_path):
    out = tmp_path / "models"
    data = ["--input", str(labelled_root), "--labels", str(labelled_root / "findings.csv"), "--image-column", "path",
            "--patient-column", "mrn"]
    res = CliRunner().invoke(cli, ["fit", "--preset", "gmia-cxr256", *data, "--out", str(out), *fit_args()],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert read_card(out, "utility")["kwargs"]["finding_names"] == ["lung_opacity", "pleural_effusion", "cardiomegaly"]
    splits = json.loads((out / "splits.json").read_text())
    assert set(sum(splits["patients"].values(), [])) == {f"MRN-{p:04d}" for p in range(40)}
    anon = _anonymize(data, out, tmp_path / "anon")
    rows = _check_release(anon, 6)
    header = (anon / "labels.csv").read_text().splitlines()[0]
    assert header.split(",")[1:] == ["lung_opacity", "pleural_effusion", "cardiomegaly"]  # labels travel
    assert not any("MRN" in json.dumps(r) for r in rows)


def test_dry_run_lists_the_stages_and_the_splits(mimic_root, tmp_path):
    res = CliRunner().invoke(cli, ["fit", "--preset", "gmia-cxr256", "--dataset", "mimic", "--data-root",
                                   str(mimic_root), "--out", str(tmp_path / "m"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "splits (patients ordered by sha256" in res.output and "32 patients" in res.output
    for name in ("identity", "utility", "mfm", "attacker", "decoupler", "aegan", "prior", "split", "report"):
        assert f" {name} " in res.output
    assert not (tmp_path / "m").exists()  # a dry run writes nothing


def test_unlabelled_folder_says_how_to_get_a_utility_network(cxr256, tmp_path):
    from PIL import Image

    from tests.fit.conftest import _uint8

    for i in range(16):
        Image.fromarray(_uint8(cxr256.images[i, 0])).save(tmp_path / f"{i:02d}.png")
    # every image its own patient: enough for splits; no labels, so E_ut cannot be trained
    res = CliRunner().invoke(cli, ["fit", "--input", str(tmp_path), "--out", str(tmp_path / "m"), "--only",
                                   "utility", *fit_args()])
    assert res.exit_code != 0 and "no finding labels, so E_ut cannot be trained" in res.output
    assert "gmia import-weights utility" in res.output
