"""The out-of-domain guard on held-out data and on images that are not the preset's: the share flagged per set.

Calibrates a guard as `gmia fit-domain` does (Gaussians on the training split, thresholds on the val split; saved
only with --save), then scores the test split (held-out patients: none should be flagged) and kinds of foreign images
(all should be): uniform noise, smooth random blobs, stripes and checkerboards, flat grey, the other phantom
domain (faces through the chest preset, chest X-rays through the face preset), and the preset's own images
inverted (another "modality": bones dark).

    python experiments/domain_guard.py --preset phantom-cxr64 [--save]
    python experiments/domain_guard.py --preset phantom-face64 [--save]
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from gmia import data, networks
from gmia.anonymization.domain import MARGIN, DomainGuard
from gmia.data import phantoms
from gmia.data.preprocess import Preprocess
from gmia.machine import set_threads
from gmia.projection.project import load_aegan


def foreign(kind: str, n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """``n`` images (n, channels, size, size) in [0, 1] that are no chest X-ray and no face phantom."""
    g = torch.Generator().manual_seed(seed)
    if kind == "noise":
        return torch.rand(n, channels, size, size, generator=g)
    if kind == "blobs":  # smooth random fields: low-frequency noise, upsampled
        low = torch.rand(n, channels, 6, 6, generator=g)
        return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    if kind == "patterns":  # stripes and checkerboards of random period and phase
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        out = []
        for _ in range(n):
            period = float(torch.randint(4, 17, (1,), generator=g))
            phase = float(torch.rand(1, generator=g)) * period
            a = torch.sin((xx + phase) * 6.283 / period)
            b = torch.sin((yy + phase) * 6.283 / period)
            img = ((a * b) > 0).float() if torch.rand(1, generator=g) < 0.5 else (a > 0).float()
            out.append(img.expand(channels, size, size))
        return torch.stack(out)
    if kind == "flat":  # a single grey level but for faint noise (a blank image is refused before the guard)
        level = torch.rand(n, 1, 1, 1, generator=g)
        return (level + 0.02 * torch.rand(n, channels, size, size, generator=g)).clamp(0, 1)
    raise ValueError(kind)


def other_domain(preset: str, n: int, channels: int, size: int) -> torch.Tensor:
    domain = "face" if preset.startswith("phantom-cxr") else "cxr"
    ps = phantoms.generate(domain, patients=n, studies=1, size=size, seed=123)
    prep = Preprocess(size=size, channels=channels)
    return torch.stack([prep(torch.from_numpy(img))[0] for img in ps.images])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="phantom-cxr64")
    ap.add_argument("--data", default=None, help="phantom folder (default data/<preset>)")
    ap.add_argument("--checkpoints", default="checkpoints")
    ap.add_argument("--limit", type=int, default=2000, help="training images to calibrate on")
    ap.add_argument("--n", type=int, default=40, help="images per foreign set")
    ap.add_argument("--margin", type=float, nargs="+", default=[MARGIN],
                    help="threshold margins to compare (x (q99.5 - median) above q99.5 of the training scores)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", action="store_true", help="write the calibrated guard beside the weights")
    args = ap.parse_args()
    set_threads(args.threads)
    folder = networks.checkpoint_dir(args.preset, args.checkpoints)
    model = load_aegan(folder)
    e_ut = networks.load(args.preset, "utility", args.checkpoints)
    root = args.data or f"data/{args.preset}"
    c, s = model.img_channels, model.img_resolution
    split = lambda name: data.open(root, split=name, size=s, channels=c)  # noqa: E731
    train = split("train")
    images = [train[i]["image"] for i in range(min(args.limit, len(train)))]
    val = split("val")
    calibration = [val[i]["image"] for i in range(len(val))]
    sets = {name: torch.stack([ds[i]["image"] for i in range(len(ds))]) for name, ds in
            (("train (calibration Gaussians)", train.select(range(min(args.limit, len(train))))),
             ("val (sets the thresholds)", val), ("test (held-out patients)", split("test")))}
    for j, kind in enumerate(("noise", "blobs", "patterns", "flat")):
        sets[kind] = foreign(kind, args.n, c, s, seed=j)
    sets["other phantom domain"] = other_domain(args.preset, args.n, c, s)
    sets["own images inverted"] = 1 - sets["test (held-out patients)"][:args.n]
    for margin in args.margin:
        guard = DomainGuard.fit(model, e_ut, images, calibration, margin=margin)
        print(f"{args.preset}, margin {margin:g}: thresholds "
              f"{json.dumps({k: round(v, 4) for k, v in guard.thresholds.items()})}, calibrated on "
              f"{guard.meta['images']} training images, thresholds on {guard.meta['calibration_images']} val images")
        print(f"{'set':28s} {'images':>6s} {'flagged':>8s}  median reconstruction / features   combined min..max")
        for name, x in sets.items():
            sc = {k: [] for k in guard.thresholds}
            for b in x.split(64):
                for k, v in guard.scores(model, e_ut, b).items():
                    sc[k].append(v)
            sc = {k: torch.cat(v) for k, v in sc.items()}
            flagged = (~guard.accepts(sc)).float().mean().item()
            print(f"{name:28s} {len(x):6d} {flagged:8.3f}  {sc['reconstruction'].median():.4f} / "
                  f"{sc['features'].median():.3f}   {sc['combined'].min():.2f}..{sc['combined'].max():.2f}")
    if args.save:
        from gmia.anonymization.domain import fit_domain_guard

        fit_domain_guard(args.preset, args.checkpoints, root, "train", args.limit, calibration_split="val")


if __name__ == "__main__":
    main()
