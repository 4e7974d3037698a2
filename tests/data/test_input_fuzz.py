"""Fuzzing the input layer: random and mutated PNG, JPEG and DICOM files (seeded, made at test time).

Every file must give a sample or one clear ``InputError`` naming it, never another exception, a hang or a
crash (a dozen of them also go through ``gmia anonymize``: tests/anonymization/test_hardening.py).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from gmia.data.datasets import ImageFolder
from gmia.data.preprocess import Preprocess
from gmia.errors import InputError

from tests.data.test_adapters import write_dicom


def _png(rng, mode):
    size = int(rng.integers(16, 80))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (size, size), dtype=np.uint16))
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def _encode(img, fmt):
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _dicom(rng, scratch):
    """A valid DICOM file's bytes: 12-bit, MONOCHROME1 or 2, with or without rescale and window."""
    size = int(rng.integers(16, 48))
    tags = {}
    if rng.random() < 0.5:
        tags.update(RescaleSlope=2, RescaleIntercept=-1024)
    if rng.random() < 0.5:
        tags.update(WindowCenter=2048, WindowWidth=4096)
    photometric = "MONOCHROME1" if rng.random() < 0.5 else "MONOCHROME2"
    path = write_dicom(scratch, rng.integers(0, 4096, (size, size)), photometric, patient="FUZZ", **tags)
    return path.read_bytes()


def _mutate(rng, data: bytes) -> bytes:
    """One of: bit flips, a truncation, a spliced run of random bytes, or a zeroed block."""
    b = bytearray(data)
    kind = int(rng.integers(0, 4))
    if kind == 0:
        for pos in rng.integers(0, len(b), int(rng.integers(1, 12))):
            b[pos] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:
        b = b[: int(rng.integers(0, len(b)))]
    elif kind == 2:
        pos = int(rng.integers(0, len(b)))
        b[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    else:
        pos = int(rng.integers(0, len(b)))
        b[pos:pos + int(rng.integers(1, 32))] = bytes(32)[: len(b[pos:pos + 32])]
    return bytes(b)


def fuzz_folder(root, n: int, seed: int = 0) -> list[str]:
    """``n`` files under ``root``: valid, mutated and random PNG / JPEG / DICOM, named by their kind."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        kind = ("png", "png16", "jpg", "rgbjpg", "dcm")[i % 5]
        if kind == "dcm":
            data, suffix = _dicom(rng, root / ".scratch.dcm"), ".dcm"
        elif kind in ("jpg", "rgbjpg"):
            data, suffix = _encode(_png(rng, "RGB" if kind == "rgbjpg" else "L"), "JPEG"), ".jpg"
        else:
            data, suffix = _encode(_png(rng, "I;16" if kind == "png16" else "L"), "PNG"), ".png"
        fate = rng.random()
        if fate < 0.7:
            data = _mutate(rng, data)
            if rng.random() < 0.3:
                data = _mutate(rng, data)
        elif fate < 0.8:
            data = rng.integers(0, 256, int(rng.integers(0, 600)), dtype=np.uint8).tobytes()
        name = f"f{i:03d}-{kind}{suffix}"
        (root / name).write_bytes(data)
        names.append(name)
    (root / ".scratch.dcm").unlink(missing_ok=True)
    return names


def test_every_fuzzed_file_gives_a_sample_or_one_input_error(tmp_path):
    names = fuzz_folder(tmp_path / "fuzz", 300, seed=7)
    data = ImageFolder(tmp_path / "fuzz", preprocess=Preprocess(size=64, channels=1))
    ok = refused = 0
    for i in range(len(data)):
        try:
            sample = data[i]
        except InputError as exc:
            message = str(exc)
            assert data.keys()[i] in message and "\n" not in message, message  # names its file, one line
            refused += 1
            continue
        x = sample["image"]
        assert x.shape == (1, 64, 64) and bool(((x >= 0) & (x <= 1)).all()), data.keys()[i]
        ok += 1
    assert ok + refused == len(names) == 300
    assert ok >= 30 and refused >= 100                      # the corpus exercises both outcomes
