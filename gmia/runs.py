"""Run directories that explain themselves.

    OUT/config.json    written before step 1: the resolved config, gmia/torch/python versions, git SHA,
                       sha256 of every input checkpoint, the command line
    OUT/log.txt        what was printed
    OUT/stats.jsonl    one JSON object per tick, flushed as it is written

Resuming is rerunning the same command with --resume: the run folder is the single source of truth.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import __version__
from .fileio import atomic_write_json, jsonable

__all__ = ["environment", "command_line", "write_config", "StatsWriter", "log"]


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Versions and hardware, for reproducibility records."""
    return {
        "gmia": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "git_sha": _git_sha(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else
        f"cpu, {torch.get_num_threads()} threads ({os.cpu_count()} cores)",  # the threads this run uses
        "argv": command_line(),
    }


def command_line() -> list[str]:
    """The command as a user would type it: ``gmia ...`` (not the path of the script or of the environment it
    ran from: records and checkpoint cards are shared, and a machine path says nothing to their reader)."""
    head = os.path.basename(sys.argv[0]) if sys.argv else ""
    return ["gmia" if head in ("gmia", "__main__.py") else head, *sys.argv[1:]]


def write_config(run_dir: str | os.PathLike, config, checkpoints: dict[str, str] | None = None, **extra) -> dict:
    """Write ``run_dir/config.json`` (config + environment + checkpoint hashes) and return it."""
    record = {"config": jsonable(config), "environment": environment(), "checkpoints": checkpoints or {}, **extra}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(run_dir) / "config.json", record)
    return record


class StatsWriter:
    """Appends one JSON line per call to ``stats.jsonl`` and flushes it at once (safe to tail or kill)."""

    def __init__(self, run_dir: str | os.PathLike, name: str = "stats.jsonl"):
        self.path = Path(run_dir) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **stats) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(jsonable({"time": round(time.time(), 3), **stats})) + "\n")
            f.flush()


def log(run_dir: str | os.PathLike | None, message: str) -> None:
    """Print a line and append it to ``run_dir/log.txt``."""
    print(message, flush=True)
    if run_dir is not None:
        with open(Path(run_dir) / "log.txt", "a") as f:
            f.write(message + "\n")
