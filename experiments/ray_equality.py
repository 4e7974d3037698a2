"""Does a Ray run release what one process releases? 200 phantom images, shipped weights, 2 actors.

    python experiments/ray_equality.py --images 200 --speed quality --precision fp32 --out outputs/ray-equality-quality

Anonymizes the first ``--images`` test images twice into two folders that share one key (so the pseudonyms
match): once in this process, once through ``gmia anonymize --ray --ray-actors 2`` (a local Ray instance). Prints
whether the released names are the same, the largest grey-level difference between same-named images, the
labels table's equality and both runs' seconds; writes OUT/ray_equality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gmia.anonymization import anonymize_config, anonymize_dataset
from gmia.data.datasets import PhantomFolder
from gmia.machine import set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="phantom-cxr64")
    ap.add_argument("--data", default="data/phantom-cxr64")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--speed", default="quality", help="Speed profile of both runs (quality: the preset as is).")
    ap.add_argument("--precision", default="fp32", help="Precision of both runs.")
    ap.add_argument("--out", default="outputs/ray-equality")
    args = ap.parse_args()
    set_threads(1)
    out = Path(args.out)
    one, ray = out / "one", out / "ray"
    cfg = anonymize_config(args.preset, speed=args.speed, precision=args.precision)
    t0 = time.time()
    anonymize_dataset(cfg, PhantomFolder(args.data, split="test"), one, limit=args.images, progress=False,
                      resume=one.exists())
    t_one = time.time() - t0
    if not ray.exists():  # the same key: the same pseudonyms
        (ray / "private").mkdir(parents=True)
        (ray / "private").chmod(0o700)
        (ray / "private" / "resume.key").write_text((one / "private" / "resume.key").read_text())
    cmd = [sys.executable, "-m", "gmia", "anonymize", "--preset", args.preset, "--input", args.data, "--split", "test",
           "--limit", str(args.images), "--speed", args.speed, "--precision", args.precision, "--out", str(ray), "--ray", "--ray-actors", "2",
           "--threads", "1", "--quiet", "--resume"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    t_ray = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"the Ray run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    a, b = sorted((one / "images").glob("*.png")), sorted((ray / "images").glob("*.png"))
    same_names = [p.name for p in a] == [p.name for p in b]
    diffs = [int(np.abs(np.asarray(Image.open(x), dtype=int) - np.asarray(Image.open(y), dtype=int)).max())
             for x, y in zip(a, b)] if same_names else []
    result = {"images": args.images, "speed": args.speed, "precision": args.precision, "released_one_process": len(a), "released_ray": len(b),
              "same_names": same_names, "max_grey_level_difference": max(diffs) if diffs else None,
              "images_differing": int(sum(d > 0 for d in diffs)),
              "labels_equal": (one / "labels.csv").read_text() == (ray / "labels.csv").read_text(),
              "seconds_one_process": round(t_one, 1), "seconds_ray_2_actors": round(t_ray, 1)}
    print(json.dumps(result, indent=1))
    (out / "ray_equality.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
