"""A corpus of hostile pickles, generated here, fed to ``gmia import-checkpoint``: every one is refused with one
line, quickly, without crashing, running code or echoing memory.

The imports run in one child process (a segfault or a hang must not take the test run down with it), one item
after another; the child reports each item before and after, so a crash names the item that caused it.
"""

import builtins
import collections
import dataclasses
import io
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tests.third_party.test_legacy_pickle import (  # noqa: F401  (official: a fixture)
    G_KWARGS,
    HOOKS,
    NETWORKS_SRC,
    Evil,
    Persistent,
    as_official,
    official,
    randomize,
)
from third_party.stylegan2_ada import Generator
from third_party.stylegan2_ada.legacy_pickle import UnsafePickleError, read_snapshot

PER_ITEM_S = 10  # an import that takes longer counts as a hang


class Reduce:
    """Reduces to any (callable, args, state, listitems, dictitems) tuple, as a crafted pickle can."""

    def __init__(self, *parts):
        self.parts = parts

    def __reduce__(self):
        return self.parts


def scalar_with_subarray(length):
    """A float64 scalar whose dtype BUILD state adds a sub-array of ``length`` items to an 8-byte buffer."""
    state = (3, "<", (np.dtype("f8"), (length,)), None, None, -1, -1, 0)
    dtype = Reduce(np.dtype, ("f8", False, True), state)
    return Reduce(np._core.multiarray.scalar, (dtype, b"\x00" * 8))


class StoragePickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj if type(obj) is tuple and obj[:1] == ("storage",) else None


