"""`gmia train anonymizer`: fit the amortized anonymizer (``amortized.py``) of a preset on its training split.

    path = train_anonymizer("phantom-cxr64", data="data/phantom-cxr64", checkpoints="checkpoints")

Each step takes a batch of training images with their codes w = E(x) and reference features (computed once),
draws a surrogate for each from a pool of prior samples and a margin m (the preset's level, jittered), renders
w_A = net(w, w_T, m) from the preset's start (its re-drawn code: amortized.py) with fresh noise, and descends the
preset's stage-2 objective (hinge asking for ``extra_slack`` more headroom than the optimizer, so that the gate
passes on the first try) plus an adversarial term: a small linker network is trained alongside, on the same
batches, to match each anonymized image to its own source among the batch's sources (InfoNCE), and the
anonymizer is pushed to make that match uniform. The
per-image optimizer only moves what E_id sees; the linker learns whatever else links an output to its source
(PriCheXy-Net trains its anonymizer against a re-identifier the same way). G, E, E_id and E_ut stay frozen.

A held-out check on the validation split after every epoch (m at the preset's level) logs the fraction whose
rendered image is private and the utility distance against the plain reconstruction's; of the epochs that keep
about the most of them private, the one of best utility is saved as
``<checkpoints>/<preset>/anonymizer.{safetensors,json}`` (the learning rate decays to 0 and gradients are
clipped: at a constant 2e-3, phantom-cxr64 collapsed at epoch 8, from 0.95 of the held-out images private to
0.16).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import save_module
from ..config import PRIVACY_LEVELS, override
from ..errors import ConfigError, InputError
from .amortized import ANONYMIZER, Anonymizer, anonymize_codes, fitted_to, reads_lesion, utility_views
from .config import anonymize_config, target_margin
from .optimizer import noise_seeds
from .surrogate import surrogate_codes, surrogate_seeds

__all__ = ["AmortizedConfig", "train_anonymizer", "Linker"]


@dataclass(frozen=True)
class AmortizedConfig:
    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-3                  # decayed to 0 over the run (cosine); gradients clipped to norm clip_norm
    clip_norm: float = 1.0
    hidden: int = 512                 # 3.2 MB a preset in float16 (the shipped files)
    depth: int = 3
    extra_slack: float = 0.05         # the hinge asks for m − hinge_slack − this: the gate passes on the first try
    hinge_weight: float = 4.0         # × the preset's λ_id: one pass has no second chance, so privacy comes first
    # ... but not past "another person": an output pushed far below the hinge's target (E_id cosine < target −
    # band) is penalised as strongly, since an identity pushed to "the opposite of the source" is linked again
    # by an attacker that ranks the other way round (two-sided linkability). None: no floor
    band: float | None = 0.15
    lambda_adv: float = 1.0           # weight of the adversarial linker term (0: off)
    # what the linker matches an output to: "source" (the image it was made from: the own-source threat) or
    # "both" (that, and another study of the same patient, where the data has one: the same-patient threat)
    link_to: str = "source"
    linker_lr: float = 1e-3
    temperature: float = 0.1          # of the linker's InfoNCE
    surrogates: int = 2048            # pool of surrogate draws used in training (inference uses each record's own)
    # margins: the preset's level this often, another named level otherwise, each moved by up to margin_jitter.
    # The network barely tells margins apart, so a mix teaches it their average: trained on all levels, it
    # pushed phantom-cxr64 validation images to a mean cosine of -0.42 after four epochs, against -0.31 at the
    # preset's level alone (m = 0 asks for about -0.1). Other levels are the gate's and the optimizer's.
    default_share: float = 1.0
    margin_jitter: float = 0.05
    val_images: int = 128
    private_tolerance: float = 0.02   # weights kept: the best utility among epochs this close to the most private
    redraw: float | None = None       # the start it learns to correct (redraw.py); None: the preset's
    read_utility: bool = True         # E_ut.features(x) as an input (amortized.py: the findings to keep)
    read_identity: bool = True        # E_id(x) as an input (amortized.py: the identity to move away from)
    lesion_grid: int = 8              # E_ut's lesion map averaged over this grid as an input, where E_ut segments
    limit: int | None = None          # first N training images (tests)
    seed: int = 0


class Linker(nn.Module):
    """The training-time adversary: a small residual CNN embedding images so that an output matches its source."""

    def __init__(self, channels: int, dim: int = 128, width: int = 32):
        super().__init__()

        def block(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1), nn.GroupNorm(8, c_out), nn.SiLU(),
                                 nn.Conv2d(c_out, c_out, 3, 1, 1), nn.GroupNorm(8, c_out), nn.SiLU())

        self.trunk = nn.Sequential(block(channels, width), block(width, 2 * width), block(2 * width, 4 * width),
                                   block(4 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.trunk(x * 2 - 1)), dim=1)


def _frozen(*nets) -> None:
    for net in nets:
        net.eval().requires_grad_(False)


@torch.no_grad()
def _prepare(engine, images: torch.Tensor, batch: int, device,
             lesion: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Codes E(x) and the unseeded reference features of every image (on ``device``), with the network's inputs
    E_ut.features(x) under "e_ut" (whatever the utility term's form) and, with ``lesion``, E_ut's lesion map under
    "e_ut_lesion"."""
    codes, refs = [], {}
    terms = [t for t in engine.objective.terms if not getattr(t, "seeded", False)]
    for s in range(0, len(images), batch):
        x = images[s:s + batch].to(device)
        codes.append(engine.model.encode(x))
        for t in terms:
            refs.setdefault(t.name, []).append(t.reference(x))
        feats, maps = utility_views(engine.e_ut, x, lesion)
        refs.setdefault("e_ut", []).append(feats)
        if lesion:
            refs.setdefault("e_ut_lesion", []).append(maps)
    return torch.cat(codes), {k: torch.cat(v) for k, v in refs.items()}


