"""Stage-2 losses: pure per-image functions, and the terms that bind them to a frozen network.

    L(x_A) = λ_id · max(0, cos(E_id(x_R), E_id(x_A)) − m)  +  λ_ut · ‖E_ut(x_A) − E_ut(x_R)‖₂  (+ further terms)

Every function returns one value **per image** (shape (N,)). The optimizer sums them over the batch, so each
image's gradient is exactly its own (Adam per image, reference §14), and reference features are computed once
per image (``Term.reference``), never per step.

A term is any object with ``name``, ``weight``, ``reference(x_R) -> Tensor`` and ``loss(x_A, ref, views=None) ->
Tensor`` (per image); ``Objective`` adds them up. ``views`` (``Views``) hands every term of one step the same
network passes over x_A, so two terms on one network (E_id: hinge and surrogate; E_ut: features and lesion maps)
cost one forward and backward pass, not two. The MFM/MDL term (``gmia.decoupling.MDLTerm``) and the surrogate identity
(``surrogate.py``) plug in the same way.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["identity_cosine", "identity_hinge", "utility_distance", "jitter_shifts", "soft_dice_distance",
           "masked_pixel_distance", "Views", "Term", "IdentityTerm", "UtilityTerm", "LesionTerm", "FindingPlaceTerm",
           "Objective"]


def identity_cosine(e_a: torch.Tensor, e_r: torch.Tensor) -> torch.Tensor:
    """cos(e_a, e_r) per row: (N, D), (N, D) → (N,)."""
    if e_a.shape != e_r.shape:
        raise InputError(f"identity embeddings: shapes differ, {tuple(e_a.shape)} vs {tuple(e_r.shape)}")
    return F.cosine_similarity(e_a, e_r, dim=1, eps=1e-8)


def identity_hinge(e_a: torch.Tensor, e_r: torch.Tensor, margin: float | torch.Tensor) -> torch.Tensor:
    """max(0, cos(e_a, e_r) − m) per row (N,). ``margin`` is a float or a per-row (N,) tensor."""
    return (identity_cosine(e_a, e_r) - margin).clamp_min(0.0)


def utility_distance(f_a: torch.Tensor, f_r: torch.Tensor, form: str = "l2") -> torch.Tensor:
    """Per-row distance (N,): "l2" = ‖f_a − f_r‖₂ (the paper), "mse" = mean((f_a − f_r)²) (the code), both on
    features; "findings" = Σ_f KL(Bernoulli(σ(r_f)) ‖ Bernoulli(σ(a_f))) on finding *logits*: the diagnosis is
    kept, and nothing else of the source's features is asked for."""
    if f_a.shape != f_r.shape:
        raise InputError(f"utility features: shapes differ, {tuple(f_a.shape)} vs {tuple(f_r.shape)}")
    if form == "findings":
        p = torch.sigmoid(f_r)
        return (F.binary_cross_entropy_with_logits(f_a, p, reduction="none")
                - F.binary_cross_entropy_with_logits(f_r, p, reduction="none")).flatten(1).sum(dim=1)
    diff = (f_a - f_r).flatten(1)
    if form == "l2":
        # sqrt has an infinite gradient at 0 (x_A == x_R at step 0); the tiny floor keeps it finite
        return diff.square().sum(dim=1).clamp_min(1e-12).sqrt()
    if form == "mse":
        return diff.square().mean(dim=1)
    raise InputError(f"utility distance form must be 'l2', 'mse' or 'findings', got {form!r}")


