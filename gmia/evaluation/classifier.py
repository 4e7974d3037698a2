"""An independent finding classifier for the utility evaluation: another family than E_ut, never seen by the
optimizer.

E_ut's AUROC on anonymized images measures the network the optimizer was told to please. This one is a
torchvision ResNet-18 (residual, batch norm, global pooling: E_ut is a DenseNet), trained here from scratch on
the real training originals with its own seed. Two readings:

* **classifier trained on originals**, scored on the anonymized images and on their sources: how much of the
  findings a model that never saw an anonymized image still finds (macro AUROC, and per finding);
* **train on anonymized, test on originals**: a classifier trained on anonymized training images against the
  same classifier trained on those images' originals, both tested on the evaluated originals: what a researcher
  who receives the release can learn from it. One pair per seed (a single run's gap moves by about 0.03 with the
  seed on 400 images), and, given the stage-1 reconstructions G(E(x)) of the same training images, a third arm:
  the gap a release from this stage-1 model would have if stage 2 kept everything, which tells a stage-1 limit
  from a stage-2 loss.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import macro_auroc, per_finding_auroc

__all__ = ["ClassifierConfig", "train_classifier", "independent_utility"]


@dataclass(frozen=True)
class ClassifierConfig:
    epochs: int = 6               # on the training originals (a few thousand images)
    small_set_steps: int = 150    # optimizer steps for the train-on-anonymized pair (400 images: 24 epochs)
    # Both readings are means over networks trained with seeds seed, seed + 1, ...: on the phantom chest preset one
    # network's ratio moves by about 0.01 with its seed, one 400-image pair's gap by about 0.03
    seeds: int = 3
    small_set_seeds: int = 3
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
                        cache_key: tuple | None = None, train_arms: dict[str, torch.Tensor] | None = None,
                        x_rec: torch.Tensor | None = None) -> dict:
    """Both readings (module doc), each the mean over ``cfg.seeds`` / ``cfg.small_set_seeds`` networks (macro
    AUROC per network, then the mean; the ratio is of the means). ``anon_train``: (anonymized training images, their
    originals, their labels); ``train_arms``: more training sets aligned with those originals, each trained like
    them and reported as ``macro_auroc_trained_on_<name>`` and ``gap_<name>`` ("reconstructions": their stage-1
    reconstructions, the limit of what a release from this G can teach); ``x_rec``: the stage-1 reconstructions of
    ``x_src``, scored beside them. ``cache_key``: names the training set, so that a second call with the same key
    reuses the trained networks."""
    key = None if cache_key is None else (*cache_key, cfg)
    nets = _TRAINED.get(key) if key is not None else None
    if nets is None:
        nets = [train_classifier(x_train, y_train, replace(cfg, seed=s), device) for s in _seeds(cfg.seed, cfg.seeds)]
        if key is not None:
            _TRAINED.clear()  # one at a time: a process evaluates one dataset
            _TRAINED[key] = nets
    runs = [(_logits(net, x_anon, device), _logits(net, x_src, device)) for net in nets]
    anon_each = [macro_auroc(y, a) for a, _ in runs]
    src_each = [macro_auroc(y, s) for _, s in runs]
    anon, src = float(np.mean(anon_each)), float(np.mean(src_each))
    per_a = dict(zip(findings, np.mean([per_finding_auroc(y, a) for a, _ in runs], axis=0).tolist()))
    per_s = dict(zip(findings, np.mean([per_finding_auroc(y, s) for _, s in runs], axis=0).tolist()))
    out = {"classifier": "torchvision ResNet-18 from scratch (another family than E_ut; never seen by the optimizer)",
           "trained_on": f"{len(x_train)} real training originals", "config": cfg.__dict__,
           "seeds": _seeds(cfg.seed, cfg.seeds),
           "macro_auroc_anonymized": anon, "macro_auroc_originals": src,
           "ratio": anon / src if src and np.isfinite(src) else None,
           "ratio_per_seed": [a / s if s else None for a, s in zip(anon_each, src_each)],
           "per_finding": {f: {"anonymized": per_a.get(f), "originals": per_s.get(f),
                               "ratio": per_a[f] / per_s[f] if np.isfinite(per_a[f] / per_s[f]) else None}
                           for f in findings}}
    ratios = {f: v["ratio"] for f, v in out["per_finding"].items() if v["ratio"] is not None}
    if ratios:
        out["lowest_finding"] = min(ratios, key=ratios.get)
        out["lowest_finding_ratio"] = ratios[out["lowest_finding"]]
    if x_rec is not None:
        # the stage-1 limit of the first reading: what the classifier still finds in G(E(x))
        rec = float(np.mean([macro_auroc(y, _logits(net, x_rec, device)) for net in nets]))
        out["macro_auroc_reconstructions"] = rec
        out["ratio_reconstructions"] = rec / src if src and np.isfinite(src) else None
    if anon_train is not None:
        out["train_on_anonymized"] = _train_on_small_sets(anon_train, train_arms or {}, x_src, y, cfg, device,
                                                          findings)
    return out


def _seeds(first: int, count: int) -> list[int]:
    return [first + k for k in range(max(1, count))]


def _train_on_small_sets(anon_train, more: dict, x_test, y, cfg: ClassifierConfig, device,
                         findings: list[str] | None = None) -> dict:
    """The "train on anonymized, test on originals" reading (module doc): mean over ``cfg.small_set_seeds``;
    every arm of ``more`` is trained and scored the same way, against the same originals arm. With ``findings``
    (the names of y's columns), the gap per finding too."""
    x_at, x_ot, y_t = anon_train
    arms = {"anonymized": x_at, "originals": x_ot, **more}
    seeds = _seeds(cfg.seed, cfg.small_set_seeds)
    logits = {name: [_logits(train_classifier(x, y_t, replace(cfg, seed=s), device, steps=cfg.small_set_steps),
                             x_test, device) for s in seeds] for name, x in arms.items()}
    scores = {name: [macro_auroc(y, z) for z in v] for name, v in logits.items()}
    mean = {name: float(np.mean(v)) for name, v in scores.items()}
    out = {"protocol": f"ResNet-18 trained on {len(x_at)} anonymized training images vs on their originals "
                       f"(same patients, same steps), both tested on the evaluated originals; mean of {len(seeds)} "
                       "seeds",
           "seeds": seeds,
           "macro_auroc_trained_on_anonymized": mean["anonymized"],
           "macro_auroc_trained_on_originals": mean["originals"],
           "gap": mean["originals"] - mean["anonymized"],
           "gap_per_seed": [o - a for o, a in zip(scores["originals"], scores["anonymized"])]}
    for name in more:
        out[f"macro_auroc_trained_on_{name}"] = mean[name]
        out[f"gap_{name}"] = mean["originals"] - mean[name]
    if findings:  # which findings a release fails to teach: per-finding AUROC over seeds, originals minus each arm
        per = {name: np.mean([per_finding_auroc(y, z) for z in v], axis=0) for name, v in logits.items()}
        for name in ("anonymized", *more):
            gaps = per["originals"] - per[name]
            out["gap_per_finding" + ("" if name == "anonymized" else f"_{name}")] = {
                f: (float(g) if np.isfinite(g) else None) for f, g in zip(findings, gaps)}
    return out
