"""De-identified DICOM headers: the PS3.15 Annex E profile on a header full of PHI, keyed UIDs, pseudonyms and
date offsets, the released header built from nothing, and the DICOM writer read back by the reader."""

import numpy as np
import pydicom
import pytest
import torch

from gmia.data.adapters import read_dicom
from gmia.data.adapters.dicom_deid import (DeidKeys, DicomPolicy, DicomRelease, age_band, basic_profile,
                                           profile_table, release_header, save_dicom)
from gmia.errors import ConfigError

from tests.dicom_phi import identifying_strings, write_phi_dicom

KEY = b"\x01" * 32


def _phi(tmp_path, **kw):
    path = write_phi_dicom(tmp_path / "DOE_JOHNATHAN_chest.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8) * 60,
                           **kw)
    return path, pydicom.dcmread(path, stop_before_pixels=True)


def _text(ds) -> str:
    """Every value of a dataset (nested too) as one string."""
    out = []
    for elem in ds.iterall():
        v = elem.value
        out.append(v.decode("latin-1") if isinstance(v, bytes) else str(v))
    return "\n".join(out)


def test_profile_table_is_the_standards(tmp_path):
    exact, masked, edition = profile_table()
    assert edition[:4].isdigit() and len(exact) > 400                   # the whole Annex E table, not a short list
    assert exact[0x00100010] == "Z" and exact[0x00080080] == "X/Z/D" and exact[0x0020000D] == "U"
    assert any(g == 0x6000 for g, *_ in masked)                          # overlay data, by group mask


def test_basic_profile_leaves_no_phi_anywhere_in_the_header(tmp_path):
    path, src = _phi(tmp_path)
    keys = DeidKeys(KEY)
    out = basic_profile(src, keys, "patient-7")
    text = _text(out)
    equipment = {src.Manufacturer, src.ManufacturerModelName}  # the profile keeps these (K): they name no one
    leaked = [s for s in identifying_strings(path) - equipment if s in text]
    assert not leaked
    assert not [e for e in out.iterall() if e.tag.is_private or e.tag.group in range(0x5000, 0x5100)
                or e.tag.group in range(0x6000, 0x6100)]
    assert out.PatientID == out.PatientName == keys.patient("patient-7") and out.PatientBirthDate == ""
    assert out.StudyInstanceUID == keys.uid(src.StudyInstanceUID) != src.StudyInstanceUID
    assert "ReferencedImageSequence" not in out and "InstitutionName" not in out and "ImageComments" not in out
    assert out.PatientIdentityRemoved == "YES" and out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert {i.CodeValue for i in out.DeidentificationMethodCodeSequence} == {"113100", "113107"}
    assert "PatientAge" not in out and out.PatientSex == ""             # Basic Profile: characteristics go
    assert out.Modality == "DX" and out.BodyPartExamined == "CHEST"     # the profile keeps what identifies no one


def test_dates_shift_by_one_keyed_offset_per_patient(tmp_path):
    _, src = _phi(tmp_path)
    keys = DeidKeys(KEY)
    days = keys.date_offset("patient-7", 3650)
    assert 1 <= days <= 3650 and days == DeidKeys(KEY).date_offset("patient-7", 3650)
    assert len({DeidKeys(bytes([k]) * 32).date_offset("patient-7", 3650) for k in range(8)}) > 1  # keyed
    out = basic_profile(src, keys, "patient-7")
    shifted = np.datetime64("2021-03-15") - np.timedelta64(days, "D")
    assert out.StudyDate == out.SeriesDate == str(shifted).replace("-", "")
    assert str(out.AcquisitionDateTime) == out.StudyDate                # DT: its date shifted, its time dropped
    assert "StudyTime" not in out or out.StudyTime == ""                 # times are removed
    removed = basic_profile(src, keys, "patient-7", DicomPolicy(dates="remove"))
    assert not [e for e in removed.iterall() if e.VR in ("DA", "DT", "TM") and str(e.value)]
    assert removed.LongitudinalTemporalInformationModified == "REMOVED"


