"""The ``debutla`` command line (also ``python -m debutla``).

Sub-commands::

    debutla factorize W.npy|W.npz[:key]|W.safetensors:key --chain auto|"<chain>" -o out.npz
    debutla info FILE|"<chain>"
    debutla design M N [--kind ...] [--max-params N] [--plot out.png]
    debutla bench [--chain ...] [--batch 1,256] [--threads N]
    debutla demo
    debutla compress MODEL.pt -o OUT.pt --layer NAME[=SPEC] ... (needs PyTorch)
    debutla --version

Bad input (a missing file, an unknown key, a malformed chain, wrong shapes) prints one
line on stderr and exits with code 2; no traceback (``--debug`` shows one).  Messages
from the library (e.g. a long kernel compile) go to stderr through the ``debutla``
logger.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from typing import Any, Callable, NoReturn, Sequence

import numpy as np

__all__ = ["main", "build_parser", "run_demo", "run_bench", "CLIError"]

_EXIT_USAGE = 2


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message (see prog --help)``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(_EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------

def _db():
    """The ``debutla`` package (looked up at call time, so tests can patch it)."""
    import debutla

    return debutla


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (which tests and callers may swap)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _Prefixed(logging.Formatter):
    """``debutla: `` before each message that does not start with it (the library's own
    messages do, for Python's last-resort handler).
    """

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if msg.startswith("debutla: ") else "debutla: " + msg


def _setup_logging() -> None:
    """Show the library's INFO messages (e.g. kernel compiles) on stderr, once."""
    log = logging.getLogger("debutla")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        h = _StderrHandler(sys.stderr)
        h.setFormatter(_Prefixed())
        log.addHandler(h)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)


