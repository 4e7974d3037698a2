"""Stage-2 speed and outcome: the batched engine vs. a reference-style loop, on the same phantom test images.

    python experiments/bench_anonymize.py                                  # 64 images, batch 32, CPU, 1 thread
    python experiments/bench_anonymize.py --ref-images 8 --json bench.json # time the slow reference on fewer images
    python experiments/bench_anonymize.py --checkpoints runs/tiny --images 4 --ref-images 2 \
        --ref-steps 30 --max-steps 30 --batch-size 4                       # a smoke test

Both sides use the same networks (stage-1 G/E, E_id, E_ut of ``<checkpoints>/<preset>/``). The reference starts
at w_0 = E(x) (the published extraction); the engine at its own projection (E(x), refined when the config says
so; the refinement is timed as part of the engine).

* **engine**: ``LatentOptimizer`` with the preset's stage-2 config (per-row Adam, hinge slack, utility-aware
  stopping, fixed per-image noise), the batch refilled from the queue as rows finish, as the dataset runner
  does, but with no files: no privacy gate, no retries, no writing.
* **engine-fast**: the engine under the ``fast`` speed profile (``gmia anonymize --speed fast``): the reference's
  stopping rule (stop at the hinge: patience 0) and starting point (w_0 = E(x), no refinement), lr 0.1 and bf16
  autocast where the hardware has native bf16 (``--fast-precision fp32`` to compare without it).
* **amortized**: ``gmia anonymize --engine amortized``: E(x), the re-drawn start when the network was trained
  from it, one pass of the preset's anonymizer network (``gmia train anonymizer``) and G; an image whose 8-bit
  rendering is above the margin gets one first-order step along E_id's gradient (``nudge_codes``), and if still
  above goes to the per-image optimizer from there, with a gate retry's headroom, stopping at the hinge (as the
  runner does). E, E_ut, G and the nudge in bf16 where the hardware has it, as the engine runs by default
  (``--amortized-precision fp32`` to compare without it); E_id's checks in fp32. Measured only when the
  preset's checkpoint folder holds ``anonymizer.*``.
* **reference**: the published loop, one image at a time: ``torch.optim.Adam([w], lr=0.01, betas=(0, 0.99))``,
  loss = max(0, cos - m) + mean((E_ut(x_A) - E_ut(x_R))^2), fresh random noise every step, stop at the first
  step whose (pre-update) hinge is 0, at most ``--ref-steps`` steps; the final image is rendered with const noise.

Timed: reading the images, optimizing, rendering the final images, in the steady state: each side first runs
once, untimed, on its first batch (its first calls pick kernels for each batch shape and precision). Not timed:
the outcome, measured the same way for both on the final image quantized to 8 bits: the fraction of images with
cos(E_id(x_R), E_id(x_A)) <= m ("private"), the mean cosine, the mean ||E_ut(x_A) - E_ut(x_R)||_2, and the macro
AUROC of E_ut's finding logits on the anonymized images. Steps = generator evaluations per image. The speed-up only counts if the engine's
outcome is equal or better: private fraction >= the reference's and AUROC >= the reference's - 0.01.
Peak memory: the process's max RSS after each side (it never goes down) and, on CUDA, the peak allocation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import statistics
import time

import torch

from gmia import data
from gmia.anonymization import Item, LatentOptimizer, anonymize_config, load_engine, noise_seeds, record_seed
from gmia.anonymization.config import PRECISIONS, config_dict
from gmia.anonymization.losses import identity_cosine, utility_distance
from gmia.machine import set_threads
from gmia.metrics import macro_auroc
from gmia.projection.project import project_codes


def memory_mark(device: torch.device) -> dict:
    mark = {"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux
    if device.type == "cuda":
        mark["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return mark


def run_engine(engine, cfg, ds, n: int, device) -> tuple[dict, dict]:
    """index -> (final image (1, R, R) on CPU, steps). Rows leave when done and the queue refills the batch."""
    opt = LatentOptimizer(engine.model, engine.objective, cfg)
    queue, out = iter(range(n)), {}
    while True:
        items, images = [], []
        while opt.active + len(items) < cfg.batch_size:
            index = next(queue, None)
            if index is None:
                break
            sample = ds[index]
            items.append(Item(key=sample["key"], seed=record_seed(sample["key"], cfg.seed), payload=index))
            images.append(sample["image"])
        if items:
            x = torch.stack(images).to(device)
            seeds = [it.seed for it in items] if cfg.noise == "per-image" else None
            w0 = project_codes(engine.model, x, cfg.refine_steps, noise_seeds=seeds)  # as the runner does
            opt.add(items, w0, x)
        if opt.active == 0:
            break
        result = opt.step()
        finished = opt.pop_done(result.done)
        if finished:
            with torch.no_grad():
                x_a = engine.model.render(torch.stack([f.w for f in finished]),
                                          noise_seeds([f.item.seed for f in finished], cfg.noise)).cpu()
            for f, img in zip(finished, x_a):
                out[f.item.payload] = (img, f.steps)
    return {i: out[i][0] for i in out}, {i: out[i][1] for i in out}


def run_amortized(engine, cfg, ds, n: int, device) -> tuple[dict, dict]:
    """The amortized engine: E(x), one pass of the anonymizer network, G; an image whose 8-bit rendering is above
    the margin gets one first-order nudge, and if still above, goes to the per-image optimizer from there (as
    the runner's gate sends it). E, E_ut, G and the nudge at the config's precision (the runner's), E_id's checks
    in fp32. Steps: G evaluations."""
    from gmia.anonymization.amortized import (anonymize_codes, fallback_config, nudge_codes, reads_lesion,
                                              utility_views)
    from gmia.anonymization.config import bf16_autocast, target_margin, use_bf16
    from gmia.anonymization.surrogate import surrogate_codes

    bf16 = use_bf16(cfg.precision, device)

    def above(w, seeds, e_r):  # (rendering, whether its 8-bit rendering is above the margin)
        with bf16_autocast(device, bf16):
            x_a = engine.model.render(w, noise_seeds(seeds, cfg.noise)).float()
        return x_a, identity_cosine(engine.e_id.embed((x_a * 255).round() / 255), e_r) > cfg.margin

    images, steps, retry = {}, {}, []
    for start in range(0, n, cfg.batch_size):
        idx = list(range(start, min(start + cfg.batch_size, n)))
        samples = [ds[i] for i in idx]
        x = torch.stack([s["image"] for s in samples]).to(device)
        seeds = [record_seed(s["key"], cfg.seed) for s in samples]
        with torch.no_grad():
            e_r = engine.e_id.embed(x)
            w_t = surrogate_codes(engine.prior, seeds, device)
            with bf16_autocast(device, bf16):
                w = engine.model.encode(x).float()
                feats, lesion = (None if v is None else v.float()
                                 for v in utility_views(engine.e_ut, x, reads_lesion(engine.anonymizer)))
            w_a = anonymize_codes(engine.anonymizer, w, w_t, cfg.margin, e_r, engine.split, engine.prior, feats,
                                  lesion, cfg.correction)
            x_a, bad = above(w_a, seeds, e_r)
        rows = bad.nonzero().flatten()
        nudged = set(rows.tolist())
        if nudged:  # the runner's nudge for the refused rows (amortized.nudge_codes), then the gate again
            sub = [seeds[j] for j in rows.tolist()]
            with bf16_autocast(device, bf16):
                w_a[rows] = nudge_codes(engine.model, engine.e_id, w_a[rows], e_r[rows],
                                        noise_seeds(sub, cfg.noise), target_margin(cfg, 1))
            with torch.no_grad():
                x_a[rows], bad[rows] = above(w_a[rows], sub, e_r[rows])
        for j, i in enumerate(idx):
            images[i], steps[i] = x_a[j].cpu(), 3 if j in nudged else 1  # nudged: its pass, its step, its check
            if bad[j]:
                retry.append((i, seeds[j], w_a[j]))
    if retry:  # the runner's fallback optimizer, from the network's code, with a retry's headroom
        fallback = fallback_config(cfg)
        opt = LatentOptimizer(engine.model, engine.objective,
                              dataclasses.replace(fallback, hinge_slack=fallback.hinge_slack + fallback.retry_slack))
        x = torch.stack([ds[i]["image"] for i, _, _ in retry]).to(device)
        opt.add([Item(key=str(i), seed=s, payload=i) for i, s, _ in retry], torch.stack([w for _, _, w in retry]), x)
        while opt.active:
            for f in opt.pop_done(opt.step().done):
                with torch.no_grad():
                    images[f.item.payload] = engine.model.render(f.w[None], noise_seeds([f.item.seed], cfg.noise))[0].cpu()
                steps[f.item.payload] += f.steps
    return images, steps


def run_reference(engine, ds, n: int, margin: float, max_steps: int, device) -> tuple[dict, dict]:
    """The published per-image loop (see the module docstring)."""
    model, e_id, e_ut = engine.model, engine.e_id, engine.e_ut
    images, steps = {}, {}
    for index in range(n):
        x_r = ds[index]["image"][None].to(device)
        with torch.no_grad():
            w = model.encode(x_r).clone().requires_grad_(True)
            e_r, f_r = e_id.embed(x_r), e_ut.features(x_r)
        adam = torch.optim.Adam([w], lr=0.01, betas=(0.0, 0.99))
        for evaluations in range(1, max_steps + 1):  # evaluations of G(w): the last one may only check the hinge
            x_a = model.synthesize(w, noise_mode="random").clamp(0.0, 1.0)
            hinge = (identity_cosine(e_id.embed(x_a), e_r) - margin).clamp_min(0.0)
            if float(hinge.detach()) == 0.0:
                break
            loss = hinge.sum() + ((e_ut.features(x_a) - f_r) ** 2).mean()
            adam.zero_grad(set_to_none=True)
            loss.backward()
            adam.step()
        with torch.no_grad():
            images[index] = model.synthesize(w.detach(), noise_mode="const").clamp(0.0, 1.0)[0].cpu()
        steps[index] = evaluations
    return images, steps


@torch.no_grad()
def outcome(engine, ds, images: dict, steps: dict, margin: float, device, chunk: int = 64) -> dict:
    """Privacy and utility of the final images, quantized to 8 bits, against their sources."""
    order = sorted(images)
    cos, dist, logits = [], [], []
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        x_r = torch.stack([ds[i]["image"] for i in idx]).to(device)
        x_a = (torch.stack([images[i] for i in idx]).to(device) * 255).round() / 255
        cos.append(identity_cosine(engine.e_id.embed(x_a), engine.e_id.embed(x_r)).cpu())
        dist.append(utility_distance(engine.e_ut.features(x_a), engine.e_ut.features(x_r), "l2").cpu())
        logits.append(engine.e_ut.logits(x_a).cpu())
    cos, dist = torch.cat(cos), torch.cat(dist)
    labels = torch.stack([ds[i]["labels"] for i in order]).numpy()
    n_steps = [steps[i] for i in order]
    return {"images": len(order), "private_fraction": float((cos <= margin).float().mean()),
            "mean_cos": float(cos.mean()), "mean_utility_distance": float(dist.mean()),
            "macro_auroc": macro_auroc(labels, torch.cat(logits).numpy()),
            "steps_mean": statistics.fmean(n_steps), "steps_median": statistics.median(n_steps),
            "steps_max": max(n_steps)}


def timed(name: str, fn, device) -> tuple[dict, dict, dict]:
    """Run one side; returns (images, steps, timing and memory)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    before = memory_mark(device)
    t0 = time.perf_counter()
    images, steps = fn()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    after = memory_mark(device)
    run = {"seconds": seconds, "images_per_second": len(images) / seconds if seconds > 0 else math.nan,
           "memory_before": before, "memory_after": after}
    print(f"[{name}] {len(images)} images in {seconds:.1f}s", flush=True)
    return images, steps, run


def no_nan(v):
    """JSON-safe copy: NaN becomes null, tuples become lists."""
    if isinstance(v, (dict, list, tuple)):
        return {k: no_nan(x) for k, x in v.items()} if isinstance(v, dict) else [no_nan(x) for x in v]
    return None if isinstance(v, float) and math.isnan(v) else v


def mem(mark: dict) -> str:
    return f"{mark['max_rss_mib']:.0f}" + (f" (cuda {mark['cuda_peak_mib']:.0f})" if "cuda_peak_mib" in mark else "")


def fmt(v, spec: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="phantom-cxr64")
    p.add_argument("--data", default="data/phantom-cxr64")
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--margin", type=float, default=None, help="m (default: the preset's stage-2 margin)")
    p.add_argument("--images", type=int, default=64, help="first N test images for the engine")
    p.add_argument("--ref-images", type=int, default=None, help="first N test images for the reference "
                   "(default: --images)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=None, help="engine steps per image (default: the preset's)")
    p.add_argument("--ref-steps", type=int, default=1000, help="reference steps per image (>= 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default=None, choices=PRECISIONS, help="engine precision (default: the preset's)")
    p.add_argument("--fast-precision", default=None, choices=PRECISIONS,
                   help="engine-fast precision (default: the fast profile's, auto-bf16)")
    p.add_argument("--amortized-precision", default=None, choices=PRECISIONS,
                   help="amortized engine precision (default: the engine's, auto-bf16)")
    p.add_argument("--correction", type=float, default=None,
                   help="amortized engine: share of the network's correction applied (default: the preset's)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers here")
    args = p.parse_args()

    set_threads(args.threads)
    device = torch.device(args.device)
    cfg = anonymize_config(args.preset, privacy=None, margin=args.margin, batch_size=args.batch_size,
                           max_steps=args.max_steps, precision=args.precision)
    engine = load_engine(cfg, args.checkpoints, device)
    ds = data.open(args.data, split="test", size=engine.model.img_resolution, channels=engine.model.img_channels)
    n_eng = min(args.images, len(ds))
    n_ref = min(args.ref_images if args.ref_images is not None else args.images, len(ds))
    print(f"preset {cfg.preset}, margin m = {cfg.margin}, device {device}, threads {args.threads}; engine: "
          f"{n_eng} images, batch {cfg.batch_size}, max {cfg.max_steps} steps, slack {cfg.hinge_slack}, patience "
          f"{cfg.patience}, noise {cfg.noise}; reference: {n_ref} images, batch 1, max {args.ref_steps} steps")

    # "engine": the preset's settings (utility polish after the hinge); "engine-fast": the "fast" speed profile
    # (stop at the hinge from E(x), as the reference does; lr 0.1; bf16 where the hardware has it)
    fast = anonymize_config(args.preset, privacy=None, margin=cfg.margin, speed="fast", batch_size=args.batch_size,
                            max_steps=args.max_steps, precision=args.fast_precision)
    # the fast profile's own objective (no surrogate term), on the same loaded networks
    fast_engine = dataclasses.replace(engine, objective=load_engine(fast, args.checkpoints, device).objective)
    results, kept = {}, {}
    amortized_cfg = anonymize_config(args.preset, privacy=None, margin=cfg.margin, batch_size=args.batch_size,
                                     max_steps=args.max_steps, precision=args.amortized_precision, engine="amortized",
                                     correction=args.correction)
    try:  # the amortized engine: the same networks plus the preset's anonymizer network, when it has one
        amortized = load_engine(amortized_cfg, args.checkpoints, device)
    except Exception as exc:  # noqa: BLE001 - no anonymizer: the table goes without that side
        print(f"no amortized side: {exc}")
        amortized = None
    # each side as a function of its image count; its "batch" is the images it works on at once
    sides = {"engine": (lambda k: run_engine(engine, cfg, ds, k, device), cfg.batch_size, n_eng),
             **({"amortized": (lambda k: run_amortized(amortized, amortized_cfg, ds, k, device),
                               amortized_cfg.batch_size, n_eng)} if amortized else {}),
             "engine-fast": (lambda k: run_engine(fast_engine, fast, ds, k, device), fast.batch_size, n_eng),
             "reference": (lambda k: run_reference(engine, ds, k, cfg.margin, args.ref_steps, device), 1, n_ref)}
    for side, (fn, batch, n) in sides.items():
        # the steady state: first calls pick kernels for each batch shape and precision. Timed cold, the
        # amortized side's 64 chest images ran at 39 images/s against 45 warm; the optimizer sides run a minute
        fn(min(batch, n))
        torch.manual_seed(0)
        images, steps, run = timed(side, lambda: fn(n), device)
        kept[side] = images, steps
        results[side] = {**run, **outcome(engine, ds, images, steps, cfg.margin, device)}
    with torch.no_grad():  # what the utility network makes of the untouched sources, for scale
        x = torch.stack([ds[i]["image"] for i in range(n_eng)]).to(device)
        labels = torch.stack([ds[i]["labels"] for i in range(n_eng)]).numpy()
        source_auroc = macro_auroc(labels, torch.cat([engine.e_ut.logits(c) for c in x.split(64)]).cpu().numpy())

    header = ["side", "images", "seconds", "images/s", "steps mean/median/max", "private", "mean cos",
              "mean ut dist", "macro AUROC", "max RSS MiB"]
    rows = [[side, str(r["images"]), f"{r['seconds']:.1f}", f"{r['images_per_second']:.4f}",
             f"{r['steps_mean']:.1f}/{r['steps_median']:g}/{r['steps_max']}", f"{r['private_fraction']:.3f}",
             f"{r['mean_cos']:.4f}", f"{r['mean_utility_distance']:.4f}", fmt(r["macro_auroc"]), mem(r["memory_after"])]
            for side, r in results.items()]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print()
    for row in [header] + rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    print(f"(max RSS is process-wide; before the engine side: {mem(results['engine']['memory_before'])} MiB)")
    print(f"E_ut macro AUROC on the {n_eng} source images: {fmt(source_auroc)}")

    common = range(min(n_eng, n_ref))  # the verdict compares the sides on the same images
    same = {side: outcome(engine, ds, {i: im[i] for i in common}, {i: st[i] for i in common}, cfg.margin, device)
            for side, (im, st) in kept.items()}
    ref = same["reference"]
    verdicts, ratios = {}, {}
    for side in [s for s in results if s != "reference"]:
        eng = same[side]
        ratios[side] = results[side]["images_per_second"] / results["reference"]["images_per_second"]
        private_ok = eng["private_fraction"] >= ref["private_fraction"]
        aurocs = (eng["macro_auroc"], ref["macro_auroc"])
        auroc_ok = None if any(math.isnan(a) for a in aurocs) else aurocs[0] >= aurocs[1] - 0.01
        verdicts[side] = private_ok and auroc_ok is not False
        print(f"\n{side}/reference: {ratios[side]:.2f}x images/s; outcome on the first {len(common)} images: private "
              f"fraction {eng['private_fraction']:.3f} vs {ref['private_fraction']:.3f} "
              f"({'ok' if private_ok else 'WORSE'}), macro AUROC {fmt(aurocs[0])} vs {fmt(aurocs[1])} "
              f"({'n/a' if auroc_ok is None else 'ok' if auroc_ok else 'WORSE'}), mean utility distance "
              f"{eng['mean_utility_distance']:.3f} vs {ref['mean_utility_distance']:.3f} -> "
              f"{'equal or better: the speed-up counts' if verdicts[side] else 'worse: the speed-up does not count'}")

    if args.json:
        summary = {"args": vars(args), "engine_config": config_dict(cfg), "fast_config": config_dict(fast),
                   "results": results, "speedup": ratios, "outcome_on_common_images": same,
                   "outcome_equal_or_better": verdicts,
                   "source_macro_auroc": source_auroc}
        with open(args.json, "w") as fh:
            json.dump(no_nan(summary), fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
