"""The amortized engine: `gmia train anonymizer`, then `gmia anonymize --engine amortized` (toy networks)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from gmia.anonymization import gate
from gmia.anonymization.amortized import Anonymizer, anonymize_codes, load_anonymizer
from gmia.anonymization.config import anonymize_config
from gmia.anonymization.runner import anonymize_dataset
from gmia.anonymization.train_amortized import AmortizedConfig, train_anonymizer
from gmia.checkpoints import read_card
from gmia.data.datasets import PhantomFolder
from gmia.errors import CheckpointError

from tests.conftest import save_tiny_checkpoints


@pytest.fixture(scope="module")
def trained(tiny_checkpoints, phantom_dir, tmp_path_factory):
    """A copy of the toy checkpoint folder with an anonymizer trained for one short epoch."""
    root = tmp_path_factory.mktemp("amortized")
    shutil.copytree(tiny_checkpoints / "phantom-cxr64", root / "phantom-cxr64")
    cfg = AmortizedConfig(epochs=2, batch_size=4, surrogates=8, hidden=32, seed=3)
    train_anonymizer("phantom-cxr64", phantom_dir, root, cfg, device="cpu", progress=False)
    return root


def _cfg(**kw):
    return anonymize_config("phantom-cxr64", margin=1.0, engine="amortized", max_steps=6, patience=0, **kw)


def test_training_writes_a_card_tied_to_the_weights_it_learned_from(trained):
    card = read_card(trained / "phantom-cxr64", "anonymizer")
    assert card["class"] == "gmia.anonymization.Anonymizer"
    fitted = card["meta"]["fitted_to"]
    assert fitted == {r: read_card(trained / "phantom-cxr64", r)["sha256"] for r in ("aegan", "identity", "utility")}
    assert [row["epoch"] for row in card["meta"]["history"]] == [1, 2]
    net = load_anonymizer(trained / "phantom-cxr64", fitted)
    w, w_t, e = torch.randn(3, net.w_dim), torch.randn(3, net.w_dim), torch.randn(3, net.id_dim)
    s = torch.randn(3, net.w_dim)  # a start code
    assert net.id_dim == 32 and net(w, w_t, -0.3, e, s).shape == (3, net.w_dim)
    assert not torch.allclose(net(w, w_t, -0.3, e, s), net(w, w_t, 0.3, e, s))  # the margin is an input
    assert not torch.allclose(net(w, w_t, -0.3, e, s), net(w, w_t, -0.3, -e, s))  # ... and the source's identity
    with pytest.raises(ValueError, match="e_id"):
        net(w, w_t, -0.3, start=s)


def test_a_fresh_anonymizer_outputs_its_start():
    net = Anonymizer(w_dim=8, hidden=16)
    w, w_t = torch.randn(2, 8), torch.randn(2, 8)
    assert torch.allclose(net(w, w_t, 0.0), w_t)  # no re-drawn start: the surrogate
    net = Anonymizer(w_dim=8, hidden=16, redraw=1.0)
    start = torch.randn(2, 8)
    assert torch.allclose(net(w, w_t, 0.0, start=start), start)
    with pytest.raises(ValueError, match="start"):
        net(w, w_t, 0.0)


def test_the_network_starts_where_the_optimizer_does(trained, tiny_checkpoints):
    """Trained for the preset's re-drawn start, the network corrects the code the split re-draws."""
    from gmia.anonymization.redraw import LatentSplit
    from gmia.projection.prior import LatentPrior

    folder = trained / "phantom-cxr64"
    net = load_anonymizer(folder, read_card(folder, "anonymizer")["meta"]["fitted_to"])
    assert net.redraw == 1.0 == anonymize_config("phantom-cxr64").redraw
    split, prior = LatentSplit.load(folder), LatentPrior.load(folder)
    w, w_t, e = torch.randn(3, net.w_dim), torch.randn(3, net.w_dim), torch.randn(3, net.id_dim)
    start = split.redraw(w, w_t, prior, 1.0)
    with torch.no_grad():
        w_a = anonymize_codes(net, w, w_t, 0.0, e, split, prior)
        net.out.weight.zero_(), net.out.bias.zero_()
        assert torch.allclose(anonymize_codes(net, w, w_t, 0.0, e, split, prior), start)  # correction 0: the start
    assert not torch.allclose(w_a, start)  # ... which training moved
    with pytest.raises(CheckpointError, match="latent-split"):
        anonymize_codes(net, w, w_t, 0.0, e)


