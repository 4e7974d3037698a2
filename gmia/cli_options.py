"""Options several commands share, written once: the input (``--input`` or ``--dataset``/``--data-root``, with
``--labels`` for a folder of your own), the machine (``--device``, ``--threads``), ``--dry-run`` and ``--quiet``.

No torch here: importing a command's options must keep ``gmia --help`` fast.
"""

from __future__ import annotations

import functools

import click

from .config import get_preset
from .errors import ConfigError

__all__ = ["input_options", "labels_options", "machine_options", "quiet_dry_run", "labels_columns", "open_input"]


def _stack(options):
    """One decorator applying ``options`` so that they show in this order in --help."""
    return lambda f: functools.reduce(lambda g, option: option(g), reversed(options), f)


labels_options = _stack([
    click.option("--labels", type=click.Path(dir_okay=False), default=None,
                 help="CSV for a folder of your own: one row per image (path relative to the folder), finding "
                      "columns (0/1, empty = unknown) carried into labels.csv, and optionally a patient column."),
    click.option("--image-column", default=None,
                 help="Column of --labels holding the image paths (default: image, file, path or filename)."),
    click.option("--patient-column", default=None,
                 help="Column of --labels holding the patient id (default: patient or patient_id): groups a "
                      "patient's images, never written out."),
    click.option("--findings", default=None,
                 help="Comma-separated finding columns of --labels (default: every other column)."),
])
"""``--labels FILE.csv [--image-column C] [--patient-column P] [--findings A,B]``: a folder of your own."""

input_options = _stack([
    click.option("--input", "input_dir", type=click.Path(file_okay=False), default=None,
                 help="A phantom folder, or a folder of your own images or DICOM files (--labels for its findings)."),
    click.option("--dataset", default=None, help="Dataset adapter: mimic, chexpert, nih, folder, dicom."),
    click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Root folder of --dataset."),
    labels_options,
])
"""Where the images come from: ``--input DIR`` or ``--dataset NAME --data-root DIR``, plus the labels options."""

machine_options = _stack([
    click.option("--device", default=None,
                 help="cpu, cuda, cuda:1 ... (default: cuda if available; under torchrun: each process's GPU)."),
    click.option("--threads", type=int, default=None, help="CPU threads (1 is fastest on a busy, shared CPU)."),
])
"""``--device`` and ``--threads`` (read by ``gmia.machine``)."""

quiet_dry_run = _stack([
    click.option("--dry-run", is_flag=True, help="Print the resolved config and exit."),
    click.option("--quiet", is_flag=True, help="No progress bars."),
])


def labels_columns(labels: str | None, image_column: str | None, patient_column: str | None,
                   findings: str | None) -> dict:
    """The column options of ``--labels`` as keyword arguments (``findings`` "a,b" → ["a", "b"])."""
    given = [name for name, v in (("--image-column", image_column), ("--patient-column", patient_column),
                                  ("--findings", findings)) if v is not None]
    if labels is None and given:
        raise ConfigError(f"{given[0]} names a column of the labels CSV: add --labels FILE.csv")
    names = None if findings is None else [f.strip() for f in findings.split(",") if f.strip()]
    return {"image_column": image_column, "patient_column": patient_column, "findings": names}


def open_input(preset: str, input_dir: str | None, dataset: str | None, data_root: str | None, split: str | None,
               labels: str | None = None, image_column: str | None = None, patient_column: str | None = None,
               findings: str | None = None):
    """The dataset ``input_options`` name, preprocessed to the preset's channels and resolution (through
    ``gmia.data.open``); ConfigError when the options contradict each other."""
    from .data import open as open_data

    p = get_preset(preset)
    if (input_dir is None) == (dataset is None):
        raise ConfigError("give exactly one input: --input DIR (a phantom or image folder), or --dataset NAME "
                          "--data-root DIR (mimic, chexpert, nih, folder, dicom)")
    if dataset is not None and data_root is None:
        raise ConfigError(f"--dataset {dataset} needs --data-root DIR: the folder holding the {dataset} files")
    columns = labels_columns(labels, image_column, patient_column, findings)
    return open_data(input_dir if dataset is None else data_root, dataset, split=split, size=p.resolution,
                     channels=p.channels, labels=labels, **columns)
