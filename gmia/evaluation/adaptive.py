"""The adaptive attacker: the evaluation attacker retrained on anonymized images of *training* patients.

A frozen attacker is an optimistic measure: it never saw anonymized images, so it may fail merely because they
look different (PriCheXy-Net reports AUC after retraining for this reason). The adaptive attacker knows the
method: it ran the anonymizer on patients whose identities it knows (the training patients) and learned from the
result. It is the same architecture as the attacker (``AttackerNet`` + CosFace, as in
``gmia.networks.training``), fine-tuned from the attacker's weights (``init="attacker"``, the strongest start)
or trained from scratch, with one class per training patient, on the union of the patients' anonymized images
and (``include_originals``) their originals, so that an anonymized image and the originals of its patient are
pulled to the same class centre — exactly the link the attack is scored on. It is then evaluated on the test
patients like the frozen attacker.

A compact loop here rather than ``gmia.networks.training.train``: that trainer reads a phantom folder from disk,
while these training images are an anonymization run's output joined with the originals in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..networks.attacker import AttackerNet
from ..networks.training.config import AttackerConfig
from ..networks.training.margin_losses import CosFaceHead
from ..networks.training.tasks import Augment

__all__ = ["AdaptiveConfig", "train_adaptive_attacker"]


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
    seed: int = 4243                 # neither E_id's nor the attacker's seed


def train_adaptive_attacker(kwargs: dict, state: dict | None, images: torch.Tensor, patients: np.ndarray,
                            cfg: AdaptiveConfig = AdaptiveConfig(), device="cpu") -> tuple[AttackerNet, dict]:
    """Train an ``AttackerNet(**kwargs)`` on ``images`` (N, C, S, S) in [0, 1] labelled by ``patients`` (N,).

    state: the attacker's state dict (used when ``cfg.init == "attacker"``). Returns the frozen network and a
    log {"epochs", "images", "patients", "final_loss"}.
    """
    if cfg.init not in ("attacker", "scratch"):
        raise ValueError(f"AdaptiveConfig.init must be 'attacker' or 'scratch', got {cfg.init!r}")
    _, target = np.unique(np.asarray(patients), return_inverse=True)
    target = torch.as_tensor(target, dtype=torch.int64)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = AttackerNet(**kwargs)
    if cfg.init == "attacker" and state is not None:
        net.load_state_dict(state)
    head = CosFaceHead(net.embed_dim, int(target.max()) + 1, scale=cfg.scale, margin=cfg.margin)
    net, head = net.to(device), head.to(device)
    augment = Augment(AttackerConfig())
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(images)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total, warm = steps_per_epoch * cfg.epochs, steps_per_epoch
    net.train()
    head.train()
    loss_value, step = float("nan"), 0
    for _ in range(cfg.epochs):
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
    log = {"epochs": cfg.epochs, "images": int(n), "patients": int(target.max()) + 1, "final_loss": loss_value,
           "steps": step}
    return net.frozen(), log
