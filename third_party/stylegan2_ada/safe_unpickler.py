"""The opcode layer of the restricted snapshot reader: a pure-Python unpickler in which every opcode that calls,
builds or fills an object is checked, and all work is bounded. ``legacy_pickle`` adds what a StyleGAN2-ADA
snapshot may hold (its allowlist of globals, persistent objects, tensors, numpy scalars).

* Opcodes that snapshots never use (INST, OBJ, extension codes, out-of-band buffers) are refused.
* REDUCE calls only bound methods of the unpickler itself: what ``find_class`` of a subclass hands out.
  NEWOBJ creates only an empty ``EasyDictStub``.
* BUILD (``__setstate__``) goes to ``build``, which refuses everything but an empty state on a dict; a subclass
  may accept more (numpy dtypes).
* SETITEM(S), DICT, APPEND(S), ADDITEMS and FROZENSET fill only plain containers, with plain keys (hashing a
  deeply nested tuple recurses in C and overflows the stack), and never a container already sealed.
* ``freeze`` copies a record into read-only containers, bounded in depth and size, and seals the originals, so
  no later opcode can change what was checked.
* At most ``max_opcodes`` opcodes run.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections import OrderedDict
from typing import Any, Callable

__all__ = ["LIMITS", "EasyDictStub", "FrozenDict", "LegacyFormatError", "SafeUnpickler", "UnsafePickleError",
           "one_line", "plain_key"]

# Bounds far above any real snapshot: a 1024 px G + D + G_ema takes ~35 000 opcodes and ~4 300 record values;
# its module trees hold at most ~70 objects, 5 deep; its records nest ~5 deep.
LIMITS = {
    "opcodes": 2_000_000,   # also bounds the time spent: ~1 s per million opcodes
    "depth": 32,            # containers nested in one record
    "values": 1_000_000,    # values copied into records, shared references counted each time
    "tree_nodes": 100_000,  # persistent objects in one module tree
    "tree_depth": 24,
}

_PLAIN = (str, int, float, bool, bytes, type(None))  # what dict keys and set items may be
_DICTS = (dict, OrderedDict)  # plus EasyDictStub, below
_OPNAMES = {op.code.encode("latin1")[0]: op.name for op in pickletools.opcodes}


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for something outside the allowlist (a global, a persistent id, an object dtype...)."""


class LegacyFormatError(ValueError):
    """The file is safe to read but is not a snapshot we can rebuild (structure, kwargs or weights differ)."""


class EasyDictStub(dict):
    """Inert stand-in for ``dnnlib.util.EasyDict``: a plain dict, rebuilt by NEWOBJ + SETITEMS."""


class FrozenDict(dict):
    """A read-only dict: a record as it was checked."""

    def _read_only(self, *args, **kwargs):
        raise TypeError("a checked snapshot record is read-only")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only


