"""gmia's checkpoint format: one ``<name>.safetensors`` + ``<name>.json`` card per network, in a folder.

The card (``FORMAT = "gmia-checkpoint/1"``) records the class (a name from an explicit registry, never resolved
from arbitrary strings), its constructor kwargs, the sha256 of the weights file, the storage dtype and free
``meta``. Loading verifies the hash, rebuilds the class from the registry and loads with ``strict=True``; weights
are never unpickled.

    save_module(G, kwargs, "checkpoints/phantom-cxr64", "generator", meta={"kimg": 500}, dtype=torch.float16)
    G = load_module("checkpoints/phantom-cxr64", "generator")       # float32, eval mode

Foreign ``.pkl`` snapshots (NVlabs StyleGAN2-ADA, GMIA) enter only through ``import_official_pickle``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

from gmia.errors import CheckpointError
from gmia.fileio import atomic_path, atomic_write
from third_party.stylegan2_ada.legacy_pickle import LegacyFormatError, UnsafePickleError, one_line, read_snapshot
from third_party.stylegan2_ada.legacy_rebuild import rebuild_network, to_plain

__all__ = [
    "FORMAT",
    "MAX_PICKLE_BYTES",
    "changed_weights",
    "check_fitted",
    "import_official_pickle",
    "load_module",
    "read_card",
    "read_verified",
    "register_class",
    "registered_classes",
    "save_module",
    "sha256_file",
    "write_card",
]

FORMAT = "gmia-checkpoint/1"
MAX_PICKLE_BYTES = 4 << 30  # the largest official snapshot (1024 px, G + D + G_ema) is ~0.4 GB
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SNAPSHOT_NETWORKS = ("G", "G_ema", "D", "E")  # snapshot keys written by import_official_pickle, in this order

# Every class a gmia checkpoint card may name, and where it lives. The table is the whole list: loading a card
# imports the class's module from here, so it works whatever the caller happened to import, and no class is ever
# resolved from a string a file holds. ``register_class`` adds classes of your own (tests, extensions).
CHECKPOINT_CLASSES: dict[str, str] = {
    **{f"stylegan2_ada.{n}": f"third_party.stylegan2_ada:{n}"
       for n in ("Generator", "MappingNetwork", "SynthesisNetwork", "Discriminator", "ESModel", "Encoder")},
    "gmia.projection.AEGAN": "gmia.projection.model:AEGAN",
    "gmia.projection.WPlusEncoder": "gmia.projection.model:WPlusEncoder",
    "gmia.networks.IdentityNet": "gmia.networks.identity:IdentityNet",
    "gmia.networks.UtilityNet": "gmia.networks.utility:UtilityNet",
    "gmia.networks.PlainUtilityNet": "gmia.networks.plain_utility:PlainUtilityNet",
    "gmia.networks.MFMNet": "gmia.networks.mfm:MFMNet",
    "gmia.networks.AttackerNet": "gmia.networks.attacker:AttackerNet",
    "gmia.networks.XRVUtility": "gmia.networks.xrv:XRVUtility",
    "gmia.networks.XRVAutoencoder": "gmia.networks.xrv:XRVAutoencoder",
    "gmia.decoupling.Decoupler": "gmia.decoupling.decoupler:Decoupler",
    "gmia.anonymization.Anonymizer": "gmia.anonymization.amortized:Anonymizer",
}
_REGISTRY: dict[str, type[nn.Module]] = {}  # classes added with register_class()


def _resolve(name: str) -> type[nn.Module] | None:
    """The class a card's ``class`` names: a registered one, or one of the table's (its module imported now)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    where = CHECKPOINT_CLASSES.get(name)
    if where is None:
        return None
    module, attr = where.split(":")
    return getattr(importlib.import_module(module), attr)


