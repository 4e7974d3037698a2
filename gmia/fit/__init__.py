"""Train every network a preset needs, from a dataset of your own, into one checkpoint folder.

    >>> from gmia.fit import DataSpec, fit
    >>> fit("gmia-cxr256", DataSpec(dataset="mimic", data_root="/data/mimic-cxr-jpg"), "models/mimic")
    >>> # gmia anonymize --preset gmia-cxr256 --checkpoints models/mimic --dataset mimic --data-root ...

The recipe (``recipe.py``) is data: an ordered list of stages per preset. ``pipeline.py`` runs it: data
preprocessed and split by patient once (``data.py``), each stage skipped when its card already carries its key,
resumed when it was killed, on every torchrun process when it is a stage-1 leg (``stages.py``).
"""

from .data import DataSpec, FitData, prepare_data
from .pipeline import FitInterrupted, dry_run, fit
from .recipe import RECIPES, VARIANTS, Stage, parse_override, recipe

__all__ = ["DataSpec", "FitData", "FitInterrupted", "RECIPES", "Stage", "VARIANTS", "dry_run", "fit",
           "parse_override", "prepare_data", "recipe"]
