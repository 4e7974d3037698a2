"""The dataset interface: phantom folders, image folders, patient splits, streaming, error messages."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import gmia.data.datasets as datasets_module
from gmia.data.datasets import ImageFolder, PhantomFolder, patient_split, split_by_patient
from gmia.data.preprocess import Geometry, Preprocess, restore
from gmia.errors import ConfigError, InputError

FINDINGS = ["opacity", "effusion"]
SAMPLE_KEYS = {"image", "key", "patient", "labels", "index", "geometry"}


def write_phantom(root, domain="cxr", patients=3, studies=2, size=16, seed=0):
    """A tiny folder in the `gmia phantom` format, written with Pillow."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for p in range(patients):
        for s in range(studies):
            name = f"p{p:05d}_{s}.png"
            shape = (size, size) if domain == "cxr" else (size, size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / "images" / name)
            mask = np.zeros((size, size), np.uint8)
            mask[2:6, 3:9] = 255 * (s % 2)
            Image.fromarray(mask).save(root / "masks" / name)
            rows.append({"image": f"images/{name}", "mask": f"masks/{name}", "patient": f"p{p:05d}", "study": s,
                         "split": "test" if p == patients - 1 else "train",
                         "opacity": s % 2, "effusion": (p + s) % 2, "id_width": 0.1 * p})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    card = {"domain": domain, "findings": FINDINGS, "size": size, "seed": seed, "patients": patients,
            "studies": studies, "gmia_version": "0.1.0"}
    (root / "phantom.json").write_text(json.dumps(card))
    return root


@pytest.fixture
def phantom(tmp_path):
    return write_phantom(tmp_path / "ph")


def forbid_image_reads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("an image file was opened")

    monkeypatch.setattr(Image, "open", refuse)
    monkeypatch.setattr(datasets_module, "load_image", refuse)


def test_phantom_folder_samples(phantom):
    ds = PhantomFolder(phantom)
    assert len(ds) == 6 and ds.findings == tuple(FINDINGS) and ds.channels == 1 and ds.has_masks
    s = ds[3]
    assert set(s) == SAMPLE_KEYS | {"mask"}
    assert s["image"].shape == (1, 16, 16) and s["image"].dtype == torch.float32
    assert 0 <= s["image"].min() and s["image"].max() <= 1
    assert s["key"] == "images/p00001_1.png" and s["patient"] == "p00001" and s["index"] == 3
    assert s["labels"].tolist() == [1.0, 0.0]  # opacity = s % 2, effusion = (p + s) % 2
    assert s["mask"].shape == (1, 16, 16) and s["mask"].sum() == 24 and ds[2]["mask"].sum() == 0
    on_disk = np.asarray(Image.open(phantom / "images/p00001_1.png"), np.float32) / 255
    assert torch.equal(s["image"][0], torch.from_numpy(on_disk))
    assert ds[-1]["key"] == "images/p00002_1.png"
    with pytest.raises(IndexError):
        ds[6]


def test_reads_what_the_phantom_writer_writes(tmp_path):
    from gmia.data.phantoms import write
    from tests.conftest import toy_phantom_set

    ps = toy_phantom_set(patients=3, studies=2, size=16, channels=3)
    ds = PhantomFolder(write(ps, tmp_path / "set"))
    assert len(ds) == 6 and ds.findings == ps.finding_names and ds.channels == 3
    for i in (0, 5):
        s = ds[i]
        assert (s["image"] - torch.from_numpy(ps.images[i])).abs().max() <= 0.5 / 255 + 1e-6
        assert torch.equal(s["mask"], torch.from_numpy(ps.masks[i]).float())
        assert s["labels"].tolist() == ps.labels()[i].astype(np.float32).tolist()
    assert ds.patients()[::2] == ["p00000", "p00001", "p00002"]


