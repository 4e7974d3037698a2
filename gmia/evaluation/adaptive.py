"""The adaptive attacker: re-identifiers trained on anonymized images of *training* patients.

A frozen attacker is an optimistic measure: it never saw anonymized images, so it may fail merely because they
look different (PriCheXy-Net reports AUC after retraining for this reason). The adaptive attacker knows the
method: it ran the anonymizer on patients whose identities it knows (the training patients) and learned from the
result. It is the same architecture as the attacker (``AttackerNet`` + CosFace, as in
``gmia.networks.training``), fine-tuned from the attacker's weights (``init="attacker"``, the strongest start)
or trained from scratch, with one class per training patient, on the union of the patients' anonymized images
and (``include_originals``) their originals, so that an anonymized image and the originals of its patient are
pulled to the same class centre — exactly the link the attack is scored on. It is then evaluated on the test
patients like the frozen attacker.

One network of one family is a weak adversary: a re-identifier that shares a blind spot with the anonymizer (or
a lucky seed) under-reports the leak. So the evaluation trains two families, the attacker family above
(``"attacker"``, VGG-style, fine-tuned) and a torchvision ResNet-18 trained from scratch (``"resnet"``: residual,
another stem, another pooling), each with several seeds, and reports the strongest (``gmia.evaluation.evaluate``).

A compact loop here rather than ``gmia.networks.training.train``: that trainer reads a phantom folder from disk,
while these training images are an anonymization run's output joined with the originals in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..networks.attacker import AttackerNet
from ..networks.base import FrozenNet
from ..networks.training.config import AttackerConfig
from ..networks.training.margin_losses import CosFaceHead
from ..networks.training.tasks import Augment

__all__ = ["AdaptiveConfig", "ARCHITECTURES", "ResNetReidentifier", "train_adaptive_attacker"]

ARCHITECTURES = ("attacker", "resnet")


@dataclass(frozen=True)
class AdaptiveConfig:
    """Retraining settings (small by default: a fine-tune, not a new attacker)."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3                 # AdamW peak (warmup 1 epoch, cosine to 0)
    weight_decay: float = 5e-4
    init: str = "attacker"           # "attacker": start from the attacker's weights; "scratch": random init
    include_originals: bool = True   # also train on the originals of the training patients
    scale: float = 30.0              # CosFace s, m (the attacker's training values)
    margin: float = 0.35
    margin_warmup: float = 0.2       # fraction of training over which m ramps up from 0
    seed: int = 4243                 # neither E_id's nor the attacker's seed; run k uses seed + k
    architectures: tuple = ARCHITECTURES  # families trained; the evaluation reports the strongest run
    seeds: int = 3                   # runs per family (different initialization and batch order)
    resnet_epochs: int = 16          # the ResNet starts from scratch, so it gets more epochs


class ResNetReidentifier(FrozenNet):
    """A torchvision ResNet-18 trunk (another family than the attacker and E_id) with a BN'd linear embedding."""

    def __init__(self, in_channels: int = 1, resolution: int = 64, embed_dim: int = 256):
        super().__init__(in_channels, resolution)
        from torchvision.models import resnet18

        trunk = resnet18(weights=None)
        trunk.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        trunk.fc = nn.Identity()
        self.trunk, self.embed_dim = trunk, int(embed_dim)
        self.head = nn.Sequential(nn.Linear(512, embed_dim), nn.BatchNorm1d(embed_dim))

    def raw_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x * 2 - 1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.raw_embedding(self.prepare(x)), dim=1)

    forward = embed


def _network(architecture: str, kwargs: dict, state: dict | None, cfg: AdaptiveConfig):
    if architecture == "attacker":
        net = AttackerNet(**kwargs)
        if cfg.init == "attacker" and state is not None:
            net.load_state_dict(state)
        return net, cfg.epochs
    if architecture == "resnet":
        return ResNetReidentifier(kwargs.get("in_channels", 1), kwargs.get("resolution", 64)), cfg.resnet_epochs
    raise ValueError(f"unknown adaptive attacker architecture {architecture!r}; valid: {', '.join(ARCHITECTURES)}")


def train_adaptive_attacker(kwargs: dict, state: dict | None, images: torch.Tensor, patients: np.ndarray,
                            cfg: AdaptiveConfig = AdaptiveConfig(), device="cpu", architecture: str = "attacker",
                            run: int = 0) -> tuple[FrozenNet, dict]:
    """Train a re-identifier of ``architecture`` on ``images`` (N, C, S, S) in [0, 1] labelled by ``patients`` (N,).

    kwargs: the attacker's card kwargs (channels and resolution for both families); state: the attacker's state
    dict (used when ``cfg.init == "attacker"``); run: the seed index (seed = cfg.seed + run). Returns the frozen
    network and a log {"architecture", "seed", "epochs", "images", "patients", "final_loss"}.
    """
    if cfg.init not in ("attacker", "scratch"):
        raise ValueError(f"AdaptiveConfig.init must be 'attacker' or 'scratch', got {cfg.init!r}")
    _, target = np.unique(np.asarray(patients), return_inverse=True)
    target = torch.as_tensor(target, dtype=torch.int64)
    seed = cfg.seed + run
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net, epochs = _network(architecture, kwargs, state, cfg)
    head = CosFaceHead(net.embed_dim, int(target.max()) + 1, scale=cfg.scale, margin=cfg.margin)
    net, head = net.to(device), head.to(device)
    augment = Augment(AttackerConfig())
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(images)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total, warm = steps_per_epoch * epochs, steps_per_epoch
    net.train()
    head.train()
    loss_value, step = float("nan"), 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            lr = cfg.lr * ((step + 1) / warm if step < warm else
                           0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm))))
            for group in opt.param_groups:
                group["lr"] = lr
            head.margin = cfg.margin * min(1.0, step / max(1.0, cfg.margin_warmup * total))
            x, _ = augment(images[idx].to(device))
            loss = head(net.raw_embedding(net.prepare(x)), target[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            loss_value, step = float(loss.item()), step + 1
    log = {"architecture": architecture, "seed": seed, "epochs": epochs, "images": int(n),
           "patients": int(target.max()) + 1, "final_loss": loss_value, "steps": step}
    return net.frozen(), log
