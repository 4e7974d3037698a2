"""Synthetic phantoms: chest X-rays (``cxr``) and patient faces (``face``) with known identity ground truth.

    >>> from gmia.data import phantoms
    >>> ps = phantoms.generate("cxr", patients=10, studies=4, size=64, seed=1)   # in memory
    >>> phantoms.write(ps, "out/")                                               # images/, masks/, metadata.csv
"""

from __future__ import annotations

from types import ModuleType

from ...errors import ConfigError
from .base import PhantomSet, patient_rng, study_rng
from .memory import PhantomDataset
from .splits import assign_splits
from .writer import write

__all__ = ["DOMAINS", "PhantomSet", "PhantomDataset", "generate", "domain_module", "write", "assign_splits",
           "patient_rng", "study_rng"]

DOMAINS = ("cxr", "face")


def domain_module(domain: str) -> ModuleType:
    """The generator module of a domain (imported lazily: each is a few hundred lines of rendering)."""
    if domain == "cxr":
        from . import cxr as module
    elif domain == "face":
        from . import face as module
    else:
        raise ConfigError(f"unknown phantom domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    return module


def generate(domain: str, patients: int, studies: int, size: int = 64, seed: int = 0) -> PhantomSet:
    """Render ``patients`` × ``studies`` phantom images, patient-major; deterministic for a seed.

    Returns a PhantomSet with images (N, C, S, S) float32 in [0, 1], lesion masks, patient/study indices,
    0/1 findings, the identity parameters, and ``meta["split"]`` (train/val/test by patient).
    """
    if patients < 1 or studies < 1 or size < 8:
        raise ConfigError(f"phantom needs patients >= 1, studies >= 1, size >= 8; got {patients}, {studies}, {size}")
    ps = domain_module(domain).generate(patients=patients, studies=studies, size=size, seed=seed)
    ps.meta.update(domain=domain, patients=patients, studies=studies, size=size, seed=seed,
                   split=assign_splits(patients, seed)[ps.patient])
    return ps
