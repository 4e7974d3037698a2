import pytest
import torch

from gmia.checkpoints import load_module, save_module
from gmia.projection.model import AEGAN, WPlusEncoder, build_discriminator
from third_party.stylegan2_ada import ESModel

TINY = dict(img_resolution=16, img_channels=1, w_dim=32, channel_base=256, channel_max=16)


@pytest.mark.parametrize("channels", [1, 3])
def test_w_space_shapes_and_range(channels):
    torch.manual_seed(0)
    model = AEGAN(**{**TINY, "img_channels": channels})
    x = torch.rand(3, channels, 16, 16)
    w = model.encode(x)
    assert w.shape == (3, 32) and model.num_ws == 6
    y = model.synthesize(w)
    assert y.shape == (3, channels, 16, 16) and y.dtype == torch.float32
    assert torch.allclose(model.reconstruct(x), y)
    # conversion happens inside: "signed" networks see 2x - 1 and their output maps back by (y + 1) / 2
    assert torch.allclose(model.to_internal(torch.zeros(1)), torch.tensor([-1.0]))
    assert torch.allclose(model.from_internal(model.synthesis(model.broadcast(w), noise_mode="const")), y)
    D, _ = build_discriminator({**model.init_kwargs}, mbstd_group=3)
    assert D(model.to_internal(x)).shape == (3, 1)


def test_w_plus_starts_as_w_and_has_per_layer_codes():
    torch.manual_seed(0)
    model = AEGAN(**TINY, latent="w+")
    assert isinstance(model.encoder, WPlusEncoder)
    x = torch.rand(2, 1, 16, 16)
    ws = model.encode(x)
    assert ws.shape == (2, model.num_ws, 32)
    assert torch.equal(ws, ws[:, :1].expand_as(ws))  # zero-initialised offsets: exactly W at first
    with torch.no_grad():
        model.encoder.ws_head.weight.normal_()
    ws = model.encode(x)
    assert not torch.allclose(ws[:, 0], ws[:, 1])
    assert model.synthesize(ws).shape == (2, 1, 16, 16)


def test_noise_modes_const_is_deterministic_random_is_seedable():
    torch.manual_seed(0)
    model = AEGAN(**TINY)
    with torch.no_grad():
        for m in model.synthesis.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.fill_(0.5)
    w = torch.randn(2, 32)
    assert torch.equal(model.synthesize(w), model.synthesize(w))
    a = model.synthesize(w, "random", torch.Generator().manual_seed(1))
    b = model.synthesize(w, "random", torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, model.synthesize(w))


def test_checkpoint_round_trip_and_gmia_esmodel(tmp_path):
    torch.manual_seed(0)
    model = AEGAN(**TINY, latent="w+")
    save_module(model, model.init_kwargs, tmp_path, "aegan")
    loaded = load_module(tmp_path, "aegan")
    x = torch.rand(2, 1, 16, 16)
    assert isinstance(loaded, AEGAN) and torch.equal(loaded.reconstruct(x), model.reconstruct(x))
    es = ESModel(0, 0, 32, 16, 1, synthesis_kwargs=dict(channel_base=256, channel_max=16))
    wrapped = AEGAN.from_esmodel(es)  # GMIA works in [0, 1] raw: same function, no conversion
    assert wrapped.image_range == "unit"
    with torch.no_grad():
        assert torch.allclose(wrapped.reconstruct(x), es(x, noise_mode="const"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="latent"):
        AEGAN(**TINY, latent="z")
    with pytest.raises(ValueError, match="expected images"):
        AEGAN(**TINY).encode(torch.rand(1, 3, 16, 16))
