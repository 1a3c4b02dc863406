"""Kernel benchmark: the Numba backend's time as a multiple of the roofline, per chain,
batch and dtype, with the machine re-measured next to every case.

Usage::

    python benchmarks/bench_kernels.py                       # 5 chains x f32/f64 x 1/16/256
    python benchmarks/bench_kernels.py --chains butterfly --batches 256 --dtypes float32
    python benchmarks/bench_kernels.py --set _FUSE_MAX=1     # set a generator constant
    python benchmarks/bench_kernels.py --ab _FUSE_REVERSE=False --product adjoint-rows \
        --chains butterfly vgg --batches 256 --rounds 7      # A/B of change 36
    python benchmarks/bench_kernels.py --scaling --threads 1 2 --chains vgg butterfly \
        --dtypes float32 --batches 16 256 --rounds 9          # thread scaling

Where ``bench_apply.py`` compares contenders, this script answers one question: how far
is ``op.matmat_rows(X, out=Y)`` (Numba backend, one thread, BLAS pinned to one thread
with ``threadpoolctl``) from the limit of this machine?  On a shared machine the limit
moves with the load, so each case runs ``--rounds`` rounds; a round measures

* the copy bandwidth (a 64 MiB ``np.copyto``, min of 5) and the one-thread GEMM peak of
  the case's dtype (a 512^3 ``A @ A``, min of 20), then
* the kernel (min over a ``--budget`` second loop),

and reports the kernel's best time, its median over rounds, and two roofline ratios:
``best`` (best kernel time over the roofline from the best machine figures of the whole
run: the strict one) and ``same-round`` (median over rounds of kernel time over the
roofline measured in the same round: what the kernel gets out of the machine it had).
The summary gives the copy bandwidth's range over the rounds and flags a run in which it
moved by more than ``BW_SPREAD`` (on the shared VMs it moved between 14 and 26 GB/s
within an hour, and the strict ratios with it).
The roofline is ``max(bytes / bandwidth, 2 nnz k / peak)``, bytes = input + output +
values, as in ``bench_apply.py``.

``--set NAME=VALUE`` overrides a constant of :mod:`debutla.backends._numba_codegen`
(e.g. ``_FUSE_MAX=1`` switches the fused panel passes off) before any kernel is built.
``--ab NAME=VALUE`` times two kernel modules in the same rounds, alternating: the
generator's defaults (``new``) and the override (``old``); it calls the backend
(``numba_.apply_rows``) directly, so the operator's Python overhead is left out of both,
and reports ``old / new`` as the median over rounds of the paired time ratios: the
figure to trust on a loaded machine, where separate runs minutes apart differ by more
than most kernel changes.  The load average is printed at the start and the end: quote
it with any figure.

``--ab-width W`` is the same A/B with the tile width instead of a generator constant:
``new`` the backend's own width rule, ``old`` tiles of ``W`` rows (change 13).  With
``--threads K`` (one count) both run under ``config(threads=K)``.

``--depths N`` (with ``--ab``) times each variant from ``N`` Python call depths (each
depth one more C-level call, ``map``, so the C stack the kernel starts on moves by some
hundred bytes per level) and reports, per variant, the median over depths of each
depth's median time and the slowest depth: a kernel whose register spills land on the
stack is as fast as the stack position the caller happens to give it
(``_numba_stack``, ``README_kernels.md`` change 8).

``--product`` chooses the product every mode times (default ``rows``):

* ``rows``: ``op.matmat_rows(X, out=Y)``, ``X`` of shape ``(k, n)`` (``apply_rows``);
* ``cols``: ``op.matmat(X, out=Y)``, ``X`` of shape ``(n, k)`` (``apply_cols``): the
  layout of ``op @ X`` and of scipy's ``LinearOperator.matmat``;
* ``adjoint-rows``: ``op.H.matmat_rows(Z, out=Y)``, ``Z`` of shape ``(k, m)``: the
  product of ``Z @ op`` (``apply_rows(..., trans="H")``), which runs on the transposed
  chain's kernels;
* ``adjoint-cols``: ``op.rmatmat(Z, out=Y)``, ``Z`` of shape ``(m, k)``
  (``apply_cols(..., trans="H")``).

The roofline is the same for all four (the same bytes and flops).  ``--ab`` takes the
constants of :mod:`debutla.backends.numba_` too (e.g. ``_COLS_WIDE=False``, the column
tiles of the chain's own width, before change 35): they are set around each of
``old``'s timings instead of building other kernel modules.

``--scaling`` answers another question: what does a second (third, ...) thread buy?
For each case it times ``op.matmat_rows(X, out=Y)`` under ``debutla.config(threads=k)``
for every ``k`` of ``--threads``, interleaved in each of ``--rounds`` rounds (the order
of the thread counts alternates between rounds; min over a ``--budget`` loop per
timing; BLAS pinned to one thread), and reports the median over rounds with its range,
and the speed-up over the first thread count as the median over rounds of the paired
ratios.  It checks first that every thread count gives bitwise the same result.
``--pool-ab`` adds each thread count above one on the executor alone (the split
products' pool before change 12, ``debutla.config(spin=False)``), in the same rounds.
``--ab NAME=VALUE`` (constants of :mod:`debutla.backends.numba_` only) adds each thread
count above one with those constants set around its timings (``old``), in the same
rounds, and reports ``old / new`` as the median of the paired ratios: e.g.
``--scaling --ab _LANE_JOBS=False``, the split products' jobs packed anew at every call
(before change 38), which acts on the operator's path, not on the kernels.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import debutla.backends.numba_ as nbk  # noqa: E402
import debutla  # noqa: E402
from debutla import DeBut  # noqa: E402
from debutla._config import config, set_defaults  # noqa: E402
from debutla.backends import _numba_codegen as cg  # noqa: E402

#: A run whose best copy bandwidth exceeds its worst by this factor is flagged.
BW_SPREAD = 1.3

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from _tile_kernel import ALL_CHAINS, CHAINS  # noqa: E402

def tmin(fn, budget: float, min_reps: int = 5) -> float:
    """Least seconds per call of ``fn`` over a ``budget`` loop (one warm-up call)."""
    fn()
    best, n, t_end = float("inf"), 0, time.perf_counter() + budget
    while n < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        n += 1
    return best


class Machine:
    """Copy bandwidth and one-thread GEMM peak, re-measured on demand."""

    def __init__(self) -> None:
        self.a = np.ones(16 * 2**20, np.float32)  # 64 MiB
        self.b = np.empty_like(self.a)
        self.mats = {dt: np.ones((512, 512), dt) for dt in ("float32", "float64")}
        self.best_bw = 0.0
        self.best_peak: dict = {}
        self.bws: list = []  # every round's copy bandwidth

    def measure(self, dtype: str) -> tuple:
        bw = 2 * self.a.nbytes / tmin(lambda: np.copyto(self.b, self.a), 0.0, 5)
        A = self.mats[dtype]
        peak = 2 * 512**3 / tmin(lambda: A @ A, 0.0, 20)
        self.best_bw = max(self.best_bw, bw)
        self.best_peak[dtype] = max(self.best_peak.get(dtype, 0.0), peak)
        self.bws.append(bw)
        return bw, peak

    def summary(self) -> list:
        lines = [f"best machine figures of the run: copy {self.best_bw / 1e9:.1f} GB/s, GEMM "
                 + ", ".join(f"{d} {p / 1e9:.0f} GFLOP/s" for d, p in self.best_peak.items()),
                 f"load average at end: {os.getloadavg()}"]
        if self.bws:
            lo, med = min(self.bws), statistics.median(self.bws)
            lines.append(f"copy bandwidth over the rounds: {lo / 1e9:.1f}-{self.best_bw / 1e9:.1f} "
                         f"GB/s (median {med / 1e9:.1f})")
            if self.best_bw > BW_SPREAD * lo:
                lines.append(f"WARNING: the copy bandwidth moved by more than {BW_SPREAD}x during "
                             f"the run (another tenant?): the strict ratios use its best round; "
                             f"quote the same-round ratios with them")
        return lines + [""]


def _start(title: str) -> tuple:
    """Pin BLAS and the backend to one thread; the machine probe, a generator, a header."""
    threadpool_limits(limits=1, user_api="blas")
    set_defaults(threads=1)  # the backend too (overridden per call by --scaling)
    head = [title, f"load average at start: {os.getloadavg()}; {os.cpu_count()} cores; "
            f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    print("\n".join(head), flush=True)
    return Machine(), np.random.default_rng(0), head


def _finish(args, lines: list) -> int:
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


#: ``--product``: the products the benchmark can time (see the module's docstring).
PRODUCTS = ("rows", "cols", "adjoint-rows", "adjoint-cols")


def product_io(product: str, op: DeBut, k: int, rng) -> tuple:
    """``(X, Y)``: an input of ``k`` rows or columns for ``product`` and its output."""
    m, n = op.shape
    fin, fout = (m, n) if product.startswith("adjoint") else (n, m)
    dt = op.dtype
    if product.endswith("cols"):
        return rng.standard_normal((fin, k)).astype(dt), np.empty((fout, k), dt)
    return rng.standard_normal((k, fin)).astype(dt), np.empty((k, fout), dt)


def op_call(product: str, op: DeBut):
    """``f(X, Y)``: ``product`` through the operator's public method, written in ``Y``."""
    if product == "rows":
        return lambda X, Y: op.matmat_rows(X, out=Y)
    if product == "cols":
        return lambda X, Y: op.matmat(X, out=Y)
    if product == "adjoint-cols":
        return lambda X, Y: op.rmatmat(X, out=Y)
    opH = op.H  # Z @ conj(op): op's state, trans "H" (as Z @ op for a real op)
    return lambda X, Y: opH.matmat_rows(X, out=Y)


