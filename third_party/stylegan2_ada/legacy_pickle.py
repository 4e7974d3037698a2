"""A restricted reader for StyleGAN2-ADA / GMIA ``.pkl`` snapshots (spec §6): nothing in the file ever runs.

Official snapshots pickle each network as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``, where
``meta`` carries the *source code* of the defining module; the official loader ``exec``s it. Here:

* ``RestrictedUnpickler.find_class`` resolves only an exact allowlist of globals (``ALLOWED_GLOBALS``); every
  other global (``os.system``, ``builtins.eval``, ...) raises ``UnsafePickleError`` before anything is called.
  Persistent ids are refused.
* The persistence hook is replaced by a function that checks ``meta`` and returns an inert ``PersistentNode``
  (class name + state). ``module_src`` is only hashed (sha256, for provenance), never compiled or executed.
* Tensor storages are decoded by ``torch.load(weights_only=True)``; numpy scalars by ``np.frombuffer``;
  ``dnnlib.util.EasyDict`` becomes a plain dict subclass. Object dtypes, hooks and extra state are refused.

``legacy_rebuild`` turns the nodes into our modules. Remaining risk: a pickle bomb can still exhaust memory or
CPU; ``read_snapshot`` caps the number of tensors and callers cap the file size.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "ALLOWED_GLOBALS",
    "EasyDictStub",
    "OFFICIAL_CLASS_NAMES",
    "PERSISTENCE_VERSION",
    "LegacyFormatError",
    "PersistentNode",
    "RestrictedUnpickler",
    "Snapshot",
    "UnsafePickleError",
    "read_snapshot",
]

PERSISTENCE_VERSION = 6  # torch_utils.persistence format version of every known snapshot

# Persistent classes that may appear in official and GMIA snapshots (the node tree is checked against our modules).
OFFICIAL_CLASS_NAMES = frozenset({
    "Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer", "ToRGBLayer",
    "FullyConnectedLayer", "Conv2dLayer", "Discriminator", "DiscriminatorBlock", "DiscriminatorEpilogue",
    "MinibatchStdLayer", "ESModel", "Encoder", "EncoderEpilogue", "AugmentPipe",
})

# The exact allowlist: (module, name) as written in the pickle -> the attribute name of RestrictedUnpickler that
# provides it. Nothing else is ever imported or called.
ALLOWED_GLOBALS: dict[tuple[str, str], str] = {
    ("collections", "OrderedDict"): "_ordered_dict",
    ("builtins", "set"): "_set",
    ("__builtin__", "set"): "_set",
    ("torch._utils", "_rebuild_tensor_v2"): "_rebuild_tensor_v2",
    ("torch._utils", "_rebuild_parameter"): "_rebuild_parameter",
    ("torch._utils", "_rebuild_parameter_with_state"): "_rebuild_parameter_with_state",
    ("torch.storage", "_load_from_bytes"): "_load_from_bytes",
    ("numpy", "dtype"): "_numpy_dtype",
    ("numpy.core.multiarray", "scalar"): "_numpy_scalar",
    ("numpy._core.multiarray", "scalar"): "_numpy_scalar",
    ("dnnlib.util", "EasyDict"): "_easydict",
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): "_reconstruct_persistent_obj",
    ("_codecs", "encode"): "_codecs_encode",  # protocol-2 bytes only
}

_META_KEYS = frozenset({"type", "version", "module_src", "class_name", "state"})
_NUMPY_SCALAR_KINDS = "biufc"  # bool, int, uint, float, complex


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for something outside the allowlist (a global, a persistent id, an object dtype...)."""


class LegacyFormatError(ValueError):
    """The file is safe to read but is not a snapshot we can rebuild (structure, kwargs or weights differ)."""


class EasyDictStub(dict):
    """Inert stand-in for ``dnnlib.util.EasyDict``: a plain dict, rebuilt by NEWOBJ + SETITEMS."""


@dataclass(frozen=True, slots=True)  # slots: a later BUILD opcode cannot rewrite a checked node
class PersistentNode:
    """One persistent object from the pickle: its class name, its ``__dict__`` and its source's sha256."""

    class_name: str
    state: dict
    module_src_sha256: str


