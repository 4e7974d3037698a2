"""MIMIC-CXR-JPG, CheXpert and ChestX-ray14 (NIH) on top of torchxrayvision's dataset classes.

torchxrayvision does the CSV work (joins, view filters, label mapping: uncertain -1 → NaN, "No Finding" →
0, sorted pathology names); we take its ``.csv`` rows, ``.labels`` and ``.pathologies``, build the image
paths the way it does, and read images ourselves into gmia's [0, 1] convention (torchxrayvision's own
``__getitem__`` rescales to [-1024, 1024], which we never use). Record keys are image paths relative to
the dataset root; ``patient`` is torchxrayvision's ``patientid`` column. Nothing is downloaded.

Expected layouts (root = the folder you pass)::

    MIMIC-CXR-JPG  root/files/p10/p10000032/s50414267/<dicom_id>.jpg
                   root/mimic-cxr-2.0.0-chexpert.csv.gz, root/mimic-cxr-2.0.0-metadata.csv.gz
                   root/mimic-cxr-2.0.0-split.csv.gz (only for split=...)
    CheXpert       root/train.csv, root/valid.csv, root/train/patient00001/study1/view1_frontal.jpg
                   (root = CheXpert-v1.0-small or CheXpert-v1.0; their parent also works)
    ChestX-ray14   root/images/00000001_000.png, root/Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv)
                   root/train_val_list.txt, root/test_list.txt (only for split=...)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gmia.data.datasets import ImageDataset
from gmia.data.preprocess import Preprocess
from gmia.errors import ConfigError, InputError

__all__ = ["MimicCXR", "CheXpert", "ChestXray14", "FRONTAL_VIEWS"]

FRONTAL_VIEWS = ("PA", "AP")


def _find(root: Path, names: Sequence[str], what: str, fix: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise InputError(f"{what} not found: expected {root / names[0]}"
                     + (f" (or {', '.join(names[1:])})" if len(names) > 1 else "") + f". {fix}")


def _given(path, root: Path, what: str) -> Path:
    p = Path(path)
    p = p if p.is_absolute() or p.exists() else root / p
    if not p.is_file():
        raise InputError(f"{what} not found: expected {p}.")
    return p


def _check_root(root, name: str, layout: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{name} root not found: {root}. Expected a folder with {layout}.")
    return root


def _build(cls: str, source: Path, **kw):
    """Construct a torchxrayvision dataset without letting it reset numpy's global RNG for everyone."""
    import torchxrayvision as xrv  # lazy: a heavy import, only for these adapters

    state = np.random.get_state()
    try:
        return getattr(xrv.datasets, cls)(**kw)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"cannot parse {source}: {e}. Expected the dataset's original CSV files.") from e
    finally:
        np.random.set_state(state)


def _split_name(split: str | None, valid: dict[str, str], dataset: str) -> str | None:
    if split is None:
        return None
    if split not in valid:
        raise ConfigError(f"{dataset}: unknown split {split!r}; valid: {sorted(valid)}")
    return valid[split]


class _XrvDataset(ImageDataset):
    """Common tail: xrv rows → (keys, patients, labels, findings), optionally filtered by a row mask."""

    def _init_from(self, root: Path, xds, keys: pd.Series, keep: np.ndarray | None,
                   preprocess: Preprocess | None, source: Path):
        patients = xds.csv["patientid"].astype(str).to_numpy()
        labels = np.asarray(xds.labels, dtype=np.float32)
        keys = keys.to_numpy()
        if keep is not None:
            keys, patients, labels = keys[keep], patients[keep], labels[keep]
        self.views = list(xds.views)
        super().__init__(root, list(keys), list(patients), labels, list(xds.pathologies),
                         preprocess=preprocess, channels=1, source=source)


