"""Benchmark the StyleGAN2-ADA synthesis network: ms/image, forward and forward+backward, fused vs non-fused.

    python experiments/bench_generator.py                       # default table (CPU: a few minutes)
    python experiments/bench_generator.py --configs cxr64-compact --batches 1 16 --iters 3
    python experiments/bench_generator.py --device cuda --autocast bf16
    python experiments/bench_generator.py --threads 1 --clock cpu      # on a shared, busy CPU

Forward = ``synthesis(ws)`` with const noise; forward+backward adds the gradient with respect to ws only
(weights frozen), which is what latent optimisation (stage 2) pays per step. The configs are the candidates for
the presets; edit CONFIGS to try others.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from third_party.stylegan2_ada import SynthesisNetwork  # noqa: E402

# name -> SynthesisNetwork kwargs
CONFIGS = {
    "cxr64-auto": dict(img_resolution=64, img_channels=1, channel_base=16384, channel_max=512),
    "cxr64-compact": dict(img_resolution=64, img_channels=1, channel_base=4096, channel_max=256),
    "face64-compact": dict(img_resolution=64, img_channels=3, channel_base=4096, channel_max=256),
    # what the phantom presets ship (gmia/projection/config.py): channels 128,128,128,64,32 at 4..64 px
    "phantom64-preset": dict(img_resolution=64, img_channels=1, channel_base=2048, channel_max=128),
    "gmia256": dict(img_resolution=256, img_channels=1, channel_base=16384, channel_max=512, conv_clamp=256),
}
DEFAULT_CONFIGS = ["phantom64-preset", "cxr64-compact", "cxr64-auto", "gmia256"]


def time_cell(net, batch, fused, backward, device, autocast, iters, budget_s, clock=time.perf_counter):
    """Best (minimum) seconds per call over up to ``iters`` timed runs after one warm-up, within ``budget_s``.

    The minimum, not the mean: on a shared machine, other processes only ever add time.
    """
    gen = torch.Generator().manual_seed(0)
    ws = torch.randn(batch, net.num_ws, net.w_dim, generator=gen).to(device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    def run():
        x = ws.clone().requires_grad_(backward)
        with torch.set_grad_enabled(backward), ctx:
            img = net(x, noise_mode="const", fused_modconv=fused)
        if backward:
            img.float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up (allocator, oneDNN/cuDNN algorithm choice)
    times, start = [], time.perf_counter()
    while len(times) < iters and (not times or time.perf_counter() - start < budget_s):
        t0 = clock()
        run()
        times.append(clock() - t0)
    return min(times), len(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=sorted(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--iters", type=int, default=3, help="timed runs per cell (the best is reported)")
    parser.add_argument("--budget", type=float, default=20.0, help="stop timing a cell after this many seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--autocast", choices=["none", "bf16"], default="none")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time; with --threads 1 it is robust to other jobs on a shared CPU")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu measures CPU work; use wall time on a GPU")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    print(f"# torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"threads {torch.get_num_threads()}, autocast {args.autocast}, noise const, grad w.r.t. ws only, "
          f"{args.clock} clock, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; best of {args.iters} runs")
    header = f"{'config':<15} {'params':>7} {'batch':>5} {'path':<9} {'fwd ms/img':>11} {'fwd+bwd ms/img':>15}"
    print(header)
    print("-" * len(header))
    for name in args.configs:
        torch.manual_seed(0)
        net = SynthesisNetwork(w_dim=512, **CONFIGS[name]).to(device).eval().requires_grad_(False)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        for batch in args.batches:
            for fused in (False, True):
                cells = []
                for backward in (False, True):
                    sec, n = time_cell(net, batch, fused, backward, device, args.autocast == "bf16",
                                       args.iters, args.budget, clock)
                    cells.append(f"{1000 * sec / batch:.1f}" + ("" if n == args.iters else f" (n={n})"))
                path = "fused" if fused else "non-fused"
                print(f"{name:<15} {params:>6.1f}M {batch:>5} {path:<9} {cells[0]:>11} {cells[1]:>15}", flush=True)


if __name__ == "__main__":
    main()
