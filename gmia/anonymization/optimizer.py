"""The batched latent optimizer of stage 2: one row per image, each with its own Adam state and stopping rule.

    opt = LatentOptimizer(model, objective, cfg)
    opt.add(items, w0, x_r)              # reference features computed here, once
    while opt.active:
        result = opt.step()              # one Adam step for every row; result.done marks rows that finished
        for f in opt.pop_done():         # finished rows leave the batch (the runner refills it)
            ...f.w, f.cos_id, f.steps...

Why per-row Adam instead of ``torch.optim.Adam`` on the batch: rows come and go (compaction and refill), so
each row carries its own moments and step count. The per-image losses are *summed*, so a row's gradient is its
own, and each image follows the same trajectory it would alone (reference §14) — up to floating-point rounding
of batched kernels. Noise is fixed per image (seeded from its key), so the image optimized is the image decoded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import AnonymizeConfig, bf16_autocast, target_margin, use_bf16
from .losses import Objective

__all__ = ["Item", "Finished", "StepResult", "LatentOptimizer", "noise_seeds"]


@dataclass
class Item:
    """One image in flight. ``payload`` is the runner's (labels, bit depth, pseudonym...), carried untouched."""

    key: str
    seed: int
    payload: Any = None


@dataclass
class Finished:
    """A row that left the batch: its best code and how it got there."""

    item: Item
    w: torch.Tensor          # best code (w_dim,) or (num_ws, w_dim), on the model's device
    private: bool            # its hinge (with slack) held at that code
    cos_id: float            # cos(E_id(x_R), E_id(G(w))) at that code
    cos_start: float         # ... at the first step (the reconstruction)
    utility: float           # unweighted utility distance at that code (nan without a utility term)
    utility_start: float
    steps: int               # steps this row ran (all attempts)
    seconds: float           # its share of the batched compute
    attempt: int = 0         # 0 on the first try; each gate retry adds one (see ``LatentOptimizer.retry``)
    refs: dict = field(default_factory=dict)  # its reference features (a retry reuses them)


@dataclass
class StepResult:
    loss: torch.Tensor       # (B,) total loss of the codes evaluated this step
    cos_id: torch.Tensor     # (B,)
    done: torch.Tensor       # (B,) bool: the row stops after this step


def noise_seeds(seeds: list[int], noise: str = "per-image") -> list[int] | None:
    """The seeds ``model.render`` takes for the config's ``noise``: each image's own (per-image), or none (G's
    constant noise)."""
    return list(seeds) if noise == "per-image" else None


