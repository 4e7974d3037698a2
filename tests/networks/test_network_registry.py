"""gmia.networks.load: one line to a frozen network; clear errors for wrong names and missing weights."""

from pathlib import Path

import pytest
import torch

from gmia import networks
from gmia.checkpoints import save_module
from gmia.errors import CheckpointError, ConfigError


@pytest.fixture
def save(tiny_net, tiny_net_kwargs):
    def _save(kind, root, preset="phantom-cxr64", name=None, trained_for=None):
        net = tiny_net(kind)
        save_module(net, tiny_net_kwargs(kind), root / preset, name or kind, meta={"preset": trained_for or preset})
        return net
    return _save


def test_load_returns_the_frozen_network(save, tmp_path):
    torch.manual_seed(0)
    net = save("identity", tmp_path).eval()
    loaded = networks.load("phantom-cxr64", "identity", root=tmp_path)
    assert isinstance(loaded, networks.IdentityNet) and loaded.is_frozen and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(net.embed(x), loaded.embed(x))


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="valid roles: identity, utility, utility2, mfm, attacker"):
        networks.load("phantom-cxr64", "generator", root=tmp_path)
    with pytest.raises(ConfigError, match="valid presets: phantom-cxr64"):
        networks.load("nope", "identity", root=tmp_path)


def test_missing_weights_say_which_file_and_how_to_make_it(tmp_path):
    with pytest.raises(CheckpointError, match=r"identity\.safetensors.*make train-phantom"):
        networks.load("phantom-cxr64", "identity", root=tmp_path)
    with pytest.raises(CheckpointError, match="import_xrv"):
        networks.load("gmia-cxr256", "utility", root=tmp_path)


def test_attacker_weights_cannot_pose_as_the_identity_network(save, tmp_path):
    save("attacker", tmp_path, name="identity")
    with pytest.raises(CheckpointError, match="identity checkpoint must hold one of"):
        networks.load("phantom-cxr64", "identity", root=tmp_path)
    assert networks.ROLE_CLASSES["attacker"] == (networks.AttackerNet,)
    assert not issubclass(networks.AttackerNet, networks.IdentityNet)


def test_the_second_utility_network_is_its_own_role_and_family(save, tmp_path):
    save("utility", tmp_path, name="utility2")  # E_ut's DenseNet cannot stand in for the second family
    with pytest.raises(CheckpointError, match="utility2 checkpoint must hold one of"):
        networks.load("phantom-cxr64", "utility2", root=tmp_path)
    net = save("utility2", tmp_path).eval()
    loaded = networks.load("phantom-cxr64", "utility2", root=tmp_path)
    assert isinstance(loaded, networks.PlainUtilityNet) and not isinstance(loaded, networks.UtilityNet)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(net.logits(x), loaded.logits(x)) and loaded.features(x).shape == (2, 16)


def test_weights_of_another_preset_are_refused(save, tmp_path):
    save("mfm", tmp_path, trained_for="phantom-face64")
    with pytest.raises(CheckpointError, match="trained for preset 'phantom-face64'"):
        networks.load("phantom-cxr64", "mfm", root=tmp_path)


def test_shipped_weights_are_found_from_any_folder(tmp_path, monkeypatch):
    shipped = Path(networks.__file__).resolve().parents[2] / "checkpoints" / "phantom-cxr64"
    monkeypatch.chdir(tmp_path)                     # no checkpoints/ here
    monkeypatch.delenv("GMIA_HOME", raising=False)
    assert networks.checkpoint_dir("phantom-cxr64") == shipped
    home = tmp_path / "home"
    (home / "checkpoints" / "phantom-cxr64").mkdir(parents=True)
    monkeypatch.setenv("GMIA_HOME", str(home))       # GMIA_HOME comes before the package's own folder
    assert networks.checkpoint_dir("phantom-cxr64") == home / "checkpoints" / "phantom-cxr64"
    (tmp_path / "checkpoints" / "phantom-cxr64").mkdir(parents=True)
    assert networks.checkpoint_dir("phantom-cxr64") == Path("checkpoints") / "phantom-cxr64"   # then the cwd's
    assert networks.checkpoint_dir("gmia-cxr256", tmp_path / "mine") == tmp_path / "mine" / "gmia-cxr256"
    with pytest.raises(CheckpointError, match=r"looked in checkpoints/gmia-cxr256, .*home/checkpoints/gmia-cxr256, "):
        networks.load("gmia-cxr256", "identity")
