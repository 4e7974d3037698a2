"""A fit killed inside a stage finishes, when rerun, with the cards of an uninterrupted fit: E_id is stopped in
its second epoch (after the first epoch's snapshot) and stage 1 after its second step (after a snapshot); the
reruns resume both from their run folders. On the CPU every stage is deterministic, so the weights files (their
sha256, and their tensors: ``weights_digest``) and so every later stage's key must be equal."""

from __future__ import annotations

import pytest

from gmia.checkpoints import read_card
from gmia.fit import DataSpec, fit
from gmia.fit.pipeline import weights_digest

from tests.fit.conftest import TINY_SETTINGS

CARDS = ("mfm", "identity", "utility", "attacker", "decoupler", "aegan", "latent-prior")


class Crash(Exception):
    """Stands for the process dying (no snapshot is written on the way out)."""


def _crash_after(monkeypatch, module, name, calls, only=lambda *a, **k: True):
    real = getattr(module, name)
    seen = {"n": 0}

    def wrapped(*args, **kwargs):
        if only(*args, **kwargs):
            seen["n"] += 1
            if seen["n"] == calls:
                raise Crash(f"{name} call {calls}")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.slow
def test_killed_stages_resume_to_the_same_cards(fitted_mimic, mimic_root, tmp_path, monkeypatch, capsys):
    from gmia.networks.training import tasks
    from gmia.projection import training

    reference, _ = fitted_mimic
    out = tmp_path / "models"
    spec = DataSpec(dataset="mimic", data_root=str(mimic_root))
    # 64 training images in batches of 16: call 6 is in the second epoch, after the first epoch's snapshot
    _crash_after(monkeypatch, tasks.ReIdTask, "loss", 6, only=lambda self, batch: self.cfg.role == "identity")
    with pytest.raises(Crash):
        fit("gmia-cxr256", spec, out, **TINY_SETTINGS)
    assert (out / "work" / "identity" / "identity-run" / "snapshot.pt").is_file()
    monkeypatch.undo()
    _crash_after(monkeypatch, training, "training_step", 3)  # stage 1: snapshots after steps 1 and 2
    with pytest.raises(Crash):
        fit("gmia-cxr256", spec, out, **TINY_SETTINGS)
    monkeypatch.undo()
    summary = fit("gmia-cxr256", spec, out, **TINY_SETTINGS)
    logs = capsys.readouterr().out
    assert "[identity] resumed after epoch 1" in logs and "resumed from training-state-" in logs
    status = {r["stage"]: r["status"] for r in summary["stages"]}
    assert status["mfm"] == "skipped" and status["aegan"] == "trained" and status["report"] == "trained"
    for name in CARDS:
        a, b = read_card(reference, name), read_card(out, name)
        assert a["meta"]["fit"]["weights_digest"] == b["meta"]["fit"]["weights_digest"], name
        assert a["sha256"] == b["sha256"], name                           # the very bytes of the weights files
        assert a["meta"]["fit"]["key"] == b["meta"]["fit"]["key"], name
        assert weights_digest(out / f"{name}.safetensors") == b["meta"]["fit"]["weights_digest"]
