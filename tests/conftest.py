"""Shared fixtures: tiny phantom sets and temporary folders. Nothing here touches the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmia.data.phantoms.base import PhantomSet


def toy_phantom_set(patients: int = 4, studies: int = 3, size: int = 16, channels: int = 1, seed: int = 0) -> PhantomSet:
    """A hand-made PhantomSet (random blobs), independent of the real generators: for I/O tests."""
    rng = np.random.default_rng(seed)
    n = patients * studies
    images = rng.random((n, channels, size, size), dtype=np.float32)
    masks = (rng.random((n, 1, size, size)) > 0.8).astype(np.uint8)
    patient = np.repeat(np.arange(patients), studies)
    study = np.tile(np.arange(studies), patients)
    findings = {"finding_a": rng.integers(0, 2, n).astype(np.uint8), "finding_b": rng.integers(0, 2, n).astype(np.uint8)}
    identity = {"width": np.repeat(rng.random(patients), studies).astype(np.float32)}
    return PhantomSet("cxr" if channels == 1 else "face", images, masks, patient, study, findings, identity,
                      meta={"seed": seed, "patients": patients, "studies": studies,
                            "split": np.array(["train"] * (n - studies) + ["test"] * studies, dtype=object)})


@pytest.fixture
def toy_set():
    return toy_phantom_set()


@pytest.fixture(autouse=True)
def one_thread():
    """Toy-sized networks gain nothing from intra-op threads, and on a busy shared CPU OpenMP barriers can make a
    2-thread forward pass many times slower than a 1-thread one. Restored after each test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Toy-sized real architectures for a phantom-cxr64 checkpoint folder (64 px in, random weights).
TINY_CKPT = {
    "aegan": ("AEGAN", dict(img_resolution=64, img_channels=1, w_dim=32, channel_base=128, channel_max=16)),
    "identity": ("IdentityNet", dict(in_channels=1, resolution=32, widths=(8, 16, 16), blocks=(1, 1, 1), stem_width=8,
                                     embed_dim=32)),
    "utility": ("UtilityNet", dict(in_channels=1, resolution=32, num_findings=2, growth=4, blocks=(2, 2),
                                   init_features=8, feature_dim=16)),
    "utility2": ("PlainUtilityNet", dict(in_channels=1, resolution=32, num_findings=2, widths=(8, 16), convs=(1, 1))),
    "attacker": ("AttackerNet", dict(in_channels=1, resolution=32, widths=(8, 16, 16), convs=(1, 1, 1), embed_dim=32)),
    "mfm": ("MFMNet", dict(in_channels=1, resolution=32, widths=(8, 16, 16), latent_channels=4)),
}


def save_tiny_checkpoints(root, roles=("aegan", "identity", "utility", "utility2"), overrides=None, seed=0):
    """Write ``<root>/phantom-cxr64/<role>.*`` for each role: seeded random toy networks; returns ``root``."""
    from gmia import networks
    from gmia.checkpoints import save_module
    from gmia.projection.model import AEGAN

    classes = {"AEGAN": AEGAN, "IdentityNet": networks.IdentityNet, "UtilityNet": networks.UtilityNet,
               "AttackerNet": networks.AttackerNet, "MFMNet": networks.MFMNet,
               "PlainUtilityNet": networks.PlainUtilityNet}
    torch.manual_seed(seed)
    for role in roles:
        cls, kw = TINY_CKPT[role]
        kw = {**kw, **(overrides or {}).get(role, {})}
        net = classes[cls](**kw)
        save_module(net, kw, root / "phantom-cxr64", role, meta={"preset": "phantom-cxr64"})
        if role == "aegan":  # the phantom presets draw surrogate identities from this prior
            from gmia.projection.prior import LatentPrior

            LatentPrior.fit(net.eval(), torch.rand(24, kw["img_channels"], kw["img_resolution"], kw["img_resolution"],
                                                   generator=torch.Generator().manual_seed(seed))).save(
                root / "phantom-cxr64")
            # ... and re-draw all but a finding subspace of it (a random one: toy networks have no findings)
            from gmia.anonymization.redraw import LatentSplit

            keep, _ = torch.linalg.qr(torch.randn(kw["w_dim"], 4, generator=torch.Generator().manual_seed(seed),
                                                  dtype=torch.float64))
            LatentSplit(keep).save(root / "phantom-cxr64")
    return root


def pytest_collection_modifyitems(config, items):
    """The longest tests (marked ``long``: minutes each) go to the two ends of the run, the first one first and
    the next one last, and so on. ``make test`` runs on several workers with work stealing (pytest-xdist
    ``--dist worksteal``), which hands each worker a contiguous share of this order: each long test then opens
    or closes a different share instead of two of them queueing behind each other on one worker."""
    long = [item for item in items if item.get_closest_marker("long")]
    if not long:
        return
    rest = [item for item in items if not item.get_closest_marker("long")]
    items[:] = long[0::2] + rest + long[1::2][::-1]
