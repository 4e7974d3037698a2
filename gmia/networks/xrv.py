"""Adapters for real chest X-rays: torchxrayvision's DenseNet as E_ut and its ResNet autoencoder as the MFM.

Weights come from a local file; nothing is downloaded unless the caller passes ``allow_download=True``.
Accepted files: ``.safetensors`` state dicts, ``torch.save`` state dicts, and torchxrayvision's own release
files (which pickle the whole module) — the latter are opened by torch's restricted unpickler with an exact
allowlist of torchxrayvision / torch.nn classes, so no code inside the file runs.

    >>> ut = XRVUtility.from_file("weights/nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-...pt")
    >>> ut.features(x)          # x (N, 1, 256, 256) in [0, 1] → (N, 1024)
    >>> mfm = XRVAutoencoder.from_file("weights/nihpcrsnamimic_ch-resnet101-2-ae-test2-elastic-e250.pt")
    >>> mfm.features(x)         # (N, 4608): the 512 × 3 × 3 code, flattened

Both convert inside from gmia's [0, 1] to torchxrayvision's [-1024, 1024] at 224 × 224, grey.
To use one in ``gmia.networks.load``, save it once with ``import_xrv`` into a checkpoint folder.
"""

from __future__ import annotations

import collections
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .base import FrozenNet

__all__ = ["XRVUtility", "XRVAutoencoder", "load_state_file", "import_xrv", "XRV_DENSENET_TARGETS"]

# Output order of torchxrayvision's 18-way DenseNet heads (empty where a weights file has no such label).
XRV_DENSENET_TARGETS = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis", "Effusion",
    "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion", "Fracture",
    "Lung Opacity", "Enlarged Cardiomediastinum")


def _xrv():
    """Import torchxrayvision lazily; it silences all warnings globally on import, which we undo."""
    with warnings.catch_warnings():
        import torchxrayvision
    return torchxrayvision


def _to_xrv_range(x: torch.Tensor) -> torch.Tensor:
    return x * 2048.0 - 1024.0  # [0, 1] → [-1024, 1024], torchxrayvision's convention


def _allowlist() -> list:
    """The only globals a torchxrayvision release pickle may name (checked by torch's weights-only unpickler)."""
    xrv = _xrv()
    m, ae = xrv.models, xrv.autoencoders
    return [m.DenseNet, m._DenseLayer, m._DenseBlock, m._Transition, ae._ResNetAE, ae.Bottleneck,
            ae.DeconvBottleneck, nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d,
            nn.AvgPool2d, nn.Linear, nn.Sequential, collections.OrderedDict, set]


def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, a ``torch.save``d state dict, or a whole-module release pickle."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        with torch.serialization.safe_globals(_allowlist()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler met a global outside the allowlist, or a bad file
        raise CheckpointError(
            f"{path}: cannot be opened safely ({str(e).splitlines()[-1][:200]}). Expected a safetensors file, a "
            "state dict, or a torchxrayvision release file. Convert other files once, in a trusted environment: "
            "`from safetensors.torch import save_file; save_file(model.state_dict(), 'weights.safetensors')`.") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def _resolve(path, weights: str, registry: dict, allow_download: bool, what: str) -> Path:
    """The local weights file, downloading it only when explicitly allowed."""
    path = Path(path) if path is not None else None
    if path is not None and path.is_file():
        return path
    url = registry.get(weights, {}).get("weights_url", "<unknown weights name>")
    if not allow_download:
        where = f"at {path}" if path is not None else "(no path given)"
        raise CheckpointError(
            f"torchxrayvision {what} weights '{weights}' not found {where}. Download the file yourself "
            f"(`wget {url} -O {path or Path(url).name}`) and pass its path (CLI: `gmia import-weights --format "
            "xrv ROLE FILE`), or, from Python, pass allow_download=True to let gmia fetch it once.")
    target = path if path is not None else Path.home() / ".torchxrayvision" / Path(url).name
    target.parent.mkdir(parents=True, exist_ok=True)
    _xrv().utils.download(url, str(target))
    return target


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], path) -> None:
    state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
    state.pop("op_threshs", None)  # calibration buffer of some release files; we expose raw logits
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or extra or wrong:
        raise CheckpointError(f"{path}: weights do not fit the architecture ({len(missing)} missing, "
                              f"{len(extra)} unexpected, {len(wrong)} mis-shaped; first: "
                              f"{(missing + extra + wrong)[0]}). Check the architecture kwargs.")
    module.load_state_dict(state)


