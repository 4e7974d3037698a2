"""Fixtures for stage-2 tests: a checkpoint folder of toy-sized real networks (random weights) for the
phantom-cxr64 preset, and a toy phantom folder at the preset's 64 px."""

from __future__ import annotations

import pytest
import torch

from gmia.checkpoints import save_module
from gmia.data.phantoms.writer import write
from gmia.networks import IdentityNet, UtilityNet
from gmia.projection.model import AEGAN

from tests.conftest import toy_phantom_set

TINY_AEGAN = dict(img_resolution=64, img_channels=1, w_dim=32, channel_base=128, channel_max=16)
TINY_ID = dict(in_channels=1, resolution=32, widths=(8, 16, 16), blocks=(1, 1, 1), stem_width=8, embed_dim=32)
TINY_UT = dict(in_channels=1, resolution=32, num_findings=2, growth=4, blocks=(2, 2), init_features=8, feature_dim=16)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """<root>/phantom-cxr64/{aegan,identity,utility}: seeded random toy networks."""
    root = tmp_path_factory.mktemp("ckpt")
    folder = root / "phantom-cxr64"
    torch.manual_seed(0)
    meta = {"preset": "phantom-cxr64"}
    save_module(AEGAN(**TINY_AEGAN), TINY_AEGAN, folder, "aegan", meta=meta)
    save_module(IdentityNet(**TINY_ID), TINY_ID, folder, "identity", meta=meta)
    save_module(UtilityNet(**TINY_UT), TINY_UT, folder, "utility", meta=meta)
    return root


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """4 patients x 3 studies of 64 px random blobs, written as a phantom folder."""
    return write(toy_phantom_set(patients=4, studies=3, size=64, seed=5), tmp_path_factory.mktemp("data") / "toy")
