"""Apply benchmark: DeBut products against dense BLAS, lazylinop and the roofline.

Usage::

    python benchmarks/bench_apply.py --quick     # about 2 minutes: float32, batch 1 and 256
    python benchmarks/bench_apply.py             # the full table (about 10 minutes)

For each chain (the paper's LeNet FC1, VGG 512x4608 and ResNet 512x2048 chains, a
4096x4096 standard butterfly and a 4096x4096 radix-4 chain), batch (1, 16, 256, 4096)
and dtype (float32, float64) it times, in one warm loop each (median of repeats):

* ``dense``: ``X @ W.T`` with NumPy/BLAS (``W`` the dense ``m x n`` matrix);
* ``numpy``: this library's NumPy backend, ``op.matmat_rows(X, out=Y)``;
* ``numba``: this library's Numba backend, same call;
* ``ksm``: ``lazylinop.butterfly.ksm`` (if installed) on the same values, ``L @ X.T``
  (its column layout; skipped with a note when lazylinop does not import);
* ``roofline``: ``max(bytes / bandwidth, flops / peak)`` with bytes = input + output +
  factor values, flops = ``2 nnz batch``, the bandwidth measured by a large array copy and
  the peak by a large BLAS GEMM, both in the same run.

The contenders of one case are timed in interleaved rounds (``debutla._timing.compare``:
each takes its turn every round, the order rotated), so a burst of load hits them alike;
each time is the median over the rounds, with its quartiles in the CSV, and a case whose
spread (interquartile range over median) exceeds 0.25 is flagged "busy" in the report.
Each time is reported with its ratio to dense (speed-up, higher is better) and to the
roofline (lower is better; 1 is the limit).  The compile section times, each in a fresh
process with an empty kernel cache (the generic kernel cached once beforehand, as it is
after any first use on a machine): the first call as users get it (served by the generic
kernel while the chain's kernel compiles in the background), the compile itself
(``debutla.config(background=False)``), and the first adjoint product (``rmatvec``);
then, in other fresh processes, the cached import and first call: on Numba (waiting
for Numba to load) and with the default settings (the first products on the NumPy
reference backend while Numba loads in a background thread).

Threads: every contender gets ``--threads`` threads (default: all cores); BLAS is limited
with ``threadpoolctl``, the Numba backend with ``debutla._config.set_defaults(threads=)``.

Environment: ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` (set on some of our machines,
they slow OpenBLAS down) are removed from this process's environment before NumPy loads,
so the dense baseline runs at full speed.  Nothing else in the library touches them.

Outputs (``--out``, default ``benchmarks/results``): ``bench_apply.md`` (tables),
``bench_apply.csv`` (one row per case and contender), ``bench_apply_summary.rst`` (the
float32 table included by ``docs/performance.rst``) and ``bench_apply.png`` (speed-up
over dense per chain, float32).
"""

from __future__ import annotations

import os
import sys

# time the checkout this script belongs to, not another installed copy of debutla
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_BAD_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if any(v in os.environ for v in _BAD_ENV) and "numpy" not in sys.modules:
    env = {k: v for k, v in os.environ.items() if k not in _BAD_ENV}
    env["DEBUTLA_BENCH_ENV_CLEANED"] = ",".join(v for v in _BAD_ENV if v in os.environ)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from debutla import PAPER_CHAINS, Chain, DeBut, _config  # noqa: E402
from debutla._timing import BUSY_SPREAD, compare  # noqa: E402

CHAINS = {
    "LeNet FC1 mono2 128x400": PAPER_CHAINS["lenet_fc1_mono2"],
    "VGG 512x4608 mono": PAPER_CHAINS["vgg_512x4608_mono"],
    "ResNet 512x2048": PAPER_CHAINS["resnet50_layer4"],
    "butterfly 4096": str(Chain.butterfly(4096)),
    "radix-4 4096": str(Chain.butterfly(4096, radix=4)),
}
CONTENDERS = ("dense", "numpy", "numba", "ksm")


