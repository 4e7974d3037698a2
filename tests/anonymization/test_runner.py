"""The dataset runner: outputs, privacy gate, bad input, resume after a crash, batch-size independence."""

import dataclasses
import json

import numpy as np
import torch
import pytest
from click.testing import CliRunner
from PIL import Image

from gmia.anonymization import anonymize_config, anonymize_dataset
from gmia.anonymization import runner as runner_module
from gmia.anonymization.optimizer import LatentOptimizer
from gmia.anonymization.outputs import RunFolder
from gmia.anonymization.runner import fresh, schedule
from gmia.cli import cli
from gmia.data.datasets import PhantomFolder
from gmia.errors import ConfigError


def _cfg(**kw):
    # m = 1 is always met: images are released after a few utility-only steps (a real, nontrivial trajectory).
    # fp32: the runner's outputs are compared across batch sizes, and bf16 (the preset's, on CPUs that have it)
    # rounds differently per batch shape
    base = dict(margin=1.0, privacy=None, hinge_slack=0.0, patience=3, utility_ratio=0.0, max_steps=6, lr=0.05,
                batch_size=4, refine_steps=2, precision="fp32")
    return dataclasses.replace(anonymize_config("phantom-cxr64"), **{**base, **kw})


def _run(tmp_path, name, ckpt, data, cfg=None, **kw):
    out = tmp_path / name
    summary = anonymize_dataset(cfg or _cfg(), PhantomFolder(data), out, checkpoints=ckpt, progress=False,
                                write_linkage=True, **kw)
    return out, summary


def _images_by_source(out):
    link = dict(line.split(",") for line in (out / "private" / "linkage.csv").read_text().splitlines()[1:])
    return {src: np.asarray(Image.open(out / "images" / f"{p}.png"), dtype=np.int16)
            for src, p in link.items() if (out / "images" / f"{p}.png").exists()}


def test_outputs_and_no_identifiers_in_released_files(tmp_path, tiny_checkpoints, phantom_dir):
    out, summary = _run(tmp_path, "anon", tiny_checkpoints, phantom_dir)
    assert summary["released"] == summary["records"] == 12
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 12 and [r["pseudonym"] for r in manifest] == sorted(r["pseudonym"] for r in manifest)
    assert all(r["status"] == "released" and r["cos_id_saved"] <= 1.0 and r["steps"] >= 1 for r in manifest)
    labels = (out / "labels.csv").read_text().splitlines()
    assert labels[0] == "image,finding_a,finding_b" and len(labels) == 13
    run = json.loads((out / "run.json").read_text())
    assert set(run["checkpoints"]) == {"aegan", "identity", "utility", "utility2", "latent_prior", "latent_split"}
    assert run["summary"]["released"] == 12
    # nothing public names a patient, a study or a source file
    meta = (phantom_dir / "metadata.csv").read_text().splitlines()[1:]
    sources = [row.split(",")[0] for row in meta]
    forbidden = {s for s in sources} | {s.split("/")[-1] for s in sources} | {s.split("/")[-1][:-4] for s in sources}
    forbidden |= {row.split(",")[2] for row in meta}                      # patient ids, e.g. p00001
    public = [out / "manifest.jsonl", out / "labels.csv", out / "run.json", *(out / "images").iterdir()]
    for path in public:
        blob = path.read_bytes().decode("latin-1") + path.name
        assert not [f for f in forbidden if f in blob], path
    assert {p.stat().st_mtime for p in (out / "images").iterdir()} == {946684800}


def test_existing_output_is_never_overwritten(tmp_path, tiny_checkpoints, phantom_dir):
    out, _ = _run(tmp_path, "anon", tiny_checkpoints, phantom_dir, limit=2)
    with pytest.raises(ConfigError, match="--resume"):
        _run(tmp_path, "anon", tiny_checkpoints, phantom_dir, limit=2)
    with pytest.raises(ConfigError, match="different settings.*margin"):
        _run(tmp_path, "anon", tiny_checkpoints, phantom_dir, cfg=_cfg(margin=0.5), resume=True)
    with pytest.raises(ConfigError, match="different settings.*precision"):  # bf16 changes the pixels too
        _run(tmp_path, "anon", tiny_checkpoints, phantom_dir, cfg=_cfg(precision="bf16"), resume=True)
    # the batch size does not change what a record becomes: a resume may use another one
    _run(tmp_path, "anon", tiny_checkpoints, phantom_dir, cfg=_cfg(batch_size=1), resume=True, limit=2)
    # a run made before a setting existed resumes when the setting keeps its old behaviour (its default) ...
    old, _ = _run(tmp_path, "old", tiny_checkpoints, phantom_dir, cfg=_cfg(redraw=0.0), limit=2)
    run = json.loads((old / "run.json").read_text())
    del run["result_config"]["redraw"]
    (old / "run.json").write_text(json.dumps(run))
    _run(tmp_path, "old", tiny_checkpoints, phantom_dir, cfg=_cfg(redraw=0.0), resume=True, limit=3)
    # ... and not when it asks for something the old run did not do
    with pytest.raises(ConfigError, match="different settings.*redraw"):
        _run(tmp_path, "old", tiny_checkpoints, phantom_dir, cfg=_cfg(redraw=0.5), resume=True)


