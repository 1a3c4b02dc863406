"""DeButLinear against nn.Linear of the same shape: module calls, torch overhead included.

For each case (chain, batch) and each mode it times the *module call* as a user sees it:

* ``inference``: ``layer(x)`` under ``torch.inference_mode()``;
* ``train``: ``layer(x).backward(g)`` with the parameters (and ``x``) requiring gradients,
  i.e. forward + backward including the value gradients (gradients accumulate);
* ``step``: a whole training step, ``zero_grad``, forward, backward and an SGD step (so
  the DeBut layer has new values at every call, as in training).

Each layer first runs a few calls, then the kernels and team bodies those calls
started compiling (or loading from the kernel cache) in background threads are waited
for, and a few more calls run: the times are those of a training run's steady state,
not of its first calls (during which a layer's backward ran on the slower Python
team body for about 0.3 s, most of a mode's timed calls before this warm-up).

Repeats of the DeBut layer and the dense layer are interleaved (A B A B ...) so a load
change on the machine hits both; the table gives medians with the interquartile spread
and the speed-up of the medians.  ``--blocks K`` interleaves blocks of K calls instead
(A x K, B x K, ...): each layer then mostly runs right after itself, as in a stream of
calls to one layer, instead of right after the other (on the 2-vCPU VM a 1 ms product
called right after 10 ms of other work takes 0.5-1 ms longer; torch's OpenMP workers
also keep spinning after each ``nn.Linear``).  Threads: run once per thread count, each in a fresh
process with ``torch.set_num_threads(k)`` and ``DEBUTLA_NUM_THREADS=k`` (Numba kernels).

Usage::

    python benchmarks/bench_torch.py                   # 1 and 2 threads, all cases
    python benchmarks/bench_torch.py --threads 1 --quick
    python benchmarks/bench_torch.py --backward-modes  # recompute vs keep intermediates
    python benchmarks/bench_torch.py --blocks 10       # blocks of 10 calls per layer
    python benchmarks/bench_torch.py --busy            # one core held by a busy loop

``--busy`` runs the workers while a ``while True: pass`` process holds a core (started
before the first worker, stopped after the last): the busy-machine condition of the
tables in ``docs/torch.rst``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CASES = [
    ("vgg_512x4608_mono", 256),
    ("butterfly_4096", 256),
]
TARGETS = {("vgg_512x4608_mono", "inference"): 5.0, ("vgg_512x4608_mono", "train"): 3.0,
           ("butterfly_4096", "train"): 10.0}


def _chain(name: str):
    import debutla as db

    if name == "butterfly_4096":
        return db.Chain.butterfly(4096)
    return db.Chain.parse(db.PAPER_CHAINS[name])


def _time_pair(fa, fb, repeats: int, warmup: int = 3, block: int = 1):
    """Times of ``repeats`` calls each of ``fa`` and ``fb``, in alternating blocks.

    Steady state: after ``warmup`` calls of each, the kernels and team bodies that
    those calls started compiling (or loading from the kernel cache) in background
    threads are waited for, and ``warmup`` more calls of each run before the timed
    ones (the first calls' own latency is ``bench_apply.py``'s and
    ``bench_kernels.py``'s business).
    """
    import numpy as np

    from debutla.backends import _numba_native, numba_

    for _ in range(warmup):
        fa()
        fb()
    numba_.wait_for_compiles()
    _numba_native.wait_for_bodies()
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    while len(ta) < repeats:
        for f, ts in ((fa, ta), (fb, tb)):
            for _ in range(min(block, repeats - len(ts))):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
    return np.array(ta), np.array(tb)


def _quartiles_ms(a) -> list[float]:
    """The 25th, 50th and 75th percentiles of the times ``a`` (seconds), in milliseconds."""
    import numpy as np

    return [float(np.percentile(a, p)) * 1e3 for p in (25, 50, 75)]


def run_worker(threads: int, repeats: int, cases, block: int = 1) -> list[dict]:
    """Time every case in this process (threads already set by the parent)."""
    import numpy as np
    import torch

    from debutla.torch import DeButLinear

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rows = []
    for name, batch in cases:
        chain = _chain(name)
        m, n = chain.shape
        deb = DeButLinear(n, m, chain=chain)
        dense = torch.nn.Linear(n, m)
        x = torch.randn(batch, n)
        g = torch.randn(batch, m)

        def inf(layer):
            def f():
                with torch.inference_mode():
                    layer(x)
            return f

        xg = x.clone().requires_grad_(True)

        def train(layer):
            def f():
                layer(xg).backward(g)
            return f

        def step(layer):  # a whole training step: new values after each one
            opt = torch.optim.SGD(layer.parameters(), lr=1e-7)

            def f():
                opt.zero_grad(set_to_none=True)
                xg.grad = None
                layer(xg).backward(g)
                opt.step()
            return f

        for mode, mk in (("inference", inf), ("train", train), ("step", step)):
            ta, tb = _time_pair(mk(deb), mk(dense), repeats, block=block)
            rows.append({"case": name, "m": m, "n": n, "batch": batch, "mode": mode,
                         "threads": threads, "block": block, "debut_ms": _quartiles_ms(ta),
                         "dense_ms": _quartiles_ms(tb),
                         "speedup": float(np.median(tb) / np.median(ta)),
                         "target": TARGETS.get((name, mode))})
    return rows


def run_backward_modes(threads: int, repeats: int) -> list[dict]:
    """Recompute the intermediates in the backward vs keep them from the forward."""
    import numpy as np
    import torch

    from debutla.torch import DeButLinear
    from debutla.torch import _ops

    torch.set_num_threads(threads)
    out = []
    for name, batch in CASES:
        chain = _chain(name)
        m, n = chain.shape
        layer = DeButLinear(n, m, chain=chain)
        x = torch.randn(batch, n, requires_grad=True)
        g = torch.randn(batch, m)
        kept = batch * sum(f.q for f in chain) * 4
        res = {}
        for mode in ("recompute", "keep"):
            def f():
                with _ops.backward_mode(mode):
                    layer(x).backward(g)
            res[mode] = f
        ta, tb = _time_pair(res["recompute"], res["keep"], repeats)
        out.append({"case": name, "batch": batch, "threads": threads,
                    "recompute_ms": float(np.median(ta)) * 1e3,
                    "keep_ms": float(np.median(tb)) * 1e3,
                    "extra_bytes_kept": kept,
                    "input_bytes": batch * n * 4})
    return out


def _table(rows) -> str:
    lines = ["| case | batch | threads | mode | DeButLinear ms (IQR) | nn.Linear ms (IQR) "
             "| speed-up | target |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["debut_ms"], r["dense_ms"]
        tgt = f"{r['target']:.0f}x" if r["target"] else ""
        ok = "" if not r["target"] else (" met" if r["speedup"] >= r["target"] else " MISSED")
        lines.append(f"| {r['case']} ({r['m']}x{r['n']}) | {r['batch']} | {r['threads']} "
                     f"| {r['mode']} | {a[1]:.2f} ({a[0]:.2f}-{a[2]:.2f}) "
                     f"| {b[1]:.2f} ({b[0]:.2f}-{b[2]:.2f}) | {r['speedup']:.1f}x "
                     f"| {tgt}{ok} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="5 repeats")
    ap.add_argument("--backward-modes", action="store_true",
                    help="compare recompute vs keep intermediates instead")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--blocks", type=int, default=1, metavar="K",
                    help="alternate blocks of K calls per layer (default 1: A B A B)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    ap.add_argument("--busy", action="store_true",
                    help="hold one core with a busy-loop process during the run")
    args = ap.parse_args(argv)
    if args.blocks < 1:
        ap.error("--blocks must be at least 1")
    reps = 5 if args.quick else args.repeats
    if args.worker is not None:
        fn = run_backward_modes if args.backward_modes else None
        rows = (fn(args.worker, reps) if fn
                else run_worker(args.worker, reps, CASES, args.blocks))
        print("ROWS" + json.dumps(rows))
        return
    busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
            if args.busy else None)
    try:
        rows = _run_workers(args, reps)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load}"
          + (f"; blocks of {args.blocks} calls per layer" if args.blocks > 1
             else "; calls interleaved A B A B")
          + ("; one core held by a busy-loop process" if args.busy else ""))
    if args.backward_modes:
        for r in rows:
            print(r)
    else:
        print(_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def _run_workers(args, reps: int) -> list[dict]:
    """Each thread count of ``args`` in a fresh worker process; their rows."""
    rows: list[dict] = []
    for k in args.threads:
        env = dict(os.environ, DEBUTLA_NUM_THREADS=str(k), OMP_NUM_THREADS=str(k),
                   PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(k),
               "--repeats", str(reps), "--blocks", str(args.blocks)] + (
                   ["--backward-modes"] if args.backward_modes else [])
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stderr)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("ROWS")][-1]
        rows += json.loads(line[4:])
    return rows


if __name__ == "__main__":
    main()
