"""Numba backend: fused whole-chain CPU kernels generated per chain.

How a product is computed
-------------------------
For every chain the backend generates a small kernel module with all sizes baked in as
unsigned constants (:mod:`debutla.backends._numba_codegen`), writes it to the kernel cache
directory and imports it, so ``numba.njit(cache=True)`` keeps the machine code across
processes.  Three kernels serve all products:

* **one row at a time** (batches of one or two rows, matvec): the whole chain runs on one
  vector held in two ping-pong scratch vectors, vectorised over the diagonal index ``t``
  (or, for ``t = 1`` factors with ``r >= 4``, over the ``r`` outputs of a block);
* **tiles of W rows or columns** (larger batches): a tile is gathered features-major into
  a ``(features x W)`` scratch block so every inner loop runs over the ``W`` contiguous
  columns of the tile; the chain is applied factor after factor between two scratch
  blocks that stay in L1/L2, and the tile is scattered to the output.  ``W`` is 64
  float32 values (256 bytes per feature; 32 for float64/complex64, 16 for complex128),
  halved while the two blocks, weighted by the number of factors (``N / 6``, at least 1),
  exceed :data:`FUSED_BYTES`; a partial tile computes only its columns (rounded up to
  ``W / 4``);
* **factor by factor** (small chains, below :data:`CODEGEN_MIN_NNZ` values, until a
  call is big enough to pay for compiling; a chain too wide for a fused pass even with
  the narrowest tile; fused kernels switched off with :func:`set_fused`): a precompiled
  generic kernel with run-time sizes applies one
  factor at a time to a panel of columns, reading the input and writing the output in
  their own layouts, with two ping-pong buffers and no transposes.

Threads
-------
Work of at least :data:`PARALLEL_MIN_WORK` multiply-adds is split into contiguous ranges
of tiles, one per thread, run on a persistent pool of Python threads calling the
``nogil`` kernels; smaller work runs in the calling thread (a parallel region costs more
than it saves there).  The thread count follows Numba's (``numba.get_num_threads()``,
i.e. ``NUMBA_NUM_THREADS``) unless :func:`set_num_threads` or ``DEBUTLA_NUM_THREADS``
says otherwise.  The kernels never call BLAS, so they cannot oversubscribe with it; when
timing them next to BLAS calls, limit BLAS with ``threadpoolctl`` (see
``docs/performance.rst``).

First call and caching
----------------------
The first product of a chain and dtype in a fresh cache compiles the kernel it needs
(1.4-5.5 s measured on 2 cores, see ``docs/performance.rst``); later processes load it
from the cache (0.15-0.3 s).  The cache
lives in ``$DEBUTLA_CACHE_DIR/numba`` (default ``~/.cache/debutla/numba``).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from . import _numba_codegen as _cg
from ._numba_generic import chain_panels as _chain_panels

__all__ = [
    "name", "xp", "prepare", "apply_rows", "apply_cols", "set_num_threads",
    "get_num_threads", "set_fused", "kernel_source", "FUSED_BYTES", "PARALLEL_MIN_WORK",
    "CODEGEN_MIN_NNZ", "CODEGEN_MIN_WORK",
]

name = "numba"
xp = np

#: Largest size in bytes of the two scratch blocks of a fused tile (else a narrower tile,
#: and below the narrowest one the factor-by-factor kernel).
FUSED_BYTES = 3 * 2**19
#: Multiply-adds (``nnz * batch``) from which a product is split over threads.
PARALLEL_MIN_WORK = 1_000_000
#: Chains with fewer values than this use the generic (precompiled) kernels until one
#: call's work (``nnz * batch``) reaches :data:`CODEGEN_MIN_WORK`: a generated kernel
#: costs 1-3 s to compile, which such small products never pay back.
CODEGEN_MIN_NNZ = 4096
CODEGEN_MIN_WORK = 2**17
_MIN_W = 4
_ROWS_SINGLE_MAX = 2  # batches up to this run one row at a time (else tiles)
_FALLBACK_PANEL_BYTES = 8 * 2**20

_settings = {"threads": None, "fused": True}
_ONE = np.uint64(1)
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_tls = threading.local()


# -- settings -------------------------------------------------------------------------
def set_num_threads(n: int | None) -> None:
    """Set the number of threads the Numba backend uses (None: follow Numba).

    Parameters
    ----------
    n : int or None
        A positive thread count, or None to follow ``numba.get_num_threads()`` (the
        ``DEBUTLA_NUM_THREADS`` environment variable, if set, is read at import).

    Raises
    ------
    TypeError
        If ``n`` is not an int or None.
    ValueError
        If ``n`` is not positive.
    """
    if n is None:
        _settings["threads"] = None
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: n must be a positive int or None, got {n!r}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n}")
    _settings["threads"] = int(n)


def get_num_threads() -> int:
    """The number of threads the Numba backend uses for large products."""
    n = _settings["threads"]
    if n is None:
        n = numba.get_num_threads()  # called from Python, never inside a kernel
    return max(1, int(n))


def set_fused(enabled: bool) -> None:
    """Switch the fused whole-chain kernels on (default) or off.

    Off, every product uses the factor-by-factor kernel: useful to compare the two and
    to test the fallback.

    Raises
    ------
    TypeError
        If ``enabled`` is not a bool.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"set_fused: enabled must be a bool, got {enabled!r}")
    _settings["fused"] = enabled


