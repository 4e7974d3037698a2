"""DICOM in, de-identified DICOM out: no byte of the input's PHI in the released folder, the image a viewer shows is
the one the gate checked, patients keep one pseudonym across studies (and across --resume), no input UID survives,
burned-in text is gone, multi-frame files are refused; and a labelled folder of your own keeps its labels."""

import csv
import dataclasses
import json

import numpy as np
import pydicom
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw

from gmia import networks
from gmia.anonymization import anonymize_config, anonymize_dataset
from gmia.anonymization.losses import identity_cosine
from gmia.cli import cli
from gmia.data.adapters import DicomFolder, read_dicom
from gmia.data.datasets import PhantomFolder
from gmia.data.preprocess import Preprocess
from gmia.errors import ConfigError

from tests.dicom_phi import identifying_strings, leaks, write_phi_dicom

P1 = dict(name="DOE^JOHNATHAN", mrn="MRN-00417733")
P2 = dict(name="ROE^JANEMARIE", mrn="MRN-00998811")
STUDY_A = ("1.2.826.0.1.3680043.2.1125.1.11", "19950206", "ACC-55443322")   # studies >10 years apart: a shifted
STUDY_B = ("1.2.826.0.1.3680043.2.1125.1.12", "20210315", "ACC-66554433")   # date never equals another's
STUDY_C = ("1.2.826.0.1.3680043.2.1125.1.13", "20080911", "ACC-77665544")
PREP = Preprocess(size=64, channels=1)


def _cfg(**kw):
    base = dict(margin=1.0, privacy=None, hinge_slack=0.0, patience=2, utility_ratio=0.0, max_steps=3, lr=0.05,
                batch_size=4, refine_steps=0)
    return dataclasses.replace(anonymize_config("phantom-cxr64"), **{**base, **kw})


