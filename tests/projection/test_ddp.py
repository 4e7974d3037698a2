"""Stage-1 training steps under torch's DistributedDataParallel: two gloo processes on the CPU.

One full co-training step (Gmain, path length, Dmain, R1: step 0 runs every phase) on two processes:
* fed the same images and noise, each process must end exactly where a single process ends (the average of two
  equal gradients is that gradient, so a wrong reduction or a missing phase shows);
* fed different halves, both processes must end with the same weights (the gradients were averaged) that
  differ from what either half alone gives.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from gmia.projection.config import aegan_config
from gmia.projection.losses import ReconstructionLoss
from gmia.projection.runtime import RankContext
from gmia.projection.training import build_networks, training_step


def _batch(offset: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + offset)
    return torch.rand(4, 1, 16, 16, generator=g)


def _step(x: torch.Tensor, ctx: RankContext, noise_seed: int) -> dict[str, torch.Tensor]:
    cfg = aegan_config("tiny")
    nets, _ = build_networks(cfg, torch.device("cpu"))
    nets.gen.manual_seed(noise_seed)
    training_step(nets, x, 0, cfg, ReconstructionLoss(1.0, 0.0, None, 1.0), ctx)
    return {**{f"G.{k}": v.clone() for k, v in nets.G.state_dict().items()},
            **{f"D.{k}": v.clone() for k, v in nets.D.state_dict().items()}}


def _worker(rank: int, port: int, same: bool, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = RankContext.from_env("cpu")
    try:
        state = _step(_batch(0 if same else rank), ctx, noise_seed=7 if same else rank)
        torch.save(state, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, same: bool) -> tuple[dict, dict]:
    mp.spawn(_worker, args=(_free_port(), same, str(tmp_path)), nprocs=2, join=True)
    return torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.slow
def test_two_processes_fed_the_same_batch_step_like_one(tmp_path):
    r0, r1 = _run(tmp_path, same=True)
    alone = _step(_batch(0), RankContext(), noise_seed=7)
    assert _max_diff(r0, r1) == 0.0
    assert _max_diff(r0, alone) < 1e-5


@pytest.mark.slow
def test_two_processes_fed_different_halves_average_their_gradients(tmp_path):
    r0, r1 = _run(tmp_path, same=False)
    half0 = _step(_batch(0), RankContext(), noise_seed=0)
    assert _max_diff(r0, r1) < 1e-6            # one model: the gradients were averaged
    assert _max_diff(r0, half0) > 1e-4         # ... over both halves, not rank 0's alone
