"""Real-data adapters on tiny fake trees that mimic the real layouts; DICOM files made with pydicom."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from gmia.data.adapters import CheXpert, ChestXray14, DicomFolder, MimicCXR, read_dicom
from gmia.data.adapters.dicom import patient_pseudonym
from gmia.data.preprocess import Preprocess, load_image
from gmia.data.registry import DATASETS, open_dataset
from gmia.errors import ConfigError, InputError

CHEX_FINDINGS = ["Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                 "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                 "Fracture", "Support Devices"]


def gray_jpg(path, h=20, w=24, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), value, np.uint8)).save(path)


# ---------------------------------------------------------------------------------------------- MIMIC

MIMIC_IMAGES = [  # subject, study, dicom_id, view, split
    (10000032, 50414267, "02aa804e", "PA", "train"),
    (10000032, 50414267, "174413ec", "LATERAL", "train"),
    (10000032, 53189527, "2a2277a9", "AP", "train"),
    (10000764, 57375967, "096052b7", "AP", "test"),
    (11000011, 51029426, "8f2e1a77", "PA", "validate"),
]


def write_mimic(root, images=True):
    root.mkdir(parents=True)
    studies = sorted({(s, st) for s, st, *_ in MIMIC_IMAGES})
    labels = pd.DataFrame([{"subject_id": s, "study_id": st, **{f: np.nan for f in CHEX_FINDINGS},
                            "No Finding": np.nan} for s, st in studies])
    labels.loc[0, "Cardiomegaly"] = 1.0
    labels.loc[0, "Edema"] = -1.0  # uncertain → NaN
    labels.loc[2, "No Finding"] = 1.0  # → all findings 0
    labels.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    meta = pd.DataFrame([{"dicom_id": d, "subject_id": s, "study_id": st, "PerformedProcedureStepDescription": "CHEST",
                          "ViewPosition": v, "Rows": 20, "Columns": 24, "StudyDate": 21800506, "StudyTime": 213014.5}
                         for s, st, d, v, _ in MIMIC_IMAGES])
    meta.to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    pd.DataFrame([{"dicom_id": d, "study_id": st, "subject_id": s, "split": sp} for s, st, d, _, sp in MIMIC_IMAGES]) \
        .to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    if images:
        for s, st, d, *_ in MIMIC_IMAGES:
            gray_jpg(root / "files" / f"p{str(s)[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg")
    return root


def test_mimic_adapter(tmp_path):
    root = write_mimic(tmp_path / "mimic-cxr-jpg")
    np.random.seed(123)
    expected_draw = np.random.rand()
    np.random.seed(123)
    ds = MimicCXR(root)
    assert np.random.rand() == expected_draw  # torchxrayvision's np.random.seed(0) did not leak out
    assert len(ds) == 4  # the lateral is dropped
    assert ds.keys()[0] == "files/p10/p10000032/s50414267/02aa804e.jpg"
    assert ds.patients() == ["10000032", "10000032", "10000764", "11000011"]
    assert "Effusion" in ds.findings and "Cardiomegaly" in ds.findings
    s = ds[0]
    assert s["image"].shape == (1, 20, 24) and torch.allclose(s["image"], torch.tensor(100 / 255), atol=0.02)
    lab = dict(zip(ds.findings, s["labels"].tolist()))
    assert lab["Cardiomegaly"] == 1.0 and np.isnan(lab["Edema"]) and np.isnan(lab["Atelectasis"])
    assert ds[2]["labels"].eq(0).all()  # "No Finding" study
    assert MimicCXR(root, split="test").keys() == ["files/p10/p10000764/s57375967/096052b7.jpg"]
    assert len(MimicCXR(root, views=["*"])) == 5
    assert MimicCXR(root, preprocess=Preprocess(size=8))[1]["image"].shape == (1, 8, 8)


def test_mimic_errors(tmp_path):
    with pytest.raises(InputError, match=r"MIMIC-CXR-JPG root not found: .*nowhere"):
        MimicCXR(tmp_path / "nowhere")
    root = write_mimic(tmp_path / "m", images=False)
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    with pytest.raises(InputError, match=r"MIMIC metadata CSV not found: expected .*-metadata\.csv\.gz"):
        MimicCXR(root)
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        MimicCXR(write_mimic(tmp_path / "m2", images=False), split="dev")
    with pytest.raises(InputError, match=r"not found: .*02aa804e\.jpg"):
        MimicCXR(tmp_path / "m2")[0]


def test_mimic_5000_rows_stream_without_opening_images(tmp_path, monkeypatch):
    root = tmp_path / "big"
    root.mkdir()
    n = 5000
    subj, study = 10000000 + np.arange(n) // 4, 50000000 + np.arange(n) // 2
    pd.DataFrame({"subject_id": subj[::2], "study_id": study[::2], "Edema": 1.0, "No Finding": np.nan}) \
        .to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    pd.DataFrame({"dicom_id": [f"d{i}" for i in range(n)], "subject_id": subj, "study_id": study,
                  "ViewPosition": "PA", "StudyDate": 1}).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)

    def refuse(*a, **k):
        raise AssertionError("an image file was opened")

    monkeypatch.setattr(Image, "open", refuse)
    ds = MimicCXR(root)
    assert len(ds) == n and len(set(ds.keys())) == n and len(set(ds.patients())) == n // 4


# ---------------------------------------------------------------------------------------------- CheXpert


def write_chexpert(parent):
    root = parent / "CheXpert-v1.0-small"
    rows = {"train": [("patient00001/study1/view1_frontal.jpg", "Frontal", "AP"),
                      ("patient00001/study1/view2_lateral.jpg", "Lateral", np.nan),
                      ("patient00002/study2/view1_frontal.jpg", "Frontal", "PA")],
            "valid": [("patient64541/study1/view1_frontal.jpg", "Frontal", "AP")]}
    for split, items in rows.items():
        table = []
        for k, (rel, fl, appa) in enumerate(items):
            gray_jpg(root / split / rel, value=50 + 50 * k)
            table.append({"Path": f"CheXpert-v1.0-small/{split}/{rel}", "Sex": "Female", "Age": 68,
                          "Frontal/Lateral": fl, "AP/PA": appa, "No Finding": np.nan,
                          **{f: np.nan for f in CHEX_FINDINGS}})
        table = pd.DataFrame(table)
        table.loc[0, "Pleural Effusion"] = 1.0
        table.loc[0, "Atelectasis"] = -1.0
        table.to_csv(root / f"{split}.csv", index=False)
    return root


def test_chexpert_adapter(tmp_path):
    root = write_chexpert(tmp_path)
    ds = CheXpert(tmp_path)  # the parent folder is accepted too
    assert ds.keys() == ["train/patient00001/study1/view1_frontal.jpg", "train/patient00002/study2/view1_frontal.jpg"]
    assert ds.patients() == ["00001", "00002"] and ds.root == root
    lab = dict(zip(ds.findings, ds[0]["labels"].tolist()))
    assert lab["Effusion"] == 1.0 and np.isnan(lab["Atelectasis"])
    assert torch.allclose(ds[1]["image"], torch.tensor(150 / 255), atol=0.02)  # the third CSV row
    val = CheXpert(root, split="val")
    assert val.patients() == ["64541"] and val[0]["image"].shape == (1, 20, 24)
    (root / "valid.csv").rename(root / "holdout.csv")
    with pytest.raises(InputError, match=r"name it train\.csv or valid\.csv"):
        CheXpert(root, csv=root / "holdout.csv")
    with pytest.raises(InputError, match=r"CheXpert labels CSV not found: expected .*valid\.csv"):
        CheXpert(root, split="valid")


# ---------------------------------------------------------------------------------------------- NIH


def write_nih(root):
    entries = [("00000001_000.png", "Cardiomegaly", 1, "PA"), ("00000001_001.png", "Cardiomegaly|Effusion", 1, "PA"),
               ("00000002_000.png", "No Finding", 2, "AP"), ("00000003_000.png", "Mass", 3, "LL")]
    for name, *_ in entries:
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 4), 200, np.uint8)).save(root / "images" / name)  # some NIH PNGs are RGBA
    pd.DataFrame([{"Image Index": n, "Finding Labels": f, "Follow-up #": 0, "Patient ID": p, "Patient Age": 58,
                   "Patient Sex": "M", "View Position": v, "OriginalImage[Width": 2682, "Height]": 2749,
                   "OriginalImagePixelSpacing[x": 0.143, "y]": 0.143} for n, f, p, v in entries]) \
        .to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n")
    (root / "test_list.txt").write_text("00000002_000.png\n00000003_000.png\n")
    return root


def test_nih_adapter(tmp_path):
    root = write_nih(tmp_path / "nih")
    ds = ChestXray14(root)
    assert ds.keys() == ["images/00000001_000.png", "images/00000001_001.png", "images/00000002_000.png"]
    assert ds.patients() == ["1", "1", "2"]
    lab = dict(zip(ds.findings, ds[1]["labels"].tolist()))
    assert lab["Cardiomegaly"] == 1 and lab["Effusion"] == 1 and lab["Mass"] == 0 and len(ds.findings) == 14
    s = ds[0]
    assert s["image"].shape == (1, 16, 16) and torch.allclose(s["image"], torch.tensor(200 / 255), atol=1e-3)
    assert ChestXray14(root, split="test").keys() == ["images/00000002_000.png"]
    (root / "Data_Entry_2017_v2020.csv").unlink()
    with pytest.raises(InputError, match=r"ChestX-ray14 labels CSV not found: expected .*Data_Entry_2017_v2020\.csv"):
        ChestXray14(root)


# ---------------------------------------------------------------------------------------------- DICOM


def write_dicom(path, arr, photometric="MONOCHROME2", patient="PAT-1", bits=12, **tags):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "DX"
    if patient is not None:
        ds.PatientID = patient
    ds.set_pixel_data(np.asarray(arr, np.uint16), photometric, bits)
    for k, v in tags.items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


RAW = [[0, 1000], [2000, 4000]]


def test_dicom_rescale_and_monochrome(tmp_path):
    p2 = write_dicom(tmp_path / "m2.dcm", RAW, RescaleSlope=2, RescaleIntercept=-100)
    x = read_dicom(p2)  # no VOI: min..max of the rescaled values
    assert x.shape == (1, 2, 2) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    p1 = write_dicom(tmp_path / "m1.dcm", RAW, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100)
    assert torch.allclose(read_dicom(p1)[0], torch.tensor([[1.0, 0.75], [0.5, 0.0]]))  # low values are white


def test_dicom_window_is_applied(tmp_path):
    path = write_dicom(tmp_path / "w.dcm", [[0, 1000], [3000, 4095]], WindowCenter=1000, WindowWidth=1000)
    x = read_dicom(path)[0]
    # LINEAR window 500..1500: 0 → black, 1000 → mid-grey, 3000 and 4095 → white
    assert x[0, 0] == 0 and abs(x[0, 1] - 0.5) < 1e-3 and x[1, 0] == 1 and x[1, 1] == 1


def test_dicom_voi_lut_sequence_is_applied(tmp_path):
    from pydicom import dcmread
    from pydicom.dataset import Dataset

    ds = dcmread(write_dicom(tmp_path / "lut.dcm", [[0, 1], [2, 3]]))
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 8])  # LUT Descriptor: 4 entries, first maps 0, 8 bits
    item.add_new(0x00283006, "US", [10, 100, 200, 250])  # LUT Data
    ds.VOILUTSequence = [item]
    ds.save_as(tmp_path / "lut.dcm")
    expected = (torch.tensor([[10.0, 100.0], [200.0, 250.0]]) - 10) / 240
    assert torch.allclose(read_dicom(tmp_path / "lut.dcm")[0], expected)


def test_dicom_through_load_image_and_errors(tmp_path):
    path = write_dicom(tmp_path / "noext", RAW)  # no suffix: recognised by its DICM preamble
    assert load_image(path, channels=3).shape == (3, 2, 2)
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(InputError, match=r"cannot read DICOM .*bad\.dcm"):
        read_dicom(tmp_path / "bad.dcm")


def test_dicom_folder_groups_patients_by_keyed_pseudonym(tmp_path):
    import hashlib

    root = tmp_path / "dcm"
    write_dicom(root / "a" / "1.dcm", RAW, patient="MRN-7")
    write_dicom(root / "a" / "2.dcm", RAW, patient="MRN-7")
    write_dicom(root / "b" / "3.dcm", RAW, patient=None)
    write_dicom(root / "b" / "4.dcm", RAW, patient="MRN-8")
    ds = DicomFolder(root, preprocess=Preprocess(size=4))
    assert ds.keys() == ["a/1.dcm", "a/2.dcm", "b/3.dcm", "b/4.dcm"]
    pats = ds.patients()
    assert pats[0] == pats[1] != pats[3] and "MRN-7" not in pats[0] and pats[2] == "b/3.dcm"
    unsalted = hashlib.sha256(b"MRN-7").hexdigest()
    assert pats[0][4:] not in unsalted                                  # not an unsalted hash of the id
    assert DicomFolder(root).patients()[0] != pats[0]                   # no key given: random per dataset object
    ds.use_patient_key(b"k" * 32)
    keyed = ds.patients()
    assert keyed[0] == keyed[1] == patient_pseudonym("MRN-7", b"k" * 32) != pats[0]
    other = DicomFolder(root)
    other.use_patient_key(b"k" * 32)
    assert other.patients() == keyed                                    # same key: same pseudonyms (resume, shards)
    s = ds[0]
    assert s["image"].shape == (1, 4, 4) and s["patient"] == keyed[0]


def test_registry():
    assert list(DATASETS) == ["phantom", "folder", "dicom", "mimic", "chexpert", "nih"]
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'; valid: phantom, folder, dicom, mimic"):
        open_dataset("imagenet", "/data")


def test_registry_opens_by_name(tmp_path):
    root = write_nih(tmp_path / "nih")
    assert open_dataset("nih", root, split="train").keys() == ["images/00000001_000.png", "images/00000001_001.png"]
    assert len(open_dataset("folder", root / "images")) == 4