def test_a_run_from_another_start_is_refused(tmp_path, trained, phantom_dir):
    with pytest.raises(CheckpointError, match="--redraw 1"):
        anonymize_dataset(_cfg(redraw=0.0), PhantomFolder(phantom_dir), tmp_path / "out", checkpoints=trained,
                          progress=False)


def test_one_pass_per_image_then_the_gate(tmp_path, trained, phantom_dir):
    out = tmp_path / "anon"
    summary = anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), out, checkpoints=trained, progress=False, limit=5)
    rows = [json.loads(s) for s in (out / "manifest.jsonl").read_text().splitlines()]
    assert summary["released"] == 5 and {r["steps"] for r in rows} == {0} and {r["attempts"] for r in rows} == {1}
    assert all(r["cos_id_saved"] <= 1.0 for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["engine"] == "amortized" and "anonymizer" in run["checkpoints"]


def _refusing_gate(monkeypatch, times: int) -> None:
    """The privacy gate refuses each file its first ``times`` times, then judges it on its merits."""
    real = gate.write_and_check
    refused: dict[str, int] = {}

    def refuse(model, e_id, w, seeds, refs, paths, *args, **kwargs):
        results = real(model, e_id, w, seeds, refs, paths, *args, **kwargs)
        for r in results:
            if refused.get(r.staged.name, 0) < times:
                refused[r.staged.name] = refused.get(r.staged.name, 0) + 1
                r.passed = False
        return results

    monkeypatch.setattr("gmia.anonymization.runner.write_and_check", refuse)


def test_a_file_the_network_cannot_fix_goes_to_the_optimizer(tmp_path, trained, phantom_dir, monkeypatch):
    _refusing_gate(monkeypatch, times=1)
    out = tmp_path / "anon"
    summary = anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), out, checkpoints=trained, progress=False, limit=3)
    rows = [json.loads(s) for s in (out / "manifest.jsonl").read_text().splitlines()]
    assert summary["released"] == 3
    assert all(r["attempts"] == 2 and r["steps"] >= 1 for r in rows)  # the optimizer ran on the second attempt
    assert all(r["utility"] is not None for r in rows)  # ... with every reference feature


def test_an_anonymizer_trained_for_other_weights_is_refused(tmp_path, trained, phantom_dir):
    stale = tmp_path / "ckpt"
    shutil.copytree(trained, stale)
    save_tiny_checkpoints(stale, roles=("identity",), seed=9)  # E_id retrained since
    with pytest.raises(CheckpointError, match="trained for other identity weights"):
        anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), tmp_path / "out", checkpoints=stale, progress=False)
    with pytest.raises(CheckpointError, match="gmia train anonymizer"):
        anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), tmp_path / "out2",
                          checkpoints=save_tiny_checkpoints(tmp_path / "bare"), progress=False)


def test_the_weights_kept_trade_a_little_privacy_for_utility():
    from gmia.anonymization.train_amortized import _kept_epoch

    history = [{"epoch": 1, "val_private": 0.99, "val_ut_ratio": 1.6}, {"epoch": 2, "val_private": 0.98,
               "val_ut_ratio": 1.2}, {"epoch": 3, "val_private": 0.90, "val_ut_ratio": 1.0}]
    assert _kept_epoch(history, 0.02) == 2  # epoch 3 is better still, but leaves too many files to the gate
    assert _kept_epoch(history, 0.0) == 1
    assert _kept_epoch([{"epoch": 1}, {"epoch": 2}], 0.02) == 2  # no held-out check: the last epoch
