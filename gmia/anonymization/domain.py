"""The out-of-domain guard: an input the stage-1 model cannot represent is withheld, never "anonymized".

The generator only draws what it was trained on: a colour photo, a face, random noise or an image of another
modality, given to the chest preset, comes out as a chest-shaped drawing that has nothing to do with the input,
and releasing it as an anonymized chest X-ray would be a lie. Before optimizing, every input gets three scores:

    reconstruction   mean |G(E(x)) - x| over pixels: how far the model's own rendering of x is from x
    features         Mahalanobis distance of E_ut's features of x to those of the training images (shrunk
                     covariance, divided by sqrt(D)): how unlike the training data the utility network finds x
    combined         the sum of the two, each as (score - median) / (q99.5 - median) of the calibration images:
                     an image a little off on both counts is as suspect as one far off on either (a face through
                     the chest preset can be just under each threshold alone)

Each has a threshold calibrated on the training split (``fit_domain_guard``, ``gmia fit-domain``): a high
quantile of the training scores plus a margin of the same size as the spread above the median, so that held-out
patients of the same data pass and other images do not (``experiments/domain_guard.py`` measures both). An input above either threshold is withheld with reason
``out_of_domain``; ``--allow-out-of-domain`` lets it through, recorded in the manifest and said at the end.

    guard = DomainGuard.load("checkpoints/phantom-cxr64")
    scores = guard.scores(model, e_ut, x)          # {"reconstruction": (N,), "features": (N,)}
    ok = guard.accepts(scores)                      # (N,) bool

Stored like every checkpoint file: ``domain-guard.safetensors`` (feature mean and precision) and its card
``domain-guard.json`` (thresholds, the calibration's quantiles, what it was fitted to, the file's sha256).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from ..checkpoints import check_fitted, read_card, read_verified, write_card
from ..errors import CheckpointError
from ..fileio import atomic_path

__all__ = ["DomainGuard", "GUARD_NAME", "SCORES", "fit_domain_guard"]

GUARD_NAME = "domain-guard"                   # domain-guard.safetensors + domain-guard.json
GUARD_CLASS = "gmia.anonymization.DomainGuard"  # the card's class (not an nn.Module)
SCORES = ("reconstruction", "features", "combined")
_BASE = SCORES[:2]                            # the scores "combined" adds up
_GAUSSIANS = ("features",)                    # the scores that are distances to a Gaussian of training descriptors
QUANTILE = 0.995   # of the training scores ...
MARGIN = 1.0       # ... plus this many times (quantile - median): room for held-out patients of the same data


class DomainGuard:
    """Thresholds on the three scores, with the training statistics they are measured against."""

    def __init__(self, gaussians: dict[str, tuple[torch.Tensor, torch.Tensor]], thresholds: dict[str, float],
                 scale: dict[str, list[float]], meta: dict | None = None):
        # name -> (mean (D,), precision (D, D)) of the training images' E_ut features and thumbnails
        self.gaussians = {k: (m.double(), p.double()) for k, (m, p) in gaussians.items()}
        self.thresholds = {k: float(thresholds[k]) for k in SCORES}
        self.scale = {k: [float(scale[k][0]), float(scale[k][1])] for k in _BASE}  # (median, spread) in training
        self.meta = dict(meta or {})
        self.sha256: str | None = None  # of the file it was loaded from

    # ---- scoring -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, model, e_ut, x: torch.Tensor, codes: torch.Tensor | None = None,
               features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every score (N,) of images x (N, C, R, R) in [0, 1] (``codes``: their E(x), ``features``: their
        E_ut.features(x), when the caller has them), on the CPU as float64."""
        s = {"reconstruction": reconstruction_error(model, x, codes)}
        for k, v in (_descriptors(e_ut, x) if features is None else {"features": features}).items():
            s[k] = self.distance(k, v)
        return self._with_combined(s)

    def _with_combined(self, s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        s["combined"] = sum((s[k] - self.scale[k][0]) / self.scale[k][1] for k in _BASE)
        return s

    def distance(self, name: str, v: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of descriptors ``v`` (N, D) to the training ones, divided by sqrt(D)."""
        mean, precision = self.gaussians[name]
        d = v.double().cpu() - mean
        return ((d @ precision) * d).sum(1).clamp_min(0).sqrt() / math.sqrt(len(mean))

    def accepts(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N,) bool: every score at or under its threshold."""
        return torch.stack([scores[k] <= self.thresholds[k] for k in SCORES]).all(0)

    def describe(self, scores: dict[str, torch.Tensor], i: int) -> str:
        """Why row ``i`` is out of domain, in words (the scores above their thresholds)."""
        return ", ".join(f"{k} {float(scores[k][i]):.4f} > {self.thresholds[k]:.4f}" for k in SCORES
                         if float(scores[k][i]) > self.thresholds[k])

    # ---- fitting -------------------------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def fit(cls, model, e_ut, images, calibration=None, batch_size: int = 64, shrinkage: float = 0.1,
            margin: float = MARGIN, meta: dict | None = None) -> "DomainGuard":
        """The Gaussians from ``images`` (a sequence of (C, R, R) tensors in [0, 1]: the model's training images),
        the thresholds from ``calibration`` (images of held-out patients; default ``images``). Held-out images
        are what the guard must let through, and the networks see their own training images as closer than any
        new patient's: thresholds set on training images alone withhold new patients of the same data."""
        device = next(model.parameters()).device

        def describe(imgs):
            desc, errs = {k: [] for k in _GAUSSIANS}, []
            for s in range(0, len(imgs), batch_size):
                x = torch.stack([imgs[i] for i in range(s, min(s + batch_size, len(imgs)))]).to(device)
                for k, v in _descriptors(e_ut, x).items():
                    desc[k].append(v.double().cpu())
                errs.append(reconstruction_error(model, x))
            return {k: torch.cat(v) for k, v in desc.items()}, torch.cat(errs)

        desc, errs = describe(images)
        gaussians = {}
        for k, v in desc.items():
            cov = torch.cov(v.T) if len(v) > 1 else torch.eye(v.shape[1], dtype=v.dtype)
            cov = (1 - shrinkage) * cov + shrinkage * torch.diag(torch.diag(cov)).clamp_min(1e-12)
            gaussians[k] = (v.mean(0), torch.linalg.pinv(cov, hermitian=True))
        guard = cls(gaussians, dict.fromkeys(SCORES, math.inf), dict.fromkeys(_BASE, [0.0, 1.0]))
        if calibration is not None:
            desc, errs = describe(calibration)
        train = {"reconstruction": errs, **{k: guard.distance(k, v) for k, v in desc.items()}}
        stats = {}
        for k in SCORES:
            if k == "combined":  # the base scales are set by now
                train = guard._with_combined(train)
            v = train[k]
            q, med = float(torch.quantile(v, QUANTILE)), float(v.median())
            guard.thresholds[k] = q + margin * (q - med)
            if k in _BASE:
                guard.scale[k] = [med, max(q - med, 1e-12)]
            stats[k] = {"median": med, f"q{QUANTILE:g}": q, "max": float(v.max()), "threshold": guard.thresholds[k]}
        guard.meta = {**(meta or {}), "images": len(images), "calibration_images": len(train["reconstruction"]),
                      "shrinkage": shrinkage, "quantile": QUANTILE, "margin": margin, "calibration_scores": stats}
        return guard

    # ---- files ---------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        path = folder / f"{GUARD_NAME}.safetensors"
        tensors = {f"{k}.{part}": t.float().contiguous() for k, (m, p) in self.gaussians.items()
                   for part, t in (("mean", m), ("precision", p))}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        write_card(folder, GUARD_NAME, GUARD_CLASS, {"thresholds": self.thresholds, "scale": self.scale},
                   self.meta, dtype="float32", num_tensors=len(tensors))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "DomainGuard":
        """The guard in ``folder``, its file checked against the sha256 of its card."""
        folder = Path(folder)
        fix = f"recalibrate it with `gmia fit-domain --preset PRESET --data DIR --checkpoints {folder}`"
        card = read_card(folder, GUARD_NAME)
        if card["class"] != GUARD_CLASS:
            raise CheckpointError(f"{folder / GUARD_NAME}.json: a card of a {card['class']!r}, not of a domain guard")
        try:
            t = load_safetensors(read_verified(folder, GUARD_NAME, card))
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; or {fix}") from None
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{folder / GUARD_NAME}.safetensors: unreadable ({exc}); {fix}") from None
        check_fitted(folder, GUARD_NAME, card, fix)
        thresholds, scale = card["kwargs"].get("thresholds", {}), card["kwargs"].get("scale", {})
        want = {f"{k}.{part}" for k in _GAUSSIANS for part in ("mean", "precision")}
        ok = set(t) == want and set(thresholds) == set(SCORES) and set(scale) == set(_BASE) and all(
            t[f"{k}.precision"].shape == (len(t[f"{k}.mean"]),) * 2 for k in _GAUSSIANS)
        if not ok:
            raise CheckpointError(f"{folder / GUARD_NAME}.safetensors: not a gmia domain guard; {fix}")
        guard = cls({k: (t[f"{k}.mean"], t[f"{k}.precision"]) for k in _GAUSSIANS}, thresholds, scale,
                    card.get("meta"))
        guard.sha256 = card["sha256"]
        return guard

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / f"{GUARD_NAME}.json").is_file()


