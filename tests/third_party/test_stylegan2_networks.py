"""Behaviour of the networks on toy-sized real architectures (16-32 px, a few channels)."""

import pytest
import torch

from third_party.stylegan2_ada import Discriminator, ESModel, Generator, MinibatchStdLayer

SMALL = dict(channel_base=256, channel_max=32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Toy-sized tensors gain nothing from threads; on a loaded machine, spinning threads cost 10-50x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def set_noise_strength(module, value):
    for name, p in module.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(value)


@pytest.fixture
def G():
    torch.manual_seed(0)
    g = Generator(32, 0, 32, 32, 3, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(SMALL, conv_clamp=256))
    set_noise_strength(g, 0.5)
    return g.eval()


def test_generator_forward_shape_and_dtype(G):
    img = G(torch.randn(2, 32), noise_mode="const")
    assert img.shape == (2, 3, 32, 32) and img.dtype == torch.float32 and torch.isfinite(img).all()


def test_fused_and_nonfused_generators_agree(G):
    z = torch.randn(4, 32)
    with torch.no_grad():
        a = G(z, noise_mode="const", fused_modconv=False)
        b = G(z, noise_mode="const", fused_modconv=True)
        c = G(z, noise_mode="random", fused_modconv=False, noise_generator=torch.Generator().manual_seed(5))
        d = G(z, noise_mode="random", fused_modconv=True, noise_generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(c, d, atol=1e-5, rtol=0)


def test_truncation(G):
    G.mapping.w_avg.copy_(torch.randn(32))
    z = torch.randn(3, 32)
    ws = G.mapping(z, None, truncation_psi=0)
    assert torch.allclose(ws, G.mapping.w_avg.expand_as(ws))
    full = G.mapping(z, None)
    cut = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=4)
    torch.testing.assert_close(cut[:, :4], G.mapping.w_avg + 0.5 * (full[:, :4] - G.mapping.w_avg))
    assert torch.equal(cut[:, 4:], full[:, 4:])


def test_w_avg_tracks_in_training_only(G):
    z = torch.randn(8, 32)
    G.mapping(z, None)
    assert torch.count_nonzero(G.mapping.w_avg) == 0  # eval mode: no update
    G.mapping.train()
    w = G.mapping(z, None)[:, 0]
    torch.testing.assert_close(G.mapping.w_avg, (1 - 0.995) * w.mean(dim=0))
    G.mapping(z, None, skip_w_avg_update=True)
    torch.testing.assert_close(G.mapping.w_avg, (1 - 0.995) * w.mean(dim=0))


def test_noise_modes(G):
    ws = G.mapping(torch.randn(2, 32), None)
    const1, const2 = G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const")
    assert torch.equal(const1, const2)
    none = G.synthesis(ws, noise_mode="none")
    assert not torch.allclose(none, const1)
    r1, r2 = G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random")
    assert not torch.allclose(r1, r2)
    set_noise_strength(G, 0.0)
    assert torch.equal(G.synthesis(ws, noise_mode="none"), G.synthesis(ws, noise_mode="const"))
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="fixed")


