import math

import pytest
import torch

from gmia.networks.training.margin_losses import ArcFaceHead, CosFaceHead, margin_logits


def test_margin_only_on_the_target_column():
    cos = torch.tensor([[0.8, 0.1, -0.2]])
    target = torch.tensor([0])
    arc = margin_logits(cos, target, "arcface", scale=10.0, margin=0.3)
    assert arc[0, 0] == pytest.approx(10 * math.cos(math.acos(0.8) + 0.3), abs=1e-5)
    assert torch.allclose(arc[0, 1:], 10 * cos[0, 1:])
    cosface = margin_logits(cos, target, "cosface", scale=10.0, margin=0.3)
    assert cosface[0, 0] == pytest.approx(10 * 0.5, abs=1e-5)


def test_arcface_stays_monotone_past_pi_minus_m():
    cos = torch.linspace(-1, 1, 201)[:, None]
    out = margin_logits(cos, torch.zeros(201, dtype=torch.long), "arcface", 1.0, 0.5)[:, 0]
    assert (out[1:] >= out[:-1] - 1e-6).all()


@pytest.mark.parametrize("head", [ArcFaceHead, CosFaceHead])
def test_loss_prefers_embeddings_at_their_class_centre(head):
    torch.manual_seed(0)
    h = head(8, 4, scale=16, margin=0.3)
    target = torch.arange(4)
    assert h(h.weight.detach().clone(), target) < h(torch.randn(4, 8), target)
    with pytest.raises(ValueError, match="valid: arcface, cosface"):
        margin_logits(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), "sphereface", 1.0, 0.1)