def backend_call(product: str):
    """``f(state, X, Y)``: ``product`` on the Numba backend alone (no operator)."""
    trans = "H" if product.startswith("adjoint") else "N"
    apply = nbk.apply_cols if product.endswith("cols") else nbk.apply_rows
    return lambda st, X, Y: apply(st, X, out=Y, trans=trans)


def compile_product(product: str, st, k: int) -> None:
    """Compile (now) the kernel that ``product`` of ``k`` runs on from state ``st``."""
    with config(background=False):
        nbk.compile_kernels(st, k, "cols" if product.endswith("cols") else "rows",
                            "H" if product.startswith("adjoint") else "N")


def _cases(args, rng):
    """``(chain name, dtype, batch, operator, X, Y)`` for every case of the command line
    (``X`` and ``Y`` shaped for ``args.product``)."""
    for cname in args.chains:
        for dtn in args.dtypes:
            op = DeBut.random(ALL_CHAINS[cname], seed=1, dtype=dtn, backend="numba")
            for k in args.batches:
                yield (cname, dtn, k, op, *product_io(args.product, op, k, rng))


def roofline(op: DeBut, k: int, bw: float, peak: float) -> float:
    m, n = op.shape
    nbytes = (k * n + k * m + op.nnz) * op.dtype.itemsize
    return max(nbytes / bw, 2 * op.nnz * k / peak)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chains", nargs="*", default=list(CHAINS), choices=list(ALL_CHAINS))
    ap.add_argument("--dtypes", nargs="*", default=["float32", "float64"],
                    choices=["float32", "float64"])
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 16, 256])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0.4, help="seconds per kernel timing")
    ap.add_argument("--product", default="rows", choices=PRODUCTS,
                    help="the product timed (default rows: op.matmat_rows)")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                    help="override _numba_codegen constants (A/B runs)")
    ap.add_argument("--ab", nargs="*", default=[], metavar="NAME=VALUE",
                    help="time the defaults against these overrides, alternating")
    ap.add_argument("--ab-width", type=int, default=None, metavar="W",
                    help="time the backend's tile width against tiles of W rows")
    ap.add_argument("--depths", type=int, default=1,
                    help="with --ab: time each variant from this many Python call depths")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    ap.add_argument("--scaling", action="store_true",
                    help="time the thread counts of --threads against each other")
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2],
                    help="thread counts of --scaling (the first is the reference)")
    ap.add_argument("--pool-ab", action="store_true",
                    help="with --scaling: time each thread count > 1 on the spinning pool "
                         "and on the executor alone (config(spin=False)), interleaved")
    args = ap.parse_args(argv)

    def parse(items: list, backend: bool = False) -> dict:
        """``NAME=VALUE`` items as {name: value}: constants of the generator, and of the
        backend too when ``backend`` (those come back in ``out["backend"]``)."""
        out: dict = {}
        for item in items:
            name, _, value = item.partition("=")
            mod = cg if hasattr(cg, name) else nbk if backend and hasattr(nbk, name) else None
            if mod is None or callable(getattr(mod, name)):
                ap.error(f"_numba_codegen{' or numba_' if backend else ''} has no constant "
                         f"{name!r}")
            v = type(getattr(mod, name))(eval(value, {}))  # noqa: S307
            if mod is nbk:
                out.setdefault("backend", {})[name] = v
            else:
                out[name] = v
        return out

    for name, value in parse(args.set).items():
        setattr(cg, name, value)
    if args.depths < 1:
        ap.error("--depths must be at least 1")
    if args.ab_width is not None:
        if args.ab_width < 1:
            ap.error("--ab-width must be at least 1")
        return run_ab(args, {}, width=args.ab_width)
    if args.scaling:
        if not args.threads or min(args.threads) < 1:
            ap.error("--threads needs positive thread counts")
        overrides = parse(args.ab, backend=True)
        if set(overrides) - {"backend"}:  # the operator's path runs the built modules
            ap.error("--scaling --ab takes constants of numba_ only, not of "
                     f"_numba_codegen: {sorted(set(overrides) - {'backend'})}")
        return run_scaling(args, overrides)
    if args.ab:
        return (run_depths if args.depths > 1 else run_ab)(args, parse(args.ab, backend=True))
    machine, rng, head = _start(f"# bench_kernels: {' '.join(sys.argv[1:]) or '(defaults)'}"
                                f"; product {args.product}")
    rows = []
    for cname, dtn, k, op, X, Y in _cases(args, rng):
        # compile / load the kernel and wait for it (a cold cache would otherwise time
        # the generic kernel that serves products while the chain's kernel compiles)
        debutla.warmup(op, batch=k, layout="cols" if args.product.endswith("cols") else "rows",
                       adjoint=args.product.startswith("adjoint"))
        call = op_call(args.product, op)
        call(X, Y)
        times, ratios = [], []
        for _ in range(args.rounds):
            bw, peak = machine.measure(dtn)
            t = tmin(lambda: call(X, Y), args.budget)
            times.append(t)
            ratios.append(t / roofline(op, k, bw, peak))
        rows.append((cname, dtn, k, op, times, statistics.median(ratios)))
        print(f"{cname:10s} {dtn:8s} k={k:5d}  best {min(times) * 1e6:9.1f} us  "
              f"median {statistics.median(times) * 1e6:9.1f} us  same-round "
              f"x{statistics.median(ratios):.2f}", flush=True)
    lines = head + machine.summary() + [
        "| chain | dtype | batch | best | median | roofline (best machine) | "
        "x roofline (best) | x roofline (same round) |",
        "|---|---|---:|---:|---:|---:|---:|---:|"]
    for cname, dtn, k, op, times, same in rows:
        roof = roofline(op, k, machine.best_bw, machine.best_peak[dtn])
        lines.append(f"| {cname} | {dtn} | {k} | {min(times) * 1e6:.1f} us | "
                     f"{statistics.median(times) * 1e6:.1f} us | {roof * 1e6:.1f} us | "
                     f"{min(times) / roof:.2f} | {same:.2f} |")
    return _finish(args, lines)


