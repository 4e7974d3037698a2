"""The stage-2 MDL term: per-image shapes, finite nonzero gradients, and the identity hinge pushes cos down."""

from __future__ import annotations

import pytest
import torch

from gmia.anonymization.losses import IdentityTerm, Objective
from gmia.decoupling import MDLTerm, fit_from_features
from gmia.errors import InputError
from gmia.networks import IdentityNet, MFMNet

TINY_MFM = dict(in_channels=1, resolution=16, widths=(4, 8), latent_channels=2)  # features: 2·4·4 = 32


@pytest.fixture(scope="module")
def term(planted_sets):
    torch.manual_seed(0)
    mfm = MFMNet(**TINY_MFM).frozen()
    dec = fit_from_features(planted_sets[0], planted_sets[1])[0]  # d = 32, matches the tiny MFM's features
    return MDLTerm(mfm, dec, margin=-1.0)  # every pair is above m' = -1: the hinge is active


def test_shapes_and_reference(term):
    x = torch.rand(3, 1, 16, 16)
    ref = term.reference(x)
    assert ref.shape == (3, 32 + term.decoupler.rank) and not ref.requires_grad
    loss = term.loss(x, ref)
    assert loss.shape == (3,)
    parts = term.components(x, ref)
    torch.testing.assert_close(parts["cos_mfm_id"], torch.ones(3), atol=1e-5, rtol=0)  # x_A = x_R
    assert parts["sem"].max() < 1e-4
    with pytest.raises(InputError, match="reference has"):
        term.loss(x, ref[:, :-1])


def test_gradient_finite_nonzero_and_lowers_identity_cosine(term):
    torch.manual_seed(1)
    x_r = torch.rand(4, 1, 16, 16)
    ref = term.reference(x_r)
    x_a = (x_r + 0.05 * torch.randn_like(x_r)).clamp(0, 1).requires_grad_(True)
    before = term.components(x_a, ref)["cos_mfm_id"].detach()
    only_mid = MDLTerm(term.mfm, term.decoupler, lambda_sem=0.0, lambda_mid=1.0, margin=-1.0)
    (grad,) = torch.autograd.grad(only_mid.loss(x_a, ref).sum(), x_a)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    after = only_mid.components((x_a.detach() - 0.05 * grad / grad.norm()).clamp(0, 1), ref)["cos_mfm_id"]
    assert (after < before).all()
    # the semantic distance is differentiable even at x_A == x_R (floored sqrt)
    x0 = x_r.clone().requires_grad_(True)
    (g0,) = torch.autograd.grad(term.loss(x0, ref).sum(), x0)
    assert torch.isfinite(g0).all()


def test_plugs_into_objective(term):
    torch.manual_seed(2)
    e_id = IdentityNet(in_channels=1, resolution=16, widths=(4, 8), blocks=(1, 1), stem_width=4, embed_dim=8).frozen()
    obj = Objective(IdentityTerm(e_id), None, extra=[term])
    x_r = torch.rand(2, 1, 16, 16)
    refs = obj.references(x_r)
    total, parts = obj.evaluate(x_r * 0.99, refs, margin=0.0)
    assert total.shape == (2,) and parts["mdl"].shape == (2,)