def _pixels(seed: int, shape=(80, 72), bits=12):
    """A non-blank test image: a smooth gradient with a bright blob and noise, in the range of ``bits``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]] / max(shape)
    x = 0.3 + 0.4 * xx + 0.3 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.4) ** 2) / 0.02) + 0.05 * rng.random(shape)
    return np.clip(x / x.max() * (2 ** bits - 1), 0, 2 ** bits - 1)


# The source files: (relative path, patient, study, format options). Names carry PHI on purpose, and each holds a
# letter that no hex pseudonym has, so that finding it in a released name is a leak, not a coincidence.
SOURCES = [
    ("doe_johnathan/1995/img-a1.dcm", P1, STUDY_A, dict(photometric="MONOCHROME2", bits=12, rescale=(2.0, -1024.0))),
    ("doe_johnathan/1995/img-a2.dcm", P1, STUDY_A, dict(photometric="MONOCHROME1", bits=16)),
    ("doe_johnathan/2021/img-b1.dcm", P1, STUDY_B, dict(photometric="MONOCHROME2", bits=8, window=(128, 256))),
    ("roe_janemarie/img-c1.dcm", P2, STUDY_C, dict(photometric="MONOCHROME2", bits=16, rescale=(1.0, -32768.0))),
    ("roe_janemarie/img-c2.dcm", P2, STUDY_C, dict(photometric="MONOCHROME1", bits=8)),
    ("roe_janemarie/img-cine.dcm", P2, STUDY_C, dict(photometric="MONOCHROME2", bits=12, frames=3)),
]


def _write_sources(root):
    for i, (rel, patient, study, fmt) in enumerate(SOURCES):
        write_phi_dicom(root / rel, _pixels(i, bits=fmt["bits"]), study=study, series_uid=f"{study[0]}.{i % 2}",
                        sop_uid=f"{study[0]}.{i}.1", **patient, **fmt)
    return root


def _linkage(out) -> dict[str, str]:
    with open(out / "private" / "linkage.csv", newline="") as f:
        return {r["source"]: r["pseudonym"] for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory, tiny_checkpoints):
    """One anonymization run over the PHI-laden DICOM folder (DICOM output by default)."""
    root = _write_sources(tmp_path_factory.mktemp("hospital") / "archive")
    out = tmp_path_factory.mktemp("release") / "anon"
    summary = anonymize_dataset(_cfg(), DicomFolder(root, preprocess=PREP), out, checkpoints=tiny_checkpoints,
                                progress=False, write_linkage=True)
    return root, out, summary


def test_dicom_release_holds_no_byte_of_the_inputs_phi(dicom_run):
    root, out, summary = dicom_run
    assert summary["released"] == 5 and summary["error"] == 1                 # the multi-frame file is refused
    assert sorted(p.suffix for p in (out / "images").iterdir()) == [".dcm"] * 5
    strings = set().union(*(identifying_strings(root / rel) for rel, *_ in SOURCES))
    strings |= {rel for rel, *_ in SOURCES} | {rel.split("/")[0] for rel, *_ in SOURCES}
    assert {"DOE^JOHNATHAN", "JOHNATHAN", "MRN-00417733", "19580704", "19950206", "ACC-55443322",
            "SAINT ELSEWHERE GENERAL HOSPITAL", "PRIVATE-MRN-00417733", STUDY_A[0], "101530.250000"} <= strings
    assert leaks(out, strings) == []
    labels = (out / "labels.csv").read_text().splitlines()
    assert labels[0] == "image" and sorted(labels[1:]) == sorted(f"images/{p.name}" for p in (out / "images").iterdir())


def test_released_dicom_shows_the_image_the_gate_checked(dicom_run, tiny_checkpoints):
    root, out, _ = dicom_run
    link = _linkage(out)
    rows = {r["pseudonym"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    e_id = networks.load("phantom-cxr64", "identity", tiny_checkpoints)
    source = DicomFolder(root, preprocess=PREP)
    for i, (rel, _, _, fmt) in enumerate(SOURCES[:5]):
        path = out / "images" / f"{link[rel]}.dcm"
        ds = pydicom.dcmread(path)                                             # opens in pydicom
        assert (ds.Rows, ds.Columns, ds.PhotometricInterpretation, ds.BitsStored) == (64, 64, "MONOCHROME2",
                                                                                       fmt["bits"])
        assert ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
        assert {"113100", "113101", "113107"} <= {c.CodeValue for c in ds.DeidentificationMethodCodeSequence}
        assert not [e for e in ds.iterall() if e.tag.is_private or 0x5000 <= e.tag.group <= 0x60FF]
        shown = pydicom.pixels.apply_voi_lut(ds.pixel_array, ds) / (2 ** fmt["bits"] - 1)  # what a viewer shows
        x = read_dicom(path)
        assert np.allclose(shown, x[0].numpy(), atol=1e-6) and x.std() > 0.01
        with torch.no_grad():                                                  # the gate judged this very file
            cos = identity_cosine(e_id.embed(x[None]), e_id.embed(source[i]["image"][None])).item()
        assert abs(cos - rows[link[rel]]["cos_id_saved"]) < 1e-4 and cos <= 1.0
        assert rows[link[rel]]["image"] == f"images/{link[rel]}.dcm"


def test_studies_of_a_patient_share_one_pseudonym_and_no_input_uid_survives(dicom_run):
    root, out, _ = dicom_run
    link = _linkage(out)
    heads = {rel: pydicom.dcmread(out / "images" / f"{link[rel]}.dcm", stop_before_pixels=True)
             for rel, *_ in SOURCES[:5]}
    a1, a2, b1, c1, c2 = (heads[rel] for rel, *_ in SOURCES[:5])
    assert a1.PatientID == a2.PatientID == b1.PatientID == a1.PatientName != c1.PatientID == c2.PatientID
    assert a1.StudyInstanceUID == a2.StudyInstanceUID != b1.StudyInstanceUID      # studies stay studies
    assert len({h.SOPInstanceUID for h in heads.values()}) == 5
    inputs = {str(e.value) for rel, *_ in SOURCES for e in pydicom.dcmread(root / rel).iterall() if e.VR == "UI"}
    inputs -= set(pydicom.uid.UID_dictionary)                                  # standard class UIDs name no one
    outputs = {str(e.value) for h in heads.values() for e in h.iterall() if e.VR == "UI"}
    assert inputs and not inputs & outputs and all(u.startswith("2.25.") for u in outputs - {h.SOPClassUID
                                                                                               for h in heads.values()})
    # dates: one offset per patient, so the 26 years between the two studies of patient 1 are kept
    days = lambda d: np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}")  # noqa: E731
    assert days(b1.StudyDate) - days(a1.StudyDate) == days(STUDY_B[1]) - days(STUDY_A[1])
    assert a1.StudyDate < STUDY_A[1] and a1.StudyDate == a2.StudyDate


def test_multiframe_is_refused_with_a_clear_reason(dicom_run, tmp_path):
    root, out, _ = dicom_run
    errors = [r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines()) if r["status"] == "error"]
    assert len(errors) == 1 and "multi-frame DICOM (3 frames)" in errors[0]["error"]
    with pytest.raises(Exception, match=r"cine\.dcm: multi-frame DICOM \(3 frames\); expected one 2-D image"):
        read_dicom(root / SOURCES[5][0])


def test_resume_keeps_pseudonyms_uids_and_date_offsets(tmp_path, tiny_checkpoints):
    root = _write_sources(tmp_path / "archive")
    (root / SOURCES[5][0]).unlink()
    out = tmp_path / "anon"
    first = anonymize_dataset(_cfg(), DicomFolder(root, preprocess=PREP), out, checkpoints=tiny_checkpoints,
                              progress=False, limit=2)                           # a1, a2 (study A of patient 1)
    rest = anonymize_dataset(_cfg(), DicomFolder(root, preprocess=PREP), out, checkpoints=tiny_checkpoints,
                             progress=False, resume=True, write_linkage=True)
    assert first["this_call"]["released"] == 2 and rest["this_call"]["released"] == 3
    # run.json keeps every call's counts and speed: the resumed call does not replace the first one's
    calls = json.loads((out / "run.json").read_text())["summary"]["calls"]
    assert [c["released"] for c in calls] == [2, 3] and calls[0] == first["this_call"]
    link = _linkage(out)
    head = {rel: pydicom.dcmread(out / "images" / f"{link[rel]}.dcm", stop_before_pixels=True)
            for rel, *_ in SOURCES[:5]}
    a1, b1 = head[SOURCES[0][0]], head[SOURCES[2][0]]
    assert a1.PatientID == b1.PatientID                                        # written by two different calls
    days = lambda d: np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}")  # noqa: E731
    assert days(b1.StudyDate) - days(a1.StudyDate) == days(STUDY_B[1]) - days(STUDY_A[1])
    with pytest.raises(ConfigError, match="different settings.*output"):
        anonymize_dataset(_cfg(), DicomFolder(root, preprocess=PREP), out, checkpoints=tiny_checkpoints,
                          progress=False, resume=True, output_format="png")


def _text_mask(size=(128, 128)):
    """White capital letters ("JOHN DOE") across the upper part of a ``size`` image, as a bool mask."""
    small = Image.new("L", (80, 24))
    ImageDraw.Draw(small).text((2, 4), "JOHN DOE", fill=255)
    big = small.resize((120, 36), Image.NEAREST)  # 1.5x: strokes survive the downscale to 64 px
    mask = np.zeros(size, bool)
    mask[8:8 + big.height, 4:4 + big.width] = np.asarray(big) > 0
    return mask


def _burned_in_text_check(tmp_path, cfg, checkpoints):
    """Anonymize one DICOM whose pixels carry a name in white letters; return the correlation of the text strokes
    (high-pass: letters, not brightness) with the source's and with the released pixels."""
    mask = _text_mask()
    base = _pixels(3, shape=mask.shape, bits=12) * 0.5
    base[mask] = 4095                                                          # burned-in annotation
    root = tmp_path / "archive"
    write_phi_dicom(root / "burned.dcm", base, bits=12)
    out = tmp_path / "anon"
    # the source is noise with letters, no chest X-ray: a trained model's domain guard withholds it, so the
    # override is what lets this test see what the model makes of the letters
    summary = anonymize_dataset(cfg, DicomFolder(root, preprocess=PREP), out, checkpoints=checkpoints,
                                progress=False, device="cpu", allow_out_of_domain=True)
    assert summary["released"] == 1
    released = read_dicom(next((out / "images").iterdir()))[0]
    source = DicomFolder(root, preprocess=PREP)[0]["image"][0]
    text = torch.nn.functional.interpolate(torch.tensor(mask, dtype=torch.float32)[None, None], size=(64, 64),
                                           mode="area")[0, 0]                 # the letters at the model's resolution

    def strokes(img):  # (64, 64) minus its 5x5 local mean, over the rows holding the text
        t = img[None, None].float()
        return (t - torch.nn.functional.avg_pool2d(t, 5, 1, 2, count_include_pad=False))[0, 0, 2:30].ravel()

    corr = lambda img: float(np.corrcoef(strokes(img), strokes(text))[0, 1])  # noqa: E731
    return corr(source), corr(released)