def register_class(name: str, cls: type[nn.Module]) -> None:
    """Allow ``cls`` in checkpoint cards under ``name``. Re-registering the same pair is a no-op."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_class({name!r}, ...): expected an nn.Module subclass, got {cls!r}")
    known = _REGISTRY.get(name) or (CHECKPOINT_CLASSES.get(name) and _resolve(name))
    if known is not None and known is not cls:
        raise ValueError(f"checkpoint class name {name!r} is already registered to {known.__qualname__}")
    if _name_of(cls) not in (None, name):
        raise ValueError(f"{cls.__qualname__} is already registered under another name")
    _REGISTRY[name] = cls


def registered_classes() -> dict[str, type[nn.Module]]:
    """Every class a card may name (card class name -> class); imports the modules of the table."""
    return {**{name: _resolve(name) for name in CHECKPOINT_CLASSES}, **_REGISTRY}


def _name_of(cls: type) -> str | None:
    """The card name of ``cls``, or None for a class no card may name."""
    for name, c in _REGISTRY.items():
        if c is cls:
            return name
    return next((name for name, where in CHECKPOINT_CLASSES.items()
                 if where.endswith(f":{cls.__name__}") and _resolve(name) is cls), None)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _class_name(module: nn.Module) -> str:
    name = _name_of(type(module))
    if name is not None:
        return name
    raise CheckpointError(f"cannot save a {type(module).__qualname__}: its class is not registered; call "
                          f"gmia.checkpoints.register_class(name, {type(module).__name__}) first")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CheckpointError(f"checkpoint name {name!r}: use letters, digits, '_', '-' or '.' (no path separators)")
    return name


def save_module(
    module: nn.Module,
    kwargs: dict[str, Any],
    path_dir: str | Path,
    name: str,
    meta: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``<path_dir>/<name>.safetensors`` and its card ``<name>.json``; returns the card's path.

    kwargs: the constructor kwargs that rebuild ``module`` (JSON-serialisable).
    meta:   free JSON-serialisable metadata (training data, metrics, provenance...).
    dtype:  storage dtype of floating tensors (e.g. ``torch.float16`` to halve shipped files); loading casts
            back to float32.
    """
    _check_name(name)
    class_name = _class_name(module)
    card = {"format": FORMAT, "class": class_name, "kwargs": kwargs, "meta": meta or {}}
    try:
        card_text = json.dumps(card, indent=2, sort_keys=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {name!r}: kwargs and meta must be JSON-serialisable ({exc})") from None
    state = {}
    for key, value in module.state_dict().items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[key] = value.contiguous().clone()
    path_dir = Path(path_dir)
    path_dir.mkdir(parents=True, exist_ok=True)
    weights = path_dir / f"{name}.safetensors"
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})  # one key: safetensors writes several in random
        # order, and the same weights must give the same bytes (the card's sha256 says whether a result changed)
    card = json.loads(card_text)
    card.update(sha256=sha256_file(weights), dtype=str(dtype or torch.float32).removeprefix("torch."),
                num_tensors=len(state), num_parameters=sum(p.numel() for p in module.parameters()))
    card_path = path_dir / f"{name}.json"
    atomic_write(card_path, json.dumps(card, indent=2) + "\n")
    return card_path


def read_card(path_dir: str | Path, name: str) -> dict[str, Any]:
    """The JSON card of checkpoint ``name``, checked for format and keys (weights are not read)."""
    card_path = Path(path_dir) / f"{_check_name(name)}.json"
    if not card_path.is_file():
        raise CheckpointError(f"{card_path}: checkpoint card not found; expected {name}.json and "
                              f"{name}.safetensors in {Path(path_dir)} (save with gmia.checkpoints.save_module or "
                              "import a .pkl with `gmia import-checkpoint`)")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{card_path}: unreadable checkpoint card ({exc}); restore it from the source") from None
    found = card.get("format") if isinstance(card, dict) else None
    if found != FORMAT:
        raise CheckpointError(f"{card_path}: not a {FORMAT} card (format={found!r}); re-save it with save_module")
    for key, kind in (("class", str), ("kwargs", dict), ("sha256", str)):
        if not isinstance(card.get(key), kind):
            raise CheckpointError(f"{card_path}: card field {key!r} is missing or not a {kind.__name__}")
    return card


def changed_weights(path_dir: str | Path, recorded: dict[str, str]) -> list[str]:
    """The roles of ``recorded`` (role, or ``<role>_sha256`` → sha256 of the weights something was fitted or
    measured with) whose card in ``path_dir`` is now missing or names another sha256."""
    folder = Path(path_dir)
    changed = []
    for key, sha in recorded.items():
        role = key.removesuffix("_sha256").replace("_", "-")
        if not (folder / f"{role}.json").is_file() or read_card(folder, role).get("sha256") != sha:
            changed.append(role)
    return changed


def check_fitted(path_dir: str | Path, name: str, card: dict[str, Any], fix: str) -> None:
    """Refuse an artefact fitted to networks (a domain guard, a latent split) once those networks changed: its
    card's ``meta.fitted_to`` names the weights in ``path_dir`` it was fitted to (retraining stage 1 into a
    folder would otherwise leave the old guard beside the new generator, whose scores it was never calibrated on)."""
    stale = changed_weights(path_dir, (card.get("meta") or {}).get("fitted_to") or {})
    if stale:
        raise CheckpointError(f"{Path(path_dir) / name}.json was fitted to other weights ({', '.join(stale)} changed "
                              f"since); {fix}")


def write_card(path_dir: str | Path, name: str, class_name: str, kwargs: dict[str, Any],
               meta: dict[str, Any] | None = None, **fields: Any) -> Path:
    """Write the card ``<name>.json`` of ``<name>.safetensors`` (already in ``path_dir``) for files that are not
    an ``nn.Module``: format, class, kwargs, meta, the file's sha256, then ``fields``. Returns the card's path."""
    weights = Path(path_dir) / f"{_check_name(name)}.safetensors"
    card = {"format": FORMAT, "class": class_name, "kwargs": kwargs, "meta": meta or {},
            "sha256": sha256_file(weights), **fields}
    try:
        text = json.dumps(card, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {name!r}: kwargs and meta must be JSON-serialisable ({exc})") from None
    card_path = Path(path_dir) / f"{name}.json"
    atomic_write(card_path, text + "\n")
    return card_path


def read_verified(path_dir: str | Path, name: str, card: dict[str, Any]) -> bytes:
    """The bytes of ``<name>.safetensors`` after checking them against the sha256 of ``card``. Hashing and parsing
    the same bytes leaves no moment in which the file could be swapped."""
    weights = Path(path_dir) / f"{_check_name(name)}.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file missing; copy it next to its card {name}.json")
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != card["sha256"]:
        raise CheckpointError(f"{weights}: sha256 {digest[:12]}... does not match its card ({card['sha256'][:12]}...); "
                              "the file is corrupt or was replaced; restore it from the original checkpoint")
    return data


