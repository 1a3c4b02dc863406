"""Chunks per thread on the spinning pool: an in-process A/B of split products.

For the VGG chain and the 4096 butterfly at batch 256 (float32), times
``op.matmat_rows`` on one thread and on two threads with 4 and with 2 chunks of tiles per
thread (``numba_._SPIN_CHUNKS_PER_THREAD``), interleaved over rounds (min of a 0.1 s loop
per timing), and prints each variant's median and its speed-up over one thread as the
median of the paired ratios.  Fewer chunks mean fewer claims (each takes the GIL);
more chunks balance better when a worker starts late.

Usage::

    python benchmarks/diag_chunks.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import debutla as db  # noqa: E402
from debutla.backends import numba_ as nbk  # noqa: E402


def tmin(fn, budget: float) -> float:
    best, end = float("inf"), time.perf_counter() + budget
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()}")
    saved = nbk._SPIN_CHUNKS_PER_THREAD
    for name, text in (("vgg", db.PAPER_CHAINS["vgg_512x4608_mono"]),
                       ("butterfly", str(db.Chain.butterfly(4096)))):
        op = db.DeBut.random(text, seed=0, dtype=np.float32, backend="numba")
        X = np.random.default_rng(0).standard_normal((256, op.shape[1])).astype(np.float32)
        Y = np.empty((256, op.shape[0]), np.float32)
        with db.config(background=False):
            op.matmat_rows(X, out=Y)
        variants = [(1, 4), (2, 4), (2, 2)]  # (threads, chunks per thread)
        res: dict = {v: [] for v in variants}
        for rnd in range(args.rounds):
            for v in (variants if rnd % 2 == 0 else variants[::-1]):
                nbk._SPIN_CHUNKS_PER_THREAD = v[1]
                with db.config(threads=v[0]):
                    res[v].append(tmin(lambda: op.matmat_rows(X, out=Y), 0.1))
        nbk._SPIN_CHUNKS_PER_THREAD = saved
        base = res[(1, 4)]
        print(name, "  ".join(
            f"{v[0]} thread(s), {v[1]} chunks: {statistics.median(res[v]) * 1e6:.0f} us "
            f"(x{statistics.median(a / b for a, b in zip(base, res[v])):.2f})"
            for v in variants))
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
