"""Is a phantom set hard in the way real data is hard? Three numbers answer it.

(a) A small CNN, trained a few epochs to tell the *training* patients apart, re-identifies *held-out* patients
    across studies (gallery = each patient's first study, probes = the other studies, cosine rank-1).
(b) Raw-pixel nearest neighbour on the same gallery/probes does much worse: identity lives in structure,
    not in brightness or position.
(c) Every finding is learnable (per-finding AUROC of the same CNN's finding head on held-out patients), and
    findings are not determined by identity (a logistic regression from the identity parameters predicts
    them at chance level, and findings vary within patients).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import nn

from ...metrics import verification_auc
from .base import PhantomSet

__all__ = ["check", "rank1"]


class _Probe(nn.Module):
    """A deliberately small CNN: an embedding for identity plus a multi-label finding head."""

    def __init__(self, channels: int, n_ids: int, n_findings: int, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.trunk = nn.Sequential(
            block(channels, width, 1), block(width, width * 2, 2), block(width * 2, width * 2, 1),
            block(width * 2, width * 4, 2), block(width * 4, width * 4, 2), block(width * 4, width * 4, 2),
        )
        self.embed = nn.Linear(width * 8, 64)
        self.id_weight = nn.Parameter(torch.randn(n_ids, 64) * 0.01)  # cosine classifier → retrieval-ready
        self.findings = nn.Linear(width * 8, max(n_findings, 1))  # 1: a placeholder for the identity probe

    def forward(self, x):
        f = self.trunk(x * 2 - 1)
        # max pooling sees small local findings (a nodule, a lid) that average pooling dilutes
        h = torch.cat([f.mean((2, 3)), f.amax((2, 3))], dim=1)
        e = F.normalize(self.embed(h), dim=1)
        return e, 16.0 * e @ F.normalize(self.id_weight, dim=1).T, self.findings(h)


def rank1(gallery: np.ndarray, gallery_ids: np.ndarray, probes: np.ndarray, probe_ids: np.ndarray,
          metric: str = "cosine") -> float:
    """Fraction of probes whose nearest gallery item has the same id ("cosine" similarity or "l2" distance)."""
    if metric == "cosine":
        g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True).clip(1e-12)
        p = probes / np.linalg.norm(probes, axis=1, keepdims=True).clip(1e-12)
        nearest = np.argmax(p @ g.T, axis=1)
    else:
        d = (probes ** 2).sum(1)[:, None] - 2 * probes @ gallery.T + (gallery ** 2).sum(1)[None]
        nearest = np.argmin(d, axis=1)
    return float(np.mean(gallery_ids[nearest] == probe_ids))


def _split(ps: PhantomSet, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    patients = np.unique(ps.patient)
    rng = np.random.default_rng(seed)
    test = rng.choice(patients, size=max(2, int(round(len(patients) * test_fraction))), replace=False)
    is_test = np.isin(ps.patient, test)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def check(ps: PhantomSet, epochs: int = 12, seed: int = 0, test_fraction: float = 0.4,
          batch_size: int = 32, size: int = 64, id_size: int = 32) -> dict:
    """Run the three realism checks on a phantom set; returns a dict of numbers (see module docstring).

    Findings are probed at ``size`` (a nodule needs the pixels); identity at ``id_size``: anatomy is coarse,
    and the 4x cheaper probe can then see enough patients, which is what re-identification needs."""
    train_idx, test_idx = _split(ps, test_fraction, seed)
    x = _resize(torch.from_numpy(ps.images), size)
    x_id = _resize(x, id_size)
    labels = torch.from_numpy(ps.labels().astype(np.float32))
    train_patients = np.unique(ps.patient[train_idx])
    id_of = {p: i for i, p in enumerate(train_patients)}
    y_id = torch.tensor([id_of.get(p, -1) for p in ps.patient])

    # two probes, trained apart: in one shared trunk the many-class identity loss starves the finding head
    id_net = _train(_Probe(x.shape[1], len(train_patients), 0), x_id, train_idx, epochs, batch_size, seed,
                    lambda out, b: F.cross_entropy(out[1], y_id[b]))
    f_net = _train(_Probe(x.shape[1], 1, labels.shape[1]), x, train_idx, epochs, batch_size, seed + 1,
                   lambda out, b: F.binary_cross_entropy_with_logits(out[2], labels[b]))
    with torch.no_grad():
        test = torch.from_numpy(test_idx)
        emb = torch.cat([id_net(x_id[b])[0] for b in test.split(128)]).numpy()
        f_scores = torch.cat([f_net(x[b])[2] for b in test.split(128)]).numpy()
    pid, sid = ps.patient[test_idx], ps.study[test_idx]
    first = np.array([s == sid[pid == p].min() for p, s in zip(pid, sid)])
    pixels = x[test_idx].flatten(1).numpy()

    out = {
        "n_test_patients": int(len(np.unique(pid))),
        "chance": 1.0 / len(np.unique(pid)),
        "cnn_rank1": rank1(emb[first], pid[first], emb[~first], pid[~first]),
        "pixel_nn_rank1": rank1(pixels[first], pid[first], pixels[~first], pid[~first], metric="l2"),
        # verification AUC over all pairs of test images: same patient (other study) vs. different patients
        "cnn_verification_auc": verification_auc(emb, pid, max_pairs=50_000),
        "pixel_verification_auc": verification_auc(pixels - pixels.mean(0), pid, max_pairs=50_000),
        "finding_auroc": {},
        "finding_from_identity_auroc": {},
        "finding_varies_within_patient": {},
    }
    ident = np.stack([ps.identity[k] for k in ps.identity], axis=1)
    for j, name in enumerate(ps.finding_names):
        y = ps.labels()[:, j]
        out["finding_auroc"][name] = _auroc(y[test_idx], f_scores[:, j])
        if len(np.unique(y[train_idx])) == 2:
            lr = LogisticRegression(max_iter=1000).fit(ident[train_idx], y[train_idx])
            out["finding_from_identity_auroc"][name] = _auroc(y[test_idx], lr.predict_proba(ident[test_idx])[:, 1])
        per_patient = [np.ptp(y[ps.patient == p]) for p in np.unique(ps.patient)]
        out["finding_varies_within_patient"][name] = float(np.mean(per_patient))
    out["finding_auroc_macro"] = float(np.nanmean(list(out["finding_auroc"].values())))
    return out


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")


def _train(net: _Probe, x: torch.Tensor, train_idx: np.ndarray, epochs: int, batch_size: int, seed: int,
           loss_fn) -> _Probe:
    """A few epochs of Adam on the training patients; returns the net in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=gen)]
        for batch in order.split(batch_size):
            loss = loss_fn(net(x[batch]), batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")
