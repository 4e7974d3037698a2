"""The restricted snapshot importer (spec §6, §12.5), on fixtures written here in the official persistence format.

The fixtures are built at test time without NVIDIA code: throw-away modules named ``torch_utils.persistence``
and ``dnnlib.util`` are put in ``sys.modules`` only while pickling, and small stand-in objects reduce to
``_reconstruct_persistent_obj(meta)`` exactly as persistent classes do (meta = type, version, module_src,
class_name, state = the module's ``__dict__``).
"""

import builtins
import collections
import hashlib
import io
import os
import pickle
import re
import sys
import types

import numpy as np
import pytest
import torch

from gmia.checkpoints import import_official_pickle, load_module, read_card
from gmia.errors import CheckpointError
from third_party.stylegan2_ada import Discriminator, ESModel, Generator
from third_party.stylegan2_ada.legacy_pickle import (
    ALLOWED_GLOBALS,
    LegacyFormatError,
    RestrictedUnpickler,
    UnsafePickleError,
    read_snapshot,
)

NETWORKS_SRC = "# stand-in for training/networks.py\nclass Generator: pass\n"
SMALL = dict(channel_base=256, channel_max=32)
G_KWARGS = dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=3,
                mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(SMALL, num_fp16_res=2, conv_clamp=256))
D_KWARGS = dict(c_dim=0, img_resolution=16, img_channels=3, **SMALL, num_fp16_res=2, conv_clamp=256,
                block_kwargs={}, mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4))
E_KWARGS = dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=1, synthesis_kwargs=dict(SMALL))
HOOKS = ("_backward_hooks", "_forward_hooks", "_forward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Persistent:
    """Reduces like an official persistent object: ``_reconstruct_persistent_obj(meta)``."""

    def __init__(self, fn, meta):
        self.fn, self.meta = fn, meta

    def __reduce__(self):
        return self.fn, (self.meta,)


class Evil:
    """Reduces to an arbitrary call, as a malicious pickle would."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.fixture
def official(monkeypatch):
    """Stand-in ``torch_utils.persistence`` and ``dnnlib.util`` modules, registered only during the test."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the stand-in is only for writing fixtures")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    util.EasyDict = EasyDict
    for name, mod in (("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                      ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)):
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)


def easydicts(value, EasyDict):
    if isinstance(value, dict):
        return EasyDict({k: easydicts(v, EasyDict) for k, v in value.items()})
    return value


def as_official(module, official, init_kwargs=None, src=NETWORKS_SRC, class_name=None, **state_overrides):
    """Our module tree -> nested persistent stand-ins holding a Module-like ``__dict__`` (spec §6.3)."""
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(
            (k, None if v is None else torch.nn.Parameter(v.detach().clone(), requires_grad=False))
            for k, v in module._parameters.items()),
        "_buffers": collections.OrderedDict((k, None if v is None else v.clone()) for k, v in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        **{k: collections.OrderedDict() for k in HOOKS},
        "_modules": collections.OrderedDict((k, as_official(c, official, src=src)) for k, c in module._modules.items()),
    }
    for k, v in vars(module).items():  # plain attributes; floats as numpy scalars, as np.sqrt leaves them
        if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str, type(None))):
            state[k] = np.float64(v) if type(v) is float else v
    state["_init_args"] = ()
    state["_init_kwargs"] = easydicts(init_kwargs or {}, official.EasyDict)
    state.update(state_overrides)
    meta = dict(type="class", version=6, module_src=src, class_name=class_name or type(module).__name__, state=state)
    return Persistent(official.reconstruct, meta)


def randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + [b for n, b in module.named_buffers() if "resample_filter" not in n]:
            t.copy_(torch.randn(t.shape, generator=gen))
    return module


def snapshot_networks():
    g = randomize(Generator(**G_KWARGS), 1)
    g_ema = randomize(Generator(**G_KWARGS), 2)
    d = randomize(Discriminator(**D_KWARGS), 3)
    return g, g_ema, d