def load_module(path_dir: str | Path, name: str, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild checkpoint ``name`` from ``path_dir``: verified sha256, registry class, strict load, float32, eval."""
    card = read_card(path_dir, name)
    weights = Path(path_dir) / f"{name}.safetensors"
    cls = _resolve(card["class"])
    if cls is None:
        raise CheckpointError(f"{weights.with_suffix('.json')}: class {card['class']!r} is not registered; known: "
                              f"{sorted({*CHECKPOINT_CLASSES, *_REGISTRY})} (gmia.checkpoints.CHECKPOINT_CLASSES)")
    data = read_verified(path_dir, name, card)
    try:
        state = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{weights}: unreadable safetensors file ({exc})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        module = cls(**card["kwargs"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{weights.with_suffix('.json')}: kwargs do not build a {card['class']}: {exc}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights}: weights do not fit {card['class']}(**kwargs) from its card: "
                              f"{str(exc)[:400]}; re-export the checkpoint") from None
    return module.to(device).eval()


# ---- foreign pickles ------------------------------------------------------------------------------------------
_IMAGE_RANGE = {"Generator": [-1.0, 1.0], "Discriminator": [-1.0, 1.0], "ESModel": [0.0, 1.0], "Encoder": [0.0, 1.0]}


def _dataset_summary(value: Any) -> Any:
    """Non-text settings of training_set_kwargs (paths and names are left out of cards)."""
    try:
        plain = to_plain(value, "training_set_kwargs")
    except LegacyFormatError:
        return None
    if not isinstance(plain, dict):
        return None
    return {k: v for k, v in plain.items() if not isinstance(v, (str, dict, list)) or k == "class_name"}


def import_official_pickle(src: Path, dst: Path) -> Path:
    """Import an NVlabs StyleGAN2-ADA or GMIA ``.pkl`` into ``dst`` (a new or empty folder); returns ``dst``.

    Writes ``G``, ``G_ema``, ``D``, ``E`` (those present) as ``<key>.safetensors`` + ``<key>.json``, and
    ``import.json`` (source sha256, sha256 of each embedded module source, what was written). The pickle is
    read by a restricted unpickler: no code in it runs, its embedded source is only hashed, and anything outside
    the allowlist raises ``CheckpointError`` before any file is written.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise CheckpointError(f"{src}: no such file; give the path of a StyleGAN2-ADA/GMIA .pkl snapshot")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise CheckpointError(f"{dst}: already exists and is not an empty folder; choose a new destination")
    size = src.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise CheckpointError(f"{src}: {size} bytes is larger than any known snapshot ({MAX_PICKLE_BYTES}); refusing")
    data = src.read_bytes()
    source_sha = hashlib.sha256(data).hexdigest()
    try:
        snapshot = read_snapshot(data)
        networks = {k: rebuild_network(snapshot.entries[k], k) for k in _SNAPSHOT_NETWORKS
                    if snapshot.entries.get(k) is not None}
    except UnsafePickleError as exc:
        raise CheckpointError(f"{src}: refused as unsafe: {one_line(exc)}. Nothing was executed and nothing was "
                              "written; only import snapshots from a source you trust") from None
    except LegacyFormatError as exc:
        raise CheckpointError(f"{src}: not an importable StyleGAN2-ADA/GMIA snapshot: {one_line(exc)}. Nothing was "
                              "written") from None
    if not networks:
        raise CheckpointError(f"{src}: the snapshot has none of the networks {list(_SNAPSHOT_NETWORKS)}; nothing "
                              "was written")
    source = {"file": src.name, "sha256": source_sha, "format": "stylegan2-ada-pytorch persistence pickle",
              "module_src_sha256": sorted(snapshot.module_src_sha256)}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        for key, net in networks.items():
            meta = {"source": {**source, "key": key, "class_name": net.class_name,
                               "module_src_sha256": net.module_src_sha256},
                    "image_range": _IMAGE_RANGE[net.class_name]}
            save_module(net.module, net.kwargs, tmp, key, meta=meta)
        ignored = sorted(k for k in snapshot.entries if k not in networks and k != "training_set_kwargs")
        summary = {"format": FORMAT, "source": source, "networks": list(networks), "ignored_entries": ignored,
                   "training_set": _dataset_summary(snapshot.entries.get("training_set_kwargs"))}
        (tmp / "import.json").write_text(json.dumps(summary, indent=2) + "\n")
        if dst.exists():
            dst.rmdir()  # empty, checked above
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
