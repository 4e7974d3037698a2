"""`gmia fit` under torchrun: the whole phantom-cxr64 recipe (tiny variant) on two CPU processes (gloo). Every
stage-1 leg trains on both processes, the other stages (networks, decoupler, the pool, the priors, the report) on
rank 0 while rank 1 waits for their cards; the checkpoint folder is complete and each leg's card says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gmia.checkpoints import read_card
from gmia.data import phantoms
from gmia.fit import recipe


@pytest.mark.slow
def test_the_phantom_recipe_on_two_processes(tmp_path):
    data = phantoms.write(phantoms.generate("cxr", patients=20, studies=3, size=64, seed=5), tmp_path / "data")
    out = tmp_path / "models"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "gmia",
           "fit", "--preset", "phantom-cxr64", "--input", str(data), "--out", str(out), "--variant", "tiny",
           "--workers", "0", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    stages = json.loads((out / "fit.json").read_text())["stages"]
    assert [r["stage"] for r in stages] == [s.name for s in recipe("phantom-cxr64")]
    assert {r["status"] for r in stages} == {"trained"}
    for s in recipe("phantom-cxr64"):
        if s.kind == "aegan":  # every leg trained on both processes
            card = read_card(out if s.export else out / "work" / s.name / "checkpoint", "aegan")
            assert card["meta"]["data"]["processes"] == 2 and card["meta"]["fit"]["processes"] == 2, s.name
    assert read_card(out, "aegan")["meta"]["data"]["pool"] == "pool"
    assert read_card(out, "aegan")["meta"]["metrics"]["test_split"]["test_images"] > 0
    for name in ("identity", "utility", "mfm", "attacker", "decoupler", "latent-prior"):
        assert read_card(out, name)["meta"]["fit"]["processes"] == 2
