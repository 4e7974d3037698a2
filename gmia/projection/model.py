"""The stage-1 AE-GAN: an encoder E to W or W+, a StyleGAN2 synthesis network G (no mapping network), and the
discriminator D that trains them.

Tensor convention at every public verb: float32 NCHW images in [0, 1]. Inside, the networks see images in
``image_range``: "signed" ([-1, 1], the StyleGAN2 convention; conversion ``2x - 1`` in and ``(y + 1) / 2`` out)
or "unit" ([0, 1] raw, the published GMIA convention, so an imported GMIA ESModel behaves as it was trained).

    >>> model = AEGAN(img_resolution=64, img_channels=1, channel_base=2048, channel_max=128)
    >>> w = model.encode(x)                 # x (N, 1, 64, 64) in [0, 1] -> w (N, 512)   (W space)
    >>> x_hat = model.synthesize(w)         # (N, 1, 64, 64), nominally [0, 1] (not clamped)
    >>> x_hat = model.reconstruct(x)        # the same in one call

Children are named like GMIA's ``ESModel`` (``synthesis``, ``encoder``), so in W space with image_range "unit"
the state dict of an imported ESModel loads into an AEGAN unchanged (``AEGAN.from_esmodel``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from third_party.stylegan2_ada import Discriminator, Encoder, ESModel, FullyConnectedLayer, SynthesisNetwork

__all__ = ["AEGAN", "IMAGE_RANGES", "LATENT_SPACES", "WPlusEncoder", "build_discriminator"]

LATENT_SPACES = ("w", "w+")
IMAGE_RANGES = ("signed", "unit")


class WPlusEncoder(Encoder):
    """The GMIA encoder trunk with a W+ head: ws = w (broadcast) + a learned per-layer offset of w.

    img (N, K, R, R) in the model's range -> ws (N, num_ws, w_dim). The offset layer ``ws_head`` starts at zero,
    so an untrained W+ encoder is exactly a W encoder and learns per-layer codes only where they help.
    """

    def __init__(
        self,
        c_dim: int,              # must be 0
        num_ws: int,             # style inputs of the synthesis network
        img_resolution: int,     # input resolution
        img_channels: int,       # input channels
        w_dim: int = 512,        # latent width
        **trunk_kwargs: Any,     # Encoder kwargs (channel_base, channel_max, conv_clamp, ...)
    ):
        super().__init__(c_dim, num_ws, img_resolution, img_channels, w_dim=w_dim, **trunk_kwargs)
        self.ws_head = FullyConnectedLayer(w_dim, num_ws * w_dim)
        with torch.no_grad():
            self.ws_head.weight.zero_()

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x, img = self._run_trunk(img)
        w = self.b4(x, img)  # (N, w_dim)
        return w.unsqueeze(1) + self.ws_head(w).reshape(-1, self.num_ws, self.w_dim)  # (N, num_ws, w_dim)


class AEGAN(nn.Module):
    """Encoder + synthesis network, images in [0, 1] at the boundary (see the module docstring).

    Latent codes: in W space ``encode`` returns w (N, w_dim), broadcast to all style inputs by ``synthesize``;
    in W+ space it returns ws (N, num_ws, w_dim). ``synthesize`` accepts either shape.
    """

    def __init__(
        self,
        img_resolution: int,           # image side R (power of two)
        img_channels: int,             # 1 (X-ray) or 3 (RGB face)
        w_dim: int = 512,              # latent width
        latent: str = "w",             # "w": one w for all layers (published); "w+": one w per layer
        channel_base: int = 16384,     # channels at resolution r: min(channel_base // r, channel_max), E and G
        channel_max: int = 512,        # channel cap, E and G
        use_noise: bool = True,        # per-pixel noise inputs in G
        conv_clamp: float | None = None,  # clamp conv outputs (GMIA: 256, for its fp16 blocks)
        image_range: str = "signed",   # pixel range the networks work in: "signed" [-1, 1] or "unit" [0, 1]
        encoder_channel_base: int | None = None,  # E's own capacity (None: channel_base, as published): an
        encoder_channel_max: int | None = None,   # inverting encoder may need more room than the generator
    ):
        super().__init__()
        if latent not in LATENT_SPACES:
            raise ValueError(f"latent must be one of {LATENT_SPACES}; got {latent!r}")
        if image_range not in IMAGE_RANGES:
            raise ValueError(f"image_range must be one of {IMAGE_RANGES}; got {image_range!r}")
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels, w_dim=w_dim,
                                latent=latent, channel_base=channel_base, channel_max=channel_max,
                                use_noise=use_noise, conv_clamp=conv_clamp, image_range=image_range,
                                encoder_channel_base=encoder_channel_base, encoder_channel_max=encoder_channel_max)
        self.img_resolution, self.img_channels, self.w_dim = img_resolution, img_channels, w_dim
        self.latent, self.image_range = latent, image_range
        capacity = dict(channel_base=channel_base, channel_max=channel_max, conv_clamp=conv_clamp)
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, use_noise=use_noise, **capacity)
        self.num_ws = self.synthesis.num_ws
        encoder_cls = Encoder if latent == "w" else WPlusEncoder
        e_capacity = dict(capacity, channel_base=encoder_channel_base or channel_base,
                          channel_max=encoder_channel_max or channel_max)
        self.encoder = encoder_cls(0, self.num_ws, img_resolution, img_channels, w_dim=w_dim, **e_capacity)

    # ---- range conversion (the only place it happens) -----------------------------------------------------
    def to_internal(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the networks' range (E's and D's input)."""
        return x * 2 - 1 if self.image_range == "signed" else x

    def from_internal(self, y: torch.Tensor) -> torch.Tensor:
        """The networks' range -> [0, 1] (not clamped: losses need the raw output)."""
        return (y + 1) / 2 if self.image_range == "signed" else y

    # ---- verbs ---------------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, R, R) in [0, 1] -> w (N, w_dim) in W space, ws (N, num_ws, w_dim) in W+ space."""
        ws = self.encoder(self.to_internal(x))
        return ws[:, 0] if self.latent == "w" else ws

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """w (N, w_dim) or ws (N, num_ws, w_dim) -> ws (N, num_ws, w_dim) (a copy per layer, differentiable)."""
        return w.unsqueeze(1).repeat(1, self.num_ws, 1) if w.ndim == 2 else w

    def synthesize(self, w: torch.Tensor, noise_mode: str = "const", noise_generator=None,
                   noise_seeds: list[int] | None = None) -> torch.Tensor:
        """w (N, w_dim) or ws (N, num_ws, w_dim) -> images (N, C, R, R), nominally [0, 1], not clamped.

        noise_mode: "const" (deterministic, the default for inference), "random" (training) or "none";
        noise_generator: a torch.Generator or one per sample, for reproducible "random" noise;
        noise_seeds: one seed per image: each image gets its own fixed noise, whatever batch it is in.
        """
        if noise_seeds is not None:
            noise_mode, noise_generator = "random", [torch.Generator().manual_seed(int(s)) for s in noise_seeds]
        y = self.synthesis(self.broadcast(w), noise_mode=noise_mode, noise_generator=noise_generator)
        return self.from_internal(y)

    def render(self, w: torch.Tensor, noise_seeds: list[int] | None = None) -> torch.Tensor:
        """The image a code is released as: G(w) clamped to [0, 1], with each image's own fixed noise
        (``noise_seeds``, seeded from its record) or, without seeds, G's constant noise. Stage 2 optimizes,
        gates and writes exactly this image."""
        return self.synthesize(w, noise_seeds=noise_seeds).clamp(0.0, 1.0)

    def reconstruct(self, x: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """x (N, C, R, R) in [0, 1] -> G(E(x)) (N, C, R, R), not clamped."""
        return self.synthesize(self.encode(x), noise_mode=noise_mode)

    def forward(self, x: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        return self.reconstruct(x, noise_mode=noise_mode)

    def extra_repr(self) -> str:
        return (f"resolution={self.img_resolution}, channels={self.img_channels}, latent={self.latent!r}, "
                f"num_ws={self.num_ws}, w_dim={self.w_dim}, image_range={self.image_range!r}")

    @classmethod
    def from_esmodel(cls, es: ESModel) -> "AEGAN":
        """Wrap an (imported) GMIA ESModel: W space, image_range "unit", same weights."""
        syn = es.synthesis
        model = cls(es.img_resolution, es.img_channels, w_dim=es.w_dim, latent="w",
                    channel_base=syn.channel_base, channel_max=syn.channel_max,
                    use_noise=syn.b4.conv1.use_noise, conv_clamp=syn.b4.conv1.conv_clamp, image_range="unit")
        model.load_state_dict(es.state_dict(), strict=True)
        return model


def build_discriminator(model_kwargs: dict, mbstd_group: int = 4) -> tuple[Discriminator, dict]:
    """The StyleGAN2 ResNet D matching an AEGAN's resolution, channels and capacity; returns (D, its kwargs)."""
    kwargs = dict(c_dim=0, img_resolution=model_kwargs["img_resolution"], img_channels=model_kwargs["img_channels"],
                  channel_base=model_kwargs["channel_base"], channel_max=model_kwargs["channel_max"],
                  conv_clamp=model_kwargs.get("conv_clamp"),
                  epilogue_kwargs=dict(mbstd_group_size=mbstd_group, mbstd_num_channels=1))
    return Discriminator(**kwargs), kwargs

