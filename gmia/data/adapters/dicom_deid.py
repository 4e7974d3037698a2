"""De-identified DICOM headers for released images: PS3.15 Annex E, with every replacement keyed.

Two steps, both pure functions of (source header, run key, patient, policy):

1. :func:`basic_profile` applies the Basic Application Level Confidentiality Profile to the whole source header.
   The per-attribute actions (D, Z, X, U and their combinations) come from the Annex E table that
   ``dicom-anonymizer`` ships, transcribed from the standard; private tags, curves (50xx) and overlays (60xx) go,
   every date is shifted by a keyed per-patient offset or removed, every time is removed, names and ids become
   the patient's pseudonym or nothing, and every UID becomes ``2.25.<128 bits of HMAC(key, "uid:" + UID)>``.
2. :func:`release_header` builds the released file's header *from an empty dataset*, copying from step 1 only
   what a viewer needs (patient/study/series identity as pseudonymized, modality, body part, view, laterality,
   shifted dates, series/instance numbers), each value checked against its VR. Nothing else of the source
   reaches the file, so no input text can leak through an attribute the table does not list.

The pixels are not the source's (``dicom_write.save_dicom`` writes the regenerated image), which is what makes
BurnedInAnnotation = NO true. The key is the run's (``RunFolder.subkey("dicom")``), so UIDs, pseudonyms and
date offsets are the same on every ``--resume`` and every shard, and meaningless to anyone without it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import torch

from gmia.data.adapters.dicom_write import save_dicom, stored_bits
from gmia.errors import ConfigError, InputError

__all__ = ["DicomPolicy", "DeidKeys", "DicomRelease", "DATE_MODES", "CHARACTERISTICS", "profile_table",
           "basic_profile", "release_header", "save_dicom", "stored_bits", "age_band"]

DATE_MODES = ("shift", "remove")
CHARACTERISTICS = ("remove", "banded")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_CATEGORIES = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
               "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
_PATIENT_ID, _PATIENT_NAME, _PATIENT_AGE, _PATIENT_SEX = 0x00100020, 0x00100010, 0x00101010, 0x00100040
_BIRTH_DATE = 0x00100030
_DUMMY = "ANONYMIZED"
_CODES = {  # PS3.16 CID 7050 De-identification Method
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
}


@dataclass(frozen=True)
class DicomPolicy:
    """How a released DICOM header treats dates and patient characteristics (the profile's options)."""

    dates: str = "shift"              # "shift": back by a keyed per-patient offset (intervals kept); "remove"
    max_shift_days: int = 3650        # the offset is 1..max_shift_days days, from HMAC(key, patient)
    characteristics: str = "remove"   # "remove" (Basic Profile) or "banded": sex kept, age in 5-year bands

    def __post_init__(self):
        if self.dates not in DATE_MODES:
            raise ConfigError(f"DICOM dates must be one of {DATE_MODES}, got {self.dates!r}")
        if not (isinstance(self.max_shift_days, int) and self.max_shift_days >= 1):
            raise ConfigError(f"the DICOM date shift must be at least 1 day, got {self.max_shift_days!r}")
        if self.characteristics not in CHARACTERISTICS:
            raise ConfigError(f"DICOM patient characteristics must be one of {CHARACTERISTICS}, "
                              f"got {self.characteristics!r}")


class DeidKeys:
    """Keyed replacements: the same input gives the same output under one key, and nothing without it."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("DeidKeys needs a secret key of at least 16 bytes")
        self._key = bytes(key)

    def _mac(self, text: str) -> bytes:
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """``2.25.<int>`` (at most 44 characters): a UUID-derived UID root, 128 bits of HMAC."""
        return "2.25." + str(int.from_bytes(self._mac("uid:" + original)[:16], "big"))

    def patient(self, patient: str) -> str:
        """The released PatientID (and PatientName) of a dataset patient: 20 hex digits."""
        return self._mac("patient:" + patient).hex()[:20]

    def date_offset(self, patient: str, max_days: int) -> int:
        """Days every date of ``patient`` moves back: 1..max_days, never 0 (a date never survives)."""
        return 1 + int.from_bytes(self._mac("date:" + patient)[:8], "big") % max_days


@functools.cache
def profile_table() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...], str]:
    """The Annex E actions: ({tag: action}, masked entries (group, element, group mask, element mask, action),
    edition). The newest edition ``dicom-anonymizer`` ships is used."""
    import pkgutil

    from dicomanonymizer import dicom_anonymization_databases as databases
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    editions = sorted(m.name for m in pkgutil.iter_modules(databases.__path__) if m.name.startswith("dicomfields_"))
    if not editions:
        raise ConfigError("dicom-anonymizer ships no Annex E table; reinstall gmia (pip install -e .)")
    tables = dicom_anonymization_database_selector(editions[-1])
    exact, masked = {}, []
    for category, action in _CATEGORIES.items():
        for entry in tables[category]:
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = action
            else:
                masked.append((*entry, action))
    return exact, tuple(masked), editions[-1].removeprefix("dicomfields_")


def _action(tag: int) -> str | None:
    exact, masked, _ = profile_table()
    if tag in exact:
        return exact[tag]
    group, element = tag >> 16, tag & 0xFFFF
    if 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:  # curves and overlays, every element
        return "X"
    for g, e, gm, em, action in masked:
        if group & gm == g and element & em == e:
            return action
    return None


def age_band(age: str) -> str | None:
    """A DICOM age string (``045Y``, ``006M``) in 5-year bands, 90 and over as ``090Y``; None if unreadable."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", str(age))
    if not m:
        return None
    years = int(m.group(1)) if m.group(2) == "Y" else 0
    return f"{min(years // 5 * 5, 90):03d}Y"


