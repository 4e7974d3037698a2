"""What differs between the trainings: the network, the loss of one batch and the held-out metrics.

A task holds the modules it trains (``modules``: the network plus any training-only head), computes the loss
of one batch (``loss``) and evaluates a split (``evaluate``). The loop in ``loops.py`` is the same for all.
"""

from __future__ import annotations

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ... import metrics
from ..attacker import AttackerNet
from ..identity import IdentityNet
from ..mfm import MFMNet
from ..plain_utility import PlainUtilityNet
from ..utility import UtilityNet
from .config import AttackerConfig, IdentityConfig, MFMConfig, SecondUtilityConfig, TrainConfig, UtilityConfig
from .data import PhantomData, Split
from .margin_losses import ArcFaceHead, CosFaceHead

__all__ = ["Augment", "Task", "ReIdTask", "UtilityTask", "MFMTask", "make_task"]


class Augment(nn.Module):
    """Small random affine (kornia; masks follow with nearest sampling) plus brightness/contrast jitter."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        self.affine = K.RandomAffine(degrees=cfg.aug_degrees, translate=(cfg.aug_translate, cfg.aug_translate),
                                     scale=(1 - cfg.aug_scale, 1 + cfg.aug_scale), padding_mode="border", p=1.0)
        self.affine_with_mask = K.AugmentationSequential(self.affine, data_keys=["input", "mask"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        if mask is None:
            x = self.affine(x)
        else:
            x, mask = self.affine_with_mask(x, mask)
        n = x.shape[0]
        contrast = 1 + (torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * self.cfg.aug_contrast
        bright = (torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * self.cfg.aug_brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean + bright).clamp(0, 1)
        return x, mask


@torch.no_grad()
def _run(fn, split: Split, batch_size: int, device) -> torch.Tensor:
    """``fn`` over a whole split in eval batches, concatenated on the CPU."""
    outs = []
    for start in range(0, len(split), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(split)))
        outs.append(fn(split.batch(idx, device)).float().cpu())
    return torch.cat(outs)


class Task:
    """Base: ``net`` (the network that is saved), ``net_kwargs`` (its constructor kwargs), ``heads``."""

    net: nn.Module
    net_kwargs: dict
    heads: dict[str, nn.Module]

    def __init__(self, cfg: TrainConfig, data: PhantomData):
        self.cfg, self.data = cfg, data
        self.augment = Augment(cfg)
        self.heads = {}

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net, **self.heads}

    def _build(self, cls, **kw) -> None:
        self.net_kwargs = dict(in_channels=self.data.channels, resolution=self.data.size, **kw)
        self.net = cls(**self.net_kwargs)

    def set_progress(self, fraction: float) -> None:
        """Called before every step with the fraction of training done (for schedules inside the loss)."""

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self, split: Split, train: Split | None = None) -> dict[str, float]:
        raise NotImplementedError


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if a.size else float("nan")


class ReIdTask(Task):
    """E_id (IResNet + ArcFace) and the attacker (VGG-style + CosFace): margin softmax over training patients."""

    def __init__(self, cfg: IdentityConfig | AttackerConfig, data: PhantomData):
        super().__init__(cfg, data)
        self._build(IdentityNet if cfg.role == "identity" else AttackerNet, **cfg.net_kwargs())
        head = {"arcface": ArcFaceHead, "cosface": CosFaceHead}[cfg.loss]
        n_ids = len(data.splits["train"].patients)
        self.heads = {"margin": head(cfg.embed_dim, n_ids, scale=cfg.scale, margin=cfg.margin)}

    def set_progress(self, fraction):
        # the margin ramps up from 0: a full margin on random embeddings stalls training from scratch
        warm = self.cfg.margin_warmup
        self.heads["margin"].margin = self.cfg.margin * (min(1.0, fraction / warm) if warm > 0 else 1.0)

    def loss(self, batch):
        x, _ = self.augment(batch["image"])
        emb = self.net.raw_embedding(self.net.prepare(x))
        loss = self.heads["margin"](emb, batch["patient"])
        return loss, {"loss": loss.item()}

    def evaluate(self, split, train=None):
        dev = next(self.net.parameters()).device
        emb = _run(lambda b: self.net.embed(b["image"]), split, self.cfg.eval_batch_size, dev).numpy()
        ids = split.patient.numpy()
        labels, scores = metrics.verification_scores(emb, ids, exclude=split.study_keys)
        gallery = split.first_study_mask()
        out = {"verification_auc": metrics.verification_auc(emb, ids, exclude=split.study_keys),
               "eer": metrics.eer(labels, scores),
               "positive_cos_mean": _mean(scores[labels == 1]), "negative_cos_mean": _mean(scores[labels == 0])}
        if (~gallery).any():
            for k in (1, 5):
                out[f"rank{k}"] = metrics.rank_k(emb[gallery], ids[gallery], emb[~gallery], ids[~gallery], k=k)
        return out


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


class UtilityTask(Task):
    """E_ut and E_ut2: multi-label BCE on the findings (unknown = NaN skipped) + lesion BCE/Dice when segmenting."""

    def __init__(self, cfg: UtilityConfig | SecondUtilityConfig, data: PhantomData):
        super().__init__(cfg, data)
        findings = dict(num_findings=len(data.findings), finding_names=tuple(data.findings))
        if cfg.role == "utility2":
            self._build(PlainUtilityNet, **findings, **cfg.net_kwargs())
            return
        segment = cfg.segment and data.splits["train"].masks is not None
        self._build(UtilityNet, **findings, **{**cfg.net_kwargs(), "segment": segment})

    def loss(self, batch):
        x, mask = self.augment(batch["image"], batch.get("mask") if self.net.has_segmentation else None)
        out = self.net.outputs(x)
        y = batch["labels"]
        known = ~torch.isnan(y)
        bce = F.binary_cross_entropy_with_logits(out["logits"][known], y[known])
        logs = {"bce": bce.item()}
        loss = bce
        if self.net.has_segmentation:
            seg = (F.binary_cross_entropy_with_logits(out["mask_logits"], mask)
                   + _soft_dice_loss(out["mask_logits"], mask))
            loss = loss + self.cfg.seg_weight * seg
            logs["seg"] = seg.item()
        logs["loss"] = loss.item()
        return loss, logs

    def evaluate(self, split, train=None):
        dev = next(self.net.parameters()).device
        logits = _run(lambda b: self.net.logits(b["image"]), split, self.cfg.eval_batch_size, dev).numpy()
        y = split.labels.numpy()
        per = metrics.per_finding_auroc(y, logits)
        out = {"macro_auroc": metrics.macro_auroc(y, logits),
               **{f"auroc/{n}": float(v) for n, v in zip(self.data.findings, per)}}
        if self.net.has_segmentation and split.masks is not None:
            prob = _run(lambda b: self.net.segment(b["image"]), split, self.cfg.eval_batch_size, dev).numpy()
            target = split.masks.numpy()
            out["dice"] = metrics.dice(prob, target, reduction="positive")
            out["dice_global"] = metrics.dice(prob, target, reduction="global")
        return out


def _nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR loss: each view must pick its partner among the 2N − 1 other views of the batch."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, D)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class MFMTask(Task):
    """MFM without labels: masked autoencoding (default), plain autoencoding, or contrastive (SimCLR)."""

    def __init__(self, cfg: MFMConfig, data: PhantomData):
        super().__init__(cfg, data)
        if cfg.objective not in ("masked_ae", "ae", "contrastive"):
            raise ValueError(f"unknown MFM objective {cfg.objective!r}; valid: masked_ae, ae, contrastive")
        self._build(MFMNet, **cfg.net_kwargs())

    def _mask_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Replace a random ``mask_ratio`` of ``mask_patch``² patches by uniform noise."""
        n, _, s, _ = x.shape
        g = max(1, s // self.cfg.mask_patch)
        keep = (torch.rand(n, 1, g, g, device=x.device) >= self.cfg.mask_ratio).float()
        keep = F.interpolate(keep, size=(s, s), mode="nearest")
        return x * keep + torch.rand_like(x) * (1 - keep)

    def loss(self, batch):
        x = batch["image"]
        if self.cfg.objective == "contrastive":
            v1, _ = self.augment(x)
            v2, _ = self.augment(x)
            proj = self.net.projector
            loss = _nt_xent(proj(self.net.features(v1)), proj(self.net.features(v2)), self.cfg.temperature)
            return loss, {"loss": loss.item()}
        target, _ = self.augment(x)
        inp = self._mask_patches(target) if self.cfg.objective == "masked_ae" else target
        loss = F.mse_loss(self.net.reconstruct(inp), target)
        return loss, {"loss": loss.item()}

    def evaluate(self, split, train=None):
        dev = next(self.net.parameters()).device
        bs = self.cfg.eval_batch_size
        feats = _run(lambda b: self.net.features(b["image"]), split, bs, dev).numpy()
        out = {}
        if self.net.decoder is not None:
            mse = _run(lambda b: ((self.net.reconstruct(b["image"]) - b["image"]) ** 2).mean(dim=(1, 2, 3)),
                       split, bs, dev)
            out["recon_psnr"] = float((10 * torch.log10(1 / mse.clamp(min=1e-10))).mean())
        if train is not None:
            n = min(len(train), self.cfg.probe_images)
            pick = torch.from_numpy(np.random.default_rng(0).permutation(len(train))[:n])
            sub = Split(images=train.images[pick], labels=train.labels[pick], masks=None,
                        patient=train.patient[pick], study=train.study[pick], patients=train.patients)
            tr = _run(lambda b: self.net.features(b["image"]), sub, bs, dev).numpy()
            idp = metrics.probe_identity(tr, sub.patient.numpy(), feats, split.patient.numpy(),
                                         exclude=split.study_keys)
            fp = metrics.probe_findings(tr, sub.labels.numpy(), feats, split.labels.numpy(),
                                        names=self.data.findings)
            out.update({"id_probe_auc": idp["probe_auc"], "id_raw_auc": idp["raw_auc"],
                        "finding_probe_macro_auroc": fp.pop("macro_auroc"),
                        **{f"finding_probe_{k}": v for k, v in fp.items()}})
        return out


def make_task(cfg: TrainConfig, data: PhantomData) -> Task:
    if cfg.role in ("identity", "attacker"):
        return ReIdTask(cfg, data)
    return {"utility": UtilityTask, "utility2": UtilityTask, "mfm": MFMTask}[cfg.role](cfg, data)