def write_snapshot(path, official, protocol, networks, training_set_kwargs=None):
    g, g_ema, d = networks
    data = {
        "training_set_kwargs": easydicts(training_set_kwargs or dict(class_name="training.dataset.ImageFolderDataset",
                                                                     path="/data/patients.zip", resolution=16,
                                                                     use_labels=False, xflip=True), official.EasyDict),
        "G": as_official(g, official, G_KWARGS), "D": as_official(d, official, D_KWARGS),
        "G_ema": as_official(g_ema, official, G_KWARGS), "augment_pipe": None,
    }
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


class RecordingUnpickler(RestrictedUnpickler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.globals = set()

    def find_class(self, module, name):
        self.globals.add(f"{module}.{name}")
        return super().find_class(module, name)


# ---- round trip -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [3, 4])
def test_official_format_round_trips_bit_exactly(tmp_path, official, protocol):
    nets = snapshot_networks()
    src = write_snapshot(tmp_path / "snapshot.pkl", official, protocol, nets)
    unpickler = RecordingUnpickler(io.BytesIO(src.read_bytes()))
    unpickler.load()
    expected = {"torch_utils.persistence._reconstruct_persistent_obj", "torch._utils._rebuild_parameter",
                "torch._utils._rebuild_tensor_v2", "torch.storage._load_from_bytes", "collections.OrderedDict",
                "dnnlib.util.EasyDict", "numpy.dtype"}
    assert expected <= unpickler.globals
    assert ("builtins.set" in unpickler.globals) == (protocol == 3)  # protocol 4 has an EMPTY_SET opcode
    assert {"numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar"} & unpickler.globals

    dst = import_official_pickle(src, tmp_path / "imported")
    assert sorted(p.name for p in dst.iterdir()) == [
        "D.json", "D.safetensors", "G.json", "G.safetensors", "G_ema.json", "G_ema.safetensors", "import.json"]
    for name, ours in zip(("G", "G_ema", "D"), nets):
        loaded = load_module(dst, name)
        assert type(loaded) is type(ours)
        expected_sd, got_sd = ours.state_dict(), loaded.state_dict()
        assert list(got_sd) == list(expected_sd)
        assert all(torch.equal(got_sd[k], expected_sd[k]) for k in expected_sd)
    card = read_card(dst, "G_ema")
    assert card["kwargs"] == G_KWARGS
    assert card["meta"]["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert card["meta"]["source"]["module_src_sha256"] == [hashlib.sha256(NETWORKS_SRC.encode()).hexdigest()]
    assert card["meta"]["image_range"] == [-1.0, 1.0]
    summary = (dst / "import.json").read_text()
    assert "/data/patients.zip" not in summary and "augment_pipe" in summary  # no dataset paths in cards


def test_gmia_snapshot_imports_as_esmodel(tmp_path, official):
    m = randomize(ESModel(**E_KWARGS), 7)
    data = {"training_set_kwargs": None, "G": as_official(m, official, E_KWARGS),
            "G_ema": as_official(m, official, E_KWARGS)}
    (tmp_path / "gmia.pkl").write_bytes(pickle.dumps(data, protocol=3))
    dst = import_official_pickle(tmp_path / "gmia.pkl", tmp_path / "out")
    loaded = load_module(dst, "G_ema")
    assert isinstance(loaded, ESModel) and read_card(dst, "G_ema")["meta"]["image_range"] == [0.0, 1.0]
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x, noise_mode="const"), m.eval()(x, noise_mode="const"), atol=0, rtol=0)


# ---- malicious pickles ----------------------------------------------------------------------------------------
def assert_nothing_written(tmp_path, dst, marker):
    assert not marker.exists(), "the payload ran"
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folders


