"""The amortized anonymizer: a network that maps a source code to an anonymized code in one forward pass.

    net = load_anonymizer(folder, engine.checkpoints)     # checked against the weights it was trained with
    w_a = anonymize_codes(net, w, w_t, margin, e_id, split, prior, e_ut)   # w = E(x), w_t = the record's surrogate

The per-image optimizer (``optimizer.py``) spends tens of generator forward and backward passes on every image.
This network is trained once per preset, on the training split, with the same stage-2 objective (identity
hinge, utility, lesion map, surrogate pull: ``train_amortized.py``), so at run time an image costs one pass
of E, of this MLP and of G. The output is judged exactly as the optimizer's: the privacy gate re-checks every
saved file, and a file above the margin goes to the per-image optimizer for a few steps (then is released or
withheld as usual; ``runner.py``).

Inputs: the source code w, the record's surrogate code w_T (drawn from the latent prior by the record's seed,
``surrogate.surrogate_codes``: the same draw as the optimizer's surrogate term), optionally E_id(x), the identity
the output must move away from (the gate computes it for every image anyway; without it, about half of the
held-out phantom-face64 images come out above the margin instead of a quarter, and go to the nudge; but it is the
one input that every study of a patient shares, and the correction carries it into the release: the shipped face
network does not read it, docs/scale.md "The correction"), E_ut(x), the findings the output must keep (w is the
generator's code, not the findings: with E_ut's view as an input the held-out utility distance of phantom-cxr64
fell from 1.27× to 0.95× the plain reconstruction's after four epochs, at the same privacy), where E_ut segments
(faces) its lesion map on an 8×8 grid (the features say whether there is a lesion, not where), and the margin m.
The network is trained at the preset's level (m jittered): it learns that one operating point, and its output
barely depends on m. A run applies a share c of the correction (``AnonymizeConfig.correction``, the preset's
by default): w_A = w_0 + c · f. At another level the gate still decides every file; ``runner.load_engine`` says so.

The start. With ``redraw`` = s > 0 (the phantom presets: their optimizer's start, ``redraw.py``) the network
starts where the optimizer does, at the re-drawn code w_0 that keeps only the source's finding subspace and
takes identity, pose and exposure from w_T, and learns a correction: w_A = w_0 + f(w_0, w_T, m, E_id(x), E_ut(x)).
Before training (f = 0) its output is that start. It reads w_0, not w (``source="start"``, what
`gmia train anonymizer` trains): w carries the source's whole face or chest, and a correction computed from it
brought part of it back (phantom-face64, adaptive attacker on another study of the same patient: 0.699 with w as
input against 0.573 for the optimizer from the same start); w_0 holds only the finding subspace of w. With s = 0
it starts at the surrogate itself, as a blend w + α ⊙ (w_T − w) (α per dimension, learned, 1 at first) plus the
correction, and reads w: the source's findings then have to be learned back from w through f alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import load_module, read_card
from ..errors import CheckpointError

__all__ = ["Anonymizer", "ANONYMIZER", "anonymize_codes", "fallback_config", "load_anonymizer", "fitted_to",
           "utility_views", "reads_lesion", "nudge_codes"]

ANONYMIZER = "anonymizer"  # checkpoint name: <preset folder>/anonymizer.{safetensors,json}
FITTED_ROLES = ("aegan", "identity", "utility")  # the weights an anonymizer is trained against
# ... and the files its surrogates and start come from: card meta key → file
START_FILES = {"latent_prior_sha256": "latent prior (latent-prior.*)",
               "latent_split_sha256": "latent split (latent-split.*)"}


class Anonymizer(nn.Module):
    """(w, w_T, m, E_id(x), E_ut(x)[, w_0]) → w_A, all codes (N, w_dim) in W space; ``id_dim`` / ``ut_dim``: the
    widths of the E_id / E_ut features it reads (0: not read); ``redraw``: the strength of the re-drawn start w_0
    it was trained from (0: none, it starts at w_T); ``source``: which code of the source it reads, "code" (w) or
    "start" (w_0, only with a re-drawn start)."""

    def __init__(self, w_dim: int = 512, hidden: int = 512, depth: int = 3, id_dim: int = 0, redraw: float = 0.0,
                 ut_dim: int = 0, source: str = "code", lesion_grid: int = 0):
        super().__init__()
        if source not in ("code", "start") or (source == "start" and not redraw > 0):
            raise ValueError(f"source must be 'code', or 'start' with a re-drawn start (redraw > 0); got {source!r} "
                             f"with redraw {redraw:g}")
        self.w_dim, self.hidden, self.depth, self.redraw = w_dim, hidden, depth, float(redraw)
        self.id_dim, self.ut_dim, self.source, self.lesion_grid = id_dim, ut_dim, source, lesion_grid
        # code statistics of the training split: inputs are whitened per dimension, the correction is scaled back
        self.register_buffer("mu", torch.zeros(w_dim))
        self.register_buffer("sd", torch.ones(w_dim))
        self.alpha = nn.Parameter(torch.ones(w_dim))
        layers, width = [], 2 * w_dim + 1 + id_dim + ut_dim + lesion_grid ** 2
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(width, w_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def set_statistics(self, w: torch.Tensor) -> None:
        """Whitening statistics from training codes ``w`` (N, w_dim)."""
        self.mu.copy_(w.mean(0))
        self.sd.copy_(w.std(0).clamp_min(1e-3))

    def forward(self, w: torch.Tensor, w_t: torch.Tensor, margin: torch.Tensor | float,
                e_id: torch.Tensor | None = None, start: torch.Tensor | None = None,
                e_ut: torch.Tensor | None = None, lesion: torch.Tensor | None = None,
                correction: float = 1.0) -> torch.Tensor:
        if self.redraw > 0 and start is None:
            raise ValueError(f"this anonymizer starts from the re-drawn code (strength {self.redraw:g}): pass start")
        base = start if self.redraw > 0 else w + self.alpha * (w_t - w)
        read = start if self.source == "start" else w
        m = torch.as_tensor(margin, dtype=w.dtype, device=w.device).expand(len(w)).reshape(-1, 1)
        parts = [(read - self.mu) / self.sd, (w_t - self.mu) / self.sd, m]
        for name, feats, dim in (("e_id", e_id, self.id_dim), ("e_ut", e_ut, self.ut_dim)):
            if dim:
                if feats is None:
                    raise ValueError(f"this anonymizer reads {name[0].upper()}{name[1:]}(x) of the source: pass {name}")
                parts.append(F.normalize(feats.float(), dim=1) * dim ** 0.5)  # unit vector, entries ~N(0, 1)
        if self.lesion_grid:  # where the lesion is: E_ut's map, averaged over a grid (the features say only whether)
            if lesion is None:
                raise ValueError("this anonymizer reads the source's lesion map (E_ut.segment(x)): pass lesion")
            parts.append(F.adaptive_avg_pool2d(lesion.float(), self.lesion_grid).flatten(1) * 4)
        return base + correction * self.out(self.mlp(torch.cat(parts, dim=1))) * self.sd

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, hidden={self.hidden}, depth={self.depth}, id_dim={self.id_dim}, "
                f"ut_dim={self.ut_dim}, redraw={self.redraw:g}, source={self.source}, lesion_grid={self.lesion_grid}")


def anonymize_codes(net: Anonymizer, w: torch.Tensor, w_t: torch.Tensor, margin, e_id: torch.Tensor | None,
                    split=None, prior=None, e_ut: torch.Tensor | None = None,
                    lesion: torch.Tensor | None = None, correction: float = 1.0) -> torch.Tensor:
    """The network's codes for sources ``w``: from the re-drawn start (``split``, ``prior``: redraw.py) when the
    network was trained from it, else from its own blend. ``e_id`` / ``e_ut`` / ``lesion``: E_id(x),
    E_ut.features(x) and E_ut.segment(x) of the sources (each needed when the network reads it; ``utility_views``).
    ``correction``: the share of the learned correction applied (``AnonymizeConfig.correction``)."""
    start = None
    if net.redraw > 0:
        if split is None or prior is None:
            raise CheckpointError(f"this anonymizer starts from the re-drawn code (strength {net.redraw:g}), which "
                                  "needs the preset's latent-split.* and latent-prior.* (gmia fit-split)")
        start = split.redraw(w, w_t, prior, net.redraw)
    return net(w, w_t, margin, e_id, start, e_ut, lesion, correction)


@torch.no_grad()
def utility_views(e_ut, x: torch.Tensor, lesion: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """E_ut.features(x) and, with ``lesion``, E_ut's lesion map of x, from one pass of E_ut."""
    if not lesion:
        return e_ut.features(x), None
    out = e_ut.outputs(x)
    return out["features"], torch.sigmoid(out["mask_logits"])


