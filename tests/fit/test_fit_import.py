"""Weights imported with `gmia import-weights` stand in for their stage: `gmia fit` does not train that role."""

from __future__ import annotations

import torch
from click.testing import CliRunner

from gmia.checkpoints import read_card
from gmia.cli import cli

from tests.fit.conftest import fit_args
from tests.networks.test_published_import import _IResNet


def test_imported_identity_is_not_trained(mimic_root, tmp_path):
    torch.save(_IResNet(res=256).state_dict(), tmp_path / "r50.pth")
    out = tmp_path / "models"
    res = CliRunner().invoke(cli, ["import-weights", "identity", str(tmp_path / "r50.pth"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    sha = read_card(out, "identity")["sha256"]
    res = CliRunner().invoke(cli, ["fit", "--dataset", "mimic", "--data-root", str(mimic_root), "--out", str(out),
                                   "--only", "identity", *fit_args()])
    assert res.exit_code == 0, res.output
    assert "identity (network): imported weights" in res.output
    assert read_card(out, "identity")["sha256"] == sha
