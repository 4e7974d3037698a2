"""What does the block schedule cost? The same records anonymized in blocks of 4 batches (the default,
``runner.schedule``) and as one block for the whole run (each batch refilled from anywhere), then in blocks again.

    python experiments/block_schedule.py --images 200 --threads 1

Prints each run's seconds and batch steps; writes OUT/block_schedule.json. The runs go one after the other, so
run it on a machine whose load does not change meanwhile (the third run shows the drift).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from gmia.anonymization import anonymize_config, anonymize_dataset, runner
from gmia.data.datasets import PhantomFolder
from gmia.machine import set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="phantom-cxr64")
    ap.add_argument("--data", default="data/phantom-cxr64")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="outputs/block-schedule")
    args = ap.parse_args()
    set_threads(args.threads)
    cfg = anonymize_config(args.preset)
    out, result = Path(args.out), {}
    default = runner.BLOCK_BATCHES
    for name, blocks in (("blocks", default), ("one-block", 10**9), ("blocks-again", default)):
        runner.BLOCK_BATCHES = blocks
        shutil.rmtree(out / name, ignore_errors=True)
        t0 = time.time()
        try:
            summary = anonymize_dataset(cfg, PhantomFolder(args.data, split="test"), out / name, limit=args.images,
                                        progress=False)
        finally:
            runner.BLOCK_BATCHES = default
        result[name] = {"seconds": round(time.time() - t0, 1), "released": summary["this_call"]["released"],
                        "batch_steps": summary["this_call"]["batch_steps"]}
        print(name, result[name], flush=True)
    (out / "block_schedule.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
