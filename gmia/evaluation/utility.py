"""Utility: do anonymized images keep their findings?

Three questions, each answered against the same question on the originals:

1. **Originals-trained classifier on anonymized images.** E_ut's finding logits (E_ut was trained on originals)
   on the anonymized images vs. on their sources: macro and per-finding AUROC with a patient-cluster bootstrap.
   E_ut is also the network the optimizer matched features of, so this is a necessary check, not an independent
   one; the next one is independent of it.
2. **Train on anonymized, test on originals** (could a model trained on the release serve real patients?). The
   classifier is a *linear probe*: one logistic regression per finding (``gmia.metrics.probe_findings``) on a
   frozen, label-free feature extractor — the MFM when the preset has one (never saw labels, never used by the
   optimizer), else E_ut's features (recorded as such). It is trained once on anonymized images and once on their
   sources (same images, same labels), both tested on held-out originals; the gap is the utility lost.
   Protocol "anon-train": train on the anonymized *training* patients (``--anon-train``), test on the evaluated
   originals. Protocol "patient-2fold" (no anonymized training set): split the evaluated patients in two halves,
   train on one half's anonymized images, test on the other half's originals, and swap; AUROCs are averaged.
3. **Lesion Dice** (face presets): E_ut's segmentation of the anonymized image vs. the source's lesion mask
   (the lesion must stay where it was), next to the same Dice on the source image.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import metrics

__all__ = ["classifier_utility", "probe_utility", "lesion_dice", "run_net"]


@torch.no_grad()
def run_net(fn, x: torch.Tensor, batch_size: int = 128, device="cpu") -> np.ndarray:
    """``fn`` over x in batches → numpy (N, ...) on the CPU."""
    outs = [fn(x[s:s + batch_size].to(device)).float().cpu() for s in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0,))


def _macro(y, s) -> float:
    return metrics.macro_auroc(y, s)


def classifier_utility(logits_anon: np.ndarray, logits_src: np.ndarray, y: np.ndarray, findings, groups,
                       bootstrap: int = 0, seed: int = 0) -> dict:
    """AUROC of originals-trained logits on anonymized images (and on the sources, for reference)."""
    out: dict = {"classifier": "E_ut finding head (trained on originals)"}
    for suffix, logits in (("", logits_anon), ("_originals", logits_src)):
        if bootstrap > 0:
            est, lo, hi = metrics.bootstrap_ci(_macro, y, logits, n=bootstrap, seed=seed, groups=groups)
            out[f"macro_auroc{suffix}"], out[f"macro_auroc{suffix}_ci95"] = est, [lo, hi]
        else:
            out[f"macro_auroc{suffix}"] = metrics.macro_auroc(y, logits)
        out[f"per_finding{suffix}"] = {f: float(v) for f, v in zip(findings, metrics.per_finding_auroc(y, logits))}
    out["macro_auroc_drop"] = out["macro_auroc_originals"] - out["macro_auroc"]
    return out


def probe_utility(feat_anon_train, feat_src_train, y_train, feat_test, y_test, findings) -> dict:
    """Train-on-anonymized / train-on-originals linear probes, both tested on originals ``feat_test``."""
    anon = metrics.probe_findings(feat_anon_train, y_train, feat_test, y_test, names=findings)
    orig = metrics.probe_findings(feat_src_train, y_train, feat_test, y_test, names=findings)
    return {"macro_auroc_train_anonymized_test_originals": anon["macro_auroc"],
            "macro_auroc_train_originals_test_originals": orig["macro_auroc"],
            "gap": orig["macro_auroc"] - anon["macro_auroc"],
            "per_finding_train_anonymized": {f: anon[f"auroc/{f}"] for f in findings},
            "per_finding_train_originals": {f: orig[f"auroc/{f}"] for f in findings}}


def probe_two_fold(feat_anon, feat_src, y, patients, findings, seed: int = 0) -> dict:
    """The "patient-2fold" protocol (see the module doc): halves of the patients, swapped, averaged."""
    uniq = np.unique(patients)
    perm = np.random.default_rng(seed).permutation(uniq)
    half = np.isin(patients, perm[: len(uniq) // 2])
    folds = []
    for train in (half, ~half):
        if train.sum() < 2 or (~train).sum() < 2:
            continue
        folds.append(probe_utility(feat_anon[train], feat_src[train], y[train], feat_src[~train], y[~train],
                                   findings))
    if not folds:
        return {"skipped": "too few patients for a two-fold split"}
    keys = ("macro_auroc_train_anonymized_test_originals", "macro_auroc_train_originals_test_originals", "gap")
    out = {k: float(np.nanmean([f[k] for f in folds])) for k in keys}
    out["folds"] = len(folds)
    return out


def lesion_dice(mask_anon: np.ndarray, mask_src: np.ndarray, target: np.ndarray) -> dict:
    """Dice of predicted lesion maps (N, 1, S, S) on anonymized and source images vs. the source masks."""
    anon, src = metrics.dice(mask_anon, target, reduction="positive"), metrics.dice(mask_src, target, reduction="positive")
    return {"dice_anonymized": anon, "dice_originals": src,
            "ratio": anon / src if src and np.isfinite(src) and np.isfinite(anon) else None,
            "dice_anonymized_global": metrics.dice(mask_anon, target, reduction="global"),
            "images_with_lesion": int((target.reshape(len(target), -1) > 0.5).any(1).sum()),
            "reduction": "mean over images whose source has a lesion"}
