"""E_ut, the utility network: a multi-label finding classifier whose 512-d feature layer is the utility
representation stage 2 preserves; for faces it also segments the lesion.

DenseNet with ELU activations and the head of the published method: GAP(ReLU(trunk)) → FC → ELU gives the
512-d utility features (before the BN), then BN1d → FC gives the finding logits. ``UtilityNet()`` is a small
DenseNet for 64 px; ``UtilityNet(resolution=256, growth=32, blocks=(6, 12, 24, 16), init_features=64,
stem="imagenet")`` is the DenseNet-121 layout of the reference. With ``segment=True`` a light top-down decoder
over the stem and dense-block outputs predicts the lesion mask at the input resolution.

    >>> net = UtilityNet(in_channels=3, num_findings=4, segment=True)
    >>> f, logits, mask = net.features(x), net.logits(x), net.segment(x)   # (N, 512), (N, 4), (N, 1, S, S)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FrozenNet

__all__ = ["UtilityNet"]

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _FastELU(torch.autograd.Function):
    """ELU as max(x, exp(min(x, 0)) - 1), equal to ``F.elu`` within 1e-7 (exp(x) - 1 stands in for expm1(x)), with
    torch's own ELU backward (from the output). Why: on the CPU, torch's ELU forward runs an unvectorised expm1 on
    negative inputs: 32 ms for a (32, 96, 32, 32) map of N(0, 1) values against 5 ms for this. It was 68% of this
    network's inference time on the phantom test images: 16 ms an image (batch 32, one thread), with this 7 ms.
    (Left to autograd, the max/exp/clamp chain's backward costs 73 ms.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.maximum(x, torch.exp(torch.clamp(x, max=0.0)) - 1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.elu_backward(grad, 1.0, 1.0, 1.0, True, y)  # alpha, scale, input_scale, is_result


def elu(x: torch.Tensor) -> torch.Tensor:
    """``F.elu(x)`` (alpha 1), faster on the CPU (``_FastELU``)."""
    return _FastELU.apply(x)


class _ELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return elu(x)


class _DenseLayer(nn.Module):
    """BN-ELU-conv1x1(bn_size·growth)-BN-ELU-conv3x3(growth), concatenated to its input."""

    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), _ELU(), nn.Conv2d(cin, bn_size * growth, 1, bias=False),
            nn.BatchNorm2d(bn_size * growth), _ELU(), nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x):
        return torch.cat([x, self.body(x)], dim=1)


def _transition(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), _ELU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))


