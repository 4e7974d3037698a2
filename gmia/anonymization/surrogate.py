"""Surrogate identities: pull each anonymized image towards the identity of a generated nobody.

    term = SurrogateTerm(model, e_id, prior, target_cos=0.7, weight=1.0)
    ref = term.reference(x_r, seeds)          # E_id(G(w_T)), w_T drawn from the latent prior by each seed
    loss = term.loss(x_a, ref)                # max(0, t − cos(E_id(x_A), E_id(G(w_T)))) per image

Why: the identity hinge alone stops as soon as cos(E_id(x_R), E_id(x_A)) ≤ m. Two things are wrong with that
as a privacy mechanism, and both were measured on phantom-cxr64 (``experiments/adaptive_attack.py``):

* a small move past the margin leaves the identity cues E_id does not weigh in place, and an attacker retrained
  on anonymized images (the adaptive attacker) learns them back;
* a large move (a very negative m) makes x_A systematically *unlike* its source — an anti-identity that an
  attacker exploits by simply ranking the gallery the other way round (independent attacker AUC 0.07 at
  m = −0.7, i.e. 0.93 for the reversed score).

A surrogate fixes both: the target identity E_id(G(w_T)) is drawn independently of the source (from the
Gaussian prior over W, by the record's seed), so x_A moves far — to someone else — and its similarity to the
source is that of a random pair of people, neither high nor low. The target is a generated sample, not another
patient of the dataset, so no real person's identity is transferred. The hinge on the source still holds:
the surrogate term is a goal, the margin m stays the guarantee the privacy gate checks. A row that has not met
the hinge after ``goal_steps`` drops the goal and spends the rest of its budget on the hinge: at m = −0.7 the
two pulls can balance short of the margin (without this rule, 10 of 48 images are withheld).
"""

from __future__ import annotations

import torch

from .losses import Views, identity_cosine
from .optimizer import noise_seeds

__all__ = ["SurrogateTerm", "SURROGATE_SALT", "surrogate_seeds", "surrogate_codes"]

SURROGATE_SALT = 0x5EED_0F_1D  # mixed into the record seed: the surrogate draw is not the noise draw


def surrogate_seeds(seeds: list[int]) -> list[int]:
    """The seeds of the surrogate draws (and of their noise) for these record seeds."""
    return [(int(s) ^ SURROGATE_SALT) & (2**63 - 1) for s in seeds]


def surrogate_codes(prior, seeds: list[int], device=None) -> torch.Tensor:
    """The surrogate codes w_T (N, ...) of these record seeds, drawn from the latent prior."""
    return prior.sample(surrogate_seeds(seeds), device)


class SurrogateTerm:
    """λ_s · max(0, t − cos(E_id(x_A), E_id(G(w_T)))) with w_T ~ prior, one per record seed."""

    name = "sur"
    seeded = True  # Objective.references passes the record seeds
    goal = True    # dropped by a row that is not private after AnonymizeConfig.goal_steps (the hinge comes first)

    def __init__(self, model, e_id, prior, target_cos: float = 0.7, weight: float = 1.0, noise: str = "per-image"):
        self.model, self.net, self.prior = model, e_id, prior
        self.target_cos, self.weight, self.noise = float(target_cos), float(weight), noise

    def targets(self, seeds: list[int]) -> torch.Tensor:
        """The surrogate images G(w_T) (N, C, R, R) of these record seeds."""
        device = next(self.model.parameters()).device
        salted = surrogate_seeds(seeds)
        with torch.no_grad():
            return self.model.render(surrogate_codes(self.prior, seeds, device), noise_seeds(salted, self.noise))

    def reference(self, x_r: torch.Tensor, seeds: list[int] | None) -> torch.Tensor:
        if seeds is None or len(seeds) != len(x_r):
            raise ValueError(f"SurrogateTerm.reference needs one record seed per image (Objective.references(x_r, "
                             f"seeds)); got {None if seeds is None else len(seeds)} for {len(x_r)} images")
        with torch.no_grad():
            return self.net.embed(self.targets(seeds))

    def cosine(self, x_a: torch.Tensor, ref: torch.Tensor, views: Views | None = None) -> torch.Tensor:
        # E_id(x_A) from the shared views: the identity hinge has already computed it this step
        return identity_cosine(Views.of(x_a, views).embed(self.net), ref)

    def loss(self, x_a: torch.Tensor, ref: torch.Tensor, views: Views | None = None) -> torch.Tensor:
        return (self.target_cos - self.cosine(x_a, ref, views)).clamp_min(0.0)