def test_os_system_global_is_refused_and_never_called(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"touch {marker}".encode()
    src = tmp_path / "evil.pkl"
    src.write_bytes(b"cos\nsystem\n(S'" + payload + b"'\ntR.")  # protocol 0: GLOBAL os.system, REDUCE
    with pytest.raises(CheckpointError, match=r"'os\.system'.*not on the allowlist") as info:
        import_official_pickle(src, tmp_path / "out")
    assert "Nothing was executed and nothing was written" in str(info.value) and str(src) in str(info.value)
    assert_nothing_written(tmp_path, tmp_path / "out", marker)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_payload_hidden_inside_a_valid_snapshot_is_refused(tmp_path, official, protocol):
    marker = tmp_path / "pwned"
    g = Generator(**G_KWARGS)
    hidden = as_official(g, official, G_KWARGS, note=Evil(os.system, f"touch {marker}"))
    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps({"G": hidden, "G_ema": None}, protocol=protocol))
    with pytest.raises(CheckpointError, match=rf"'{os.system.__module__}\.system'"):
        import_official_pickle(src, tmp_path / "out")
    assert_nothing_written(tmp_path, tmp_path / "out", marker)


@pytest.mark.parametrize("fn", [builtins.eval, builtins.exec, builtins.getattr, builtins.__import__, torch.load,
                                np.load, pickle.loads])
def test_other_dangerous_globals_are_refused(fn):
    data = pickle.dumps(Evil(fn, "1"), protocol=4)
    with pytest.raises(UnsafePickleError, match="not on the allowlist"):
        read_snapshot(data)


