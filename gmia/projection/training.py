"""Stage-1 training: E and G co-trained against D (GMIA "co-training"), StyleGAN2-ADA recipe (spec §7).

    result = train_aegan(aegan_config("phantom-cxr64"), data.open("data/phantom-cxr64", split="train", size=64, channels=1), "runs/x")

One iteration (``training_step``), in the official phase order, each phase with its own optimizer step:
  Gmain  E + G:  λ_gan·softplus(-D(G(E(x)))) + λ_mse·MSE + λ_perc·perceptual     (every step)
  Greg   E + G:  path length on ws = E(x), weight·interval                      (every pl_interval, if on)
  Dmain  D:      softplus(D(fake)) + softplus(-D(x)); fake = the Gmain reconstruction (detached, reused
                 to save one E + G forward per step)                            (every step)
  Dreg   D:      R1 γ/2·|∇D(x)|², ·interval                                     (every r1_interval)
then the EMA of E and G. With λ_gan = 0 the step is a plain autoencoder step: D is neither run nor trained (the
fidelity fine-tune of the phantom presets, ``--init-from`` a co-trained run, half the cost of a co-training step).
Lazy phases scale Adam's lr and β by interval/(interval+1). x is the augmented real batch (E reconstructs what it
sees). The encoder fine-tune (``train_generator=False``, λ_gan = 0) trains E alone against a frozen G, and
``synthetic_fraction`` replaces the tail of x by G(w), w from the init checkpoint's latent prior: images no
training patient owns, so E learns to invert G instead of memorizing the patients (``synthetic_batch``).

Run folder: config.json (before step 1), log.txt, stats.jsonl (one line per tick), grid-<kimg>.png
(real | G_ema(E_ema(x)) on fixed images), training-state-<kimg>.safetensors (everything needed to resume
exactly: weights, EMA, Adam states, RNG, counters; never a pickle), checkpoint/ (the export: ``aegan`` =
E_ema + G_ema, optionally ``discriminator``). Resuming is rerunning with ``resume=True``. Data order, augmentation
and noise come from seeded generators whose state is in the snapshot, so an interrupted and resumed run ends
with the same weights as an uninterrupted one. SIGINT stops after the current step and writes a snapshot.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import kornia
import torch
from tqdm import tqdm

from gmia.checkpoints import save_module
from gmia.data.datasets import ImageDataset
from gmia.errors import ConfigError
from gmia.runs import StatsWriter, environment, log, write_config

from .config import AeganConfig, config_dict
from .losses import (PerceptualLoss, ReconstructionLoss, build_perceptual, d_logistic_loss, g_nonsaturating_loss,
                     path_length_penalty, path_lengths, r1_penalty)
from .model import AEGAN, build_discriminator
from .prior import PRIOR_FILE, LatentPrior
from .project import reconstruction_metrics, save_grid
from .snapshot import find_snapshot, init_weights, load_snapshot, save_snapshot
from .runtime import ImageSource, RankContext, StopFlag

__all__ = ["Networks", "GPasses", "DPasses", "TrainResult", "augment", "synthetic_batch", "train_aegan", "training_step"]


@dataclass
class Networks:
    """What one training step touches. ``pl_mean`` and ``gen`` (all training randomness) are saved too."""

    G: AEGAN                    # E + G being trained
    G_ema: AEGAN                # their moving average (the exported model)
    D: torch.nn.Module
    opt_G: torch.optim.Optimizer  # one Adam for E and G together
    opt_D: torch.optim.Optimizer
    gen: torch.Generator        # augmentation, synthesis noise, path-length noise
    pl_mean: torch.Tensor       # running mean of the path length ()
    g_passes: torch.nn.Module | None = None  # GPasses(G), under DistributedDataParallel with several processes
    d_passes: torch.nn.Module | None = None  # DPasses(D), likewise (``parallelize``)

    def parallelize(self, ctx: RankContext, train_generator: bool = True) -> None:
        """Route the step's forward passes through DistributedDataParallel (one process: plain modules). DDP
        records which parameters train when it wraps them, so the frozen-generator setting is applied first."""
        self.G.synthesis.requires_grad_(train_generator)
        self.g_passes = ctx.parallel(GPasses(self.G))
        self.d_passes = ctx.parallel(DPasses(self.D))


class GPasses(torch.nn.Module):
    """The forward passes of E and G in a training step, behind one ``forward`` so that DistributedDataParallel
    sees them: it averages the gradients of what ran through it over the processes, during ``backward``.

    DDP waits for a gradient of every parameter it wraps. The path-length penalty does not reach the biases
    that only shift the image, so its output carries ``0 × Σ image``: the same value, a zero gradient for all."""

    def __init__(self, G: AEGAN):
        super().__init__()
        self.G = G

    def forward(self, x: torch.Tensor, gen: torch.Generator, path_length: bool = False):
        ws = self.G.broadcast(self.G.encode(x))
        y = self.G.synthesis(ws, noise_mode="random", noise_generator=gen)  # networks' range
        if not path_length:
            return y
        return path_lengths(y, ws, gen) + 0 * y.flatten(1).sum(1)


class DPasses(torch.nn.Module):
    """D's forward passes of a training step (see ``GPasses``): the logistic loss's two batches, or the R1
    penalty on the reals (plus ``0 × logits``, so that every parameter gets a gradient)."""

    def __init__(self, D: torch.nn.Module):
        super().__init__()
        self.D = D

    def forward(self, real: torch.Tensor, fake: torch.Tensor | None = None, r1: bool = False):
        if not r1:
            return self.D(real), self.D(fake)
        real = real.detach().requires_grad_(True)
        logits = self.D(real)
        return r1_penalty(logits, real) + 0 * logits.flatten(1).sum(1)


@dataclass
class TrainResult:
    run_dir: Path
    kimg: float                 # images seen / 1000
    seconds: float              # training time, every resume included
    interrupted: bool           # stopped by SIGINT (a snapshot was written; resume to continue)
    checkpoint_dir: Path | None  # the export (None when interrupted)
    stats: dict                 # the last tick's stats


def _lazy(cfg: AeganConfig, interval: int, enabled: bool) -> dict:
    """Adam kwargs adjusted for a lazily regularised network (StyleGAN2: lr·r, β^r, r = k/(k+1))."""
    r = interval / (interval + 1) if enabled and interval > 0 else 1.0
    return dict(lr=cfg.lr * r, betas=(cfg.betas[0] ** r, cfg.betas[1] ** r), eps=cfg.eps)


def build_networks(cfg: AeganConfig, device: torch.device, rank: int = 0) -> tuple[Networks, dict]:
    """Fresh networks seeded by ``cfg.seed`` (identical on every rank); returns (networks, D kwargs)."""
    torch.manual_seed(cfg.seed)
    G = AEGAN(**cfg.model_kwargs).to(device).train()
    D, d_kwargs = build_discriminator({**cfg.model_kwargs, **cfg.d_capacity}, cfg.mbstd_group)
    D = D.to(device).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), **_lazy(cfg, cfg.pl_interval, cfg.pl_weight > 0))
    opt_D = torch.optim.Adam(D.parameters(), **_lazy(cfg, cfg.r1_interval, cfg.r1_gamma > 0))
    gen = torch.Generator(device).manual_seed(cfg.seed * 1000 + rank + 1)
    return Networks(G, G_ema, D, opt_G, opt_D, gen, torch.zeros([], device=device)), d_kwargs


def augment(x: torch.Tensor, cfg: AeganConfig, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip (p 0.5) and rotation (±cfg.aug_rotate degrees, reflection padding), per image."""
    n = x.shape[0]
    if cfg.aug_hflip:
        flip = (torch.rand(n, generator=gen, device=gen.device) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], kornia.geometry.transform.hflip(x), x)
    if cfg.aug_rotate:
        angle = ((torch.rand(n, generator=gen, device=gen.device) * 2 - 1) * cfg.aug_rotate).to(x.device)
        x = kornia.geometry.transform.rotate(x, angle, padding_mode="reflection")
    return x


