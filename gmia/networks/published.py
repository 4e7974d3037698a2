"""Weights people already have, as gmia checkpoints: the published method's E_id and E_ut, torchxrayvision's.

    import_weights("identity", "r50_epoch299.pth", "models/mimic")               # insightface IResNet state dict
    import_weights("utility", "densenet_utility.pth", "models/mimic",
                   finding_names=("Lung Opacity", "Atelectasis", "Pleural Effusion", "Support Devices"))
    import_weights("utility", "densenet121-res224-all.pt", "models/mimic", fmt="xrv")   # torchxrayvision

Each writes ``<out>/<role>.safetensors`` + its card (``meta.imported``: the file's name, sha256 and format), so
``gmia.networks.load(preset, role, out)`` finds it and ``gmia fit --out out`` does not train that role.

Formats read:

* identity, ``published``: an insightface-style IResNet state dict (conv1, bn1, prelu, layer1..4 of IBasicBlocks
  with bn1/conv1/bn2/prelu/conv2/bn3/downsample, bn2, fc, features), as the published method trained it: one
  channel, stride-1 stem, raw [0, 1] input. Widths, depths, embedding size and resolution are read off the
  shapes. It becomes an ``IdentityNet(input_range="unit")``: the same function.
* utility, ``published``: a DenseNet-121 state dict in torchvision's names (features.conv0, norm0,
  denseblock*/denselayer*, transition*, norm5) with the published head (a 1024 → 512 layer, BN1d, 512 → C),
  fed RGB with ImageNet normalization. It becomes a ``UtilityNet(stem="imagenet", input_norm="imagenet")``.
* utility / mfm, ``xrv``: torchxrayvision's DenseNet / ResNet autoencoder files (``gmia.networks.xrv``).

Files are read with ``torch.load(weights_only=True)`` (or as safetensors): no code inside them runs. A state dict
that does not fit says which key is missing, unexpected or mis-shaped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import CheckpointError

__all__ = ["read_state_dict", "identity_from_insightface", "utility_from_densenet", "import_weights"]


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a ``.safetensors`` file or a ``torch.save``d dict (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; give the path of the weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler refused the file or it is not a torch file
        raise CheckpointError(f"{path}: cannot be read as weights only ({str(e).splitlines()[-1][:200]}). Expected a "
                              "state dict saved with torch.save(model.state_dict(), ...) or a .safetensors file; "
                              "files that pickle whole modules are refused (their code would run)") from None
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return {re.sub(r"^(module\.)+", "", k): v for k, v in obj.items()}


def _fit(module: torch.nn.Module, state: dict[str, torch.Tensor], path, what: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or extra or wrong:
        first = (["missing " + k for k in missing] + ["unexpected " + k for k in extra] + wrong)[:3]
        raise CheckpointError(f"{path}: not {what} ({len(missing)} missing, {len(extra)} unexpected, {len(wrong)} "
                              f"mis-shaped; {'; '.join(first)})")
    module.load_state_dict({k: state[k].float() if state[k].is_floating_point() else state[k] for k in own})


def _need(state: dict, key: str, path, what: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{path}: not {what}: no {key!r} in the state dict (its first keys: "
                              f"{list(state)[:5]})")
    return state[key]


# ---- E_id: insightface IResNet --------------------------------------------------------------------------------
_IRESNET = "an insightface IResNet state dict"


def identity_from_insightface(state: dict[str, torch.Tensor], path="<state dict>"):
    """(IdentityNet, kwargs) computing what the insightface IResNet of ``state`` computes on [0, 1] images."""
    from .identity import IdentityNet

    conv1 = _need(state, "conv1.weight", path, _IRESNET)
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"layer(\d+)\.", k))})
    if not layers:
        raise CheckpointError(f"{path}: not {_IRESNET}: no layer1..layerN blocks")
    blocks = [len({int(m.group(1)) for k in state if (m := re.match(rf"layer{n}\.(\d+)\.", k))}) for n in layers]
    widths = [int(_need(state, f"layer{n}.0.conv1.weight", path, _IRESNET).shape[0]) for n in layers]
    fc = _need(state, "fc.weight", path, _IRESNET)
    side = round((fc.shape[1] / widths[-1]) ** 0.5)
    kwargs = dict(in_channels=int(conv1.shape[1]), resolution=side * 2 ** len(layers), widths=widths, blocks=blocks,
                  stem_width=int(conv1.shape[0]), stem_stride=1, embed_dim=int(fc.shape[0]), dropout=0.0,
                  input_range="unit")
    ours = {"conv1.weight": "stem.0.weight", "prelu.weight": "stem.2.weight", "fc.weight": "fc.weight",
            "fc.bias": "fc.bias"}
    mapped = {}
    for k, v in state.items():
        if k in ours:
            mapped[ours[k]] = v
        elif k.startswith("bn1."):
            mapped["stem.1." + k[4:]] = v
        elif k.startswith("bn2."):
            mapped["bn_out." + k[4:]] = v
        elif k.startswith("features."):
            mapped["features_bn." + k[9:]] = v
        elif m := re.match(r"layer(\d+)\.(\d+)\.(.*)$", k):
            rest = m.group(3).replace("downsample.", "shortcut.")
            mapped[f"stages.{int(m.group(1)) - 1}.{m.group(2)}.{rest}"] = v
        else:
            mapped[k] = v  # reported as unexpected
    net = IdentityNet(**kwargs)
    _fit(net, mapped, path, _IRESNET)
    return net, kwargs


# ---- E_ut: the published DenseNet-121 -------------------------------------------------------------------------
_DENSENET = "a DenseNet state dict in torchvision's names with the published head"


def utility_from_densenet(state: dict[str, torch.Tensor], finding_names: tuple[str, ...] | None = None,
                          path="<state dict>"):
    """(UtilityNet, kwargs) computing what the published DenseNet E_ut of ``state`` computes on [0, 1] images."""
    from .utility import UtilityNet

    conv0 = _need(state, "features.conv0.weight", path, _DENSENET)
    blocks, n = [], 1
    while any(k.startswith(f"features.denseblock{n}.") for k in state):
        pattern = re.compile(rf"features\.denseblock{n}\.denselayer(\d+)\.")
        blocks.append(len({m.group(1) for k in state if (m := pattern.match(k))}))
        n += 1
    if not blocks:
        raise CheckpointError(f"{path}: not {_DENSENET}: no features.denseblock1")
    layer = "features.denseblock1.denselayer1."
    growth = int(_need(state, layer + "conv2.weight", path, _DENSENET).shape[0])
    bn_size = int(_need(state, layer + "conv1.weight", path, _DENSENET).shape[0]) // growth
    trunk = int(_need(state, "features.norm5.weight", path, _DENSENET).shape[0])
    head = {k: v for k, v in state.items() if not k.startswith("features.")}
    linears = [k[:-len(".weight")] for k, v in head.items() if k.endswith(".weight") and v.ndim == 2]
    first = [k for k in linears if head[k + ".weight"].shape[1] == trunk]
    if len(linears) != 2 or len(first) != 1:
        raise CheckpointError(f"{path}: not {_DENSENET}: expected two linear layers after the trunk ({trunk} → F → "
                              f"C), found {[(k, tuple(head[k + '.weight'].shape)) for k in linears]}")
    fc0, fc1 = first[0], next(k for k in linears if k != first[0])
    feature_dim, classes = int(head[fc0 + ".weight"].shape[0]), int(head[fc1 + ".weight"].shape[0])
    norms = {k.rsplit(".", 1)[0] for k, v in head.items() if k.endswith(".running_mean") and v.shape == (feature_dim,)}
    if len(norms) != 1:
        raise CheckpointError(f"{path}: not {_DENSENET}: expected one BatchNorm1d({feature_dim}) between the two "
                              f"linear layers, found {sorted(norms)}")
    names = tuple(finding_names) if finding_names else tuple(f"finding_{i}" for i in range(classes))
    if len(names) != classes:
        raise CheckpointError(f"{path}: the classifier has {classes} outputs but {len(names)} finding names were "
                              f"given ({list(names)}); name each output, in order")
    kwargs = dict(in_channels=3, resolution=256, num_findings=classes, finding_names=names, growth=growth,
                  blocks=tuple(blocks), init_features=int(conv0.shape[0]), bn_size=bn_size, stem="imagenet",
                  feature_dim=feature_dim, input_norm="imagenet")
    bn = norms.pop()
    mapped = {}
    for k, v in state.items():
        if k.startswith("features.conv0."):
            mapped["stem.0." + k[len("features.conv0."):]] = v
        elif k.startswith("features.norm0."):
            mapped["stem.1." + k[len("features.norm0."):]] = v
        elif k.startswith("features.norm5."):
            mapped["norm_out." + k[len("features.norm5."):]] = v
        elif m := re.match(r"features\.denseblock(\d+)\.denselayer(\d+)\.(norm1|conv1|norm2|conv2)\.(.*)$", k):
            part = {"norm1": 0, "conv1": 2, "norm2": 3, "conv2": 5}[m.group(3)]
            mapped[f"blocks.{int(m.group(1)) - 1}.{int(m.group(2)) - 1}.body.{part}.{m.group(4)}"] = v
        elif m := re.match(r"features\.transition(\d+)\.(norm|conv)\.(.*)$", k):
            mapped[f"transitions.{int(m.group(1)) - 1}.{0 if m.group(2) == 'norm' else 2}.{m.group(3)}"] = v
        elif k.startswith(fc0 + "."):
            mapped["fc0." + k[len(fc0) + 1:]] = v
        elif k.startswith(fc1 + "."):
            mapped["fc1." + k[len(fc1) + 1:]] = v
        elif k.startswith(bn + "."):
            mapped["bn_head." + k[len(bn) + 1:]] = v
        else:
            mapped[k] = v  # reported as unexpected
    net = UtilityNet(**kwargs)
    _fit(net, mapped, path, _DENSENET)
    return net, kwargs


# ---- into a checkpoint folder ---------------------------------------------------------------------------------
def import_weights(role: str, src, out, preset: str = "gmia-cxr256", fmt: str = "published",
                   finding_names: tuple[str, ...] | None = None) -> Path:
    """Write ``<out>/<role>.safetensors`` + card from the weights file ``src``; returns the card's path."""
    from ..checkpoints import read_card, save_module, sha256_file
    from ..fileio import atomic_write_json

    src = Path(src)
    source = {"file": src.name, "sha256": sha256_file(src) if src.is_file() else None, "format": fmt}
    if fmt == "xrv":
        if role not in ("utility", "mfm"):
            raise CheckpointError(f"torchxrayvision weights can serve as utility (DenseNet) or mfm (autoencoder), "
                                  f"not {role}")
        from .xrv import import_xrv

        card = import_xrv(role, src, out, preset=preset)
        meta = read_card(out, role)
        meta["meta"]["imported"] = {**source, "format": "torchxrayvision"}
        atomic_write_json(card, meta)
        return card
    if fmt != "published":
        raise CheckpointError(f"unknown weights format {fmt!r}; valid: published, xrv")
    state = read_state_dict(src)
    if role == "identity":
        net, kwargs = identity_from_insightface(state, src)
        source["format"] = "insightface IResNet state dict"
    elif role == "utility":
        net, kwargs = utility_from_densenet(state, finding_names, src)
        source["format"] = "DenseNet-121 state dict (torchvision names, published head)"
    else:
        raise CheckpointError(f"the published method's files hold identity or utility weights, not {role}; an MFM "
                              "comes from torchxrayvision (--format xrv) or is trained by `gmia fit`")
    meta = {"preset": preset, "role": role, "imported": source}
    return save_module(net, {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}, out, role,
                       meta=meta)