def test_gate_withholds_what_it_cannot_fix(tmp_path, tiny_checkpoints, phantom_dir, monkeypatch):
    real = runner_module.write_and_check

    def failing_gate(*args, **kwargs):       # every saved file comes back above the margin
        results = real(*args, **kwargs)
        for r in results:
            r.passed, r.cos_saved = False, 1.0
        return results

    monkeypatch.setattr(runner_module, "write_and_check", failing_gate)
    out, summary = _run(tmp_path, "anon", tiny_checkpoints, phantom_dir, limit=3)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert summary["withheld"] == 3 and summary["released"] == 0
    assert all(r["status"] == "withheld" and "after 2 retries" in r["reason"] and r["attempts"] == 3 for r in manifest)
    assert not list((out / "images").iterdir()) and not list((out / "private").glob("staging*"))  # none left
    assert (out / "labels.csv").read_text().splitlines() == ["image,finding_a,finding_b"]


def test_unreachable_margin_is_withheld_with_a_reason(tmp_path, tiny_checkpoints, phantom_dir):
    out, summary = _run(tmp_path, "anon", tiny_checkpoints, phantom_dir, cfg=_cfg(margin=-1.0, max_steps=2), limit=2)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert summary["withheld"] == 2 and all("not private after 2 steps" in r["reason"] for r in rows)


def test_bad_input_is_recorded_and_the_run_goes_on(tmp_path, tiny_checkpoints, phantom_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    victim = sorted((data / "images").iterdir())[1]
    victim.write_bytes(b"not a png")
    out = tmp_path / "anon"
    res = CliRunner().invoke(cli, ["anonymize", "--input", str(data), "--out", str(out), "--checkpoints",
                                   str(tiny_checkpoints), "--margin", "1.0", "--max-steps", "2", "--quiet",
                                   "--fail-on-error"])
    assert res.exit_code == 3, res.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    errors = [r for r in rows if r["status"] == "error"]
    assert len(rows) == 12 and len(errors) == 1 and "cannot read image" in errors[0]["error"]
    assert victim.name not in (out / "manifest.jsonl").read_text()           # public row: no source name
    private = json.loads((out / "private" / "errors.jsonl").read_text())
    assert private["source"].endswith(victim.name)                            # private: says which file


class _Crash(Exception):
    pass


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, tiny_checkpoints, phantom_dir, monkeypatch):
    whole, _ = _run(tmp_path, "whole", tiny_checkpoints, phantom_dir)
    calls = {"n": 0}
    real_record = RunFolder.record

    def crashing_record(self, row, *a, **k):  # dies after 5 records, once an image of the 6th is already released
        calls["n"] += 1
        if calls["n"] == 6:
            raise _Crash
        return real_record(self, row, *a, **k)

    monkeypatch.setattr(RunFolder, "record", crashing_record)
    with pytest.raises(_Crash):
        _run(tmp_path, "killed", tiny_checkpoints, phantom_dir)
    monkeypatch.setattr(RunFolder, "record", real_record)
    out, summary = _run(tmp_path, "killed", tiny_checkpoints, phantom_dir, resume=True)
    assert summary["this_call"]["released"] == 7 and summary["released"] == 12
    assert len(list((out / "images").iterdir())) == 12 and len((out / "manifest.jsonl").read_text().splitlines()) == 12
    a, b = _images_by_source(whole), _images_by_source(out)
    assert a.keys() == b.keys() and max(np.abs(a[k] - b[k]).max() for k in a) <= 1


def test_outputs_do_not_depend_on_batch_size_or_shard(tmp_path, tiny_checkpoints, phantom_dir):
    one, _ = _run(tmp_path, "b1", tiny_checkpoints, phantom_dir, cfg=_cfg(batch_size=1))
    five, _ = _run(tmp_path, "b5", tiny_checkpoints, phantom_dir, cfg=_cfg(batch_size=5))
    sharded = tmp_path / "sharded"
    for i in range(2):
        anonymize_dataset(_cfg(batch_size=3), PhantomFolder(phantom_dir), sharded, checkpoints=tiny_checkpoints,
                          progress=False, write_linkage=True, shard=(i, 2), resume=i > 0)
    a, b, c = _images_by_source(one), _images_by_source(five), _images_by_source(sharded)
    assert a.keys() == b.keys() == c.keys() and len(a) == 12
    assert max(np.abs(a[k] - b[k]).max() for k in a) <= 1 and max(np.abs(a[k] - c[k]).max() for k in a) <= 1
    assert max(np.abs(a[k] - a[j]).max() for k, j in zip(sorted(a), sorted(a)[1:])) > 1  # images differ


