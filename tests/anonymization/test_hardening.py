"""An unlucky operator and a hostile input: odd file names, odd files, full disks, concurrent runs, bad numbers.

Each test holds one such case; the run must end with a released image or an error row
for every input, and nothing derived from an input's name may reach a file outside ``private/``.
"""

import csv
import dataclasses
import errno
import json
import os
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from gmia.anonymization import anonymize_config, anonymize_dataset
from gmia.cli_options import open_input
from gmia.anonymization.outputs import RunFolder
from gmia.cli import cli
from gmia.data.preprocess import load_image
from gmia.errors import ConfigError, InputError


def _cfg(**kw):
    base = dict(margin=1.0, privacy=None, hinge_slack=0.0, patience=2, max_steps=3, lr=0.05, batch_size=4,
                refine_steps=0, lambda_surrogate=0.0)
    return dataclasses.replace(anonymize_config("phantom-cxr64"), **{**base, **kw})


def _png(path, size=64, seed=0, mode="L"):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (size, size) if mode == "L" else (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def _anonymize(data_dir, out, ckpt, **kw):
    data = open_input("phantom-cxr64", str(data_dir), None, None, None)
    return anonymize_dataset(_cfg(), data, out, checkpoints=ckpt, progress=False, **kw)


def _rows(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _public_bytes(out):
    """Every byte outside private/, file names included."""
    blobs = []
    for path in out.rglob("*"):
        if "private" in path.relative_to(out).parts:
            continue
        blobs.append(str(path.relative_to(out)).encode("utf-8", "surrogateescape"))
        if path.is_file():
            blobs.append(path.read_bytes())
    return b"\n".join(blobs)


def test_source_names_never_reach_public_files(tmp_path, tiny_checkpoints):
    """Pillow escapes the path in its messages (\\n, \\\\): plain replacement of the name missed those forms."""
    data = tmp_path / "in"
    _png(data / "ok.png")
    names = ["PID98765\nstudy1.png", "PID24680\\study2.png", "PID13579_ünïcødé.png", "PID11223 'q\".png"]
    for name in names:
        (data / name).write_bytes(b"not an image at all")
    out = tmp_path / "out"
    summary = _anonymize(data, out, tiny_checkpoints, write_linkage=True)
    assert summary["error"] == 4 and summary["released"] == 1
    public = _public_bytes(out)
    for token in ("PID98765", "PID24680", "PID13579", "PID11223", "study1", "study2", str(tmp_path)):
        assert token.encode() not in public, token
    errors = [r["error"] for r in _rows(out) if r["status"] == "error"]
    assert all("cannot read image" in e and "private/errors.jsonl" in e for e in errors)
    private = [json.loads(line) for line in (out / "private" / "errors.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in private) == sorted(names)         # the operator still learns which file


def test_an_output_folder_inside_the_input_is_never_read_back(tmp_path, tiny_checkpoints):
    data = tmp_path / "in"
    for k in range(3):
        _png(data / f"img{k}.png", seed=k)
    out = data / "anon"
    first = _anonymize(data, out, tiny_checkpoints)
    assert first["released"] == 3
    again = _anonymize(data, out, tiny_checkpoints, resume=True)         # the folder now holds out/images/*.png
    assert (again["records"], again["released"], again["this_call"]["released"]) == (3, 3, 0)
    assert len(list((out / "images").iterdir())) == 3


def test_a_fifo_gets_an_error_row_instead_of_blocking(tmp_path, tiny_checkpoints):
    data = tmp_path / "in"
    _png(data / "ok.png")
    fifo = data / "x.png"
    os.mkfifo(fifo)
    result = {}

    def read():
        try:
            load_image(fifo)
        except Exception as exc:  # noqa: BLE001 - whatever it raises, it must not block
            result["exc"] = exc

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # unblock the reader (a writer opening the FIFO), then fail
        with open(fifo, "wb"):
            pass
        reader.join(timeout=10)
        pytest.fail("reading a FIFO blocked")
    assert isinstance(result.get("exc"), InputError) and "not a regular file" in str(result["exc"])
    out = tmp_path / "out"
    summary = _anonymize(data, out, tiny_checkpoints)
    assert (summary["released"], summary["error"]) == (1, 1)
    assert any("not a regular file" in r.get("error", "") for r in _rows(out))


def test_pixel_count_is_bounded_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)          # ~20 KB on disk, 144 M pixels decoded
    assert bomb.stat().st_size < 200_000
    with pytest.raises(InputError, match="144,000,000 pixels, above the limit") as info:
        load_image(bomb)
    assert info.value.reason.startswith("image too large")
    small = _png(tmp_path / "small.png", size=64)
    assert load_image(small, max_pixels=4096).shape == (1, 64, 64)
    with pytest.raises(InputError, match="--max-pixels"):
        load_image(small, max_pixels=4095)


def test_tiny_and_blank_inputs_are_flagged(tmp_path, tiny_checkpoints):
    data = tmp_path / "in"
    _png(data / "ok.png")
    _png(data / "tiny.png", size=8)
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(data / "blank.png")
    out = tmp_path / "out"
    summary = _anonymize(data, out, tiny_checkpoints, write_linkage=True)
    assert (summary["released"], summary["error"]) == (1, 2)
    errors = sorted(r["error"] for r in _rows(out) if r["status"] == "error")
    assert "blank image" in errors[0] and "image too small" in errors[1]


def test_disk_full_at_start_leaves_a_folder_that_starts_again(tmp_path, tiny_checkpoints, monkeypatch):
    data = tmp_path / "in"
    _png(data / "ok.png")
    out = tmp_path / "out"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        _anonymize(data, out, tiny_checkpoints)
    monkeypatch.undo()
    assert not (out / "private" / "resume.key").exists()                  # no empty key left behind
    assert _anonymize(data, out, tiny_checkpoints)["released"] == 1         # same command, now with space


def test_disk_full_mid_run_is_one_line_and_resumable(tmp_path, tiny_checkpoints, phantom_dir, monkeypatch):
    from gmia.anonymization import gate

    real = gate.save_image
    calls = {"n": 0}

    def save_until_full(img, path, bits=8):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(img, path, bits=bits)

    monkeypatch.setattr(gate, "save_image", save_until_full)
    args = ["anonymize", "--input", str(phantom_dir), "--checkpoints", str(tiny_checkpoints), "--margin", "1.0",
            "--max-steps", "2", "--batch-size", "2", "--quiet", "--out", str(tmp_path / "out")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.exception  # not a raw OSError
    message = res.output.strip().splitlines()
    assert len(message) == 1 and "No space left on device" in message[0] and "staging" in message[0]
    assert "free some space" in message[0] and "--resume" in message[0]
    monkeypatch.setattr(gate, "save_image", real)
    res = CliRunner().invoke(cli, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    rows = _rows(tmp_path / "out")
    assert len(rows) == 12 and all(r["status"] == "released" for r in rows)


def test_a_live_run_folder_is_locked(tmp_path):
    out = tmp_path / "out"
    first = RunFolder(out, {}, {"k": 1}, resume=False, shard=(0, 1))
    with pytest.raises(ConfigError, match=rf"being written by gmia process {os.getpid()} on .*--resume"):
        RunFolder(out, {}, {"k": 1}, resume=True, shard=(0, 1))
    other_shard = RunFolder(out, {}, {"k": 1}, resume=True, shard=(1, 2))  # shards of one run write side by side
    other_shard.close()
    first.close()
    RunFolder(out, {}, {"k": 1}, resume=True, shard=(0, 1)).close()         # free again once released


def test_linkage_quotes_names_with_newlines(tmp_path, tiny_checkpoints):
    data = tmp_path / "in"
    names = ["a\nb.png", "c\rd.png", "e,f.png", 'g"h.png']
    for k, name in enumerate(names):
        _png(data / name, seed=k)
    out = tmp_path / "out"
    summary = _anonymize(data, out, tiny_checkpoints, write_linkage=True)
    assert summary["released"] == 4
    with open(out / "private" / "linkage.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["source", "pseudonym"] and sorted(r[0] for r in rows[1:]) == sorted(names)
    assert {r[1] for r in rows[1:]} == {p.stem for p in (out / "images").iterdir()}


def test_hidden_files_are_inputs_and_hidden_folders_are_announced(tmp_path, tiny_checkpoints):
    data = tmp_path / "in"
    _png(data / "visible.png", seed=1)
    _png(data / ".hidden.png", seed=2)
    _png(data / ".ipynb_checkpoints" / "copy.png", seed=3)
    with pytest.warns(UserWarning, match="skipped 1 image file"):
        summary = _anonymize(data, tmp_path / "out", tiny_checkpoints)
    assert (summary["records"], summary["released"]) == (2, 2)


@pytest.mark.parametrize("flag,value", [("--lr", "inf"), ("--lambda-mdl", "nan"), ("--margin", "nan"),
                                        ("--lambda-surrogate", "-1")])
def test_non_finite_or_negative_numbers_are_refused(flag, value):
    res = CliRunner().invoke(cli, ["anonymize", "--input", "x", "--out", "y", flag, value, "--dry-run"])
    assert res.exit_code != 0 and "Error:" in res.output and res.output.count("\n") == 1, res.output
    with pytest.raises(ConfigError):
        anonymize_config("phantom-cxr64", **{flag[2:].replace("-", "_"): float(value)})


@pytest.mark.slow
def test_fuzzed_files_through_gmia_anonymize(tmp_path, tiny_checkpoints):
    from tests.data.test_input_fuzz import fuzz_folder

    root = tmp_path / "fuzz"
    fuzz_folder(root, 10, seed=11)
    _png(root / "good-a.png", seed=1)
    _png(root / "good-b.png", seed=2)
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["anonymize", "--input", str(root), "--out", str(out), "--checkpoints",
                                   str(tiny_checkpoints), "--margin", "1.0", "--max-steps", "2", "--quiet"])
    assert res.exit_code == 0 and res.exception is None, res.output
    assert "Traceback" not in res.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["status"] for r in rows} <= {"released", "error"}
    assert sum(r["status"] == "released" for r in rows) >= 2
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(p == out or out in p.parents for p in new)   # nothing written outside OUT


def test_a_run_points_to_its_error_log_and_leaves_no_staging_folder(tmp_path, tiny_checkpoints, capsys):
    data = tmp_path / "in"
    _png(data / "ok.png")
    (data / "broken.png").write_bytes(b"nope")
    out = tmp_path / "out"
    torch_threads = __import__("torch").get_num_threads()
    _anonymize(data, out, tiny_checkpoints)
    printed = capsys.readouterr().out
    assert f"1 input(s) could not be read; which files and why: {out / 'private' / 'errors.jsonl'}" in printed
    assert not list((out / "private").glob("staging*"))
    assert f"{torch_threads} threads" in json.loads((out / "run.json").read_text())["hardware"]
