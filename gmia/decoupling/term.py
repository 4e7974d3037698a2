"""The stage-2 MDL term: keep the semantic part of the MFM features, push their identity code away.

    L_mdl(x_A) = λ_sem · ‖P_sem(MFM(x_A) − MFM(x_R))‖₂ / scale  +  λ_mid · max(0, cos(P_id MFM(x_A), P_id MFM(x_R)) − m')

It follows the stage-2 term protocol of ``gmia.anonymization.losses`` (``name``, ``weight``, ``reference``,
``loss`` per image), so it plugs into ``Objective(identity, utility, extra=[MDLTerm(...)])``.

Defaults, and why:

* ``lambda_sem = 0.5`` with ``normalize=True``: the distance is divided by the decoupler's ``semantic_scale``
  (RMS semantic distance between two studies of one patient, measured on held-out patients), so 1 unit = "as
  different as another study of the same person". 0.5 makes a full study-to-study drift cost half what an
  unmet identity hinge at cos − m = 1 costs under λ_id = 1: it steers, it does not veto the identity goal.
* ``lambda_mid = 1.0``: the same weight as the main identity hinge; the two hinges say the same thing to two
  different identity channels (E_id and the MFM).
* ``margin = None`` → the decoupler's calibrated m': the 95th percentile of cosines between identity codes of
  *different* held-out patients. Below it, x_A's MFM identity code looks like a stranger's.
* ``weight = 1.0``: the term's own weight in ``Objective`` (λ's are inside, so it stays one knob).

Cost: one MFM forward and backward per step per image (reference features are computed once).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from .decoupler import Decoupler

__all__ = ["MDLTerm", "semantic_distance", "identity_code_hinge"]


def semantic_distance(s_a: torch.Tensor, s_r: torch.Tensor) -> torch.Tensor:
    """‖s_a − s_r‖₂ per row (N,); floored inside the sqrt so the gradient is finite at s_a == s_r."""
    if s_a.shape != s_r.shape:
        raise InputError(f"semantic parts: shapes differ, {tuple(s_a.shape)} vs {tuple(s_r.shape)}")
    return (s_a - s_r).square().sum(1).clamp_min(1e-12).sqrt()


def identity_code_hinge(u_a: torch.Tensor, u_r: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(max(0, cos(u_a, u_r) − m'), cos) per row (N,)."""
    if u_a.shape != u_r.shape:
        raise InputError(f"identity codes: shapes differ, {tuple(u_a.shape)} vs {tuple(u_r.shape)}")
    cos = F.cosine_similarity(u_a, u_r, dim=1, eps=1e-8)
    return (cos - margin).clamp_min(0.0), cos


class MDLTerm:
    """λ_sem · semantic distance + λ_mid · identity-code hinge, on a frozen MFM and a fitted Decoupler."""

    name = "mdl"

    def __init__(self,
                 mfm,                           # frozen network with features(x) (N, d), x in [0, 1]
                 decoupler: Decoupler,          # fitted split (``load_decoupler``)
                 lambda_sem: float = 0.5,       # weight of the semantic distance
                 lambda_mid: float = 1.0,       # weight of the identity-code hinge
                 margin: float | None = None,   # m'; None: decoupler.margin (calibrated on impostors)
                 normalize: bool = True,        # divide the semantic distance by decoupler.semantic_scale
                 weight: float = 1.0,           # weight of the whole term in Objective
                 ):
        self.mfm, self.decoupler = mfm, decoupler.requires_grad_(False).eval()
        self.lambda_sem, self.lambda_mid, self.weight = float(lambda_sem), float(lambda_mid), float(weight)
        self.margin = float(decoupler.margin if margin is None else margin)
        self.scale = float(decoupler.semantic_scale) if normalize else 1.0
        if self.scale <= 0:
            raise InputError(f"decoupler semantic_scale must be > 0 to normalize, got {self.scale}")

    def _split(self, x: torch.Tensor, views=None) -> tuple[torch.Tensor, torch.Tensor]:
        f = (views.features(self.mfm) if views is not None else self.mfm.features(x)).float()
        dec = self.decoupler.to(f.device)
        return dec(f)

    def reference(self, x_r: torch.Tensor) -> torch.Tensor:
        """(N, d + k): the source's semantic part and identity code, concatenated (one tensor per term)."""
        with torch.no_grad():
            s, u = self._split(x_r)
        return torch.cat([s, u], dim=1)

    def components(self, x_a: torch.Tensor, ref: torch.Tensor, views=None) -> dict[str, torch.Tensor]:
        """Per-image {"sem": distance / scale, "mid": hinge, "cos_mfm_id": cosine of the identity codes}.
        ``views``: the step's shared network passes (``gmia.anonymization.losses.Views``), if any."""
        s, u = self._split(x_a, views)
        d = s.shape[1]
        if ref.shape[1] != d + u.shape[1]:
            raise InputError(f"MDLTerm reference has {ref.shape[1]} columns, expected {d + u.shape[1]} "
                             "(semantic part + identity code of the same decoupler)")
        hinge, cos = identity_code_hinge(u, ref[:, d:], self.margin)
        return {"sem": semantic_distance(s, ref[:, :d]) / self.scale, "mid": hinge, "cos_mfm_id": cos}

    def loss(self, x_a: torch.Tensor, ref: torch.Tensor, views=None) -> torch.Tensor:
        c = self.components(x_a, ref, views)
        return self.lambda_sem * c["sem"] + self.lambda_mid * c["mid"]

    def __repr__(self) -> str:
        return (f"MDLTerm(lambda_sem={self.lambda_sem}, lambda_mid={self.lambda_mid}, margin={self.margin:.3f}, "
                f"scale={self.scale:.3g}, rank={self.decoupler.rank})")
