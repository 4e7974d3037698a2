"""A folder of DICOM files as a dataset (pixels are read by ``gmia.data.reading``: ``read_dicom``).

Patient ids come from the PatientID tag and are only used to group records; the sample carries a keyed
pseudonym (``pid-`` + 16 hex digits of HMAC-SHA256(key, PatientID)), never the tag itself nor an unsalted hash
of it. An anonymization run keys it with its own secret (``use_patient_key``); otherwise the key is random per
dataset object. De-identified DICOM output: ``dicom_deid``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from gmia.data.datasets import ImageFolder
from gmia.data.preprocess import Preprocess
from gmia.data.reading import DICOM_SUFFIXES, dcmread, dicom_to_tensor, read_dicom

__all__ = ["read_dicom", "dicom_to_tensor", "patient_pseudonym", "DicomFolder"]  # the readers, re-exported for adapters users


def patient_pseudonym(patient_id: str, key: bytes) -> str:
    """A stand-in for a PatientID: ``pid-`` + 16 hex digits of HMAC-SHA256(key, PatientID). It groups a
    patient's files; without the key it can neither be recomputed from a known id nor linked across runs."""
    return "pid-" + hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


class DicomFolder(ImageFolder):
    """All DICOM files (.dcm, .dicom) under ``root``; patients grouped by the PatientID tag (pseudonymized).

    Same options as :class:`ImageFolder` (``labels_csv`` etc.). Patient ids are read from the file headers
    (pixels skipped) the first time ``patients()`` or a sample needs them, then cached; a file without a
    PatientID is its own patient. A labels CSV with a patient column overrides the tags.
    """

    suffixes: tuple[str, ...] = DICOM_SUFFIXES

    def __init__(self, root, labels_csv=None, *, findings: Sequence[str] | None = None,
                 file_column: str | None = None, patient_column: str | None = None,
                 preprocess: Preprocess | None = None, channels: int | None = 1):
        super().__init__(root, labels_csv, findings=findings, file_column=file_column,
                         patient_column=patient_column, preprocess=preprocess, channels=channels)
        self._patients_from_tags = self._patients is None  # a CSV patient column overrides the tags
        self._patient_key = secrets.token_bytes(32)

    def use_patient_key(self, key: bytes) -> None:
        """Key the PatientID pseudonyms with ``key`` (an anonymization run hands its own, so that they are the
        same on every resume and shard). Until then a random key of this dataset object is used: patients group
        correctly within the process, and nothing derived from a PatientID is reproducible outside it."""
        self._patient_key = bytes(key)
        if self._patients_from_tags:
            self._patients = None  # recomputed from the headers under the new key

    def _lookup_patient(self, i: int) -> str:
        ds = dcmread(self._image_path(i), stop_before_pixels=True, specific_tags=["PatientID"])
        pid = str(ds.get("PatientID", "") or "").strip()
        return patient_pseudonym(pid, self._patient_key) if pid else self._keys[i]
