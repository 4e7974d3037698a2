"""gmia's own checkpoint format: safetensors + JSON card, registry classes only, verified hashes."""

import json

import pytest
import torch
from torch import nn

from gmia import checkpoints
from gmia.checkpoints import FORMAT, load_module, read_card, register_class, save_module, sha256_file
from gmia.errors import CheckpointError
from third_party.stylegan2_ada import ESModel, Generator

G_KWARGS = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=1,
                mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))


class TinyNet(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so test registrations do not leak."""
    monkeypatch.setattr(checkpoints, "_REGISTRY", dict(checkpoints._REGISTRY))


@pytest.fixture
def generator():
    torch.manual_seed(0)
    g = Generator(**G_KWARGS)
    with torch.no_grad():
        g.mapping.w_avg.normal_()
        for name, p in g.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
    return g


def test_round_trip_is_bit_exact(tmp_path, generator):
    card_path = save_module(generator, G_KWARGS, tmp_path / "ckpt", "generator", meta={"kimg": 12})
    assert card_path == tmp_path / "ckpt" / "generator.json"
    card = read_card(tmp_path / "ckpt", "generator")
    assert card["format"] == FORMAT and card["class"] == "stylegan2_ada.Generator"
    assert card["kwargs"] == G_KWARGS and card["meta"] == {"kimg": 12} and card["dtype"] == "float32"
    assert card["sha256"] == sha256_file(tmp_path / "ckpt" / "generator.safetensors")
    assert card["num_parameters"] == sum(p.numel() for p in generator.parameters())
    loaded = load_module(tmp_path / "ckpt", "generator")
    assert type(loaded) is Generator and not loaded.training
    for k, v in generator.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    z = torch.randn(2, 16)
    assert torch.equal(loaded(z, noise_mode="const"), generator.eval()(z, noise_mode="const"))


def test_fp16_storage_halves_the_file_and_loads_as_float32(tmp_path, generator):
    save_module(generator, G_KWARGS, tmp_path, "g32")
    save_module(generator, G_KWARGS, tmp_path, "g16", dtype=torch.float16)
    size32, size16 = (tmp_path / "g32.safetensors").stat().st_size, (tmp_path / "g16.safetensors").stat().st_size
    assert size16 < 0.6 * size32
    assert read_card(tmp_path, "g16")["dtype"] == "float16"
    loaded = load_module(tmp_path, "g16")
    for k, v in generator.state_dict().items():
        got = loaded.state_dict()[k]
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, v, atol=1e-3 * (1 + v.abs().max().item()), rtol=1e-3)


def test_esmodel_round_trip(tmp_path):
    kwargs = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=1,
                  synthesis_kwargs=dict(channel_base=128, channel_max=16, conv_clamp=256))
    m = ESModel(**kwargs)
    save_module(m, kwargs, tmp_path, "es")
    assert isinstance(load_module(tmp_path, "es"), ESModel)


def test_tampered_weights_are_refused(tmp_path, generator):
    save_module(generator, G_KWARGS, tmp_path, "g")
    weights = tmp_path / "g.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"g\.safetensors: sha256 .* does not match its card"):
        load_module(tmp_path, "g")


def test_card_class_must_be_registered(tmp_path, generator):
    save_module(generator, G_KWARGS, tmp_path, "g")
    card = json.loads((tmp_path / "g.json").read_text())
    for bogus in ("os.system", "third_party.stylegan2_ada.Generator", "Generator"):
        card["class"] = bogus
        (tmp_path / "g.json").write_text(json.dumps(card))
        with pytest.raises(CheckpointError, match=r"is not registered; known: \[.*'stylegan2_ada\.Generator'"):
            load_module(tmp_path, "g")


def test_kwargs_that_do_not_fit_the_weights(tmp_path, generator):
    save_module(generator, G_KWARGS, tmp_path, "g")
    card = json.loads((tmp_path / "g.json").read_text())
    card["kwargs"]["img_channels"] = 3
    (tmp_path / "g.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="weights do not fit stylegan2_ada.Generator"):
        load_module(tmp_path, "g")
    card["kwargs"]["bogus"] = 1
    (tmp_path / "g.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="kwargs do not build"):
        load_module(tmp_path, "g")


def test_missing_and_malformed_files(tmp_path, generator):
    with pytest.raises(CheckpointError, match=r"g\.json: checkpoint card not found"):
        load_module(tmp_path, "g")
    save_module(generator, G_KWARGS, tmp_path, "g")
    (tmp_path / "g.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights file missing"):
        load_module(tmp_path, "g")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable checkpoint card"):
        read_card(tmp_path, "bad")
    (tmp_path / "old.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a gmia-checkpoint/1 card"):
        read_card(tmp_path, "old")


def test_save_checks(tmp_path, generator, registry):
    with pytest.raises(CheckpointError, match="not registered; call gmia.checkpoints.register_class"):
        save_module(TinyNet(4), {"width": 4}, tmp_path, "tiny")
    with pytest.raises(CheckpointError, match="JSON-serialisable"):
        save_module(generator, {"z_dim": torch.tensor(1)}, tmp_path, "g")
    with pytest.raises(CheckpointError, match="no path separators"):
        save_module(generator, G_KWARGS, tmp_path, "../g")
    assert not list(tmp_path.iterdir())


def test_register_class(tmp_path, registry):
    register_class("tests.TinyNet", TinyNet)
    register_class("tests.TinyNet", TinyNet)  # idempotent
    with pytest.raises(ValueError, match="already registered"):
        register_class("tests.TinyNet", Generator)
    with pytest.raises(TypeError):
        register_class("tests.notamodule", dict)
    net = TinyNet(4)
    save_module(net, {"width": 4}, tmp_path, "tiny")
    assert torch.equal(load_module(tmp_path, "tiny").fc.weight, net.fc.weight)
    assert "tests.TinyNet" in checkpoints.registered_classes()


def test_saved_files_are_world_readable(tmp_path, generator):
    save_module(generator, G_KWARGS, tmp_path, "g")
    for suffix in (".safetensors", ".json"):
        assert (tmp_path / f"g{suffix}").stat().st_mode & 0o777 == 0o644


def test_a_card_loads_whatever_the_caller_imported():
    """The class table is explicit: a fresh process that imports only gmia.checkpoints loads every shipped role."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "checkpoints" / "phantom-cxr64"
    code = ("import sys; from gmia.checkpoints import load_module; "
            "print(' '.join(type(load_module(sys.argv[1], n)).__name__ for n in ('aegan', 'identity', 'utility')))")
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["AEGAN", "IdentityNet", "UtilityNet"]