class MimicCXR(_XrvDataset):
    """MIMIC-CXR-JPG v2 via ``torchxrayvision.datasets.MIMIC_Dataset``; patient = subject_id.

    ``split`` in {"train", "validate" (or "val"), "test"} uses the official mimic-cxr-2.0.0-split.csv.gz.
    ``views`` filters on ViewPosition (frontal PA/AP by default; "*" keeps all).
    """

    def __init__(self, root, *, csv=None, meta_csv=None, split: str | None = None,
                 views: Sequence[str] = FRONTAL_VIEWS, preprocess: Preprocess | None = None):
        root = _check_root(root, "MIMIC-CXR-JPG", "files/ and mimic-cxr-2.0.0-chexpert.csv.gz")
        fix = ("Download it with the images from PhysioNet (mimic-cxr-jpg 2.0.0) and put it in the dataset root, "
               "beside files/ (in Python: MimicCXR(root, csv=..., meta_csv=...) takes other paths).")
        csv = _given(csv, root, "MIMIC labels CSV") if csv else _find(
            root, ["mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv"], "MIMIC labels CSV", fix)
        meta_csv = _given(meta_csv, root, "MIMIC metadata CSV") if meta_csv else _find(
            root, ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"], "MIMIC metadata CSV", fix)
        split = _split_name(split, {"train": "train", "validate": "validate", "val": "validate",
                                    "test": "test"}, "MIMIC-CXR")
        try:
            xds = _build("MIMIC_Dataset", csv, imgpath=str(root / "files"), csvpath=str(csv),
                         metacsvpath=str(meta_csv), views=list(views), unique_patients=False)
        except KeyError as e:
            raise InputError(f"{csv} / {meta_csv}: missing column {e}; expected the MIMIC-CXR-JPG 2.0.0 "
                             "chexpert and metadata CSVs.") from e
        # the path torchxrayvision builds: files/p<first 2 digits>/p<subject>/s<study>/<dicom_id>.jpg
        sub = xds.csv["subject_id"].astype(str)
        keys = "files/p" + sub.str[:2] + "/p" + sub + "/s" + xds.csv["study_id"].astype(str) + "/" \
            + xds.csv["dicom_id"].astype(str) + ".jpg"
        keep = None
        if split is not None:
            split_csv = _find(root, ["mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"],
                              "MIMIC split CSV", fix)
            table = pd.read_csv(split_csv, dtype=str)
            ids = set(table.loc[table["split"] == split, "dicom_id"])
            keep = xds.csv["dicom_id"].astype(str).isin(ids).to_numpy()
        self._init_from(root, xds, keys, keep, preprocess, csv)


class CheXpert(_XrvDataset):
    """CheXpert v1.0 (small or full) via ``torchxrayvision.datasets.CheX_Dataset``; patient = the number in
    ``patientNNNNN``. ``split`` "train" (train.csv) or "valid"/"val" (valid.csv); ``csv`` overrides it.
    """

    def __init__(self, root, *, split: str = "train", csv=None, views: Sequence[str] = FRONTAL_VIEWS,
                 preprocess: Preprocess | None = None):
        root = _check_root(root, "CheXpert", "train.csv, valid.csv and train/patient*/study*/*.jpg")
        name = _split_name(split, {"train": "train", "valid": "valid", "val": "valid"}, "CheXpert")
        if csv is None:
            for sub in ("", "CheXpert-v1.0-small", "CheXpert-v1.0"):  # accept the parent folder too
                if (root / sub / f"{name}.csv").is_file():
                    root = root / sub if sub else root
                    break
            csv = _find(root, [f"{name}.csv"], "CheXpert labels CSV",
                        "Pass the CheXpert-v1.0-small folder (it holds train.csv and valid.csv).")
        else:
            csv = _given(csv, root, "CheXpert labels CSV")
        try:
            xds = _build("CheX_Dataset", csv, imgpath=str(root), csvpath=str(csv), views=list(views),
                         unique_patients=False)
        except (NotImplementedError, KeyError) as e:
            if isinstance(e, NotImplementedError) or (e.args and isinstance(e.args[0], int)):
                raise InputError(f"{csv}: torchxrayvision takes the CheXpert patient id from the CSV's path "
                                 "('train' → rows under train/, else 'valid' → rows under valid/); name it "
                                 "train.csv or valid.csv, matching its rows, in a folder whose path does not "
                                 "contain 'train' otherwise.") from e
            raise InputError(f"{csv}: missing column {e}; expected the CheXpert v1.0 CSV layout (Path, Sex, "
                             "Age, Frontal/Lateral, AP/PA, No Finding, findings...).") from e
        # torchxrayvision splits the patient id out of the Path with "train/" or "valid/" chosen by the CSV
        # file's *full* path; fill any row it misses from the "patientNNNNN" part of Path itself.
        parsed = xds.csv["Path"].str.extract(r"patient(\d+)", expand=False)
        xds.csv["patientid"] = xds.csv["patientid"].where(xds.csv["patientid"].notna(), parsed) \
            if "patientid" in xds.csv else parsed
        # the path torchxrayvision builds: Path without its "CheXpert-v1.0[-small]/" prefix, under imgpath
        keys = xds.csv["Path"].str.replace("CheXpert-v1.0-small/", "", regex=False) \
            .str.replace("CheXpert-v1.0/", "", regex=False)
        self._init_from(root, xds, keys, None, preprocess, csv)


class ChestXray14(_XrvDataset):
    """NIH ChestX-ray14 via ``torchxrayvision.datasets.NIH_Dataset``; patient = Patient ID.

    ``images`` is the image folder under root. ``split`` "train" (train_val_list.txt) or "test"
    (test_list.txt). The bounding-box list is root/BBox_List_2017.csv when present, else the copy that
    ships with torchxrayvision (only read by it, not used here).
    """

    def __init__(self, root, *, csv=None, images: str = "images", split: str | None = None,
                 views: Sequence[str] = FRONTAL_VIEWS, preprocess: Preprocess | None = None):
        root = _check_root(root, "ChestX-ray14", "images/ and Data_Entry_2017_v2020.csv")
        csv = _given(csv, root, "ChestX-ray14 labels CSV") if csv else _find(
            root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"], "ChestX-ray14 labels CSV",
            "Download it with the images from the NIH box or pass csv=PATH.")
        imgdir = root / images
        if not imgdir.is_dir():
            raise InputError(f"ChestX-ray14 image folder not found: expected {imgdir}. Pass images=... "
                             "naming the folder (under root) that holds the PNG files.")
        kw = {}
        if (root / "BBox_List_2017.csv").is_file():
            kw["bbox_list_path"] = str(root / "BBox_List_2017.csv")
        split = _split_name(split, {"train": "train_val_list.txt", "test": "test_list.txt"}, "ChestX-ray14")
        try:
            xds = _build("NIH_Dataset", csv, imgpath=str(imgdir), csvpath=str(csv), views=list(views),
                         unique_patients=False, **kw)
        except KeyError as e:
            raise InputError(f"{csv}: missing column {e}; expected the Data_Entry_2017 layout (Image Index, "
                             "Finding Labels, Patient ID, View Position, ...).") from e
        # the path torchxrayvision builds: imgpath/<Image Index>
        keys = f"{Path(images).as_posix()}/" + xds.csv["Image Index"].astype(str)
        keep = None
        if split is not None:
            listed = _find(root, [split], "ChestX-ray14 split list", "It ships with the NIH release.")
            names = set(listed.read_text().split())
            keep = xds.csv["Image Index"].isin(names).to_numpy()
        self._init_from(root, xds, keys, keep, preprocess, csv)
