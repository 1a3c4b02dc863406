"""What the alignment of the kernels' scratch buffers costs or buys (issue 11, change 8).

For each chain, dtype and batch it times the chain's tile kernel, one thread, called
directly on four pairs of scratch buffers, interleaved in every round:

* ``numpy``: ``np.zeros`` buffers as NumPy allocates them (arrays this large start 16
  bytes into a page, so half the 32-byte vector loads and stores straddle a cache line);
* ``aligned``: both buffers start a page (64-byte aligned, as ``numba_.aligned_empty``);
* ``aligned +2K``: the second buffer starts half a page in (4 KiB aliasing between the
  two buffers changed);
* ``aligned +64``: both 64 bytes into a page, the second also 1 KiB further.

It reports the median over rounds of each variant's best time of a short loop.

Usage::

    python benchmarks/diag_align.py [--chains vgg butterfly radix4] [--batches 16 256]
"""

from __future__ import annotations

import argparse
import os
import sys
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
from _tile_kernel import CHAINS, tile_kernel  # noqa: E402

def at_page_offset(size: int, dtype, offset: int) -> np.ndarray:
    """``size`` zeros whose data start ``offset`` bytes into a page."""
    it = np.dtype(dtype).itemsize
    raw = np.zeros(size + 4096 // it, dtype)
    start = ((offset - raw.ctypes.data) % 4096) // it
    return raw[start:start + size]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", nargs="*", default=["vgg", "butterfly", "radix4"],
                    choices=list(CHAINS))
    ap.add_argument("--dtypes", nargs="*", default=["float32", "float64"],
                    choices=["float32", "float64"])
    ap.add_argument("--batches", nargs="*", type=int, default=[16, 256])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    print(f"# diag_align: tile kernel, one thread; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"load {os.getloadavg()[0]:.2f}")
    print("| chain | dtype | batch | numpy | aligned | aligned +2K | aligned +64 | "
          "numpy / aligned |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for cname in args.chains:
        for dtn in args.dtypes:
            dt = np.dtype(dtn)
            op = db.DeBut.random(CHAINS[cname], seed=0, dtype=dt)
            m, n = op.shape
            for B in args.batches:
                X = np.random.default_rng(0).standard_normal((B, n)).astype(dt)
                Y = np.empty((B, m), dt)
                st, mod, kname = tile_kernel(op, X, Y)
                if kname not in ("rows_tiles", "rows_narrow"):
                    continue
                W = nbk.NARROW_W if kname == "rows_narrow" else st.W
                size = st.F * W
                variants = {
                    "numpy": (np.zeros(size, dt), np.zeros(size, dt)),
                    "aligned": (at_page_offset(size, dt, 0), at_page_offset(size, dt, 0)),
                    "aligned +2K": (at_page_offset(size, dt, 0),
                                    at_page_offset(size, dt, 2048)),
                    "aligned +64": (at_page_offset(size, dt, 64),
                                    at_page_offset(size, dt, 64 + 1024)),
                }
                tiles = (B + W - 1) // W
                res: dict = {k: [] for k in variants}
                for _ in range(args.rounds):
                    for k, (a, b) in variants.items():
                        best = float("inf")
                        for _ in range(max(3, 2000 // B)):
                            t = time.perf_counter()
                            mod.rows_tiles(st.flat, X.reshape(-1), Y.reshape(-1), B, 0, tiles,
                                           a, b, np.uint64(W), n)
                            best = min(best, time.perf_counter() - t)
                        res[k].append(best * 1e6)
                med = {k: float(np.median(v)) for k, v in res.items()}
                print(f"| {cname} | {dtn} | {B} | " + " | ".join(
                    f"{v:.1f} us" for v in med.values())
                    + f" | {med['numpy'] / med['aligned']:.2f} |", flush=True)
    print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