class UtilityNet(FrozenNet):
    """Finding classifier with a utility feature layer (and an optional lesion segmenter)."""

    def __init__(self,
                 in_channels: int = 1,               # image channels: 1 (X-ray) or 3 (face)
                 resolution: int = 64,               # side of the square image the trunk sees
                 num_findings: int = 6,              # outputs of the multi-label head
                 finding_names: tuple = (),          # their names, in order (kept in the checkpoint card)
                 growth: int = 16,                   # DenseNet growth rate
                 blocks: tuple = (4, 8, 8),          # dense layers per block; a transition halves the size
                 init_features: int = 32,            # stem channels
                 bn_size: int = 4,                   # bottleneck width factor of a dense layer
                 stem: str = "small",                # "small": conv3x3 + avgpool (÷2); "imagenet": conv7x7/2 + maxpool (÷4)
                 feature_dim: int = 512,             # size of the utility features
                 segment: bool = False,              # add the lesion-mask decoder
                 decoder_width: int = 32,            # channels of that decoder
                 input_norm: str = "signed",         # "signed": 2x - 1; "imagenet": ImageNet mean/std on RGB
                                                     # (the published E_ut; in_channels=3 repeats grey)
                 ):
        super().__init__(in_channels, resolution)
        if finding_names and len(finding_names) != num_findings:
            raise ValueError(f"{len(finding_names)} finding names for {num_findings} findings")
        self.finding_names = tuple(finding_names)
        self.num_findings = int(num_findings)
        self.feature_dim = int(feature_dim)
        self.has_segmentation = bool(segment)
        if input_norm not in ("signed", "imagenet") or (input_norm == "imagenet" and in_channels != 3):
            raise ValueError(f"input_norm must be 'signed', or 'imagenet' with in_channels=3; got {input_norm!r}, "
                             f"in_channels={in_channels}")
        self.input_norm = input_norm
        if input_norm == "imagenet":
            self.register_buffer("_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if stem == "small":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, init_features, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(init_features), _ELU())
            self.pool0 = nn.AvgPool2d(2)
        elif stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, init_features, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(init_features), _ELU())
            self.pool0 = nn.MaxPool2d(3, 2, 1)
        else:
            raise ValueError(f"unknown stem {stem!r}; valid: small, imagenet")
        self.blocks, self.transitions = nn.ModuleList(), nn.ModuleList()
        skips, c = [init_features], init_features
        for i, n in enumerate(blocks):
            self.blocks.append(nn.Sequential(*[_DenseLayer(c + k * growth, growth, bn_size) for k in range(n)]))
            c += n * growth
            skips.append(c)
            if i < len(blocks) - 1:
                self.transitions.append(_transition(c, c // 2))
                c //= 2
        self.norm_out = nn.BatchNorm2d(c)
        self.fc0 = nn.Linear(c, feature_dim)      # utility features = ELU(fc0(GAP(ReLU(trunk))))
        self.bn_head = nn.BatchNorm1d(feature_dim)
        self.fc1 = nn.Linear(feature_dim, num_findings)
        if segment:
            self.lateral = nn.ModuleList([nn.Conv2d(s, decoder_width, 1) for s in skips])
            self.seg_out = nn.Sequential(nn.Conv2d(decoder_width, decoder_width, 3, 1, 1), _ELU(),
                                         nn.Conv2d(decoder_width, 1, 1))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _trunk(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem output and the output of every dense block (finest first); x already prepared."""
        h = self.stem((x - self._mean) / self._std if self.input_norm == "imagenet" else x * 2 - 1)
        maps = [h]
        h = self.pool0(h)
        for i, block in enumerate(self.blocks):
            h = block(h)
            maps.append(h)
            if i < len(self.transitions):
                h = self.transitions[i](h)
        maps[-1] = self.norm_out(maps[-1])
        return maps

    def _features(self, maps: list[torch.Tensor]) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(F.relu(maps[-1]), 1).flatten(1)  # (N, C)
        return elu(self.fc0(pooled))

    def _mask_logits(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Top-down decoder: lateral 1x1 convs, upsample-and-add from coarse to fine, at the stem's size."""
        y = self.lateral[-1](maps[-1])
        for lat, m in zip(reversed(self.lateral[:-1]), reversed(maps[:-1])):
            y = F.interpolate(y, size=m.shape[-2:], mode="bilinear", align_corners=False) + lat(m)
        return self.seg_out(y)

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One trunk pass: {"features" (N, 512), "logits" (N, F), and with segmentation "mask_logits"
        (N, 1, S, S) at the input's size S}."""
        size = x.shape[-1]
        maps = self._trunk(self.prepare(x))
        feats = self._features(maps)
        out = {"features": feats, "logits": self.fc1(self.bn_head(feats))}
        if self.has_segmentation:
            m = self._mask_logits(maps)
            if m.shape[-1] != size:
                m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
            out["mask_logits"] = m
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Utility features (N, feature_dim) of images x (N, 1|3, S, S) in [0, 1]."""
        return self._features(self._trunk(self.prepare(x)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Finding logits (N, num_findings); sigmoid gives probabilities."""
        return self.outputs(x)["logits"]

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Lesion probability map (N, 1, S, S) in [0, 1] at the input's size."""
        if not self.has_segmentation:
            raise NotImplementedError(f"this {type(self).__name__} was built without segment=True")
        return torch.sigmoid(self.outputs(x)["mask_logits"])

    def finding_map(self, x: torch.Tensor, findings: list[int] | None = None) -> torch.Tensor:
        """Where this network sees the findings of x: (N, 1, S, S) in [0, 1], a class-activation map (Grad-CAM) of
        the last dense block for the finding logits ``findings`` (indices; None: all), each weighted by its
        probability, scaled per image to the probability of its likeliest finding (an image without them maps to
        about 0). Coarse (the block's grid: 8 x 8 at 64 px), and it needs no lesion masks."""
        size = x.shape[-1]
        with torch.no_grad():
            maps = self._trunk(self.prepare(x))
        with torch.enable_grad():
            last = maps[-1].detach().requires_grad_(True)
            logits = self.fc1(self.bn_head(self._features([*maps[:-1], last])))
            if findings is not None:
                logits = logits[:, list(findings)]
            p = torch.sigmoid(logits).detach()
            grad, = torch.autograd.grad((p * logits).sum(), last)
        cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * last.detach()).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)
        return cam / cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1) * p.amax(1).view(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
