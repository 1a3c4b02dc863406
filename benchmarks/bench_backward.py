"""The CPU backward of the torch layers: generated vs generic kernel, against the forward.

For each chain and dtype (batch 256 by default) it times, interleaved in every round
(:func:`debutla._timing.compare`), on NumPy arrays and without torch around them:

* ``forward``: the product ``op.matmat_rows(X, out=Y)`` (the layer's forward kernel);
* ``generic``: ``debutla.torch._kernels.fused_backward`` on its run-time-sized kernel
  (input and value gradients);
* ``generated``: the same call on the chain's generated backward
  (``debutla/backends/_numba_backward.py``), compiled first (or loaded from the cache).

It prints a Markdown table: median milliseconds per call with the interquartile range,
the speed-up of the generated kernel over the generic one and its time over the
forward's; the load average before and after, and a "busy" flag where the rounds'
spread exceeds ``debutla._timing.BUSY_SPREAD``.  The generated kernel's compile time is
printed when it was compiled in this run (an empty kernel cache:
``DEBUTLA_CACHE_DIR=$(mktemp -d)``).

Usage::

    python benchmarks/bench_backward.py [--chains vgg butterfly] [--dtypes float32]
        [--batch 256] [--threads 1] [--repeats 9]
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
from debutla._timing import compare  # noqa: E402
from debutla.backends import get_backend  # noqa: E402
from debutla.backends import numba_ as nbk  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from _tile_kernel import CHAINS  # noqa: E402


def bench(name: str, dtype: str, batch: int, threads: int, repeats: int) -> dict:
    """Time the three calls for one chain and dtype; returns one table row."""
    from debutla.torch._kernels import fused_backward

    chain = db.Chain.parse(CHAINS[name])
    m, n = chain.shape
    dt = np.dtype(dtype)
    rng = np.random.default_rng(0)
    shapes = [f.value_shape for f in chain]
    vals = [rng.standard_normal(s).astype(dt) for s in shapes]
    X = rng.standard_normal((batch, n)).astype(dt)
    G = rng.standard_normal((batch, m)).astype(dt)
    Y = np.empty((batch, m), dt)
    op = db.DeBut(chain, vals, backend="numba")
    state = op._state(get_backend("numba"), dt)
    t0 = time.perf_counter()
    with db.config(background=False):
        op.matmat_rows(X, out=Y)
        fused_backward(X, G, vals, shapes, n, m, True, state=state)
    setup = time.perf_counter() - t0
    if nbk.BACKWARD not in state.ready:
        raise RuntimeError(f"{name}: the generated backward did not run "
                           f"({state.nnz} values, threshold {nbk.BACKWARD_MIN_NNZ})")
    with db.config(threads=threads, background=False):
        res = compare({
            "forward": lambda: op.matmat_rows(X, out=Y),
            "generic": lambda: fused_backward(X, G, vals, shapes, n, m, True, threads),
            "generated": lambda: fused_backward(X, G, vals, shapes, n, m, True, threads,
                                                state=state),
        }, repeats=repeats, min_time=0.05)
    return {"name": name, "dtype": dtype, "setup": setup, "res": res}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chains", nargs="+", default=["vgg", "butterfly", "radix4"],
                   choices=sorted(CHAINS))
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args(argv)
    print(f"# bench_backward: batch {args.batch}, {args.threads} thread(s), "
          f"{args.repeats} rounds; load average at start {os.getloadavg()}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| chain | dtype | forward ms | generic backward ms | generated backward ms "
          "| generic / generated | generated / forward | setup s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.chains:
        for dtype in args.dtypes:
            row = bench(name, dtype, args.batch, args.threads, args.repeats)
            r = row["res"]

            def cell(t) -> str:
                busy = " busy" if t.busy else ""
                return f"{t.median * 1e3:.2f} ({t.q1 * 1e3:.2f}-{t.q3 * 1e3:.2f}){busy}"

            print(f"| {name} | {dtype} | {cell(r['forward'])} | {cell(r['generic'])} | "
                  f"{cell(r['generated'])} | "
                  f"{r['generic'].median / r['generated'].median:.2f}x | "
                  f"{r['generated'].median / r['forward'].median:.2f}x | "
                  f"{row['setup']:.1f} |", flush=True)
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
