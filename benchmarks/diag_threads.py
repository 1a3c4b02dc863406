"""Why one product on two threads scales less than two products on two threads.

A diagnostic for the thread target of issue 11 (VGG 512x4608 at batch >= 256: 1.8x from
one to two threads).  For one chain and batch it measures, in one process, interleaved:

1. one product on one thread;
2. two independent products at once, one per thread (what the hardware allows);
3. one product split over two threads by debutla (``config(threads=2)``);
4. the split's two halves called directly, the second half on debutla's pool worker and,
   alternately, on a freshly started thread: each thread's time relative to the
   calling thread's (1.0 = as fast).

What it found (``README_kernels.md``, change 8): the pool worker ran the kernel 1.2-1.5x
slower than the caller because of the C stack position its calls started from (the
kernel's register spills); the tile kernels now place their stack, and the worker runs
at 0.95-1.0x the caller's time.

Usage::

    python benchmarks/diag_threads.py [--chain vgg|butterfly] [--batch 1024] [--rounds 12]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import debutla as db  # noqa: E402
from debutla.backends import numba_ as nbk  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from _tile_kernel import tile_kernel  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chain", choices=("vgg", "butterfly"), default="vgg")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args(argv)
    chain = (db.Chain.parse(db.PAPER_CHAINS["vgg_512x4608_mono"]) if args.chain == "vgg"
             else db.Chain.butterfly(4096))
    m, n = chain.shape
    B = args.batch
    rng = np.random.default_rng(0)
    ops = [db.DeBut.random(chain, seed=i, dtype=np.float32) for i in range(2)]
    Xs = [rng.standard_normal((B, n)).astype(np.float32) for _ in range(2)]
    Ys = [np.empty((B, m), np.float32) for _ in range(2)]
    st, mod, kname = tile_kernel(ops[0], Xs[0], Ys[0])
    kern = getattr(mod, kname)
    with db.config(background=False, threads=1):
        ops[1].matmat_rows(Xs[1], out=Ys[1])
    W = st.W
    tiles = (B + W - 1) // W
    half = tiles // 2

    def product(i: int) -> None:
        with db.config(threads=1):
            ops[i].matmat_rows(Xs[i], out=Ys[i])

    def tiles_call(lo: int, hi: int, out: list) -> None:
        a, b = nbk._scratch(st.dtype, st.F * W, st.dkey)
        t = time.perf_counter()
        kern(st.flat, Xs[0].reshape(-1), Ys[0].reshape(-1), B, lo, hi, a, b, np.uint64(W), n)
        out.append(time.perf_counter() - t)

    pool = nbk._get_pool(1)
    res: dict = {k: [] for k in ("one", "two independent", "split", "pool worker / caller",
                                 "fresh thread / caller")}
    for _ in range(args.rounds):
        t = time.perf_counter()
        product(0)
        res["one"].append(time.perf_counter() - t)
        th = threading.Thread(target=product, args=(1,))
        t = time.perf_counter()
        th.start()
        product(0)
        th.join()
        res["two independent"].append(time.perf_counter() - t)
        with db.config(threads=2):
            t = time.perf_counter()
            ops[0].matmat_rows(Xs[0], out=Ys[0])
            res["split"].append(time.perf_counter() - t)
        o1: list = []
        o2: list = []
        f = pool.submit(tiles_call, half, tiles, o2)
        tiles_call(0, half, o1)
        f.result()
        res["pool worker / caller"].append(o2[0] / o1[0])
        o1, o2 = [], []
        th = threading.Thread(target=tiles_call, args=(half, tiles, o2))
        th.start()
        tiles_call(0, half, o1)
        th.join()
        res["fresh thread / caller"].append(o2[0] / o1[0])
    med = {k: float(np.median(v)) for k, v in res.items()}
    print(f"# diag_threads: {args.chain} {m}x{n}, batch {B}, tile {W} rows, float32, "
          f"{args.rounds} interleaved rounds; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
          f", load {os.getloadavg()[0]:.2f}")
    print(f"one product, one thread        {med['one'] * 1e3:7.2f} ms")
    print(f"two products, two threads      {med['two independent'] * 1e3:7.2f} ms  "
          f"(throughput x{2 * med['one'] / med['two independent']:.2f})")
    print(f"one product split, two threads {med['split'] * 1e3:7.2f} ms  "
          f"(x{med['one'] / med['split']:.2f})")
    print(f"second half on the pool worker: {med['pool worker / caller']:.2f} x the caller's "
          f"time; on a fresh thread: {med['fresh thread / caller']:.2f} x")


if __name__ == "__main__":
    main()
