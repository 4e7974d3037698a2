"""Stage 2: batched latent optimization under an identity hinge, a utility loss and (phantom presets) a pull
towards a generated surrogate identity, a privacy gate on the saved files, and a resumable, shardable runner.

    from gmia.anonymization import anonymize_config, anonymize_dataset
    cfg = anonymize_config("phantom-cxr64", privacy="high")
    summary = anonymize_dataset(cfg, dataset, "outputs/anon")

Modules, in the order the data flows: ``config`` (settings, presets), ``domain`` (the out-of-domain guard),
``losses`` (per-image terms), ``surrogate`` (the surrogate-identity term), ``optimizer`` (per-row Adam, stopping,
compaction) or ``amortized`` (one pass of a trained network; trained by ``train_amortized``), ``gate`` (write,
reload, re-check), ``outputs`` (the run folder: pseudonyms, journal, manifest, labels), ``runner`` (the loop over
a dataset), ``on_ray`` (the same loop on a Ray cluster).
"""

import importlib

# name -> the module that defines it, imported on first use (PEP 562): `gmia anonymize --help` and the config
# helpers do not pay for torch and the networks
_EXPORTS = {
    **dict.fromkeys(("PRESETS", "AnonymizeConfig", "anonymize_config"), "config"),
    **dict.fromkeys(("IdentityTerm", "Objective", "UtilityTerm", "identity_cosine", "identity_hinge",
                     "utility_distance"), "losses"),
    **dict.fromkeys(("Finished", "Item", "LatentOptimizer", "noise_seeds"), "optimizer"),
    **dict.fromkeys(("Engine", "anonymize_dataset", "load_engine", "parse_shard", "record_seed"), "runner"),
}

__all__ = ["PRESETS", "AnonymizeConfig", "anonymize_config", "IdentityTerm", "UtilityTerm", "Objective",
           "identity_cosine", "identity_hinge", "utility_distance", "Item", "Finished", "LatentOptimizer", "noise_seeds",
           "Engine", "load_engine", "anonymize_dataset", "parse_shard", "record_seed"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
