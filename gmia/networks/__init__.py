"""The networks that score images, and one line to get each of them, frozen.

    >>> from gmia import networks
    >>> e_id = networks.load("phantom-cxr64", "identity")    # IdentityNet: embed(x) → (N, 512) unit norm
    >>> e_ut = networks.load("phantom-cxr64", "utility")     # UtilityNet: features(x) (N, 512), logits(x)
    >>> e_ut2 = networks.load("phantom-cxr64", "utility2")   # PlainUtilityNet: a second family, same verbs
    >>> mfm = networks.load("phantom-cxr64", "mfm")          # MFMNet: features(x) (N, 512)
    >>> atk = networks.load("phantom-cxr64", "attacker")     # AttackerNet, for evaluation only

Every one takes float (N, 1|3, S, S) images in [0, 1] and adapts channels and size inside; ``load`` returns it
in eval mode with ``requires_grad_(False)`` on its weights, still differentiable with respect to the input.

Checkpoints live in ``<root>/<preset>/<role>.safetensors`` + ``<role>.json`` (gmia.checkpoints format). The
roles are kept apart by class: an ``identity`` checkpoint must hold an identity class and an ``attacker``
checkpoint an attacker class, so the evaluation-only attacker can never be loaded as the optimizer's E_id.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checkpoints import load_module, read_card
from ..config import PRESETS as _PRESETS
from ..errors import CheckpointError, ConfigError
from .attacker import AttackerNet
from .base import FrozenNet
from .identity import IdentityNet
from .mfm import MFMNet
from .plain_utility import PlainUtilityNet
from .utility import UtilityNet
from .xrv import XRVAutoencoder, XRVUtility

__all__ = ["ROLES", "ROLE_CLASSES", "load", "checkpoint_dir", "checkpoint_roots", "looked_in", "FrozenNet",
           "IdentityNet", "UtilityNet", "PlainUtilityNet", "MFMNet", "AttackerNet", "XRVUtility", "XRVAutoencoder"]

# Checkpoint class names (stored in cards; gmia.checkpoints.CHECKPOINT_CLASSES) → classes of this package.
_CLASSES: dict[str, type[FrozenNet]] = {
    "gmia.networks.IdentityNet": IdentityNet,
    "gmia.networks.UtilityNet": UtilityNet,
    "gmia.networks.PlainUtilityNet": PlainUtilityNet,
    "gmia.networks.MFMNet": MFMNet,
    "gmia.networks.AttackerNet": AttackerNet,
    "gmia.networks.XRVUtility": XRVUtility,
    "gmia.networks.XRVAutoencoder": XRVAutoencoder,
}

# The classes a checkpoint of each role may hold.
ROLE_CLASSES: dict[str, tuple[type[FrozenNet], ...]] = {
    "identity": (IdentityNet,),
    "utility": (UtilityNet, XRVUtility),
    "utility2": (PlainUtilityNet,),
    "mfm": (MFMNet, XRVAutoencoder),
    "attacker": (AttackerNet,),
}
ROLES = tuple(ROLE_CLASSES)


DEFAULT_ROOT = "checkpoints"


def checkpoint_roots(root: str | Path = DEFAULT_ROOT) -> list[Path]:
    """Where weights are looked up, in order. A root the user gave is the only place; the default ``checkpoints``
    is looked for in the current folder, then in ``$GMIA_HOME/checkpoints``, then beside the installed package
    (the shipped phantom weights of a checkout), so ``gmia anonymize`` works from any directory."""
    if str(root) != DEFAULT_ROOT:
        return [Path(root)]
    roots = [Path(DEFAULT_ROOT)]
    if os.environ.get("GMIA_HOME"):
        roots.append(Path(os.environ["GMIA_HOME"]) / DEFAULT_ROOT)
    roots.append(Path(__file__).resolve().parents[2] / DEFAULT_ROOT)
    return roots


def checkpoint_dir(preset: str, root: str | Path = DEFAULT_ROOT) -> Path:
    """Where the weights of ``preset`` live: ``<root>/<preset>`` for the first root of ``checkpoint_roots`` that
    has it, or ``root`` itself when it has no such folder but holds checkpoint cards directly (a user's
    ``CKPT=/models/gmia-cxr256``). Nothing found: the first candidate (errors name it and the others)."""
    roots = checkpoint_roots(root)
    for r in roots:
        if (r / preset).is_dir():
            return r / preset
    if len(roots) == 1 and any(roots[0].glob("*.json")):
        return roots[0]
    return roots[0] / preset


def looked_in(preset: str, root: str | Path = DEFAULT_ROOT) -> str:
    """The folders ``checkpoint_dir`` tried, for error messages."""
    return ", ".join(str(r / preset) for r in checkpoint_roots(root))


def load(preset: str, role: str, root: str | Path = "checkpoints", device: str | torch.device = "cpu") -> FrozenNet:
    """The frozen ``role`` network of ``preset`` from ``<root>/<preset>/<role>.safetensors`` (+ ``.json``).

    role: identity | utility | utility2 | mfm | attacker. Unknown presets or roles list the valid ones; missing weights
    say which file to provide and how to make it.
    """
    if preset not in _PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(_PRESETS)}")
    if role not in ROLE_CLASSES:
        raise ConfigError(f"unknown network role {role!r}; valid roles: {', '.join(ROLES)}")
    folder = checkpoint_dir(preset, root)
    weights, card_path = folder / f"{role}.safetensors", folder / f"{role}.json"
    if not weights.is_file() or not card_path.is_file():
        make = ("`make train-phantom` (or `gmia train {role} --preset {preset} --out {folder}`)"
                if preset.startswith("phantom") else
                f"`gmia train {role} --preset {preset} --data DIR --out {folder}`, or import torchxrayvision "
                "weights with gmia.networks.xrv.import_xrv")
        raise CheckpointError(f"no {role} network for preset {preset!r}: expected {role}.safetensors and "
                              f"{card_path.name} (looked in {looked_in(preset, root)}). "
                              f"Make them with {make.format(role=role, preset=preset, folder=folder)}, "
                              "or pass root=<folder holding <preset>/>.")
    card = read_card(folder, role)
    allowed = {n for n, c in _CLASSES.items() if c in ROLE_CLASSES[role]}
    if card["class"] not in allowed:
        raise CheckpointError(f"{card_path}: a {role} checkpoint must hold one of {sorted(allowed)}, found "
                              f"{card['class']!r}; the {role} and the other roles are kept in separate checkpoints")
    trained_for = card.get("meta", {}).get("preset")
    if trained_for is not None and trained_for != preset:
        raise CheckpointError(f"{card_path}: these weights were trained for preset {trained_for!r}, not {preset!r}; "
                              f"put them under {checkpoint_dir(trained_for, root)}")
    net = load_module(folder, role, device=device)
    return net.frozen()
