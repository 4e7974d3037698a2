"""The machine a command runs on: which device, how many CPU threads. One place for both, so every command
reads ``--device`` and ``--threads`` the same way."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from .errors import ConfigError

__all__ = ["resolve_device", "set_threads", "threads"]


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``name`` as a device; None or "auto" is CUDA when there is one, else the CPU. Asking for CUDA on a machine
    without it is a ConfigError that says what to pass instead."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads from now on (None or 0: leave torch's choice). On a CPU another job shares, 1 is
    fastest: more threads than free cores make each step wait for the slowest."""
    if n:
        torch.set_num_threads(int(n))


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """``set_threads(n)`` for the block, then back to what it was (library calls leave the caller's setting)."""
    previous = torch.get_num_threads()
    set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
