"""A restricted reader for StyleGAN2-ADA / GMIA ``.pkl`` snapshots (spec §6): nothing in the file ever runs.

Official snapshots pickle each network as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``, where
``meta`` carries the *source code* of the defining module; the official loader ``exec``s it. Here the file is
read by ``RestrictedUnpickler``, built on ``safe_unpickler.SafeUnpickler`` (every opcode that calls, builds or
fills an object is checked; bounded work; checked records are read-only). On top of that:

* ``find_class`` resolves only an exact allowlist of globals (``ALLOWED_GLOBALS``); every other global
  (``os.system``, ``builtins.eval``, ...) raises ``UnsafePickleError`` before anything is called.
* The persistence hook checks ``meta`` and returns an inert ``PersistentNode``: class name, a read-only copy of
  the state (bounded, so a self-referencing or shared-reference structure is refused instead of expanded), sha256
  of the source (hashed only, never compiled). Module trees are bounded in size and depth.
* Numpy: dtypes are plain number types only; BUILD on one must carry exactly the state numpy writes for such a
  type (no sub-array, fields or objects). Scalars are read with a dtype of ours of the checked kind and size,
  never with the object from the file.
* Tensors: storages are decoded here from torch's legacy format (through the same checked opcodes), so only the
  bytes present are read or allocated; a tensor's size, stride and offset are checked against its storage
  before the view is made. Hooks, tensor state and object dtypes are refused.

``legacy_rebuild`` turns the nodes into our modules.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .safe_unpickler import (
    LIMITS,
    EasyDictStub,
    FrozenDict,
    LegacyFormatError,
    SafeUnpickler,
    UnsafePickleError,
    one_line,
    plain_key,
)

__all__ = [
    "ALLOWED_GLOBALS",
    "EasyDictStub",
    "FrozenDict",
    "LIMITS",
    "OFFICIAL_CLASS_NAMES",
    "PERSISTENCE_VERSION",
    "LegacyFormatError",
    "PersistentNode",
    "RestrictedUnpickler",
    "Snapshot",
    "UnsafePickleError",
    "one_line",
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
_NUMPY_TYPES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16")
_TORCH_MAGIC, _TORCH_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001  # torch's legacy (non-zip) serialization
_STORAGE_TYPES = {f"{name}Storage": dtype for name, dtype in (
    ("Float", torch.float32), ("Half", torch.float16), ("BFloat16", torch.bfloat16), ("Double", torch.float64),
    ("Long", torch.int64), ("Int", torch.int32), ("Short", torch.int16), ("Char", torch.int8), ("Byte", torch.uint8))}


@dataclass(frozen=True, slots=True)
class PersistentNode:
    """One persistent object: its class name, a read-only copy of its ``__dict__``, its source's sha256, and the
    size and depth of the module tree under it (``state['_modules']``)."""

    class_name: str
    state: FrozenDict
    module_src_sha256: str
    tree_nodes: int = 1
    tree_depth: int = 1


def _shown(value: Any) -> str:
    """A short repr of a plain value; the type name of anything else (never the contents of a foreign object)."""
    if type(value) not in (str, int, float, bool, type(None)):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _check_no_hooks(hooks: Any, what: str) -> None:
    if hooks is not None and (not isinstance(hooks, dict) or len(hooks) > 0):
        raise UnsafePickleError(f"{what}: tensor backward hooks are not allowed in a weights file")


class _DtypeRecord:
    """A dtype object handed to the pickle, and the dtype of ours that scalars of it are read with."""

    __slots__ = ("obj", "safe", "built")

    def __init__(self, obj: np.dtype, safe: np.dtype):
        self.obj, self.safe, self.built = obj, safe, False


class RestrictedUnpickler(SafeUnpickler):
    """Resolves only ``ALLOWED_GLOBALS``; each allowed callable validates its arguments; embedded source is only
    hashed."""

    def __init__(self, file: io.BufferedIOBase, max_tensors: int = 100_000, max_opcodes: int = LIMITS["opcodes"]):
        super().__init__(file, max_opcodes)
        self.max_tensors, self.num_tensors = max_tensors, 0
        self.module_src_sha256: dict[str, str] = {}  # sha256 -> first class name seen with that source
        self._dtypes: dict[int, _DtypeRecord] = {}

    def find_class(self, module: str, name: str) -> Callable:
        attr = ALLOWED_GLOBALS.get((module, name))
        if attr is None:
            hint = " (a TensorFlow-era pickle; not supported)" if module.startswith("dnnlib.tflib") else ""
            raise UnsafePickleError(
                f"the pickle references the Python global '{one_line(module, 80)}.{one_line(name, 80)}', which is "
                f"not on the allowlist of a StyleGAN2-ADA snapshot{hint}; it was not imported or called")
        return getattr(self, attr)

    def describe(self, obj: Any) -> str:
        return f"persistent object {obj.class_name}" if isinstance(obj, PersistentNode) else type(obj).__name__

    def build(self, inst: Any, state: Any) -> None:
        if isinstance(inst, np.dtype):
            self._build_dtype(inst, state)
        else:
            super().build(inst, state)

    # ---- allowed callables ---------------------------------------------------------------------------------
    _easydict = EasyDictStub  # only ever created empty, by NEWOBJ

    def _ordered_dict(self, *args) -> OrderedDict:
        if args:  # an OrderedDict reduces to OrderedDict() and is filled by SETITEMS (plain keys only)
            raise UnsafePickleError("collections.OrderedDict called with arguments; snapshots fill it by SETITEMS")
        return OrderedDict()

    def _set(self, items: Any = ()) -> set:
        if type(items) not in (list, tuple):
            raise UnsafePickleError(f"builtins.set of a {type(items).__name__}; expected a list of plain values")
        return {plain_key(v) for v in items}

    def _reconstruct_persistent_obj(self, meta: Any) -> PersistentNode:
        if type(meta) is not dict or set(meta) != _META_KEYS:
            keys = sorted(map(str, meta))[:10] if type(meta) is dict else type(meta).__name__
            raise LegacyFormatError(f"persistent object record has keys {keys}; expected {sorted(_META_KEYS)}")
        if type(meta["type"]) is not str or meta["type"] != "class":
            raise LegacyFormatError(f"persistent object of type {_shown(meta['type'])}; only 'class' is supported")
        if type(meta["version"]) is not int or meta["version"] != PERSISTENCE_VERSION:
            raise LegacyFormatError(f"persistence format version {_shown(meta['version'])}; expected "
                                    f"{PERSISTENCE_VERSION}")
        class_name, src, state = meta["class_name"], meta["module_src"], meta["state"]
        if type(class_name) is not str or class_name not in OFFICIAL_CLASS_NAMES:
            raise LegacyFormatError(f"persistent class {_shown(class_name)} is not a known StyleGAN2-ADA/GMIA "
                                    f"class; known: {sorted(OFFICIAL_CLASS_NAMES)}")
        if type(src) is not str or type(state) not in (dict, OrderedDict, EasyDictStub):
            raise LegacyFormatError(f"persistent object {class_name}: module_src must be text and state a dict")
        frozen = self.freeze(state)
        modules = frozen.get("_modules")
        children = [c for c in modules.values() if isinstance(c, PersistentNode)] if isinstance(modules, dict) else []
        tree_nodes = 1 + sum(c.tree_nodes for c in children)
        tree_depth = 1 + max((c.tree_depth for c in children), default=0)
        if tree_nodes > LIMITS["tree_nodes"] or tree_depth > LIMITS["tree_depth"]:
            raise UnsafePickleError(f"persistent object {class_name}: a module tree of {tree_nodes} objects, "
                                    f"{tree_depth} deep (limits {LIMITS['tree_nodes']}, {LIMITS['tree_depth']}); "
                                    "shared or nested submodules without bound")
        sha = hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest()  # hashed only, never executed
        self.module_src_sha256.setdefault(sha, class_name)
        return PersistentNode(class_name, frozen, sha, tree_nodes, tree_depth)

    def _load_from_bytes(self, data: Any) -> torch.storage.TypedStorage:
        if type(data) not in (bytes, bytearray):
            raise UnsafePickleError(f"tensor storage must be bytes; got {type(data).__name__}")
        return _decode_storage(bytes(data))

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad, backward_hooks,
                           metadata=None) -> torch.Tensor:
        self.num_tensors += 1
        if self.num_tensors > self.max_tensors:
            raise UnsafePickleError(f"more than {self.max_tensors} tensors; refusing (possible pickle bomb)")
        if not isinstance(storage, torch.storage.TypedStorage):
            raise UnsafePickleError(f"tensor rebuilt from a {self.describe(storage)}, not a storage")
        _check_view(storage, storage_offset, size, stride)
        if type(requires_grad) is not bool:
            raise UnsafePickleError("malformed tensor record (requires_grad must be True or False)")
        _check_no_hooks(backward_hooks, "tensor")
        if metadata:
            raise UnsafePickleError("tensor metadata is not allowed in a weights file")
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, OrderedDict())

    def _rebuild_parameter(self, data, requires_grad, backward_hooks) -> torch.nn.Parameter:
        if not isinstance(data, torch.Tensor) or type(requires_grad) is not bool:
            raise UnsafePickleError("malformed parameter record")
        _check_no_hooks(backward_hooks, "parameter")
        return torch.nn.Parameter(data, requires_grad=requires_grad)

    def _rebuild_parameter_with_state(self, data, requires_grad, backward_hooks, state) -> torch.nn.Parameter:
        if state:
            raise UnsafePickleError("extra parameter state (attributes on a Parameter) is not allowed")
        return self._rebuild_parameter(data, requires_grad, backward_hooks)

    def _numpy_dtype(self, spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
        if type(spec) is not str or spec not in _NUMPY_TYPES:
            what = "an object dtype" if type(spec) is str and spec.startswith("O") else "not a plain number type"
            raise UnsafePickleError(f"numpy dtype {_shown(spec)} is {what}; snapshots hold only "
                                    f"{', '.join(_NUMPY_TYPES)}")
        if type(align) not in (bool, int) or align or type(copy) not in (bool, int) or not copy:
            raise UnsafePickleError(f"numpy.dtype({spec!r}) with align/copy other than numpy's own (False, True)")
        obj = np.dtype(spec, False, True)  # a copy, never numpy's shared instance
        self._dtypes[id(obj)] = _DtypeRecord(obj, np.dtype(spec))
        return obj

    def _build_dtype(self, obj: np.dtype, state: Any) -> None:
        """Accept only the state numpy writes for a plain number type: (3, order, None, None, None, -1, -1, 0)."""
        record = self._dtypes.get(id(obj))
        if record is None or record.obj is not obj or record.built:
            raise UnsafePickleError("the pickle sets the state of a numpy dtype it did not just create (BUILD)")
        spec = record.safe.str[1:]
        if type(state) is not tuple or len(state) != 8:
            raise UnsafePickleError(f"numpy dtype {spec}: a state that is not numpy's version-3 record")
        version, order, subarray, names, fields, elsize, alignment, flags = state
        orders = ("|",) if record.safe.itemsize == 1 else ("<", ">")
        problems = [what for what, bad in (
            ("version", type(version) is not int or version != 3),
            ("byte order", type(order) is not str or order not in orders),
            ("sub-array", subarray is not None),
            ("fields", names is not None or fields is not None),
            ("item size", type(elsize) is not int or elsize != -1 or type(alignment) is not int or alignment != -1),
            ("flags", type(flags) is not int or flags != 0),
        ) if bad]
        if problems:
            raise UnsafePickleError(f"numpy dtype {spec}: unexpected {', '.join(problems)} in its state; only plain "
                                    "number types are allowed (no sub-array, fields or objects)")
        record.safe = record.safe.newbyteorder(order) if order != "|" else record.safe
        record.built = True

    def _numpy_scalar(self, dtype: Any, data: Any = None) -> np.generic:
        record = self._dtypes.get(id(dtype))
        if record is None or record.obj is not dtype:
            raise UnsafePickleError(f"numpy scalar of a {self.describe(dtype)} that is not a checked numpy dtype")
        if type(data) is str:  # protocol-2 pickles decoded with latin1
            data = data.encode("latin1")
        if type(data) is not bytes or len(data) != record.safe.itemsize:
            raise UnsafePickleError(f"malformed numpy scalar record: a {record.safe.str[1:]} takes "
                                    f"{record.safe.itemsize} bytes")
        return np.frombuffer(data, dtype=record.safe)[0]  # our dtype, checked size: reads exactly ``data``

    def _codecs_encode(self, obj: Any, encoding: Any = "utf-8") -> bytes:
        if type(obj) is not str or encoding != "latin1":
            raise UnsafePickleError("_codecs.encode is allowed only as protocol 2's str -> bytes (latin1)")
        return obj.encode("latin1")


# ---- tensor storages ------------------------------------------------------------------------------------------
class _StorageHeader(SafeUnpickler):
    """One of the small pickles of torch's legacy storage format: ``torch.<Type>Storage`` resolves to its dtype,
    the persistent id is the storage record (checked by ``_decode_storage``)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
        raise UnsafePickleError(f"a tensor storage references '{one_line(module, 80)}.{one_line(name, 80)}'; only "
                                "torch.<Type>Storage is allowed there")

    def persistent_load(self, pid: Any) -> Any:
        return pid


