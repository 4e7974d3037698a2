"""Writing files so that a kill, a crash or a full disk never leaves half of one, and strict JSON.

Every file gmia writes (images, checkpoints, cards, tables, keys) goes through ``atomic_file`` or ``atomic_path``:
the bytes go to a temporary file in the target's folder, are flushed and fsynced, and only then renamed over the
target. A reader sees the old file or the new one, never a mix. ``jsonable`` is the one converter to strict JSON
(cards and run records are read by other tools: no NaN, no numpy scalars).

No torch here: the CLI's help and the data adapters import this module.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_file", "atomic_path", "atomic_write", "atomic_write_json", "append_jsonl", "jsonable"]


@contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (safetensors, pydicom, PIL); when
    the block ends without an exception the file is fsynced and renamed onto ``path``, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; outputs are ordinary files unless asked otherwise (keys)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike, text: bool = False, mode: int = 0o644) -> Iterator[IO]:
    """An open file (binary, or text with ``text=True``) that replaces ``path`` when the block ends."""
    with atomic_path(path, mode) as tmp:
        with open(tmp, "w" if text else "wb", **({"newline": ""} if text else {})) as f:
            yield f
            f.flush()


def atomic_write(path: str | os.PathLike, data: str | bytes, mode: int = 0o644) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_file(path, mode=mode) as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def jsonable(obj):
    """``obj`` as plain JSON values: dataclasses and dicts (str keys), lists, paths as strings, numpy and
    torch scalars as Python numbers, NaN and infinities as None (strict JSON has no NaN)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (str, bool, int)) or obj is None:
        return obj
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / torch scalars and arrays
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> Path:
    """``obj`` (through ``jsonable``) as JSON with a final newline, written atomically."""
    return atomic_write(path, json.dumps(jsonable(obj), indent=indent, allow_nan=False) + "\n")


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """One JSON line, flushed and fsynced: a crash loses at most the line being written, and a reader skips a
    torn last line."""
    with open(path, "a") as f:
        f.write(json.dumps(jsonable(row)) + "\n")
        f.flush()
        os.fsync(f.fileno())