def _init_from_env() -> None:
    env = os.environ.get("DEBUTLA_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"DEBUTLA_NUM_THREADS must be a positive integer, "
                             f"got {env!r}") from None
        set_num_threads(n)


_init_from_env()


# -- state ----------------------------------------------------------------------------
class _State:
    """Prepared values of one operator and dtype (immutable once built)."""

    __slots__ = ("shapes", "dtype", "panel", "vec", "dims", "Q", "P", "F", "nnz", "W",
                 "_mod", "_lock")

    def __init__(self, factors) -> None:
        self.shapes = tuple(tuple(int(d) for d in V.shape) for V in factors)
        self.dtype = factors[0].dtype
        self.panel = tuple(np.ascontiguousarray(V).reshape(-1) for V in factors)
        vec = []
        for V, flat in zip(factors, self.panel):
            if _cg.vec_transposed(V.shape):
                vec.append(np.ascontiguousarray(V[..., 0].transpose(0, 2, 1)).reshape(-1))
            else:
                vec.append(flat)
        self.vec = tuple(vec)
        self.dims = np.array(self.shapes, dtype=np.uint64).reshape(-1, 4)
        self.Q = self.shapes[0][0] * self.shapes[0][2] * self.shapes[0][3]
        self.P = self.shapes[-1][0] * self.shapes[-1][1] * self.shapes[-1][3]
        self.F = max(max(nb * r * t, nb * s * t) for nb, r, s, t in self.shapes)
        self.nnz = sum(nb * r * s * t for nb, r, s, t in self.shapes)
        item = self.dtype.itemsize
        # 256 bytes per feature, halved while the two blocks, weighted by how many
        # factors sweep them per tile (N / 6, at least 1), exceed FUSED_BYTES
        W = max(_MIN_W, 256 // item)
        sweeps = max(1.0, len(self.shapes) / 6)
        while W > _MIN_W and 2 * self.F * W * item * sweeps > FUSED_BYTES:
            W //= 2
        self.W = W
        self._mod = None
        self._lock = threading.Lock()

    @property
    def fused(self) -> bool:
        return _settings["fused"] and 2 * self.F * self.W * self.dtype.itemsize <= 4 * FUSED_BYTES

    def module(self):
        if self._mod is None:
            with self._lock:
                if self._mod is None:
                    self._mod = _cg.kernel_module(self.shapes, self.W)
        return self._mod


def prepare(factors):
    """Flatten the values for the kernels (and transpose ``t = 1, r >= 4`` factors).

    Parameters
    ----------
    factors : tuple of numpy.ndarray
        Canonical ``(nb, r, s, t)`` values, application order, one common dtype.
    """
    if len(factors) == 0:
        raise ValueError("prepare: factors must hold at least one array")
    return _State(tuple(factors))


def kernel_source(factors_or_shapes, dtype=np.float32) -> str:
    """The generated kernel source for a chain (for reading; the backend writes it itself).

    Parameters
    ----------
    factors_or_shapes : sequence of arrays or of ``(nb, r, s, t)`` tuples
    dtype : dtype
        Decides the tile width.
    """
    shapes = [tuple(getattr(f, "shape", f)) for f in factors_or_shapes]
    st = _State(tuple(np.zeros(sh, dtype=dtype) for sh in shapes))
    return _cg.generate_source(st.shapes, st.W)


# -- scratch and threads --------------------------------------------------------------
def _scratch(dtype: np.dtype, size: int):
    """Two per-thread scratch buffers of at least ``size`` entries (reused across calls)."""
    cache = getattr(_tls, "bufs", None)
    if cache is None:
        cache = _tls.bufs = {}
    key = dtype.str
    pair = cache.get(key)
    if pair is None or pair[0].size < size:
        pair = (np.zeros(size, dtype=dtype), np.zeros(size, dtype=dtype))
        cache[key] = pair
    return pair


def _get_pool(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < n:
            # the old pool is left to finish what other threads may still be submitting
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="debutla-numba")
            _pool_size = n
        return _pool


def _reset_pool_after_fork() -> None:
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool_after_fork)


def _run_split(fn, ntasks: int, work: int) -> None:
    """Run ``fn(lo, hi)`` over ``range(ntasks)``, split across threads when worth it."""
    if work < PARALLEL_MIN_WORK or ntasks < 2:
        fn(0, ntasks)
        return
    nth = min(get_num_threads(), ntasks)
    if nth <= 1:
        fn(0, ntasks)
        return
    bounds = [ntasks * i // nth for i in range(nth + 1)]
    pool = _get_pool(nth - 1)
    futs = [pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, nth)]
    err = None
    try:
        fn(bounds[0], bounds[1])
    except BaseException as e:  # still wait for the workers before raising
        err = e
    for f in futs:
        try:
            f.result()
        except BaseException as e:
            err = err or e
    if err is not None:
        raise err


