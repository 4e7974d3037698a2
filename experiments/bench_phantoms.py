"""How long does the phantom benchmark take to make? Prints seconds for generating and for writing
N images of each domain (the bar: 1,000 images at 64x64 in under 60 s on a 2-core CPU, writing included).

    python experiments/bench_phantoms.py [--images 1000] [--size 64]
"""

import argparse
import tempfile
import time

from gmia.data import phantoms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--studies", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    patients = args.images // args.studies
    print(f"{'domain':8s} {'images':>7s} {'size':>5s} {'generate s':>11s} {'write s':>8s} {'total s':>8s} {'img/s':>7s}")
    for domain in phantoms.DOMAINS:
        t0 = time.perf_counter()
        ps = phantoms.generate(domain, patients, args.studies, args.size, seed=0)
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            phantoms.write(ps, tmp)
        t2 = time.perf_counter()
        print(f"{domain:8s} {len(ps):7d} {args.size:5d} {t1 - t0:11.1f} {t2 - t1:8.1f} {t2 - t0:8.1f} {len(ps) / (t2 - t0):7.0f}")


if __name__ == "__main__":
    main()
