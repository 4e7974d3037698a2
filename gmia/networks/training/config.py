"""Training configs of the scoring networks, one dataclass per role, and their presets.

``PRESETS[preset][role]`` is the resolved default; command-line flags replace only the fields the user set
(``gmia.config.override``). The 64 px presets are sized for a small CPU (a few M parameters, tens of
epochs over ~2800 training images); the 256 px presets reproduce the published architectures for a GPU.

    >>> cfg = get_train_config("phantom-cxr64", "identity")
    >>> cfg = override(cfg, epochs=2, seed=3)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...config import get_preset
from ...errors import ConfigError

__all__ = ["TrainConfig", "IdentityConfig", "AttackerConfig", "UtilityConfig", "SecondUtilityConfig", "MFMConfig",
           "ROLES", "PRESETS", "get_train_config"]

ROLES = ("identity", "utility", "utility2", "mfm", "attacker")


@dataclass(frozen=True)
class TrainConfig:
    """Fields every role shares."""

    role: str = ""
    preset: str = "phantom-cxr64"
    epochs: int = 30                 # passes over the training patients' images
    batch_size: int = 64
    lr: float = 2e-3                 # AdamW peak learning rate (linear warmup, then cosine to 0)
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    grad_clip: float = 5.0           # max gradient norm (0 = off)
    seed: int = 1                    # network init, batch order and augmentation
    device: str = "auto"             # "auto" = cuda when available, else cpu
    threads: int = 0                 # CPU intra-op threads (0 = torch's default); 1 is fastest on a busy CPU
    # augmentation (kornia): small affine + intensity jitter; identity must survive pose and exposure
    aug_degrees: float = 6.0
    aug_translate: float = 0.04      # fraction of the image side
    aug_scale: float = 0.05          # ± relative zoom
    aug_brightness: float = 0.08     # ± additive
    aug_contrast: float = 0.10       # ± relative
    eval_batch_size: int = 256

    def net_kwargs(self) -> dict:
        """Architecture kwargs of the network (interface kwargs come from the data)."""
        raise NotImplementedError


@dataclass(frozen=True)
class IdentityConfig(TrainConfig):
    """E_id: IResNet trunk + ArcFace head over the training patients."""

    role: str = "identity"
    widths: tuple = (64, 128, 256)
    blocks: tuple = (2, 2, 2)
    stem_width: int = 32
    stem_stride: int = 2
    embed_dim: int = 512
    dropout: float = 0.1
    loss: str = "arcface"            # margin head: arcface or cosface
    scale: float = 16.0              # s of the margin softmax
    margin: float = 0.2              # m (the reference's s=64, m=0.5 are for 1599 patients × 300 epochs)
    margin_warmup: float = 0.2       # fraction of training over which m ramps up from 0

    def net_kwargs(self) -> dict:
        return dict(widths=self.widths, blocks=self.blocks, stem_width=self.stem_width,
                    stem_stride=self.stem_stride, embed_dim=self.embed_dim, dropout=self.dropout)


@dataclass(frozen=True)
class AttackerConfig(TrainConfig):
    """The evaluation-only re-identifier: VGG-style CNN + CosFace head, its own seed and augmentation."""

    role: str = "attacker"
    seed: int = 7919                 # never E_id's seed
    widths: tuple = (32, 64, 128, 256)
    convs: tuple = (1, 2, 2, 2)
    embed_dim: int = 512
    loss: str = "cosface"
    scale: float = 30.0
    margin: float = 0.35
    margin_warmup: float = 0.2
    aug_degrees: float = 8.0
    aug_translate: float = 0.05
    aug_scale: float = 0.06

    def net_kwargs(self) -> dict:
        return dict(widths=self.widths, convs=self.convs, embed_dim=self.embed_dim)


@dataclass(frozen=True)
class UtilityConfig(TrainConfig):
    """E_ut: DenseNet-ELU finding classifier (+ lesion decoder when the data has masks and segment=True)."""

    role: str = "utility"
    lr: float = 1e-3
    growth: int = 16
    blocks: tuple = (4, 8, 8)
    init_features: int = 32
    stem: str = "small"
    feature_dim: int = 512
    segment: bool = False            # predict the lesion mask too (the face presets)
    decoder_width: int = 32          # channels of the lesion decoder
    seg_weight: float = 1.0          # weight of (BCE + soft Dice) on the mask

    def net_kwargs(self) -> dict:
        return dict(growth=self.growth, blocks=self.blocks, init_features=self.init_features, stem=self.stem,
                    feature_dim=self.feature_dim, segment=self.segment, decoder_width=self.decoder_width)


@dataclass(frozen=True)
class SecondUtilityConfig(TrainConfig):
    """E_ut2: a plain CNN finding classifier (``PlainUtilityNet``), the second utility network stage 2 may keep.

    10 epochs at lr 1e-3: on the chest phantoms a network of this layout trained 8 epochs reached per-finding
    AUROC 0.98 to 1.00 on the validation originals; it has to classify well, or its features ask for more than the
    findings (plain_utility.py)."""

    role: str = "utility2"
    epochs: int = 10
    lr: float = 1e-3
    widths: tuple = (32, 64, 128, 256)
    convs: tuple = (2, 2, 2, 2)

    def net_kwargs(self) -> dict:
        return dict(widths=self.widths, convs=self.convs)


@dataclass(frozen=True)
class MFMConfig(TrainConfig):
    """MFM: label-free encoder; ``objective`` = contrastive (SimCLR, default), masked_ae or ae.

    Why contrastive: on 210 training patients × 4 studies, 5 epochs each, linear probes on the test patients
    gave identity-verification AUC 0.739 / finding macro-AUROC 0.770 for SimCLR against 0.710 / 0.729 for the
    masked autoencoder and 0.611 / 0.682 for the untrained encoder; SimCLR is also cheaper (no decoder).
    """

    role: str = "mfm"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    widths: tuple = (32, 64, 128, 256)
    latent_channels: int = 32
    objective: str = "contrastive"
    temperature: float = 0.2         # contrastive: NT-Xent temperature
    projection_dim: int = 128        # contrastive: projection-head output
    mask_ratio: float = 0.25         # masked_ae: fraction of patches replaced by noise in the input
    mask_patch: int = 8              # masked_ae: patch side in pixels
    probe_images: int = 1500         # training images used to fit the linear probes at each validation

    def net_kwargs(self) -> dict:
        contrastive = self.objective == "contrastive"
        return dict(widths=self.widths, latent_channels=self.latent_channels, decoder=not contrastive,
                    projection_dim=self.projection_dim if contrastive else 0)


_CONFIGS = {"identity": IdentityConfig, "utility": UtilityConfig, "utility2": SecondUtilityConfig, "mfm": MFMConfig,
            "attacker": AttackerConfig}


def _gpu256(role: str, preset: str, **kw) -> TrainConfig:
    """The published-scale architectures at 256 px (meant for a GPU)."""
    big = {
        "identity": dict(widths=(64, 128, 256, 512), blocks=(3, 4, 14, 3), stem_width=64, stem_stride=1,
                         dropout=0.0, scale=64.0, margin=0.5, epochs=100, batch_size=96, lr=1e-3),
        "utility": dict(growth=32, blocks=(6, 12, 24, 16), init_features=64, stem="imagenet", epochs=60,
                        batch_size=48, lr=5e-4),
        "utility2": dict(widths=(32, 64, 128, 256, 512, 512), convs=(2, 2, 2, 2, 2, 2), epochs=30, batch_size=64),
        "mfm": dict(widths=(32, 64, 128, 256, 512, 512), latent_channels=128, mask_patch=32, epochs=100,
                    batch_size=64),
        "attacker": dict(widths=(64, 128, 256, 512, 512), convs=(2, 2, 3, 3, 3), epochs=100, batch_size=96,
                         lr=1e-3),
    }[role]
    return _CONFIGS[role](preset=preset, **{**big, **kw})


PRESETS: dict[str, dict[str, TrainConfig]] = {
    "phantom-cxr64": {
        "identity": IdentityConfig(preset="phantom-cxr64", epochs=30),
        "utility": UtilityConfig(preset="phantom-cxr64", epochs=25),
        "utility2": SecondUtilityConfig(preset="phantom-cxr64"),
        "mfm": MFMConfig(preset="phantom-cxr64", epochs=25),
        "attacker": AttackerConfig(preset="phantom-cxr64", epochs=30),
    },
    "phantom-face64": {
        "identity": IdentityConfig(preset="phantom-face64", epochs=30),
        "utility": UtilityConfig(preset="phantom-face64", epochs=30, segment=True),
        "utility2": SecondUtilityConfig(preset="phantom-face64"),
        # 8 epochs: on the chest preset the probes had plateaued by then (identity AUC 0.922 at epoch 8, 0.93 at 25;
        # findings 0.783 vs 0.79) and this preset's MFM has to share one CPU core with the AE-GAN.
        # masked autoencoder, not SimCLR: the face findings are colour and small periocular details that SimCLR's
        # photometric augmentations teach it to ignore. Test probes after 8 epochs: identity AUC 0.900 vs 0.850,
        # finding macro AUROC 0.626 vs 0.589.
        # An 8x8 code (three stages, 8 channels: still 512 features), not 4x4: the findings are a few pixels
        # around the eyes, and a linear probe on 16x16 raw pixels finds them (val macro AUROC 0.805) while one on
        # the 4x4 code did not (0.673). Test probes: identity 0.922 / findings 0.700 (4x4 code: 0.900 / 0.626);
        # 16 channels and 12 epochs gave the same (0.931 / 0.707) at twice the features.
        "mfm": MFMConfig(preset="phantom-face64", epochs=8, objective="masked_ae", widths=(32, 64, 128),
                         latent_channels=8),
        "attacker": AttackerConfig(preset="phantom-face64", epochs=30),
    },
    "gmia-cxr256": {role: _gpu256(role, "gmia-cxr256") for role in ROLES},
    "face256": {role: _gpu256(role, "face256", **({"segment": True} if role == "utility" else {}))
                for role in ROLES},
}


def get_train_config(preset: str, role: str) -> TrainConfig:
    """The default training config of ``role`` for ``preset``; unknown names list the valid ones."""
    get_preset(preset)
    if role not in ROLES:
        raise ConfigError(f"unknown network role {role!r}; valid roles: {', '.join(ROLES)}")
    if preset not in PRESETS:
        raise ConfigError(f"no training presets for {preset!r}; presets with training configs: {', '.join(PRESETS)}")
    cfg = PRESETS[preset][role]
    assert dataclasses.is_dataclass(cfg)
    return cfg
