"""The Decoupler: a frozen linear split of MFM features into an identity code and a semantic part.

    dec = Decoupler.from_scatter(fit, rank=24, margin=0.3)     # from gmia.decoupling.scatter.fit_scatter
    s, u = dec(f)            # f (N, d) MFM features → semantic part (N, d), identity code (N, rank)
    save_decoupler(dec, "runs/decoupler-phantom-cxr64", meta={"report": ...})
    dec = load_decoupler("runs/decoupler-phantom-cxr64")

* ``identity(f) = V_k'(f − μ)``: the top-k Fisher coordinates (within-patient whitened, so cosine in this
  space is an LDA-style verifier). This is "P_id MFM(x)" of the stage-2 term; it is centered, because a cosine
  of uncentered features would mostly measure the shared mean.
* ``semantic(f) = (I − A_k V_k')(f − μ)``: the oblique complement (see ``scatter``), in feature space (N, d).
* ``code_rank`` m ≤ k (default k): the identity code is the first m of the k removed coordinates. A learned split
  (``coding_rate``) may remove many more directions than carry identity (within-patient noise that carries
  neither identity nor findings); they are dropped from the semantic part but need not be in the code.

Both are plain matrix products, differentiable with respect to f, with frozen buffers. The checkpoint is a
gmia checkpoint (``decoupler.safetensors`` + ``decoupler.json``) whose kwargs rebuild the shapes and carry the
calibrated hinge margin and the semantic scale the stage-2 term uses by default.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoints import load_module, read_card, save_module
from ..errors import CheckpointError, InputError
from .scatter import ScatterFit

__all__ = ["Decoupler", "save_decoupler", "load_decoupler", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "decoupler"


class Decoupler(nn.Module):
    """Identity code and semantic part of features (N, feature_dim)."""

    def __init__(self,
                 feature_dim: int,              # d: the MFM feature size
                 rank: int,                     # k: identity coordinates (chosen by MDL, ``mdl.select_rank``)
                 margin: float = 0.0,           # m': default hinge on cos(identity codes), calibrated on impostors
                 semantic_scale: float = 1.0,   # typical ‖semantic(f_a) − semantic(f_b)‖ between two studies of
                                                # one patient: the unit of the stage-2 semantic distance
                 code_rank: int | None = None,  # m: identity-code coordinates (the first m of the k; None: k)
                 ):
        super().__init__()
        if not 1 <= rank <= feature_dim:
            raise InputError(f"Decoupler rank must be in [1, feature_dim={feature_dim}], got {rank}")
        if code_rank is not None and not 1 <= code_rank <= rank:
            raise InputError(f"Decoupler code_rank must be in [1, rank={rank}], got {code_rank}")
        self.feature_dim, self.rank = int(feature_dim), int(rank)
        self.code_rank = self.rank if code_rank is None else int(code_rank)
        self.margin, self.semantic_scale = float(margin), float(semantic_scale)
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("filters", torch.zeros(feature_dim, rank))    # V_k: identity read-out
        self.register_buffer("patterns", torch.zeros(feature_dim, rank))   # A_k: what identity writes

    @property
    def kwargs(self) -> dict:
        kw = {"feature_dim": self.feature_dim, "rank": self.rank, "margin": self.margin,
              "semantic_scale": self.semantic_scale}
        if self.code_rank != self.rank:
            kw["code_rank"] = self.code_rank
        return kw

    @classmethod
    def from_scatter(cls, fit: ScatterFit, rank: int, margin: float = 0.0, semantic_scale: float = 1.0) -> "Decoupler":
        dec = cls(len(fit.mean), rank, margin, semantic_scale)
        with torch.no_grad():
            dec.mean.copy_(torch.from_numpy(fit.mean))
            dec.filters.copy_(torch.from_numpy(np.ascontiguousarray(fit.filters[:, :rank])))
            dec.patterns.copy_(torch.from_numpy(np.ascontiguousarray(fit.patterns[:, :rank])))
        return dec

    def _check(self, f: torch.Tensor) -> torch.Tensor:
        if f.ndim != 2 or f.shape[1] != self.feature_dim:
            raise InputError(f"Decoupler expects features (N, {self.feature_dim}), got {tuple(f.shape)}")
        return f - self.mean

    def identity(self, f: torch.Tensor) -> torch.Tensor:
        """Identity code (N, code_rank)."""
        return self._check(f) @ self.filters[:, :self.code_rank]

    def semantic(self, f: torch.Tensor) -> torch.Tensor:
        """Semantic part (N, d), centered: the features with the identity coordinates removed."""
        fc = self._check(f)
        return fc - (fc @ self.filters) @ self.patterns.T

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fc = self._check(f)
        u = fc @ self.filters
        return fc - u @ self.patterns.T, u[:, :self.code_rank]

    def extra_repr(self) -> str:
        code = f", code_rank={self.code_rank}" if self.code_rank != self.rank else ""
        return f"feature_dim={self.feature_dim}, rank={self.rank}{code}, margin={self.margin:.3f}"



def save_decoupler(dec: Decoupler, folder: str | Path, meta: dict | None = None) -> Path:
    """Write ``<folder>/decoupler.safetensors`` + ``decoupler.json`` (float32: it is small); returns the card."""
    return save_module(dec, dec.kwargs, folder, CHECKPOINT_NAME, meta=meta)


def load_decoupler(folder: str | Path, device: str | torch.device = "cpu") -> Decoupler:
    """The frozen decoupler of ``<folder>/decoupler.*`` (or ``<folder>`` = a preset folder holding it)."""
    folder = Path(folder)
    if not (folder / f"{CHECKPOINT_NAME}.json").is_file():
        raise CheckpointError(f"no decoupler in {folder}: expected {CHECKPOINT_NAME}.safetensors and "
                              f"{CHECKPOINT_NAME}.json. Make them with `gmia fit-decoupler --preset P --data DIR "
                              f"--out {folder}`")
    card = read_card(folder, CHECKPOINT_NAME)
    if card["class"] != "gmia.decoupling.Decoupler":
        raise CheckpointError(f"{folder / (CHECKPOINT_NAME + '.json')}: expected a gmia.decoupling.Decoupler, "
                              f"found {card['class']!r}")
    dec = load_module(folder, CHECKPOINT_NAME, device=device)
    return dec.requires_grad_(False).eval()
