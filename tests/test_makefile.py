"""The Makefile's evaluation targets, dry-run (`make -n`): which data and output folders each command gets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _dry_run(*args: str) -> list[str]:
    out = subprocess.run(["make", "-n", "evaluate", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if "gmia " in line]


def test_evaluate_on_a_fresh_phantom_draw_uses_only_that_draw():
    seed = 987654  # a folder no one has generated
    lines = _dry_run(f"PHANTOM_SEED={seed}", "DATASET=phantom-face", "LIMIT=5")
    data, out = f"data/phantom-face64-seed{seed}", f"outputs/eval/phantom-face64-seed{seed}/"
    assert f"phantom --preset phantom-face64 --seed {seed} --out {data}" in lines[0]
    steps = lines[1:]
    assert [line.split("gmia ")[1].split()[0] for line in steps] == ["anonymize", "anonymize", "evaluate", "report"]
    assert all(f"--input {data} " in line for line in steps[:2])
    assert f"--real {data} " in steps[2]
    assert all(out in line for line in steps)
    assert not any("data/phantom-face64 " in line for line in lines), "the shipped benchmark must not be read"


def test_evaluate_defaults_to_the_shipped_benchmark():
    lines = [line for line in _dry_run("LIMIT=5") if "gmia phantom" not in line]
    assert "--input data/phantom-cxr64 " in lines[0] and "--out outputs/eval/phantom-cxr64/anon-test-medium" in lines[0]
    assert not any("seed" in line for line in lines)
