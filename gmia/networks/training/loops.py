"""The training loop shared by E_id, E_ut, the MFM and the attacker.

    >>> result = train(get_train_config("phantom-cxr64", "identity"), data="data/phantom-cxr64",
    ...                out="checkpoints/phantom-cxr64")
    >>> result.metrics["verification_auc"]

Layout of ``out`` (the preset's checkpoint folder):

    <role>.safetensors + <role>.json     the final network; the card's meta holds the command, seeds, data,
                                         metrics on the held-out *test* patients, training time and hardware
    <role>-run/config.json, log.txt, stats.jsonl    the run record (one stats line per epoch, val metrics)
    <role>-run/snapshot.pt               resume state, removed when the run completes

Resuming is rerunning the same command; rerunning a completed run returns its card's metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ... import runs
from ...checkpoints import read_card, save_module
from ...errors import ConfigError
from ...fileio import jsonable
from ...machine import resolve_device, threads
from .config import TrainConfig
from .data import PhantomData, load_phantom_data
from .tasks import make_task

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    role: str
    checkpoint: Path                 # the card <out>/<role>.json
    metrics: dict                    # on the test patients
    seconds: float
    resumed_complete: bool = False   # True when the run had already finished and nothing was trained
    network: torch.nn.Module | None = None  # the trained network (eval mode); None when nothing was trained

    def summary(self) -> str:
        keys = [k for k in ("verification_auc", "eer", "rank1", "macro_auroc", "dice", "id_probe_auc",
                            "finding_probe_macro_auroc", "recon_psnr") if k in self.metrics]
        shown = ", ".join(f"{k}={self.metrics[k]:.4f}" for k in keys if self.metrics[k] is not None)
        return f"{self.role}: {shown} (test patients) -> {self.checkpoint}"


_MACHINE = ("device", "threads")  # config fields that may change between a run and its resume


def _lr_at(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train(cfg: TrainConfig, data, out, progress: bool = True) -> TrainResult:
    """Train ``cfg.role`` on ``data`` (a phantom folder, or a ``PhantomData`` with train/val/test splits in memory or
    memory-mapped, e.g. from ``gmia.fit``); write the checkpoint and run record under ``out``."""
    with threads(cfg.threads):
        return _train(cfg, data, out, progress)


def _train(cfg: TrainConfig, data, out, progress: bool) -> TrainResult:
    # ---- set up
    out = Path(out)
    run_dir = out / f"{cfg.role}-run"
    config_record = dataclasses.asdict(cfg)
    same_run = {k: v for k, v in config_record.items() if k not in _MACHINE}  # what must match to resume
    card_path = out / f"{cfg.role}.json"
    if card_path.is_file():
        card = read_card(out, cfg.role)
        done = {k: v for k, v in card.get("meta", {}).get("config", {}).items() if k not in _MACHINE}
        if done == json.loads(json.dumps(same_run)):
            runs.log(None, f"{card_path} is already trained with this config; delete it to retrain")
            return TrainResult(cfg.role, card_path, card["meta"].get("metrics", {}), 0.0, resumed_complete=True)
        raise ConfigError(f"{card_path} already holds a {cfg.role} network trained with another config; "
                          "choose another --out or delete that checkpoint first")
    device = resolve_device(cfg.device)
    snapshot = run_dir / "snapshot.pt"
    state = torch.load(snapshot, map_location=device, weights_only=True) if snapshot.is_file() else None
    if state is not None and state.get("config") != json.dumps(same_run, sort_keys=True):
        raise ConfigError(f"{snapshot} belongs to a run with another config; delete {run_dir} or use another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.write_config(run_dir, cfg, data=str(data.root if isinstance(data, PhantomData) else data), out=str(out))
    stats = runs.StatsWriter(run_dir)
    torch.manual_seed(cfg.seed)

    # ---- data
    phantoms = data if isinstance(data, PhantomData) else load_phantom_data(data, cfg.preset)
    train_split, val_split, test_split = (phantoms.splits["train"], phantoms.splits.get("val"),
                                          phantoms.splits["test"])
    runs.log(run_dir, f"[{cfg.role}] data {phantoms.root}: train {len(train_split)} images / "
                      f"{len(train_split.patients)} patients, val {len(val_split) if val_split else 0}, "
                      f"test {len(test_split)}; device {device}")

    # ---- networks
    task = make_task(cfg, phantoms)
    modules = {k: m.to(device) for k, m in task.modules.items()}
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_params = sum(p.numel() for p in task.net.parameters())
    runs.log(run_dir, f"[{cfg.role}] {type(task.net).__name__}: {n_params / 1e6:.2f} M parameters")

    # ---- resume
    start_epoch, elapsed = 0, 0.0
    if state is not None:
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k])
        opt.load_state_dict(state["opt"])
        start_epoch, elapsed = int(state["epoch"]), float(state["elapsed"])
        runs.log(run_dir, f"[{cfg.role}] resumed after epoch {start_epoch}")

    # ---- loop
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    val = {}
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # augmentation draws: same on resume
        order = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(cfg.seed + 7 * epoch))
        for m in modules.values():
            m.train()
        sums: dict[str, float] = {}
        bar = tqdm(range(steps_per_epoch), desc=f"{cfg.role} {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False)
        for i in bar:
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, step, total, steps_per_epoch)
            task.set_progress(step / total)
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            loss, logs = task.loss(train_split.batch(idx, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
        for m in modules.values():
            m.eval()
        val = task.evaluate(val_split, train=train_split) if val_split is not None else {}
        elapsed += time.time() - t0
        train_logs = {f"train/{k}": v / steps_per_epoch for k, v in sums.items()}
        stats.write(epoch=epoch + 1, kimg=(epoch + 1) * len(train_split) / 1000, seconds=round(elapsed, 1),
                    lr=opt.param_groups[0]["lr"], **train_logs, **{f"val/{k}": v for k, v in val.items()})
        shown = ", ".join(f"{k}={v:.4f}" for k, v in {**train_logs, **val}.items()
                          if isinstance(v, float) and "/" not in k.removeprefix("train/"))
        runs.log(run_dir, f"[{cfg.role}] epoch {epoch + 1}/{cfg.epochs} ({elapsed:.0f} s): {shown}")
        tmp = snapshot.with_name("snapshot.pt.tmp")
        torch.save({"epoch": epoch + 1, "elapsed": elapsed, "config": json.dumps(same_run, sort_keys=True),
                    "modules": {k: m.state_dict() for k, m in modules.items()}, "opt": opt.state_dict()}, tmp)
        tmp.replace(snapshot)

    # ---- final: metrics on the held-out test patients, checkpoint with its card
    for m in modules.values():
        m.eval()
    test = jsonable(task.evaluate(test_split, train=train_split))
    env = runs.environment()
    meta = {
        "role": cfg.role, "preset": cfg.preset, "command": " ".join(env["argv"]), "seed": cfg.seed,
        "data": {"root": str(phantoms.root), "seed": phantoms.seed, "domain": phantoms.domain,
                 "findings": list(phantoms.findings), "train_patients": len(train_split.patients),
                 "test_patients": len(test_split.patients), "card": phantoms.card},
        "metrics": test, "metrics_split": "test", "val_metrics": jsonable(val),
        "train_seconds": round(elapsed, 3), "epochs": cfg.epochs, "hardware": env["device"],
        "versions": {k: env[k] for k in ("gmia", "torch", "python", "git_sha")},
        "config": json.loads(json.dumps(config_record)),
    }
    # fp16 storage halves the shipped files (all checkpoints together must stay small); loading casts back to
    # fp32, and the test metrics above were computed in fp32 (fp16 storage moves them by < 1e-3, measured).
    card = save_module(task.net, task.net_kwargs, out, cfg.role, meta=meta, dtype=torch.float16)
    stats.write(final=True, **{f"test/{k}": v for k, v in test.items()})
    runs.log(run_dir, f"[{cfg.role}] test: " + ", ".join(f"{k}={v:.4f}" for k, v in test.items()
                                                       if isinstance(v, float)))
    snapshot.unlink(missing_ok=True)
    return TrainResult(cfg.role, card, test, elapsed, network=task.net)
