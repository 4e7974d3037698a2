"""Training-state snapshots of stage 1, as safetensors (never a pickle).

``training-state-<kimg>.safetensors`` holds every tensor needed to continue bit for bit: ``G/``, ``G_ema/``,
``D/`` state dicts, ``opt_G/`` and ``opt_D/`` Adam states (``<prefix>/<param index>/<name>``), the training
generator's state ``rng/train``, the CPU default generator ``rng/torch_cpu`` and ``pl_mean``. Its metadata
("state", JSON) holds the counters, the optimizers' param groups, the config and the data fingerprint.
Files are written to a temporary name and renamed, so a kill never leaves half a snapshot.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gmia.checkpoints import load_module
from gmia.errors import CheckpointError, ConfigError

from ..fileio import atomic_path
from .config import ARCHITECTURE_FIELDS, AeganConfig, config_dict

__all__ = ["SNAPSHOT_FORMAT", "find_snapshot", "init_weights", "load_snapshot", "save_snapshot"]

SNAPSHOT_FORMAT = "gmia-aegan-state/1"
_PATTERN = "training-state-*.safetensors"


def _module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


def _optimizer_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {}
    for pid, entry in sd["state"].items():
        for name, value in entry.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{prefix}/{pid}/{name}"] = value.detach().cpu().clone().contiguous()
    return tensors, sd["param_groups"]


def find_snapshot(run_dir: str | Path) -> Path | None:
    """The newest training-state snapshot in ``run_dir`` (names sort by progress), or None."""
    found = sorted(Path(run_dir).glob(_PATTERN)) if Path(run_dir).is_dir() else []
    return found[-1] if found else None


def save_snapshot(run_dir: Path, nets, cfg: AeganConfig, state: dict, fingerprint: str, keep: int = 2) -> Path:
    """Write the snapshot for ``state["nimg"]``; delete all but the newest ``keep``."""
    tensors = {}
    for prefix, module in (("G", nets.G), ("G_ema", nets.G_ema), ("D", nets.D)):
        tensors.update(_module_tensors(prefix, module))
    groups = {}
    for prefix, opt in (("opt_G", nets.opt_G), ("opt_D", nets.opt_D)):
        t, groups[prefix] = _optimizer_tensors(prefix, opt)
        tensors.update(t)
    tensors["rng/train"] = nets.gen.get_state().clone()
    tensors["rng/torch_cpu"] = torch.get_rng_state().clone()
    tensors["pl_mean"] = nets.pl_mean.detach().cpu().clone().reshape(1)
    meta = {"format": SNAPSHOT_FORMAT, "state": state, "param_groups": groups, "config": config_dict(cfg),
            "fingerprint": fingerprint}
    path = Path(run_dir) / f"training-state-{state['nimg'] / 1000:010.3f}.safetensors"
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": SNAPSHOT_FORMAT, "state": json.dumps(meta)})
    for old in sorted(Path(run_dir).glob(_PATTERN))[:-max(keep, 1)]:
        old.unlink(missing_ok=True)
    return path


def _load_module(module: torch.nn.Module, prefix: str, tensors: dict, path: Path) -> None:
    sd = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: {prefix} does not fit the configured network: {str(exc)[:300]}") from None


def _load_optimizer(opt: torch.optim.Optimizer, prefix: str, tensors: dict, groups: list, device) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "/"):
            pid, name = key[len(prefix) + 1:].split("/", 1)
            # Adam keeps ``step`` on the CPU (unless capturable/fused), the moments with their parameter
            state.setdefault(int(pid), {})[name] = value if name == "step" else value.to(device)
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def _read_snapshot(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a training-state snapshot, checked for readability and format."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types (and a foreign file has no "state")
        raise CheckpointError(f"{path}: unreadable snapshot ({exc}); delete it to resume from an older one") from None
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise CheckpointError(f"{path}: not a {SNAPSHOT_FORMAT} snapshot")
    return meta, tensors


def load_snapshot(path: Path, nets, cfg: AeganConfig, fingerprint: str) -> dict:
    """Restore ``nets`` from ``path`` in place and return the loop counters. Refuses a snapshot made with
    other networks, batch, seed or data (the resumed run would not be the same run)."""
    meta, tensors = _read_snapshot(path)
    saved, now = meta["config"], config_dict(cfg)
    diff = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in ARCHITECTURE_FIELDS if saved.get(k) != now[k]]
    if diff:
        raise ConfigError(f"{path}: cannot resume with a different setup ({'; '.join(diff)}); use the original "
                          "options or a new --out")
    if meta["fingerprint"] != fingerprint:
        raise ConfigError(f"{path}: the snapshot was trained on other data ({meta['fingerprint']} vs {fingerprint}); "
                          "resume with the same --data and split")
    device = nets.pl_mean.device
    for prefix, module in (("G", nets.G), ("G_ema", nets.G_ema), ("D", nets.D)):
        _load_module(module, prefix, tensors, path)
    _load_optimizer(nets.opt_G, "opt_G", tensors, meta["param_groups"]["opt_G"], device)
    _load_optimizer(nets.opt_D, "opt_D", tensors, meta["param_groups"]["opt_D"], device)
    nets.gen.set_state(tensors["rng/train"])
    torch.set_rng_state(tensors["rng/torch_cpu"])
    nets.pl_mean.copy_(tensors["pl_mean"].reshape([]).to(device))
    return dict(meta["state"])


def _grow(old: torch.Tensor, fresh: torch.Tensor, key: str, what: str) -> torch.Tensor:
    """A narrower encoder's tensor ``old`` placed in the wider one's ``fresh`` so that the wider E computes what the
    narrower one did: new output channels keep their fresh (random) weights, new input channels get zero weights
    (nothing reads the new channels until training grows those weights), new biases start at 0. Channel-major
    flattening keeps the old channels a prefix of the 4x4 head's fc input, so one rule covers conv and fc."""
    if old.ndim != fresh.ndim or old.shape[2:] != fresh.shape[2:] or any(o > f for o, f in zip(old.shape, fresh.shape)):
        raise CheckpointError(f"{what}: cannot grow {key} {tuple(old.shape)} into {tuple(fresh.shape)}; "
                              "--grow-encoder needs an encoder at least as wide as the source's in every layer")
    out = fresh.clone()
    old = old.to(fresh.dtype)
    if old.ndim == 1:
        out.zero_()
        out[:len(old)] = old
        return out
    out[:, old.shape[1]:] = 0
    # equalized learning rate: the runtime gain is 1/sqrt(fan_in), so a wider input scales the stored weights up
    out[:old.shape[0], :old.shape[1]] = old * (fresh.shape[1] / old.shape[1]) ** 0.5
    return out


