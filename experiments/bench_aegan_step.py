"""Milliseconds per training image of stage 1 (AE-GAN co-training) for the phantom presets, on this machine.

    python experiments/bench_aegan_step.py                       # phantom-cxr64 and phantom-face64
    python experiments/bench_aegan_step.py --threads 1 2 --steps 16 --preset phantom-cxr64

One timed step is a full ``training_step`` (Gmain, Greg when due, Dmain, Dreg when due) + augmentation + EMA, on
random images of the preset's format; ``--steps`` defaults to the R1 interval, so the mean includes exactly one
lazy R1 step (and the path-length steps, if the preset has them). The perceptual term is timed with an MFM of
the shipped architecture at random weights (timing only; it is never trained or used as a loss); pass
``--perceptual none`` to leave it out. Prints one line per (preset, threads) and the kimg per hour it implies.
"""

from __future__ import annotations

import argparse
import time

import torch

from gmia.machine import set_threads
from gmia.projection.config import aegan_config
from gmia.projection.losses import FeatureLoss, ReconstructionLoss
from gmia.projection.runtime import RankContext
from gmia.projection.training import augment, build_networks, training_step, update_ema


def _perceptual(kind: str, channels: int):
    if kind == "none":
        return None
    from gmia.networks.mfm import MFMNet

    torch.manual_seed(0)
    return FeatureLoss(MFMNet(in_channels=channels, resolution=64), name="mfm")


def bench(preset: str, threads: int, steps: int, warmup: int, batch: int | None, perceptual: str) -> dict:
    set_threads(threads)
    cfg = aegan_config(preset, batch=batch)
    nets, _ = build_networks(cfg, torch.device("cpu"))
    # the 64-px presets switch the term off with weight 0, which would drop it from the timing too
    loss = ReconstructionLoss(cfg.lambda_mse, cfg.lambda_perc or 1.0, _perceptual(perceptual, cfg.img_channels))
    ctx = RankContext()
    x = torch.rand(cfg.batch, cfg.img_channels, cfg.resolution, cfg.resolution)
    times = []
    for step in range(warmup + steps):
        # warm-up steps use indices that are not R1/PL steps, so the timed window holds exactly `steps` of the cycle
        s = step - warmup if step >= warmup else 1
        t = time.perf_counter()
        training_step(nets, augment(x, cfg, nets.gen), s, cfg, loss, ctx)
        update_ema(nets, cfg, 1000 * (step + 1))
        if step >= warmup:
            times.append(time.perf_counter() - t)
    ms = 1000 * sum(times) / (len(times) * cfg.batch)
    return {"preset": preset, "threads": threads, "batch": cfg.batch, "ms_per_img": ms,
            "kimg_per_hour": 3600 / ms, "min_step_s": min(times), "max_step_s": max(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", nargs="+", default=["phantom-cxr64", "phantom-face64"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, torch.get_num_threads()])
    ap.add_argument("--steps", type=int, default=16, help="timed steps (16 = one R1 cycle)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None, help="override the preset's batch")
    ap.add_argument("--perceptual", choices=["mfm", "none"], default="mfm")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available")
    for preset in args.preset:
        for threads in dict.fromkeys(args.threads):
            r = bench(preset, threads, args.steps, args.warmup, args.batch, args.perceptual)
            print(f"{r['preset']:<15s} threads {r['threads']}  batch {r['batch']:<3d} {r['ms_per_img']:7.1f} ms/img  "
                  f"= {r['kimg_per_hour']:5.1f} kimg/h   (step {r['min_step_s']:.2f}-{r['max_step_s']:.2f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
