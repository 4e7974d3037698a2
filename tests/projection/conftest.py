"""Fixtures for stage-1 tests: toy-sized real architectures, a tiny in-memory phantom set, a stand-in perceptual
network (fixed seeded weights; a test double, never used outside tests)."""

from __future__ import annotations

import signal

import pytest
import torch
from torch import nn

from gmia.data.phantoms import PhantomDataset
from gmia.projection import aegan_config
from gmia.projection.losses import FeatureLoss

from tests.conftest import toy_phantom_set


class TinyFeatures(nn.Module):
    """features(x): a fixed random conv + pooling, (N, 32)."""

    def __init__(self, channels: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(123)
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
            self.conv.bias.zero_()

    def features(self, x):
        return nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 2).flatten(1)


class SigintAfter(FeatureLoss):
    """The stand-in perceptual term that raises SIGINT on its k-th call (simulates Ctrl-C mid-run)."""

    def __init__(self, k: int):
        super().__init__(TinyFeatures(), name="tiny")
        self.k, self.calls = k, 0

    def forward(self, x_hat, x):
        self.calls += 1
        if self.calls == self.k:
            signal.raise_signal(signal.SIGINT)
        return super().forward(x_hat, x)



@pytest.fixture
def tiny_cfg():
    """16 px, 16 channels, every phase on (R1 and path length every 2 steps), augmentation on, 8 steps of 4."""
    return aegan_config("tiny", aug_hflip=True, aug_rotate=10.0, lambda_perc=1.0)


@pytest.fixture
def perceptual():
    return FeatureLoss(TinyFeatures(), name="tiny")


@pytest.fixture(scope="session")
def tiny_set():
    return toy_phantom_set(patients=4, studies=3, size=16)


@pytest.fixture
def tiny_data(tiny_set):
    return PhantomDataset(tiny_set, split="train")
