"""Stage 2: batched latent optimization under an identity hinge, a utility loss and (phantom presets) a pull
towards a generated surrogate identity, a privacy gate on the saved files, and a resumable, shardable runner.

    from gmia.anonymization import anonymize_config, anonymize_dataset
    cfg = anonymize_config("phantom-cxr64", privacy="high")
    summary = anonymize_dataset(cfg, dataset, "outputs/anon")

Modules, in the order the data flows: ``config`` (settings, presets), ``losses`` (per-image terms), ``surrogate`` (the surrogate-identity term),
``optimizer`` (per-row Adam, stopping, compaction), ``gate`` (write, reload, re-check), ``outputs`` (the run
folder: pseudonyms, journal, manifest, labels), ``runner`` (the loop over a dataset).
"""

from .config import PRESETS, AnonymizeConfig, anonymize_config
from .losses import IdentityTerm, Objective, UtilityTerm, identity_cosine, identity_hinge, utility_distance
from .optimizer import Finished, Item, LatentOptimizer, decode
from .runner import Engine, anonymize_dataset, load_engine, parse_shard, record_seed

__all__ = ["PRESETS", "AnonymizeConfig", "anonymize_config", "IdentityTerm", "UtilityTerm", "Objective",
           "identity_cosine", "identity_hinge", "utility_distance", "Item", "Finished", "LatentOptimizer", "decode",
           "Engine", "load_engine", "anonymize_dataset", "parse_shard", "record_seed"]
