"""Stage 1: the AE-GAN (encoder E to W/W+, StyleGAN2 synthesis G, discriminator D), its co-training, and the
projection of images to latent codes.

    from gmia import data
    from gmia.projection import aegan_config, train_aegan, load_aegan, project_dataset
    cfg = aegan_config("phantom-cxr64", kimg=50)
    train_aegan(cfg, data.open("data/phantom-cxr64", split="train", size=64, channels=1), "runs/00000-aegan-cxr64")
    model = load_aegan("runs/00000-aegan-cxr64/checkpoint")
    test = data.open("data/phantom-cxr64", split="test", size=64, channels=1)
    project_dataset(model, test, "out/projection", refine_steps=100)

Importing this package registers ``AEGAN`` and ``WPlusEncoder`` with gmia.checkpoints.
"""

from .config import PRESETS, AeganConfig, ProjectionConfig, aegan_config
from .losses import FeatureLoss, LpipsLoss, PerceptualLoss, ReconstructionLoss, build_perceptual
from .model import AEGAN, WPlusEncoder
from .project import (LatentRefiner, load_aegan, project_dataset, project_images, reconstruction_metrics,
                      run_projection)
from .training import TrainResult, train_aegan, training_step

__all__ = [
    "AEGAN", "AeganConfig", "FeatureLoss", "LatentRefiner", "LpipsLoss", "PRESETS", "PerceptualLoss",
    "ProjectionConfig", "ReconstructionLoss", "TrainResult", "WPlusEncoder", "aegan_config", "build_perceptual",
    "load_aegan", "project_dataset", "project_images", "reconstruction_metrics", "run_projection",
    "train_aegan", "training_step",
]