def test_banded_characteristics_and_age_bands(tmp_path):
    _, src = _phi(tmp_path)
    out = basic_profile(src, DeidKeys(KEY), "p", DicomPolicy(characteristics="banded"))
    assert out.PatientAge == "060Y" and out.PatientSex == "M"
    assert "113108" in {i.CodeValue for i in out.DeidentificationMethodCodeSequence}
    assert [age_band(a) for a in ("004Y", "045Y", "089Y", "093Y", "011M", "bad")] == \
        ["000Y", "045Y", "085Y", "090Y", "000Y", None]
    with pytest.raises(ConfigError, match="dates must be one of"):
        DicomPolicy(dates="jitter")
    with pytest.raises(ConfigError, match="at least 1 day"):
        DicomPolicy(max_shift_days=0)


def test_uids_are_keyed_valid_and_consistent():
    keys = DeidKeys(KEY)
    uid = keys.uid("1.2.3.4")
    assert uid == keys.uid("1.2.3.4") != keys.uid("1.2.3.5") != DeidKeys(b"\x02" * 32).uid("1.2.3.4")
    assert uid.startswith("2.25.") and len(uid) <= 64 and pydicom.uid.UID(uid).is_valid


def test_release_header_is_built_from_nothing(tmp_path):
    path, src = _phi(tmp_path)
    keys = DeidKeys(KEY)
    header = release_header(basic_profile(src, keys, "p"), keys, "a/1.dcm", "p")
    names = {e.keyword for e in header}
    assert names <= {"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientName",
                     "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
                     "StudyID", "ReferringPhysicianName", "Modality", "SeriesNumber", "InstanceNumber",
                     "PatientOrientation", "BodyPartExamined", "ViewPosition", "SeriesDate", "ContentDate",
                     "AcquisitionDate", "ImageType", "ConversionType", "DerivationDescription", "BurnedInAnnotation",
                     "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                     "LongitudinalTemporalInformationModified"}
    assert header.SOPInstanceUID == keys.uid(src.SOPInstanceUID) and header.BurnedInAnnotation == "NO"
    assert header.SeriesNumber == 3 and header.ViewPosition == "PA"
    codes = [i.CodeValue for i in header.DeidentificationMethodCodeSequence]
    assert codes[:2] == ["113100", "113101"]
    png = release_header(None, keys, "x.png", "p")                       # a non-DICOM source: UIDs from the record
    assert png.StudyInstanceUID == keys.uid("StudyInstanceUID:x.png") and png.Modality == "OT"


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_save_dicom_round_trips_through_the_reader(tmp_path, bits):
    keys = DeidKeys(KEY)
    x = torch.rand(1, 9, 7, generator=torch.Generator().manual_seed(bits))
    path = save_dicom(x, tmp_path / "out.dcm", release_header(None, keys, "x", "p"), bits)
    ds = pydicom.dcmread(path)
    assert (ds.PhotometricInterpretation, ds.BitsStored, ds.BitsAllocated) == \
        ("MONOCHROME2", bits, 8 if bits == 8 else 16)
    assert "RescaleSlope" not in ds and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    step = 1 / (2 ** bits - 1)                                            # the window shows the stored range exactly
    assert (read_dicom(path) - x).abs().max() <= step / 2 + 1e-6
    display = pydicom.pixels.apply_voi_lut(ds.pixel_array, ds) / (2 ** bits - 1)
    assert np.allclose(display, read_dicom(path)[0].numpy(), atol=1e-6)
    rgb = save_dicom(torch.rand(3, 5, 5), tmp_path / "rgb.dcm", release_header(None, keys, "y", "p"), 16)
    assert pydicom.dcmread(rgb).PhotometricInterpretation == "RGB" and read_dicom(rgb).shape == (3, 5, 5)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_release_prepare_takes_the_source_depth(tmp_path, bits):
    path, _ = _phi(tmp_path, bits=bits)
    header, got = DicomRelease(KEY).prepare(path, "a.dcm", "p")
    assert got == bits and header.PatientID == DeidKeys(KEY).patient("p") and "PixelData" not in header
