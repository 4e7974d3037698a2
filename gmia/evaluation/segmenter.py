"""An independent lesion segmenter for the utility evaluation: another family than E_ut's segmentation head, never
seen by the optimizer.

The face presets keep the lesion map with a term on E_ut's own segmentation (``lambda_lesion``), so E_ut's Dice on
the anonymized images measures the network the optimizer was told to please, as its AUROC does for the findings.
This one is a small U-Net on a torchvision ResNet-18 encoder (residual, batch norm; E_ut is a DenseNet), trained
from scratch on the real training originals and their lesion masks with its own seeds. It segments the anonymized
images and their sources; the Dice of each against the source's mask, mean over ``cfg.seeds`` networks, and their
ratio is the reading (the bar: anonymized >= 0.85x originals).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .utility import lesion_dice

__all__ = ["SegmenterConfig", "ResUNet", "train_segmenter", "train_segmenters", "segment", "dice_reading",
           "independent_dice"]


@dataclass(frozen=True)
class SegmenterConfig:
    epochs: int = 12              # on the training originals (2800 face images: 0.96 Dice on originals, 4: 0.77)
    seeds: int = 2                # networks averaged (Dice per network, then the mean)
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 2718              # not E_ut's, not the classifier's


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResUNet(nn.Module):
    """ResNet-18's stem and first three stages as the encoder (strides 2, 4, 8, 16), a decoder that upsamples and
    joins each skip, and one logit per pixel at the input's size. The fourth stage is left out: at 64 px it would
    see 2 x 2 cells, coarser than a lesion."""

    def __init__(self, channels: int):
        super().__init__()
        from torchvision.models import resnet18

        r = resnet18(weights=None)
        self.stem = nn.Sequential(nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False), r.bn1, r.relu)
        self.down = nn.ModuleList([nn.Sequential(r.maxpool, r.layer1), r.layer2, r.layer3])  # 64, 128, 256 ch
        self.up = nn.ModuleList([_block(256 + 128, 128), _block(128 + 64, 64), _block(64 + 64, 32)])
        self.head = nn.Sequential(_block(32, 16), nn.Conv2d(16, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        h = skips.pop()
        for block in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], 1))
        return self.head(F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False))


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus a soft Dice over the batch: BCE alone under-segments small, rare lesions."""
    p = torch.sigmoid(logits)
    soft_dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + soft_dice


def train_segmenter(x: torch.Tensor, masks: torch.Tensor, cfg: SegmenterConfig, device) -> nn.Module:
    """A ResUNet trained on images ``x`` (N, C, S, S) in [0, 1] for lesion masks (N, 1, S, S) in {0, 1}."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = ResUNet(x.shape[1]).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    n = len(x)
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=g)
        for s in range(0, n - cfg.batch_size + 1, cfg.batch_size):  # full batches: batch norm on one image is noise
            idx = order[s:s + cfg.batch_size]
            loss = _loss(net(x[idx].to(device) * 2 - 1), masks[idx].float().to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def segment(net: nn.Module, x: torch.Tensor, device, batch: int = 256) -> np.ndarray:
    """Lesion probability maps (N, 1, S, S) of images ``x`` in [0, 1]."""
    return torch.cat([torch.sigmoid(net(x[s:s + batch].to(device) * 2 - 1)).float().cpu()
                      for s in range(0, len(x), batch)]).numpy()


def train_segmenters(x_train: torch.Tensor, m_train: torch.Tensor, cfg: SegmenterConfig, device) -> list[nn.Module]:
    """One network per seed of ``cfg`` (seed, seed + 1, ...), trained on (``x_train``, ``m_train``)."""
    return [train_segmenter(x_train, m_train, replace(cfg, seed=cfg.seed + k), device)
            for k in range(max(1, cfg.seeds))]


def dice_reading(nets: list[nn.Module], x_anon: torch.Tensor, x_src: torch.Tensor, target: np.ndarray, device,
                 src_maps: list[np.ndarray] | None = None) -> dict:
    """Lesion Dice of the anonymized images and of their sources against the sources' masks ``target``, per
    network, and their means (module doc). ``src_maps``: the networks' maps of ``x_src``, when already made."""
    src_maps = src_maps or [segment(net, x_src, device) for net in nets]
    each = [lesion_dice(segment(net, x_anon, device), s, target) for net, s in zip(nets, src_maps)]
    anon = float(np.mean([e["dice_anonymized"] for e in each]))
    src = float(np.mean([e["dice_originals"] for e in each]))
    return {"dice_anonymized": anon, "dice_originals": src,
            "ratio": anon / src if src and np.isfinite(src) and np.isfinite(anon) else None,
            "ratio_per_seed": [e["ratio"] for e in each], "images_with_lesion": each[0]["images_with_lesion"],
            "reduction": each[0]["reduction"]}


def independent_dice(x_train: torch.Tensor, m_train: torch.Tensor, x_anon: torch.Tensor, x_src: torch.Tensor,
                     target: np.ndarray, device, cfg: SegmenterConfig = SegmenterConfig()) -> dict:
    """``dice_reading`` of ``cfg.seeds`` networks trained on (``x_train``, ``m_train``), with what they are."""
    if len(x_train) < cfg.batch_size:
        return {"skipped": f"only {len(x_train)} training originals with masks (the segmenter needs "
                           f"{cfg.batch_size})"}
    return {"segmenter": "U-Net on a torchvision ResNet-18 encoder, from scratch (another family than E_ut's head; "
                         "never seen by the optimizer)",
            "trained_on": f"{len(x_train)} real training originals and their lesion masks", "config": cfg.__dict__,
            "seeds": [cfg.seed + k for k in range(max(1, cfg.seeds))],
            **dice_reading(train_segmenters(x_train, m_train, cfg, device), x_anon, x_src, target, device)}