@torch.no_grad()
def _surrogate_pool(engine, prior, n: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """n surrogate codes, E_id of their images (under their own noise) and the record seeds they stand for."""
    g = torch.Generator().manual_seed(seed)
    seeds = torch.randint(0, 2**62, (n,), generator=g).tolist()
    codes = surrogate_codes(prior, seeds, device)
    salted = surrogate_seeds(seeds)
    emb = torch.cat([engine.e_id.embed(engine.model.render(codes[s:s + 64], noise_seeds(salted[s:s + 64])))
                     for s in range(0, n, 64)])
    return codes, emb, seeds


def _other_studies(patients: list) -> list[list[int]]:
    """For each image, the indices of its patient's other images (its own index when there is none, or when
    the data names no patients)."""
    by_patient: dict = {}
    for i, p in enumerate(patients):
        by_patient.setdefault(p, []).append(i)
    return [[j for j in by_patient[p] if j != i] or [i] if p is not None else [i] for i, p in enumerate(patients)]


def _pick(options: list[int], gen: torch.Generator) -> int:
    return options[int(torch.randint(0, len(options), (1,), generator=gen))]


def _uniform_ce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the linker's match distribution to the uniform one: minimal when no source stands out."""
    return -F.log_softmax(logits, dim=1).mean(1)


def train_anonymizer(preset: str, data: str | Path, checkpoints: str | Path = "checkpoints",
                     cfg: AmortizedConfig = AmortizedConfig(), device=None, progress: bool = True,
                     out: str | Path | None = None) -> Path:
    """Train the anonymizer of ``preset`` (weights under ``checkpoints``) on ``data``'s training split; saved
    beside the weights (or in ``out``). Returns the card's path."""
    from .. import networks
    from ..data import is_phantom_folder
    from ..data import open as open_data
    from ..machine import resolve_device
    from ..projection.prior import LatentPrior
    from ..runs import environment, log
    from .runner import load_engine

    device = resolve_device(device)
    torch.manual_seed(cfg.seed)
    # the per-image optimizer's objective from the network's start (the preset's re-drawn one unless told
    # otherwise) at the level that goes with it, surrogate pull on; without the MFM term and the second utility
    # network, which the shipped networks learned without (each one more network's forward and backward per step)
    preset_cfg = anonymize_config(preset, redraw=cfg.redraw)
    stage2 = override(preset_cfg, lambda_surrogate=preset_cfg.lambda_surrogate or 1.0, lambda_mdl=0.0, lambda_ut2=0.0)
    engine = load_engine(stage2, checkpoints, device)
    folder = networks.checkpoint_dir(preset, checkpoints)
    prior = LatentPrior.load(folder)
    model = engine.model
    engine.objective.identity.weight *= cfg.hinge_weight
    _frozen(model, *[v for t in engine.objective.terms for v in vars(t).values() if isinstance(v, nn.Module)])
    splits = is_phantom_folder(data)
    opened = lambda split: open_data(data, split=split if splits else None, size=model.img_resolution,  # noqa: E731
                                     channels=model.img_channels)
    train_ds = opened("train")
    n = len(train_ds) if cfg.limit is None else min(cfg.limit, len(train_ds))
    if n < cfg.batch_size:
        raise InputError(f"{data}: training the anonymizer needs at least {cfg.batch_size} training images, found {n}")
    t0 = time.time()
    if cfg.link_to not in ("source", "both"):
        raise ConfigError(f"link_to must be 'source' or 'both', got {cfg.link_to!r}")
    samples = [train_ds[i] for i in range(n)]
    x_train = torch.stack([sample["image"] for sample in samples])
    studies = _other_studies([sample.get("patient") for sample in samples])
    lesion_input = cfg.lesion_grid > 0 and getattr(engine.e_ut, "has_segmentation", False)
    codes, refs = _prepare(engine, x_train, 64, device, lesion_input)
    try:
        val = opened("val") if splits else None
    except ConfigError:  # a folder without a validation split: no held-out check
        val = None
    n_val = min(cfg.val_images, len(val)) if val is not None else 0
    x_val = torch.stack([val[i]["image"] for i in range(n_val)]) if n_val else None
    pool_w, pool_e, _ = _surrogate_pool(engine, prior, cfg.surrogates, cfg.seed, device)
    log(None, f"anonymizer: {n} training images, {cfg.surrogates} surrogates prepared in {time.time() - t0:.0f}s")

    e_ut, lesion = refs.pop("e_ut"), refs.pop("e_ut_lesion", None)
    net = Anonymizer(model.w_dim, cfg.hidden, cfg.depth, id_dim=refs["id"].shape[1] if cfg.read_identity else 0,
                     redraw=stage2.redraw,
                     ut_dim=e_ut.shape[1] if cfg.read_utility else 0,
                     source="start" if stage2.redraw > 0 else "code",
                     lesion_grid=cfg.lesion_grid if lesion_input else 0).to(device)
    net.set_statistics(codes)
    linker = Linker(model.img_channels).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    steps_per_epoch = n // cfg.batch_size
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps_per_epoch))
    opt_link = torch.optim.Adam(linker.parameters(), lr=cfg.linker_lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    levels = torch.tensor(sorted(PRIVACY_LEVELS.values()))
    default = torch.tensor(preset_cfg.margin)
    history, snapshots = [], []
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        sums = {"loss": 0.0, "private": 0.0, "ut": 0.0, "link_acc": 0.0}
        batches = 0
        for s in range(0, n - cfg.batch_size + 1, cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            b = len(idx)
            j = torch.randint(0, cfg.surrogates, (b,), generator=gen)
            m = torch.where(torch.rand(b, generator=gen) < cfg.default_share, default,
                            levels[torch.randint(0, len(levels), (b,), generator=gen)])
            m = (m + cfg.margin_jitter * (2 * torch.rand(b, generator=gen) - 1)).to(device)
            seeds = torch.randint(0, 2**62, (b,), generator=gen).tolist()
            batch_refs = {k: v[idx.to(v.device)] for k, v in refs.items()}
            batch_refs["sur"] = pool_e[j.to(pool_e.device)]  # the surrogate term is always on here (stage2)
            w_a = anonymize_codes(net, codes[idx.to(codes.device)], pool_w[j.to(pool_w.device)], m, batch_refs["id"],
                                  engine.split, prior, e_ut[idx.to(e_ut.device)],
                                  None if lesion is None else lesion[idx.to(lesion.device)])
            x_a = model.render(w_a, noise_seeds(seeds))
            target = m - stage2.hinge_slack - cfg.extra_slack
            total, parts = engine.objective.evaluate(x_a, batch_refs, margin=target)
            loss = total.mean()
            if cfg.band is not None:
                below = (target - cfg.band - parts["cos_id"]).clamp_min(0.0)
                loss = loss + engine.objective.identity.weight * below.mean()
            if cfg.lambda_adv > 0:
                # the images an output must not be matched to: its source, and another study of its patient
                targets = [x_train[idx]]
                if cfg.link_to == "both":
                    targets.append(x_train[[_pick(studies[i], gen) for i in idx.tolist()]])
                targets = [t.to(device) for t in targets]
                # the linker learns on detached outputs; the anonymizer is then scored by the updated linker
                linker.requires_grad_(True)
                e_a = linker(x_a.detach())
                link_loss = sum(F.cross_entropy(e_a @ linker(t).T / cfg.temperature, torch.arange(b, device=device))
                                for t in targets)
                opt_link.zero_grad(set_to_none=True)
                link_loss.backward()
                opt_link.step()
                linker.requires_grad_(False)
                e_a = linker(x_a)
                for name, t in zip(("link_acc", "link_acc_patient"), targets):
                    with torch.no_grad():
                        e_r = linker(t)
                    logits = e_a @ e_r.T / cfg.temperature
                    loss = loss + cfg.lambda_adv / len(targets) * _uniform_ce(logits).mean()
                    hits = float((logits.argmax(1) == torch.arange(b, device=device)).float().mean())
                    sums[name] = sums.get(name, 0.0) + hits
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_norm)
            opt.step()
            schedule.step()
            sums["loss"] += float(loss.detach())
            sums["private"] += float((parts["cos_id"] <= m - stage2.hinge_slack).float().mean())
            sums["ut"] += float(parts.get("ut", torch.zeros(1)).detach().mean())
            batches += 1
        row = {"epoch": epoch + 1, **{k: round(v / max(batches, 1), 4) for k, v in sums.items()},
               "seconds": round(time.time() - t0, 1)}
        if x_val is not None:
            row.update(_validate(engine, net, prior, x_val, stage2, device))
        history.append(row)
        if progress:
            log(None, "anonymizer " + " ".join(f"{k}={v}" for k, v in row.items()))
        snapshots.append(copy.deepcopy(net.state_dict()))
    kept = _kept_epoch(history, cfg.private_tolerance)
    net.load_state_dict(snapshots[kept - 1])
    env = environment()
    meta = {"preset": preset, "fitted_to": fitted_to(folder), "latent_prior_sha256": prior.sha256,
            "latent_split_sha256": None if engine.split is None else engine.split.sha256,
            "config": dataclasses.asdict(cfg), "history": history, "kept_epoch": kept,
            "data": {"root": str(data), "split": "train" if splits else None, "images": n},
            "training_seconds": round(time.time() - t0, 1), "command": "gmia " + " ".join(env["argv"][1:]),
            "environment": env}
    return save_module(net.cpu(), {"w_dim": model.w_dim, "hidden": cfg.hidden, "depth": cfg.depth,
                                   "id_dim": net.id_dim, "ut_dim": net.ut_dim, "redraw": net.redraw,
                                   "source": net.source, "lesion_grid": net.lesion_grid},
                       out or folder, ANONYMIZER, meta=meta, dtype=torch.float16)


def _kept_epoch(history: list[dict], tolerance: float) -> int:
    """The epoch (1-based) whose weights are saved: among the epochs whose held-out images are private within
    ``tolerance`` of the most private one, the best utility (the gate and the optimizer take the few files the
    network leaves above the margin; "most private, then best utility" would have kept epoch 5 of 10 on
    phantom-face64, at 1.68× the reconstruction's utility distance against 1.44× at epoch 9). Without a held-out
    check, the last epoch."""
    if not history or "val_private" not in history[0]:
        return len(history)
    top = max(row["val_private"] for row in history)
    near = [row for row in history if row["val_private"] >= top - tolerance]
    return min(near, key=lambda row: (row.get("val_ut_ratio", 0.0), -row["epoch"]))["epoch"]


@torch.no_grad()
def _validate(engine, net, prior, x: torch.Tensor, stage2, device) -> dict:
    """Held-out images at the preset's margin: private fraction (rendered, fp32, before the file round trip)
    and utility distance relative to the plain reconstruction's."""
    seeds = list(range(1, len(x) + 1))
    x = x.to(device)
    w = engine.model.encode(x)
    refs = engine.objective.references(x, seeds)
    feats, lesion = utility_views(engine.e_ut, x, reads_lesion(net))
    w_a = anonymize_codes(net, w, surrogate_codes(prior, seeds, device), stage2.margin, refs["id"], engine.split, prior,
                          feats, lesion)
    _, anon = engine.objective.evaluate(engine.model.render(w_a, noise_seeds(seeds)), refs, target_margin(stage2))
    _, rec = engine.objective.evaluate(engine.model.render(w, noise_seeds(seeds)), refs, target_margin(stage2))
    out = {"val_private": round(float((anon["cos_id"] <= stage2.margin).float().mean()), 4),
           "val_cos_id": round(float(anon["cos_id"].mean()), 4)}
    if "ut" in anon:
        out["val_ut_ratio"] = round(float(anon["ut"].mean() / rec["ut"].mean().clamp_min(1e-9)), 3)
    if "sur" in anon:
        out["val_sur"] = round(float(anon["sur"].mean()), 4)
    if not math.isfinite(out["val_cos_id"]):
        raise RuntimeError("anonymizer training diverged (non-finite identity cosine on held-out images)")
    return out
