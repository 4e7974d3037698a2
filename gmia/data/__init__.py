"""Data layer: synthetic phantoms, dataset adapters and preprocessing.

    >>> from gmia import data
    >>> ds = data.open_dataset("phantom", "data/phantom-cxr64", split="test")
    >>> sample = ds[0]   # {"image": (C,H,W) float [0,1], "key", "patient", "labels", "mask", "index", "geometry"}
"""

from .registry import DATASETS, open_dataset

__all__ = ["DATASETS", "open_dataset"]
