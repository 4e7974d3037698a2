"""The independent lesion segmenter (U-Net on a ResNet-18 encoder) of the utility evaluation."""

from __future__ import annotations

import pytest
import torch

from gmia.evaluation.segmenter import ResUNet, SegmenterConfig, independent_dice


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise with a bright 8 x 8 lesion at a random place in half of the images, and its mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g) * 0.3
    m = torch.zeros(n, 1, 32, 32)
    for i in range(0, n, 2):
        r, c = (int(v) for v in torch.randint(0, 24, (2,), generator=g))
        x[i, :, r:r + 8, c:c + 8] += 0.7
        m[i, :, r:r + 8, c:c + 8] = 1
    return x, m


@pytest.mark.parametrize("size", [32, 64, 45])
def test_the_map_has_the_input_size(size):
    assert ResUNet(3)(torch.rand(2, 3, size, size)).shape == (2, 1, size, size)


@pytest.mark.slow
def test_a_lesion_kept_in_place_scores_like_the_source_and_a_moved_one_does_not():
    x_train, m_train = _images(256, 0)
    x, m = _images(32, 1)
    cfg = SegmenterConfig(epochs=6, seeds=1, batch_size=16, lr=3e-3)
    kept = independent_dice(x_train, m_train, x.clone(), x, m.numpy(), "cpu", cfg)
    assert kept["dice_originals"] > 0.7 and kept["ratio"] == pytest.approx(1.0)
    # every lesion shifted by half the image: the findings would survive, their place would not
    moved = independent_dice(x_train, m_train, torch.roll(x, 16, dims=-1), x, m.numpy(), "cpu", cfg)
    assert moved["dice_originals"] == pytest.approx(kept["dice_originals"]) and moved["ratio"] < 0.3
    assert moved["images_with_lesion"] == 16 and len(moved["ratio_per_seed"]) == 1
    assert "training originals" in independent_dice(x_train[:8], m_train[:8], x, x, m.numpy(), "cpu", cfg)["skipped"]