def storage_blob(numel=4, raw=b"\x00" * 16, first=None):
    """What torch's legacy format holds for one float32 storage, with any record, data or first pickle."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    record = io.BytesIO()
    StoragePickler(record, 2).dump(("storage", torch.FloatStorage, "0", "cpu", numel, None))
    parts = [first or pickle.dumps(0x1950A86A20F9469CFC6C, 2), pickle.dumps(1001, 2), pickle.dumps(info, 2),
             record.getvalue(), pickle.dumps(["0"], 2), numel.to_bytes(8, "little"), raw]
    return b"".join(parts)


def stored(blob):
    return Reduce(torch.storage._load_from_bytes, (blob,))


def module_state(modules=None):
    return {"training": False, "_parameters": collections.OrderedDict(), "_buffers": collections.OrderedDict(),
            "_non_persistent_buffers_set": set(), **{k: collections.OrderedDict() for k in HOOKS},
            "_modules": collections.OrderedDict(modules or {})}


def meta(class_name, state):
    return dict(type="class", version=6, module_src=NETWORKS_SRC, class_name=class_name, state=state)


def generator(official, **kwarg_changes):
    return as_official(randomize(Generator(**G_KWARGS), 1), official, {**G_KWARGS, **kwarg_changes})


def hostile_corpus(official, marker):
    """name -> pickle bytes. Each is refused; none may touch ``marker``."""
    touch = f"touch {marker}"
    corpus = {}
    # ---- numpy: a dtype state that makes an 8-byte scalar read past its buffer (read when a message shows it)
    g = randomize(Generator(**G_KWARGS), 1)
    corpus["dtype-subarray-leak"] = {"G": as_official(g, official, G_KWARGS, class_name=scalar_with_subarray(4))}
    corpus["dtype-subarray-crash"] = {"G": as_official(g, official, G_KWARGS,
                                                       class_name=scalar_with_subarray(1 << 36))}
    corpus["dtype-build-on-shared-dtype"] = {"x": Reduce(np.dtype, ("f8", False, False),
                                                         (3, ">", None, None, None, -1, -1, 0))}
    corpus["dtype-object"] = {"x": np.dtype(object)}
    # ---- BUILD on the snapshot's own records
    g = generator(official)
    corpus["build-forges-source-hash"] = {"G": Reduce(g.fn, (g.meta,), (g.meta["class_name"], g.meta["state"],
                                                                        "f" * 64))}
    corpus["build-on-node-slot-state"] = {"G": Reduce(g.fn, (g.meta,), (None, {"class_name": "Encoder"}))}
    storage = torch.zeros(4)._typed_storage()  # what a pickled tensor holds
    corpus["build-on-tensor"] = {"x": Reduce(torch._utils._rebuild_tensor_v2,
                                             (storage, 0, (4,), (1,), False, collections.OrderedDict()),
                                             (storage, 0, (1 << 40,), (1,)))}
    deep_key = b"\x80\x02}N" + b"\x85" * 300_000 + b"K\x01s."
    corpus["storage-with-deep-tuple-key"] = {"x": stored(storage_blob(first=deep_key))}
    corpus["storage-claims-more-than-it-holds"] = {"x": stored(storage_blob(numel=1 << 40))}
    corpus["storage-with-os-system"] = {"x": stored(storage_blob(first=pickle.dumps(Evil(os.system, touch), 2)))}
    corpus["tensor-out-of-bounds"] = {"x": Reduce(torch._utils._rebuild_tensor_v2,
                                                  (storage, 8, (4, 4), (4, 1), False, collections.OrderedDict()))}
    # ---- structures that recurse or expand without bound
    mapping = dict(G_KWARGS["mapping_kwargs"])
    loop = []
    loop.append(loop)
    corpus["self-referencing-list-in-kwargs"] = {"G": generator(official, mapping_kwargs={**mapping, "x": loop})}
    bomb = ["lol"] * 10
    for _ in range(20):
        bomb = [bomb] * 10  # 10**20 leaves from ~200 memo references
    corpus["shared-reference-bomb-in-kwargs"] = {"G": generator(official, mapping_kwargs={**mapping, "x": bomb})}
    corpus["shared-reference-bomb-in-dataset"] = {"G": generator(official), "training_set_kwargs": {"x": bomb}}
    node = Persistent(official.reconstruct, meta("SynthesisLayer", module_state()))
    for _ in range(12):
        node = Persistent(official.reconstruct, meta("SynthesisLayer", module_state({f"m{i}": node for i in range(8)})))
    g_bomb = generator(official)
    g_bomb.meta["state"]["_modules"]["synthesis"] = node
    corpus["shared-node-bomb"] = {"G": g_bomb}
    cyclic = generator(official)
    cyclic.meta["state"]["_modules"]["mapping"] = cyclic
    corpus["node-in-its-own-modules"] = {"G": cyclic}
    late = []  # written empty inside the node's state, filled with the node after it was checked
    holder = generator(official)
    holder.meta["state"]["note"] = late
    late.append(holder)
    corpus["list-changed-after-check"] = {"x": late, "G": holder}
    corpus["opcode-flood"] = {"x": [1] * 2_100_000}
    pickles = {name: pickle.dumps(obj, protocol=4) for name, obj in corpus.items()}
    # protocol 3 has no frames, so a placeholder string can be swapped for 100 000 nested tuples
    spliced = pickle.dumps({"G": generator(official), "training_set_kwargs": {"x": "PLACEHOLDER"}}, protocol=3)
    pickles["deep-tuple-in-dataset"] = spliced.replace(b"X\x0b\x00\x00\x00PLACEHOLDER", b"N" + b"\x85" * 100_000)
    assert b"PLACEHOLDER" not in pickles["deep-tuple-in-dataset"]
    pickles["deep-tuple-as-dict-key"] = deep_key
    # ---- code execution classics
    for protocol in range(6):
        pickles[f"os-system-reduce-p{protocol}"] = pickle.dumps(Evil(os.system, touch), protocol=protocol)
    pickles["os-system-global-p0"] = b"cos\nsystem\n(S'" + touch.encode() + b"'\ntR."
    pickles["eval"] = pickle.dumps(Evil(builtins.eval, f"open({str(marker)!r}, 'w')"), protocol=2)
    pickles["inst"] = b"(S'" + touch.encode() + b"'\nios\nsystem\n."
    pickles["obj"] = b"(cos\nsystem\nS'" + touch.encode() + b"'\no."
    pickles["ext1"] = b"\x80\x02\x82\x01."
    pickles["payload-in-kwargs"] = pickle.dumps({"G": generator(official, mapping_kwargs={
        **mapping, "x": Evil(os.system, touch)})}, protocol=3)
    pickles["persistent-id"] = b"\x80\x02P0\n."
    return pickles


WORKER = textwrap.dedent("""
    import json, signal, sys, time
    from pathlib import Path
    from click.testing import CliRunner
    from gmia.cli import cli

    class Hang(BaseException):
        pass

    def alarm(*_):
        raise Hang()

    signal.signal(signal.SIGALRM, alarm)
    corpus, out, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    for src in sorted(corpus.iterdir()):
        print(json.dumps({"start": src.name}), flush=True)
        t0 = time.perf_counter()
        signal.alarm(limit)
        try:
            result = CliRunner().invoke(cli, ["import-checkpoint", str(src), str(out / src.stem)])
            row = {"exit_code": result.exit_code, "output": result.output,
                   "exception": type(result.exception).__name__}
        except Hang:
            row = {"hang": True}
        signal.alarm(0)
        print(json.dumps({"name": src.name, "seconds": time.perf_counter() - t0, **row}), flush=True)
    print(json.dumps({"done": True}), flush=True)