def _descriptors(e_ut, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the Gaussian scores look at: E_ut's features."""
    return {"features": e_ut.features(x)}


@torch.no_grad()
def reconstruction_error(model, x: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |G(E(x)) - x| per image (N,), float64 on the CPU (``codes``: E(x) when already computed). G's
    constant noise: the score of an input does not depend on its record's seed."""
    codes = model.encode(x) if codes is None else codes
    return (model.render(codes).float() - x.float()).abs().flatten(1).mean(1).double().cpu()


def fit_domain_guard(preset: str, checkpoints: str | Path, data: str | Path, split: str | None = "train",
                     limit: int | None = None, device=None, calibration_split: str | None = "val") -> Path:
    """Calibrate the guard of the preset's stage-1 model and E_ut (under ``checkpoints``) and save it beside them
    (``gmia fit-domain``). ``data``: a phantom folder (Gaussians on ``split``, thresholds on
    ``calibration_split``: held-out patients) or an image folder (both from its images: thresholds set on images
    the networks were trained on are tighter, so more of a new patient's images may be withheld)."""
    from .. import networks
    from ..data import is_phantom_folder
    from ..data import open as open_data
    from ..machine import resolve_device
    from ..projection.project import load_aegan
    from ..runs import environment, log

    device = resolve_device(device)
    checkpoint = networks.checkpoint_dir(preset, checkpoints)
    model = load_aegan(checkpoint, device)
    e_ut = networks.load(preset, "utility", checkpoints, device=device)
    splits = is_phantom_folder(data)
    opened = lambda name: open_data(data, split=name if splits else None, size=model.img_resolution,  # noqa: E731
                                    channels=model.img_channels)
    ds = opened(split)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n < 20:
        raise CheckpointError(f"{data}: calibrating the domain guard needs at least 20 training images, found {n}")
    calibration = None
    if splits and calibration_split:
        cal = opened(calibration_split)
        calibration = [cal[i]["image"] for i in range(min(len(cal), n))]
    env = environment()
    meta = {"fitted_to": {"aegan_sha256": read_card(checkpoint, "aegan")["sha256"],
                          "utility_sha256": read_card(checkpoint, "utility")["sha256"]},
            "data": {"root": str(data), "split": split if splits else None,
                     "calibration_split": calibration_split if calibration else None},
            "command": " ".join(env["argv"]), "environment": env}
    images = [ds[i]["image"] for i in range(n)]
    path = DomainGuard.fit(model, e_ut, images, calibration, meta=meta).save(checkpoint)
    log(None, f"domain guard: Gaussians on {n} images of {data}, thresholds on "
              f"{len(calibration) if calibration else n} {'held-out' if calibration else 'of the same'} images -> {path}")
    return path