def synthetic_batch(x: torch.Tensor, nets: Networks, cfg: AeganConfig, prior: LatentPrior | None) -> torch.Tensor:
    """Replace the last ``synthetic_fraction`` of the (augmented) real batch by G_ema(w), w from ``prior`` and
    random synthesis noise: images of the generator's own range that belong to no training patient."""
    n = int(round(x.shape[0] * cfg.synthetic_fraction))
    if prior is None or n == 0:
        return x
    z = torch.randn(n, prior.a.shape[1], generator=nets.gen, device=nets.gen.device, dtype=torch.float64)
    with torch.no_grad():
        fake = nets.G_ema.synthesize(prior.sample_z(z.cpu()).to(x.device), noise_mode="random",
                                     noise_generator=nets.gen).clamp(0, 1)
    return torch.cat([x[:x.shape[0] - n], fake])


def _apply(opt: torch.optim.Optimizer, module: torch.nn.Module) -> None:
    """Clean non-finite gradient values (as StyleGAN2-ADA; DDP has averaged them over the processes), step."""
    params = [p for p in module.parameters() if p.grad is not None]
    for p in params:
        torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
    opt.step()
    opt.zero_grad(set_to_none=True)


def training_step(nets: Networks, x: torch.Tensor, step: int, cfg: AeganConfig, recon_loss: ReconstructionLoss,
                  ctx: RankContext) -> dict[str, float]:
    """One iteration on the (augmented) real batch x (N, C, R, R) in [0, 1]; returns the batch-mean losses."""
    G, D, gen = nets.G, nets.D, nets.gen
    if nets.g_passes is None:
        nets.parallelize(ctx, cfg.train_generator)
    stats = {}
    # Gmain: reconstruction + non-saturating GAN term, E and G together (E alone with a frozen generator)
    G.requires_grad_(True)
    G.synthesis.requires_grad_(cfg.train_generator)
    D.requires_grad_(False)
    y = nets.g_passes(x, gen)  # networks' range
    x_hat = G.from_internal(y)
    rec, terms = recon_loss(x_hat, x)
    loss = rec
    if cfg.lambda_gan:
        gan = g_nonsaturating_loss(D(y))
        loss = loss + cfg.lambda_gan * gan
        stats["G/gan"] = gan.mean().item()
    loss.mean().backward()
    _apply(nets.opt_G, G)
    stats.update({f"G/{k}": v.mean().item() for k, v in terms.items()})
    stats["G/loss"] = loss.mean().item()
    # Greg: path-length regularisation w.r.t. the encoder's ws
    if cfg.pl_weight > 0 and step % cfg.pl_interval == 0:
        n = max(x.shape[0] // cfg.pl_batch_shrink, 1)
        lengths = nets.g_passes(x[:n], gen, path_length=True)
        nets.pl_mean.copy_(nets.pl_mean.lerp(ctx.mean(lengths.mean().detach()), cfg.pl_decay))
        penalty = path_length_penalty(lengths, nets.pl_mean)
        (penalty.mean() * cfg.pl_weight * cfg.pl_interval).backward()
        _apply(nets.opt_G, G)
        stats["G/pl_penalty"] = penalty.mean().item()
    if not cfg.lambda_gan:  # a plain autoencoder step (fidelity fine-tuning): nothing reads D, so skip its phases
        return stats
    # Dmain: logistic loss on the real batch and the (detached) reconstructions
    G.requires_grad_(False)
    D.requires_grad_(True)
    real = G.to_internal(x).detach()
    real_logits, fake_logits = nets.d_passes(real, y.detach())
    d_loss = d_logistic_loss(real_logits, fake_logits)
    d_loss.mean().backward()
    _apply(nets.opt_D, D)
    stats.update({"D/loss": d_loss.mean().item(), "D/real": real_logits.mean().item(),
                  "D/fake": fake_logits.mean().item()})
    # Dreg: lazy R1 on the reals
    if cfg.r1_gamma > 0 and cfg.r1_interval > 0 and step % cfg.r1_interval == 0:
        penalty = nets.d_passes(real, r1=True)
        (penalty.mean() * (cfg.r1_gamma / 2) * cfg.r1_interval).backward()
        _apply(nets.opt_D, D)
        stats["D/r1"] = penalty.mean().item()
    G.requires_grad_(True)
    return stats


@torch.no_grad()
def update_ema(nets: Networks, cfg: AeganConfig, nimg: int) -> None:
    """p_ema <- lerp(p, p_ema, β), β = 0.5^(batch / half-life in images); buffers are copied."""
    ema_nimg = cfg.ema_kimg * 1000
    if cfg.ema_rampup is not None:
        ema_nimg = min(ema_nimg, nimg * cfg.ema_rampup)
    beta = 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))
    for p_ema, p in zip(nets.G_ema.parameters(), nets.G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(nets.G_ema.buffers(), nets.G.buffers()):
        b_ema.copy_(b)


def _synthetic_prior(cfg: AeganConfig, run_dir: Path, resuming: bool) -> LatentPrior | None:
    """The latent prior synthetic samples come from: the run folder's copy when resuming (the init folder may
    have been refitted since; an exact resume needs the prior the run started with), else the one next to the
    ``init_from`` checkpoint."""
    if not cfg.synthetic_fraction:
        return None
    if resuming and (run_dir / PRIOR_FILE).is_file():
        return LatentPrior.load(run_dir)
    if not cfg.init_from or not (Path(cfg.init_from) / PRIOR_FILE).is_file():
        raise ConfigError("synthetic_fraction > 0 samples w from the latent prior of the --init-from checkpoint "
                          f"folder; got init_from={cfg.init_from!r}, which holds no {PRIOR_FILE}. Start from a "
                          "checkpoint folder fitted with `gmia fit-prior --checkpoint FOLDER`")
    return LatentPrior.load(cfg.init_from)


@torch.no_grad()
def _grid_fidelity(nets: Networks, grid_x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """G_ema(E_ema(x)) of the fixed grid images and its mean PSNR / SSIM."""
    recon = nets.G_ema.reconstruct(grid_x)
    return recon, {k: round(float(v.mean()), 5) for k, v in reconstruction_metrics(recon, grid_x).items()}


def _fmt_time(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


INIT_RECORD = "init-from.json"  # run folder: the card of the weights a fine-tune started from, read at its start


def _source_card(source: Path) -> dict:
    """The training record of the weights a fine-tune started from (their card's kimg, time, command), if any."""
    card = source / "aegan.json" if source.is_dir() else None
    if card is None or not card.is_file():
        return {}
    meta = json.loads(card.read_text()).get("meta", {})
    keep = ("command", "kimg", "training_seconds", "hardware", "init_from")
    return {k: meta[k] for k in keep if k in meta}


def _export(nets: Networks, d_kwargs: dict, cfg: AeganConfig, run_dir: Path, state: dict, data_info: dict,
            metrics: dict) -> Path:
    out = run_dir / "checkpoint"
    env = environment()
    meta = {"stage": "aegan", "preset": cfg.preset, "command": " ".join(env["argv"]), "kimg": state["nimg"] / 1000,
            "training_seconds": round(state["elapsed"], 1), "hardware": env["device"], "environment": env,
            "data": data_info, "metrics": {"train_grid": metrics}, "config": config_dict(cfg),
            "image_range": [0.0, 1.0]}
    if cfg.init_from:  # a fine-tune: its card also says where the weights came from and how they were made
        record = run_dir / INIT_RECORD
        source = json.loads(record.read_text()) if record.is_file() else _source_card(Path(cfg.init_from))
        meta["init_from"] = {"path": cfg.init_from, **source}
    dtype = torch.float16 if cfg.export_dtype == "float16" else None
    save_module(nets.G_ema, nets.G_ema.init_kwargs, out, "aegan", meta=meta, dtype=dtype)
    if cfg.export_discriminator:
        save_module(nets.D, d_kwargs, out, "discriminator", meta={**meta, "role": "discriminator"}, dtype=dtype)
    return out


def train_aegan(cfg: AeganConfig, dataset: ImageDataset, run_dir: str | Path, resume: bool = False,
                perceptual: PerceptualLoss | None = None, device: str | torch.device | None = None,
                progress: bool = True, data_info: dict | None = None) -> TrainResult:
    """Train E, G (and D) for ``cfg.kimg`` thousand images on ``dataset`` (samples' "image" (C, R, R) in [0, 1]).

    perceptual: a PerceptualLoss to use instead of ``build_perceptual(cfg.perceptual, cfg.preset, ...)``.
    resume: continue from the newest snapshot in ``run_dir`` (start fresh if there is none).
    """
    # ---- set up
    run_dir = Path(run_dir)
    ctx = RankContext.from_env(device)
    snapshot = find_snapshot(run_dir)
    if snapshot is not None and not resume:
        raise ConfigError(f"{run_dir} already holds a run ({snapshot.name}); pass --resume to continue it, or "
                          "choose a new --out")
    prior = _synthetic_prior(cfg, run_dir, snapshot is not None)  # before anything is written: a setup error
    if perceptual is None and cfg.lambda_perc:
        perceptual = build_perceptual(cfg.perceptual, cfg.preset, cfg.lpips_weights, ctx.device)
    recon_loss = ReconstructionLoss(cfg.lambda_mse, cfg.lambda_perc, perceptual, cfg.lambda_ssim).to(ctx.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    say = (lambda msg: log(run_dir, msg)) if ctx.is_main else (lambda msg: None)
    # ---- data
    source = ImageSource(dataset, cfg, ctx)
    data_info = {**(data_info or {}), "images": len(source), "fingerprint": source.fingerprint}
    grid_x = source.grid_images(cfg.grid_images)
    # ---- networks
    nets, d_kwargs = build_networks(cfg, ctx.device, ctx.rank)
    state = {"nimg": 0, "step": 0, "tick": 0, "elapsed": 0.0}
    # ---- resume
    if snapshot is not None:
        state = load_snapshot(snapshot, nets, cfg, source.fingerprint)
        say(f"resumed from {snapshot.name} at {state['nimg'] / 1000:.3f} kimg")
    else:
        start = init_weights(cfg.init_from, nets, cfg.fresh_encoder, cfg.grow_encoder) if cfg.init_from else "fresh weights"
        if ctx.is_main:
            checkpoints = {} if perceptual is None else {f"perceptual:{perceptual.name}": perceptual.sha256 or "n/a"}
            write_config(run_dir, config_dict(cfg), checkpoints=checkpoints, data=data_info, stage="aegan")
            # what the run takes from its source, copied now: that folder may be refitted or overwritten before
            # the export or a resume
            if cfg.init_from:
                (run_dir / INIT_RECORD).write_text(json.dumps(_source_card(Path(cfg.init_from)), indent=2))
            if prior is not None:
                prior.save(run_dir)
            say(f"training stage 1 (AE-GAN) on {len(source)} images, {cfg.kimg:g} kimg, batch {cfg.batch}, "
                f"latent {cfg.latent}, perceptual {perceptual.name if perceptual else 'none'}, {start} -> {run_dir}")
    stats_writer = StatsWriter(run_dir) if ctx.is_main else None
    total_nimg = int(round(cfg.kimg * 1000))
    tick_nimg = max(int(round(cfg.tick_kimg * 1000)), 1)
    sums, count, last_stats, metrics = {}, 0, {}, {}
    tick_start_time = time.time()
    bar = tqdm(total=total_nimg, initial=min(state["nimg"], total_nimg), unit="img", unit_scale=True,
               desc="aegan", disable=not (progress and ctx.is_main), dynamic_ncols=True)
    # ---- loop
    with StopFlag(say) as stop:
        while state["nimg"] < total_nimg:
            step_start = time.time()
            x = synthetic_batch(augment(source.batch(state["step"]), cfg, nets.gen), nets, cfg, prior)
            losses = training_step(nets, x, state["step"], cfg, recon_loss, ctx)
            update_ema(nets, cfg, state["nimg"])
            state["nimg"] += cfg.batch
            state["step"] += 1
            state["elapsed"] += time.time() - step_start
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            bar.update(cfg.batch)
            bar.set_postfix_str(f"kimg {state['nimg'] / 1000:.2f} mse {losses['G/mse']:.4f}"
                                + (f" D {losses['D/loss']:.3f}" if "D/loss" in losses else ""), refresh=False)
            done = state["nimg"] >= total_nimg
            interrupted = ctx.any(stop.requested)
            if not (done or interrupted or state["nimg"] >= (state["tick"] + 1) * tick_nimg):
                continue
            # per tick: status, grid, stats, snapshot
            if state["nimg"] >= (state["tick"] + 1) * tick_nimg or done:
                state["tick"] = state["nimg"] // tick_nimg
                tick_time = time.time() - tick_start_time
                tick_start_time = time.time()
                last_stats = {k: ctx.mean_float(v / count) for k, v in sums.items()}
                sums, count = {}, 0
                if ctx.is_main:  # fidelity of G_ema(E_ema(x)) on the fixed grid images, every tick (cheap)
                    recon, metrics = _grid_fidelity(nets, grid_x)
                    if state["tick"] % cfg.grid_ticks == 0 or done:
                        save_grid(grid_x, recon, run_dir / f"grid-{state['nimg'] / 1000:010.3f}.png")
                if ctx.is_main:
                    record = {"tick": state["tick"], "kimg": state["nimg"] / 1000, "sec_per_tick": round(tick_time, 2),
                              "sec_per_kimg": round(state["elapsed"] / max(state["nimg"], 1) * 1000, 2),
                              **{k: round(v, 6) for k, v in last_stats.items()},
                              **{f"grid/{k}": v for k, v in metrics.items()}}
                    stats_writer.write(**record)
                    say(f"tick {state['tick']:<5d} kimg {state['nimg'] / 1000:<9.3f} time {_fmt_time(state['elapsed']):<10s}"
                        f" sec/tick {tick_time:<7.1f} mse {last_stats.get('G/mse', float('nan')):.5f} "
                        + (f"D {last_stats['D/loss']:.3f} " if "D/loss" in last_stats else "")
                        + f"grid ssim {metrics.get('ssim', float('nan')):.4f}")
            if ctx.is_main and (done or interrupted or state["tick"] % cfg.snapshot_ticks == 0):
                save_snapshot(run_dir, nets, cfg, state, source.fingerprint, keep=cfg.keep_snapshots)
            if interrupted:
                break
    bar.close()
    if ctx.is_main and not metrics:  # no tick this time (resumed a finished run, or kimg 0): the summary still says
        metrics = _grid_fidelity(nets, grid_x)[1]
    interrupted = state["nimg"] < total_nimg
    checkpoint_dir = None
    if not interrupted and ctx.is_main:
        checkpoint_dir = _export(nets, d_kwargs, cfg, run_dir, state, data_info, metrics)
    ctx.barrier()
    verb = "interrupted" if interrupted else "done"
    tail = "snapshot written; rerun with --resume to continue" if interrupted else f"exported to {checkpoint_dir}"
    say(f"{verb}: {state['nimg'] / 1000:.3f} kimg in {_fmt_time(state['elapsed'])}, train-grid ssim "
        f"{metrics.get('ssim', float('nan')):.4f} psnr {metrics.get('psnr', float('nan')):.2f}; {tail}")
    return TrainResult(run_dir, state["nimg"] / 1000, state["elapsed"], interrupted, checkpoint_dir,
                       {**last_stats, **{f"grid/{k}": v for k, v in metrics.items()}})