# -- products -------------------------------------------------------------------------
def _prep_io(state: _State, X, out, shape_out):
    dt = state.dtype
    if X.dtype != dt or not X.flags.c_contiguous:
        X = np.ascontiguousarray(X, dtype=dt)
    if out is None:
        return X, np.empty(shape_out, dtype=dt), False
    if not out.flags.writeable:
        raise ValueError("out must be a writeable array; got a read-only one")
    if out.flags.c_contiguous and out.dtype == dt and not np.may_share_memory(out, X):
        return X, out, False
    return X, np.empty(shape_out, dtype=dt), True


def _finish(Y, out, copy):
    if copy:
        np.copyto(out, Y)
        return out
    return Y


def _fallback(state: _State, X, Y, k: int, layout: str) -> None:
    """Factor-by-factor products over column panels (rows: X (k, Q); cols: X (Q, k))."""
    u = np.uint64
    item = state.dtype.itemsize
    wmax = max(1, min(k, _FALLBACK_PANEL_BYTES // (2 * state.F * item)))
    if layout == "rows":
        xf, xc, of, oc = 1, state.Q, 1, state.P
    else:
        xf, xc, of, oc = k, 1, k, 1
    Xf, Yf = X.reshape(-1), Y.reshape(-1)

    def run(lo: int, hi: int) -> None:
        ba, bb = _scratch(state.dtype, state.F * wmax)
        _chain_panels(state.panel, state.dims, Xf, u(xf), u(xc), Yf, u(of), u(oc),
                      u(lo), u(hi), u(wmax), ba, bb)

    _run_split(run, k, state.nnz * k)


def _apply(state: _State, X, out, layout: str):
    """Shared body of :func:`apply_rows` and :func:`apply_cols`."""
    k = X.shape[0] if layout == "rows" else X.shape[1]
    shape = (k, state.P) if layout == "rows" else (state.P, k)
    X, Y, copy = _prep_io(state, X, out, shape)
    if k == 0:
        return _finish(Y, out, copy)
    if not state.fused or (state.nnz < CODEGEN_MIN_NNZ and state.nnz * k < CODEGEN_MIN_WORK
                           and state._mod is None):
        _fallback(state, X, Y, k, layout)
        return _finish(Y, out, copy)
    mod = state._mod if state._mod is not None else state.module()
    W = state.W
    Xf, Yf = X.reshape(-1), Y.reshape(-1)
    one = _ONE
    if k == 1:  # matvec: no thread pool, no closure (the call overhead is the cost here)
        cache = getattr(_tls, "bufs", None)
        pair = None if cache is None else cache.get(state.dtype.str)
        if pair is None or pair[0].size < state.F:
            pair = _scratch(state.dtype, state.F)
        mod.rows_single(*state.vec, Xf, Yf, 0, 1, pair[0], pair[1], one)
        return _finish(Y, out, copy)
    # rows: tiny batches one row at a time
    if layout == "rows" and k <= _ROWS_SINGLE_MAX:

        def run_rows(lo: int, hi: int) -> None:
            a, b = _scratch(state.dtype, state.F)
            mod.rows_single(*state.vec, Xf, Yf, lo, hi, a, b, one)

        _run_split(run_rows, k, state.nnz * k)
        return _finish(Y, out, copy)
    kern = mod.rows_tiles if layout == "rows" else mod.cols_tiles
    wr = np.uint64(W)

    def run(lo: int, hi: int) -> None:
        a, b = _scratch(state.dtype, state.F * W)
        kern(*state.panel, Xf, Yf, k, lo, hi, a, b, wr)

    _run_split(run, (k + W - 1) // W, state.nnz * k)
    return _finish(Y, out, copy)


def apply_rows(state: _State, specs, X, out=None):
    """``X @ D.T`` for ``X`` of shape ``(k, Q)``; see :mod:`debutla.backends`.

    Parameters
    ----------
    state : object
        From :func:`prepare`.
    specs : tuple of FactorSpec
        The chain (the sizes are taken from ``state``).
    X : numpy.ndarray (k, Q)
    out : numpy.ndarray (k, P), optional
        Written in place and returned.

    Returns
    -------
    numpy.ndarray (k, P)
    """
    return _apply(state, X, out, "rows")


def apply_cols(state: _State, specs, X, out=None):
    """``D @ X`` for ``X`` of shape ``(Q, k)``; see :mod:`debutla.backends`.

    Parameters
    ----------
    state : object
        From :func:`prepare`.
    specs : tuple of FactorSpec
        The chain (the sizes are taken from ``state``).
    X : numpy.ndarray (Q, k)
    out : numpy.ndarray (P, k), optional
        Written in place and returned.

    Returns
    -------
    numpy.ndarray (P, k)
    """
    return _apply(state, X, out, "cols")
