"""Rebuild our modules from the inert nodes of a snapshot read by ``legacy_pickle`` (spec §6.4, step 3).

For each network: map the official class name to our class (an explicit table, never a string lookup), turn the
recorded constructor arguments into plain Python, check them against a schema of known keys, types and bounds,
construct our module, flatten the node tree into a state dict, check every sub-node's class against our
submodule at the same path, and ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .discriminator import Discriminator
from .generator import ARCHITECTURES, Generator
from .gmia_model import Encoder, ESModel
from .legacy_pickle import LIMITS, EasyDictStub, LegacyFormatError, PersistentNode
from .ops import ACTIVATIONS

__all__ = ["REBUILDABLE", "ImportedNetwork", "flatten_state", "rebuild_network", "to_plain"]

# Official class name -> our class. Only these can be top-level networks of a snapshot.
REBUILDABLE: dict[str, type[nn.Module]] = {
    "Generator": Generator,
    "Discriminator": Discriminator,
    "ESModel": ESModel,
    "Encoder": Encoder,
}

_HOOK_KEYS = ("_backward_hooks", "_backward_pre_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
              "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
              "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
              "_load_state_dict_post_hooks")


# ---- constructor-argument schema ------------------------------------------------------------------------------
Check = Callable[[Any, str], Any]  # (value, dotted path) -> normalised value, or raises LegacyFormatError


def _bad(path: str, value: Any, expected: str) -> LegacyFormatError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:80] + "..."
    return LegacyFormatError(f"constructor argument {path} = {shown}: expected {expected}")


def _int(lo: int, hi: int, optional: bool = False) -> Check:
    def check(v, path):
        if v is None and optional:
            return None
        if type(v) is not int or not lo <= v <= hi:
            raise _bad(path, v, f"an int in [{lo}, {hi}]" + (" or None" if optional else ""))
        return v
    return check


def _float(lo: float, hi: float, optional: bool = False) -> Check:
    def check(v, path):
        if v is None and optional:
            return None
        if type(v) not in (int, float) or not math.isfinite(v) or not lo <= v <= hi:
            raise _bad(path, v, f"a number in [{lo}, {hi}]" + (" or None" if optional else ""))
        return v
    return check


def _bool(v, path):
    if type(v) is not bool:
        raise _bad(path, v, "True or False")
    return v


def _choice(options) -> Check:
    def check(v, path):
        if v not in options:
            raise _bad(path, v, f"one of {sorted(options)}")
        return v
    return check


def _filter(v, path):
    if not isinstance(v, list) or len(v) != 4 or not all(type(t) in (int, float) for t in v):
        raise _bad(path, v, "a list of 4 numbers (e.g. [1, 3, 3, 1])")
    return v


_DIM, _RES, _CH = _int(0, 1 << 16), _int(4, 4096), _int(1, 1 << 12)
_ACT = _choice(ACTIVATIONS)
_CLAMP = _float(0, 1e9, optional=True)
_SYNTHESIS = {
    "channel_base": _int(1, 1 << 22), "channel_max": _int(1, 1 << 14), "num_fp16_res": _int(0, 16),
    "conv_clamp": _CLAMP, "architecture": _choice(ARCHITECTURES), "resample_filter": _filter,
    "use_noise": _bool, "activation": _ACT, "fp16_channels_last": _bool, "kernel_size": _choice({3}),
}
_MAPPING = {
    "num_layers": _int(1, 64), "embed_features": _int(0, 1 << 16, True), "layer_features": _int(1, 1 << 16, True),
    "activation": _ACT, "lr_multiplier": _float(1e-6, 1e3),
}
_D_BLOCK = {"activation": _ACT, "resample_filter": _filter, "fp16_channels_last": _bool, "freeze_layers": _int(0, 1000)}
_TRUNK = {
    "c_dim": _DIM, "img_resolution": _RES, "img_channels": _CH, "architecture": _choice(ARCHITECTURES),
    "channel_base": _int(1, 1 << 22), "channel_max": _int(1, 1 << 14), "num_fp16_res": _int(0, 16),
    "conv_clamp": _CLAMP, "block_kwargs": _D_BLOCK,
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "Generator": {"z_dim": _DIM, "c_dim": _DIM, "w_dim": _int(1, 1 << 16), "img_resolution": _RES,
                  "img_channels": _CH, "synthesis_kwargs": _SYNTHESIS,
                  "mapping_kwargs": {**_MAPPING, "w_avg_beta": _float(0, 1, optional=True)}},
    "Discriminator": {**_TRUNK, "cmap_dim": _int(1, 1 << 16, True), "mapping_kwargs": _MAPPING,
                      "epilogue_kwargs": {"mbstd_group_size": _int(1, 1 << 16, True),
                                          "mbstd_num_channels": _int(0, 64), "activation": _ACT}},
    "ESModel": {"z_dim": _DIM, "c_dim": _choice({0}), "w_dim": _int(1, 1 << 16), "img_resolution": _RES,
                "img_channels": _CH, "synthesis_kwargs": _SYNTHESIS},
    "Encoder": {**_TRUNK, "c_dim": _choice({0}), "num_ws": _int(1, 64), "w_dim": _int(1, 1 << 16),
                "epilogue_kwargs": {"activation": _ACT}},
}


def to_plain(value: Any, path: str, depth: int = 0) -> Any:
    """EasyDict stubs / OrderedDicts -> dict, tuples -> list, numpy scalars -> Python; anything else refused.
    Nesting is bounded (records from ``legacy_pickle`` are trees of bounded size already)."""
    if depth > LIMITS["depth"]:
        raise LegacyFormatError(f"{path}: nested more than {LIMITS['depth']} levels deep")
    if isinstance(value, (dict, EasyDictStub, OrderedDict)):
        if not all(isinstance(k, str) for k in value):
            raise LegacyFormatError(f"{path}: dictionary keys must be strings")
        return {k: to_plain(v, f"{path}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if value is None or type(value) in (bool, int, float, str):
        return value
    raise LegacyFormatError(f"{path}: a {type(value).__name__} is not allowed in constructor arguments")


def _check_schema(kwargs: dict, schema: dict, path: str) -> dict:
    out = {}
    for key, value in kwargs.items():
        if key not in schema:
            raise LegacyFormatError(f"unknown constructor argument {path}.{key}; supported: {sorted(schema)}")
        rule = schema[key]
        if isinstance(rule, dict):
            if not isinstance(value, dict):
                raise _bad(f"{path}.{key}", value, "a dict")
            out[key] = _check_schema(value, rule, f"{path}.{key}")
        else:
            out[key] = rule(value, f"{path}.{key}")
    return out


# ---- node tree ------------------------------------------------------------------------------------------------
def _iter_nodes(node: PersistentNode, prefix: str = ""):
    """Yields (module path, node) depth-first, checking the Module-like structure of every state."""
    state = node.state
    for key in ("_parameters", "_buffers", "_modules"):
        if not isinstance(state.get(key), dict):
            raise LegacyFormatError(f"{prefix or '<root>'} ({node.class_name}): state lacks the dict {key}")
    for key in _HOOK_KEYS:
        if state.get(key):
            raise LegacyFormatError(f"{prefix or '<root>'} ({node.class_name}): non-empty {key}; refusing hooks")
    yield prefix, node
    for name, child in state["_modules"].items():
        if child is None:
            continue
        if not isinstance(name, str) or not isinstance(child, PersistentNode):
            raise LegacyFormatError(f"{prefix}{name}: child module is a {type(child).__name__}, not a persistent "
                                    "StyleGAN2-ADA object")
        yield from _iter_nodes(child, f"{prefix}{name}.")


def flatten_state(node: PersistentNode) -> OrderedDict[str, torch.Tensor]:
    """The node tree as a state dict: parameters then persistent buffers, then children (official order)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for prefix, sub in _iter_nodes(node):
        skip = sub.state.get("_non_persistent_buffers_set") or set()
        for kind in ("_parameters", "_buffers"):
            for name, tensor in sub.state[kind].items():
                if tensor is None or (kind == "_buffers" and name in skip):
                    continue
                if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
                    raise LegacyFormatError(f"{prefix}{name}: expected a tensor, got {type(tensor).__name__}")
                if not tensor.is_floating_point():
                    raise LegacyFormatError(f"{prefix}{name}: {tensor.dtype} weights; expected floating point")
                out[prefix + name] = tensor.detach()
    return out