def test_phantom_split_preprocess_and_metadata(phantom):
    ds = PhantomFolder(phantom, split="train", preprocess=Preprocess(size=8))
    assert len(ds) == 4 and set(ds.patients()) == {"p00000", "p00001"}
    assert list(ds.metadata["study"]) == [0, 1, 0, 1] and ds.metadata["id_width"].dtype == np.float64
    s = ds[1]
    assert s["image"].shape == (1, 8, 8) and s["mask"].shape == (1, 8, 8)
    assert restore(s["image"], s["geometry"]).shape == (1, 16, 16)
    with pytest.raises(ConfigError, match="valid splits: \\['test', 'train'\\]"):
        PhantomFolder(phantom, split="validation")


def test_face_phantom_is_rgb(tmp_path):
    ds = PhantomFolder(write_phantom(tmp_path / "face", domain="face"))
    assert ds.channels == 3 and ds[0]["image"].shape == (3, 16, 16)


def test_phantom_errors_name_the_file(phantom, tmp_path):
    with pytest.raises(InputError, match="phantom folder not found"):
        PhantomFolder(tmp_path / "nowhere")
    table = pd.read_csv(phantom / "metadata.csv").drop(columns=["effusion"])
    table.to_csv(phantom / "metadata.csv", index=False)
    with pytest.raises(InputError, match=r"metadata\.csv: missing columns \['effusion'\]"):
        PhantomFolder(phantom)
    (phantom / "phantom.json").unlink()
    with pytest.raises(InputError, match=r"expected .*phantom\.json.*gmia phantom"):
        PhantomFolder(phantom)


def test_phantom_file_of_wrong_size_is_an_input_error(phantom):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(phantom / "images/p00000_1.png")
    ds = PhantomFolder(phantom)
    with pytest.raises(InputError, match=r"p00000_1\.png: expected a 1×16×16 image"):
        ds[1]
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(phantom / "images/p00000_1.png")
    with pytest.raises(InputError, match=r"p00000_1\.png: expected a 1×16×16 image .* got 3×16×16"):
        ds[1]


def test_index_is_cheap_and_holds_no_pixels(phantom, monkeypatch):
    ds = PhantomFolder(phantom)
    forbid_image_reads(monkeypatch)
    assert ds.keys()[0] == "images/p00000_0.png" and len(set(ds.keys())) == 6
    assert ds.patients().count("p00001") == 2 and ds.labels().shape == (6, 2)
    with pytest.raises(AssertionError, match="opened"):
        ds[0]


def test_dataloader_collates_samples(phantom):
    loader = DataLoader(PhantomFolder(phantom, preprocess=Preprocess(size=8)), batch_size=4)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 1, 8, 8) and batch["labels"].shape == (4, 2)
    assert batch["key"][0] == "images/p00000_0.png" and batch["index"].tolist() == [0, 1, 2, 3]
    geoms = Geometry.unbatch(batch["geometry"])
    assert geoms[0] == Geometry(16, 16, 1, 0, 0, 16, 16, 8, 8)


def test_image_folder_scan(tmp_path):
    root = tmp_path / "imgs"
    (root / "b" / "deep").mkdir(parents=True)
    (root / ".cache").mkdir()
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(root / "a.png")
    Image.fromarray(np.full((4, 7, 3), 255, np.uint8)).save(root / "b" / "deep" / "c.JPG")
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(root / ".cache" / "hidden.png")
    (root / "notes.txt").write_text("not an image")
    ds = ImageFolder(root, channels=1)
    assert ds.keys() == ["a.png", "b/deep/c.JPG"] and ds.patients() == ds.keys()
    assert ds.findings == () and ds[1]["labels"].shape == (0,) and not ds.has_masks
    assert ds[1]["image"].shape == (1, 4, 7) and ds[1]["image"].min() > 0.95  # RGB → gray
    assert ImageFolder(root)[0]["image"].shape == (1, 6, 5)  # channels from the first image
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no image files under .*empty; expected files ending in \.png"):
        ImageFolder(tmp_path / "empty")


