"""Stage-1 losses: pure functions on tensors, plus thin modules for the stateful or pluggable parts.

All functions return **per-image** values (N,); the caller reduces. Images passed to the reconstruction and
perceptual terms are in [0, 1] (raw generator output may overshoot; it is not clamped so gradients flow).

GAN terms (StyleGAN2, spec §7.2):  G: softplus(-D(G(E(x))));  D: softplus(D(fake)) + softplus(-D(real));
R1: |∇_x D(x)|² summed over C, H, W (the caller weights it by γ/2); path length: |J_w^T y|, y ~ N(0, I)/sqrt(HW).

Perceptual term (``build_perceptual``), never a random-weight network:
  * "lpips": LPIPS v0.1 (AlexNet) from the pip ``lpips`` package. Its calibrated linear layers ship inside the
    package; the AlexNet trunk is read from a local torchvision weights file (``alexnet-owt-7be5be79.pth``,
    passed as ``lpips_weights`` or found in the torch hub cache). Nothing is downloaded.
  * "mfm" (the offline default): the relative squared error between features of the preset's frozen MFM,
    ``|f(x̂) - f(x)|² / |f(x)|²`` per image, with ``f = gmia.networks.load(preset, "mfm").features``.
  * "utility": the same relative error over the preset's utility networks' features (E_ut, and E_ut2 where the
    preset has one), summed: an encoder fine-tune that keeps what the finding classifiers read, not only pixels.
  * "auto": lpips when its trunk weights are local, else the MFM; neither → CheckpointError saying what to give.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from gmia.checkpoints import sha256_file
from gmia.errors import CheckpointError, ConfigError

from .config import PERCEPTUAL_KINDS

__all__ = [
    "FeatureLoss", "FeatureSum", "LpipsLoss", "PerceptualLoss", "ReconstructionLoss", "build_perceptual",
    "d_logistic_loss", "dssim_per_image", "g_nonsaturating_loss", "local_alexnet_weights", "mse_per_image",
    "path_length_penalty", "path_lengths", "r1_penalty", "ssim_per_image",
]

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet weights (the LPIPS-alex trunk)
ALEXNET_SHA256_PREFIX = "7be5be79"         # ... the first digits of its sha256 (torchvision's naming rule)


# ---- pure functions -------------------------------------------------------------------------------------------
def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(-D(fake)), (N, 1) logits -> (N,)."""
    return F.softplus(-fake_logits).flatten()


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(D(fake)) + softplus(-D(real)), (N, 1) logits each -> (N,)."""
    return F.softplus(fake_logits).flatten() + F.softplus(-real_logits).flatten()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """|∇_x Σ D(x)|² per image (N,); ``real_images`` must require grad and have produced ``real_logits``."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.square().sum(dim=[1, 2, 3])