def _positive_int(text: str) -> int:
    try:
        v = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _unit_real(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return v


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas (e.g. 1,16,256), got {text!r}")
    return vals


def _range(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected K or K1-K2 (e.g. 2-8), got {text!r}")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    if lo < 1 or hi < lo:
        raise argparse.ArgumentTypeError(f"expected 1 <= K1 <= K2, got {text!r}")
    return lo, hi


def _chain_arg(text: str):
    """A chain from the paper's notation or a :data:`debutla.PAPER_CHAINS` name."""
    db = _db()
    if text in db.PAPER_CHAINS:
        return db.Chain.parse(db.PAPER_CHAINS[text])
    try:
        return db.Chain.parse(text)
    except ValueError as e:
        raise CLIError(f"invalid chain {text!r}: {e}") from None


def _plot_module():
    try:
        from .. import plot
        plot._figure_class()
    except ImportError as e:
        raise CLIError(str(e)) from None
    return plot


def _save_figure(fig: Any, path: str) -> None:
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot write the picture {path!r}: {e}") from None


# ---------------------------------------------------------------------------------------
# reading matrices
# ---------------------------------------------------------------------------------------

_SUFFIXES = (".npy", ".npz", ".safetensors")
_SPEC = re.compile(r"^(?P<path>.*?\.(?:npy|npz|safetensors))(?::(?P<key>.*))?$", re.I)


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``"W.npz:key"`` -> ``("W.npz", "key")``; a path that exists is taken whole."""
    if os.path.exists(spec):
        return spec, None
    m = _SPEC.match(spec)
    if not m:
        raise CLIError(f"{spec!r}: expected a .npy, .npz or .safetensors file "
                       f"(optionally FILE.npz:KEY or FILE.safetensors:KEY)")
    return m.group("path"), m.group("key")


class _ArrayFile:
    """The arrays of a .npy, .npz or .safetensors file, read lazily one at a time.

    A large checkpoint is never loaded whole: listing reads only headers for
    .safetensors, and :meth:`get` reads one array.  A .npy file has the single key "".
    """

    def __init__(self, path: str) -> None:
        if not os.path.exists(path):
            raise CLIError(f"{path}: no such file")
        if os.path.isdir(path):
            raise CLIError(f"{path}: is a directory, not a file")
        low = path.lower()
        self.path = path
        self.kind = next((sfx for sfx in _SUFFIXES if low.endswith(sfx)), None)
        if self.kind is None:
            raise CLIError(f"{path}: unsupported file type; expected .npy, .npz or "
                           f".safetensors")
        if self.kind == ".safetensors":
            try:
                from safetensors import safe_open
            except ImportError:
                raise CLIError(f"{path}: reading .safetensors files needs the safetensors "
                               f"package: pip install safetensors") from None
            self._safe_open = safe_open
        self.keys: list[str] = self._guard(self._keys)

    def _guard(self, fn: Callable[..., Any], *a: Any) -> Any:
        try:
            return fn(*a)
        except CLIError:
            raise
        except Exception as e:  # damaged or foreign files: zipfile, npy header, safetensors
            raise CLIError(f"{self.path}: cannot read the file ({type(e).__name__}: "
                           f"{e})") from None

    def _keys(self) -> list[str]:
        if self.kind == ".npy":
            np.load(self.path, mmap_mode="r", allow_pickle=False)  # checks the header
            return [""]
        if self.kind == ".npz":
            with np.load(self.path, allow_pickle=False) as z:
                return list(z.files)
        with self._safe_open(self.path, framework="np") as f:
            return list(f.keys())

    def _get(self, key: str) -> np.ndarray:
        if self.kind == ".npy":
            return np.load(self.path, allow_pickle=False)
        if self.kind == ".npz":
            with np.load(self.path, allow_pickle=False) as z:
                return z[key]
        with self._safe_open(self.path, framework="np") as f:
            return f.get_tensor(key)

    def get(self, key: str) -> np.ndarray:
        """The array named ``key``."""
        return self._guard(self._get, key)

    def _shape_dtype(self, key: str) -> tuple[tuple[int, ...], str]:
        if self.kind == ".safetensors":
            with self._safe_open(self.path, framework="np") as f:
                sl = f.get_slice(key)
                return tuple(sl.get_shape()), str(sl.get_dtype())
        if self.kind == ".npy":
            a = np.load(self.path, mmap_mode="r", allow_pickle=False)
            return a.shape, str(a.dtype)
        a = self._get(key)
        return a.shape, str(a.dtype)

    def shape_dtype(self, key: str) -> tuple[tuple[int, ...], str]:
        """Shape and dtype of ``key`` (headers only for .safetensors and .npy)."""
        return self._guard(self._shape_dtype, key)


def _read_matrix(spec: str) -> tuple[np.ndarray, str]:
    """The 2-D matrix named by ``spec`` and a label for it."""
    path, key = _split_spec(spec)
    f = _ArrayFile(path)
    if f.kind == ".npy":
        if key is not None:
            raise CLIError(f"{path}: a .npy file holds one array; drop ':{key}'")
        A, label = f.get(""), path
    else:
        if not f.keys:
            raise CLIError(f"{path}: the file holds no arrays")
        if key is None:
            if len(f.keys) > 1:
                names = ", ".join(f.keys[:8]) + (", ..." if len(f.keys) > 8 else "")
                raise CLIError(f"{path} holds {len(f.keys)} arrays ({names}); name one as "
                               f"{path}:KEY (debutla info {path} lists them)")
            key = f.keys[0]
        if key not in f.keys:
            close = [k for k in f.keys if key.lower() in k.lower()][:5]
            hint = f"; did you mean {', '.join(close)}?" if close else \
                f"; debutla info {path} lists the {len(f.keys)} keys"
            raise CLIError(f"{path}: no array named {key!r}{hint}")
        A, label = f.get(key), f"{path}:{key}"
    A = np.asarray(A)
    if A.ndim != 2:
        raise CLIError(f"{label}: expected a 2-D matrix, got shape {A.shape}"
                       + ("; reshape it to 2-D first (e.g. a conv weight to "
                          "(out_channels, -1))" if A.ndim > 2 else ""))
    if A.dtype.kind not in "biufc":
        raise CLIError(f"{label}: expected a numeric matrix, got dtype {A.dtype}")
    return A, label


# ---------------------------------------------------------------------------------------
# sub-commands
# ---------------------------------------------------------------------------------------

def _cmd_factorize(args: argparse.Namespace) -> int:
    db = _db()
    W, label = _read_matrix(args.input)
    if W.size == 0:
        raise CLIError(f"{label}: the matrix is empty (shape {W.shape})")
    plot = _plot_module() if args.plot else None
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise CLIError(f"-o {args.output}: the folder {out_dir} does not exist")
    chain: Any = args.chain
    if chain.strip().lower() != "auto":
        chain = _chain_arg(chain)
    kwargs: dict[str, Any] = {}
    if args.max_params is not None:
        kwargs["max_params"] = args.max_params
    if args.rel_error is not None:
        kwargs["rel_error"] = args.rel_error
    t0 = time.perf_counter()
    try:
        op, info = db.factorize(W, chain, method=args.method, seed=args.seed,
                                return_info=True, progress=not args.quiet, **kwargs)
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None
    seconds = time.perf_counter() - t0
    try:
        db.save(op, args.output)
    except OSError as e:
        raise CLIError(f"cannot write {args.output}: {e}") from None
    m, n = W.shape
    nnz = int(op.chain.nnz)
    svd_err, rank = float(info.svd_rel_error), int(info.svd_rank)
    rel = float(info.rel_error)
    lines = [
        f"input       {label}  {m}x{n} {W.dtype}",
        f"chain       {op.chain}",
        f"            ({'dense' if op.chain.is_dense else 'not dense'}, {op.chain.kind}, "
        f"{len(op.chain)} factors"
        + (f", padded to {op.chain.shape[0]}x{op.chain.shape[1]}"
           if op.chain.shape != (m, n) else "") + ")",
        f"parameters  {nnz:,} of {m * n:,} (compression {1 - nnz / (m * n):.2%})",
        f"rel. error  {rel:.4g}  (DeBut, method {info.method}"
        + (f", {info.sweeps} sweeps, stopped: {info.stop_reason}" if info.sweeps else "")
        + ")",
        f"SVD error   {svd_err:.4g}  (truncated SVD of rank {rank}, same parameters)",
        f"time        {seconds:.2f} s",
        f"saved       {args.output}",
    ]
    if svd_err < rel:
        lines.append("note        a truncated SVD of the same size fits this matrix better")
    print("\n".join(lines))
    if plot is not None:
        fig = plot.plot_tradeoff([{"params": nnz, "debut_error": rel, "svd_error": svd_err,
                                   "label": f"{len(op.chain)} factors"}],
                                 dense_params=m * n, title=_short(label) + f": {m}x{n}")
        ax = fig.axes[0]
        s = np.linalg.svd(np.asarray(W, dtype=np.float64 if not np.iscomplexobj(W)
                                     else np.complex128), compute_uv=False)
        tail = np.sqrt(np.maximum(np.cumsum((s ** 2)[::-1])[::-1], 0) / max(np.sum(s ** 2),
                                                                            1e-300))
        ks = np.arange(1, len(s))
        ks = ks[ks * (m + n) <= m * n]  # low rank stops paying at the dense size
        ax.plot(ks * (m + n), tail[ks], "-", color="C1", lw=0.8, alpha=0.6,
                label="truncated SVD, every rank")
        ax.legend(fontsize=8)
        _save_figure(fig, args.plot)
        print(f"picture     {args.plot}")
    return 0


def _short(label: str, width: int = 60) -> str:
    """``label`` with the folders dropped and, if still long, its middle elided."""
    path, sep, key = label.partition(":") if not os.path.exists(label) else (label, "", "")
    text = os.path.basename(path) + sep + key
    return text if len(text) <= width else text[: width // 2 - 2] + "..." + text[-(width // 2 - 1):]


def _describe_arrays(f: _ArrayFile) -> str:
    lines = [f"{f.path}: {len(f.keys)} arrays (not a debutla operator file)"]
    width = max((len(k) for k in f.keys), default=0)
    for k in f.keys:
        shape, dtype = f.shape_dtype(k)
        text = "x".join(map(str, shape)) or "scalar"
        lines.append(f"  {k:<{width}}  {text:>12}  {dtype}")
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    db = _db()
    target = args.target
    looks_like_file = os.path.exists(target) or target.lower().endswith(_SUFFIXES) or \
        bool(_SPEC.match(target))
    if not looks_like_file:
        print(_chain_arg(target).summary())
        return 0
    path, key = _split_spec(target)
    if not os.path.exists(path):
        raise CLIError(f"{path}: no such file")
    if path.lower().endswith(".npz") and key is None:
        try:
            op = db.load(path)
        except db.DeButFileError:
            op = None
        except OSError as e:
            raise CLIError(f"{path}: {e}") from None
        if op is not None:
            m, n = op.shape
            c = op.chain
            print(f"{path}: DeBut operator, {os.path.getsize(path):,} bytes on disk\n"
                  f"chain        {c}\n"
                  f"shape        {m}x{n}"
                  + (f" (chain {c.shape[0]}x{c.shape[1]}, zero-padded)"
                     if c.shape != (m, n) else "") + "\n"
                  f"dtype        {op.dtype}\n"
                  f"factors      {len(c)} ({'dense' if c.is_dense else 'not dense'}, "
                  f"{c.kind})\n"
                  f"parameters   {op.nnz:,} of {m * n:,} dense "
                  f"(compression {1 - op.nnz / (m * n):.2%}, {op.nbytes:,} bytes)")
            return 0
    if key is not None:
        A, label = _read_matrix(target)
        print(f"{label}: {'x'.join(map(str, A.shape))} {A.dtype}")
        return 0
    f = _ArrayFile(path)
    if f.kind == ".npy":
        shape, dtype = f.shape_dtype("")
        print(f"{path}: one array, {'x'.join(map(str, shape))} {dtype}")
    else:
        print(_describe_arrays(f))
    return 0


def _design_candidates(m: int, n: int, kind: str, lo: int, hi: int) -> list:
    db = _db()
    found = {}
    for k in range(lo, hi + 1):
        try:
            c = db.design_chain(m, n, kind, n_factors=k)
        except ValueError:
            continue
        found[len(c)] = c
    try:
        best = db.design_chain(m, n, kind)
    except ValueError:
        best = None
    if best is not None and len(best) not in found and lo <= len(best) <= hi:
        found[len(best)] = best
    return [found[k] for k in sorted(found)]


def _cmd_design(args: argparse.Namespace) -> int:
    m, n = args.m, args.n
    lo, hi = args.factors
    plot = _plot_module() if args.plot else None
    try:
        cands = _design_candidates(m, n, args.kind, lo, hi)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not cands:
        raise CLIError(f"no {args.kind} chain with {lo}-{hi} factors serves {m}x{n}; "
                       f"try --kind any or another --factors range")
    dense = m * n
    if args.max_params is not None:
        within = [c for c in cands if c.nnz <= args.max_params]
        pick = max(within, key=lambda c: (c.nnz, -len(c))) if within else None
        why = f"most parameters within --max-params {args.max_params:,}"
    else:
        pick = min(cands, key=lambda c: (c.nnz, len(c)))
        why = "fewest parameters"
    print(f"{m}x{n} ({dense:,} values dense), {args.kind} chains:")
    print(f"  {'factors':>7}  {'parameters':>11}  {'compression':>11}  {'flops/vector':>12}  "
          f"{'size':>11}  chain")
    for c in cands:
        mark = "*" if c is pick else " "
        size = f"{c.shape[0]}x{c.shape[1]}"
        print(f"{mark} {len(c):>7}  {c.nnz:>11,}  {1 - c.nnz / dense:>11.2%}  "
              f"{c.flops():>12,}  {size:>11}  {c}")
    if pick is None:
        smallest = min(c.nnz for c in cands)
        print(f"debutla design: no candidate has at most {args.max_params:,} parameters "
              f"(the smallest has {smallest:,})", file=sys.stderr)
        return 1
    print(f"* = {why}.  Fewer factors: faster to apply, more parameters.  A size above "
          f"{m}x{n} means zero padding.")
    if plot is not None:
        _save_figure(plot.plot_chain(pick), args.plot)
        print(f"picture: {args.plot} (the chain marked *)")
    return 0


def run_bench(chain: Any = None, batches: Sequence[int] = (1, 256), *,
              dtype: Any = np.float32, repeats: int = 9, min_time: float = 0.02,
              out: Callable[[str], object] = print, header: bool = True) -> list[dict]:
    """Time ``X @ op.T`` against the dense ``X @ W.T`` on this machine.

    The kernels of the batch sizes are loaded (or compiled) first, untimed
    (:func:`debutla.warmup`), so the timings are those of the kernels every later
    product runs on.

    Parameters
    ----------
    chain : Chain or str, optional
        Default: the DeBut paper's VGG chain (``PAPER_CHAINS["vgg_512x4608_mono"]``).
    batches : sequence of int
        Batch sizes (rows of ``X``).
    dtype : float32 or float64
    repeats, min_time :
        Passed to :func:`debutla._timing.compare` (interleaved rounds).
    out : callable
        Receives each output line.
    header : bool
        Print the chain and thread lines first.

    Returns
    -------
    list of dict
        One per batch: ``batch``, ``debut`` and ``dense`` (:class:`~debutla._timing.Timing`),
        ``speedup`` (ratio of the medians).

    Examples
    --------
    >>> rows = run_bench("16 <-(4,4,4)- 16 <-(4,4,1)- 16", [1], repeats=3, min_time=1e-3,
    ...                  out=lambda s: None)
    >>> rows[0]["batch"], rows[0]["speedup"] > 0
    (1, True)
    """
    from .. import _timing

    db = _db()
    chain = db.Chain.parse(db.PAPER_CHAINS["vgg_512x4608_mono"]) if chain is None else \
        (chain if isinstance(chain, db.Chain) else db.Chain.parse(chain))
    op = db.DeBut.random(chain, seed=0, dtype=dtype)
    W = op.to_dense()
    m, n = op.shape
    rng = np.random.default_rng(1)
    if header:
        out(f"chain: {chain}")
        out(f"       {m}x{n}, {chain.nnz:,} parameters (compression "
            f"{chain.compression:.2%}), {np.dtype(dtype).name}, X @ op.T against X @ W.T")
        out(_timing.describe_threads())
    # the products timed run on the kernels users get once they are ready: without
    # this, the first second's products would run on the NumPy reference backend while
    # Numba loads, and those of a new chain on the generic kernel while it compiles
    secs = db.warmup(op, batch=batches, layout="rows", adjoint=False)
    if secs >= 1.0:
        out(f"(kernels loaded and compiled in {secs:.1f} s before timing; "
            f"kept in the kernel cache)")
    out(f"{'batch':>6}  {'DeBut median':>13} {'spread':>7}  {'dense median':>13} "
        f"{'spread':>7}  {'speed-up':>8}")
    rows = []
    timings = []
    for b in batches:
        X = np.ascontiguousarray(rng.standard_normal((b, n)).astype(dtype))
        res = _timing.compare({"DeBut": lambda: X @ op.T, "dense": lambda: X @ W.T},
                              repeats=repeats, min_time=min_time)
        d, w = res["DeBut"], res["dense"]
        timings += [d, w]
        sp = w.median / d.median
        rows.append({"batch": b, "debut": d, "dense": w, "speedup": sp})
        out(f"{b:>6}  {_timing.format_seconds(d.median):>13} {d.spread:>6.0%}  "
            f"{_timing.format_seconds(w.median):>13} {w.spread:>6.0%}  {sp:>7.1f}x")
    out(f"medians of {repeats} interleaved rounds; spread = interquartile range / median")
    warn = _timing.busy_warning(timings)
    if warn:
        out(warn)
    return rows


def _cmd_bench(args: argparse.Namespace) -> int:
    chain = _chain_arg(args.chain) if args.chain else None
    dtype = np.dtype(args.dtype)
    if args.threads is None:
        run_bench(chain, args.batch, dtype=dtype, repeats=args.repeats)
        return 0
    import numba

    # numba.config sets its settings at import time; its stubs do not declare them
    most = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    if args.threads > most:
        raise CLIError(f"--threads {args.threads}: Numba was started with at most {most} "
                       f"threads on this machine (set NUMBA_NUM_THREADS to allow more)")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
        print("debutla bench: threadpoolctl is not installed, so the BLAS thread count "
              "is left as it is (pip install threadpoolctl)", file=sys.stderr)
    old = numba.get_num_threads()
    numba.set_num_threads(args.threads)
    try:
        if threadpool_limits is not None:
            with threadpool_limits(limits=args.threads, user_api="blas"):
                run_bench(chain, args.batch, dtype=dtype, repeats=args.repeats)
        else:
            run_bench(chain, args.batch, dtype=dtype, repeats=args.repeats)
    finally:
        numba.set_num_threads(old)
    return 0


def run_demo(out: Callable[[str], object] = print, fit: bool = True,
             repeats: int = 9) -> int:
    """The main demo: the paper's VGG chain as an operator, checked and timed.

    Builds the 512x4608 chain of the DeBut paper, draws a seeded random operator,
    checks ``op @ X`` against its dense matrix, prints the chain in the paper's notation,
    its parameters and compression, and times ``X @ op.T`` against the dense product at
    batch 1 and 256 (medians of interleaved rounds, their spread, the thread counts, and
    a warning when the machine looks busy).  Then, with ``fit``, fits a noisy DeBut
    product and a Hadamard matrix and compares with a truncated SVD of equal size.

    Returns
    -------
    int
        0 on success, 1 if the check fails.

    Examples
    --------
    >>> lines = []
    >>> run_demo(out=lines.append, fit=False, repeats=3)
    0
    >>> any(line.startswith("check:") and "ok" in line for line in lines)
    True
    """
    db = _db()
    chain = db.Chain.parse(db.PAPER_CHAINS["vgg_512x4608_mono"])
    out("debutla demo: the DeBut paper's VGG-16 CONV chain (512 x 4608)")
    out(chain.summary())
    op = db.DeBut.random(chain, seed=0, dtype=np.float32)
    W = op.to_dense()
    rng = np.random.default_rng(1)
    X = rng.standard_normal((256, chain.shape[1])).astype(np.float32)
    Y = X @ op.T
    ref = X @ W.T
    err = float(np.linalg.norm(Y - ref) / np.linalg.norm(ref))
    ok = err < 1e-5
    out(f"check: ||X @ op.T - X @ W.T|| / ||X @ W.T|| = {err:.2e} "
        f"({'ok' if ok else 'FAILED'}, float32)")
    out("")
    out("speed on this machine:")
    run_bench(chain, (1, 256), dtype=np.float32, repeats=repeats, out=out, header=False)
    from .. import _timing

    out(_timing.describe_threads())
    if fit:
        from ..fit.demo import run_fit_demo

        out("")
        run_fit_demo(out=out)
    return 0 if ok else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(fit=not args.no_fit, repeats=args.repeats)


# ---------------------------------------------------------------------------------------
# the parser
# ---------------------------------------------------------------------------------------

def _version() -> str:
    db = _db()
    import scipy

    try:
        import numba

        nb = f", numba {numba.__version__}"
    except ImportError:  # pragma: no cover - numba is a dependency
        nb = ""
    return f"debutla {db.__version__} (numpy {np.__version__}, scipy {scipy.__version__}{nb})"


def build_parser() -> argparse.ArgumentParser:
    """The ``debutla`` argument parser."""
    parser = _Parser(
        prog="debutla",
        description="Deformable Butterfly (DeBut) matrices: compress a dense matrix into "
                    "a product of structured sparse factors, inspect chains, time them.",
        epilog="Chains use the DeBut paper's notation, output <- input: "
               "'16 <-(4,4,4)- 16 <-(4,32,1)- 128'.  Exit codes: 0 ok, 1 failed, 2 bad input.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true",
                        help="show a traceback instead of a one-line error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "factorize", help="fit a dense matrix with a DeBut chain and save it",
        description="Fit a dense matrix with a DeBut product and save it as .npz.  Prints "
                    "the relative error beside that of a truncated SVD with the same "
                    "number of parameters.")
    p.add_argument("input", metavar="INPUT",
                   help="W.npy, W.npz[:KEY] or W.safetensors:KEY (debutla info FILE lists "
                        "the keys)")
    p.add_argument("--chain", default="auto",
                   help="'auto' (default: designed for the shape) or a chain in the "
                        "paper's notation, or a PAPER_CHAINS name")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-params", type=_positive_int, metavar="N",
                        help="design the chain to store at most N values")
    budget.add_argument("--rel-error", type=_unit_real, metavar="E",
                        help="design the smallest chain reaching relative error E")
    p.add_argument("--method", choices=("auto", "hierarchical", "als"), default="auto",
                   help="fitting method (default auto: hierarchical, then ALS sweeps)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.npz",
                   help="where to save the fitted operator")
    p.add_argument("--plot", metavar="OUT.png",
                   help="also draw the error against parameters (needs matplotlib)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_factorize)

    p = sub.add_parser(
        "info", help="describe a saved operator, a data file or a chain",
        description="Describe a DeBut operator file (chain, shape, dtype, parameters, "
                    "compression), list the arrays of a .npz/.npy/.safetensors file, or "
                    "summarise a chain given in the paper's notation.")
    p.add_argument("target", metavar="FILE|CHAIN",
                   help="a file, or a chain such as '16 <-(4,4,4)- 16 <-(4,32,1)- 128'")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "design", help="candidate chains for an M x N matrix",
        description="List dense DeBut chains for an M x N matrix, one per factor count, "
                    "with parameters, compression and cost per vector.")
    p.add_argument("m", type=_positive_int, metavar="M", help="rows (output size)")
    p.add_argument("n", type=_positive_int, metavar="N", help="columns (input size)")
    p.add_argument("--kind", choices=("monotonic", "bulging", "any"), default="monotonic",
                   help="shape of the intermediate sizes (default monotonic)")
    p.add_argument("--factors", type=_range, default=(2, 8), metavar="K1-K2",
                   help="factor counts to try (default 2-8)")
    p.add_argument("--max-params", type=_positive_int, metavar="N",
                   help="mark the best chain storing at most N values")
    p.add_argument("--plot", metavar="OUT.png",
                   help="draw the marked chain's factor supports (needs matplotlib)")
    p.set_defaults(func=_cmd_design)

    p = sub.add_parser(
        "bench", help="this machine's speed: DeBut against dense",
        description="Time X @ op.T against the dense X @ W.T: medians of interleaved "
                    "rounds, their spread, the thread counts, and a warning when the "
                    "machine looks busy.")
    p.add_argument("--chain", help="chain in the paper's notation or a PAPER_CHAINS name "
                                   "(default: vgg_512x4608_mono)")
    p.add_argument("--batch", type=_int_list, default=[1, 16, 256], metavar="B1,B2,...",
                   help="batch sizes (default 1,16,256)")
    p.add_argument("--threads", type=_positive_int, metavar="T",
                   help="Numba and BLAS threads (default: as configured)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--repeats", type=_positive_int, default=9, metavar="R",
                   help="interleaved rounds (>= 3, default 9)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="build the paper's VGG chain, check it, time it, fit",
                       description="Build the paper's VGG chain, check it against its "
                                   "dense matrix, time it, then fit two matrices.")
    p.add_argument("--no-fit", action="store_true", help="skip the factorization demo")
    p.add_argument("--repeats", type=_positive_int, default=9, metavar="R",
                   help="interleaved timing rounds (>= 3, default 9)")
    p.set_defaults(func=_cmd_demo)

    from .compress import add_parser as add_compress  # here: it imports this module

    add_compress(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``debutla`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return _EXIT_USAGE
    if getattr(args, "repeats", 9) < 3:
        parser.error(f"--repeats must be at least 3, got {args.repeats}")
    _setup_logging()
    prog = f"debutla {args.command}"
    try:
        return int(args.func(args))
    except CLIError as e:
        if args.debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return _EXIT_USAGE
    except (ValueError, TypeError) as e:  # the library's argument errors
        if args.debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return _EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{prog}: error: out of memory", file=sys.stderr)
        return 1
    except Exception as e:  # pragma: no cover - a bug: one line, and how to see more
        if args.debug:
            raise
        print(f"{prog}: internal error: {type(e).__name__}: {e} (rerun with --debug for "
              f"the traceback and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