def _module_with(state, overrides: dict, W: int | None = None):
    """The kernel module of ``state``'s chain built with ``overrides`` of the generator.

    ``W``: the tile width (default the state's own).
    """
    saved = {k: getattr(cg, k) for k in overrides}
    try:
        for k, v in overrides.items():
            setattr(cg, k, v)
        getattr(cg, "_modules", {}).clear()  # per-process table, where there is one
        return cg.kernel_module(state.shapes, state.W if W is None else W)
    finally:
        for k, v in saved.items():
            setattr(cg, k, v)
        getattr(cg, "_modules", {}).clear()  # per-process table, where there is one


def at_depth(depth: int, fn):
    """``fn()`` called ``depth`` C-level calls deeper than this frame (through ``map``)."""
    if depth == 0:
        return fn()
    return list(map(lambda _: at_depth(depth - 1, fn), (0,)))[0]


def _state_with(op: DeBut, overrides: dict, width: int | None = None,
                adjoint: bool = False):
    """A kernel state of ``op`` whose modules (own, narrow and wide column tiles) use
    the generator ``overrides``, with tiles of ``width`` rows instead of the backend's
    own when given; with ``adjoint``, its transposed chain's state (the one adjoint
    products run on) made now, likewise.
    """
    st = nbk.prepare(op.factors)
    overrides = {n: v for n, v in overrides.items() if n != "backend"}
    for s in (st, st.adjoint("H")) if adjoint else (st,):
        if width is not None:
            s.W = width
            # the compiled-kernel bookkeeping is per chain, tile width and dtype
            s.ready = nbk._READY.setdefault((s.shapes, width, s.dkey), set())
            s.pending = nbk._PENDING.setdefault((s.shapes, width, s.dkey), set())
        s._mod = _module_with(s, overrides)
        s._nmod = _module_with(s, overrides, nbk.NARROW_W)  # batches 3-16 of wide tiles
        s._cmod = _module_with(s, overrides, s.cW)  # column products' full wide tiles
    return st