def test_per_sample_noise_generators_do_not_depend_on_the_batch(G):
    ws = G.mapping(torch.randn(3, 32), None)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = G.synthesis(ws, noise_generator=gens([10, 11, 12]))
    alone = G.synthesis(ws[1:2], noise_generator=gens([11]))
    torch.testing.assert_close(batch[1:2], alone, atol=1e-5, rtol=0)
    reordered = G.synthesis(ws[[2, 0]], noise_generator=gens([12, 10]))
    torch.testing.assert_close(reordered, batch[[2, 0]], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one per sample"):
        G.synthesis(ws, noise_generator=gens([1, 2]))


def test_synthesis_inputs(G):
    w = torch.randn(2, 32)
    torch.testing.assert_close(G.synthesis(w, noise_mode="const"),
                               G.synthesis(w.unsqueeze(1).repeat(1, G.num_ws, 1), noise_mode="const"))
    with pytest.raises(ValueError, match=r"expected ws \(N, 8, 32\)"):
        G.synthesis(torch.randn(2, 7, 32))


def test_gradients_reach_the_latents(G):
    ws = G.mapping(torch.randn(2, 32), None).detach().requires_grad_()
    G.synthesis(ws, noise_mode="const").square().mean().backward()
    assert ws.grad is not None and torch.isfinite(ws.grad).all() and ws.grad.abs().sum() > 0


def test_conv_clamp_bounds_the_image():
    torch.manual_seed(1)
    g = Generator(32, 0, 32, 16, 1, synthesis_kwargs=dict(SMALL, conv_clamp=0.01)).eval()
    img = g(torch.randn(2, 32) * 10, noise_mode="none")
    assert img.abs().max() <= 0.01 * 3 + 1e-6  # three ToRGB outputs, each clamped, summed through upsampling


def test_bf16_autocast_runs():
    torch.manual_seed(2)
    g = Generator(32, 0, 32, 16, 3, synthesis_kwargs=SMALL).eval()
    ws = g.mapping(torch.randn(2, 32), None)
    ref = g.synthesis(ws, noise_mode="const")
    for fused in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img = g.synthesis(ws, noise_mode="const", fused_modconv=fused)
        assert img.dtype == torch.float32 and torch.isfinite(img).all()
        assert (img - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize("arch", ["orig", "resnet"])
def test_other_generator_architectures(arch):
    g = Generator(32, 0, 32, 16, 1, synthesis_kwargs=dict(SMALL, architecture=arch))
    keys = g.state_dict().keys()
    assert ("synthesis.b8.skip.weight" in keys) == (arch == "resnet")
    assert "synthesis.b8.torgb.weight" not in keys and "synthesis.b16.torgb.weight" in keys
    assert g(torch.randn(2, 32)).shape == (2, 1, 16, 16)


def test_discriminator_forward_and_conditioning():
    torch.manual_seed(3)
    d = Discriminator(0, 32, 3, **SMALL)
    assert d(torch.randn(4, 3, 32, 32)).shape == (4, 1)
    dc = Discriminator(5, 32, 3, **SMALL, mapping_kwargs=dict(num_layers=2))
    assert dc.cmap_dim == 32 and dc(torch.randn(4, 3, 32, 32), torch.randn(4, 5)).shape == (4, 1)
    for arch in ("orig", "skip"):
        assert Discriminator(0, 16, 1, architecture=arch, **SMALL)(torch.randn(2, 1, 16, 16)).shape == (2, 1)
    with pytest.raises(ValueError, match=r"expected images \(N, 3, 32, 32\)"):
        d(torch.randn(4, 1, 32, 32))


def test_minibatch_std_groups_are_strided():
    x = torch.randn(4, 2, 3, 3)
    y = MinibatchStdLayer(group_size=2)(x)
    assert y.shape == (4, 3, 3, 3)
    for j in range(2):  # group j = samples {j, j + 2}
        group = x[[j, j + 2]]
        std = (group.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(y[j, 2], std) and torch.allclose(y[j + 2, 2], std)
    with pytest.raises(ValueError, match="divisible"):
        MinibatchStdLayer(group_size=4)(torch.randn(6, 2, 3, 3))


def test_freeze_d_keeps_names_but_not_parameters():
    d = Discriminator(0, 16, 1, **SMALL, block_kwargs=dict(freeze_layers=2))
    params = dict(d.named_parameters())
    assert "b16.fromrgb.weight" not in params and "b16.conv0.weight" not in params
    assert "b16.conv1.weight" in params
    assert {"b16.fromrgb.weight", "b16.conv0.weight", "b16.conv0.bias"} <= set(d.state_dict())


def test_esmodel_encode_synthesize():
    torch.manual_seed(4)
    m = ESModel(32, 0, 32, 32, 1, synthesis_kwargs=dict(SMALL, num_fp16_res=4, conv_clamp=256)).eval()
    x = torch.rand(2, 1, 32, 32)
    ws = m.encode(x)
    assert ws.shape == (2, m.num_ws, 32) and torch.equal(ws[:, 0], ws[:, -1])  # one w, broadcast (W space)
    img = m(x, noise_mode="const")
    assert img.shape == (2, 1, 32, 32)
    torch.testing.assert_close(m.synthesize(ws[:, 0], noise_mode="const"), img)
    with pytest.raises(ValueError, match="unconditional"):
        ESModel(32, 3, 32, 32, 1, synthesis_kwargs=SMALL)
