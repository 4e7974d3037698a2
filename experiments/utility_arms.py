"""Where an independent classifier loses the findings: releases, stage-1 reconstructions, originals, over seeds.

    python experiments/utility_arms.py --preset phantom-cxr64 --real data/phantom-cxr64 \
        --anon outputs/eval/phantom-cxr64/anon-test-medium [--anon-train outputs/eval/phantom-cxr64/anon-train-medium] \
        [--also RUN ...] [--noise 0.005,0.03] [--refine 200]

``gmia evaluate``'s independent-classifier readings (``gmia.evaluation.classifier``, the same ResNet-18, seeds and
steps, and the same anonymized training rows in the same order) without the attackers: the ResNet trained on the
training originals scores the released images of ``--anon``
(and of every ``--also`` run of the same images; a run that withheld some is read on the ones it released), their
sources and their stage-1 reconstructions G(E(x)); the "train on anonymized, test on originals" pair gets its
stage-1 arm and, with ``--noise LO,HI``, an arm trained on the releases with white noise of a standard deviation
drawn per image from U(LO, HI) added (the phantom's own detector-noise range is 0.005-0.03 for the chest preset):
does the smoothness of a release cost what a classifier learns from it? ``--refine N`` also scores the sources'
reconstructions refined N steps in W+ (or W): whether G can render what the classifier reads when the pixels ask
for it (the encoder's limit against the generator's). Minutes per seed on a CPU.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

from gmia import data
from gmia.config import get_preset
from gmia.evaluation.classifier import ClassifierConfig, independent_utility
from gmia.evaluation.evaluate import learning_rows, stage1_reconstructions
from gmia.evaluation.records import load_anonymized, load_real, match, read_anonymized
from gmia.fileio import atomic_write_json, jsonable
from gmia.projection.project import load_aegan, project_images


def _released(real, folder: str, channels: int, size: int):
    run = read_anonymized(folder)
    cohort = match(real, run)
    return run, cohort, load_anonymized(run, range(len(run.pseudonyms)), channels, size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="phantom-cxr64")
    ap.add_argument("--real", default="data/phantom-cxr64")
    ap.add_argument("--anon", required=True, help="anonymized evaluation images (with private/linkage.csv)")
    ap.add_argument("--anon-train", default=None, help="anonymized training images of other patients (without: "
                    "the first reading only)")
    ap.add_argument("--also", nargs="*", default=[], help="other runs of the same images, scored by the same nets")
    ap.add_argument("--noise", default=None, help="LO,HI: add an arm trained on releases + noise of sd ~ U(LO, HI)")
    ap.add_argument("--refine", type=int, default=0, help="also score the sources' reconstructions refined this many "
                    "Adam steps in W+ (MSE + 1 - SSIM): what G can render of the findings when asked for the image")
    ap.add_argument("--refine-lr", type=float, default=0.1)
    ap.add_argument("--refine-space", choices=["w", "w+"], default="w+", help="one code for the image (w, what stage 2 "
                    "moves) or one per layer (w+)")
    ap.add_argument("--seeds", type=int, default=ClassifierConfig.seeds)
    ap.add_argument("--checkpoints", default="checkpoints")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write every reading (per finding, per seed) to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = get_preset(args.preset)
    real = data.open(args.real, size=p.resolution, channels=p.channels)
    cfg = replace(ClassifierConfig(), seeds=args.seeds, small_set_seeds=args.seeds)
    model = load_aegan(f"{args.checkpoints}/{args.preset}")

    run, cohort, x_anon = _released(real, args.anon, p.channels, p.resolution)
    x_src, y = load_real(real, cohort.anon_source), real.labels()[cohort.anon_source]
    keys = lambda c: [real.keys()[i] for i in c.anon_source]  # noqa: E731
    x_rec = stage1_reconstructions(model, x_src, keys(cohort), run.run.get("config", {}), 64, "cpu")
    pair, arms = None, {}
    if args.anon_train:
        train_run, train_cohort, x_at = _released(real, args.anon_train, p.channels, p.resolution)
        # the rows gmia evaluate learns from, in its order: the same batches, so both tools read the same gap
        rows = learning_rows(train_cohort, cohort)
        sources = train_cohort.anon_source[rows]
        x_at, x_ot, y_t = x_at[rows], load_real(real, sources), real.labels()[sources]
        arms["reconstructions"] = stage1_reconstructions(model, x_ot, [real.keys()[i] for i in sources],
                                                         train_run.run.get("config", {}), 64, "cpu")
        pair = (x_at, x_ot, y_t)
        if args.noise:  # trained beside the other arms, against the same originals arm
            lo, hi = (float(v) for v in args.noise.split(","))
            g = torch.Generator().manual_seed(0)
            sd = torch.empty(len(x_at), 1, 1, 1).uniform_(lo, hi, generator=g)
            arms["noisy"] = (x_at + sd * torch.randn(x_at.shape, generator=g)).clamp(0, 1)
    others = {}  # every --also run read first: one that does not fit fails before any network is trained
    for folder in args.also:
        _, other_cohort, x_other = _released(real, folder, p.channels, p.resolution)
        position = {int(k): i for i, k in enumerate(other_cohort.anon_source)}
        if not set(position) <= {int(k) for k in cohort.anon_source}:
            raise SystemExit(f"{folder}: holds images of sources that {args.anon} does not")
        # a run that withheld a file is read on the sources it released (and so are their originals)
        keep = [j for j, k in enumerate(cohort.anon_source) if int(k) in position]
        others[folder] = keep, x_other[[position[int(cohort.anon_source[j])] for j in keep]]  # in --anon's order
    reference = cohort.reference
    x_ref, y_ref = load_real(real, reference), real.labels()[reference]
    common = dict(cache_key=(args.real, tuple(int(i) for i in reference)))  # one set of nets for every run
    findings = list(real.findings)
    out = {"seeds": cfg.seeds, "runs": {}}
    main_run = independent_utility(x_ref, y_ref, x_anon, x_src, y, findings, "cpu", cfg, pair,
                                   train_arms=arms, x_rec=x_rec, **common)
    out["runs"][args.anon] = main_run
    if args.refine:  # G's range, not the encoder's: the reconstruction refined towards each source
        refined = torch.cat([project_images(model, x_src[s:s + 64], args.refine, args.refine_lr, lambda_ssim=1.0,
                                            refine_space=args.refine_space)["x_hat"] for s in range(0, len(x_src), 64)])
        out["runs"][f"refined{args.refine}-{args.refine_space}"] = independent_utility(
            x_ref, y_ref, refined, x_src, y, findings, "cpu", cfg, **common)
    for folder, (keep, x_other) in others.items():
        out["runs"][folder] = independent_utility(x_ref, y_ref, x_other, x_src[keep], y[keep], findings, "cpu", cfg,
                                                  **common)
        out["runs"][folder]["images"] = len(keep)
    for folder, m in out["runs"].items():
        print(f"{folder}: ratio {m['ratio']:.3f} (per seed {', '.join(f'{r:.3f}' for r in m['ratio_per_seed'])})"
              + (f", reconstructions {m['ratio_reconstructions']:.3f}" if "ratio_reconstructions" in m else "")
              + (f", on the {m['images']} of {len(x_src)} images it released" if m.get("images", len(x_src))
                 < len(x_src) else ""))
    t = main_run.get("train_on_anonymized")
    if t:
        print(f"train on anonymized / originals / reconstructions: {t['macro_auroc_trained_on_anonymized']:.3f} / "
              f"{t['macro_auroc_trained_on_originals']:.3f} / {t['macro_auroc_trained_on_reconstructions']:.3f}; "
              f"gap {t['gap']:.3f}, stage-1 gap {t['gap_reconstructions']:.3f}")
    if t and "gap_noisy" in t:
        print(f"train on anonymized + noise: {t['macro_auroc_trained_on_noisy']:.3f}, gap {t['gap_noisy']:.3f}")
    if args.json:
        atomic_write_json(args.json, jsonable(out))


if __name__ == "__main__":
    main()
