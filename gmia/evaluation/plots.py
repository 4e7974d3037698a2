"""The figures of an evaluation (matplotlib, Agg backend, no display): example grids, ROC curves, the
privacy–utility curve. Each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["example_grid", "roc_plot", "curve_plot", "DIFF_GAIN"]

DIFF_GAIN = 3.0  # the difference column shows |anonymized − source| × 3 (clipped), so small edits are visible


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _show(ax, img: torch.Tensor | None, title: str | None = None, cmap: str = "gray") -> None:
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    if img is None:
        ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        return
    a = img.detach().cpu().clamp(0, 1).numpy()
    if a.shape[0] == 1:
        ax.imshow(a[0], cmap=cmap, vmin=0, vmax=1)
    else:
        ax.imshow(np.transpose(a, (1, 2, 0)))


def example_grid(source: torch.Tensor, reconstruction: torch.Tensor | None, anonymized: torch.Tensor,
                 path: str | Path, captions: list[str] | None = None) -> Path:
    """One row per image: source | reconstruction G(E(x)) | anonymized | |anonymized − source| × DIFF_GAIN."""
    plt = _plt()
    n = len(source)
    fig, axes = plt.subplots(n, 4, figsize=(6.4, 1.7 * n), squeeze=False)
    titles = ("source", "reconstruction", "anonymized", f"|diff| x{DIFF_GAIN:g}")
    for i in range(n):
        diff = ((anonymized[i] - source[i]).abs().mean(0, keepdim=True) * DIFF_GAIN).clamp(0, 1)
        rec = reconstruction[i] if reconstruction is not None else None
        for j, img in enumerate((source[i], rec, anonymized[i], diff)):
            _show(axes[i][j], img, titles[j] if i == 0 else None, cmap="magma" if j == 3 else "gray")
        if captions:
            axes[i][0].text(-0.1, 0.5, captions[i], fontsize=6, rotation=90, va="center", ha="right",
                            transform=axes[i][0].transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, title: str) -> Path:
    """ROC curves {label: (fpr, tpr, auc)} on one axis, with the chance diagonal."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for label, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def curve_plot(rows: list[dict], path: str | Path, x: str = "utility_macro_auroc",
               y: str = "attacker_auc_own_source") -> Path:
    """The privacy–utility curve: one point per margin (labelled), attacker AUC vs. utility AUROC."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    xs = [r.get(x) for r in rows]
    ys = [r.get(y) for r in rows]
    ok = [i for i in range(len(rows)) if xs[i] is not None and ys[i] is not None]
    ax.plot([xs[i] for i in ok], [ys[i] for i in ok], marker="o")
    for i in ok:
        ax.annotate(f"m={rows[i]['margin']:g}", (xs[i], ys[i]), fontsize=7, textcoords="offset points",
                    xytext=(4, 4))
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("utility: macro AUROC on anonymized (higher is better)")
    ax.set_ylabel("privacy: attacker AUC, own source (lower is better)")
    ax.set_title("privacy-utility curve", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