@contextlib.contextmanager
def backend_set(overrides: dict):
    """The backend constants of ``overrides["backend"]`` set for the ``with`` body."""
    saved = {n: getattr(nbk, n) for n in overrides.get("backend", {})}
    try:
        for n, v in overrides.get("backend", {}).items():
            setattr(nbk, n, v)
        yield
    finally:
        for n, v in saved.items():
            setattr(nbk, n, v)


def run_depths(args, overrides: dict) -> int:
    """The A/B of ``--ab`` with every timing taken from ``--depths`` call depths."""
    machine, rng, head = _start(f"# bench_kernels A/B over {args.depths} call depths: new = "
                                f"generator defaults, old = {overrides}; product "
                                f"{args.product}")
    call = backend_call(args.product)
    adjoint = args.product.startswith("adjoint")
    rows = []
    for cname, dtn, k, op, X, Y in _cases(args, rng):
        states = {}
        for label, ov in (("new", {}), ("old", overrides)):
            st = _state_with(op, ov, adjoint=adjoint)
            compile_product(args.product, st, k)  # time the chain's kernel
            with backend_set(ov):
                call(st, X, Y)
            states[label] = (st, ov)
        times: dict = {lb: {d: [] for d in range(args.depths)} for lb in states}
        for rd in range(args.rounds):
            machine.measure(dtn)
            for d in range(args.depths):
                for lb, (st, ov) in (states.items() if (rd + d) % 2 == 0
                                     else list(states.items())[::-1]):
                    with backend_set(ov):
                        times[lb][d].append(at_depth(d, lambda st=st: tmin(
                            lambda: call(st, X, Y), args.budget / args.depths)))
        per = {lb: sorted(statistics.median(v) for v in times[lb].values()) for lb in states}
        med = {lb: statistics.median(v) for lb, v in per.items()}
        rows.append((cname, dtn, k, per, med))
        print(f"{cname:10s} {dtn:8s} k={k:5d}  " + "  ".join(
            f"{lb}: median {med[lb] * 1e6:8.1f} us, fastest {per[lb][0] * 1e6:8.1f}, "
            f"slowest {per[lb][-1] * 1e6:8.1f}" for lb in states), flush=True)
    lines = head + machine.summary() + [
        "| chain | dtype | batch | new: median over depths | new: fastest / slowest | "
        "old: median over depths | old: fastest / slowest | old / new (medians) |",
        "|---|---|---:|---:|---:|---:|---:|---:|"]
    for cname, dtn, k, per, med in rows:
        lines.append(f"| {cname} | {dtn} | {k} | {med['new'] * 1e6:.1f} us | "
                     f"{per['new'][0] * 1e6:.1f} / {per['new'][-1] * 1e6:.1f} us | "
                     f"{med['old'] * 1e6:.1f} us | {per['old'][0] * 1e6:.1f} / "
                     f"{per['old'][-1] * 1e6:.1f} us | {med['old'] / med['new']:.2f} |")
    return _finish(args, lines)