def path_lengths(images: torch.Tensor, ws: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """|J^T y| per image (N,): images (N, C, H, W) made from ws (N, L, w_dim), y ~ N(0, 1)/sqrt(H W).

    The length is sqrt(mean over the L style inputs of Σ_wdim g²), as in StyleGAN2.
    """
    h, w = images.shape[2], images.shape[3]
    dev = generator.device if generator is not None else images.device
    noise = torch.randn(images.shape, generator=generator, device=dev).to(images.device) / math.sqrt(h * w)
    (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    return grad.square().sum(dim=2).mean(dim=1).sqrt()


def path_length_penalty(lengths: torch.Tensor, pl_mean: torch.Tensor) -> torch.Tensor:
    """(|J^T y| - running mean)² per image (N,)."""
    return (lengths - pl_mean).square()


def mse_per_image(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, (N, C, H, W) twice -> (N,)."""
    if x_hat.shape != x.shape:
        raise ValueError(f"mse: shapes differ: reconstruction {tuple(x_hat.shape)} vs image {tuple(x.shape)}")
    return (x_hat - x).square().flatten(1).mean(dim=1)


# ---- perceptual terms -----------------------------------------------------------------------------------------
class PerceptualLoss(nn.Module):
    """Base class: ``forward(x_hat, x)`` -> (N,) perceptual distance of images in [0, 1]; frozen; ``name``
    says what it is in records ("lpips", "mfm", ...). Any module following this contract can be plugged in."""

    name = "perceptual"
    source: str | None = None   # the weights file it was built from, for run records
    sha256: str | None = None   # that file's sha256

    def freeze(self) -> "PerceptualLoss":
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # always inference: a frozen measuring stick


class FeatureLoss(PerceptualLoss):
    """|f(x̂) - f(x)|² / (|f(x)|² + eps) per image, for any frozen ``net`` with ``features(x) -> (N, D)``."""

    def __init__(self, net: nn.Module, name: str = "mfm", eps: float = 1e-8):
        super().__init__()
        if not callable(getattr(net, "features", None)):
            raise ConfigError(f"FeatureLoss needs a network with features(x); got {type(net).__name__}")
        self.net, self.name, self.eps = net, name, eps
        if hasattr(net, "check_range"):
            net.check_range = False  # raw generator output may overshoot [0, 1] slightly
        self.freeze()

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f0 = self.net.features(x).flatten(1)
        f1 = self.net.features(x_hat).flatten(1)
        return (f1 - f0).square().sum(dim=1) / (f0.square().sum(dim=1) + self.eps)


class FeatureSum(PerceptualLoss):
    """The sum of several FeatureLoss terms, per image: one perceptual term read by more than one network."""

    def __init__(self, terms: list[FeatureLoss], name: str):
        super().__init__()
        if not terms:
            raise ConfigError("FeatureSum needs at least one feature loss")
        self.terms, self.name = nn.ModuleList(terms), name
        self.freeze()

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return sum(term(x_hat, x) for term in self.terms)


def local_alexnet_weights() -> Path | None:
    """The torchvision AlexNet weights in the local torch hub cache, if someone put them there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    return path if path.is_file() else None


class LpipsLoss(PerceptualLoss):
    """LPIPS v0.1 (AlexNet trunk) on [0, 1] images; grey images are repeated to RGB. (N,) per image."""

    name = "lpips"

    def __init__(self, backbone_weights: str | Path):
        super().__init__()
        import lpips

        path = Path(backbone_weights)
        if not path.is_file():
            raise CheckpointError(f"LPIPS backbone weights {path}: no such file; give torchvision's AlexNet "
                                  f"ImageNet weights ({ALEXNET_FILE})")
        digest = sha256_file(path)
        if not digest.startswith(ALEXNET_SHA256_PREFIX):  # torchvision names the file by its sha256's first digits
            raise CheckpointError(f"{path}: sha256 {digest[:16]}... is not that of torchvision's AlexNet ImageNet "
                                  f"weights ({ALEXNET_FILE}, sha256 {ALEXNET_SHA256_PREFIX}...); give that file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a pickle with code, a truncated file, ...
            raise CheckpointError(f"{path}: not a plain torchvision state dict ({exc}); give {ALEXNET_FILE}") from None
        with warnings.catch_warnings():  # lpips calls torchvision with a deprecated argument; local to this call
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)  # trunk filled below
        trunk = {}
        for name, child in model.net.named_children():  # slice1..slice5 hold AlexNet features.{i}
            for idx, layer in child.named_children():
                for p in ("weight", "bias"):
                    if hasattr(layer, p) and getattr(layer, p) is not None:
                        key = f"features.{idx}.{p}"
                        if key not in state:
                            raise CheckpointError(f"{path}: missing {key}; expected torchvision AlexNet weights "
                                                  f"({ALEXNET_FILE})")
                        trunk[f"{name}.{idx}.{p}"] = state[key]
        try:
            model.net.load_state_dict(trunk, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: does not fit the LPIPS AlexNet trunk: {str(exc)[:300]}") from None
        self.model = model
        self.source, self.sha256 = str(path), digest
        self.freeze()

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x_hat, x = x_hat.expand(-1, 3, -1, -1), x.expand(-1, 3, -1, -1)
        return self.model(x_hat, x, normalize=True).flatten()


def _load_features(preset: str | None, roles: tuple[str, ...], checkpoints: str | Path = "checkpoints",
                   optional: tuple[str, ...] = ()) -> list[FeatureLoss]:
    """One FeatureLoss per network role of ``preset`` (a role in ``optional`` is skipped when its file is absent),
    each recording the weights file it was built from."""
    if preset is None:
        raise CheckpointError(f"no preset given, so there is no {'/'.join(roles)} network to measure distance with")
    try:
        from gmia import networks
    except ImportError as exc:
        raise CheckpointError(f"gmia.networks is not available ({exc})") from None
    folder = Path(networks.checkpoint_dir(preset, checkpoints))
    losses = []
    for role in roles + optional:
        weights = folder / f"{role}.safetensors"
        if role in optional and not weights.is_file():
            continue
        loss = FeatureLoss(networks.load(preset, role, checkpoints), name=role)
        if weights.is_file():
            loss.source, loss.sha256 = str(weights), sha256_file(weights)
        losses.append(loss)
    return losses


def _load_mfm(preset: str | None, checkpoints: str | Path = "checkpoints") -> FeatureLoss:
    return _load_features(preset, ("mfm",), checkpoints)[0]


def _load_utility(preset: str | None, checkpoints: str | Path = "checkpoints") -> FeatureSum:
    terms = _load_features(preset, ("utility",), checkpoints, optional=("utility2",))
    total = FeatureSum(terms, name="utility")
    # the record names every network read: "utility:<sha> utility2:<sha>"
    total.source = " ".join(t.source or t.name for t in terms)
    total.sha256 = " ".join(f"{t.name}:{t.sha256}" for t in terms)
    return total


def build_perceptual(kind: str, preset: str | None, lpips_weights: str | Path | None = None,
                     device: str | torch.device = "cpu", checkpoints: str | Path = "checkpoints") -> PerceptualLoss | None:
    """The perceptual term for ``kind`` ("auto", "lpips", "mfm", "utility", "none"); None for "none". See the
    module doc.
    ``checkpoints``: where the preset's MFM and utility networks are looked up (a root holding <preset>/, or the
    preset folder)."""
    if kind == "none":
        return None
    if kind not in PERCEPTUAL_KINDS:
        raise ConfigError(f"perceptual must be one of {', '.join(PERCEPTUAL_KINDS)}; got {kind!r}")
    if kind == "utility":
        try:
            return _load_utility(preset, checkpoints).to(device)
        except CheckpointError as exc:
            raise CheckpointError(f"perceptual 'utility': {exc}; give the preset's utility network "
                                  "(checkpoints/<preset>/utility.*, `gmia train utility`) or pick another "
                                  "--perceptual") from None
    fix = (f"give --lpips-weights PATH (torchvision's {ALEXNET_FILE}, no download), or make the preset's MFM "
           "available (checkpoints/<preset>/mfm.*, `gmia.networks.load(preset, 'mfm')`), or pass --perceptual none "
           "to train without a perceptual term")
    weights = Path(lpips_weights) if lpips_weights else local_alexnet_weights()
    if kind == "lpips" or (kind == "auto" and weights is not None):
        if weights is None:
            raise CheckpointError(f"perceptual 'lpips': no AlexNet trunk weights found (looked in "
                                  f"{Path(torch.hub.get_dir()) / 'checkpoints'}); {fix}")
        return LpipsLoss(weights).to(device)
    try:
        return _load_mfm(preset, checkpoints).to(device)
    except CheckpointError as exc:
        raise CheckpointError(f"perceptual '{kind}': no LPIPS trunk weights and no MFM for preset {preset!r} "
                              f"({exc}); {fix}") from None


def ssim_per_image(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """SSIM per image (N,): kornia, 11x11 Gaussian window, mean over the map (the reported fidelity metric)."""
    return kornia.metrics.ssim(x_hat, x, window_size=11, max_val=1.0).flatten(1).mean(dim=1)


def dssim_per_image(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 - SSIM per image (N,): the fidelity metric itself as a loss.

    Pixel MSE lets a capacity-limited generator trade edges and contrast for blur; SSIM's structure term does
    not, so a little of it in the loss buys the structure the metric (and the re-identifier) look at.
    """
    return 1.0 - ssim_per_image(x_hat, x)


class ReconstructionLoss(nn.Module):
    """λ_mse · MSE + λ_perc · perceptual + λ_ssim · (1 - SSIM), per image.

    ``forward`` -> (total (N,), {"mse": (N,), name: (N,), "dssim": (N,)}); a term with weight 0 is skipped.
    """

    def __init__(self, lambda_mse: float = 10.0, lambda_perc: float = 10.0, perceptual: PerceptualLoss | None = None,
                 lambda_ssim: float = 0.0):
        super().__init__()
        self.lambda_mse, self.lambda_perc, self.lambda_ssim = float(lambda_mse), float(lambda_perc), float(lambda_ssim)
        self.perceptual = perceptual if lambda_perc else None

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mse = mse_per_image(x_hat, x)
        terms = {"mse": mse}
        total = self.lambda_mse * mse
        if self.lambda_ssim:
            terms["dssim"] = dssim_per_image(x_hat, x)
            total = total + self.lambda_ssim * terms["dssim"]
        if self.perceptual is not None:
            perc = self.perceptual(x_hat, x)
            terms[self.perceptual.name] = perc
            total = total + self.lambda_perc * perc
        return total, terms
