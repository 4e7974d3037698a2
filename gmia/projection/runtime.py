"""What the training loop needs around the maths: the per-rank logic (one place, for torchrun), the
SIGINT flag, and the training images served by step.

* ``RankContext``: rank, world size and device, read from the torchrun environment; everything that differs
  between ranks or needs a collective (DistributedDataParallel for the gradients, stat means, "anyone
  interrupted?") goes through it. With one process every collective is a no-op.
* ``ImageSource``: the training images as a seeded stream. Global batch ``s`` is positions [s·B, (s+1)·B) of
  the concatenated epoch permutations ``randperm(N, seed, epoch)``; a rank takes its contiguous share. The order
  is a pure function of the step, so resuming needs no sampler state and sharding changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist

from gmia.errors import ConfigError, InputError
from gmia.machine import resolve_device

__all__ = ["ImageSource", "RankContext", "StopFlag"]


@dataclass
class RankContext:
    """This process's place in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_env(cls, device: str | torch.device | None = None) -> "RankContext":
        """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun); init the process group when world > 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device)
        if device.type == "cuda" and device.index is None:  # default or "--device cuda": this rank's GPU
            device = torch.device("cuda", local)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch(self, batch: int) -> int:
        if batch % self.world_size:
            raise ConfigError(f"batch {batch} does not divide over {self.world_size} processes; use a multiple")
        return batch // self.world_size

    def shard(self, global_indices: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch."""
        b = self.local_batch(len(global_indices))
        return global_indices[self.rank * b:(self.rank + 1) * b]

    def parallel(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` under torch's DistributedDataParallel when there are several processes (it averages the
        gradients of what runs through its forward during backward), else ``module`` itself. Buffers are not
        broadcast: G's noise constants are the same on every rank."""
        if self.world_size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return value
        value = value.clone()
        dist.all_reduce(value)
        return value / self.world_size

    def mean_float(self, value: float) -> float:
        if self.world_size == 1:
            return float(value)
        return float(self.mean(torch.tensor(float(value), device=self.device)))

    def any(self, flag: bool) -> bool:
        if self.world_size == 1:
            return bool(flag)
        t = torch.tensor(float(flag), device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


class StopFlag:
    """Context manager: the first SIGINT sets ``requested`` (the loop snapshots and stops after the current
    step); a second one raises KeyboardInterrupt at once. The previous handler is restored on exit."""

    def __init__(self, say: Callable[[str], None] = print):
        self.requested = False
        self._say, self._installed, self._previous = say, False, None

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._say("SIGINT: finishing this step, then writing a snapshot (Ctrl-C again aborts without one)")

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)


class ImageSource:
    """Training images by step (see the module doc). Images are cached in memory when they fit ``cfg.cache_mb``."""

    def __init__(self, dataset, cfg, ctx: RankContext):
        self.dataset, self.ctx, self.seed = dataset, ctx, int(cfg.seed)
        self.n = len(dataset)
        if self.n == 0:
            raise InputError(f"{dataset}: no training images")
        self.batch_size = int(cfg.batch)
        ctx.local_batch(self.batch_size)  # checks divisibility
        self.expected = (cfg.img_channels, cfg.resolution, cfg.resolution)
        first = self._read(0)
        self.cache = None
        if self.n * first.numel() * 4 <= cfg.cache_mb * 2**20:
            self.cache = torch.stack([first] + [self._read(i) for i in range(1, self.n)])
        keys = dataset.keys() if hasattr(dataset, "keys") else [str(i) for i in range(self.n)]
        self.fingerprint = f"{self.n}:" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
        self._perms: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.n

    def _read(self, i: int) -> torch.Tensor:
        x = self.dataset[i]["image"]
        if tuple(x.shape) != self.expected:
            raise InputError(f"{self.dataset}: image {i} is {tuple(x.shape)}, the config expects {self.expected} "
                             "(C, R, R); pick the preset that matches the data or preprocess it")
        return x.float()

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def global_indices(self, step: int) -> torch.Tensor:
        """Dataset indices of global batch ``step`` (B,)."""
        pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs = pos // self.n
        out = torch.empty_like(pos)
        for e in epochs.unique().tolist():
            sel = epochs == e
            out[sel] = self._perm(e)[pos[sel] % self.n]
        return out

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[idx]
        return torch.stack([self._read(int(i)) for i in idx])

    def batch(self, step: int) -> torch.Tensor:
        """This rank's images of global batch ``step``: (B / world_size, C, R, R) in [0, 1], on the device."""
        return self._gather(self.ctx.shard(self.global_indices(step))).to(self.ctx.device)

    def grid_images(self, k: int) -> torch.Tensor:
        """A fixed, seeded choice of ``k`` images (k, C, R, R) for the progress grids."""
        g = torch.Generator().manual_seed(self.seed + 7)
        idx = torch.randperm(self.n, generator=g)[:min(k, self.n)].sort().values
        return self._gather(idx).to(self.ctx.device)