def run_ab(args, overrides: dict, width: int | None = None) -> int:
    what = f"tiles of {width} rows" if width is not None else str(overrides)
    threads = args.threads[0] if width is not None and len(args.threads) == 1 else 1
    machine, rng, head = _start(f"# bench_kernels A/B: new = generator defaults, "
                                f"old = {what}; threads {threads}; product {args.product}")
    set_defaults(threads=threads)
    call = backend_call(args.product)
    adjoint = args.product.startswith("adjoint")
    rows = []
    for cname in args.chains:
        for dtn in args.dtypes:
            op = DeBut.random(ALL_CHAINS[cname], seed=1, dtype=dtn, backend="numba")
            states = {label: (_state_with(op, ov, w, adjoint), ov)
                      for label, ov, w in (("new", {}, None), ("old", overrides, width))}
            for k in args.batches:
                X, Y0 = product_io(args.product, op, k, rng)
                Ys = {lb: np.empty_like(Y0) for lb in states}
                for lb, (st, ov) in states.items():
                    compile_product(args.product, st, k)  # time the chain's kernel
                    with backend_set(ov):
                        call(st, X, Ys[lb])
                scale = np.abs(Ys["old"]).max()
                if np.abs(Ys["new"] - Ys["old"]).max() > 1e-3 * scale:
                    raise AssertionError(f"{cname} {dtn} k={k}: variants disagree")
                times: dict = {lb: [] for lb in states}
                for rd in range(args.rounds):
                    machine.measure(dtn)
                    for lb, (st, ov) in (states.items() if rd % 2 == 0
                                         else list(states.items())[::-1]):
                        Y = Ys[lb]
                        with backend_set(ov):
                            times[lb].append(tmin(lambda: call(st, X, Y), args.budget))
                paired = statistics.median(o / nw for o, nw in zip(times["old"], times["new"]))
                rows.append((cname, dtn, k, op, times, paired))
                print(f"{cname:10s} {dtn:8s} k={k:5d}  new best {min(times['new']) * 1e6:9.1f} us"
                      f"  old best {min(times['old']) * 1e6:9.1f} us  old/new x{paired:.2f}",
                      flush=True)
    lines = head + machine.summary() + [
        "| chain | dtype | batch | new best | old best | old / new (paired median) | "
        "new x roofline (best machine) | old x roofline (best machine) |",
        "|---|---|---:|---:|---:|---:|---:|---:|"]
    for cname, dtn, k, op, times, paired in rows:
        roof = roofline(op, k, machine.best_bw, machine.best_peak[dtn])
        tn, to = min(times["new"]), min(times["old"])
        lines.append(f"| {cname} | {dtn} | {k} | {tn * 1e6:.1f} us | {to * 1e6:.1f} us | "
                     f"{paired:.2f} | {tn / roof:.2f} | {to / roof:.2f} |")
    return _finish(args, lines)


