"""Toy-sized versions of the real architectures, shared by the network tests."""

from __future__ import annotations

import pytest

from gmia.networks import AttackerNet, IdentityNet, MFMNet, PlainUtilityNet, UtilityNet

TINY = {
    "identity": (IdentityNet, dict(widths=(8, 16, 16), blocks=(1, 1, 1), stem_width=8, embed_dim=32)),
    "utility": (UtilityNet, dict(num_findings=3, growth=4, blocks=(2, 2), init_features=8, feature_dim=16)),
    "utility_seg": (UtilityNet, dict(num_findings=3, growth=4, blocks=(2, 2), init_features=8, feature_dim=16,
                                     segment=True, decoder_width=8)),
    "utility2": (PlainUtilityNet, dict(num_findings=3, widths=(8, 16), convs=(1, 2))),
    "mfm": (MFMNet, dict(widths=(8, 16, 16), latent_channels=4, decoder=True, projection_dim=8)),
    "attacker": (AttackerNet, dict(widths=(8, 16, 16), convs=(1, 1, 1), embed_dim=32)),
}


def tiny(kind: str, in_channels: int = 1, resolution: int = 32):
    cls, kw = TINY[kind]
    return cls(in_channels=in_channels, resolution=resolution, **kw)


@pytest.fixture
def tiny_net():
    return tiny


def tiny_kwargs(kind: str, in_channels: int = 1, resolution: int = 32) -> dict:
    """The constructor kwargs of ``tiny(kind, ...)`` (what a checkpoint card stores)."""
    return dict(in_channels=in_channels, resolution=resolution, **TINY[kind][1])


@pytest.fixture
def tiny_net_kwargs():
    return tiny_kwargs

