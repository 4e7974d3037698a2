"""Clean-room StyleGAN2-ADA networks (PyTorch only) with the official parameter names, plus GMIA's ESModel.

    from third_party.stylegan2_ada import Generator, Discriminator, ESModel

    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=64, img_channels=1,
                  mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=16384))
    img = G(torch.randn(4, 512), noise_mode="const")   # (4, 1, 64, 64), official range [-1, 1]

Official ``.pkl`` snapshots are read only through ``legacy_pickle`` (a restricted unpickler that never runs the
source code embedded in them). See README.md in this folder.
"""

from .discriminator import Discriminator, DiscriminatorBlock, DiscriminatorEpilogue, MinibatchStdLayer
from .generator import Generator, MappingNetwork, SynthesisBlock, SynthesisNetwork
from .gmia_model import Encoder, EncoderEpilogue, ESModel
from .layers import Conv2dLayer, FullyConnectedLayer, SynthesisLayer, ToRGBLayer

__all__ = [
    "Conv2dLayer",
    "Discriminator",
    "DiscriminatorBlock",
    "DiscriminatorEpilogue",
    "ESModel",
    "Encoder",
    "EncoderEpilogue",
    "FullyConnectedLayer",
    "Generator",
    "MappingNetwork",
    "MinibatchStdLayer",
    "SynthesisBlock",
    "SynthesisLayer",
    "SynthesisNetwork",
    "ToRGBLayer",
]