def test_text_burned_into_the_source_is_gone_from_the_released_pixels(tmp_path, tiny_checkpoints):
    in_source, in_release = _burned_in_text_check(tmp_path, _cfg(), tiny_checkpoints)
    assert in_source > 0.9 and abs(in_release) < 0.3                           # plain in the source, gone after


@pytest.mark.slow
def test_burned_in_text_is_gone_with_the_shipped_chest_model(tmp_path):
    """The same with the trained stage-1 model, which regenerates a whole chest X-ray (and no letters)."""
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "checkpoints"
    if not (shipped / "phantom-cxr64" / "aegan.json").is_file():
        pytest.skip("shipped phantom-cxr64 weights not present")
    cfg = dataclasses.replace(anonymize_config("phantom-cxr64", margin=0.0), max_steps=200)
    in_source, in_release = _burned_in_text_check(tmp_path, cfg, shipped)
    assert in_source > 0.9 and abs(in_release) < 0.3


def test_png_input_defaults_to_png_and_asks_for_dicom(tmp_path, tiny_checkpoints, phantom_dir):
    png = tmp_path / "png"
    anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), png, checkpoints=tiny_checkpoints, progress=False, limit=2)
    assert sorted(p.suffix for p in (png / "images").iterdir()) == [".png", ".png"]
    dcm = tmp_path / "dcm"
    summary = anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), dcm, checkpoints=tiny_checkpoints,
                                progress=False, limit=2, output_format="dicom")
    files = sorted((dcm / "images").iterdir())
    assert summary["released"] == 2 and [p.suffix for p in files] == [".dcm", ".dcm"]
    ds = pydicom.dcmread(files[0])
    assert ds.BitsStored == 8 and ds.PatientIdentityRemoved == "YES" and ds.StudyDate == ""  # PNG had no dates
    assert [line.split(",")[0] for line in (dcm / "labels.csv").read_text().splitlines()[1:]] == \
        [f"images/{p.name}" for p in files]
    assert json.loads((dcm / "run.json").read_text())["output"]["format"] == "dicom"
    from gmia.data.adapters.dicom_deid import DicomPolicy

    with pytest.raises(ConfigError, match="this run writes PNG"):
        anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), tmp_path / "x", checkpoints=tiny_checkpoints,
                          progress=False, limit=1, dicom=DicomPolicy(dates="remove"))