# -- timing -------------------------------------------------------------------------------
def timeit(fn, budget: float, min_reps: int = 3, max_reps: int = 2000) -> float:
    """Median seconds per call of ``fn`` after one warm-up call, within ``budget``."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    inner = max(1, int(2e-3 / max(first, 1e-9)))  # batch tiny calls to 2 ms samples
    reps = int(min(max_reps, max(min_reps, budget / max(first * inner, 1e-9))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def measure_machine(threads: int, quick: bool) -> dict:
    """Copy bandwidth (GB/s) and GEMM peak (GFLOP/s per dtype) with ``threads`` threads."""
    n = 32 * 2**20 if quick else 64 * 2**20  # float32 elements: 128 / 256 MB
    a = np.ones(n, np.float32)
    b = np.empty_like(a)
    bw = 2 * a.nbytes / timeit(lambda: np.copyto(b, a), 1.0, min_reps=5)
    a = b = np.empty(0, np.float32)  # free the buffers before the GEMM runs
    peak = {}
    with threadpool_limits(limits=threads, user_api="blas"):
        for dt in (np.float32, np.float64):
            N = 2048
            A = np.ones((N, N), dt)
            B = np.ones((N, N), dt)
            peak[np.dtype(dt).name] = 2 * N**3 / timeit(lambda: A @ B, 1.5) / 1e9
    return {"bandwidth_GBs": bw / 1e9, "peak_GFLOPs": peak}


# -- contenders -------------------------------------------------------------------------
def load_ksm():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from lazylinop.butterfly import ksm
        return ksm, None
    except Exception as e:  # any import failure means "not available"
        return None, f"{type(e).__name__}: {e}"


def bench_case(op: DeBut, W: np.ndarray, k: int, ksm_op, threads: int, budget: float,
               rng, repeats: int) -> tuple[dict, dict]:
    """Timings (:class:`debutla._timing.Timing`) of every contender for one chain, dtype
    and batch, measured in interleaved rounds; and their errors against dense.

    BLAS is limited to ``threads`` for all of them (the Numba kernels never call BLAS;
    the NumPy backend and ksm use it).
    """
    m, n = op.shape
    dt = op.dtype
    X = rng.standard_normal((k, n)).astype(dt)
    fns = {}
    errs = {}
    with threadpool_limits(limits=threads, user_api="blas"):
        Yd = X @ W.T
        ref = Yd.astype(np.float64)
        scale = np.abs(ref).max()
        fns["dense"] = lambda: X @ W.T
        for name in ("numpy", "numba"):
            o = op.with_backend(name)
            Y = np.empty((k, m), dt)
            o.matmat_rows(X, out=Y)
            errs[name] = float(np.abs(Y - ref).max() / scale)
            fns[name] = (lambda o=o, Y=Y: o.matmat_rows(X, out=Y))
        if ksm_op is not None:
            Xc = np.ascontiguousarray(X.T)
            Yk = np.asarray(ksm_op @ Xc)
            errs["ksm"] = float(np.abs(Yk.T - ref).max() / scale)
            fns["ksm"] = lambda: ksm_op @ Xc
        res = compare(fns, repeats=repeats, min_time=budget / repeats)
    return res, errs


def roofline(op: DeBut, k: int, machine: dict) -> float:
    m, n = op.shape
    item = op.dtype.itemsize
    nbytes = (k * n + k * m + op.nnz) * item
    flops = 2 * op.nnz * k
    return max(nbytes / (machine["bandwidth_GBs"] * 1e9),
               flops / (machine["peak_GFLOPs"][op.dtype.name] * 1e9))


# -- compile cost -----------------------------------------------------------------------
_COMPILE_SCRIPT = textwrap.dedent("""
    import time, sys
    t0 = time.perf_counter()
    import numpy as np
    from debutla import DeBut
    from debutla._config import config
    text, dtype, k, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    # "default": the settings users get (Numba loads in the background meanwhile)
    op = DeBut.random(text, seed=0, dtype=dtype,
                      backend=None if mode == "default" else "numba")
    t1 = time.perf_counter()
    with config(background=(mode != "sync")):
        op.matmat_rows(np.ones((k, op.shape[1]), op.dtype))
        t2 = time.perf_counter()
        op.rmatvec(np.ones(op.shape[0], op.dtype))
        t3 = time.perf_counter()
    print(t1 - t0, t2 - t1, t3 - t2)