def test_module_src_side_effect_never_happens(tmp_path, official, monkeypatch):
    template = "import pathlib\npathlib.Path({!r}).write_text('module_src ran')\nclass Generator: pass\n"
    armed = tmp_path / "armed"
    exec(template.format(str(armed)), {})  # the fixture's source is live: executing it does write a file
    assert armed.exists()

    marker = tmp_path / "marker"
    src_text = template.format(str(marker))
    g = randomize(Generator(**G_KWARGS), 5)
    (tmp_path / "snap.pkl").write_bytes(pickle.dumps({"G": as_official(g, official, G_KWARGS, src=src_text)}, 4))

    def forbidden(*args, **kwargs):
        raise AssertionError("code was compiled or executed while importing a snapshot")

    for name in ("exec", "eval", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    dst = import_official_pickle(tmp_path / "snap.pkl", tmp_path / "out")
    monkeypatch.undo()
    assert not marker.exists()
    card = read_card(dst, "G")
    assert card["meta"]["source"]["module_src_sha256"] == [hashlib.sha256(src_text.encode()).hexdigest()]
    assert torch.equal(load_module(dst, "G").synthesis.b4.const, g.synthesis.b4.const)


# ---- malformed or unexpected snapshots ------------------------------------------------------------------------
def import_error(tmp_path, data):
    (tmp_path / "x.pkl").write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        import_official_pickle(tmp_path / "x.pkl", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    return str(info.value)


def test_unknown_persistent_class(tmp_path, official):
    bad = as_official(Generator(**G_KWARGS), official, G_KWARGS, class_name="Backdoor")
    assert "'Backdoor' is not a known" in import_error(tmp_path, pickle.dumps({"G": bad}, 4))


def test_wrong_persistence_version(tmp_path, official):
    bad = as_official(Generator(**G_KWARGS), official, G_KWARGS)
    bad.meta["version"] = 5
    assert "version 5" in import_error(tmp_path, pickle.dumps({"G": bad}, 4))


@pytest.mark.parametrize("change, message", [
    (dict(foo=1), r"unknown constructor argument G\.foo"),
    (dict(img_resolution="16"), r"G\.img_resolution = '16': expected an int"),
    (dict(synthesis_kwargs=dict(channel_base=256, channel_max=32, evil=1)), r"G\.synthesis_kwargs\.evil"),
    (dict(img_resolution=1 << 20), r"expected an int in \[4, 4096\]"),
    (dict(img_resolution=12), "power of two"),
])
def test_init_kwargs_are_validated(tmp_path, official, change, message):
    bad = as_official(Generator(**G_KWARGS), official, {**G_KWARGS, **change})
    msg = import_error(tmp_path, pickle.dumps({"G": bad}, 4))
    assert re.search(message, msg), msg


def test_weights_must_fit(tmp_path, official):
    g = Generator(**dict(G_KWARGS, img_channels=1))
    msg = import_error(tmp_path, pickle.dumps({"G": as_official(g, official, G_KWARGS)}, 4))
    assert "weights do not fit" in msg and "torgb" in msg


def test_non_empty_hooks_are_refused(tmp_path, official):
    bad = as_official(Generator(**G_KWARGS), official, G_KWARGS,
                      _forward_hooks=collections.OrderedDict([(0, print)]))
    assert "refused as unsafe" in import_error(tmp_path, pickle.dumps({"G": bad}, 4))  # builtins.print: not allowed
    bad = as_official(Generator(**G_KWARGS), official, G_KWARGS,
                      _forward_hooks=collections.OrderedDict([(0, collections.OrderedDict)]))
    assert "non-empty _forward_hooks" in import_error(tmp_path, pickle.dumps({"G": bad}, 4))


def test_object_dtype_and_persistent_ids_are_refused():
    with pytest.raises(UnsafePickleError, match="object dtype"):
        read_snapshot(pickle.dumps({"x": np.dtype(object)}, 4))

    class PidPickler(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage0" if isinstance(obj, str) and obj == "secret" else None

    buf = io.BytesIO()
    PidPickler(buf, 4).dump({"x": "secret"})
    with pytest.raises(UnsafePickleError, match="persistent ids"):
        read_snapshot(buf.getvalue())


def test_not_a_snapshot(tmp_path):
    assert "not a readable pickle" in import_error(tmp_path, b"\x80\x04garbage")
    assert "not a snapshot dict" in import_error(tmp_path, pickle.dumps([1, 2, 3], 4))
    assert "none of the networks" in import_error(tmp_path, pickle.dumps({"G": None}, 4))
    with pytest.raises(LegacyFormatError):
        read_snapshot(pickle.dumps({"G": 1}, 4)[:-3])


def test_destination_and_source_checks(tmp_path, official):
    with pytest.raises(CheckpointError, match="no such file"):
        import_official_pickle(tmp_path / "missing.pkl", tmp_path / "out")
    src = write_snapshot(tmp_path / "s.pkl", official, 4, snapshot_networks())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not an empty folder"):
        import_official_pickle(src, tmp_path / "full")
    (tmp_path / "empty").mkdir()
    assert (import_official_pickle(src, tmp_path / "empty") / "G.json").is_file()


def test_allowlist_is_exactly_the_spec():
    assert set(ALLOWED_GLOBALS) == {
        ("collections", "OrderedDict"), ("builtins", "set"), ("__builtin__", "set"),
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"), ("torch.storage", "_load_from_bytes"),
        ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("dnnlib.util", "EasyDict"), ("torch_utils.persistence", "_reconstruct_persistent_obj"),
        ("_codecs", "encode"),
    }


def test_protocol_2_snapshot_reads(tmp_path, official):
    """Protocol 2 writes bytes through _codecs.encode(..., 'latin1'); that is the only form allowed."""
    nets = snapshot_networks()
    src = write_snapshot(tmp_path / "p2.pkl", official, 2, nets)
    loaded = load_module(import_official_pickle(src, tmp_path / "out"), "D")
    assert torch.equal(loaded.b4.out.weight, nets[2].b4.out.weight)
    with pytest.raises(UnsafePickleError, match="latin1"):
        read_snapshot(pickle.dumps(Evil(__import__("_codecs").encode, "x", "rot13"), 4))