@dataclass
class ImportedNetwork:
    """A rebuilt network: our module (eval mode, CPU, float32), its constructor kwargs, and provenance."""

    module: nn.Module
    class_name: str           # the official class name (== our class name)
    kwargs: dict[str, Any]    # validated constructor kwargs, JSON-safe
    module_src_sha256: list[str]  # sha256 of every module source embedded for this network


def rebuild_network(node: Any, key: str) -> ImportedNetwork:
    """Rebuild the snapshot entry ``key`` (e.g. 'G_ema') from its node. Raises ``LegacyFormatError``."""
    if not isinstance(node, PersistentNode):
        raise LegacyFormatError(f"snapshot entry {key!r} is a {type(node).__name__}, not a persistent network")
    cls = REBUILDABLE.get(node.class_name)
    if cls is None:
        raise LegacyFormatError(f"snapshot entry {key!r} is a {node.class_name}; importable: {sorted(REBUILDABLE)}")
    args = to_plain(node.state.get("_init_args", ()), f"{key}._init_args")
    kwargs = to_plain(node.state.get("_init_kwargs", {}), f"{key}._init_kwargs")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise LegacyFormatError(f"{key}: _init_args must be a tuple and _init_kwargs a dict")
    _check_schema(kwargs, SCHEMAS[node.class_name], key)  # unknown keyword names first: the clearest message
    try:
        bound = inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as exc:
        raise LegacyFormatError(f"{key} ({node.class_name}): constructor arguments do not fit: {exc}") from None
    kwargs = _check_schema(dict(bound.arguments), SCHEMAS[node.class_name], key)
    try:
        module = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise LegacyFormatError(f"{key} ({node.class_name}): cannot build the network: {exc}") from None
    shas = []
    for path, sub in _iter_nodes(node):
        path = path.rstrip(".")
        try:
            ours = module.get_submodule(path)
        except AttributeError:
            raise LegacyFormatError(f"{key}: the snapshot has a submodule {path!r} ({sub.class_name}) that this "
                                    "configuration does not") from None
        if type(ours).__name__ != sub.class_name:
            raise LegacyFormatError(f"{key}.{path}: snapshot class {sub.class_name}, ours {type(ours).__name__}")
        if sub.module_src_sha256 not in shas:
            shas.append(sub.module_src_sha256)
    state = flatten_state(node)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LegacyFormatError(f"{key} ({node.class_name}): weights do not fit the rebuilt network: "
                                f"{str(exc)[:600]}") from None
    module.eval().requires_grad_(False)
    return ImportedNetwork(module, node.class_name, kwargs, shas)