def _fit_weights(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, fresh_encoder: bool = False,
                 grow_encoder: bool = False) -> list[str]:
    """Load ``sd`` into ``module`` (cast to its dtype); returns the module's keys left at their fresh values. Only a
    W+ encoder's ``ws_head`` may be missing (it starts at zero: the W+ model starts as the W model); with
    ``fresh_encoder`` the source's encoder is not read at all (E of another width, trained from scratch); with
    ``grow_encoder`` a narrower source E is grown into the module's wider one (see ``_grow``)."""
    own = module.state_dict()
    if fresh_encoder:
        sd = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
    if grow_encoder:
        sd = {k: _grow(v, own[k], k, what) if k.startswith("encoder.") and k in own and v.shape != own[k].shape
              else v for k, v in sd.items()}
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if k in own and v.shape != own[k].shape]
    extra = [k for k in sd if k not in own]
    missing = [k for k in own if k not in sd]
    allowed = ("encoder.",) if fresh_encoder else ("encoder.ws_head.",)  # what may stay at its fresh value
    if wrong or extra or any(not k.startswith(allowed) for k in missing):
        hint = ("; an encoder of another width starts fresh with --fresh-encoder, or grows from a narrower one "
                "with --grow-encoder" if any(k.startswith("encoder.") for k in wrong) and not fresh_encoder else "")
        raise CheckpointError(f"{what} does not fit the configured network (wrong shape: {wrong[:3]}, unexpected: "
                              f"{extra[:3]}, missing: {missing[:3]}); start from weights of the same preset{hint}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=False)
    return missing


def init_weights(source: str | Path, nets, fresh_encoder: bool = False, grow_encoder: bool = False) -> str:
    """Start ``nets`` from other weights (fine-tuning): ``source`` is a training-state snapshot (G, G_ema and D)
    or an exported checkpoint folder (``aegan`` for G and G_ema, ``discriminator`` when exported, else D stays
    fresh); ``fresh_encoder`` keeps E at its fresh weights, ``grow_encoder`` grows a narrower source E into the
    configured wider one. Optimizers, counters and RNG start fresh. Returns a one-line description for the log."""
    source = Path(source)
    if source.is_file():
        _, tensors = _read_snapshot(source)
        parts = {prefix: {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}
                 for prefix in ("G", "G_ema", "D")}
    elif (source / "aegan.safetensors").is_file():
        weights = load_module(source, "aegan").state_dict()  # checks the card and the sha256
        disc = (source / "discriminator.safetensors").is_file()
        parts = {"G": weights, "G_ema": weights, "D": load_module(source, "discriminator").state_dict() if disc else {}}
    else:
        raise CheckpointError(f"{source}: give a training-state-*.safetensors file or a checkpoint folder holding "
                              "aegan.safetensors")
    for prefix, module in (("G", nets.G), ("G_ema", nets.G_ema), ("D", nets.D)):
        if parts[prefix]:
            _fit_weights(module, parts[prefix], f"{source} ({prefix})", fresh_encoder, grow_encoder)
    nets_from = "G" if fresh_encoder else "E and G"
    return (f"{nets_from}{' and D' if parts['D'] else ''} from {source}" + ("" if parts["D"] else " (D fresh)")
            + (" (E fresh)" if fresh_encoder else "") + (" (E grown)" if grow_encoder else ""))