def soft_dice_distance(p_a: torch.Tensor, p_r: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 − soft Dice of two probability maps (N, 1, S, S) per row (N,). ``smooth`` (in pixels) keeps it defined
    when both maps are empty (distance 0) and penalizes a lesion appearing where the source has none."""
    a, r = p_a.flatten(1), p_r.flatten(1)
    return 1 - (2 * (a * r).sum(1) + smooth) / (a.sum(1) + r.sum(1) + smooth)


def masked_pixel_distance(x_a: torch.Tensor, x_r: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-row RMS pixel difference (N,) inside a soft region ``weight`` (N, 1, S, S) in [0, 1]:
    sqrt(Σ w·mean_c (x_a − x_r)² / (Σ w + 1)). The +1 (one pixel) fades the term out where the region is empty."""
    sq = (x_a - x_r).square().mean(1, keepdim=True)
    return ((weight * sq).flatten(1).sum(1) / (weight.flatten(1).sum(1) + 1)).clamp_min(1e-12).sqrt()


class Views:
    """What the frozen networks make of one batch x_A, each pass computed once and shared by the terms of a step.

    Without it the surrogate term ran E_id a second time and the lesion term E_ut a second time: 15% of a chest
    step and 34% of a face step (batch 32, one CPU thread)."""

    def __init__(self, x: torch.Tensor):
        self.x, self._memo = x, {}

    @staticmethod
    def of(x: torch.Tensor, views: "Views | None") -> "Views":
        """``views`` when a caller shares them, else fresh ones for ``x`` (a term used on its own)."""
        return views if views is not None else Views(x)

    def _once(self, net, what: str, fn):
        key = (id(net), what)
        if key not in self._memo:
            self._memo[key] = fn(self.x)
        return self._memo[key]

    def embed(self, net) -> torch.Tensor:
        return self._once(net, "embed", net.embed)

    def features(self, net) -> torch.Tensor:
        # a network with a one-pass ``outputs`` (E_ut) gives its features and lesion maps from the same pass
        if hasattr(net, "outputs"):
            return self._once(net, "outputs", net.outputs)["features"]
        return self._once(net, "features", net.features)

    def logits(self, net) -> torch.Tensor:
        if hasattr(net, "outputs"):
            return self._once(net, "outputs", net.outputs)["logits"]
        return self._once(net, "logits", net.logits)

    def segment(self, net) -> torch.Tensor:
        return torch.sigmoid(self._once(net, "outputs", net.outputs)["mask_logits"])


class Term(Protocol):
    name: str
    weight: float

    def reference(self, x_r: torch.Tensor) -> torch.Tensor: ...

    def loss(self, x_a: torch.Tensor, ref: torch.Tensor, views: Views | None = None) -> torch.Tensor: ...


class IdentityTerm:
    """λ_id · max(0, cos(E_id(x_R), E_id(x_A)) − m); also reports the cosine itself as ``cos_id``. The margin
    is given per row at each evaluation (the optimizer's ``target_margin``: m minus the row's slack)."""

    name = "id"

    def __init__(self, e_id, weight: float = 1.0):
        self.net, self.weight = e_id, float(weight)

    def reference(self, x_r: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net.embed(x_r)

    def loss(self, x_a: torch.Tensor, ref: torch.Tensor, margin: torch.Tensor | float,
             views: Views | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        cos = identity_cosine(Views.of(x_a, views).embed(self.net), ref)
        return (cos - margin).clamp_min(0.0), cos


def jitter_shifts(pixels: int) -> torch.Tensor:
    """The whole-pixel shifts (K, 2) within ±``pixels``, (0, 0) first: the views a jittered utility term reads."""
    span = range(-pixels, pixels + 1)
    others = [(dx, dy) for dy in span for dx in span if (dx, dy) != (0, 0)]
    return torch.tensor([(0, 0)] + others, dtype=torch.float32)


class UtilityTerm:
    """λ_ut · distance(E_ut(x_A), E_ut(x_R)) in E_ut's feature space.

    ``jitter`` > 0 reads x_A shifted by whole pixels (within ±jitter), a different shift at each of the row's steps,
    against E_ut's features of x_R under the same shift: the optimizer can then please E_ut only with what
    survives a shift, not with a pattern tuned to one pixel grid (which E_ut reads and another network does not).
    The shifted image is read in a pass of its own: a term sharing the step's ``Views`` of E_ut (the lesion map)
    then costs a second pass."""

    name = "ut"

    def __init__(self, e_ut, weight: float = 1.0, form: str = "l2", jitter: int = 0, name: str = "ut"):
        self.net, self.weight, self.form, self.name = e_ut, float(weight), form, name
        self.shifts = jitter_shifts(jitter) if jitter > 0 else None
        utility_distance(torch.zeros(1, 1), torch.zeros(1, 1), form)  # validate the form now

    def _read(self, x: torch.Tensor, views: Views | None = None) -> torch.Tensor:
        if views is None:
            return self.net.logits(x) if self.form == "findings" else self.net.features(x)
        return views.logits(self.net) if self.form == "findings" else views.features(self.net)

    def _shifted(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        from kornia.geometry.transform import translate

        return translate(x, self.shifts.to(x.device, x.dtype)[k], padding_mode="border")

    def reference(self, x_r: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.shifts is None:
                return self._read(x_r)
            n = len(x_r)  # (N, K, D): the source read under every shift
            return torch.stack([self._read(self._shifted(x_r, torch.full((n,), k, dtype=torch.long)))
                                for k in range(len(self.shifts))], dim=1)

    def loss(self, x_a: torch.Tensor, ref: torch.Tensor, views: Views | None = None,
             steps: torch.Tensor | None = None) -> torch.Tensor:
        if self.shifts is None:
            return utility_distance(self._read(x_a, Views.of(x_a, views)), ref, self.form)
        # the row's step picks its shift; without steps (one pass, no optimizer) the unshifted view
        k = (torch.zeros(len(x_a), dtype=torch.long, device=x_a.device) if steps is None
             else steps.long() % len(self.shifts))
        rows = torch.arange(len(x_a), device=x_a.device)
        return utility_distance(self._read(self._shifted(x_a, k)), ref[rows, k.to(ref.device)], self.form)


class LesionTerm:
    """λ_les · (1 − soft Dice(E_ut.segment(x_A), E_ut.segment(x_R))): keep the lesion where it was.

    E_ut's 512-d feature vector says *whether* there is a lesion, not where: on 32 phantom-face64 test images
    the anonymized images keep lesion Dice 0.24 (originals 0.98) without this term."""

    name = "les"

    def __init__(self, e_ut, weight: float = 1.0):
        if not getattr(e_ut, "has_segmentation", False):
            raise InputError("the lesion term needs a utility network with a segmentation head (segment=True); "
                             "set lambda_lesion to 0 for this checkpoint")
        self.net, self.weight = e_ut, float(weight)

    def reference(self, x_r: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net.segment(x_r)

    def loss(self, x_a: torch.Tensor, ref: torch.Tensor, views: Views | None = None) -> torch.Tensor:
        return soft_dice_distance(Views.of(x_a, views).segment(self.net), ref)


class FindingPlaceTerm:
    """λ_place · RMS(x_A − x_R) where E_ut sees the findings (its class-activation map of x_R, ``finding_map``).

    E_ut's features say *that* a nodule is there, and the optimizer is content with any rendering E_ut reads as one;
    a classifier of another family reads the finding's own pixels. This term keeps those pixels, and only where the
    findings are: the anatomy around them is still re-drawn. ``findings``: names of the findings whose place is
    kept (empty: all); a finding that is a patient's shape (cardiomegaly: the heart) would bring the patient back."""

    name = "place"

    def __init__(self, e_ut, weight: float = 1.0, findings: tuple[str, ...] = ()):
        if not hasattr(e_ut, "finding_map"):
            raise InputError(f"the finding-place term needs a utility network with a class-activation map "
                             f"(gmia's UtilityNet); {type(e_ut).__name__} has none: set lambda_place to 0")
        names = list(getattr(e_ut, "finding_names", ()))
        unknown = [f for f in findings if f not in names]
        if unknown:
            raise InputError(f"place findings {', '.join(unknown)}: not findings of this utility network; valid: "
                             f"{', '.join(names) or '(its card names none)'}")
        self.net, self.weight = e_ut, float(weight)
        self.findings = [names.index(f) for f in findings] if findings else None

    def reference(self, x_r: torch.Tensor) -> torch.Tensor:
        # the source and its finding map as one (N, C + 1, S, S) tensor: rows are compacted like every reference
        return torch.cat([x_r, self.net.finding_map(x_r, self.findings).to(x_r.dtype)], dim=1)

    def loss(self, x_a: torch.Tensor, ref: torch.Tensor, views: Views | None = None) -> torch.Tensor:
        return masked_pixel_distance(x_a, ref[:, :-1].to(x_a.dtype), ref[:, -1:].to(x_a.dtype))


class Objective:
    """The stage-2 loss: the identity term, the utility term and any extra terms, per image.

    ``evaluate`` returns the total (N,) and a dict of per-image diagnostics: ``cos_id``, ``hinge``, ``ut``
    (the unweighted utility distance) and each extra term by name.
    """

    def __init__(self, identity: IdentityTerm, utility: UtilityTerm | None, extra: list[Term] | tuple = ()):
        self.identity, self.utility, self.extra = identity, utility, list(extra)

    @property
    def terms(self) -> list:
        return [self.identity] + ([self.utility] if self.utility is not None else []) + self.extra

    def references(self, x_r: torch.Tensor, seeds: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Per-image reference features, computed once from the source images (no gradient). A term marked
        ``seeded`` (e.g. the surrogate identity) also gets the records' seeds."""
        with torch.no_grad():
            return {t.name: t.reference(x_r, seeds) if getattr(t, "seeded", False) else t.reference(x_r)
                    for t in self.terms}

    def evaluate(self, x_a: torch.Tensor, refs: dict[str, torch.Tensor], margin: torch.Tensor | float,
                 goals: torch.Tensor | None = None,
                 steps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``goals`` (N,) bool: rows whose *goal* terms (``term.goal``, e.g. the surrogate) count; None = all.
        ``steps`` (N,): each row's step count (a jittered utility term picks its view by it). The diagnostics in
        ``parts`` are unmasked."""
        views = Views(x_a)  # one pass per network, shared by all terms
        hinge, cos = self.identity.loss(x_a, refs["id"], margin, views)
        total = self.identity.weight * hinge
        parts = {"cos_id": cos, "hinge": hinge}
        if self.utility is not None:
            ut = self.utility.loss(x_a, refs["ut"], views, steps)
            total = total + self.utility.weight * ut
            parts["ut"] = ut
        for term in self.extra:
            value = term.loss(x_a, refs[term.name], views)
            parts[term.name] = value
            if goals is not None and getattr(term, "goal", False):
                value = value * goals.to(value.dtype)
            total = total + term.weight * value
        return total, parts
