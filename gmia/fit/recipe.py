"""A preset's training recipe as data: the ordered stages that make every network ``gmia anonymize`` and
``gmia evaluate`` read, with the settings each one trains with.

    stages = recipe("gmia-cxr256")                              # the published recipe, full size
    stages = recipe("gmia-cxr256", variant="tiny")              # same stages and code paths, toy widths and steps
    stages = recipe("phantom-cxr64", overrides={"aegan-ft3": {"kimg": 10}})

A stage names its ``kind`` (what trains it: ``gmia.fit.stages.KINDS``), the stages it reads (``needs``), its
settings (``options``: fields of that kind's config, e.g. a ``TrainConfig`` or an ``AeganConfig``) and whether
its checkpoint goes into the output folder (``export``). Settings not named come from the preset's own configs
(``gmia.networks.training.PRESETS``, ``gmia.projection.config.PRESETS``, ``gmia.decoupling.FitConfig``), so a
recipe only says what differs from them.

The phantom recipes are what made the shipped ``checkpoints/phantom-*`` weights: each AE-GAN leg is one stage
with the length, batch and learning rate its card records under ``init_from`` (``tests/fit/test_recipe.py``
checks the two against each other).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
from dataclasses import dataclass, field

from ..config import get_preset
from ..errors import ConfigError

__all__ = ["Stage", "KIND_NAMES", "RECIPES", "VARIANTS", "recipe", "parse_override"]

KIND_NAMES = ("network", "decoupler", "aegan", "prior", "split", "pool", "report")


@dataclass(frozen=True)
class Stage:
    """One step of a recipe; its work folder is ``OUT/work/<name>``."""

    name: str                                     # unique within the recipe
    kind: str                                     # one of KIND_NAMES
    needs: tuple[str, ...] = ()                   # stages whose checkpoints (or images) it reads
    options: dict = field(default_factory=dict)   # settings of its kind (see the module doc)
    export: bool = True                           # copy its checkpoint into the output folder
    distributed: bool = False                     # runs on every process of a torchrun job (else rank 0 only)
    note: str = ""                                # one line for the dry run: what it is for

    def __post_init__(self):
        if self.kind not in KIND_NAMES:
            raise ConfigError(f"stage {self.name!r}: unknown kind {self.kind!r}; valid: {', '.join(KIND_NAMES)}")


def _networks(needs_data: tuple[str, ...] = (), second_utility: bool = True) -> list[Stage]:
    """The scoring networks, each with its preset's training config (gmia.networks.training); ``second_utility``:
    E_ut2 too."""
    notes = {"mfm": "label-free foundation model (features for the decoupler; stage 1's perceptual term)",
             "identity": "E_id, the identity network the optimizer pushes against",
             "utility": "E_ut, the finding classifier whose features the optimizer keeps",
             "utility2": "E_ut2, a finding classifier of another family (plain CNN) the optimizer may keep too",
             "attacker": "the evaluation-only re-identifier (another family and seed than E_id)"}
    return [Stage(role, "network", needs_data, {"role": role}, note=notes[role]) for role in notes
            if second_utility or role != "utility2"]


def _aegan_leg(name: str, init: str, note: str, **options) -> Stage:
    """A fine-tune of stage 1 from the export of ``init`` (fresh optimizers, as ``--init-from``)."""
    return Stage(name, "aegan", (init,) + tuple(options.pop("needs", ())), {"init": init, **options},
                 export=False, distributed=True, note=note)


_FIDELITY = dict(lambda_gan=0.0, lambda_ssim=1.0)  # the fidelity fine-tune: 10 MSE + (1 - SSIM), D skipped


def _phantom(preset: str, cotrain_kimg: float, eft_kimg: float, pool: bool, refine: dict) -> tuple[Stage, ...]:
    """The shipped phantom recipe (Makefile `train-phantom`; the kimg are the ones each card records). E_ut2 where the
    preset's stage 2 reads it (the published recipes always train it: a user's fit folder then takes --lambda-ut2)."""
    from ..anonymization.config import PRESETS as STAGE2

    stages = _networks(second_utility=STAGE2[preset].lambda_ut2 > 0) + [
        Stage("decoupler", "decoupler", ("mfm",), {}, note="MDL split of the MFM's features (P_sem, P_id)"),
        Stage("aegan", "aegan", (), {"kimg": cotrain_kimg}, export=False, distributed=True,
              note="stage 1: E and G co-trained against D"),
        _aegan_leg("aegan-ft1", "aegan", "fidelity fine-tune, leg 1 (CPU, batch 16)", kimg=60.0, **_FIDELITY),
        _aegan_leg("aegan-ft2", "aegan-ft1", "fidelity fine-tune, leg 2 (batch 16)", kimg=110.0, **_FIDELITY),
        _aegan_leg("aegan-ft3", "aegan-ft2", "fidelity fine-tune, leg 3 (batch 64)", kimg=440.0, batch=64,
                   **_FIDELITY),
        _aegan_leg("aegan-ft4", "aegan-ft3", "fidelity fine-tune, leg 4 (batch 64)", kimg=270.0, batch=64,
                   **_FIDELITY),
        Stage("prior-ft", "prior", ("aegan-ft4",), {"of": "aegan-ft4"}, export=False,
              note="latent prior of the fine-tuned model: the synthetic half of the encoder fine-tune"),
        _aegan_leg("aegan-eft", "aegan-ft4", "encoder fine-tune: G frozen, half of each batch G(w), w from the prior",
                   kimg=eft_kimg, train_generator=False, synthetic_fraction=0.5, needs=("prior-ft",), **_FIDELITY),
    ]
    last = "aegan-eft"
    if pool:
        stages += [
            Stage("pool", "pool", (), {"domain": "cxr", "patients": 1000, "studies": 4, "size": 64,
                                       "seeds": list(range(100, 116))}, export=False,
                  note="16 000 new phantom patients (seeds 100-115, none in the benchmark)"),
            _aegan_leg("aegan-pool1", "aegan-eft", "E grown to 256 channels and G on the pool", kimg=285.248,
                       batch=64, lr=0.0025, e_channel_max=256, grow_encoder=True, data="pool", needs=("pool",),
                       **_FIDELITY),
            _aegan_leg("aegan-pool2", "aegan-pool1", "the pool, lr 0.001", kimg=261.184, batch=64, lr=0.001,
                       e_channel_max=256, data="pool", needs=("pool",), **_FIDELITY),
            _aegan_leg("aegan-pool3", "aegan-pool2", "the pool, lr 0.0006", kimg=271.872, batch=64, lr=0.0006,
                       e_channel_max=256, data="pool", needs=("pool",), **_FIDELITY),
        ]
        last = "aegan-pool3"
    stages = [dataclasses.replace(s, export=True) if s.name == last else s for s in stages]
    stages += [
        Stage("prior", "prior", (last,), {"of": last}, note="latent prior: surrogate identities, membership audits"),
        Stage("split", "split", (last, "prior"), {"of": last}, note="latent split: the findings' subspace, kept by "
              "the re-drawn start (the preset's default)"),
        Stage("report", "report", (last, "prior", "attacker", "utility"), {"of": last, **refine}, export=False,
              note="stage-1 acceptance numbers on the test split, into the aegan card"),
    ]
    return tuple(stages)


def _published(preset: str) -> tuple[Stage, ...]:
    """The published recipe at 256 px: the five scoring networks, the decoupler, the AE-GAN (GMIA's co-training; the
    published generator is its 6 854-kimg snapshot), the latent prior and the stage-1 report."""
    return tuple(_networks()) + (
        Stage("decoupler", "decoupler", ("mfm",), {}, note="MDL split of the MFM's features (P_sem, P_id)"),
        # perceptual term "auto": LPIPS when its AlexNet weights are on disk, else the MFM trained above
        Stage("aegan", "aegan", ("mfm",), {"kimg": 6854.0, "perceptual": "auto"}, distributed=True,
              note="stage 1: E and G co-trained against D (the published run's kept snapshot: 6 854 kimg)"),
        Stage("prior", "prior", ("aegan",), {"of": "aegan"}, note="latent prior: surrogate identities, audits"),
        Stage("split", "split", ("aegan", "prior"), {"of": "aegan"},
              note="latent split: the findings' subspace, for --redraw and --target-auc"),
        Stage("report", "report", ("aegan", "prior", "attacker", "utility"), {"of": "aegan", "limit": 500},
              export=False, note="stage-1 acceptance numbers on the test split, into the aegan card"),
    )


RECIPES: dict[str, tuple[Stage, ...]] = {
    "phantom-cxr64": _phantom("phantom-cxr64", 100.0, 60.0, pool=True,
                              refine=dict(limit=200, refine_steps=600, refine_lr=0.1, refine_space="w+",
                                          lambda_ssim=1.0)),
    "phantom-face64": _phantom("phantom-face64", 60.0, 220.0, pool=False,
                               refine=dict(limit=200, refine_steps=400, refine_lr=0.05, refine_space="w+",
                                           lambda_ssim=1.0)),
    "gmia-cxr256": _published("gmia-cxr256"),
    "face256": _published("face256"),
}

# Toy-sized variants for tests and dry runs of the machinery: the same stages and code paths, small widths,
# few steps. Keys: a kind, or "network:<role>"; values are merged into each stage's options.
_TINY_NET = {
    "network:identity": dict(widths=(8, 16, 16), blocks=(1, 1, 1), stem_width=8, stem_stride=2, embed_dim=32),
    "network:attacker": dict(widths=(8, 16, 16, 16), convs=(1, 1, 1, 1), embed_dim=32),
    "network:utility": dict(growth=4, blocks=(2, 2), init_features=8, feature_dim=16, decoder_width=8,
                            stem="small"),
    "network:utility2": dict(widths=(8, 16), convs=(1, 1)),
    "network:mfm": dict(widths=(8, 8, 16, 16, 16, 16), latent_channels=4, probe_images=64, projection_dim=8,
                        mask_patch=32),
}
VARIANTS: dict[str, dict[str, dict]] = {
    "tiny": {
        "network": dict(epochs=1, batch_size=16, eval_batch_size=32, warmup_epochs=0.5),
        **_TINY_NET,
        "aegan": dict(w_dim=32, channel_base=512, channel_max=16, d_channel_base=256, d_channel_max=16,
                      e_channel_base=None, mbstd_group=2, perceptual="none", lambda_perc=0.0, batch=4, kimg=0.008,
                      tick_kimg=0.004, snapshot_ticks=1, grid_ticks=1, grid_images=4, keep_snapshots=4,
                      r1_interval=2, pl_interval=2, ema_kimg=0.01, ema_rampup=None, export_dtype="float32",
                      cache_mb=64),
        "decoupler": dict(sweep=False, coding_rate={"steps": 4, "eval_every": 2}),
        "prior": dict(limit=32),
        "split": dict(rank=4),
        "report": dict(limit=8, refine_steps=2),
        "pool": dict(patients=3, studies=2, size=None, seeds=[100, 101]),
    },
}


def parse_override(text: str) -> tuple[str, str, object]:
    """``STAGE.FIELD=VALUE`` (STAGE may be a glob: ``aegan*``; VALUE is JSON, else a string) →
    (stage pattern, field, value)."""
    import json

    head, sep, raw = text.partition("=")
    stage, dot, name = head.partition(".")
    if not sep or not dot or not stage or not name:
        raise ConfigError(f"--set {text!r}: expected STAGE.FIELD=VALUE, e.g. aegan.kimg=20 or 'aegan*.batch=32'")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return stage, name, value


def _merge(options: dict, extra: dict) -> dict:
    """Options with ``extra`` merged in; nested dicts (e.g. coding_rate) are merged key by key."""
    out = copy.deepcopy(options)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def recipe(preset: str, variant: str | None = None, overrides: dict[str, dict] | None = None,
           only: list[str] | None = None) -> tuple[Stage, ...]:
    """The stages of ``preset``, with a ``variant``'s settings and then ``overrides`` ({stage glob: {field:
    value}}) merged into their options. ``only``: keep these stages (names or globs), in recipe order."""
    get_preset(preset)
    if preset not in RECIPES:
        raise ConfigError(f"no training recipe for preset {preset!r}; presets with one: {', '.join(RECIPES)}")
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(f"unknown recipe variant {variant!r}; valid: {', '.join(VARIANTS)}")
    stages = list(RECIPES[preset])
    names = [s.name for s in stages]
    for pattern in overrides or {}:
        if not fnmatch.filter(names, pattern):
            raise ConfigError(f"--set {pattern}...: no stage of the {preset} recipe matches; stages: "
                              f"{', '.join(names)}")
    out = []
    for s in stages:
        opts = s.options
        if variant is not None:
            v = VARIANTS[variant]
            opts = _merge(opts, v.get(s.kind, {}))
            if s.kind == "network":
                opts = _merge(opts, v.get(f"network:{s.options['role']}", {}))
            if s.kind == "pool" and opts.get("size") is None:
                opts = {**opts, "size": get_preset(preset).resolution}
        for pattern, extra in (overrides or {}).items():
            if fnmatch.fnmatch(s.name, pattern):
                opts = _merge(opts, extra)
        out.append(dataclasses.replace(s, options=opts))
    if only:
        keep = {n for pattern in only for n in fnmatch.filter(names, pattern)}
        missing = [p for p in only if not fnmatch.filter(names, p)]
        if missing:
            raise ConfigError(f"--only {missing[0]}: no such stage; stages: {', '.join(names)}")
        out = [s for s in out if s.name in keep]
    return tuple(out)
