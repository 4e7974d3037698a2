"""Encoder-only fidelity on training vs held-out patients, for one or more stage-1 checkpoints.

A widening gap between the two columns means the encoder memorizes training patients instead of learning to
invert G: more training then raises the train column only (and membership inference gets easier).

    python experiments/stage1_generalization.py --preset phantom-cxr64 checkpoints/phantom-cxr64 runs/x/checkpoint
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from gmia import data
from gmia.machine import set_threads
from gmia.projection.project import encoder_fidelity, load_aegan


def encoder_ssim(model, folder: str, split: str, limit: int) -> float:
    """Mean SSIM of G(E(x)) against x over the first ``limit`` images of ``split`` (whole patients first)."""
    ds = data.open(folder, split=split, size=model.img_resolution, channels=model.img_channels)
    return encoder_fidelity(model, ds.select(range(min(limit, len(ds)))))["ssim"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", help="checkpoint folders holding aegan.safetensors + aegan.json")
    ap.add_argument("--preset", default="phantom-cxr64")
    ap.add_argument("--data", default=None, help="phantom folder (default data/<preset>)")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--splits", default="train,test",
                    help="comma-separated splits; gap = first minus last (choose checkpoints on val, report test)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    data = args.data or f"data/{args.preset}"
    splits = args.splits.split(",")
    print(f"{'checkpoint':50s} {'kimg*':>7s} " + " ".join(f"{s:>7s}" for s in splits) + f" {'gap':>7s}")
    for folder in args.folders:
        model = load_aegan(folder)
        meta = json.loads((Path(folder) / "aegan.json").read_text()).get("meta", {})
        kimg, source = meta.get("kimg", float("nan")), meta.get("init_from")
        while source:  # a fine-tune's card nests the card it started from: count every leg
            kimg, source = kimg + source.get("kimg", 0.0), source.get("init_from")
        ssim = [encoder_ssim(model, data, s, args.limit) for s in splits]
        print(f"{folder:50s} {kimg:7.1f} " + " ".join(f"{v:7.4f}" for v in ssim) + f" {ssim[0] - ssim[-1]:7.4f}",
              flush=True)
    print(f"* kimg of every training leg (co-training and fine-tunes); SSIM of G(E(x)) on the first {args.limit} "
          "images of each split")


if __name__ == "__main__":
    main()