# ---------------------------------------------------------------------------------------------- your own folder


def _own_folder(root):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["path,mrn,effusion,nodule"]
    for i in range(4):
        Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(root / f"scan_{i}.png")
        rows.append(f"scan_{i}.png,MRN-55500{i // 2},{i % 2},{(i + 1) % 2}")
    (root / "findings.csv").write_text("\n".join(rows) + "\n")
    return root


def test_own_folder_with_labels_keeps_findings_and_drops_patients(tmp_path, tiny_checkpoints):
    root = _own_folder(tmp_path / "mine")
    out = tmp_path / "anon"
    res = CliRunner().invoke(cli, ["anonymize", "--input", str(root), "--labels", str(root / "findings.csv"),
                                   "--image-column", "path", "--patient-column", "mrn", "--out", str(out),
                                   "--checkpoints", str(tiny_checkpoints), "--margin", "1", "--max-steps", "2",
                                   "--quiet", "--write-linkage"])
    assert res.exit_code == 0, res.output
    rows = list(csv.reader((out / "labels.csv").read_text().splitlines()))
    assert rows[0] == ["image", "effusion", "nodule"] and len(rows) == 5
    link = {p: s for s, p in _linkage(out).items()}
    truth = {f"scan_{i}.png": [f"{i % 2}", f"{(i + 1) % 2}"] for i in range(4)}
    assert all(r[1:] == truth[link[r[0][7:-4]]] for r in rows[1:])           # each image keeps its own findings
    assert leaks(out, {"MRN-5550", "scan_", "findings.csv"}) == []


@pytest.mark.parametrize("args,match", [
    (["--labels", "{root}/absent.csv"], r"labels CSV not found: expected .*absent\.csv"),
    (["--labels", "{root}/findings.csv", "--image-column", "file"], r"findings\.csv: image column 'file' not found"),
    (["--labels", "{root}/findings.csv", "--image-column", "path"], r"findings\.csv: finding column 'mrn' must hold "
                                                                    r"numbers .*line 2"),
    (["--labels", "{root}/findings.csv", "--image-column", "path", "--patient-column", "id"],
     r"findings\.csv: patient column 'id' not found"),
    (["--patient-column", "mrn"], r"--patient-column names a column of the labels CSV: add --labels"),
])
def test_bad_labels_give_one_clear_line(tmp_path, args, match):
    root = _own_folder(tmp_path / "mine")
    args = [a.format(root=root) for a in args]
    res = CliRunner().invoke(cli, ["anonymize", "--input", str(root), "--out", str(tmp_path / "o"), *args])
    assert res.exit_code != 0
    line = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert len(line) == 1, res.output
    import re

    assert re.search(match, line[0]), line[0]


def test_evaluate_reads_the_same_labels(tmp_path):
    root = _own_folder(tmp_path / "mine")
    res = CliRunner().invoke(cli, ["evaluate", "--real", str(root), "--anon", str(root), "--out", str(tmp_path / "e"),
                                   "--labels", str(root / "findings.csv"), "--image-column", "path",
                                   "--patient-column", "nobody"])
    assert res.exit_code != 0 and "findings.csv: patient column 'nobody' not found" in res.output
