"""Run records: the files every command writes about itself."""

import json
import math
import sys

from gmia import fileio, runs


def test_records_name_the_command_not_the_machine(monkeypatch):
    for argv0 in ("/home/someone/gmia-env/bin/gmia", "/srv/checkout/gmia/__main__.py", "gmia"):
        monkeypatch.setattr(sys, "argv", [argv0, "fit", "--out", "runs/x"])
        assert runs.command_line() == ["gmia", "fit", "--out", "runs/x"]
        assert runs.environment()["argv"] == ["gmia", "fit", "--out", "runs/x"]


def test_atomic_json_is_strict_and_leaves_no_temporary_file(tmp_path):
    import numpy as np

    path = tmp_path / "record.json"
    fileio.atomic_write_json(path, {"nan": math.nan, "np": np.float32(0.5), "n": np.int64(3), 1: (1, 2),
                                    "path": tmp_path})
    assert json.loads(path.read_text()) == {"nan": None, "np": 0.5, "n": 3, "1": [1, 2], "path": str(tmp_path)}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
    # a writer that fails leaves the old file whole and no temporary behind
    try:
        with fileio.atomic_file(path, text=True) as f:
            f.write("half")
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    assert json.loads(path.read_text())["n"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