def test_image_folder_with_labels_csv(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for name in ("x.png", "y.png", "z.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / name)
    (root / "labels.csv").write_text("file,patient,nodule,edema\nx.png,P1,1,0\n./y.png,,0,\nz.png,P1,1,1\n")
    ds = ImageFolder(root, "labels.csv")
    assert ds.findings == ("nodule", "edema") and ds.keys() == ["x.png", "y.png", "z.png"]
    assert ds.patients() == ["P1", "y.png", "P1"]  # no patient id: the key stands in
    assert torch.isnan(ds[1]["labels"][1]) and ds[2]["labels"].tolist() == [1.0, 1.0]
    assert ImageFolder(root, root / "labels.csv", findings=["edema"]).labels().shape == (3, 1)


@pytest.mark.parametrize("content,match", [
    ("name,nodule\nx.png,1\n", r"labels\.csv: no image column .*--image-column"),
    ("file,nodule\nx.png,1\nz.png,yes\n", r"labels\.csv: finding column 'nodule' must hold numbers .*line 3"),
    ("file,nodule\nx.png,1\nx.png,0\n", r"labels\.csv: image 'x.png' is listed 2 times"),
    ("file,nodule\n../../etc/passwd,1\n", "outside the dataset root"),
])
def test_labels_csv_errors(tmp_path, content, match):
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(InputError, match=match):
        ImageFolder(tmp_path, "labels.csv")


def test_missing_labels_csv_and_corrupt_file(tmp_path):
    with pytest.raises(InputError, match=r"labels CSV not found: expected .*nope\.csv"):
        ImageFolder(tmp_path, "nope.csv")
    with pytest.raises(InputError, match="image folder not found"):
        ImageFolder(tmp_path / "absent")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    ds = ImageFolder(tmp_path, channels=1)
    with pytest.raises(InputError, match=r"cannot read image .*broken\.png"):
        ds[0]


def test_streaming_5000_rows_opens_no_file(tmp_path, monkeypatch):
    rows = "\n".join(f"sub{i % 50}/img{i:05d}.png,pt{i % 977},{i % 2},{i % 3 - 1}" for i in range(5000))
    (tmp_path / "labels.csv").write_text("image,patient,a,b\n" + rows + "\n")
    forbid_image_reads(monkeypatch)
    ds = ImageFolder(tmp_path, "labels.csv", channels=1)  # the images do not even exist
    assert len(ds) == 5000 and ds.keys()[4999] == "sub49/img04999.png" and len(set(ds.patients())) == 977
    assert len(pickle.dumps(ds)) < 400_000  # the index only: 5000 decoded 64×64 images would be 80 MB
    monkeypatch.undo()
    with pytest.raises(InputError, match=r"not found: .*img00000\.png"):
        ds[0]


def test_patient_splits_are_disjoint_stable_and_keep_labels(phantom):
    ds = PhantomFolder(phantom)
    parts = {s: split_by_patient(ds, s, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=3)
             for s in ("train", "val", "test")}
    pats = {s: set(p.patients()) for s, p in parts.items()}
    assert sum(len(p) for p in parts.values()) == len(ds)
    assert not (pats["train"] & pats["val"] or pats["train"] & pats["test"] or pats["val"] & pats["test"])
    # a patient's split depends on its id only, not on which other patients are in the dataset
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    assert [patient_split(f"p{i}", fr) for i in range(50)] == [patient_split(f"p{i}", fr) for i in range(50)]
    assert 30 <= sum(patient_split(f"p{i}", fr) == "train" for i in range(50)) <= 48
    sub = ds.filter_patients(["p00001"])
    assert sub.keys() == ["images/p00001_0.png", "images/p00001_1.png"]
    assert sub[1]["labels"].tolist() == ds[3]["labels"].tolist() and sub[1]["index"] == 1
    assert list(sub.metadata["patient"]) == ["p00001", "p00001"]
    with pytest.raises(ConfigError, match="valid: \\['test', 'train', 'val'\\]"):
        split_by_patient(ds, "holdout")