def _decode_storage(data: bytes) -> torch.storage.TypedStorage:
    """The storage in ``data`` as ``torch.save(storage, _use_new_zipfile_serialization=False)`` writes it: five
    small pickles (magic number, protocol, system info, the storage record, its key), the element count (int64),
    the elements. Only the bytes present are read, and nothing is allocated before their size is checked."""
    f = io.BytesIO(data)
    magic, protocol, info, record, keys = (_StorageHeader(f, max_opcodes=1_000).load() for _ in range(5))
    fields = record if type(record) is tuple and len(record) == 6 else (None,) * 6
    tag, dtype, key, location, numel, view = fields
    if not (type(magic) is int and magic == _TORCH_MAGIC and type(protocol) is int and protocol == _TORCH_PROTOCOL
            and type(info) is dict and info.get("little_endian") is True and type(tag) is str and tag == "storage"
            and isinstance(dtype, torch.dtype) and type(key) is str and type(location) is str and type(numel) is int
            and numel >= 0 and view is None and type(keys) is list and len(keys) == 1 and keys[0] == key):
        raise UnsafePickleError("a tensor storage is not in torch's legacy storage format (one CPU storage of "
                                "numbers, little-endian)")
    count = int.from_bytes(f.read(8), "little")
    raw = f.read()
    if count != numel or len(raw) != numel * dtype.itemsize:
        raise UnsafePickleError(f"a tensor storage record says {numel} elements of {dtype}, but holds {len(raw)} "
                                "bytes")
    flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
    return flat._typed_storage()


