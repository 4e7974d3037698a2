"""The Decoupler's algebra, its checkpoint, and the held-out audit on planted features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gmia.decoupling import Decoupler, audit, fit_from_features, format_table, load_decoupler, save_decoupler
from gmia.errors import CheckpointError, InputError


@pytest.fixture(scope="module")
def fitted(planted_sets):
    return fit_from_features(planted_sets[0], planted_sets[1])[0]


def test_semantic_part_has_no_identity_code(fitted):
    f = torch.randn(5, fitted.feature_dim) * 3
    s, u = fitted(f)
    assert s.shape == (5, fitted.feature_dim) and u.shape == (5, fitted.rank)
    torch.testing.assert_close(fitted.identity(s + fitted.mean), torch.zeros_like(u), atol=1e-4, rtol=0)
    # P_sem is a projection: applying it twice changes nothing
    torch.testing.assert_close(fitted.semantic(s + fitted.mean), s, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match=r"expects features \(N, 32\)"):
        fitted(torch.zeros(2, 7))


def test_checkpoint_roundtrip(fitted, tmp_path):
    card = save_decoupler(fitted, tmp_path, meta={"report": {"semantic": {"identity_auc": 0.5}}})
    assert json.loads(card.read_text())["meta"]["report"]["semantic"]["identity_auc"] == 0.5
    back = load_decoupler(tmp_path)
    assert isinstance(back, Decoupler) and back.rank == fitted.rank and back.margin == pytest.approx(fitted.margin)
    f = torch.randn(3, fitted.feature_dim)
    torch.testing.assert_close(back.semantic(f), fitted.semantic(f))
    with pytest.raises(CheckpointError, match="fit-decoupler"):
        load_decoupler(tmp_path / "missing")


def test_audit_on_planted(planted_sets, fitted):
    fit, _, test = planted_sets
    rep = audit(fitted, fit["features"], fit["patients"], fit["labels"], test["features"], test["patients"],
                test["labels"])
    assert rep["semantic"]["identity_auc"] <= 0.60
    assert rep["identity"]["identity_auc"] >= 0.90
    assert rep["semantic"]["finding_auroc"] >= 0.95 * rep["raw"]["finding_auroc"]
    assert rep["random"]["identity_auc"] > 0.75  # the control keeps identity: the split does the work
    assert rep["semantic"]["identity_bits"] < 0.1 * rep["raw"]["identity_bits"]
    assert rep["findings"]["dim"] == 2 and rep["acceptance"]["findings_only_identity_auc"] < 0.6
    assert rep["acceptance"]["passed"]
    assert "semantic" in format_table(rep) and "PASS" in format_table(rep)
