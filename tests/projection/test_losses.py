import math

import pytest
import torch

from gmia.errors import CheckpointError
from gmia.projection import losses as L
from gmia.projection.model import AEGAN, build_discriminator

TINY = dict(img_resolution=16, img_channels=1, w_dim=32, channel_base=256, channel_max=16)


def _grad_norm(module):
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_gan_losses_values_and_gradients():
    zero = torch.zeros(3, 1)
    assert torch.allclose(L.g_nonsaturating_loss(zero), torch.full((3,), math.log(2)))
    assert torch.allclose(L.d_logistic_loss(zero, zero), torch.full((3,), 2 * math.log(2)))
    torch.manual_seed(0)
    model = AEGAN(**TINY)
    D, _ = build_discriminator(model.init_kwargs, mbstd_group=2)
    x = torch.rand(2, 1, 16, 16)
    y = model.synthesis(model.broadcast(model.encode(x)), noise_mode="random")
    L.g_nonsaturating_loss(D(y)).mean().backward()
    assert _grad_norm(model.encoder) > 0 and _grad_norm(model.synthesis) > 0


def test_r1_and_path_length_are_differentiable():
    torch.manual_seed(0)
    model = AEGAN(**TINY)
    D, _ = build_discriminator(model.init_kwargs, mbstd_group=2)
    real = torch.rand(2, 1, 16, 16).requires_grad_(True)
    r1 = L.r1_penalty(D(real), real)
    assert r1.shape == (2,) and (r1 > 0).all()
    r1.mean().backward()
    assert _grad_norm(D) > 0
    ws = model.broadcast(model.encode(torch.rand(2, 1, 16, 16)))
    lengths = L.path_lengths(model.synthesis(ws), ws, torch.Generator().manual_seed(0))
    assert lengths.shape == (2,) and (lengths > 0).all()
    L.path_length_penalty(lengths, torch.tensor(0.0)).mean().backward()
    assert _grad_norm(model.encoder) > 0 and _grad_norm(model.synthesis) > 0


def test_reconstruction_loss_and_feature_loss(perceptual):
    x = torch.rand(2, 1, 16, 16)
    x_hat = x.clone().requires_grad_(True)
    total, terms = L.ReconstructionLoss(10.0, 10.0, perceptual)(x_hat, x)
    assert total.shape == (2,) and set(terms) == {"mse", "tiny"} and float(total.detach().abs().max()) == 0.0
    total, _ = L.ReconstructionLoss(10.0, 10.0, perceptual)(x_hat + 0.1 * torch.randn_like(x), x)
    total.sum().backward()
    assert (total > 0).all() and x_hat.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in perceptual.parameters())  # frozen measuring stick
    with pytest.raises(ValueError, match="shapes differ"):
        L.mse_per_image(x, x[:, :, :8])


def test_missing_perceptual_weights_say_what_to_provide(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    empty = tmp_path / "models"  # no <preset>/mfm.* here (the default root would find the shipped MFM)
    with pytest.raises(CheckpointError, match="--lpips-weights"):
        L.build_perceptual("lpips", "phantom-cxr64", checkpoints=empty)
    with pytest.raises(CheckpointError, match="no LPIPS trunk weights and no MFM"):
        L.build_perceptual("auto", "phantom-cxr64", checkpoints=empty)
    with pytest.raises(CheckpointError, match="--perceptual none"):
        L.build_perceptual("mfm", None)
    assert L.build_perceptual("none", None) is None
    with pytest.raises(CheckpointError, match="no such file"):
        L.LpipsLoss(tmp_path / "missing.pth")


def test_the_utility_term_reads_every_utility_network_of_the_preset(tmp_path):
    from tests.conftest import save_tiny_checkpoints

    root = save_tiny_checkpoints(tmp_path / "models", roles=("utility", "utility2"))
    both = L.build_perceptual("utility", "phantom-cxr64", checkpoints=root)
    assert [t.name for t in both.terms] == ["utility", "utility2"] and both.name == "utility"
    assert both.sha256.startswith("utility:") and " utility2:" in both.sha256   # the run record names both files
    x = torch.rand(2, 1, 64, 64)
    x_hat = (x + 0.2 * torch.randn_like(x)).requires_grad_(True)
    per_image = both(x_hat, x)
    assert torch.allclose(per_image, both.terms[0](x_hat, x) + both.terms[1](x_hat, x))
    assert (per_image > 0).all() and float(both(x, x).abs().max()) < 1e-6
    per_image.sum().backward()
    assert x_hat.grad.abs().sum() > 0                                            # it trains what made x_hat
    (root / "phantom-cxr64" / "utility2.safetensors").unlink()                   # E_ut2 is optional ...
    assert [t.name for t in L.build_perceptual("utility", "phantom-cxr64", checkpoints=root).terms] == ["utility"]
    (root / "phantom-cxr64" / "utility.safetensors").unlink()                    # ... E_ut is not
    with pytest.raises(CheckpointError, match="gmia train utility"):
        L.build_perceptual("utility", "phantom-cxr64", checkpoints=root)


def test_lpips_uses_a_local_trunk_file(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    features = torchvision.models.alexnet(weights=None).features  # stands in for the ImageNet file's tensors
    path = tmp_path / L.ALEXNET_FILE
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    with pytest.raises(CheckpointError, match="is not that of torchvision's AlexNet"):
        L.LpipsLoss(path)                        # another file under the official name is refused by its hash
    monkeypatch.setattr(L, "ALEXNET_SHA256_PREFIX", L.sha256_file(path)[:8])  # accept this stand-in
    loss = L.LpipsLoss(path)
    assert torch.equal(loss.model.net.slice1[0].weight, features[0].weight)
    x = torch.rand(2, 1, 32, 32)
    d = loss(x.flip(-1), x)
    assert d.shape == (2,) and (d > 0).all() and float(loss(x, x).abs().max()) < 1e-6
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    monkeypatch.setattr(L, "ALEXNET_SHA256_PREFIX", L.sha256_file(tmp_path / "bad.pth")[:8])
    with pytest.raises(CheckpointError, match="missing features"):
        L.LpipsLoss(tmp_path / "bad.pth")


def test_ssim_term_is_one_minus_the_fidelity_metric():
    import kornia

    x = torch.rand(3, 1, 16, 16)
    assert L.dssim_per_image(x, x).abs().max() < 1e-5
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    d = L.dssim_per_image(noisy, x)
    expected = 1 - kornia.metrics.ssim(noisy, x, 11).flatten(1).mean(1)
    assert d.shape == (3,) and torch.allclose(d, expected) and (d > 0.05).all()
    total, terms = L.ReconstructionLoss(10.0, 0.0, None, lambda_ssim=2.0)(noisy, x)
    assert set(terms) == {"mse", "dssim"}
    assert torch.allclose(total, 10.0 * terms["mse"] + 2.0 * d)
    total.sum().backward()
    assert noisy.grad.abs().sum() > 0
    _, terms = L.ReconstructionLoss(10.0, 0.0, None)(noisy, x)
    assert set(terms) == {"mse"}  # weight 0: the term is not computed
