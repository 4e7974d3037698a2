"""Data layer: synthetic phantoms, dataset adapters and preprocessing.

    >>> from gmia import data
    >>> ds = data.open("data/phantom-cxr64", split="test", size=64, channels=1)
    >>> sample = ds[0]   # {"image": (C,H,W) float [0,1], "key", "patient", "labels", "mask", "index", "geometry"}
"""

from .registry import DATASETS, is_phantom_folder, open, open_dataset, open_folder  # noqa: A004

__all__ = ["DATASETS", "open", "open_dataset", "open_folder", "is_phantom_folder"]