def _shift_date(value: str, days: int) -> str:
    """A DA (or the date part of a DT) moved back ``days``; "" when it is not a full date."""
    text = str(value).strip()
    if len(text) < 8 or not text[:8].isdigit():
        return ""
    try:
        d = date(int(text[:4]), int(text[4:6]), int(text[6:8])) - timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def _values(elem) -> list:
    from pydicom.multival import MultiValue

    v = elem.value
    return list(v) if isinstance(v, (MultiValue, list, tuple)) else [v]


def _set(elem, values: list) -> None:
    elem.value = values[0] if len(values) == 1 else values


def _dummy(elem, keys: DeidKeys, offset: int | None):
    """A non-empty value of the element's VR that says nothing (the profile's D)."""
    vr = elem.VR
    if vr == "UI":
        return [keys.uid(str(v)) for v in _values(elem)]
    if vr in ("DA", "DT"):
        return [_shift_date(v, offset) or "19000101" for v in _values(elem)] if offset else ["19000101"]
    if vr == "TM":
        return ["000000"]
    if vr in ("IS", "DS"):
        return ["0"]
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
        return [0]
    if vr in ("SH", "LO", "ST", "LT", "UT", "PN", "UC", "CS", "AE", "AS", "UR"):
        return [{"AE": "ANON", "AS": "000Y", "CS": "ANONYMIZED"}.get(vr, _DUMMY)]
    return None  # binary (OB, OW, UN ...): removed


def _apply(ds, keys: DeidKeys, patient_id: str, offset: int | None, policy: DicomPolicy) -> None:
    """The profile on one dataset level, recursing into the sequences it keeps."""
    for tag in list(ds.keys()):
        elem = ds[tag]
        t = int(tag)
        if tag.is_private or tag.element == 0:  # private attributes, group lengths
            del ds[tag]
            continue
        if t in (_PATIENT_ID, _PATIENT_NAME):
            elem.value = patient_id
            continue
        if t == _BIRTH_DATE:  # with the study dates it would give the age: never kept, shifted or not
            elem.value = ""
            continue
        if t in (_PATIENT_AGE, _PATIENT_SEX) and policy.characteristics == "banded":
            value = age_band(elem.value) if t == _PATIENT_AGE else (str(elem.value).strip().upper() or "")
            if value and (t == _PATIENT_AGE or value in ("M", "F", "O")):
                elem.value = value
            else:
                del ds[tag]
            continue
        action = _action(t)
        if elem.VR in ("DA", "DT"):  # every date: shifted (Modified Dates option) or removed
            shifted = [_shift_date(v, offset) for v in _values(elem)] if offset else []
            if shifted and all(shifted):
                _set(elem, shifted)
            elif action is None or "X" in action:
                del ds[tag]
            else:
                elem.value = ""
            continue
        if elem.VR == "TM" or elem.VR == "PN":  # every time and every other name: gone
            if action is None or "X" in action:
                del ds[tag]
            else:
                elem.value = ""
            continue
        if action is None:
            if elem.VR == "SQ":
                for item in elem.value:
                    _apply(item, keys, patient_id, offset, policy)
            continue
        if action == "U" or (action.endswith("U*") and elem.VR == "UI"):
            _set(elem, [keys.uid(str(v)) for v in _values(elem) if str(v)] or [""])
        elif "X" in action:
            del ds[tag]
        elif "Z" in action:
            elem.value = [] if elem.VR == "SQ" else ""
        else:  # D
            dummy = None if elem.VR == "SQ" else _dummy(elem, keys, offset)
            if elem.VR == "SQ":
                elem.value = []
            elif dummy is None:
                del ds[tag]
            else:
                _set(elem, dummy)


def basic_profile(source, keys: DeidKeys, patient: str, policy: DicomPolicy = DicomPolicy()):
    """A de-identified copy of the pydicom Dataset ``source`` (header; pixel data, if any, is dropped).

    ``patient`` is the dataset's patient id (already keyed for DICOM folders): it sets the pseudonym that
    replaces PatientID and PatientName, and the date offset. De-identification attributes are added."""
    ds = copy.deepcopy(source)
    for tag in [t for t in ds.keys() if t.group >= 0x7FE0 or (t.group == 0x0028 and t.element >= 0x7000)]:
        del ds[tag]  # pixel data and its containers: the release writes its own
    ds.remove_private_tags()
    offset = keys.date_offset(patient, policy.max_shift_days) if policy.dates == "shift" else None
    _apply(ds, keys, keys.patient(patient), offset, policy)
    _mark(ds, policy)
    return ds


