"""End to end on toy data: `gmia fit-decoupler` extracts MFM features, fits, audits, writes the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gmia.checkpoints import save_module
from gmia.data.phantoms.base import PhantomSet
from gmia.data.phantoms.writer import write
from gmia.decoupling import load_decoupler
from gmia.decoupling.cli import fit_decoupler_command
from gmia.networks import MFMNet

TINY_MFM = dict(in_channels=1, resolution=16, widths=(4, 8), latent_channels=2)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """18 patients x 3 studies of 32 px images (a per-patient pattern + study noise), train/val/test 10/4/4,
    and a checkpoint root holding a random tiny MFM for phantom-cxr64."""
    rng = np.random.default_rng(0)
    patients, studies, size = 18, 3, 32
    pid = np.repeat(np.arange(patients), studies)
    base = rng.random((patients, 1, size, size), dtype=np.float32)
    images = np.clip(0.7 * base[pid] + 0.3 * rng.random((len(pid), 1, size, size), dtype=np.float32), 0, 1)
    split = np.array(["train"] * 30 + ["val"] * 12 + ["test"] * 12, dtype=object)
    findings = {"a": rng.integers(0, 2, len(pid)).astype(np.uint8), "b": rng.integers(0, 2, len(pid)).astype(np.uint8)}
    ps = PhantomSet("cxr", images, np.zeros((len(pid), 1, size, size), np.uint8), pid, np.tile(np.arange(studies), patients),
                    findings, {"w": np.repeat(rng.random(patients), studies).astype(np.float32)},
                    meta={"seed": 0, "patients": patients, "studies": studies, "split": split})
    data = write(ps, tmp_path_factory.mktemp("data") / "toy")
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    save_module(MFMNet(**TINY_MFM), TINY_MFM, root / "phantom-cxr64", "mfm", meta={"preset": "phantom-cxr64"})
    return data, root


def test_fit_decoupler_cli(toy, tmp_path):
    data, root = toy
    out, cache = tmp_path / "dec", tmp_path / "feats.npz"
    args = ["--data", str(data), "--out", str(out), "--mfm-checkpoints", str(root), "--cache", str(cache)]
    res = CliRunner().invoke(fit_decoupler_command, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "semantic" in res.output and "acceptance" in res.output
    card = json.loads((out / "decoupler.json").read_text())
    report = card["meta"]["report"]
    for part in ("raw", "semantic", "identity", "random"):
        assert {"identity_auc", "identity_rank1", "finding_auroc", "identity_bits"} <= set(report[part])
    assert card["meta"]["mfm_sha256"] and cache.is_file()
    dec = load_decoupler(out)
    assert dec.feature_dim == 32 and dec.rank == report["fit"]["rank"]
    # a rerun reads the cached features and forces a rank
    res = CliRunner().invoke(fit_decoupler_command, args + ["--rank", "2"], catch_exceptions=False)
    assert res.exit_code == 0 and load_decoupler(out).rank == 2


def test_dry_run_and_bad_method(toy, tmp_path):
    data, root = toy
    res = CliRunner().invoke(fit_decoupler_command, ["--data", str(data), "--out", str(tmp_path), "--dry-run"])
    assert res.exit_code == 0 and "FitConfig(method='coding_rate'" in res.output
    res = CliRunner().invoke(fit_decoupler_command, ["--data", str(data), "--out", str(tmp_path), "--method", "x"])
    assert res.exit_code != 0 and "scatter" in res.output and "coding_rate" in res.output
