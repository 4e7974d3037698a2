"""End-to-end smoke runs of `gmia train ROLE`: one epoch of each role on ~40 tiny phantom images."""

import json

import pytest
import torch

from gmia.checkpoints import read_card
from click.testing import CliRunner

from gmia import networks
from gmia.cli_train import train as train_cli
from gmia.config import override
from gmia.data import phantoms
from gmia.errors import ConfigError, InputError
from gmia.networks.training import get_train_config, train

TINY_ARCH = {
    "identity": dict(widths=(8, 16, 16), blocks=(1, 1, 1), stem_width=8, embed_dim=32),
    "attacker": dict(widths=(8, 16, 16, 16), convs=(1, 1, 1, 1), embed_dim=32),
    "utility": dict(growth=4, blocks=(2, 2), init_features=8, feature_dim=16, decoder_width=8),
    "utility2": dict(widths=(8, 16), convs=(1, 1)),
    "mfm": dict(widths=(8, 16, 16, 16), latent_channels=4, probe_images=100, projection_dim=8),
}
EXPECTED = {
    "identity": {"verification_auc", "eer", "rank1", "rank5"},
    "attacker": {"verification_auc", "eer", "rank1", "rank5"},
    "utility": {"macro_auroc", "auroc/nodule"},
    "utility2": {"macro_auroc", "auroc/nodule"},
    "mfm": {"id_probe_auc", "id_raw_auc", "finding_probe_macro_auroc", "finding_probe_auroc/nodule"},
}


def _tiny_cfg(preset, role, **kw):
    return override(get_train_config(preset, role), **{"epochs": 1, "batch_size": 16, "device": "cpu",
                                                       **TINY_ARCH[role], **kw})


@pytest.fixture(scope="module")
def cxr_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "cxr"
    phantoms.write(phantoms.generate("cxr", patients=10, studies=4, size=64, seed=5), out)
    return out


@pytest.mark.parametrize("role", ["identity", "utility", "utility2", "mfm", "attacker"])
def test_one_epoch_writes_checkpoint_card_and_test_metrics(cxr_dir, tmp_path, role):
    cfg = _tiny_cfg("phantom-cxr64", role)
    result = train(cfg, cxr_dir, tmp_path / "phantom-cxr64", progress=False)
    assert EXPECTED[role] <= set(result.metrics)
    card = json.loads((tmp_path / "phantom-cxr64" / f"{role}.json").read_text())
    meta = card["meta"]
    assert meta["metrics_split"] == "test" and meta["preset"] == "phantom-cxr64" and meta["data"]["seed"] == 5
    assert meta["seed"] == cfg.seed and meta["train_seconds"] > 0 and meta["hardware"]
    run = tmp_path / "phantom-cxr64" / f"{role}-run"
    assert (run / "config.json").is_file() and not (run / "snapshot.pt").exists()
    lines = [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines()]
    assert lines[0]["epoch"] == 1 and lines[-1]["final"] is True
    # reload through the registry: frozen, stored in fp16, and the same function as the trained network up to
    # fp16 rounding of the weights (relative error ~1e-3)
    loaded = networks.load("phantom-cxr64", role, root=tmp_path)
    assert read_card(tmp_path / "phantom-cxr64", role)["dtype"] == "float16"
    x = torch.rand(3, 1, 64, 64)
    verb = "embed" if role in ("identity", "attacker") else "features"
    a, b = getattr(loaded, verb)(x), getattr(result.network.eval(), verb)(x)
    assert (a - b).norm() <= 1e-2 * b.norm()
    # rerunning the same command is a no-op; another config is refused
    assert train(cfg, cxr_dir, tmp_path / "phantom-cxr64", progress=False).resumed_complete
    with pytest.raises(ConfigError, match="another config"):
        train(override(cfg, seed=99), cxr_dir, tmp_path / "phantom-cxr64", progress=False)


@pytest.mark.parametrize("objective", ["masked_ae", "ae"])
def test_mfm_autoencoder_objectives(cxr_dir, tmp_path, objective):
    result = train(_tiny_cfg("phantom-cxr64", "mfm", objective=objective), cxr_dir, tmp_path, progress=False)
    assert result.metrics["recon_psnr"] > 0 and result.network.decoder is not None
    assert result.network.projector is None


def test_face_utility_segments_the_lesion(tmp_path):
    face = tmp_path / "face"
    phantoms.write(phantoms.generate("face", patients=10, studies=4, size=64, seed=2), face)
    cfg = _tiny_cfg("phantom-face64", "utility")
    assert cfg.segment
    result = train(cfg, face, tmp_path / "ck" / "phantom-face64", progress=False)
    assert {"dice", "dice_global", "macro_auroc", "auroc/periocular_lesion"} <= set(result.metrics)
    assert networks.load("phantom-face64", "utility", root=tmp_path / "ck").segment(torch.rand(2, 3, 64, 64)).shape \
        == (2, 1, 64, 64)


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_result(cxr_dir, tmp_path, monkeypatch):
    from gmia.networks.training import loops

    cfg = _tiny_cfg("phantom-cxr64", "utility", epochs=2)
    straight = train(cfg, cxr_dir, tmp_path / "a", progress=False)

    make_task = loops.make_task

    def dies_in_epoch_2(cfg_, data):
        task = make_task(cfg_, data)
        loss, calls = task.loss, []

        def counted(batch):
            calls.append(1)
            if len(calls) > 2:  # 28 training images / batch 16 = 2 steps per epoch
                raise _Killed
            return loss(batch)
        task.loss = counted
        return task

    monkeypatch.setattr(loops, "make_task", dies_in_epoch_2)
    with pytest.raises(_Killed):
        train(cfg, cxr_dir, tmp_path / "b", progress=False)
    assert (tmp_path / "b" / "utility-run" / "snapshot.pt").is_file()
    monkeypatch.setattr(loops, "make_task", make_task)
    with pytest.raises(ConfigError, match="belongs to a run with another config"):
        train(override(cfg, seed=5), cxr_dir, tmp_path / "b", progress=False)
    resumed = train(cfg, cxr_dir, tmp_path / "b", progress=False)
    assert resumed.metrics["macro_auroc"] == pytest.approx(straight.metrics["macro_auroc"], abs=1e-6)
    assert "resumed after epoch 1" in (tmp_path / "b" / "utility-run" / "log.txt").read_text()


def test_data_of_the_wrong_preset_is_refused(cxr_dir, tmp_path):
    with pytest.raises(ConfigError, match="1x64x64 images but preset 'phantom-face64'"):
        train(_tiny_cfg("phantom-face64", "identity"), cxr_dir, tmp_path, progress=False)
    with pytest.raises(InputError, match="not a phantom folder"):
        train(_tiny_cfg("phantom-cxr64", "identity"), tmp_path, tmp_path / "o", progress=False)


def test_cli_dry_run_prints_the_resolved_config():
    out = CliRunner().invoke(train_cli, ["identity", "--preset", "phantom-face64", "--epochs", "3", "--seed", "4",
                                         "--dry-run"])
    assert out.exit_code == 0, out.output
    printed = json.loads(out.output)
    assert printed["data"] == "data/phantom-face64" and printed["out"] == "checkpoints/phantom-face64"
    assert printed["config"]["epochs"] == 3 and printed["config"]["seed"] == 4
    assert printed["config"]["loss"] == "arcface"
    for role in ("utility", "mfm", "attacker"):
        assert CliRunner().invoke(train_cli, [role, "--dry-run"]).exit_code == 0