def _mark(ds, policy: DicomPolicy, pixels_regenerated: bool = False) -> None:
    """PatientIdentityRemoved, DeidentificationMethod (text) and its code sequence."""
    from importlib.metadata import version

    from pydicom.dataset import Dataset

    edition = profile_table()[2]
    ds.PatientIdentityRemoved = "YES"
    methods = [f"PS3.15 Annex E Basic Profile, table {edition}"[:64],
               f"dicom-anonymizer {version('dicom-anonymizer')}; keyed UIDs/ids"[:64],
               "dates shifted per patient; times removed" if policy.dates == "shift" else "dates and times removed"]
    codes = ["113100"]
    if policy.dates == "shift":
        codes.append("113107")
    if policy.characteristics == "banded":
        methods.append("sex kept; age in 5-year bands")
        codes.append("113108")
    if pixels_regenerated:
        methods.append("pixels regenerated by gmia (generative anonymization)")
        codes.insert(1, "113101")
    ds.DeidentificationMethod = methods
    items = []
    for code in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", _CODES[code]
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if policy.dates == "shift" else "REMOVED"


# ---------------------------------------------------------------------------------------------- release header

# What a released file copies from the profiled header: (keyword, VR check). Every other attribute is new.
_CS = re.compile(r"[A-Z0-9 _\\]{0,64}")
_CARRY = {
    "Modality": _CS, "BodyPartExamined": _CS, "ViewPosition": _CS, "Laterality": _CS, "ImageLaterality": _CS,
    "PatientOrientation": _CS, "PatientSex": re.compile(r"[MFO]"), "PatientAge": re.compile(r"\d{3}Y"),
    "StudyDate": re.compile(r"\d{8}"), "SeriesDate": re.compile(r"\d{8}"), "ContentDate": re.compile(r"\d{8}"),
    "AcquisitionDate": re.compile(r"\d{8}"), "SeriesNumber": re.compile(r"[+-]?\d{1,12}"),
    "InstanceNumber": re.compile(r"[+-]?\d{1,12}"),
}
_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_KEYED_UID = re.compile(r"2\.25\.\d{1,39}")


def release_header(profiled, keys: DeidKeys, record_key: str, patient: str, policy: DicomPolicy = DicomPolicy()):
    """The header of a released image, built from nothing: ``profiled`` (from :func:`basic_profile`, or None
    for a non-DICOM source) lends only the attributes in ``_CARRY`` and its keyed UIDs."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    pseudonym = keys.patient(patient)
    ds.SOPClassUID = SECONDARY_CAPTURE
    for name in _UIDS:  # keyed from the source's UID, or from the record when the source had none
        value = str(profiled.get(name, "") or "") if profiled is not None else ""
        setattr(ds, name, value if _KEYED_UID.fullmatch(value) else keys.uid(f"{name}:{record_key}"))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = pseudonym, pseudonym, "", ""
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "", "", "", "", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.PatientOrientation = "OT", "", "", ""
    if profiled is not None:
        for name, pattern in _CARRY.items():
            value = profiled.get(name, None)
            text = "" if value is None else "\\".join(map(str, _values(profiled[name])))
            personal = name in ("PatientAge", "PatientSex")
            if text and pattern.fullmatch(text) and (not personal or policy.characteristics == "banded"):
                setattr(ds, name, value)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "SYN"  # synthetic image: every pixel is generated
    ds.DerivationDescription = "generative anonymization (gmia)"
    ds.BurnedInAnnotation = "NO"  # true by construction: the pixels are regenerated, not copied
    _mark(ds, policy, pixels_regenerated=True)
    return ds


class DicomRelease:
    """The DICOM side of a run: one per run (its key and policy), one prepared header per record."""

    suffix = ".dcm"

    def __init__(self, key: bytes, policy: DicomPolicy = DicomPolicy()):
        self.keys, self.policy = DeidKeys(key), policy

    def prepare(self, source: Path, record_key: str, patient: str) -> tuple[object, int]:
        """(released header, bits per sample) of one record: a DICOM source lends its profiled header and its
        BitsStored; another file gives a header from nothing and its own depth (8 or 16)."""
        from gmia.data.reading import dcmread, is_dicom, source_bits

        source = Path(source)
        if not (source.is_file() and is_dicom(source)):
            return release_header(None, self.keys, record_key, patient, self.policy), source_bits(source)
        src = dcmread(source, stop_before_pixels=True)
        try:  # a header that cannot be de-identified is an error row, never a release
            profiled = basic_profile(src, self.keys, patient, self.policy)
            return release_header(profiled, self.keys, record_key, patient, self.policy), stored_bits(source)
        except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on malformed elements
            raise InputError(f"{source}: cannot de-identify its DICOM header ({type(e).__name__}: {e}); check the "
                             "file with a DICOM validator, or remove it from the dataset.",
                             reason="DICOM header could not be de-identified") from e

    @staticmethod
    def write(x: torch.Tensor, path: Path, header, bits: int) -> Path:
        return save_dicom(x, path, header, bits)

