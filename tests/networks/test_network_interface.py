"""The common contract of E_id, E_ut, E_ut2, the MFM and the attacker: [0, 1] NCHW in, adaptation inside, frozen
weights, gradients to the input."""

import pytest
import torch

from gmia.errors import InputError
from gmia.networks.base import adapt_channels

KINDS = ["identity", "utility", "utility_seg", "utility2", "mfm", "attacker"]


def _verb(net, kind):
    return net.embed if kind in ("identity", "attacker") else net.features


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_frozen_and_input_gradient(tiny_net, kind, channels):
    torch.manual_seed(0)
    net = tiny_net(kind, in_channels=channels).frozen()
    assert not net.training and net.is_frozen
    assert not any(p.requires_grad for p in net.parameters())
    net.train()  # a parent module calling train() must not unfreeze batch norm
    assert not net.training
    x = torch.rand(3, channels, 32, 32, requires_grad=True)
    out = _verb(net, kind)(x)
    assert out.ndim == 2 and out.shape[0] == 3
    if kind in ("identity", "attacker"):
        assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_adapts_channels_and_resolution(tiny_net, kind):
    net = tiny_net(kind, in_channels=1, resolution=32).frozen()
    f = _verb(net, kind)
    rgb = torch.rand(2, 3, 64, 64)
    grey = adapt_channels(rgb, 1)
    assert torch.allclose(f(rgb), f(grey), atol=1e-5)  # RGB → grey happens inside
    assert f(torch.rand(2, 1, 48, 48)).shape == f(torch.rand(2, 1, 32, 32)).shape


@pytest.mark.parametrize("kind", KINDS)
def test_batched_equals_one_by_one(tiny_net, kind):
    torch.manual_seed(1)
    net = tiny_net(kind).frozen()
    x = torch.rand(4, 1, 32, 32)
    f = _verb(net, kind)
    together = f(x)
    alone = torch.cat([f(x[i:i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-4)


@pytest.mark.parametrize("bad, match", [
    (torch.rand(1, 32, 32), r"expected shape \(N, C, H, W\)"),
    (torch.rand(2, 1, 32, 32) * 2 - 1, r"expected values in \[0, 1\]"),
    (torch.randint(0, 255, (2, 1, 32, 32), dtype=torch.uint8), "expected float"),
    (torch.rand(2, 2, 32, 32), "1 \\(grey\\) or 3 \\(RGB\\) channels"),
    (torch.rand(2, 1, 32, 24), "expected square images"),
])
def test_input_errors_say_what_was_expected(tiny_net, bad, match):
    net = tiny_net("identity").frozen()
    with pytest.raises(InputError, match=match):
        net.embed(bad)


def test_range_check_can_be_switched_off_for_clamped_hot_loops(tiny_net):
    net = tiny_net("identity").frozen()
    net.check_range = False
    net.embed(torch.rand(2, 1, 32, 32) * 1.5)


def test_utility_heads(tiny_net):
    net = tiny_net("utility_seg", in_channels=3).frozen()
    x = torch.rand(2, 3, 40, 40)
    out = net.outputs(x)
    assert out["features"].shape == (2, 16) and out["logits"].shape == (2, 3)
    mask = net.segment(x)
    assert mask.shape == (2, 1, 40, 40) and 0 <= float(mask.min()) and float(mask.max()) <= 1
    assert torch.allclose(net.logits(x), out["logits"])
    with pytest.raises(NotImplementedError, match="segment=True"):
        tiny_net("utility").segment(x)


def test_mfm_reconstructs_at_its_resolution(tiny_net):
    net = tiny_net("mfm").frozen()
    assert net.features(torch.rand(2, 1, 32, 32)).shape == (2, net.feature_dim) == (2, 4 * 4 * 4)
    rec = net.reconstruct(torch.rand(2, 1, 32, 32))
    assert rec.shape == (2, 1, 32, 32) and 0 <= float(rec.min()) and float(rec.max()) <= 1


def test_reference_scale_identity_network():
    from gmia.networks import IdentityNet

    # the published E_id (IResNet-50 at 256 px): ≈ 97.8 M parameters, 67.1 M of them in the FC
    with torch.device("meta"):
        net = IdentityNet(resolution=256, widths=(64, 128, 256, 512), blocks=(3, 4, 14, 3), stem_width=64)
    assert net.fc.in_features == 512 * 16 * 16
    assert 97e6 < sum(p.numel() for p in net.parameters()) < 99e6


def test_the_utility_networks_elu_is_torchs():
    """E_ut's faster ELU gives F.elu's values and gradients (on both sides of 0 and at 0)."""
    import torch.nn.functional as F

    from gmia.networks.utility import elu

    x = torch.cat([torch.randn(4096) * 3, torch.tensor([0.0, -1e-8, 1e-8, -30.0, 30.0])]).requires_grad_(True)
    ours, theirs = elu(x), F.elu(x)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-6)
    g = torch.randn_like(x)
    (ga,) = torch.autograd.grad(ours, x, g)
    (gb,) = torch.autograd.grad(theirs, x, g)
    assert torch.allclose(ga, gb, atol=1e-6, rtol=1e-6)
