"""Real-data adapters: MIMIC-CXR-JPG, CheXpert, ChestX-ray14 (over torchxrayvision) and DICOM folders.

Heavy dependencies (torchxrayvision, pydicom) are imported only when an adapter is used.
"""

from gmia.data.adapters.dicom import DicomFolder, read_dicom
from gmia.data.adapters.xrv import CheXpert, ChestXray14, MimicCXR

__all__ = ["MimicCXR", "CheXpert", "ChestXray14", "DicomFolder", "read_dicom"]