""")

MEMORY = re.compile(r"\d[eE][-+]?\d{3}|0x[0-9a-fA-F]{6,}")  # denormal / huge floats, addresses


def test_hostile_corpus_is_refused_with_one_line(tmp_path, official):
    marker = tmp_path / "pwned"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pickles = hostile_corpus(official, marker)
    for name, data in pickles.items():
        (corpus / f"{name}.pkl").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    proc = subprocess.run([sys.executable, "-c", WORKER, str(corpus), str(out), str(PER_ITEM_S)], env=env,
                          capture_output=True, text=True, timeout=120 + PER_ITEM_S * len(pickles))
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = [r["start"] for r in rows if "start" in r]
    assert rows and rows[-1].get("done"), (f"the importer died (exit {proc.returncode}) on {started[-1:]}: "
                                           f"{proc.stderr[-2000:]}")
    results = {r["name"]: r for r in rows if "name" in r}
    assert len(results) == len(pickles)
    problems = []
    for name, r in sorted(results.items()):
        lines = [line for line in r.get("output", "").splitlines() if line.strip()]
        if r.get("hang") or r["seconds"] > PER_ITEM_S:
            problems.append(f"{name}: hangs")
        elif r["exit_code"] == 0 or r["exception"] != "SystemExit":
            problems.append(f"{name}: not refused (exit {r['exit_code']}, {r['exception']})")
        elif len(lines) != 1 or not lines[0].startswith("Error: ") or "nothing was written" not in lines[0].lower():
            problems.append(f"{name}: {len(lines)} lines: {r['output'][:300]!r}")
        elif MEMORY.search(lines[0]):
            problems.append(f"{name}: memory contents in the message: {lines[0][:300]}")
    assert not problems, "\n".join(problems)
    assert not marker.exists(), "a payload ran"
    assert not any(out.iterdir()), "something was written"


def test_cli_prints_one_line_and_fails(tmp_path):
    src = tmp_path / "evil.pkl"
    src.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    proc = subprocess.run([sys.executable, "-m", "gmia", "import-checkpoint", str(src), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "'os.system'" in lines[0] and "not on the allowlist" in lines[0], lines
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


# ---- the dtype path, directly ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.bool_(True), np.int8(-3), np.uint16(7), np.int32(-9), np.int64(1 << 40),
                                   np.float16(0.5), np.float32(2.25), np.float64(1.5), np.complex64(1 + 2j),
                                   np.dtype(">f8").type(3.75), np.dtype(">i4").type(-5)])
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_scalars_still_read(value, protocol):
    got = read_snapshot(pickle.dumps({"x": value}, protocol)).entries["x"]
    assert got == value and got.dtype == value.dtype


@pytest.mark.parametrize("state, message", [
    ((3, "<", (np.dtype("f8"), (2,)), None, None, -1, -1, 0), "sub-array"),
    ((3, "<", None, ("a",), {"a": (np.dtype("f8"), 0)}, -1, -1, 0), "fields"),
    ((3, "<", None, None, None, 64, 8, 0), "item size"),
    ((3, "<", None, None, None, -1, -1, 63), "flags"),
    ((4, "<", None, None, None, -1, -1, 0, None), "version"),
    ((3, "|", None, None, None, -1, -1, 0), "byte order"),
])
def test_dtype_state_is_checked_before_any_read(state, message):
    dtype = Reduce(np.dtype, ("f8", False, True), state)
    with pytest.raises(UnsafePickleError, match=message):
        read_snapshot(pickle.dumps({"x": Reduce(np._core.multiarray.scalar, (dtype, b"\x00" * 8))}, 4))


def test_storages_are_decoded_from_their_bytes_only():
    def values(blob):
        storage = read_snapshot(pickle.dumps({"x": stored(blob)}, 4)).entries["x"]
        return torch.tensor([], dtype=storage.dtype).set_(storage._untyped_storage)

    assert values(storage_blob(raw=np.float32([1, 2, 3, 4]).tobytes())).tolist() == [1, 2, 3, 4]
    real = torch.arange(5, dtype=torch.float16)._typed_storage().__reduce__()[1][0]  # what torch itself writes
    assert torch.equal(values(real), torch.arange(5, dtype=torch.float16))
    with pytest.raises(UnsafePickleError, match="holds 12 bytes"):
        read_snapshot(pickle.dumps({"x": stored(storage_blob(raw=b"\x00" * 12))}, 4))


def test_shared_numpy_dtype_is_never_changed():
    with pytest.raises(UnsafePickleError):
        read_snapshot(pickle.dumps({"x": Reduce(np.dtype, ("f8", False, False),
                                                (3, ">", None, None, None, -1, -1, 0))}, 4))
    assert np.dtype("f8").isnative


def test_checked_records_are_read_only(official):
    node = read_snapshot(pickle.dumps({"G": generator(official)}, 4)).entries["G"]
    assert node.class_name == "Generator" and node.tree_depth > 1
    with pytest.raises(TypeError, match="read-only"):
        node.state["_init_kwargs"]["z_dim"] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.module_src_sha256 = "f" * 64
