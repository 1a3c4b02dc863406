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

``--ab-rev REV`` instead compares the generated backward of the git revision ``REV``'s
generator (``debutla/backends/_numba_backward.py`` as it was there, with the working
tree's panel emitters of ``_numba_codegen.py``, which it imports: not a fair old
version after a change there; use ``--ab`` with a ``_numba_codegen`` switch; compiled in this
process) with the working tree's, interleaved in one process, on the same state,
inputs and scratch; it prints both medians, their ratio and the largest difference of
the value gradients (relative) and of the input gradients.  ``--ab NAME=VALUE ...`` is
the same comparison with the working tree's generator run with those module constants
(e.g. ``_STEP=False``, ``_STEP_MAX=32``) as the other variant.

Usage::

    python benchmarks/bench_backward.py [--chains vgg butterfly] [--dtypes float32]
        [--batch 256] [--threads 1] [--repeats 9]
    python benchmarks/bench_backward.py --ab-rev HEAD~1 --chains vgg butterfly
    python benchmarks/bench_backward.py --ab _STEP_MAX=32 --chains butterfly
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


def _problem(name: str, dtype: str, batch: int):
    """``(op, state, values, value shapes, X, G)``: a chain's operator with random
    values, its Numba state, and random ``X`` (input) and ``G`` (output gradient)."""
    chain = db.Chain.parse(CHAINS[name])
    m, n = chain.shape
    dt = np.dtype(dtype)
    rng = np.random.default_rng(0)
    shapes = [f.value_shape for f in chain]
    vals = [rng.standard_normal(s).astype(dt) for s in shapes]
    X = rng.standard_normal((batch, n)).astype(dt)
    G = rng.standard_normal((batch, m)).astype(dt)
    op = db.DeBut(chain, vals, backend="numba")
    return op, op._state(get_backend("numba"), dt), vals, shapes, X, G


def bench(name: str, dtype: str, batch: int, threads: int, repeats: int) -> dict:
    """Time the three calls for one chain and dtype; returns one table row."""
    from debutla.torch._kernels import fused_backward

    op, state, vals, shapes, X, G = _problem(name, dtype, batch)
    m, n = op.shape
    Y = np.empty((batch, m), X.dtype)
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