def reads_lesion(net: Anonymizer | None) -> bool:
    """Whether ``net`` (None: no network) reads the source's lesion map, i.e. ``utility_views(..., lesion=True)``."""
    return net is not None and net.lesion_grid > 0


def fitted_to(folder: str | Path) -> dict[str, str]:
    """role → sha256 of the weights in ``folder`` that an anonymizer trained there depends on."""
    return {role: read_card(folder, role)["sha256"] for role in FITTED_ROLES}


def nudge_codes(model, e_id, w: torch.Tensor, ref_id: torch.Tensor, seeds: list[int] | None,
                target: float) -> torch.Tensor:
    """Codes ``w`` moved, each by the smallest step that brings its identity cosine to ``target`` to first order:
    w − (cos − target)⁺ · ∇cos / ‖∇cos‖², with cos = cos(E_id(G(w)), ``ref_id``), G rendering with the noise of
    ``seeds`` (``noise_seeds``: what ``model.render`` takes).

    What the runner does first with a file the gate refused the network's code: the network misses the margin on
    about one image in five, mostly by a few hundredths, and one such step (a forward and backward pass of G and
    E_id) brought all 27 of 128 held-out phantom-cxr64 misses (20 of 128 phantom-face64) under the margin, at
    41 ms an image on one CPU thread against about 200 ms for the optimizer's steps, and with the utility distance
    barely moved (1.060 against 1.046 before the step). Only along E_id's gradient: the step is a few hundredths of
    a cosine, and the gate judges the result like any other file."""
    from .losses import identity_cosine

    with torch.enable_grad():
        code = w.detach().clone().requires_grad_(True)
        cos = identity_cosine(e_id.embed(model.render(code, seeds)), ref_id)
        (grad,) = torch.autograd.grad(cos.sum(), code)
    excess = (cos.detach().float() - target).clamp_min(0.0)
    grad = grad.float()
    scale = excess / grad.flatten(1).pow(2).sum(1).clamp_min(1e-12)
    return (code.detach() - scale.view(-1, *[1] * (w.dim() - 1)) * grad).detach()


