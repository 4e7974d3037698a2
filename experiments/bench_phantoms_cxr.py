"""Seconds to render chest phantoms in memory (no PNG writing), wall clock and CPU time.

    python experiments/bench_phantoms_cxr.py                         # 250 patients x 4 studies at 64 px
    python experiments/bench_phantoms_cxr.py --patients 16 --size 256 --repeats 1

The renderer keeps every torch op under the CPU's parallel grain, so it runs on one core; CPU time close to wall
time means it did. On a busy shared machine, report the CPU time (wall time counts the waiting).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gmia.data.phantoms import cxr  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=250)
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for _ in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        ps = cxr.generate(args.patients, args.studies, args.size, args.seed)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{len(ps)} images at {args.size} px: {wall:.2f} s wall, {cpu:.2f} s CPU "
              f"({1000 * wall / len(ps):.2f} ms/image)")


if __name__ == "__main__":
    main()