class LatentOptimizer:
    """Rows of latent codes optimized under ``objective`` with per-row Adam, stopping and best-code tracking."""

    def __init__(self, model, objective: Objective, cfg: AnonymizeConfig):
        self.model, self.objective, self.cfg = model, objective, cfg
        self.device = next(model.parameters()).device
        self.bf16 = use_bf16(cfg.precision, self.device)
        self.items: list[Item] = []
        self._rows: dict[str, torch.Tensor] = {}

    # ---- rows -----------------------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self.items)

    def add(self, items: list[Item], w0: torch.Tensor, x_r: torch.Tensor) -> None:
        """Append rows: ``w0`` (n, ...) codes to start from, ``x_r`` (n, C, R, R) their sources in [0, 1] (the
        reference features are computed here, once)."""
        if items:
            refs = self.objective.references(x_r.to(self.device), [it.seed for it in items])
            self._add(items, w0, refs)

    def retry(self, f: Finished) -> bool:
        """Put a row whose saved file failed the privacy gate back into the batch, from its best code, asking
        for more headroom (``target_margin`` of its next attempt) and ``max_steps // 2`` more steps; its counters
        carry over. False when it has used its ``gate_retries``: the caller withholds it."""
        if f.attempt >= self.cfg.gate_retries:
            return False
        self._add([f.item], f.w[None], f.refs, attempt=f.attempt + 1, budget=f.steps + self.cfg.max_steps // 2,
                  start={"steps": [f.steps], "cos_start": [f.cos_start], "ut_start": [f.utility_start],
                         "seconds": [f.seconds]})
        return True

    def _add(self, items: list[Item], w0: torch.Tensor, refs: dict, attempt: int = 0, budget: int | None = None,
             start: dict | None = None) -> None:
        n = len(items)
        cfg, dev = self.cfg, self.device
        w0 = w0.detach().to(dev, torch.float32)
        start = start or {}
        rows = {
            "w": w0.clone(), "m": torch.zeros_like(w0), "v": torch.zeros_like(w0),
            "t": torch.zeros(n, device=dev), "steps": torch.as_tensor(start.get("steps", [0] * n), device=dev).float(),
            "budget": torch.full((n,), float(cfg.max_steps if budget is None else budget), device=dev),
            "attempt": torch.full((n,), attempt, dtype=torch.long, device=dev),
            "target": torch.full((n,), target_margin(cfg, attempt), device=dev),
            "best_w": w0.clone(), "best_private": torch.zeros(n, dtype=torch.bool, device=dev),
            "best_score": torch.full((n,), math.inf, device=dev), "best_cos": torch.full((n,), math.inf, device=dev),
            "best_ut": torch.full((n,), math.nan, device=dev), "since_best": torch.zeros(n, device=dev),
            "anchor": torch.full((n,), math.inf, device=dev),
            "cos_start": torch.as_tensor(start.get("cos_start", [math.nan] * n), device=dev).float(),
            "ut_start": torch.as_tensor(start.get("ut_start", [math.nan] * n), device=dev).float(),
            "seconds": torch.as_tensor(start.get("seconds", [0.0] * n), device=dev).double(),
            **{f"ref/{k}": v.to(dev) for k, v in refs.items()},
        }
        self.items.extend(items)
        self._rows = rows if not self._rows else {k: torch.cat([self._rows[k], rows[k]]) for k in self._rows}

    def references_of(self, index: int) -> dict[str, torch.Tensor]:
        return {k[4:]: v[index:index + 1] for k, v in self._rows.items() if k.startswith("ref/")}

    # ---- one step -------------------------------------------------------------------------------------------
    def step(self) -> StepResult:
        """Evaluate every row's current code, keep the best, update the codes (Adam), mark finished rows."""
        cfg, r = self.cfg, self._rows
        t0 = time.perf_counter()
        w = r["w"].detach().requires_grad_(True)
        refs = {k[4:]: v for k, v in r.items() if k.startswith("ref/")}
        with bf16_autocast(self.device, self.bf16):
            x_a = self.model.render(w, noise_seeds([it.seed for it in self.items], cfg.noise))
            goals = r["best_private"] | (r["steps"] < cfg.goal_steps)  # the hinge first (surrogate.py)
            total, parts = self.objective.evaluate(x_a, refs, margin=r["target"], goals=goals, steps=r["steps"])
        total, parts = total.float(), {k: v.float() for k, v in parts.items()}
        (grad,) = torch.autograd.grad(total.sum(), w)
        grad = torch.nan_to_num(grad, nan=0.0, posinf=1e5, neginf=-1e5)
        with torch.no_grad():
            self._track(w.detach(), total.detach(), parts)
            self._adam(grad)
            done = self._stopping()
        r["seconds"] += (time.perf_counter() - t0) / len(self.items)
        return StepResult(total.detach(), parts["cos_id"].detach(), done)

    def _track(self, w: torch.Tensor, total: torch.Tensor, parts: dict) -> None:
        """Best code so far: a private code beats any non-private one; among private codes the lowest loss
        (utility and extra terms: the hinge is 0 there), among the others the lowest cosine."""
        r = self._rows
        cos, ut = parts["cos_id"].detach(), parts.get("ut", torch.full_like(total, math.nan)).detach()
        first = r["steps"] == 0
        r["cos_start"] = torch.where(first, cos, r["cos_start"])
        r["ut_start"] = torch.where(first, ut, r["ut_start"])
        private = cos <= r["target"]
        better = torch.where(private, ~r["best_private"] | (total < r["best_score"]),
                             ~r["best_private"] & (cos < r["best_cos"]))
        shape = (-1,) + (1,) * (w.ndim - 1)
        r["best_w"] = torch.where(better.view(shape), w, r["best_w"])
        r["best_private"] = r["best_private"] | private
        r["best_score"] = torch.where(better & private, total, r["best_score"])
        r["best_cos"] = torch.where(better, cos, r["best_cos"])
        r["best_ut"] = torch.where(better, ut, r["best_ut"])
        # patience counts steps since the last *significant* gain of a private code (min_improvement)
        gain = private & (total < r["anchor"] * (1 - self.cfg.min_improvement))
        r["anchor"] = torch.where(gain, total, r["anchor"])
        r["since_best"] = torch.where(gain, torch.zeros_like(r["since_best"]), r["since_best"] + 1)
        r["steps"] += 1

    def _adam(self, grad: torch.Tensor) -> None:
        """Adam (Kingma & Ba), one step per row with the row's own step count."""
        cfg, r = self.cfg, self._rows
        b1, b2 = cfg.betas
        r["t"] += 1
        r["m"].mul_(b1).add_(grad, alpha=1 - b1)
        r["v"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        shape = (-1,) + (1,) * (grad.ndim - 1)
        c1 = (1 - b1 ** r["t"]).view(shape)
        c2 = (1 - b2 ** r["t"]).view(shape)
        r["w"] -= cfg.lr * (r["m"] / c1) / ((r["v"] / c2).sqrt() + cfg.eps)

    def _stopping(self) -> torch.Tensor:
        """Done: private and settled (utility within ``utility_ratio`` of the reconstruction's, or no significant
        gain for ``patience`` steps), or out of steps."""
        cfg, r = self.cfg, self._rows
        settled = r["since_best"] >= cfg.patience
        if cfg.utility_ratio > 0:
            settled = settled | (r["best_ut"] <= cfg.utility_ratio * r["ut_start"])
        return (r["best_private"] & settled) | (r["steps"] >= r["budget"])

    # ---- finished rows --------------------------------------------------------------------------------------
    def pop_done(self, done: torch.Tensor | None = None) -> list[Finished]:
        """Remove the finished rows (``done`` or the stopping rule) and return them, in row order."""
        if not self.items:
            return []
        done = self._stopping() if done is None else done
        idx = torch.nonzero(done).flatten().tolist()
        if not idx:
            return []
        r = self._rows
        out = [Finished(item=self.items[i], w=r["best_w"][i].clone(), private=bool(r["best_private"][i]),
                        cos_id=float(r["best_cos"][i]), cos_start=float(r["cos_start"][i]),
                        utility=float(r["best_ut"][i]), utility_start=float(r["ut_start"][i]),
                        steps=int(r["steps"][i]), seconds=float(r["seconds"][i]),
                        attempt=int(r["attempt"][i]), refs=self.references_of(i))
               for i in idx]
        keep = torch.ones(len(self.items), dtype=torch.bool, device=done.device)
        keep[idx] = False
        self.items = [it for it, k in zip(self.items, keep.tolist()) if k]
        self._rows = {k: v[keep] for k, v in r.items()}
        return out
