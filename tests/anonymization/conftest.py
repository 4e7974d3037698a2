"""Fixtures for stage-2 tests: a checkpoint folder of toy-sized real networks (random weights) for the
phantom-cxr64 preset, and a toy phantom folder at the preset's 64 px."""

from __future__ import annotations

import pytest

from gmia.data.phantoms.writer import write

from tests.conftest import save_tiny_checkpoints, toy_phantom_set


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """<root>/phantom-cxr64/{aegan,identity,utility,utility2}: seeded random toy networks."""
    return save_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """4 patients x 3 studies of 64 px random blobs, written as a phantom folder."""
    return write(toy_phantom_set(patients=4, studies=3, size=64, seed=5), tmp_path_factory.mktemp("data") / "toy")