def _check_no_hooks(hooks: Any, what: str) -> None:
    if hooks is not None and (not isinstance(hooks, dict) or len(hooks) > 0):
        raise UnsafePickleError(f"{what}: tensor backward hooks are not allowed in a weights file")


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only ``ALLOWED_GLOBALS`` and never executes embedded source."""

    def __init__(self, file: io.BufferedIOBase, max_tensors: int = 100_000):
        super().__init__(file, encoding="latin1")
        self.max_tensors = max_tensors
        self.num_tensors = 0
        self.module_src_sha256: dict[str, str] = {}  # sha256 -> first class name seen with that source

    # ---- the gate ------------------------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Callable:
        attr = ALLOWED_GLOBALS.get((module, name))
        if attr is None:
            hint = " (a TensorFlow-era pickle; not supported)" if module.startswith("dnnlib.tflib") else ""
            raise UnsafePickleError(
                f"the pickle references the Python global '{module}.{name}', which is not on the allowlist of a "
                f"StyleGAN2-ADA snapshot{hint}; it was not imported or called")
        return getattr(self, attr)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("the pickle uses persistent ids, which StyleGAN2-ADA snapshots never contain")

    # ---- allowed callables (each validates its arguments) ---------------------------------------------------
    _ordered_dict = OrderedDict
    _set = set
    _easydict = EasyDictStub

    def _reconstruct_persistent_obj(self, meta: Any) -> PersistentNode:
        if not isinstance(meta, dict) or set(meta) != _META_KEYS:
            keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
            raise LegacyFormatError(f"persistent object record has keys {keys}; expected {sorted(_META_KEYS)}")
        if meta["type"] != "class":
            raise LegacyFormatError(f"persistent object of type {meta['type']!r}; only 'class' is supported")
        if meta["version"] != PERSISTENCE_VERSION:
            raise LegacyFormatError(f"persistence format version {meta['version']!r}; expected {PERSISTENCE_VERSION}")
        class_name, src, state = meta["class_name"], meta["module_src"], meta["state"]
        if not isinstance(class_name, str) or class_name not in OFFICIAL_CLASS_NAMES:
            raise LegacyFormatError(f"persistent class {class_name!r} is not a known StyleGAN2-ADA/GMIA class; "
                                    f"known: {sorted(OFFICIAL_CLASS_NAMES)}")
        if not isinstance(src, str) or not isinstance(state, dict):
            raise LegacyFormatError(f"persistent object {class_name}: module_src must be text and state a dict")
        sha = hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest()  # hashed only, never executed
        self.module_src_sha256.setdefault(sha, class_name)
        return PersistentNode(class_name, state, sha)

    def _load_from_bytes(self, data: Any) -> Any:
        if not isinstance(data, (bytes, bytearray)):
            raise UnsafePickleError(f"tensor storage must be bytes; got {type(data).__name__}")
        try:
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
        except Exception as exc:  # the weights-only unpickler refuses anything but tensor data
            raise UnsafePickleError(f"a tensor storage could not be decoded safely: {exc}") from None
        if not isinstance(storage, (torch.storage.TypedStorage, torch.storage.UntypedStorage)):
            raise UnsafePickleError(f"a tensor storage decoded to {type(storage).__name__}, not a storage")
        return storage

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad, backward_hooks,
                           metadata=None) -> torch.Tensor:
        self.num_tensors += 1
        if self.num_tensors > self.max_tensors:
            raise UnsafePickleError(f"more than {self.max_tensors} tensors; refusing (possible pickle bomb)")
        if not isinstance(storage, (torch.storage.TypedStorage, torch.storage.UntypedStorage)):
            raise UnsafePickleError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
        ints = [storage_offset, *size, *stride] if isinstance(size, tuple) and isinstance(stride, tuple) else None
        if ints is None or not all(type(v) is int for v in ints) or not isinstance(requires_grad, bool):
            raise UnsafePickleError("malformed tensor record (offset, size, stride must be ints)")
        _check_no_hooks(backward_hooks, "tensor")
        if metadata:
            raise UnsafePickleError("tensor metadata is not allowed in a weights file")
        try:
            return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, OrderedDict())
        except RuntimeError as exc:  # e.g. size/stride out of the storage's bounds
            raise UnsafePickleError(f"malformed tensor record: {exc}") from None

    def _rebuild_parameter(self, data, requires_grad, backward_hooks) -> torch.nn.Parameter:
        if not isinstance(data, torch.Tensor) or not isinstance(requires_grad, bool):
            raise UnsafePickleError("malformed parameter record")
        _check_no_hooks(backward_hooks, "parameter")
        return torch.nn.Parameter(data, requires_grad=requires_grad)

    def _rebuild_parameter_with_state(self, data, requires_grad, backward_hooks, state) -> torch.nn.Parameter:
        if state:
            raise UnsafePickleError("extra parameter state (attributes on a Parameter) is not allowed")
        return self._rebuild_parameter(data, requires_grad, backward_hooks)

    def _numpy_dtype(self, spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
        if not isinstance(spec, str):
            raise UnsafePickleError(f"numpy dtype from a {type(spec).__name__}; only type codes are allowed")
        dtype = np.dtype(spec, bool(align), bool(copy))
        if dtype.hasobject:
            raise UnsafePickleError(f"numpy object dtype {spec!r} is not allowed")
        return dtype

    def _numpy_scalar(self, dtype: Any, data: Any = None) -> np.generic:
        if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in _NUMPY_SCALAR_KINDS:
            raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} is not allowed (numbers only)")
        if isinstance(data, str):  # protocol-2 pickles decoded with latin1
            data = data.encode("latin1")
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise UnsafePickleError("malformed numpy scalar record")
        return np.frombuffer(data, dtype=dtype)[0]

    def _codecs_encode(self, obj: Any, encoding: Any = "utf-8") -> bytes:
        if not isinstance(obj, str) or encoding != "latin1":
            raise UnsafePickleError("_codecs.encode is allowed only as protocol 2's str -> bytes (latin1)")
        return obj.encode("latin1")


@dataclass
class Snapshot:
    """What a snapshot holds, inert: its top-level dict and the sha256 of every embedded module source."""

    entries: dict[str, Any]
    module_src_sha256: dict[str, str] = field(default_factory=dict)  # sha256 -> a class name defined there
    num_tensors: int = 0


def read_snapshot(data: bytes, max_tensors: int = 100_000) -> Snapshot:
    """Unpickle ``data`` with ``RestrictedUnpickler``. Raises ``UnsafePickleError`` or ``LegacyFormatError``."""
    unpickler = RestrictedUnpickler(io.BytesIO(data), max_tensors=max_tensors)
    try:
        obj = unpickler.load()
    except (UnsafePickleError, LegacyFormatError):
        raise
    except Exception as exc:  # truncated or malformed stream, wrong opcodes, ...
        raise LegacyFormatError(f"not a readable pickle: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise LegacyFormatError(f"the pickle holds a {type(obj).__name__}, not a snapshot dict "
                                "(keys 'G', 'D', 'G_ema', ...)")
    return Snapshot(dict(obj), dict(unpickler.module_src_sha256), unpickler.num_tensors)