def _generator_of(rev: str):
    """The backward generator module as it was in git revision ``rev``."""
    import importlib.util
    import subprocess

    src = subprocess.check_output(
        ["git", "show", f"{rev}:debutla/backends/_numba_backward.py"], cwd=ROOT).decode()
    spec = importlib.util.spec_from_loader("debutla.backends._numba_backward_ab",
                                           loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "debutla.backends"
    exec(compile(src, f"{rev}:_numba_backward.py", "exec"), mod.__dict__)
    return mod


def _source_with(overrides: dict, shapes: tuple, W: int) -> str:
    """The working tree's backward source with generator constants overridden."""
    from debutla.backends import _numba_backward as bw
    from debutla.backends import _numba_codegen as cg

    owner = {k: bw if hasattr(bw, k) else cg for k in overrides}
    saved = {k: getattr(owner[k], k) for k in overrides}
    try:
        for k, v in overrides.items():
            setattr(owner[k], k, v)
        bw.scratch_sizes.cache_clear()
        old_count = bw.scratch_sizes(shapes, W)[0]
        src = bw.generate_source(shapes, W)
    finally:
        for k, v in saved.items():
            setattr(owner[k], k, v)
        bw.scratch_sizes.cache_clear()
    if old_count > bw.scratch_sizes(shapes, W)[0]:
        raise SystemExit(f"--ab {overrides}: needs more scratch arrays than this variant; "
                         "swap the variants")
    return src


def _parse_overrides(items) -> dict:
    """``NAME=VALUE`` pairs (Python literals) for ``--ab``, checked against the modules:
    a constant of ``_numba_backward.py`` or, failing that, of ``_numba_codegen.py`` (whose
    panel emitters the backward shares)."""
    import ast

    from debutla.backends import _numba_backward as bw
    from debutla.backends import _numba_codegen as cg

    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if not (hasattr(bw, name) or hasattr(cg, name)) or not value:
            raise SystemExit(f"--ab: {item!r} is not NAME=VALUE of a constant of "
                             "debutla/backends/_numba_backward.py or _numba_codegen.py")
        out[name] = ast.literal_eval(value)
    return out


def ab_rev(name: str, dtype: str, batch: int, threads: int, repeats: int,
           rev: str | None, overrides: dict | None = None) -> str:
    """``--ab-rev``/``--ab``: one table row, REV's generated backward (or the working
    tree's with ``overrides``) against the working tree's."""
    from debutla.backends import _cache
    from debutla.torch._kernels import fused_backward

    op, state, vals, shapes, X, G = _problem(name, dtype, batch)
    m, n = op.shape
    if rev is not None:
        old_src = _generator_of(rev).generate_source(state.shapes, state.bw_W)
    else:
        old_src = _source_with(overrides or {}, state.shapes, state.bw_W)
    mods = {"old": _cache.load_module(old_src, "bw"), "new": state.backward_module()}
    out = {}

    def run(tag: str):
        state._bmod = mods[tag]
        out[tag] = fused_backward(X, G, vals, shapes, n, m, True, threads, state=state)

    with db.config(threads=threads, background=False):
        for tag in mods:  # compile (or load) both
            run(tag)
        if nbk.BACKWARD not in state.ready:
            raise RuntimeError(f"{name}: the generated backward did not run "
                               f"({state.nnz} values, threshold {nbk.BACKWARD_MIN_NNZ})")
        res = compare({tag: (lambda tag=tag: run(tag)) for tag in mods},
                      repeats=repeats, min_time=0.05)
    state._bmod = mods["new"]
    (gx0, gv0), (gx1, gv1) = out["old"], out["new"]
    dv = max(float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(a))), 1e-300)
             for a, b in zip(gv0, gv1))
    dx = float(np.max(np.abs(gx0 - gx1)))
    o, w = res["old"], res["new"]
    return (f"| {name} | {dtype} | {o.median * 1e3:.2f} ({o.q1 * 1e3:.2f}-{o.q3 * 1e3:.2f}) "
            f"| {w.median * 1e3:.2f} ({w.q1 * 1e3:.2f}-{w.q3 * 1e3:.2f}) | "
            f"{o.median / w.median:.2f}x | {dv:.1e} | {dx:.1e} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chains", nargs="+", default=["vgg", "butterfly", "radix4"],
                   choices=sorted(CHAINS))
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--ab-rev", default=None, metavar="REV",
                   help="compare the generated backward of git revision REV with this one")
    p.add_argument("--ab", nargs="+", default=None, metavar="NAME=VALUE",
                   help="compare the generated backward with these constants of "
                        "_numba_backward.py (or _numba_codegen.py) with this one")
    args = p.parse_args(argv)
    if args.ab_rev is not None or args.ab is not None:
        if args.ab_rev is not None and args.ab is not None:
            p.error("--ab-rev and --ab: one or the other")
        overrides = _parse_overrides(args.ab or [])
        label = args.ab_rev or " ".join(args.ab)
        print(f"# bench_backward --ab{'-rev' if args.ab_rev else ''} {label}: batch "
              f"{args.batch}, {args.threads} thread(s), {args.repeats} rounds; load "
              f"average at start {os.getloadavg()}; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"| chain | dtype | {label} ms | this ms | {label} / this "
              f"| max rel. diff of dV | max diff of dX |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name in args.chains:
            for dtype in args.dtypes:
                print(ab_rev(name, dtype, args.batch, args.threads, args.repeats,
                             args.ab_rev, overrides), flush=True)
        print(f"load average at end: {os.getloadavg()}")
        return 0
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