def one_line(text: Any, limit: int = 300) -> str:
    """An error text as one line of at most ``limit`` characters (foreign messages can be long or multi-line)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def plain_key(key: Any) -> Any:
    """``key`` if it is a plain value (or a short tuple of them), safe to hash; else ``UnsafePickleError``."""
    if type(key) in _PLAIN or (type(key) is tuple and len(key) <= 16 and all(type(k) in _PLAIN for k in key)):
        return key
    raise UnsafePickleError(f"a dict key or set item is a {type(key).__name__}; snapshots use plain values")


def _is_empty_state(state: Any) -> bool:
    parts = state if type(state) is tuple and len(state) == 2 else (state,)
    return all(p is None or (type(p) is dict and not p) for p in parts)


class SafeUnpickler(pickle._Unpickler):  # the Python unpickler: its opcode table can be replaced
    """Checked opcodes and bounded work; a subclass supplies ``find_class`` (and may widen ``build``)."""

    def __init__(self, file: io.BufferedIOBase, max_opcodes: int = LIMITS["opcodes"]):
        super().__init__(file, encoding="latin1")
        self.max_opcodes = max_opcodes
        self.num_opcodes = self.num_values = 0
        self._sealed: dict[int, Any] = {}  # containers copied into a record (kept alive so ids stay unique)

    def find_class(self, module: str, name: str) -> Callable:
        raise UnsafePickleError(f"the pickle references the Python global '{one_line(module, 80)}."
                                f"{one_line(name, 80)}'; it was not imported or called")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("the pickle uses persistent ids, which StyleGAN2-ADA snapshots never contain")

    def describe(self, obj: Any) -> str:
        """How messages name ``obj``: by its type, never by its contents."""
        return type(obj).__name__

    def build(self, inst: Any, state: Any) -> None:
        """BUILD on ``inst``: only the empty state older picklers write for dict subclasses is accepted."""
        if type(inst) in (*_DICTS, EasyDictStub) and id(inst) not in self._sealed and _is_empty_state(state):
            return
        raise UnsafePickleError(f"the pickle sets the state of a {self.describe(inst)} (BUILD); snapshots only do "
                                "that for numpy dtypes")

    # ---- opcodes that call, build or fill objects ---------------------------------------------------------
    def _op_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if getattr(func, "__self__", None) is not self or type(args) is not tuple:
            raise UnsafePickleError(f"the pickle calls a {self.describe(func)}; only allowlisted globals can be "
                                    "called")
        self.stack[-1] = func(*args)

    def _op_newobj(self, kwargs: Any = None):
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls is not EasyDictStub or args or kwargs:  # an EasyDict is created empty and filled by SETITEMS
            raise UnsafePickleError(f"the pickle creates a {self.describe(cls)} by NEWOBJ; snapshots only do that "
                                    "for an empty dnnlib.util.EasyDict")
        self.append(EasyDictStub())

    def _op_newobj_ex(self):
        kwargs = self.stack.pop()
        self._op_newobj(kwargs)

    def _op_build(self):
        state = self.stack.pop()
        self.build(self.stack[-1], state)

    def _container(self, obj: Any, kinds: tuple, op: str) -> Any:
        if type(obj) not in kinds:
            raise UnsafePickleError(f"the pickle fills a {self.describe(obj)} ({op}); snapshots only fill plain "
                                    "dicts, lists and sets")
        if id(obj) in self._sealed:
            raise UnsafePickleError(f"the pickle changes a {type(obj).__name__} ({op}) after it was checked as "
                                    "part of a record")
        return obj

    def _op_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self._container(self.stack[-1], (*_DICTS, EasyDictStub), "SETITEM")[plain_key(key)] = value

    def _op_setitems(self):
        items = self.pop_mark()
        target = self._container(self.stack[-1], (*_DICTS, EasyDictStub), "SETITEMS")
        if len(items) % 2:
            raise pickle.UnpicklingError("SETITEMS with an odd number of items")
        for i in range(0, len(items), 2):
            target[plain_key(items[i])] = items[i + 1]

    def _op_dict(self):
        items = self.pop_mark()
        if len(items) % 2:
            raise pickle.UnpicklingError("DICT with an odd number of items")
        self.append({plain_key(items[i]): items[i + 1] for i in range(0, len(items), 2)})

    def _op_append(self):
        value = self.stack.pop()
        self._container(self.stack[-1], (list,), "APPEND").append(value)

    def _op_appends(self):
        items = self.pop_mark()
        self._container(self.stack[-1], (list,), "APPENDS").extend(items)

    def _op_additems(self):
        items = self.pop_mark()
        self._container(self.stack[-1], (set,), "ADDITEMS").update(plain_key(v) for v in items)

    def _op_frozenset(self):
        self.append(frozenset(plain_key(v) for v in self.pop_mark()))

    # ---- records -------------------------------------------------------------------------------------------
    def freeze(self, value: Any, depth: int = 0) -> Any:
        """A read-only copy of ``value`` (dicts -> FrozenDict, lists -> tuples, sets -> frozensets). Copied
        containers are sealed: a later opcode that changes one is refused."""
        if depth > LIMITS["depth"]:
            raise UnsafePickleError(f"a record nests containers more than {LIMITS['depth']} deep (a self-referencing "
                                    "structure?)")
        self.num_values += 1
        if self.num_values > LIMITS["values"]:
            raise UnsafePickleError(f"the records hold more than {LIMITS['values']} values when shared references "
                                    "are counted (a reference bomb?)")
        kind = type(value)
        if kind in (*_DICTS, EasyDictStub, FrozenDict):
            self._sealed[id(value)] = value
            return FrozenDict((k, self.freeze(v, depth + 1)) for k, v in value.items())
        if kind in (list, tuple):
            self._sealed[id(value)] = value
            return tuple(self.freeze(v, depth + 1) for v in value)
        if kind in (set, frozenset):
            self._sealed[id(value)] = value
            return frozenset(value)  # items are plain values (checked as they were added)
        if kind is bytearray:
            return bytes(value)
        return value  # immutable values, tensors and storages (BUILD on them is refused), records, callables


def _counted(handler: Callable) -> Callable:
    def op(self: SafeUnpickler) -> None:
        self.num_opcodes += 1
        if self.num_opcodes > self.max_opcodes:
            raise UnsafePickleError(f"more than {self.max_opcodes} pickle opcodes; refusing (possible pickle bomb)")
        handler(self)
    return op


def _refused(code: int) -> Callable:
    def op(self: SafeUnpickler) -> None:
        raise UnsafePickleError(f"the pickle uses the {_OPNAMES[code]} opcode, which StyleGAN2-ADA snapshots never "
                                "contain")
    return op


class _OpcodeTable(dict):
    def __missing__(self, code: int):
        raise pickle.UnpicklingError(f"invalid opcode byte 0x{code:02x}")


def _opcode_table() -> _OpcodeTable:
    table = _OpcodeTable({code: _counted(handler) for code, handler in pickle._Unpickler.dispatch.items()})
    own = {pickle.REDUCE: "_op_reduce", pickle.NEWOBJ: "_op_newobj", pickle.NEWOBJ_EX: "_op_newobj_ex",
           pickle.BUILD: "_op_build", pickle.SETITEM: "_op_setitem", pickle.SETITEMS: "_op_setitems",
           pickle.DICT: "_op_dict", pickle.APPEND: "_op_append", pickle.APPENDS: "_op_appends",
           pickle.ADDITEMS: "_op_additems", pickle.FROZENSET: "_op_frozenset"}
    for opcode, name in own.items():
        table[opcode[0]] = _counted(getattr(SafeUnpickler, name))
    for opcode in (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.NEXT_BUFFER,
                   pickle.READONLY_BUFFER):
        table[opcode[0]] = _refused(opcode[0])
    return table


SafeUnpickler.dispatch = _opcode_table()