""")

_PRIME_SCRIPT = textwrap.dedent("""
    import numpy as np, sys
    from debutla import DeBut
    op = DeBut.random("8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8", seed=0, dtype=sys.argv[1],
                      backend="numba")
    op @ np.ones(8, op.dtype)
""")


def compile_cost(text: str, dtype: str, k: int) -> dict:
    """First calls in fresh processes: cold (default and compile-waiting) and cached."""
    out = {}
    for mode in ("background", "sync"):
        with tempfile.TemporaryDirectory() as d:
            env = dict(os.environ, DEBUTLA_CACHE_DIR=d)
            subprocess.run([sys.executable, "-c", _PRIME_SCRIPT, dtype], env=env,
                           capture_output=True, text=True, check=True)
            for label in ("cold", "cached", "default"):
                if label != "cold" and mode == "sync":
                    continue
                run_mode = {"cold": mode, "cached": "sync", "default": "default"}[label]
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, text, dtype,
                                    str(k), run_mode],
                                   env=env, capture_output=True, text=True, check=True)
                wall = time.perf_counter() - t0
                imp, call, adj = (float(v) for v in r.stdout.split())
                key = label if mode == "background" else "compile"
                out[key] = {"import": imp, "first_call": call, "adjoint": adj,
                            "process": wall}
    return out


# -- report -----------------------------------------------------------------------------
def fmt_t(t: float | None) -> str:
    if t is None:
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.1f} us"
    if t < 1:
        return f"{t * 1e3:.2f} ms"
    return f"{t:.2f} s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="float32, batch 1 and 256, shorter timing loops")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results"))
    ap.add_argument("--chains", nargs="*", default=None,
                    help="subset of chain names (default: all)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile section")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be a positive integer")
    batches = (1, 256) if args.quick else (1, 16, 256, 4096)
    dtypes = ("float32",) if args.quick else ("float32", "float64")
    budget = 0.3 if args.quick else 0.8  # seconds per contender and case, all rounds
    repeats = 5 if args.quick else 9  # interleaved rounds (median and quartiles)
    names = args.chains or list(CHAINS)
    unknown = [c for c in names if c not in CHAINS]
    if unknown:
        ap.error(f"--chains: unknown chain(s) {unknown}; known: {list(CHAINS)}")
    os.makedirs(args.out, exist_ok=True)
    # timed loops: the first (untimed) call waits for the chain's kernel to compile
    _config.set_defaults(threads=args.threads, background=False)
    ksm, ksm_err = load_ksm()
    rng = np.random.default_rng(0)

    print(f"measuring the machine ({args.threads} threads) ...", flush=True)
    machine = measure_machine(args.threads, args.quick)
    print(json.dumps(machine), flush=True)
    rows = []
    for cname in names:
        chain = Chain.parse(CHAINS[cname])
        for dtn in dtypes:
            op = DeBut.random(chain, seed=1, dtype=dtn)
            W = op.to_dense()
            kop = None
            if ksm is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    kop = ksm([np.asarray(v) for v in op.factors[::-1]])
            for k in batches:
                res, errs = bench_case(op, W, k, kop, args.threads, budget, rng, repeats)
                roof = roofline(op, k, machine)
                dense = res["dense"].median
                for c in CONTENDERS:
                    tm = res.get(c)
                    t = None if tm is None else tm.median
                    rows.append({
                        "chain": cname, "dtype": dtn, "batch": k, "contender": c,
                        "seconds": t, "q1_s": None if tm is None else tm.q1,
                        "q3_s": None if tm is None else tm.q3,
                        "spread": None if tm is None else tm.spread,
                        "busy": None if tm is None else tm.busy,
                        "speedup_vs_dense": None if t is None else dense / t,
                        "x_roofline": None if t is None else t / roof,
                        "roofline_s": roof, "rel_err": errs.get(c),
                    })
                print(f"{cname:26s} {dtn:8s} k={k:5d} " + "  ".join(
                    f"{c}={fmt_t(res[c].median)}{'(busy)' if res[c].busy else ''}"
                    if c in res else f"{c}=-" for c in CONTENDERS)
                    + f"  roof={fmt_t(roof)}", flush=True)
    compile_rows = []
    if not args.no_compile:
        for cname in names:
            for k in ((1, 256) if not args.quick else (256,)):
                cc = compile_cost(CHAINS[cname], "float32", k)
                compile_rows.append((cname, k, cc))
                print(f"compile {cname} k={k}: cold first call "
                      f"{cc['cold']['first_call']:.2f} s (compile "
                      f"{cc['compile']['first_call']:.2f} s), first adjoint "
                      f"{cc['compile']['adjoint']:.2f} s, cached import+first call "
                      f"{cc['cached']['import'] + cc['cached']['first_call']:.2f} s "
                      f"(Numba waited for; default settings "
                      f"{cc['default']['import'] + cc['default']['first_call']:.2f} s)",
                      flush=True)
    write_reports(args, machine, rows, compile_rows, ksm_err)
    return 0


def write_reports(args, machine, rows, compile_rows, ksm_err) -> None:
    base = os.path.join(args.out, "bench_apply")
    with open(base + ".csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    L = ["# Apply benchmark", "",
         f"Command: `python benchmarks/bench_apply.py{' --quick' if args.quick else ''}"
         f"{'' if args.threads == (os.cpu_count() or 1) else f' --threads {args.threads}'}`",
         f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: "
         f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
         f"{args.threads} threads; load average at the end {load}",
         f"NumPy {np.__version__}; environment cleaned of: "
         f"{os.environ.get('DEBUTLA_BENCH_ENV_CLEANED') or 'nothing (not set)'}",
         f"Measured copy bandwidth {machine['bandwidth_GBs']:.1f} GB/s; GEMM peak "
         + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in machine["peak_GFLOPs"].items()),
         "lazylinop ksm: " + ("default (array-namespace) backend, `L @ X.T`"
                              if ksm_err is None else f"not available ({ksm_err})"),
         "",
         "Each cell: time per call (median of interleaved rounds: dense, numpy, numba "
         "and ksm take turns, the order rotated each round), then `speed-up over dense` "
         "and `x roofline` (time / roofline time).  A cell marked **busy** had a spread "
         f"(interquartile range / median) above {BUSY_SPREAD:.2f}: the machine was busy "
         "while it was measured; the CSV has the quartiles of every cell.", ""]
    busy = [r for r in rows if r.get("busy")]
    if busy:
        L += [f"**Machine busy**: {len(busy)} of {len(rows)} cells had a spread above "
              f"{BUSY_SPREAD:.2f}; rerun on a quieter machine before quoting them.", ""]
    key = {}
    for r in rows:
        key.setdefault((r["chain"], r["dtype"], r["batch"]), {})[r["contender"]] = r
    for dtn in sorted({r["dtype"] for r in rows}):
        L += [f"## {dtn}", "",
              "| chain | batch | roofline | dense | numpy | numba | ksm |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        for (cname, d, k), cs in key.items():
            if d != dtn:
                continue
            cells = []
            for c in CONTENDERS:
                r = cs[c]
                if r["seconds"] is None:
                    cells.append("-")
                elif c == "dense":
                    cells.append(f"{fmt_t(r['seconds'])} ({r['x_roofline']:.1f}x roof)"
                                 + (" **busy**" if r["busy"] else ""))
                else:
                    cells.append(f"{fmt_t(r['seconds'])} ({r['speedup_vs_dense']:.1f}x, "
                                 f"{r['x_roofline']:.1f}x roof)"
                                 + (" **busy**" if r["busy"] else ""))
            L.append(f"| {cname} | {k} | {fmt_t(cs['dense']['roofline_s'])} | "
                     + " | ".join(cells) + " |")
        L.append("")
    if compile_rows:
        L += ["## First calls (float32, fresh processes)", "",
              "| chain | batch | cold first call | compile (waited for) | first adjoint "
              "| cached import | cached first call | cached import + first call, "
              "default settings |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for cname, k, cc in compile_rows:
            L.append(f"| {cname} | {k} | {cc['cold']['first_call']:.2f} s | "
                     f"{cc['compile']['first_call']:.2f} s | "
                     f"{cc['compile']['adjoint']:.3f} s | "
                     f"{cc['cached']['import']:.2f} s | {cc['cached']['first_call']:.3f} s | "
                     f"{cc['default']['import'] + cc['default']['first_call']:.3f} s |")
        L.append("")
    with open(base + ".md", "w") as fh:
        fh.write("\n".join(L) + "\n")
    write_summary(args, machine, key, base + "_summary.rst")
    plot(rows, base + ".png")
    print(f"wrote {base}.md, .csv, .png")


def write_summary(args, machine, key, path: str) -> None:
    """A float32 reStructuredText table of the Numba backend against everyone else."""
    L = [".. Generated by benchmarks/bench_apply.py; do not edit.", "",
         ".. list-table:: float32, " + (f"{args.threads} thread(s), " if args.threads else "")
         + f"copy bandwidth {machine['bandwidth_GBs']:.1f} GB/s, GEMM peak "
         f"{machine['peak_GFLOPs'].get('float32', float('nan')):.0f} GFLOP/s",
         "   :header-rows: 1", "",
         "   * - chain", "     - batch", "     - dense", "     - numba",
         "     - speed-up over dense", "     - over NumPy backend", "     - over ksm",
         "     - x roofline"]
    for (cname, d, k), cs in key.items():
        if d != "float32":
            continue
        nb, de, npb, ks = (cs[c]["seconds"] for c in ("numba", "dense", "numpy", "ksm"))
        L += [f"   * - {cname}", f"     - {k}", f"     - {fmt_t(de)}", f"     - {fmt_t(nb)}",
              f"     - {de / nb:.1f}", f"     - {npb / nb:.1f}",
              f"     - {ks / nb:.1f}" if ks is not None else "     - --",
              f"     - {cs['numba']['x_roofline']:.1f}"]
    with open(path, "w") as fh:
        fh.write("\n".join(L) + "\n")


def plot(rows, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    rows = [r for r in rows if r["dtype"] == "float32"]
    chains = list(dict.fromkeys(r["chain"] for r in rows))
    fig, axes = plt.subplots(1, len(chains), figsize=(4 * len(chains), 3.6), squeeze=False)
    for ax, cname in zip(axes[0], chains):
        rs = [r for r in rows if r["chain"] == cname]
        batches = sorted({r["batch"] for r in rs})
        for c, style in (("numpy", "s-"), ("numba", "o-"), ("ksm", "^-")):
            ys = [next((r["speedup_vs_dense"] for r in rs
                        if r["batch"] == b and r["contender"] == c), None) for b in batches]
            if any(y is not None for y in ys):
                ax.plot(batches, [np.nan if y is None else y for y in ys], style, label=c)
        roof = [next(r["roofline_s"] for r in rs if r["batch"] == b) for b in batches]
        dense = [next(r["seconds"] for r in rs if r["batch"] == b and r["contender"] == "dense")
                 for b in batches]
        ax.plot(batches, [d / t for d, t in zip(dense, roof)], "k--", label="roofline")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(cname, fontsize=9)
        ax.set_xlabel("batch")
    axes[0][0].set_ylabel("speed-up over dense X @ W.T (float32)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
