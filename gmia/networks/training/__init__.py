"""Training of the scoring networks (E_id, E_ut, E_ut2, MFM, attacker) on a phantom folder.

    >>> from gmia.networks.training import get_train_config, train
    >>> cfg = get_train_config("phantom-cxr64", "identity")
    >>> train(cfg, data="data/phantom-cxr64", out="checkpoints/phantom-cxr64").metrics
"""

from .config import (PRESETS, ROLES, AttackerConfig, IdentityConfig, MFMConfig, SecondUtilityConfig, TrainConfig,
                     UtilityConfig, get_train_config)
from .loops import TrainResult, train

__all__ = ["PRESETS", "ROLES", "TrainConfig", "IdentityConfig", "UtilityConfig", "SecondUtilityConfig", "MFMConfig", "AttackerConfig",
           "get_train_config", "train", "TrainResult"]
