"""Fixtures for the fit tests: 256-px chest phantoms of 40 patients written as a MIMIC-CXR-JPG tree (its folder
layout and CSV columns) and as a labelled folder of your own."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from gmia.data import phantoms

# phantom finding → the MIMIC-CXR-JPG (CheXpert labeller) column it stands for
MIMIC_COLUMNS = {"lung_opacity": "Lung Opacity", "atelectasis": "Atelectasis", "pleural_effusion": "Pleural Effusion",
                 "support_devices": "Support Devices", "cardiomegaly": "Cardiomegaly", "nodule": "Lung Lesion"}
CHEXPERT = ["Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
            "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
            "Support Devices", "No Finding"]


@pytest.fixture(scope="session")
def cxr256():
    """40 patients x 2 studies of 256-px chest phantoms, in memory."""
    return phantoms.generate("cxr", patients=40, studies=2, size=256, seed=3)


def _uint8(x):
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def write_mimic(ps, root):
    """MIMIC-CXR-JPG 2.0.0 as PhysioNet ships it: files/p<2 digits>/p<subject>/s<study>/<dicom_id>.jpg, the
    chexpert, metadata and split CSVs (gzipped). One PA image per study, plus one lateral the adapter drops."""
    labels, meta, split = [], [], []
    for i in range(len(ps)):
        subject, study = 10000000 + 37 * int(ps.patient[i]), 50000000 + 1000 * int(ps.patient[i]) + int(ps.study[i])
        dicom = f"{i:08x}-5c1d7e2a-3b9f6c10-8e4d2a77-{i:08x}"
        path = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_uint8(ps.images[i, 0])).save(path, quality=95)
        row = {"subject_id": subject, "study_id": study, **{c: np.nan for c in CHEXPERT}}
        for k, col in MIMIC_COLUMNS.items():
            row[col] = float(ps.findings[k][i])
        labels.append(row)
        meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                     "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": "PA",
                     "Rows": 256, "Columns": 256, "StudyDate": 21800506, "StudyTime": 213014.5,
                     "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                     "ViewCodeSequence_CodeMeaning": "postero-anterior",
                     "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
        split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": "train"})
        if i == 0:  # a lateral view: the adapter keeps frontal views only
            lateral = f"{dicom[:-1]}f"
            Image.fromarray(_uint8(ps.images[i, 0].T)).save(path.with_name(f"{lateral}.jpg"))
            meta.append({**meta[-1], "dicom_id": lateral, "ViewPosition": "LATERAL",
                         "ViewCodeSequence_CodeMeaning": "lateral"})
            split.append({**split[-1], "dicom_id": lateral})
    pd.DataFrame(labels).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    pd.DataFrame(meta).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    pd.DataFrame(split).to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    return root


def write_labelled_folder(ps, root):
    """A hospital's folder: PNGs in year folders and findings.csv with path, mrn and one 0/1 column per finding."""
    rows = []
    for i in range(len(ps)):
        rel = f"{2020 + int(ps.study[i])}/img{i:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_uint8(ps.images[i, 0])).save(root / rel)
        rows.append({"path": rel, "mrn": f"MRN-{int(ps.patient[i]):04d}",
                     **{k: int(ps.findings[k][i]) for k in ("lung_opacity", "pleural_effusion", "cardiomegaly")}})
    pd.DataFrame(rows).to_csv(root / "findings.csv", index=False)
    return root


@pytest.fixture(scope="session")
def mimic_root(cxr256, tmp_path_factory):
    return write_mimic(cxr256, tmp_path_factory.mktemp("mimic") / "mimic-cxr-jpg")


@pytest.fixture(scope="session")
def labelled_root(cxr256, tmp_path_factory):
    return write_labelled_folder(cxr256, tmp_path_factory.mktemp("mine") / "mine")


# the tiny variant of gmia-cxr256, with E_id over two epochs and stage 1 over three steps: the resume test kills
# each of them after its first snapshot
TINY_OVERRIDES = {"identity": {"epochs": 2}, "aegan": {"kimg": 0.012}}
TINY_SETTINGS = dict(variant="tiny", overrides=TINY_OVERRIDES, workers=0, progress=False)


def fit_args() -> list[str]:
    """TINY_SETTINGS as `gmia fit` options."""
    sets = [f"--set={stage}.{k}={v}" for stage, kv in TINY_OVERRIDES.items() for k, v in kv.items()]
    return ["--variant", "tiny", *sets, "--workers", "0", "--quiet"]


@pytest.fixture(scope="session")
def fitted_mimic(mimic_root, tmp_path_factory):
    """(checkpoint folder, summary) of one uninterrupted tiny fit on the MIMIC tree."""
    from gmia.fit import DataSpec, fit

    out = tmp_path_factory.mktemp("fit") / "models"
    # one thread, as inside every test (the autouse fixture starts after session fixtures): a float sum splits
    # differently over two threads, and the resume test compares this fit's weights bit for bit
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = fit("gmia-cxr256", DataSpec(dataset="mimic", data_root=str(mimic_root)), out, **TINY_SETTINGS)
    finally:
        torch.set_num_threads(threads)
    return out, summary
