"""`gmia anonymize --ray`: the records through Ray Data on a local Ray instance (2 actors, started by the command,
no network), against the single-process run; then an actor killed mid-run, and --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gmia.anonymization.config import anonymize_config
from gmia.anonymization.runner import anonymize_dataset
from gmia.data.datasets import PhantomFolder

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


def _cli(out: Path, ckpt: Path, data: Path, *flags: str, batch: int = 1) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gmia", "anonymize", "--input", str(data), "--checkpoints", str(ckpt), "--out",
           str(out), "--ray", "--ray-actors", "2", "--threads", "1", "--batch-size", str(batch), "--quiet", *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def _finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def _with_key_of(reference: Path, out: Path) -> Path:
    """A fresh run folder holding ``reference``'s key: the same pseudonyms, so the two sets can be compared."""
    (out / "private").mkdir(parents=True)
    (out / "private").chmod(0o700)
    (out / "private" / "resume.key").write_text((reference / "private" / "resume.key").read_text())
    return out


def _journal(out: Path) -> list[dict]:
    path = out / "private" / "journal-0-of-1.jsonl"
    return [json.loads(s) for s in path.read_text().splitlines()] if path.exists() else []


def _actors() -> list[int]:
    """PIDs of this machine's Ray Data actors running the anonymization (their process title names the class)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"MapBatches(RayWorker)" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_ray_run_releases_what_one_process_releases(tmp_path, tiny_checkpoints, phantom_dir):
    # batch 2: blocks of 8 and 4 records (runner.schedule), one per actor
    cfg = anonymize_config("phantom-cxr64", margin=1.0, max_steps=6, patience=2, precision="fp32", batch_size=2)
    reference = tmp_path / "one"
    anonymize_dataset(cfg, PhantomFolder(phantom_dir), reference, checkpoints=tiny_checkpoints, progress=False)
    out = _with_key_of(reference, tmp_path / "ray")
    log = _finish(_cli(out, tiny_checkpoints, phantom_dir, "--margin", "1.0", "--max-steps", "6", "--patience", "2",
                       "--precision", "fp32", batch=2))
    assert (out / "run.json").exists(), log[-3000:]
    one = sorted((reference / "images").glob("*.png"))
    many = sorted((out / "images").glob("*.png"))
    assert [p.name for p in many] == [p.name for p in one] and len(one) == 12
    for a, b in zip(one, many):
        diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int)).max()
        assert diff == 0, (a.name, diff)  # the same batch-mates: the same pixels
    assert (out / "labels.csv").read_text() == (reference / "labels.csv").read_text()
    assert json.loads((out / "run.json").read_text())["summary"]["this_call"]["ray"]["actors"] == 2
    assert not list((out / "private").glob("staging-*"))


def test_an_actor_killed_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path, tiny_checkpoints, phantom_dir):
    out = tmp_path / "ray"
    slow = ("--margin", "-1.0", "--max-steps", "150")  # unreachable: every record runs all its steps, then is withheld
    proc = _cli(out, tiny_checkpoints, phantom_dir, *slow)
    deadline, killed = time.time() + 240, None
    while time.time() < deadline and proc.poll() is None and killed is None:
        if _journal(out) and _actors():
            killed = _actors()[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    assert killed is not None and len(_journal(out)) < 12, "the run ended before an actor could be killed"
    _finish(proc)  # Ray restarts the actor and reruns its batch; or the driver stops: --resume finishes either way
    log = _finish(_cli(out, tiny_checkpoints, phantom_dir, *slow, "--resume"))
    rows = _journal(out)
    names = [r["pseudonym"] for r in rows]
    assert len(names) == len(set(names)) == 12, log[-3000:]
    manifest = [json.loads(s) for s in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["pseudonym"] for r in manifest) == sorted(names)
    assert {r["status"] for r in manifest} == {"withheld"} and not list((out / "images").iterdir())