def run_scaling(args, overrides: dict | None = None) -> int:
    """Thread counts against each other, interleaved, per chain, dtype and batch;
    ``overrides`` (``{"backend": {name: value}}``, from ``--ab``) adds each count above
    one with those backend constants set.
    """
    overrides = overrides or {}
    ab = bool(overrides.get("backend"))
    what = f" (--ab: old = {overrides['backend']})" if ab else ""
    machine, rng, head = _start(f"# bench_kernels --scaling: threads {args.threads}"
                                f"{' (--pool-ab)' if args.pool_ab else ''}{what}, "
                                f"product {args.product}, BLAS pinned to one thread")
    # variants: (threads, spinning pool, overrides set); --pool-ab adds the executor for
    # threads > 1, --ab the overrides
    ths = [(th, True, False) for th in args.threads]
    if args.pool_ab:
        ths += [(th, False, False) for th in args.threads if th > 1]
    if ab:
        ths += [(th, True, True) for th in args.threads if th > 1]

    def label(v) -> str:
        th, spin, old = v
        return f"{th} thr" + ("" if th == 1 or not args.pool_ab else
                              (" spin" if spin else " exec")) + (" old" if old else "")

    def timed(v, fn):
        with config(threads=v[0], spin=v[1]), backend_set(overrides if v[2] else {}):
            return fn()

    rows = []
    for cname, dtn, k, op, X, Y in _cases(args, rng):
        debutla.warmup(op, batch=k, layout="cols" if args.product.endswith("cols") else "rows",
                       adjoint=args.product.startswith("adjoint"))  # compile / load
        call = op_call(args.product, op)
        want = call(X, Y).copy()
        for v in ths:
            if not np.array_equal(timed(v, lambda: call(X, Y)), want):
                raise AssertionError(f"{cname} {dtn} k={k}: {label(v)} changes the result")
        times: dict = {v: [] for v in ths}
        for rd in range(args.rounds):
            for v in (ths if rd % 2 == 0 else ths[::-1]):
                times[v].append(timed(v, lambda: tmin(lambda: call(X, Y), args.budget)))
        ups = {v: statistics.median(a / b for a, b in zip(times[ths[0]], times[v]))
               for v in ths}
        # --ab: each old variant's paired ratio over the same thread count's new one
        olds = {v: statistics.median(a / b for a, b in zip(times[v], times[v[:2] + (False,)]))
                for v in ths if v[2]}
        rows.append((cname, dtn, k, times, ups, olds))
        print(f"{cname:10s} {dtn:8s} k={k:5d}  " + "  ".join(
            f"{label(v)} {statistics.median(times[v]) * 1e6:8.1f} us (x{ups[v]:.2f})"
            for v in ths) + "".join(f"  {label(v)}/new x{r:.3f}" for v, r in olds.items()),
            flush=True)
    olds_head = [v for v in ths if v[2]]
    lines = head + [f"load average at end: {os.getloadavg()}", "",
                    "| chain | dtype | batch | " + " | ".join(
                        f"{label(v)}: median (range)" for v in ths)
                    + " | " + " | ".join(f"speed-up {label(v)}" for v in ths[1:])
                    + "".join(f" | {label(v)} / new (paired)" for v in olds_head) + " |",
                    "|---|---|---:|" + "---:|" * (2 * len(ths) - 1 + len(olds_head))]
    for cname, dtn, k, times, ups, olds in rows:
        cells = [f"{statistics.median(times[v]) * 1e6:.1f} us ({min(times[v]) * 1e6:.0f}-"
                 f"{max(times[v]) * 1e6:.0f})" for v in ths]
        cells += [f"{ups[v]:.2f}x" for v in ths[1:]]
        cells += [f"{olds[v]:.3f}" for v in olds_head]
        lines.append(f"| {cname} | {dtn} | {k} | " + " | ".join(cells) + " |")
    return _finish(args, lines)


if __name__ == "__main__":
    sys.exit(main())