def fallback_config(cfg):
    """The per-image optimizer's settings for a file the gate refused the network's code: "a few steps", stopping
    as soon as the hinge holds (patience 0; the retry adds its headroom)."""
    return dataclasses.replace(cfg, patience=0)


def load_anonymizer(folder: str | Path, shas: dict[str, str], device="cpu",
                    redraw: float | None = None, start: dict[str, str | None] | None = None) -> Anonymizer:
    """The anonymizer in ``folder``, after checking that it was trained against the weights ``shas`` (role →
    sha256) that the run loads, and from the start ``redraw`` the run asks for (None: any): a network trained for
    another generator or E_id, or that corrects another start, would be judged only by the gate and fail it row
    after row. ``start``: the sha256s of the latent prior and split the run draws its surrogates and start from
    (``START_FILES``); each is checked where the card recorded it."""
    folder = Path(folder)
    preset = folder.name
    fix = f"train one with `gmia train anonymizer --preset {preset} --checkpoints {folder.parent}`"
    if not (folder / f"{ANONYMIZER}.json").is_file():
        raise CheckpointError(f"--engine amortized needs {folder / (ANONYMIZER + '.safetensors')} and its card; {fix}, "
                              "or use --engine optimize")
    card = read_card(folder, ANONYMIZER)
    meta = card.get("meta", {})
    trained = meta.get("fitted_to", {})
    stale = [role for role in FITTED_ROLES if trained.get(role) != shas.get(role)]
    if stale:
        raise CheckpointError(f"{folder / (ANONYMIZER + '.json')}: trained for other {', '.join(stale)} weights than "
                              f"the ones in {folder}; {fix}")
    moved = [key for key, sha in (start or {}).items() if sha is not None and meta.get(key) not in (None, sha)]
    if moved:
        files = ", ".join(START_FILES[k] for k in moved)
        raise CheckpointError(f"{folder / (ANONYMIZER + '.json')}: trained with another {files} than the one in "
                              f"{folder} (its surrogates and start are other codes now); {fix}")
    trained_from = float(card.get("kwargs", {}).get("redraw", 0.0))
    if redraw is not None and trained_from != redraw:
        raise CheckpointError(f"{folder / (ANONYMIZER + '.json')}: trained from the start --redraw {trained_from:g}, "
                              f"this run asks for --redraw {redraw:g}; pass --redraw {trained_from:g}, or train one "
                              f"for this start with `gmia train anonymizer --preset {preset} "
                              f"--checkpoints {folder.parent} --redraw {redraw:g}`")
    return load_module(folder, ANONYMIZER, device)
