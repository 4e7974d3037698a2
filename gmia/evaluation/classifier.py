"""An independent finding classifier for the utility evaluation: another family than E_ut, never seen by the
optimizer.

E_ut's AUROC on anonymized images measures the network the optimizer was told to please. This one is a
torchvision ResNet-18 (residual, batch norm, global pooling: E_ut is a DenseNet), trained here from scratch on
the real training originals with its own seed. Two readings:

* **classifier trained on originals**, scored on the anonymized images and on their sources: how much of the
  findings a model that never saw an anonymized image still finds (macro AUROC, and per finding);
* **train on anonymized, test on originals**: a classifier trained on anonymized training images against the
  same classifier trained on those images' originals, both tested on the evaluated originals: what a researcher
  who receives the release can learn from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import macro_auroc, per_finding_auroc

__all__ = ["ClassifierConfig", "train_classifier", "independent_utility"]


@dataclass(frozen=True)
class ClassifierConfig:
    epochs: int = 6               # on the training originals (a few thousand images)
    small_set_steps: int = 150    # optimizer steps for the train-on-anonymized pair (400 images: 24 epochs)
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 1234              # not E_ut's, not the attacker's


def _resnet(channels: int, findings: int) -> torch.nn.Module:
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=findings)
    net.conv1 = torch.nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def train_classifier(x: torch.Tensor, y: np.ndarray, cfg: ClassifierConfig, device, steps: int | None = None):
    """A ResNet-18 trained on images ``x`` (N, C, R, R) in [0, 1] for the multi-label targets ``y`` (N, F) (NaN:
    unknown, ignored); ``steps`` optimizer steps, else ``cfg.epochs`` epochs."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = _resnet(x.shape[1], y.shape[1]).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    target = torch.as_tensor(y, dtype=torch.float32)
    known = ~torch.isnan(target)
    target = torch.nan_to_num(target)
    n = len(x)
    steps = steps or cfg.epochs * max(1, n // cfg.batch_size)
    order = torch.randperm(n, generator=g)
    pos = 0
    for _ in range(steps):
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        logits = net(x[idx].to(device) * 2 - 1)
        loss = F.binary_cross_entropy_with_logits(logits, target[idx].to(device), reduction="none")
        loss = (loss * known[idx].to(device)).sum() / known[idx].sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def _logits(net, x: torch.Tensor, device, batch: int = 256) -> np.ndarray:
    return torch.cat([net(x[s:s + batch].to(device) * 2 - 1).float().cpu() for s in range(0, len(x), batch)]).numpy()


# Classifiers trained on originals, by (dataset, records, device, config): one process that evaluates several runs
# against the same data (gmia calibrate, gmia sweep) trains each once. Training is seeded, so this changes no number.
_TRAINED: dict = {}


def independent_utility(x_train: torch.Tensor, y_train: np.ndarray, x_anon: torch.Tensor, x_src: torch.Tensor,
                        y: np.ndarray, findings: list[str], device, cfg: ClassifierConfig = ClassifierConfig(),
                        anon_train: tuple[torch.Tensor, torch.Tensor, np.ndarray] | None = None,
                        cache_key: tuple | None = None) -> dict:
    """Both readings (module doc). ``anon_train``: (anonymized training images, their originals, their labels).
    ``cache_key``: names the training set, so that a second call with the same key reuses the trained network."""
    key = None if cache_key is None else (*cache_key, cfg)
    net = _TRAINED.get(key) if key is not None else None
    if net is None:
        net = train_classifier(x_train, y_train, cfg, device)
        if key is not None:
            _TRAINED.clear()  # one at a time: a process evaluates one dataset
            _TRAINED[key] = net
    s_anon, s_src = _logits(net, x_anon, device), _logits(net, x_src, device)
    anon, src = macro_auroc(y, s_anon), macro_auroc(y, s_src)
    per_a = dict(zip(findings, per_finding_auroc(y, s_anon).tolist()))
    per_s = dict(zip(findings, per_finding_auroc(y, s_src).tolist()))
    out = {"classifier": "torchvision ResNet-18 from scratch (another family than E_ut; never seen by the optimizer)",
           "trained_on": f"{len(x_train)} real training originals", "config": cfg.__dict__,
           "macro_auroc_anonymized": anon, "macro_auroc_originals": src,
           "ratio": anon / src if src and np.isfinite(src) else None,
           "per_finding": {f: {"anonymized": per_a.get(f), "originals": per_s.get(f),
                               "ratio": per_a[f] / per_s[f] if np.isfinite(per_a[f] / per_s[f]) else None}
                           for f in findings}}
    if anon_train is not None:
        x_at, x_ot, y_t = anon_train
        on_anon = train_classifier(x_at, y_t, cfg, device, steps=cfg.small_set_steps)
        on_orig = train_classifier(x_ot, y_t, cfg, device, steps=cfg.small_set_steps)
        a, o = macro_auroc(y, _logits(on_anon, x_src, device)), macro_auroc(y, _logits(on_orig, x_src, device))
        out["train_on_anonymized"] = {
            "protocol": f"ResNet-18 trained on {len(x_at)} anonymized training images vs on their originals "
                        "(same patients, same steps), both tested on the evaluated originals",
            "macro_auroc_trained_on_anonymized": a, "macro_auroc_trained_on_originals": o, "gap": o - a}
    return out
