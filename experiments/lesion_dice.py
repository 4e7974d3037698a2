"""Lesion Dice of released face images, as a segmenter the optimizer never saw reads it and as E_ut's head does.

    python experiments/lesion_dice.py --anon outputs/eval/phantom-face64/anon-test-medium \
        [--also RUN ...] [--seeds 2]

``gmia evaluate``'s two lesion readings without the rest: U-Nets on a ResNet-18 encoder (``gmia.evaluation.segmenter``,
the same seeds and epochs), trained on the real training originals' masks, and E_ut's segmentation head, which the
lesion term optimized against. Each segments the released images of ``--anon`` (and of every ``--also`` run of the
same images) and their sources; Dice against the sources' masks, over images with a lesion. Minutes per seed on a
CPU.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from gmia import data, networks
from gmia.config import get_preset
from gmia.evaluation.evaluate import EvalConfig, training_originals
from gmia.evaluation.records import load_anonymized, load_real, match, read_anonymized
from gmia.evaluation.segmenter import SegmenterConfig, dice_reading, segment, train_segmenters
from gmia.evaluation.utility import lesion_dice, run_net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="phantom-face64")
    ap.add_argument("--real", default=None, help="phantom folder with masks (default data/<preset>)")
    ap.add_argument("--anon", required=True, help="anonymized images (with private/linkage.csv)")
    ap.add_argument("--also", nargs="*", default=[], help="other runs of the same images, scored by the same nets")
    ap.add_argument("--seeds", type=int, default=SegmenterConfig.seeds)
    ap.add_argument("--epochs", type=int, default=SegmenterConfig.epochs)
    ap.add_argument("--checkpoints", default="checkpoints")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = get_preset(args.preset)
    real = data.open(args.real or f"data/{args.preset}", size=p.resolution, channels=p.channels)
    if not real.has_masks:
        raise SystemExit(f"{real.root}: no lesion masks to score against")
    e_ut = networks.load(args.preset, "utility", args.checkpoints, "cpu")

    runs = {}
    first = None
    for folder in [args.anon, *args.also]:
        run = read_anonymized(folder)
        cohort = match(real, run)
        x = load_anonymized(run, range(len(run.pseudonyms)), p.channels, p.resolution)
        if first is None:
            first = cohort
        else:  # in --anon's order (the pseudonyms differ between runs)
            position = {int(k): i for i, k in enumerate(cohort.anon_source)}
            if sorted(position) != sorted(int(k) for k in first.anon_source):
                raise SystemExit(f"{folder}: not the same source images as {args.anon}")
            x = x[[position[int(k)] for k in first.anon_source]]
        runs[folder] = x
    x_src, masks = load_real(real, first.anon_source, with_masks=True)
    target = masks.numpy()
    # the same sample of training originals as gmia evaluate
    x_train, m_train = load_real(real, training_originals(first, EvalConfig()), with_masks=True)

    nets = train_segmenters(x_train, m_train, replace(SegmenterConfig(), epochs=args.epochs, seeds=args.seeds), "cpu")
    src_maps = [segment(net, x_src, "cpu") for net in nets]  # once, for every run
    e_ut_src = run_net(e_ut.segment, x_src, 128, "cpu")
    print(f"{len(x_src)} images, {int((target.reshape(len(target), -1) > 0.5).any(1).sum())} with a lesion; "
          f"segmenters trained on {len(x_train)} training originals")
    for folder, x in runs.items():
        r = dice_reading(nets, x, x_src, target, "cpu", src_maps)
        own = lesion_dice(run_net(e_ut.segment, x, 128, "cpu"), e_ut_src, target)
        print(f"{folder}: independent {r['dice_anonymized']:.3f} / {r['dice_originals']:.3f} = {r['ratio']:.3f} "
              f"(per seed {', '.join(f'{v:.3f}' for v in r['ratio_per_seed'])}); "
              f"E_ut {own['dice_anonymized']:.3f} / {own['dice_originals']:.3f} = {own['ratio']:.3f}")

if __name__ == "__main__":
    main()