def _check_view(storage: torch.storage.TypedStorage, offset: Any, size: Any, stride: Any) -> None:
    """The view (offset, size, stride) must lie inside the storage: checked before torch makes it."""
    ok = type(size) is tuple and type(stride) is tuple and len(size) == len(stride) <= 16
    ints = [offset, *size, *stride] if ok else []
    if not ok or not all(type(v) is int and v >= 0 for v in ints):
        raise UnsafePickleError("malformed tensor record (offset, size and stride must be non-negative ints)")
    numel = storage._size()  # _size: size() without the TypedStorage deprecation warning
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= numel or offset > numel:
        raise UnsafePickleError(f"a tensor of size {list(size)} at offset {offset} does not fit its storage of "
                                f"{numel} elements")


@dataclass
class Snapshot:
    """What a snapshot holds, inert: its top-level dict (read-only records) and the sha256 of every embedded
    module source."""

    entries: dict[str, Any]
    module_src_sha256: dict[str, str] = field(default_factory=dict)  # sha256 -> a class name defined there
    num_tensors: int = 0


def read_snapshot(data: bytes, max_tensors: int = 100_000, max_opcodes: int = LIMITS["opcodes"]) -> Snapshot:
    """Unpickle ``data`` with ``RestrictedUnpickler``. Raises ``UnsafePickleError`` or ``LegacyFormatError``, each
    with a one-line message."""
    unpickler = RestrictedUnpickler(io.BytesIO(data), max_tensors=max_tensors, max_opcodes=max_opcodes)
    try:
        obj = unpickler.load()
        if type(obj) not in (dict, OrderedDict, EasyDictStub) or not all(type(k) is str for k in obj):
            raise LegacyFormatError(f"the pickle holds a {type(obj).__name__}, not a snapshot dict "
                                    "(keys 'G', 'D', 'G_ema', ...)")
        entries = unpickler.freeze(obj)
    except (UnsafePickleError, LegacyFormatError):
        raise
    except Exception as exc:  # truncated or malformed stream, wrong opcodes, ...
        raise LegacyFormatError(f"not a readable pickle: {type(exc).__name__}: {one_line(exc, 200)}") from None
    return Snapshot(entries, dict(unpickler.module_src_sha256), unpickler.num_tensors)
