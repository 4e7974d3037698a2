"""Stage-2 (anonymization) configuration: one typed dataclass and its presets.

    cfg = anonymize_config("phantom-cxr64", privacy="high", batch_size=16)   # None values are ignored

The published procedure (reference §6) is Adam(lr 0.01, betas (0, 0.99)) on one w per image, λ_id = λ_ut = 1,
up to 1000 steps, stopping as soon as the identity hinge is met. We keep its optimizer and its losses and change
what §13 lists as pitfalls:

* **batched** with per-image Adam state and per-image stopping: an image that is done leaves the batch and the
  next one from the queue takes its place, so one slow image never holds the others;
* **the stopping rule also looks at utility**: an image is done when its hinge holds with a small slack
  (``hinge_slack``, so that 8-bit rounding of the saved file does not undo it) *and* its utility is settled:
  back within ``utility_ratio`` × the distance of the plain reconstruction G(E(x)) (as useful as stage 1
  allows), or no longer improving (less than ``min_improvement`` relative gain in ``patience`` steps). The code
  returned is the best one (lowest utility loss) among the steps whose hinge held — not merely the first that
  fooled E_id;
* **noise fixed per image** (seeded from the record key), identical in optimization and in the decoded image;
* the **privacy gate** re-checks the saved file and retries (``gate_retries``) or withholds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..config import DEFAULT_PRIVACY, PRIVACY_LEVELS, margin_for, override
from ..errors import ConfigError
from ..fileio import jsonable

__all__ = ["AnonymizeConfig", "PRESETS", "SPEED_PROFILES", "UTILITY_FORMS", "NOISE_MODES", "ENGINES",
           "anonymize_config", "use_bf16", "bf16_autocast"]

UTILITY_FORMS = ("l2", "mse", "findings")
NOISE_MODES = ("per-image", "const")
ENGINES = ("optimize", "amortized")
PRECISIONS = ("auto", "auto-bf16", "fp32", "bf16")


def _free(default):
    """A config field that may differ when a run is resumed: it does not change the released images."""
    return field(default=default, metadata={"free_on_resume": True})


@dataclass(frozen=True)
class AnonymizeConfig:
    """Everything that defines a stage-2 run (and so must match when a run is resumed)."""

    preset: str                      # gmia preset: resolution, channels, checkpoints/<preset>/
    margin: float = PRIVACY_LEVELS[DEFAULT_PRIVACY]  # m: private when cos(E_id(x_R), E_id(x_A)) <= m
    privacy: str | None = _free(DEFAULT_PRIVACY)  # the named level m came from (None: an explicit --margin)
    # losses (reference: λ_id = λ_ut = 1, L_ut as MSE over the 512 features; the paper writes the L2 norm)
    lambda_id: float = 1.0           # weight of the identity hinge max(0, cos - m)
    lambda_ut: float = 1.0           # weight of the utility distance
    utility_form: str = "l2"         # "l2": ||E_ut(x_A) - E_ut(x_R)||_2 (paper); "mse": mean of squares (code);
    #                                  "findings": KL of E_ut's finding probabilities (keeps the diagnosis only)
    lambda_ut2: float = 0.0          # weight of ||E_ut2(x_A) - E_ut2(x_R)||_2, the second utility network (a plain
    #                                  CNN, networks/plain_utility.py; needs <preset>/utility2.*; 0: off)
    utility_jitter: int = 0          # > 0: E_ut reads x_A shifted by up to this many pixels, another shift each step
    #                                  (losses.UtilityTerm), against the source read under the same shift
    # optimizer (reference: Adam lr 0.01, betas (0, 0.99), eps 1e-8, up to 1000 steps). lr 0.03: on 48 phantom
    # test images (stage 1 at 50 kimg, m = 0) it needs 99 steps per image instead of 187 at lr 0.01, for the same
    # utility (E_ut macro AUROC 1.000 vs 0.999); lr 0.1 moved the codes too far (utility distance 0.74 vs 0.38)
    lr: float = 0.03
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8
    max_steps: int = 1000            # per image; an image not private by then is withheld
    # stopping rule (per image)
    hinge_slack: float = 0.02        # optimize to cos <= m - slack: headroom for the rounding of the saved file
    lambda_mdl: float = 0.0          # weight of the MFM/MDL term (0: off; needs <preset>/mfm.* and decoupler.*)
    lambda_sem: float = 0.5          # ... its semantic-distance weight (see gmia.decoupling.term)
    lambda_mid: float = 1.0          # ... its MFM identity-code hinge weight
    mdl_margin: float | None = None  # ... m' of that hinge (None: the decoupler's calibrated margin)
    lambda_lesion: float = 0.0       # weight of the lesion-map term 1 - soft Dice (needs E_ut with a segmentation head)
    lambda_place: float = 0.0        # weight of the finding-place term: RMS pixel difference where E_ut sees the
    #                                  findings (its class-activation map of x_R; losses.FindingPlaceTerm)
    place_findings: tuple[str, ...] = ()  # ... the findings whose place it keeps (empty: all of E_ut's)
    lambda_surrogate: float = 0.0    # weight of the surrogate-identity pull (0: off; needs <preset>/latent-prior.*)
    goal_steps: int = 100            # a row not private after this many steps drops its goal terms (surrogate)
    surrogate_cos: float = 0.7       # ... pulled until cos(E_id(x_A), E_id(G(w_T))) >= this (see surrogate.py)
    utility_ratio: float = 0.0       # once private: done when utility distance <= this x the reconstruction's (0: off)
    patience: int = 20               # ... or after this many steps without a significant gain (0: stop at the hinge)
    min_improvement: float = 0.01    # a gain is significant above this fraction of the loss
    # privacy gate (on the saved file)
    gate_retries: int = 2            # a saved image above m goes back for more steps, this many times
    retry_slack: float = 0.05        # each retry asks for this much more slack
    # projection (w_0 = E(x), optionally refined on reconstruction loss)
    refine_steps: int = 0
    # start: re-draw all but the findings from the record's surrogate code (redraw.py; needs <preset>/latent-split.*
    # and latent-prior.*): 0 = start at the source's code, 1 = keep only the finding subspace of the source
    redraw: float = 0.0
    # "optimize": the per-image optimizer from w_0; "amortized": one pass of the trained anonymizer network
    # (amortized.py), the per-image optimizer only for files the gate refuses
    engine: str = "optimize"
    # amortized engine: the share of the network's learned correction f applied, w_A = w_0 + correction · f.
    # f brings back what the findings need, and with it some of what links a patient's studies; less of it
    # releases more files above the margin, which the nudge then takes (docs/scale.md, "The correction")
    correction: float = 1.0
    # execution
    # images optimized together; rows are independent, but batched kernels round a row by its batch-mates, so
    # the schedule (runner.schedule: blocks of 4 batches) fixes them and the pixels depend on this size
    batch_size: int = _free(32)
    noise: str = "per-image"         # "per-image": fixed noise seeded from the record key; "const": G's buffers
    precision: str = "auto"          # optimization forward passes: "fp32", "bf16" (autocast), "auto" = bf16 on CUDA,
    #                                  fp32 on CPU; "auto-bf16" = bf16 on CUDA and on CPUs
    #                                  with native bf16 (AMX / avx512_bf16), else fp32. The gate always runs in fp32.
    #                                  bf16 on a CPU with AMX: 20.9 vs 32.2 ms per image-step at batch 32 (measured).
    #                                  The amortized engine defaults to "auto-bf16" (AMORTIZED_PRECISION)
    seed: int = 0                    # mixed into every per-image seed
    output_bits: int | None = None   # PNG bit depth (None: match each input file; 8 or 16)

    def __post_init__(self):
        numbers = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), float)}
        numbers.update(beta1=self.betas[0], beta2=self.betas[1])
        bad = {k: v for k, v in numbers.items() if not math.isfinite(v)}
        if bad:  # inf/nan from the command line would waste every step or switch a term off silently
            raise ConfigError(f"AnonymizeConfig: {', '.join(f'{k}={v}' for k, v in bad.items())}: every number "
                              "must be finite")
        negative = [f"{k}={v}" for k, v in numbers.items() if k.startswith("lambda_") and v < 0]
        checks = [
            (not negative, f"loss weights must be >= 0 (0 turns a term off), got {', '.join(negative)}"),
            (-1.0 <= self.margin <= 1.0, f"margin must be in [-1, 1] (a cosine), got {self.margin}"),
            (self.utility_form in UTILITY_FORMS, f"utility_form must be one of {UTILITY_FORMS}, got {self.utility_form!r}"),
            (self.noise in NOISE_MODES, f"noise must be one of {NOISE_MODES}, got {self.noise!r}"),
            (self.engine in ENGINES, f"engine must be one of {ENGINES}, got {self.engine!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (self.max_steps >= 1 and self.batch_size >= 1, "max_steps and batch_size must be >= 1"),
            (self.lr > 0 and 0 <= self.betas[0] < 1 and 0 <= self.betas[1] < 1, "lr > 0 and betas in [0, 1)"),
            (min(self.patience, self.gate_retries, self.refine_steps, self.utility_jitter) >= 0,
             "patience, gate_retries, refine_steps and utility_jitter must be >= 0"),
            (0.0 <= self.redraw <= 1.0, f"redraw must be in [0, 1] (0: off), got {self.redraw}"),
            (0.0 <= self.correction <= 1.0,
             f"correction must be in [0, 1] (0: the start itself), got {self.correction}"),
            (self.output_bits in (None, 8, 16), f"output_bits must be 8, 16 or unset, got {self.output_bits}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"AnonymizeConfig: {message}")


# Fields that change the images a run produces: ``--resume`` refuses a run folder made with other values. Every
# field is one unless marked ``_free`` (a new field is checked on resume until someone shows it is free).
RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(AnonymizeConfig) if not f.metadata.get("free_on_resume"))
# A field added later has a default that reproduces what runs did before it existed (engine "optimize", redraw 0):
# a run folder made before it is resumed as long as the new value is that default.
RESULT_DEFAULTS = {f.name: jsonable(f.default) for f in dataclasses.fields(AnonymizeConfig)
                   if f.name in RESULT_FIELDS and f.default is not dataclasses.MISSING}

PRESETS: dict[str, AnonymizeConfig] = {
    # 64 px phantoms: surrogate identities on (surrogate.py), w_0 = E(x) unrefined, lr 0.1, 10 steps of patience.
    # Chosen against the adaptive attacker (experiments/adaptive_attack.py, m = -0.3, 64 test / 192 training
    # images): this setting (surrogate cosine 0.7) gives adaptive AUC 0.617 and E_ut AUROC 0.999 at ~1 image/s;
    # surrogate cosine 0.5 gives 0.687, and the hinge-only setting (no surrogate, w_0 refined 50 steps, lr 0.03,
    # patience 20) 0.909 at 0.2 images/s. A refined start keeps more of the source (adaptive 0.804 vs 0.736
    # without, hinge only), and so does polishing utility without a surrogate (0.774).
    # Chest: surrogate cosine 0.9. With the adaptive attacker retrained on 400 anonymized images (make evaluate):
    # 0.686 [0.600, 0.759] at 0.9 against 0.750 [0.664, 0.822] at 0.7, E_ut AUROC 0.997 vs 0.996.
    # These numbers are with a stage 1 without the fidelity fine-tune; with it (sharper G): 0.742 [0.678, 0.804]
    # at 0.9, 0.704 [0.638, 0.774] at 0.95 (train-on-anonymized gap 0.080 vs 0.054), 0.741 at 0.99: all inside
    # the intervals, so the preset keeps 0.9. Faces (0.7): 0.845; at 0.95: 0.834 at 0.43 vs 0.69 img/s (docs/results.md).
    # Level: `medium` (m = 0), because the re-drawn start is already another person and the hinge is only the
    # guard that the release is no closer to its source than an unrelated patient is (E_id's different-patient
    # cosine averages -0.03). At m = -0.3 it pushed every image past that, to the "opposite" of its source, which
    # an attacker reads by ranking the other way round: independent attacker own-source AUC 0.289 / 0.277
    # (chest / faces; linkability 0.711 / 0.723) against 0.478 / 0.449 at m = 0 (200 test images, docs/results.md).
    # Chest: a second utility network of another family (a plain CNN, lambda_ut2 0.22: on the stage-1
    # reconstructions its distance then weighs what E_ut's does) and bf16 where the CPU has it. On 200 validation
    # images an independent ResNet-18 keeps 0.976x of its AUROC on originals against 0.969x for E_ut alone in fp32
    # (0.965x in bf16), at 1.46x the images/s (docs/results.md, "A second utility network").
    "phantom-cxr64": AnonymizeConfig(preset="phantom-cxr64", margin=PRIVACY_LEVELS["medium"],
                                     privacy="medium", lr=0.1, patience=10, lambda_surrogate=1.0,
                                     surrogate_cos=0.9, redraw=1.0, lambda_ut2=0.22, precision="auto-bf16"),
    # Faces also keep the lesion map (E_ut segments): on 32 test images lesion Dice 0.28 -> 0.53 with the term,
    # attacker AUC 0.378 -> 0.366, E_ut AUROC 1.000 both (the hinge-only setting: 0.42).
    # The MFM/MDL term (lambda_mdl 1) lifted an independent ResNet-18's ratio (3 seeds, 200 test images) from
    # 0.964x to 0.973x at a cost in lesion Dice ("The foundation-model (MDL) term"); on the chest it does not lift
    # that ratio (0.966x vs 0.969x), so the chest leaves it off.
    # The faces' own second utility network (lambda_ut2 0.14, the chest's rule) lifts that ratio to 1.011x and
    # lowers the adaptive own-source AUC (0.756 vs 0.832), but pulls on the lesion: an independent U-Net's Dice
    # 0.825x at lesion weight 1.2 (bar 0.85), 0.852x at 2.5, 0.880x at 3.5 (same privacy, ratio 1.005x).
    # bf16 as on the chest: 0.73 vs 0.52 images/s.
    # docs/results.md, "The face preset with a second utility network".
    "phantom-face64": AnonymizeConfig(preset="phantom-face64", margin=PRIVACY_LEVELS["medium"],
                                      privacy="medium", lr=0.1, patience=10, lambda_surrogate=1.0,
                                      lambda_lesion=3.5, lambda_mdl=1.0, redraw=1.0, lambda_ut2=0.14,
                                      precision="auto-bf16"),
    # The published setting: README margin -0.7, MSE utility, stop at the hinge (patience 0).
    "gmia-cxr256": AnonymizeConfig(preset="gmia-cxr256", margin=PRIVACY_LEVELS["max"], privacy="max", utility_form="mse",
                                   patience=0, batch_size=8),
    "face256": AnonymizeConfig(preset="face256", margin=PRIVACY_LEVELS[DEFAULT_PRIVACY],
                                     privacy=DEFAULT_PRIVACY, batch_size=8),
}


# Speed profiles: bundles of settings applied over a preset (explicit flags still win).
# "quality" (default): the preset as is: for the phantoms, surrogate identity and utility polish after the hinge
#   (patience), fp32 on CPU.
# "fast": the reference's stopping rule (stop as soon as the hinge holds, from w_0 = E(x)), a larger step, no
#   surrogate, and bf16 autocast ("auto-bf16": on CUDA, and on CPUs with native bf16, e.g. AMX; elsewhere bf16 is
#   slower than fp32). experiments/bench_anonymize.py, m = -0.3, 1 CPU thread, idle machine: 7.19 images/s vs
#   1.41 for the published loop (5.1x) at a better outcome (private 1.000 vs 0.938, E_ut macro AUROC 0.974 vs
#   0.785); the default reaches AUROC 0.997 at 0.78 images/s. lr 0.1: ~4 steps per image at m = -0.3 instead of
#   7 at 0.03 (16 images).
SPEED_PROFILES: dict[str, dict] = {
    "quality": {},
    "fast": dict(patience=0, refine_steps=0, lr=0.1, precision="auto-bf16", lambda_surrogate=0.0, redraw=0.0,
                 lambda_mdl=0.0, lambda_ut2=0.0),
}


# The amortized engine's passes (E, E_ut, the guard's and the gate's renderings, the nudge) run in bf16 where the
# hardware has it; the identity checks (E_id of the source and of the saved file) stay fp32. On this project's
# CPU (avx512_bf16) that made the engine 1.3x (faces) to 1.5x (chest) faster at the same outcome, and moved the
# guard's scores of 512 phantom test images by at most 2.5% (no decision changed). docs/scale.md, "Two engines".
AMORTIZED_PRECISION = "auto-bf16"

# The share of the amortized network's correction applied, per preset (AnonymizeConfig.correction; 1 elsewhere).
# The full correction keeps more of the findings than the optimizer and brings back patient cues with them:
# on phantom-cxr64 the adaptive attacker linked a patient's other studies at 0.598 [0.565, 0.632] against the
# optimizer's 0.543; at 0.4 it links them at 0.536 [0.505, 0.571], and the independent ResNet-18 keeps 0.974 of
# its AUROC on originals (0.988 with all of it, the optimizer 0.961). docs/scale.md, "The correction".
AMORTIZED_CORRECTION = {"phantom-cxr64": 0.4}


def anonymize_config(preset: str, privacy: str | None = None, margin: float | None = None, speed: str | None = None,
                     **changes) -> AnonymizeConfig:
    """The preset's config with the privacy knob resolved (explicit margin wins), the speed profile and flags
    applied (flags last)."""
    if preset not in PRESETS:
        raise ConfigError(f"no stage-2 settings for preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if speed is not None and speed not in SPEED_PROFILES:
        raise ConfigError(f"unknown speed profile {speed!r}; valid: {', '.join(SPEED_PROFILES)}")
    cfg = PRESETS[preset]
    if privacy is not None or margin is not None:
        cfg = dataclasses.replace(cfg, margin=margin_for(privacy, margin), privacy=None if margin is not None else privacy)
    cfg = dataclasses.replace(cfg, **SPEED_PROFILES[speed or "quality"])
    cfg = override(cfg, **changes)
    if cfg.engine == "amortized":  # the engine's own defaults, for what the flags leave unset
        # its network learned from runs without the MFM term and the second utility network, and its nudge keeps
        # to what it was measured with
        defaults = {"precision": AMORTIZED_PRECISION, "correction": AMORTIZED_CORRECTION.get(preset, 1.0),
                    "lambda_mdl": 0.0, "lambda_ut2": 0.0}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in defaults.items() if changes.get(k) is None})
    if privacy is None and margin is None and cfg.redraw == 0.0 and PRESETS[preset].redraw > 0.0:
        # a preset's level assumes its re-drawn start; from the source's own code the hinge is what moves the
        # identity, and the level for that start is DEFAULT_PRIVACY (gmia/config.py)
        cfg = dataclasses.replace(cfg, margin=PRIVACY_LEVELS[DEFAULT_PRIVACY], privacy=DEFAULT_PRIVACY)
    return cfg


def config_dict(cfg: AnonymizeConfig) -> dict:
    """JSON-ready dict of the config (tuples become lists)."""
    return jsonable(cfg)


def target_margin(cfg: AnonymizeConfig, attempt: int = 0) -> float:
    """The cosine a row must reach on its ``attempt``-th try (0 = first): m − hinge_slack − attempt · retry_slack.
    The slack is headroom for the rounding of the saved file; each gate retry asks for more."""
    return cfg.margin - cfg.hinge_slack - attempt * cfg.retry_slack


def use_bf16(precision: str, device) -> bool:
    """Whether the optimization runs under bf16 autocast for ``precision`` on ``device``."""
    import torch

    kind = torch.device(device).type
    if precision == "bf16":
        return True
    if precision == "auto":
        return kind == "cuda"
    if precision == "auto-bf16":
        return kind == "cuda" or (kind == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def bf16_autocast(device, enabled: bool):
    """bf16 autocast on ``device``'s kind when ``enabled`` (``use_bf16``), else a context that changes nothing."""
    import torch

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)
