"""DICOM files full of protected health information, made with pydicom at test time, and the means to find any
byte of it again. Every identifying value is long and distinctive, so that finding it by chance in pixel bytes or
in a keyed UID is out of the question."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np


def patient_tags(name: str, mrn: str) -> dict:
    """The Patient module and its neighbours, filled in."""
    return dict(PatientName=name, PatientID=mrn, PatientBirthDate="19580704", PatientSex="M", PatientAge="063Y",
                OtherPatientIDs=f"OTHER-{mrn}", PatientAddress="221B BAKER STREET LONDON",
                PatientTelephoneNumbers="+44-20-7946-0999", PatientComments=f"allergic to penicillin ({name})",
                AdditionalPatientHistory="smoker since adolescence", IssuerOfPatientID="SAINT-ELSEWHERE-MRN",
                PatientWeight="81.5", PatientSize="1.83", EthnicGroup="CAUCASIAN-ETHNIC", Occupation="LIGHTHOUSEKEEPER")


def write_phi_dicom(path: Path, arr, *, name: str = "DOE^JOHNATHAN", mrn: str = "MRN-00417733",
                    study: tuple[str, str, str] = ("1.2.826.0.1.3680043.2.1125.1.11", "20210315", "ACC-55443322"),
                    series_uid: str | None = None, sop_uid: str | None = None,
                    photometric: str = "MONOCHROME2", bits: int = 12, rescale: tuple[float, float] | None = None,
                    frames: int = 1, window: tuple[float, float] | None = None) -> Path:
    """One DX image (or ``frames`` of them) with PHI in every standard identifying attribute, in a nested
    sequence, in private tags, in an overlay and in a curve. ``study`` = (Study Instance UID, date, accession)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    study_uid, date, accession = study
    sop_uid = sop_uid or f"{study_uid}.{zlib.crc32(str(path).encode())}.7"
    series_uid = series_uid or f"{study_uid}.3"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = f"{study_uid}.9"
    for k, v in patient_tags(name, mrn).items():
        setattr(ds, k, v)
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime, ds.ContentTime = \
        "101530.250000", "101531.250000", "101532.250000", "101533.250000"
    ds.AcquisitionDateTime = date + "101532.250000"
    ds.AccessionNumber, ds.StudyID = accession, f"S-{accession}"
    ds.InstitutionName, ds.InstitutionAddress = "SAINT ELSEWHERE GENERAL HOSPITAL", "1 HOSPITAL ROAD BOSTON"
    ds.InstitutionalDepartmentName = "THORACIC-RADIOLOGY-WEST"
    ds.ReferringPhysicianName, ds.PerformingPhysicianName = "HOUSE^GREGORY", "CUDDY^LISAMARIE"
    ds.OperatorsName, ds.RequestingPhysician = "WILSON^JAMESON", "FOREMAN^ERICSON"
    ds.NameOfPhysiciansReadingStudy = "CAMERON^ALLISON"
    ds.StationName, ds.DeviceSerialNumber = "XRAY-ROOM-SEVEN", "SN-99887766"
    ds.Manufacturer, ds.ManufacturerModelName = "ACME IMAGING CORP", "RADIANT-MODEL-9000"
    ds.StudyDescription = f"CHEST PA for {name} follow up"
    ds.SeriesDescription = "PA ERECT post-op day three"
    ds.ProtocolName = "CHEST-TWO-VIEWS-PROTOCOL"
    ds.ImageComments = f"Patient {name} ({mrn}) wheelchair, DOB 1958-07-04"
    ds.RequestedProcedureDescription = "RULE OUT PNEUMOTHORAX"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.SeriesNumber, ds.InstanceNumber = 3, 7
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ref.ReferencedSOPInstanceUID = f"{study_uid}.55.1"
    ds.ReferencedImageSequence = [ref]
    request = Dataset()
    request.RequestedProcedureID, request.ScheduledProcedureStepID = "RP-31415926", "SPS-27182818"
    request.AccessionNumber = accession
    ds.RequestAttributesSequence = [request]
    block = ds.private_block(0x0029, "ACME PRIVATE 1.0", create=True)
    block.add_new(0x10, "LO", f"PRIVATE-{mrn}")
    block.add_new(0x11, "LO", f"PRIVATE NAME {name}")
    block.add_new(0x12, "UN", f"PRIVATE-BYTES-{mrn}".encode())
    ds.add_new(0x60000010, "US", 4)             # an overlay plane with a description
    ds.add_new(0x60000011, "US", 4)
    ds.add_new(0x60000022, "LO", f"OVERLAY NOTE {mrn}")
    ds.add_new(0x60003000, "OW", b"\xff\x00" * 2)
    ds.add_new(0x50000022, "LO", f"CURVE OF {name}")  # a (retired) curve
    a = np.asarray(arr)
    if frames > 1:
        a = np.stack([a] * frames)
    ds.set_pixel_data(a.astype(np.uint8 if bits <= 8 else np.uint16), photometric, bits, generate_instance_uid=False)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def identifying_strings(path: Path) -> set[str]:
    """Every text value of a DICOM file that may identify someone: person names (and their parts), ids, dates,
    times, long/short strings, free text, private values and instance UIDs (standard class UIDs and code strings
    excluded), plus the file's own name."""
    import pydicom
    from pydicom.uid import UID_dictionary

    ds = pydicom.dcmread(path)
    found = {Path(path).name, Path(path).stem, str(ds.file_meta.MediaStorageSOPInstanceUID)}

    def visit(dataset):
        for elem in dataset:
            if elem.VR == "SQ":
                for item in elem.value:
                    visit(item)
                continue
            if elem.tag.group == 0x7FE0 or elem.VR in ("CS", "IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "OW"):
                continue
            values = elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue)) else [elem.value]
            for v in values:
                text = v.decode("latin-1") if isinstance(v, bytes) else str(v)
                if elem.VR == "UI" and text in UID_dictionary:
                    continue  # a standard SOP class: not about anyone
                found.add(text)
                if elem.VR == "PN":
                    found.update(part for part in text.split("^") if len(part) >= 5)
    visit(ds)
    return {s.strip() for s in found if len(s.strip()) >= 5}


def leaks(root: Path, strings: set[str]) -> list[tuple[str, str]]:
    """(file, string) for every string found in a file (or a file name) under ``root``, ``private/`` excepted.

    In file names a short string (a source name like ``c1.dcm``) counts when it is a whole path component: as a
    substring it would also match a random pseudonym that happens to end in ``...c1.dcm``. (File contents are
    searched for every string: give sources names that no hex pseudonym can spell.)"""
    hits = []
    for f in sorted(p for p in Path(root).rglob("*") if p.is_file() and "private" not in p.relative_to(root).parts):
        rel = f.relative_to(root)
        blob, name, parts = f.read_bytes(), str(rel), {*rel.parts, *(Path(q).stem for q in rel.parts)}
        hits += [(name, s) for s in strings
                 if s.encode("latin-1") in blob or (s in name if len(s) >= 8 else s in parts or s == name)]
    return hits