def test_schedule_cuts_the_whole_run_into_blocks_of_four_batches():
    records = [(i, f"k{i}", f"p{i}") for i in range(19)]
    blocks = schedule(records, batch_size=2)
    assert [len(b) for b in blocks] == [8, 8, 3] and sum(blocks, []) == [(*r, False) for r in records]
    # a resumed run keeps the blocks of the whole list, never a boundary moves: a block all done drops out, a
    # block partly done comes back whole, its done records marked as replays (anonymized again, not journaled)
    resumed = schedule(records, batch_size=2, done={"p0", "p9", "p16", "p17", "p18"})
    assert resumed == [[(*r, r[2] in {"p0", "p9"}) for r in records[:8]],
                       [(*r, r[2] == "p9") for r in records[8:16]]]
    assert fresh(resumed) == 14


def test_a_batch_only_ever_holds_records_of_one_block(tmp_path, tiny_checkpoints, phantom_dir, monkeypatch):
    """Each record's batch-mates come from its block: what makes one process and a Ray run release the same
    pixels, whatever kernels round a row by its batch-mates."""
    batches, step, add = [], LatentOptimizer.step, LatentOptimizer._add

    def spy_step(self):
        batches.append({it.key for it in self.items})
        return step(self)

    def uneven_add(self, items, *args, **kw):  # rows end after 1 to 3 steps: the batch refills mid-run
        add(self, items, *args, **kw)
        self._rows["budget"][-len(items):] = torch.tensor([1.0 + len(it.key) % 3 + it.seed % 2 for it in items])

    monkeypatch.setattr(LatentOptimizer, "step", spy_step)
    monkeypatch.setattr(LatentOptimizer, "_add", uneven_add)
    _run(tmp_path, "blocks", tiny_checkpoints, phantom_dir, cfg=_cfg(batch_size=2))
    keys = PhantomFolder(phantom_dir).keys()
    blocks = [set(keys[:8]), set(keys[8:])]  # 12 records, blocks of 4 x 2
    assert len({frozenset(b) for b in batches}) > 6  # rows did end apart (else nothing is tested)
    assert all(any(b <= block for block in blocks) for b in batches)
    assert set().union(*batches) == set(keys)  # every record was optimized


def test_cli_dry_run_resolves_the_privacy_level_and_checks_the_input(phantom_dir, tmp_path):
    res = CliRunner().invoke(cli, ["anonymize", "--input", str(phantom_dir), "--out", "y", "--privacy", "high",
                                   "--dry-run"])
    assert res.exit_code == 0, res.output
    resolved = json.loads(res.output)
    assert resolved["config"]["margin"] == -0.3 and resolved["config"]["privacy"] == "high"
    assert resolved["input"] == {"records": 12, "findings": ["finding_a", "finding_b"]}
    assert resolved["config"]["engine"] == "optimize"
    res = CliRunner().invoke(cli, ["anonymize", "--input", str(phantom_dir), "--out", "y", "--engine", "amortized",
                                   "--dry-run"])
    assert res.exit_code == 0 and json.loads(res.output)["config"]["engine"] == "amortized", res.output
    res = CliRunner().invoke(cli, ["anonymize", "--input", str(tmp_path / "nothing"), "--out", "y", "--dry-run"])
    assert res.exit_code != 0 and "nothing" in res.output and "not found" in res.output
    res = CliRunner().invoke(cli, ["anonymize", "--input", "x", "--out", "y", "--margin", "1.5"])
    assert res.exit_code != 0 and "[-1, 1]" in res.output



def test_speed_profile_sets_its_fields_and_flags_still_win(phantom_dir):
    res = CliRunner().invoke(cli, ["anonymize", "--input", str(phantom_dir), "--out", "y", "--speed", "fast",
                                   "--lr", "0.05", "--lambda-mdl", "2", "--dry-run"])
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.output)["config"]
    assert (cfg["patience"], cfg["refine_steps"], cfg["precision"], cfg["lambda_surrogate"]) == (0, 0, "auto-bf16", 0)
    assert cfg["lr"] == 0.05 and cfg["lambda_mdl"] == 2.0           # explicit flags override the profile
    quality = anonymize_config("phantom-cxr64", speed="quality")
    assert quality == anonymize_config("phantom-cxr64") and (quality.patience, quality.lambda_surrogate) == (10, 1.0)
    with pytest.raises(ConfigError, match="speed profile"):
        anonymize_config("phantom-cxr64", speed="ludicrous")


