"""Stage-1 (AE-GAN co-training) configuration: one typed dataclass and its presets.

    cfg = aegan_config("phantom-cxr64", kimg=50, batch=8)   # flags override only what they set (None = unset)

Presets
-------
``gmia-cxr256`` is the published run (GMIA ``auto25k --cogd --g_reg``; reference §3): E/G channel_base 16384,
max 512, one w broadcast to 14 style inputs, images in [0, 1] raw, 10·MSE + 10·LPIPS(alex) + non-saturating GAN,
R1 γ = 1 every 16 minibatches, path length 2 every 4, batch 128, Adam lr 0.0025 betas (0, 0.99), G_ema half-life
20 kimg, flip + 15° rotation, 25 000 kimg scheduled (the shipped GMIA generator stopped at 6 854).

The 64-px phantom presets are sized for a shared 2-core CPU. Measured on such a CPU (1 thread, batch 16,
fwd + bwd, ms/image; ``experiments/bench_aegan_step.py`` prints the whole step):
    channel_base/max   channels 4..64            E     G     D
    2048 / 128         128,128,128,64,32        39    47    39
    1024 / 128         128,128,64,32,16         19    22    16
    4096 / 128         128,128,128,128,64      ~140 for E + G + D together (x3 the 2048 setting)
One step runs D three times (fake in the G phase, real + fake in the D phase), so D dominates at equal
capacity. We keep E and G at 2048/128 (reconstruction quality lives there: 32 channels at full resolution,
128 from 16 px down) and halve D to 1024/128: the GAN term is an auxiliary sharpness prior here, the
reconstruction terms carry the weight. λ_gan = 0.1 (GMIA: 1): measured on 840 chest phantoms without a
perceptual term, λ_gan = 1 made the GAN term ~75% of the E + G loss and held the reconstruction back (grid SSIM
0.36 at 5 kimg, MSE rising again as D won), while λ_gan = 0.1 tracked a pure autoencoder (SSIM 0.41 vs 0.42 at
3 kimg). Path-length regularisation is off (an extra double backward through G on half the batch every 4
steps, ~+15% per image by the costs above; it shapes the latent space, which reconstruction does not need).
No perceptual term at 64 px: with the MFM as the offline perceptual network a step costs 110-170 ms/image
(20-30 kimg/h), without it ~60 ms/image (~60 kimg/h) — twice the images in the same CPU time, and pixel MSE
already sees every structure that matters at this size (``--perceptual mfm --lambda-perc 1`` turns it
back on).
The shipped checkpoints' co-training ran 100 kimg for the chest preset (1 h 34 min of steps on one shared CPU
core) and 60 kimg for the face preset; see their cards.
Batch 16 (more updates per kimg than 32 at the same cost per image); R1 γ from the StyleGAN2-ADA "auto" rule
0.0002·R²/batch ≈ 0.05; EMA half-life batch·10/32 = 5 kimg with ramp-up 0.05. Augmentation: the phantoms already
vary pose per study, so only mild extras: ±5° rotation for chest (no flip: laterality is anatomy), horizontal
flip for faces. Whole step on the shared CPU (MFM-sized perceptual net included): 110-170 ms/image with 1
thread (20-30 kimg/h); with 2 threads while other jobs ran, 700 ms/image: train with ``--threads 1`` there.

Fidelity fine-tune (second phase of the shipped weights, ``make train-phantom``): after co-training, E and G
train on their own from the co-trained export (``--init-from``) with λ_gan = 0 and λ_ssim = 1 (1 - SSIM beside
10·MSE) for 880 kimg (60 on the CPU, then 820 on a GPU: ``experiments/gpu_finetune_stage1.sh``). Why: by 100 kimg
the GAN term (0.1 · 0.77) outweighs the MSE term (10 · 0.005) and the train-grid SSIM flattens (0.62 at 54 kimg,
0.65 at 100). Measured on the chest preset from the 100-kimg
snapshot, train-grid SSIM after 2 kimg: co-training + SSIM term 0.675; no GAN term + SSIM term 0.692; lr
0.0008 0.669; W+ head 0.677 (no better than W, so the shipped models use W, as published). Without the GAN
term D is skipped, so a step costs half (37 vs 59 s/kimg). The first 60 kimg take 41 min per preset on one shared
core: train-grid SSIM 0.651 -> 0.745 (chest), 0.484 -> 0.702 (face), still rising ~0.001/kimg at 60 kimg.

``tiny`` is a toy-sized real architecture for tests (16 px, 16 channels).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gmia.config import override
from gmia.errors import ConfigError

__all__ = ["AeganConfig", "ARCHITECTURE_FIELDS", "PERCEPTUAL_KINDS", "PRESETS", "ProjectionConfig", "aegan_config",
           "config_dict"]

PERCEPTUAL_KINDS = ("auto", "lpips", "mfm", "utility", "none")


@dataclass(frozen=True)
class AeganConfig:
    """Everything that defines a stage-1 run. ``preset`` names the gmia preset (its MFM, its checkpoints)."""

    # interface (from the data)
    preset: str | None                  # gmia preset this run belongs to (None: a stand-alone config)
    resolution: int                     # image side R
    img_channels: int                   # 1 (X-ray) or 3 (face)
    # architecture
    latent: str = "w"                   # "w" (one w for all layers, published) or "w+" (one w per layer)
    w_dim: int = 512                    # latent width
    channel_base: int = 16384           # E and G channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512
    d_channel_base: int | None = None   # D capacity (None: same as E and G)
    d_channel_max: int | None = None
    e_channel_base: int | None = None   # E capacity (None: same as G); a wider E needs --fresh-encoder when
    e_channel_max: int | None = None    # starting from weights of another width
    use_noise: bool = True              # per-pixel noise in G (random while training, const at inference)
    conv_clamp: float | None = None     # clamp conv outputs (GMIA: 256)
    image_range: str = "signed"         # networks' pixel range: "signed" [-1, 1] or "unit" [0, 1] (GMIA)
    mbstd_group: int = 4                # D minibatch-std group size
    # losses
    lambda_gan: float = 1.0             # non-saturating GAN term for E + G
    lambda_mse: float = 10.0            # pixel MSE
    lambda_perc: float = 10.0           # perceptual term
    lambda_ssim: float = 0.0            # structural term 1 - SSIM (the fidelity metric; 0: off, as published)
    perceptual: str = "auto"            # "auto" (lpips if its backbone is local, else the preset's MFM), "lpips",
    #                                     "mfm", "utility" (E_ut's and E_ut2's features), "none" (no perceptual term)
    lpips_weights: str | None = None    # torchvision AlexNet weights file for lpips (never downloaded)
    r1_gamma: float = 1.0               # R1 weight γ (penalty γ/2 · |∇D(x)|²)
    r1_interval: int = 16               # lazy R1: every this many minibatches (0: off)
    pl_weight: float = 0.0              # path-length weight (0: off)
    pl_interval: int = 4                # lazy path length: every this many minibatches
    pl_batch_shrink: int = 2            # path length on batch // this
    pl_decay: float = 0.01              # running-mean decay of the path length
    # optimization
    batch: int = 16                     # images per step, all ranks together
    lr: float = 0.0025                  # Adam learning rate (E + G share one Adam; D has its own)
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8
    ema_kimg: float = 5.0               # half-life of the EMA of E and G, in kimg
    ema_rampup: float | None = 0.05     # EMA half-life <= this fraction of the images seen (None: off)
    # augmentation (applied to the real batch; E reconstructs what it sees)
    aug_hflip: bool = False             # random horizontal flip, p = 0.5
    aug_rotate: float = 0.0             # random rotation, uniform in ±this many degrees (reflection padding)
    # encoder fine-tune (E learns to invert a fixed G instead of memorizing the training patients)
    train_generator: bool = True        # False: G is frozen, only E is trained (and nothing reads D)
    synthetic_fraction: float = 0.0     # share of each batch replaced by G(w), w from the latent prior of the
    #                                     init_from checkpoint folder: E also sees images no patient owns
    # schedule and records
    kimg: float = 200.0                 # training length in thousands of images
    tick_kimg: float = 1.0              # status line + stats.jsonl every this many kimg
    snapshot_ticks: int = 10            # training-state snapshot every this many ticks (and at the end)
    grid_ticks: int = 5                 # real | reconstruction PNG grid every this many ticks
    grid_images: int = 16               # images in the grid (fixed, seeded choice)
    keep_snapshots: int = 2             # older training-state snapshots are deleted
    export_dtype: str = "float16"       # storage dtype of the exported checkpoint ("float32" or "float16")
    export_discriminator: bool = False  # also export D (for membership-inference audits)
    seed: int = 0                       # weights, data order, augmentation, noise
    split: str | None = "train"         # data split to train on (phantom folders; None: all images)
    cache_mb: int = 2048                # keep the training images in memory when they fit in this many MB
    init_from: str | None = None        # start E, G (and D) from these weights: a training-state snapshot or a
    #                                     checkpoint folder (fine-tuning; a W checkpoint may start a W+ run)
    fresh_encoder: bool = False         # take only G (and D) from init_from; E starts from fresh weights
    grow_encoder: bool = False          # a wider E (e_channel_*) starts from init_from's narrower E, computing
    #                                     the same function at first (new channels start unread)

    def __post_init__(self):
        checks = [
            (self.latent in ("w", "w+"), f"latent must be 'w' or 'w+', got {self.latent!r}"),
            (self.image_range in ("signed", "unit"), f"image_range must be 'signed' or 'unit', got {self.image_range!r}"),
            (self.perceptual in PERCEPTUAL_KINDS, f"perceptual must be one of {PERCEPTUAL_KINDS}, got {self.perceptual!r}"),
            (self.perceptual == "none" or self.lambda_perc > 0,
             f"perceptual {self.perceptual!r} has weight lambda_perc 0 and would do nothing: set --lambda-perc "
             "(the 64-px presets turn the term off with 0)"),
            (self.img_channels in (1, 3), f"img_channels must be 1 or 3, got {self.img_channels}"),
            (self.resolution >= 8 and self.resolution & (self.resolution - 1) == 0,
             f"resolution must be a power of two >= 8, got {self.resolution}"),
            (self.batch >= 1 and self.kimg >= 0 and self.tick_kimg > 0, "batch >= 1, kimg >= 0 and tick_kimg > 0"),
            (self.export_dtype in ("float32", "float16"), f"export_dtype must be float32 or float16, got {self.export_dtype!r}"),
            (self.pl_weight == 0 or self.batch // self.pl_batch_shrink >= 1, "pl_batch_shrink leaves no images"),
            (0.0 <= self.synthetic_fraction < 1.0, f"synthetic_fraction must be in [0, 1), got {self.synthetic_fraction}"),
            (not self.fresh_encoder or self.init_from, "fresh_encoder needs init_from (the weights G starts from)"),
            (not self.grow_encoder or self.init_from, "grow_encoder needs init_from (the narrower E to grow)"),
            (not (self.fresh_encoder and self.grow_encoder), "fresh_encoder and grow_encoder exclude each other"),
            (self.train_generator or not self.lambda_gan,
             "a frozen generator (train_generator False) needs lambda_gan 0: the GAN term would only train E to fool D"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"AeganConfig: {message}")

    @property
    def model_kwargs(self) -> dict:
        """Constructor kwargs of the AEGAN (E + G)."""
        return dict(img_resolution=self.resolution, img_channels=self.img_channels, w_dim=self.w_dim,
                    latent=self.latent, channel_base=self.channel_base, channel_max=self.channel_max,
                    use_noise=self.use_noise, conv_clamp=self.conv_clamp, image_range=self.image_range,
                    encoder_channel_base=self.e_channel_base, encoder_channel_max=self.e_channel_max)

    @property
    def d_capacity(self) -> dict:
        """D's channel_base / channel_max (defaulting to E and G's)."""
        return dict(channel_base=self.d_channel_base or self.channel_base,
                    channel_max=self.d_channel_max or self.channel_max)


# Fields that fix the networks or the meaning of a training step: a snapshot resumes only when they match.
ARCHITECTURE_FIELDS = ("resolution", "img_channels", "latent", "w_dim", "channel_base", "channel_max",
                       "d_channel_base", "d_channel_max", "e_channel_base", "e_channel_max", "use_noise", "conv_clamp",
                       "image_range", "mbstd_group",
                       "batch", "seed", "r1_interval", "pl_interval", "pl_weight", "split", "train_generator",
                       "synthetic_fraction")

_PHANTOM64 = dict(resolution=64, latent="w", w_dim=512, channel_base=2048, channel_max=128, d_channel_base=1024,
                  d_channel_max=128, lambda_gan=0.1, batch=16, r1_gamma=0.05, r1_interval=16, pl_weight=0.0, ema_kimg=5.0,
                  ema_rampup=0.05, kimg=100.0, tick_kimg=1.0, snapshot_ticks=10, grid_ticks=5, perceptual="none",
                  lambda_perc=0.0)

PRESETS: dict[str, AeganConfig] = {
    "phantom-cxr64": AeganConfig(preset="phantom-cxr64", img_channels=1, aug_rotate=5.0, **_PHANTOM64),
    # 60 kimg, not 100: what fits one CPU core beside the face networks' training (~1 h); on the chest preset SSIM
    # goes 0.62 -> 0.65 from 54 to 100 kimg, so the last 40 kimg buy little. Resume with --kimg to train longer.
    "phantom-face64": AeganConfig(preset="phantom-face64", img_channels=3, aug_hflip=True, **{**_PHANTOM64, "kimg": 60.0}),
    "gmia-cxr256": AeganConfig(
        preset="gmia-cxr256", resolution=256, img_channels=1, latent="w", w_dim=512, channel_base=16384,
        channel_max=512, conv_clamp=256, image_range="unit", lambda_mse=10.0, lambda_perc=10.0,
        perceptual="lpips", r1_gamma=1.0, r1_interval=16, pl_weight=2.0, pl_interval=4, batch=128, lr=0.0025,
        ema_kimg=20.0, ema_rampup=None, aug_hflip=True, aug_rotate=15.0, kimg=25000.0, tick_kimg=4.0,
        snapshot_ticks=50, grid_ticks=50, export_dtype="float32",
    ),
    "tiny": AeganConfig(
        preset=None, resolution=16, img_channels=1, w_dim=32, channel_base=256, channel_max=16, mbstd_group=2,
        perceptual="none", lambda_perc=0.0, r1_gamma=0.1, r1_interval=2, pl_weight=2.0, pl_interval=2, batch=4,
        ema_kimg=0.01, ema_rampup=None, kimg=0.032, tick_kimg=0.008, snapshot_ticks=2, grid_ticks=1,
        grid_images=4, keep_snapshots=10, export_dtype="float32",
    ),
}


def aegan_config(name: str, **overrides) -> AeganConfig:
    """The preset ``name`` with the given fields replaced (``None`` values are ignored: unset flags)."""
    if name not in PRESETS:
        raise ConfigError(f"no stage-1 config for preset {name!r}; valid: {', '.join(PRESETS)}")
    return override(PRESETS[name], **overrides)


def config_dict(cfg: AeganConfig) -> dict:
    """The config as a JSON-ready dict."""
    d = dataclasses.asdict(cfg)
    d["betas"] = list(d["betas"])
    return d


@dataclass(frozen=True)
class ProjectionConfig:
    """``gmia project``: encoder codes, optionally refined by Adam on λ_mse·MSE + λ_perc·perceptual."""

    refine_steps: int = 0               # 0: encoder only
    refine_lr: float = 0.03             # Adam lr on the codes, cosine ramp-down to 0 (measured: 0.01-0.1 ok)
    lambda_mse: float = 1.0
    lambda_perc: float = 1.0
    lambda_ssim: float = 0.0            # weight of 1 - SSIM in the refinement loss
    refine_space: str | None = None     # "w+": refine one code per layer even for a W model (None: the model's)
    perceptual: str = "auto"            # as in AeganConfig; "auto" falls back to no perceptual term (logged)
    lpips_weights: str | None = None
    batch_size: int = 32                # images per batch (results do not depend on it)
    split: str | None = None            # phantom folders: the split to project (None: all)

    def __post_init__(self):
        if (self.refine_steps < 0 or self.batch_size < 1 or self.perceptual not in PERCEPTUAL_KINDS
                or self.refine_space not in (None, "w", "w+")):
            raise ConfigError(f"ProjectionConfig: need refine_steps >= 0, batch_size >= 1 and perceptual in "
                              f"{PERCEPTUAL_KINDS} and refine_space in (None, 'w', 'w+'); got {self.refine_steps}, "
                              f"{self.batch_size}, {self.perceptual!r}, {self.refine_space!r}")
