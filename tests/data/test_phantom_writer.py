import csv
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from gmia.data.phantoms import assign_splits, write
from gmia.errors import InputError
from tests.conftest import toy_phantom_set


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_write_layout_and_metadata(tmp_path):
    ps = toy_phantom_set(patients=3, studies=2, size=16)
    write(ps, tmp_path / "set")
    rows = list(csv.DictReader(open(tmp_path / "set" / "metadata.csv")))
    assert len(rows) == 6
    assert list(rows[0])[:5] == ["image", "mask", "patient", "study", "split"]
    assert {"finding_a", "finding_b", "id_width"} <= set(rows[0])
    img = np.asarray(Image.open(tmp_path / "set" / rows[1]["image"]))
    assert img.shape == (16, 16) and img.dtype == np.uint8
    assert np.abs(img / 255.0 - ps.images[1, 0]).max() <= 0.5 / 255 + 1e-6
    mask = np.asarray(Image.open(tmp_path / "set" / rows[1]["mask"]))
    assert set(np.unique(mask)) <= {0, 255} and ((mask > 0) == (ps.masks[1, 0] > 0)).all()
    card = json.loads((tmp_path / "set" / "phantom.json").read_text())
    assert card["findings"] == ["finding_a", "finding_b"] and card["images"] == 6


def test_write_rgb_and_determinism(tmp_path):
    ps = toy_phantom_set(channels=3)
    write(ps, tmp_path / "a")
    write(toy_phantom_set(channels=3), tmp_path / "b")
    assert Image.open(next((tmp_path / "a" / "images").glob("*.png"))).mode == "RGB"
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_write_refuses_to_overwrite(tmp_path):
    write(toy_phantom_set(), tmp_path)
    with pytest.raises(InputError, match="already exists"):
        write(toy_phantom_set(), tmp_path)


def test_splits_are_by_patient_and_seeded():
    s = assign_splits(100, seed=3)
    assert {k: int((s == k).sum()) for k in ("train", "val", "test")} == {"train": 70, "val": 10, "test": 20}
    assert (assign_splits(100, seed=3) == s).all() and not (assign_splits(100, seed=4) == s).all()
    assert (assign_splits(2, seed=0) == "test").sum() == 1
