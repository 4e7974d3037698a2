"""Stage 2 on a Ray cluster: the dataset runner's records streamed through Ray Data to a pool of actors.

    anonymize_dataset(cfg, dataset, out, ray_address="auto", ray_actors=8)      # gmia anonymize --ray auto

The driver (the process that runs ``gmia anonymize --ray``) owns the output folder exactly as a single-process
run does: the key and the pseudonyms, the journal, the public tables. Each actor holds one copy of the networks
(``load_engine``) and runs the same loop (``runner._Run``) on the batches of records it is given: reads them,
anonymizes them, writes each file to its own staging folder, gates it and moves it into ``images/`` (an atomic
rename). It sends the rows back instead of writing the journal; the driver journals them as they arrive.

So the guarantees of a single process hold: a record is done once its journal line is written, which happens
after its image is in place; a killed actor's batch is retried by Ray; a killed driver is resumed with
``--resume`` and redoes only the records without a line (same name: everything a record needs derives from its
key; the done records of a partly done block are replayed, not written). A task is one block of the run's
schedule (``runner.schedule``), so each record is optimized beside the same records as in one process, and the
released pixels are the same (same batch size, device kind and threads per process).

Ray is an extra: ``pip install 'gmia[ray]'``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import ConfigError

__all__ = ["run_on_ray", "RayWorker"]


class _ActorFolder:
    """What the runner's loop needs of the output folder, in an actor: the paths, and rows kept for the driver."""

    def __init__(self, root: Path, staging: Path):
        self.root, self.images, self.staging = root, root / "images", staging
        self.staging.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []

    def image_path(self, pseudonym: str, suffix: str = ".png") -> Path:
        return self.images / f"{pseudonym}{suffix}"

    def staging_path(self, pseudonym: str, suffix: str = ".png") -> Path:
        return self.staging / f"{pseudonym}{suffix}"

    def record(self, row: dict, source_key: str | None = None, error: str | None = None) -> None:
        self.rows.append({"row": row, "key": source_key, "error": error})


class RayWorker:
    """One actor of the pool: the networks, loaded once, and the loop on each batch of records."""

    def __init__(self, cfg, dataset, out: str, checkpoints: str, device: str | None, dicom, threads: int | None,
                 allow_out_of_domain: bool = False):
        import torch

        from ..machine import resolve_device, set_threads
        from .runner import load_engine

        set_threads(threads)
        if device is None and torch.cuda.is_available():  # Ray hands the actor its GPU (CUDA_VISIBLE_DEVICES)
            device = "cuda"
        self.cfg, self.dataset, self.dicom, self.allow_out_of_domain = cfg, dataset, dicom, allow_out_of_domain
        self.device = resolve_device(device)
        self.engine = load_engine(cfg, checkpoints, self.device)
        self.root = Path(out)
        self.staging = self.root / "private" / f"staging-ray-{os.getpid()}"

    def __call__(self, batch: dict) -> dict:
        from .runner import _Run

        folder = _ActorFolder(self.root, self.staging)
        blocks = [[tuple(r) for r in json.loads(text)] for text in batch["records"]]  # one block per task
        _Run(self.cfg, self.engine, self.dataset, folder, blocks, self.device, False, self.dicom,
             self.allow_out_of_domain).run()
        # rows as JSON text: their fields differ (a released row names its image, an error row its reason)
        return {"row": [json.dumps(r["row"]) for r in folder.rows], "key": [r["key"] for r in folder.rows],
                "error": [r["error"] or "" for r in folder.rows]}


def run_on_ray(cfg, dataset, folder, blocks: list[list[tuple[int, str, str]]], *, address: str | None,
               actors: int, checkpoints, device, dicom, threads: int | None, progress: bool,
               allow_out_of_domain: bool = False) -> tuple[dict[str, int], int]:
    """Anonymize ``blocks`` of records (index, key, pseudonym; ``runner.schedule``) on a Ray cluster
    (``address``; "local" starts one here) with ``actors`` copies of the networks, one block per task; journal
    each row in ``folder`` as it comes back. Returns the counts by status and the number of inputs the domain
    guard flagged."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray Data: pip install 'gmia[ray]' (or pip install 'ray[data]')") from None
    from tqdm import tqdm

    from .runner import fresh

    local = address in (None, "local")
    threads = threads or (max(1, (os.cpu_count() or 1) // max(actors, 1)) if local else 1)  # per actor
    started = not ray.is_initialized()
    if started and local:
        # Ray runs its workers at nice 15; here they are the run itself, and on a shared CPU a niced actor waits
        # minutes for a core (importing torch alone: 46 s instead of 2 s next to a busy process)
        os.environ.setdefault("RAY_worker_niceness", "0")
    if started:
        kw = {"num_cpus": max(actors, 1) * threads, "include_dashboard": False} if local else {"address": address}
        ray.init(log_to_driver=False, configure_logging=False, **kw)
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts released images
    counts, out_of_domain = {"released": 0, "withheld": 0, "error": 0}, 0
    try:
        gpus = 1 if (device or "").startswith("cuda") or (device is None and ray.cluster_resources().get("GPU")) else 0
        # a task is one block of the schedule: each record meets the batch-mates it meets in one process
        items = [{"records": json.dumps(block)} for block in blocks]
        if not items:
            return counts, out_of_domain
        results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            RayWorker, batch_size=1, concurrency=actors, num_cpus=threads, num_gpus=gpus,
            fn_constructor_kwargs=dict(cfg=cfg, dataset=dataset, out=str(folder.root), checkpoints=str(checkpoints),
                                       device=device, dicom=dicom, threads=threads,
                                       allow_out_of_domain=allow_out_of_domain),
            max_restarts=-1, max_task_retries=-1)  # a killed actor comes back, its batch reruns
        bar = tqdm(total=fresh(blocks), unit="img", desc="anonymize (ray)", disable=not progress,
                   dynamic_ncols=True)
        for batch in results.iter_rows():
            row = json.loads(batch["row"])
            if row["pseudonym"] in folder.done:  # a retried batch sends a record again: journal it once
                continue
            folder.record(row, batch["key"], batch["error"] or None)
            counts[row["status"]] += 1
            out_of_domain += row.get("reason") == "out_of_domain" or "out_of_domain_allowed" in row
            bar.update(1)
        bar.close()
    finally:
        if started:
            ray.shutdown()
        for staging in folder.private.glob("staging-ray-*"):
            shutil.rmtree(staging, ignore_errors=True)  # only files a killed actor never gated
    return counts, out_of_domain