def test_finding_place_flags_reach_the_config(phantom_dir):
    res = CliRunner().invoke(cli, ["anonymize", "--input", str(phantom_dir), "--out", "y", "--lambda-place", "3",
                                   "--place-findings", "nodule, atelectasis", "--dry-run"])
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.output)["config"]
    assert cfg["lambda_place"] == 3.0 and cfg["place_findings"] == ["nodule", "atelectasis"]
    assert anonymize_config("phantom-cxr64").lambda_place == 0.0      # off unless asked for


def test_utility_jitter_flag_reaches_the_config(phantom_dir):
    res = CliRunner().invoke(cli, ["anonymize", "--input", str(phantom_dir), "--out", "y", "--utility-jitter", "2",
                                   "--dry-run"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["config"]["utility_jitter"] == 2
    assert anonymize_config("phantom-cxr64").utility_jitter == 0      # off unless asked for
    res = CliRunner().invoke(cli, ["anonymize", "--input", str(phantom_dir), "--out", "y", "--utility-jitter", "-1",
                                   "--dry-run"])
    assert res.exit_code != 0 and "utility-jitter" in res.output


def test_second_utility_flag_reaches_the_config(phantom_dir):
    res = CliRunner().invoke(cli, ["anonymize", "--input", str(phantom_dir), "--out", "y", "--lambda-ut2", "0.7",
                                   "--dry-run"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["config"]["lambda_ut2"] == 0.7
    res = CliRunner().invoke(cli, ["anonymize", "--input", str(phantom_dir), "--out", "y", "--lambda-ut2", "-1",
                                   "--dry-run"])
    assert res.exit_code != 0 and "loss weights must be >= 0" in res.output


def test_bf16_choice_by_precision_and_device(monkeypatch):
    from gmia.anonymization.config import use_bf16

    assert not use_bf16("auto", "cpu") and use_bf16("auto", "cuda") and use_bf16("bf16", "cpu")
    assert not use_bf16("fp32", "cuda")
    for native in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
        assert use_bf16("auto-bf16", "cpu") is native

@pytest.mark.slow
def test_kill_9_then_resume_finishes_the_set(tmp_path, tiny_checkpoints, phantom_dir):
    """A real SIGKILL mid-run (a separate process), then --resume: nothing lost, nothing duplicated, same pixels."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["anonymize", "--input", str(phantom_dir), "--checkpoints", str(tiny_checkpoints), "--margin", "1.0",
            "--batch-size", "2", "--max-steps", "30", "--threads", "1", "--quiet", "--write-linkage"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "gmia.cli", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out / "private" / "journal-0-of-1.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(journal.read_text().splitlines())
    assert 3 <= done_before < 12
    res = CliRunner().invoke(cli, [*args, "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    whole = tmp_path / "whole"
    assert CliRunner().invoke(cli, [*args, "--out", str(whole)]).exit_code == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["pseudonym"] for r in rows}) == 12 and len(list((out / "images").iterdir())) == 12
    a, b = _images_by_source(whole), _images_by_source(out)
    assert a.keys() == b.keys() and max(np.abs(a[k] - b[k]).max() for k in a) <= 1


def test_linkage_can_be_asked_for_after_the_run(tmp_path, tiny_checkpoints, phantom_dir):
    out = tmp_path / "anon"
    anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), out, checkpoints=tiny_checkpoints, progress=False, limit=5)
    assert not (out / "private" / "linkage.csv").exists()
    summary = anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), out, checkpoints=tiny_checkpoints,
                                progress=False, limit=5, resume=True, write_linkage=True)
    assert summary["this_call"]["released"] == 0                       # nothing redone
    rows = (out / "private" / "linkage.csv").read_text().splitlines()
    released = {p.stem for p in (out / "images").iterdir()}
    assert rows[0] == "source,pseudonym" and {r.split(",")[1] for r in rows[1:]} == released and len(rows) == 6


def test_checkpoints_may_point_at_the_folder_holding_the_files(tmp_path, tiny_checkpoints, phantom_dir):
    """--checkpoints /models/x (the files themselves) works like --checkpoints /models (holding <preset>/)."""
    out = tmp_path / "anon"
    summary = anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), out, checkpoints=tiny_checkpoints / "phantom-cxr64",
                                progress=False, limit=2)
    assert summary["released"] == 2