class XRVUtility(FrozenNet):
    """E_ut from a torchxrayvision DenseNet: ``features`` = its pooled 1024-d features, ``logits`` = its head."""

    def __init__(self,
                 growth_rate: int = 32,                          # DenseNet-121 defaults of torchxrayvision
                 block_config: tuple = (6, 12, 24, 16),
                 num_init_features: int = 64,
                 num_classes: int = 18,                          # outputs of the weights' classifier
                 finding_names: tuple = XRV_DENSENET_TARGETS,    # their names ("" = not trained)
                 resolution: int = 224,                          # what the weights were trained at
                 ):
        super().__init__(1, resolution)
        self.finding_names = tuple(finding_names)
        self.model = _xrv().models.DenseNet(growth_rate=growth_rate, block_config=tuple(block_config),
                                            num_init_features=num_init_features, num_classes=num_classes)
        self.feature_dim = self.model.classifier.in_features

    @classmethod
    def from_file(cls, path=None, weights: str = "densenet121-res224-all", allow_download: bool = False,
                  **kwargs) -> "XRVUtility":
        """Build and load from a local file (``weights`` names the release, for the message and a download)."""
        path = _resolve(path, weights, _xrv().models.model_urls, allow_download, "DenseNet")
        net = cls(**kwargs)
        _load_into(net.model, load_state_file(path), path)
        return net.frozen()

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        h = self.model.features(_to_xrv_range(self.prepare(x)))
        return torch.relu(h).mean(dim=(2, 3))  # (N, 1024), as torchxrayvision's features2

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Utility features (N, 1024) of images x (N, 1|3, S, S) in [0, 1]."""
        return self._pooled(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw classifier logits (N, num_classes), in ``finding_names`` order."""
        return self.model.classifier(self._pooled(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class XRVAutoencoder(FrozenNet):
    """MFM from torchxrayvision's ResNet autoencoder: ``features`` = its encoder code, flattened."""

    def __init__(self,
                 layers: tuple = (3, 4, 23, 2),   # bottleneck blocks per stage; (3, 4, 23, 2) = "101-elastic"
                 resolution: int = 224,           # what the weights were trained at
                 ):
        super().__init__(1, resolution)
        ae = _xrv().autoencoders
        self.model = ae._ResNetAE(ae.Bottleneck, ae.DeconvBottleneck, list(layers), 1)

    @classmethod
    def from_file(cls, path=None, weights: str = "101-elastic", allow_download: bool = False,
                  **kwargs) -> "XRVAutoencoder":
        path = _resolve(path, weights, _xrv().autoencoders.model_urls, allow_download, "autoencoder")
        net = cls(**kwargs)
        _load_into(net.model, load_state_file(path), path)
        return net.frozen()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code (N, 512, 3, 3) at 224 px."""
        return self.model.encode(_to_xrv_range(self.prepare(x)), check_resolution=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """General-purpose features (N, 4608 at 224 px) of images x (N, 1|3, S, S) in [0, 1]."""
        return self.encode(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def import_xrv(role: str, src, out_dir, preset: str = "gmia-cxr256", allow_download: bool = False,
               **kwargs) -> Path:
    """Save torchxrayvision weights once as a gmia checkpoint ``<out_dir>/<role>.safetensors`` + card, so
    ``gmia.networks.load(preset, role, root)`` finds them. role: "utility" (DenseNet) or "mfm" (autoencoder).

    ``out_dir`` is the preset's checkpoint folder, e.g. ``checkpoints/gmia-cxr256``.
    """
    from ..checkpoints import save_module, sha256_file

    classes = {"utility": XRVUtility, "mfm": XRVAutoencoder}
    if role not in classes:
        raise CheckpointError(f"torchxrayvision weights can serve as {' or '.join(classes)}, not {role!r}")
    cls = classes[role]
    net = cls.from_file(src, allow_download=allow_download, **kwargs)
    ctor = {k: v for k, v in kwargs.items() if k not in ("weights",)}
    src = Path(src) if src is not None else None
    meta = {"preset": preset, "role": role, "source": {
        "file": src.name if src is not None else None,
        "sha256": sha256_file(src) if src is not None and src.is_file() else None,
        "library": "torchxrayvision", "weights": kwargs.get("weights")}}
    return save_module(net, ctor, out_dir, role, meta=meta)
