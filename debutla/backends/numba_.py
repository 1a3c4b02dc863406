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
  blocks that stay in L1/L2, and the tile is scattered to the output.  ``W`` is 32
  float32 values (128 bytes per feature; 16 for the wider dtypes; twice that for chains
  at most 1024 wide), halved down to 16 while the two blocks, weighted by the number
  of factors (``N / 6``, at least 1), exceed :data:`TILE_BLOCK_BYTES`, below 16 on
  that rule only for real dtypes and chains whose passes mostly ping-pong
  (:func:`tile_rows`), and for chains too wide otherwise (see
  ``benchmarks/README_kernels.md``, changes 5, 13 and 24); a partial tile computes
  only its columns (rounded up to ``W / 4``).  Batches of 3 to :data:`NARROW_W` rows
  of a chain with wider tiles run on a second module compiled with ``NARROW_W``-row tiles
  (``rows_narrow``, compiled on first use; the wide tiles serve meanwhile, with the
  same bits), whose passes keep their constant-width loops (change 7).  Column-layout
  products of real chains with tiles narrower than :data:`COLS_RUN_BYTES` a feature run
  their full tiles on a third module of that width (``cols_wide``: :func:`cols_width`,
  change 35), the columns left on the chain's own tiles;
* **factor by factor** (the generic kernel, :mod:`debutla.backends._numba_generic`: one
  compiled function per dtype for every chain): small chains, below
  :data:`CODEGEN_MIN_NNZ` values, until a call is big enough to pay for compiling; a
  chain too wide for a fused pass even with the narrowest tile; fused kernels switched
  off (``debutla.config(fused=False)``); a chain's first products while its own kernel
  compiles in a background thread (``debutla.config(background=True)``, the default);
  and every adjoint product (``trans`` ``"T"``/``"H"``), read from the forward values.

Threads
-------
Work of at least :data:`PARALLEL_MIN_WORK` multiply-adds, with at least two tiles per
thread, is shared among the calling thread and a persistent pool of workers, each
calling the ``nogil`` kernels with its own scratch: a GIL-free body that claims tiles
with atomics where the product has one, chunks of tiles claimed in Python otherwise
(see :func:`_run_split`; a split changes no result bit); smaller work
runs in the calling thread (a parallel region costs more than it saves there).  The
thread count is ``debutla.config(threads=...)`` or
``DEBUTLA_NUM_THREADS`` when set, else Numba's (``numba.get_num_threads()``).  The
kernels never call BLAS, so they cannot oversubscribe with it; when timing them next to
BLAS calls, limit BLAS with ``threadpoolctl`` (see ``docs/performance.rst``).

First call and caching
----------------------
A chain's kernel is generated, written to the checked kernel cache
(:mod:`debutla.backends._cache`) and compiled on first need, per kernel and dtype; a
compile longer than :data:`SLOW_COMPILE_SECONDS` is logged (logger ``"debutla"``).
Later processes load it from the cache (0.15-0.3 s).  A cache failure never fails a
product (in-memory compile, one warning).  ``debutla.warmup`` compiles ahead of time.

Forking
-------
Locks, the thread pool and the compile bookkeeping are reset in a forked child; a chain
whose kernel was compiling at the fork runs on the generic kernel there, because Numba's
own compiler lock may be held forever in the child.
"""

from __future__ import annotations

import atexit
import functools
import contextvars
import logging
import os
import sys
import threading
import time
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Callable

import numba
import numpy as np

from .. import _config
from . import _cache
from . import _numba_backward as _bw
from . import _numba_codegen as _cg
from . import _numba_generic as _generic_src
from . import _numba_native as _native
from . import _omp_team
from ._numba_pool import Job, SpinPool, claim_chunks

if TYPE_CHECKING:  # imported where the pool is made: the module may load at shutdown
    from concurrent.futures import ThreadPoolExecutor

__all__ = [
    "prepare", "apply_rows", "apply_cols", "rows_lane", "lane_ready", "adjoint_lane_state",
    "single_reads_flat",
    "compile_kernels",
    "wait_for_compiles", "preload",
    "get_num_threads", "set_num_threads", "set_fused", "kernel_source", "FUSED_BYTES",
    "TILE_BLOCK_BYTES", "tile_rows", "cols_width", "COLS_RUN_BYTES",
    "PARALLEL_MIN_WORK", "CODEGEN_MIN_NNZ", "CODEGEN_MIN_WORK", "SLOW_COMPILE_SECONDS",
    "aligned_empty", "SCRATCH_ALIGN", "backward_ready", "run_backward", "BACKWARD",
    "BACKWARD_MIN_NNZ", "RowsEpilogue", "rows_epilogue", "may_split", "memcmp", "same_bytes",
]

name = "numba"
xp = np

#: Largest size in bytes of the two scratch blocks of a fused tile (else a narrower tile,
#: and below the narrowest one the factor-by-factor kernel).
FUSED_BYTES = 3 * 2**19
#: The two scratch blocks of a tile, weighted by the factors that sweep them, are kept
#: under this size by halving ``W`` down to 16 columns (``README_kernels.md``, change 13:
#: 1 MiB rather than FUSED_BYTES gave the VGG chain 16-row float32 tiles, 1.05-1.08x).
TILE_BLOCK_BYTES = 2**20
#: Multiply-adds (``nnz * batch``) from which a product is split over threads (5 x 10^6
#: before change 33: with GIL-free workers, change 31, 3-5 x 10^6 gain 1.5-1.8x).
PARALLEL_MIN_WORK = 3_000_000
_CHUNKS_PER_THREAD = 4  # chunks of tasks claimed per thread in a split product
_SPIN_CHUNKS_PER_THREAD = 2  # ... on the spinning pool (fewer claims, each takes the GIL)
_POOL_BODIES = True  # the spinning pool runs split products' GIL-free bodies (change 31)
_LANE_SPLITS = True  # the fast lane serves products big enough to split too (change 31)
_MIN_TASKS_PER_THREAD = 2  # fewer tasks (tiles, rows) per thread: no split (see _run_split)
#: Chains with fewer values than this use the generic (precompiled) kernels until one
#: call's work (``nnz * batch``) reaches :data:`CODEGEN_MIN_WORK`: a generated kernel
#: costs 1-3 s to compile, which such small products never pay back.
CODEGEN_MIN_NNZ = 4096
CODEGEN_MIN_WORK = 2**17
#: Chains with fewer values than this never use the generated backward
#: (:func:`backward_ready`): it compiles in 18-31 s (VGG, butterfly and radix-4
#: chains), which the microseconds it saves per call on a small chain never pay back.
BACKWARD_MIN_NNZ = 2**15
#: The name of the generated backward kernel among a state's kernels (``ready``).
BACKWARD = "backward"
#: A kernel compile longer than this (seconds) is logged (logger ``"debutla"``).
SLOW_COMPILE_SECONDS = 0.5
_MIN_W = 4
_CONST_W_MIN = _cg._CONST_W_MIN  # narrowest tile of the constant-width in-place passes
_NARROW_F = 1024  # chains at most this wide get the wider tiles (256 bytes per feature)
#: Tile rows of the second kernel module that serves batches of 3 to NARROW_W rows when
#: the chain's own tiles are wider (a part-empty wide tile runs its passes' slower
#: run-time-width loops): ``rows_narrow``, compiled on first use.
NARROW_W = 16
_ROWS_SINGLE_MAX = 2  # batches up to this run one row at a time (else tiles)
#: Bytes of each feature's run of columns in a column-layout tile (``op @ X``) of a
#: real chain: where the chain's own tiles are narrower, products of enough columns run
#: their full tiles on a third module of this width (``cols_wide``, compiled on first
#: use; the chain's own tiles serve meanwhile, with the same bits).  The tile gather
#: reads each feature's run from rows ``k`` entries apart, which the memory side serves
#: per line: 64-byte runs (16 float32 columns) took 1.1-1.8x the time of 256-byte runs
#: (``benchmarks/README_kernels.md``, change 35).
COLS_RUN_BYTES = 256
_COLS_WIDE = True  # False: column products on the own tiles only (before change 35)
#: One batch size per kernel a product can run on (``debutla.warmup``'s default):
#: ``rows_single``; ``rows_narrow`` where the chain's tiles are wider than NARROW_W;
#: ``rows_tiles`` and ``cols_tiles``; ``cols_wide`` (256 columns: four float32 wide
#: tiles, eight float64 ones, enough for two and four threads, see :func:`_wide_cols`).
WARMUP_BATCHES = (1, NARROW_W, NARROW_W + 1, 256)
_FALLBACK_PANEL_BYTES = 8 * 2**20
_TRANS = ("N", "T", "H")

_log = logging.getLogger("debutla")
_ONE = np.uint64(1)
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_tls = threading.local()
# (shapes, W, dtype.str) -> names of the chain's kernels compiled / compiling for that
# dtype (see _State.ready); sets shared by the states, guarded by _kernels_lock
_READY: dict = {}
_PENDING: dict = {}
_kernels_lock = threading.Lock()
_generic: list = []  # [module] once loaded
_generic_lock = threading.Lock()
_logged_first = [False]
_compile_threads: list = []
_all_states: "weakref.WeakSet[_State]" = weakref.WeakSet()


# -- settings (see debutla._config) -----------------------------------------------------
def get_num_threads() -> int:
    """The number of threads the Numba backend uses for large products.

    ``debutla.config(threads=...)`` or ``DEBUTLA_NUM_THREADS`` when set, else Numba's
    (``numba.get_num_threads()``, i.e. ``NUMBA_NUM_THREADS``).

    Examples
    --------
    >>> get_num_threads() >= 1
    True
    """
    n = _config.get("threads")
    if n is None:
        n = numba.get_num_threads()  # called from Python, never inside a kernel
    return max(1, int(n))


def set_num_threads(n: int | None) -> None:
    """Deprecated: use ``debutla.config(threads=n)`` (a block) or ``DEBUTLA_NUM_THREADS``.

    Sets the process-wide default (:func:`debutla._config.set_defaults`).
    """
    warnings.warn("set_num_threads is deprecated; use `with debutla.config(threads=n):`",
                  DeprecationWarning, stacklevel=2)
    _config.set_defaults(threads=n)


def set_fused(enabled: bool) -> None:
    """Deprecated: use ``debutla.config(fused=enabled)``.

    Sets the process-wide default (:func:`debutla._config.set_defaults`).
    """
    warnings.warn("set_fused is deprecated; use `with debutla.config(fused=False):`",
                  DeprecationWarning, stacklevel=2)
    _config.set_defaults(fused=enabled)


# -- generic kernels ----------------------------------------------------------------------
def _generic_module():
    if _generic:
        return _generic[0]
    with _generic_lock:
        if not _generic:
            _generic.append(_generic_src.load())
    return _generic[0]


def preload(dtypes=(np.float64, np.float32)) -> None:
    """Load the generic kernels for ``dtypes`` from the cache (compiling them if needed).

    The first cached kernel a process loads also initialises Numba's CPU target (about
    0.7 s); later dtypes take about 10 ms each.  Run by the background thread that makes
    the backend ready at a process's first product (:mod:`debutla.backends`).

    Examples
    --------
    >>> preload((np.float64,))
    """
    mod = _generic_module()
    for dt in dtypes:
        dt = np.dtype(dt)
        st = _State((np.zeros((1, 1, 1, 1), dt),))
        _run_generic(st, np.zeros((1, 1), dt), np.zeros((1, 1), dt), 1, 1, "rows", "N")
    flags = np.zeros(2, np.int64)  # the split products' spin loops (_numba_pool)
    mod.store_spin(flags, 1, 0, 0, 1, 1, 0)


def _log_compile(seconds: float, what: str, loaded: bool = False) -> None:
    """Log a kernel's first call when it took :data:`SLOW_COMPILE_SECONDS` or more.

    ``loaded``: its machine code came from the kernel cache (logged at INFO level as a
    load, not as a compile); the first compile of a process is a WARNING naming
    :func:`debutla.warmup`.
    """
    if seconds < SLOW_COMPILE_SECONDS:
        return
    if loaded:
        _log.info(f"debutla: loaded {what} from the kernel cache in {seconds:.1f} s")
        return
    first = not _logged_first[0]
    _logged_first[0] = True
    where = _cache.cache_dir()
    msg = (f"debutla: compiled {what} in {seconds:.1f} s"
           + (f"; cached in {where}, so later processes load it" if where else "")
           + (" (debutla.warmup(op) compiles ahead of time)" if first else ""))
    _log.log(logging.WARNING if first else logging.INFO, msg)


def _dispatcher(state: "_State", kname: str):
    """The Numba dispatcher of kernel ``kname`` (its cache statistics: compile or load)."""
    if kname == BACKWARD:
        return state.backward_module().tiles_placed
    mod = state.module_for(kname)
    return {"rows_single": mod.rows_single, "cols_tiles": mod.cols_tiles,
            "cols_wide": mod.cols_tiles}.get(kname, mod.rows_tiles)


def _cache_misses(disp) -> int:
    """Signatures ``disp`` compiled rather than loaded (Numba counts both per dispatcher)."""
    stats = getattr(disp, "stats", None)
    return sum(stats.cache_misses.values()) if stats is not None else 0


# -- state ----------------------------------------------------------------------------
def _widest(shapes) -> int:
    """The most features a factor of a chain reads or writes (``(nb, r, s, t)`` each)."""
    return max(max(nb * r * t, nb * s * t) for nb, r, s, t in shapes)


def _blocks_fit(F: int, W: int, item: int) -> bool:
    """Whether the two scratch blocks of ``W``-wide tiles of ``F`` features, ``item``
    bytes each, are within the fused limit (:data:`FUSED_BYTES`).
    """
    return 2 * F * W * item <= 4 * FUSED_BYTES


def tile_rows(shapes, dtype: np.dtype) -> int:
    """The rows ``W`` of the tile kernels of a chain (``(nb, r, s, t)`` per factor).

    128 bytes per feature (256 for chains at most ``_NARROW_F`` wide), at least 16
    columns (the in-place passes' constant-width loops start there), halved down to 16
    while the two blocks, weighted by how many factors sweep them per tile (``N / 6``,
    at least 1), exceed :data:`TILE_BLOCK_BYTES`; below 16 on the same rule only for a
    real dtype and a chain whose panel passes mostly ping-pong (fewer in place than
    not: they have no constant-width loops to lose; complex products ran 1.1-2x
    slower on narrower tiles), down to 8 rows (the vector transposes' blocks), and
    below that while the blocks exceed the fused limit (see
    ``_State.fused``).  A real chain whose step would run in 16-row parts on 32-row
    tiles (:func:`~debutla.backends._numba_codegen.step_parts`) gets 32 rows whatever
    the budget says, within the fused limit.  Measured in
    ``benchmarks/README_kernels.md``, changes 5, 13, 24 and 27.

    Examples
    --------
    >>> tile_rows([(1, 2, 2, 1)], np.dtype(np.float32))  # tiny: 256 bytes per feature
    64
    >>> vgg = [(512, 8, 9, 1), (256, 2, 2, 8), (128, 2, 2, 16), (64, 2, 2, 32),
    ...        (16, 2, 4, 64), (4, 2, 4, 128), (1, 2, 4, 256)]
    >>> [tile_rows(vgg, np.dtype(d)) for d in ("float32", "float64", "complex128")]
    [16, 8, 16]
    """
    item = dtype.itemsize
    F = _widest(shapes)
    W = max(_CONST_W_MIN, (256 if F <= _NARROW_F else 128) // item)
    sweeps = max(1.0, len(shapes) / 6)

    def over(w: int) -> bool:
        return 2 * F * w * item * sweeps > TILE_BLOCK_BYTES

    while W > _CONST_W_MIN and over(W):
        W //= 2
    if W == _CONST_W_MIN and over(W) and dtype.kind == "f":
        passes = _cg.panel_passes(shapes, W)
        in_place = sum(_cg._pass_in_place(shapes, n0, cnt) for n0, cnt in passes)
        # not below the 8 x 8 blocks of the vector transposes (measured: 8 rows)
        while W > _cg._SIMD_BLOCK and over(W) and 2 * in_place < len(passes):
            W //= 2
    while W > _MIN_W and not _blocks_fit(F, W, item):
        W //= 2
    # where a tile twice a part wide would gather and step in parts (a narrowing pair in
    # the step, change 26), the tile's width serves only the passes after the step,
    # which run faster on the wider tile: ResNet float64 (change 27)
    P2 = 2 * _cg._STEP_PART
    if (dtype.kind == "f" and W < P2 and _blocks_fit(F, P2, item)
            and _cg.step_parts(shapes, P2)):
        W = P2
    return W


def cols_width(shapes, dtype: np.dtype, W: int | None = None) -> int:
    """The columns of a column-layout tile of ``cols_wide`` for a chain (``(nb, r, s, t)``
    per factor): :data:`COLS_RUN_BYTES` a feature for a real dtype, halved while the two
    scratch blocks exceed the fused limit, never below the chain's own ``W``
    (:func:`tile_rows`, given or computed).  Equal to ``W`` where there is no wider
    module (complex dtypes: their column products ran 0.94-1.21x as fast on wider tiles).

    Examples
    --------
    >>> vgg = [(512, 8, 9, 1), (256, 2, 2, 8), (128, 2, 2, 16), (64, 2, 2, 32),
    ...        (16, 2, 4, 64), (4, 2, 4, 128), (1, 2, 4, 256)]
    >>> [cols_width(vgg, np.dtype(d)) for d in ("float32", "float64", "complex64")]
    [64, 32, 16]
    """
    if W is None:
        W = tile_rows(shapes, dtype)
    if dtype.kind != "f":
        return W
    item, F = dtype.itemsize, _widest(shapes)
    cW = COLS_RUN_BYTES // item
    while cW > W and not _blocks_fit(F, cW, item):
        cW //= 2
    return max(W, cW) if cW % W == 0 else W


class _State:
    """Prepared values of one operator and dtype (values immutable once built).

    ``ready`` names the specialised kernels compiled for this dtype; ``pending`` the
    ones a background thread is compiling.  Both sets belong to the chain (its shapes,
    tile width and dtype), not to the values: every state of the chain shares them.
    """

    __slots__ = ("shapes", "dtype", "dkey", "panel", "_vflat", "_vt", "dims", "adims", "Q", "P",
                 "F", "nnz", "W", "cW", "_mod", "_nmod", "_cmod", "_lock", "ready", "pending",
                 "broken", "flat", "_cflat", "_adj", "_bmod", "_tflat", "live", "lanes",
                 "jobs", "__weakref__")

    def __init__(self, factors, flat: np.ndarray | None = None) -> None:
        self.shapes = tuple(tuple(int(d) for d in V.shape) for V in factors)
        self.dtype = factors[0].dtype
        self.dkey = self.dtype.str  # the key of the per-thread scratch (_scratch)
        # every kernel takes the values packed in one flat array (writeable: one kernel
        # type for all): ``flat`` in the canonical layout (panel and generic kernels),
        # ``vflat`` with the ``t = 1, r >= 4`` factors transposed (one-row kernel)
        bounds = np.cumsum([0] + [V.size for V in factors]).tolist()
        offs = bounds[:-1]
        # a live state reads the caller's packed values (see prepare): what is made
        # from them (vflat, conj_flat, adjoint) is made again at each use, tflat kept
        # with a copy of the values it was made from and made again when they differ
        self.live = flat is not None
        self.flat = flat if flat is not None else np.concatenate(
            [np.asarray(V).reshape(-1) for V in factors])
        self.panel = tuple(self.flat[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        self._vt = not single_reads_flat(self.shapes)  # vflat is a rearranged copy
        self._vflat = None if self.live else self._make_vflat()
        # generic kernel: (nb, r, s, t, vi, vj) forward; the adjoint applies the factors
        # in reverse order, each with r <-> s and its value strides swapped
        self.dims = np.array([(nb, r, s, t, s * t, t, o) for (nb, r, s, t), o
                              in zip(self.shapes, offs)], dtype=np.uint64).reshape(-1, 7)
        self.adims = np.array([(nb, s, r, t, t, s * t, o) for (nb, r, s, t), o
                               in zip(reversed(self.shapes), reversed(offs))],
                              dtype=np.uint64).reshape(-1, 7)
        self._cflat = None
        self._adj: dict = {}
        self._bmod = None  # the backward module (backward_module)
        self._tflat = None  # the values with each block transposed (tflat)
        self.Q = self.shapes[0][0] * self.shapes[0][2] * self.shapes[0][3]
        self.P = self.shapes[-1][0] * self.shapes[-1][1] * self.shapes[-1][3]
        self.F = _widest(self.shapes)
        self.nnz = sum(nb * r * s * t for nb, r, s, t in self.shapes)
        self.W = tile_rows(self.shapes, self.dtype)
        self.cW = cols_width(self.shapes, self.dtype, self.W)
        self._mod = None
        self._nmod = None  # the narrow-tile module (small batches; see narrow_module)
        self._cmod = None  # the wide column-layout module (see cols_module)
        self._lock = threading.Lock()
        # the chain's kernels compiled for this dtype (and those compiling), shared by
        # every state of the same chain, tile width and dtype: an operator with new
        # values (a torch layer after each optimiser step) runs the compiled kernels
        # from its first product, not the generic kernel
        key = (self.shapes, self.W, self.dkey)
        with _kernels_lock:
            self.ready: set = _READY.setdefault(key, set())
            self.pending: set = _PENDING.setdefault(key, set())
        self.broken = False
        # the fast lane's calls (rows_lane): rows k -> (kernel, values, tiles (0:
        # rows_single), tile rows as the kernel's uint64, scratch size, module, kernel
        # name); emptied whenever a module is replaced
        self.lanes: dict = {}
        # the split products' GIL-free jobs as recorded (the memo of
        # _native.tiles_job: _run_fused's and the lane's, change 38); emptied whenever a
        # module is replaced
        self.jobs: dict = {}
        _all_states.add(self)

    @property
    def fused(self) -> bool:
        """Whether this chain may use its specialised kernels (settings and width)."""
        return (not self.broken and _config.get("fused")
                and _blocks_fit(self.F, self.W, self.dtype.itemsize))

    def _make_vflat(self) -> np.ndarray:
        if not self._vt:
            return self.flat
        return np.concatenate([
            np.ascontiguousarray(f.reshape(sh)[..., 0].transpose(0, 2, 1)).reshape(-1)
            if _cg.vec_transposed(sh) else f for f, sh in zip(self.panel, self.shapes)])

    @property
    def vflat(self) -> np.ndarray:
        """The values with the ``t = 1, r >= 4`` factors' blocks transposed, packed like
        ``flat`` (the one-row kernel's; ``flat`` itself when there is none).
        """
        return self._vflat if self._vflat is not None else self._make_vflat()

    def conj_flat(self):
        """The conjugated values (for ``D^H``; made on first use)."""
        if self.live:
            return np.conj(self.flat)
        if self._cflat is None:
            self._cflat = np.conj(self.flat)
        return self._cflat

    def adjoint(self, trans: str) -> "_State":
        """The state of ``D^T`` (``"T"``) or ``D^H`` (``"H"``), made on first use.

        Used only for a specialised adjoint kernel, compiled in the background after
        the first adjoint product (or by ``debutla.warmup``); until it is ready, adjoint
        products run on the generic kernel from this state's values.
        """
        trans = _adj_key(self, trans)
        st = self._adj.get(trans)
        if st is None:
            with self._lock:
                st = self._adj.get(trans)
                if st is None:
                    vals = [f.reshape(sh).transpose(0, 2, 1, 3)
                            for f, sh in zip(reversed(self.panel), reversed(self.shapes))]
                    if trans == "H":
                        vals = [np.conj(v) for v in vals]
                    st = _State(tuple(np.ascontiguousarray(v) for v in vals))
                    if not self.live:
                        self._adj[trans] = st
        return st

    def _module_at(self, attr: str, W: int):
        """The chain's kernel module of tile width ``W`` kept in ``attr`` (made once)."""
        mod = getattr(self, attr)
        if mod is None:
            with self._lock:
                mod = getattr(self, attr)
                if mod is None:
                    mod = _cg.kernel_module(self.shapes, W)
                    setattr(self, attr, mod)
        return mod

    def module(self):
        """The chain's generated kernel module (written and executed on first use)."""
        return self._module_at("_mod", self.W)

    def narrow_module(self):
        """The chain's kernel module with tiles of :data:`NARROW_W` rows (small batches)."""
        return self._module_at("_nmod", NARROW_W)

    @property
    def bw_W(self) -> int:
        """Tile rows of the backward kernel: 128 bytes per feature (16 columns at least).

        Interleaved A/B of the whole backward (``README_kernels.md``, "The backward
        kernel"): 64 float32 rows were 11% faster on the VGG chain but 40% slower on the
        4096 butterfly (twelve factor inputs of scratch); 16 float32 rows were
        1.5-2x slower on VGG (short column loops); in float64, 16 rows were best on the butterfly
        and 6% slower than 32 on VGG.
        """
        return max(_CONST_W_MIN, 128 // self.dtype.itemsize)

    @property
    def tflat(self):
        """Every factor's values with each block transposed, packed like ``flat``."""
        if self.live:  # kept while the values are the bytes it was made from
            made = self._tflat
            if made is not None and same_bytes(made[0], self.flat):
                return made[1]
            src = self.flat.copy()
            tflat = self._transposed(src)
            self._tflat = (src, tflat)
            return tflat
        if self._tflat is None:
            self._tflat = self._transposed(self.flat)
        return self._tflat

    def _transposed(self, flat: np.ndarray) -> np.ndarray:
        bounds = np.cumsum([0] + [int(np.prod(sh)) for sh in self.shapes]).tolist()
        return np.concatenate([
            np.ascontiguousarray(flat[a:b].reshape(sh).transpose(0, 2, 1, 3)).reshape(-1)
            for a, b, sh in zip(bounds[:-1], bounds[1:], self.shapes)])

    def backward_module(self):
        """The chain's generated backward module (:mod:`._numba_backward`), on first use."""
        if self._bmod is None:
            with self._lock:
                if self._bmod is None:
                    self._bmod = _bw.kernel_module(self.shapes, self.bw_W)
        return self._bmod

    def cols_module(self):
        """The chain's kernel module with column-layout tiles of ``cW`` columns."""
        return self._module_at("_cmod", self.cW)

    def module_for(self, kname: str):
        """The module holding kernel ``kname`` (``rows_narrow``: the narrow module,
        ``cols_wide``: the wide column-layout one).
        """
        if kname == "rows_narrow":
            return self.narrow_module()
        return self.cols_module() if kname == "cols_wide" else self.module()


@functools.lru_cache(maxsize=1)
def memcmp():
    """The C library's ``memcmp`` through ctypes (found on first use), or None."""
    try:
        import ctypes
        lib = ctypes.cdll.msvcrt if sys.platform == "win32" else ctypes.CDLL(None)
        f = lib.memcmp
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        return f
    except Exception:  # pragma: no cover - a platform without one
        return None


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two C-contiguous arrays of one dtype and size hold the same bytes.

    ``memcmp`` (about 3x faster than ``numpy.array_equal`` on 75,776 float32 values,
    and no temporary), NumPy where there is none.

    Examples
    --------
    >>> z = np.zeros(3)
    >>> same_bytes(z, np.zeros(3)), same_bytes(z, -z), same_bytes(z, np.zeros(4))
    (True, False, False)
    """
    if a.dtype != b.dtype or a.size != b.size:
        return False
    f = memcmp()
    if f is not None and a.flags.c_contiguous and b.flags.c_contiguous:
        return a.nbytes == 0 or f(_native.address_of(a), _native.address_of(b), a.nbytes) == 0
    return bool(np.array_equal(np.ascontiguousarray(a).view(np.uint8),
                               np.ascontiguousarray(b).view(np.uint8)))


def prepare(factors, flat: np.ndarray | None = None):
    """Flatten the values for the kernels (and transpose ``t = 1, r >= 4`` factors).

    Parameters
    ----------
    factors : tuple of numpy.ndarray
        Canonical ``(nb, r, s, t)`` values, application order, one common dtype.
    flat : numpy.ndarray, optional
        The same values packed back to back in one writeable C-contiguous 1-D array
        (``factors`` are then views of it; the torch layers' packed parameters): the
        state reads them there, without a copy, so a product always sees the values as
        they are when it runs (a *live* state).  What the state makes from the values
        is then made again at each use (the one-row kernel's and the adjoint's copies)
        or kept with a copy of the values it was made from and made again when they
        differ (the backward's ``tflat``: a ``memcmp`` instead of a transposing copy).

    Examples
    --------
    >>> st = prepare((np.ones((1, 2, 2, 1)),))
    >>> (st.P, st.Q, st.nnz)
    (2, 2, 4)
    """
    if len(factors) == 0:
        raise ValueError("prepare: factors must hold at least one array")
    if flat is not None:
        nnz = sum(int(np.asarray(V).size) for V in factors)
        if (not isinstance(flat, np.ndarray) or flat.ndim != 1 or flat.size != nnz
                or flat.dtype != factors[0].dtype or not flat.flags.c_contiguous
                or not flat.flags.writeable):
            raise ValueError(f"prepare: flat must be a writeable C-contiguous 1-D array "
                             f"of the factors' {nnz} values in their dtype, got "
                             f"{getattr(flat, 'shape', type(flat).__name__)} "
                             f"{getattr(flat, 'dtype', '')}")
        at = _native.address_of(flat)
        for i, V in enumerate(factors):
            if not V.flags.c_contiguous or _native.address_of(V) != at:
                raise ValueError(f"prepare: factor {i} is not the view of flat that "
                                 f"follows factor {i - 1}" if i else
                                 "prepare: factor 0 is not the view at the start of flat")
            at += V.nbytes
    return _State(tuple(factors), flat)


def kernel_source(factors_or_shapes, dtype=np.float32) -> str:
    """The generated kernel source for a chain (for reading; the backend writes it itself).

    Parameters
    ----------
    factors_or_shapes : sequence of arrays or of ``(nb, r, s, t)`` tuples
    dtype : dtype
        Decides the tile width.

    Examples
    --------
    >>> "def rows_single" in kernel_source([(2, 2, 2, 1)])
    True
    """
    shapes = [tuple(getattr(f, "shape", f)) for f in factors_or_shapes]
    st = _State(tuple(np.zeros(sh, dtype=dtype) for sh in shapes))
    return _cg.generate_source(st.shapes, st.W)


# -- scratch and threads --------------------------------------------------------------
#: Byte alignment of the kernels' scratch: a vector load or store never straddles two
#: cache lines.  NumPy's large arrays start 16 bytes into a page; 64-byte-aligned scratch
#: made the VGG chain's tile kernel 1.12x faster at batch 256 (``README_kernels.md``,
#: change 8).
SCRATCH_ALIGN = 64


def aligned_empty(size: int, dtype, zero: bool = False) -> np.ndarray:
    """A 1-D array of ``size`` entries whose data start on a :data:`SCRATCH_ALIGN` boundary.

    Examples
    --------
    >>> a = aligned_empty(10, np.float32, zero=True)
    >>> (a.ctypes.data % SCRATCH_ALIGN, a.size, float(a.sum()))
    (0, 10, 0.0)
    """
    dt = np.dtype(dtype)
    n = int(size) * dt.itemsize
    raw = (np.zeros if zero else np.empty)(n + SCRATCH_ALIGN, np.uint8)
    start = -raw.ctypes.data % SCRATCH_ALIGN
    return raw[start:start + n].view(dt)


_NO_BUFS: dict = {}  # a thread without scratch yet (rows_lane)


def _scratch(dtype: np.dtype, size: int, key: str | None = None, count: int = 2):
    """``count`` per-thread scratch buffers of at least ``size`` entries (reused across calls).

    ``key``: ``dtype.str`` when the caller has it at hand (a state's ``dkey``); callers
    that need other buffers than the kernels' pair (the torch backward) give a key of
    their own.  The buffers are zeroed once and aligned (:func:`aligned_empty`): reusing
    them spares every call the page faults of fresh memory.
    """
    cache = getattr(_tls, "bufs", None)
    if cache is None:
        cache = _tls.bufs = {}
    if key is None:
        key = dtype.str
    bufs = cache.get(key)
    if bufs is None or bufs[0].size < size or len(bufs) != count:
        bufs = tuple(aligned_empty(size, dtype, zero=True) for _ in range(count))
        cache[key] = bufs
    return bufs


#: the scratch buffers of OpenMP threads, by OS thread (see :func:`_adopt_thread_scratch`)
_team_bufs: dict[int, dict] = {}


def _adopt_thread_scratch() -> None:
    """Give this thread the scratch buffers it had in its previous product.

    An OpenMP team's thread (:mod:`._omp_team`) enters Python with a new thread state at
    every product, so its ``threading.local`` buffers of :func:`_scratch` would be
    allocated anew each time (page faults: about 0.7 ms more per backward of the 4096
    butterfly, two threads).  They are kept here by OS thread instead, for the life of
    the process (a team has few threads, and they live as long as the process).
    """
    if getattr(_tls, "bufs", None) is None:
        _tls.bufs = _team_bufs.setdefault(threading.get_ident(), {})


def _get_pool(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < n:
            from concurrent.futures import ThreadPoolExecutor

            # the old pool is left to finish what other threads may still be submitting
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="debutla-numba")
            _pool_size = n
        return _pool


def _after_fork_in_child() -> None:
    """Fresh locks, pool and compile bookkeeping in a forked child.

    The parent's worker and compile threads do not exist in the child: a lock they held
    would never be released, and a compile they had pending would never finish.  Numba
    keeps a process-wide compiler lock of its own that debutla cannot reset: a child
    forked while any thread compiles must not compile (it may wait forever).  Chains
    whose kernel was compiling at the fork therefore run on the generic kernel in the
    child; fork only after :func:`debutla.warmup` (or use the ``spawn`` or
    ``forkserver`` start methods of :mod:`multiprocessing`).
    """
    global _pool, _pool_size, _pool_lock, _generic_lock, _kernels_lock, _spin_pool
    _pool, _pool_size = None, 0
    _spin_pool = None
    _pool_lock = threading.Lock()
    _generic_lock = threading.Lock()
    _kernels_lock = threading.Lock()
    _compile_threads.clear()
    for st in list(_all_states):
        st._lock = threading.Lock()
        if st.pending:
            # forked while a thread compiled this chain: Numba's own compiler lock may be
            # held forever in this child, so never compile it here (generic kernel only)
            st.broken = True
    for pending in _PENDING.values():  # in place: the states share these sets
        pending.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_spin_pool = None  # the SpinPool of split products (``config(spin=...)`` decides its use)


def _get_spin_pool(workers: int):
    """The spinning pool with at least ``workers`` workers (made on first use)."""
    global _spin_pool
    pool = _spin_pool
    if pool is not None and pool.workers >= workers:
        return pool
    kernels = _generic_module()
    with _pool_lock:
        if _spin_pool is None or _spin_pool.workers < workers:
            if _spin_pool is not None:
                _spin_pool.close()
            else:  # the workers are daemon threads: end them before the interpreter
                atexit.register(_close_spin_pool)  # frees the Numba code they may spin in
            _spin_pool = SpinPool(workers, kernels)
        return _spin_pool


def _close_spin_pool() -> None:
    pool = _spin_pool
    if pool is not None:
        pool.close(timeout=1.0)


def may_split(work: int, threads: int) -> bool:
    """Whether a product of ``work`` multiply-adds is large enough to split over
    ``threads`` threads (:func:`_run_split` also needs two tasks per thread).

    Examples
    --------
    >>> may_split(PARALLEL_MIN_WORK, 2), may_split(PARALLEL_MIN_WORK, 1)
    (True, False)
    """
    return threads > 1 and work >= PARALLEL_MIN_WORK


def _split_threads(ntasks: int, work: int, threads: int | None = None) -> int:
    """The threads :func:`_run_split` runs ``ntasks`` tasks of ``work`` multiply-adds on
    (``threads``, default :func:`get_num_threads`, at most one per
    :data:`_MIN_TASKS_PER_THREAD` tasks); 1 where it does not split them.
    """
    nth = min(get_num_threads() if threads is None else threads,
              ntasks // _MIN_TASKS_PER_THREAD)
    return nth if may_split(work, nth) else 1


def _run_split(fn, ntasks: int, work: int, threads: int | None = None,
               native: Callable[..., "_native.Job | None"] | None = None) -> None:
    """Run ``fn(lo, hi)`` over ``range(ntasks)``, split across threads when worth it.

    ``threads``: the thread count (default :func:`get_num_threads`), reduced so that
    every thread has at least :data:`_MIN_TASKS_PER_THREAD` tasks.  The tasks are cut
    into chunks of contiguous tasks (about :data:`_CHUNKS_PER_THREAD` per thread, or
    :data:`_SPIN_CHUNKS_PER_THREAD` on the spinning pool) that
    the calling thread and ``threads - 1`` pool workers *claim* one after the other: a
    worker that starts late (its core busy with another process, or with another
    library's spinning threads) only leaves more chunks to the others, and a worker
    that has not started when every chunk is taken is cancelled, not waited for.  Which
    thread computes a task never changes how it is computed (bitwise the same results).
    The workers are those of :class:`._numba_pool.SpinPool` (they spin briefly between
    the calls of a burst instead of sleeping) unless ``debutla.config(spin=False)``; a
    call that finds that pool busy with another thread's product, or runs with
    ``spin=False``, uses a ``ThreadPoolExecutor``.  With ``debutla.config(pool="openmp")``
    and an OpenMP runtime registered (:mod:`._omp_team`: torch's, by the torch layers)
    the workers are that runtime's threads instead, wherever they ran that kind of
    product faster lately (:class:`._omp_team.PoolChooser`).  ``native(threads,
    bufs=None)``, when given, packs the same product for a body without Python
    (:mod:`._numba_native`: a :class:`._numba_native.Job`, or None to run ``fn``; its
    scratch in ``bufs``, the runner's), which the team and the spinning pool run
    (README_kernels.md, changes 17 and 31).
    """
    nth = _split_threads(ntasks, work, threads)
    if nth == 1:
        fn(0, ntasks)
        return
    team = _omp_team.team() if _config.get("pool") == "openmp" else None
    if team is None:
        _run_own(fn, ntasks, nth, native)
        return
    # the function's code, not its name: fused_backward's generic and generated paths
    # are two closures named "run" (5.7 against 3.6 ms for VGG: one record would mix them)
    key = (getattr(fn, "__code__", None), ntasks, work, nth)
    t0 = time.perf_counter()
    if _omp_team.chooser.use_team(key) and _run_team(team, fn, ntasks, nth, native):
        _omp_team.chooser.record(key, True, time.perf_counter() - t0)
        return
    _run_own(fn, ntasks, nth, native)
    _omp_team.chooser.record(key, False, time.perf_counter() - t0)


def _run_team(team: "_omp_team.OpenMPTeam", fn, ntasks: int, nth: int, native) -> bool:
    """:func:`_run_split` on the OpenMP ``team``: the GIL-free body when ``native``
    packs the product for it, else ``fn`` on chunks claimed in Python.  False, with
    nothing run, when another thread holds the team.
    """
    njob = None if native is None else native(nth)
    if njob is not None:
        return team.run_native(njob.body, njob.address, nth)
    nchunks = min(ntasks, nth * _SPIN_CHUNKS_PER_THREAD)
    job, claim = Job(fn, [ntasks * i // nchunks for i in range(nchunks + 1)],
                     nth - 1), threading.Lock()

    def body() -> None:
        _adopt_thread_scratch()
        claim_chunks(job, claim)

    if not team.run(body, nth):
        return False
    if job.errors:
        raise job.errors[0]
    return True


def _run_own(fn, ntasks: int, nth: int,
             native: Callable[..., "_native.Job | None"] | None = None) -> None:
    """:func:`_run_split` on debutla's own threads (``nth`` > 1 of them, the caller's
    one): the spinning pool, else (busy, or ``spin=False``) the executor.  On the pool,
    ``native(nth, pool.scratch)``'s GIL-free job when it gives one (change 31), else
    ``fn`` on chunks.
    """
    spin = _config.get("spin") is not False
    nchunks = min(ntasks, nth * (_SPIN_CHUNKS_PER_THREAD if spin else _CHUNKS_PER_THREAD))
    bounds = [ntasks * i // nchunks for i in range(nchunks + 1)]
    if spin:
        try:
            pool = _get_spin_pool(nth - 1)
        except Exception as e:  # e.g. the generic kernels failed to load: the executor
            _log.debug("debutla: spinning pool unavailable (%s)", e)
            pool = None
        if pool is not None:
            njob = (native(nth, pool.scratch) if native is not None and pool.native
                    and _POOL_BODIES else None)
            if njob is not None and pool.run_native(njob.body, njob.address, nth - 1):
                return
            if pool.run(fn, bounds, nth - 1):
                return

    job, claim = Job(fn, bounds, nth - 1), threading.Lock()
    pool = _get_pool(nth - 1)
    futs = [pool.submit(claim_chunks, job, claim) for _ in range(nth - 1)]
    claim_chunks(job, claim)
    for f in futs:
        if not f.cancel():  # not started yet: nothing left for it, do not wait
            f.result()
    if job.errors:
        raise job.errors[0]


# -- generic (factor by factor) products ---------------------------------------------------
def _run_generic(state: _State, X, Y, k: int, xn: int, layout: str, trans: str) -> None:
    """Factor-by-factor products over column panels; any ``trans``; ``xn`` input features."""
    u = np.uint64
    item = state.dtype.itemsize
    wmax = max(1, min(k, _FALLBACK_PANEL_BYTES // (2 * state.F * item)))
    pout = state.P if trans == "N" else state.Q
    if layout == "rows":
        xf, xc, of, oc = 1, xn, 1, pout
    else:
        xf, xc, of, oc = k, 1, k, 1
    Xf, Yf = X.reshape(-1), Y.reshape(-1)
    if trans == "N":
        Vs, dims = state.flat, state.dims
    elif trans == "H" and state.dtype.kind == "c":
        Vs, dims = state.conj_flat(), state.adims
    else:
        Vs, dims = state.flat, state.adims

    def run(lo: int, hi: int) -> None:
        ba, bb = _scratch(state.dtype, state.F * wmax)
        _generic[0].chain_panels(Vs, dims, Xf, u(xf), u(xc), u(xn), Yf, u(of),
                                 u(oc), u(lo), u(hi), u(wmax), ba, bb)

    _guarded_generic(lambda: _run_split(run, k, state.nnz * k))


def _guarded_generic(call: Callable[[], None]) -> None:
    """Run a generic-kernel call; after a cache failure, again on an in-memory compile."""
    mod = _generic_module()
    try:
        call()
    except Exception as e:
        if not _cache.is_cached(mod):
            raise
        _cache.forget_cache_files(mod, e)
        with _generic_lock:
            _generic[0] = _generic_src.load_uncached()
        call()


# -- specialised (generated, fused) products ------------------------------------------------
class RowsEpilogue:
    """Work on each part of a rows product's output right after the kernel wrote it.

    ``fn(Y_part)`` gets a ``(rows, P)`` view of the chain's output (C-contiguous rows;
    the operator's ``m <= P`` outputs are the first ``m`` columns, a padded chain's
    extra ones follow) and updates it in place; in a product split over threads each
    thread runs it on the rows it computed, so the work is split too.  The torch layers
    add their bias this way: a separate one-thread pass over the output cost about 0.3
    ms of the 4096 butterfly's two-thread forward at batch 256 (4 MB of output); the
    epilogue made that forward 1.09-1.12x faster on a quiet machine, 0.94-1.00x with a
    core held by another process, and changed nothing at one thread
    (``benchmarks/README_kernels.md``, change 15).  Each row passes through ``fn``
    exactly once.  Only the specialised rows kernels apply it; ``applied`` tells the
    caller whether the product did (else the caller does the work itself on the whole
    output).
    """

    __slots__ = ("fn", "applied", "bias")

    def __init__(self, fn: Callable[[np.ndarray], None]) -> None:
        self.fn = fn
        self.applied = False
        self.bias: np.ndarray | None = None

    @classmethod
    def adding(cls, bias: np.ndarray) -> "RowsEpilogue":
        """The epilogue that adds ``bias`` (1-D, the product's dtype) to the first
        ``bias.size`` entries of every row.

        Unlike a general ``fn``, the team's GIL-free body (:mod:`._numba_native`) can
        apply it on its own threads; the sums are the same bits either way.

        Examples
        --------
        >>> part = np.zeros((2, 3))
        >>> RowsEpilogue.adding(np.array([1.0, 2.0])).fn(part)
        >>> part
        array([[1., 2., 0.],
               [1., 2., 0.]])
        """
        b = np.asarray(bias)
        if b.ndim != 1:
            raise ValueError(f"RowsEpilogue.adding: bias must be 1-D, got shape {b.shape}")
        m = b.shape[0]

        def add(part: np.ndarray) -> None:
            np.add(part[:, :m], b, out=part[:, :m])

        ep = cls(add)
        ep.bias = b
        return ep


_EPILOGUE: contextvars.ContextVar[RowsEpilogue | None] = contextvars.ContextVar(
    "debutla_rows_epilogue", default=None)


class rows_epilogue:
    """Apply ``ep`` in the rows products of this block (this thread and context only).

    A class, not a generator: the torch layers enter it at every split product.

    Examples
    --------
    >>> import debutla as db
    >>> op = db.DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
    >>> ep = RowsEpilogue(lambda part: np.add(part, 1.0, out=part))
    >>> with rows_epilogue(ep):
    ...     y = op.matmat_rows(np.zeros((3, 4)))
    >>> if not ep.applied:  # a kernel without epilogues ran (the generic one, here)
    ...     _ = np.add(y, 1.0, out=y)
    >>> y[0]
    array([1., 1., 1., 1.])
    """

    __slots__ = ("ep", "token")

    def __init__(self, ep: RowsEpilogue | None) -> None:
        self.ep = ep

    def __enter__(self) -> RowsEpilogue | None:
        self.token = _EPILOGUE.set(self.ep)
        return self.ep

    def __exit__(self, *exc: Any) -> None:
        _EPILOGUE.reset(self.token)


def _kernel_name(k: int, layout: str, state: "_State | None" = None) -> str:
    if k == 1 or (layout == "rows" and k <= _ROWS_SINGLE_MAX):
        return "rows_single"
    if layout == "cols":
        if state is not None and state.cW > state.W and _wide_cols(state, k):
            return "cols_wide"
        return "cols_tiles"
    if state is not None and k <= NARROW_W < state.W:
        return "rows_narrow"  # one tile of NARROW_W rows instead of a part-empty wide one
    return "rows_tiles"


def _wide_cols(state: _State, k: int) -> bool:
    """Whether a column-layout product of ``k`` columns runs on ``cols_wide``: as many
    full wide tiles as the threads the chain's own tiles would split over need (one on
    one thread, two a thread beyond), so that the wider tiles never cost a thread.
    """
    if not _COLS_WIDE:
        return False
    nfull = k // state.cW
    nth = _split_threads((k + state.W - 1) // state.W, state.nnz * k)
    return nfull >= (1 if nth == 1 else _MIN_TASKS_PER_THREAD * nth)


def _tile_width(state: _State, kname: str) -> int:
    """The rows of a tile of kernel ``kname`` (``rows_narrow``: :data:`NARROW_W`,
    ``cols_wide``: the state's ``cW``).
    """
    if kname == "rows_narrow":
        return NARROW_W
    return state.cW if kname == "cols_wide" else state.W


def _run_fused(state: _State, mod, kname: str, X, Y, k: int) -> None:
    """One product on the generated kernel ``kname`` (``X`` with ``X.size // k`` features).

    The tile kernels take inputs with fewer than Q features as they are (the missing
    ones are zeros); the one-row kernel gets a padded copy of its one or two rows (a
    ``(Q', 1)`` column is one row too).
    """
    xn = X.size // k
    if kname == "rows_single" and xn < state.Q:
        X = _pad(X.reshape(k, xn), state.Q, "rows")
    Xf = X if X.ndim == 1 else X.reshape(-1)
    Yf = Y if Y.ndim == 1 else Y.reshape(-1)
    if kname == "cols_wide":
        _run_cols_wide(state, mod, Xf, Yf, k, xn)
        return
    ep = _EPILOGUE.get() if kname != "cols_tiles" else None
    Y2 = Yf.reshape(k, -1) if ep is not None else Yf  # the epilogue's rows (a view)
    if kname == "rows_single":  # one or two rows: never split (no pool, no closure)
        a, b = _scratch(state.dtype, state.F, state.dkey)
        mod.rows_single(state.vflat, Xf, Yf, 0, k, a, b, _ONE)
        if ep is not None:
            ep.fn(Y2)
            ep.applied = True
        return
    kern = mod.cols_tiles if kname == "cols_tiles" else mod.rows_tiles
    W = _tile_width(state, kname)
    wr = np.uint64(W)
    ntiles = (k + W - 1) // W
    work = state.nnz * k
    if work < PARALLEL_MIN_WORK:  # what _run_split would do, without its closure
        a, b = _scratch(state.dtype, state.F * W, state.dkey)
        kern(state.flat, Xf, Yf, k, 0, ntiles, a, b, wr, xn)
        if ep is not None:
            ep.fn(Y2)
            ep.applied = True
        return

    def run(lo: int, hi: int) -> None:
        a, b = _scratch(state.dtype, state.F * W, state.dkey)
        kern(state.flat, Xf, Yf, k, lo, hi, a, b, wr, xn)
        if ep is not None:
            ep.fn(Y2[lo * W:min(hi * W, k)])

    def native(threads: int, bufs: dict | None = None):  # the GIL-free body's job, or None
        if ep is not None and ep.bias is None:
            return None
        return _native.tiles_job(kern, state.flat, Xf, Yf, k, ntiles, W, xn, state.F * W,
                                 threads, None if ep is None else ep.bias, state.P, bufs,
                                 state.jobs if _LANE_JOBS else None)

    _run_split(run, ntiles, work, native=native)
    if ep is not None:
        ep.applied = True


def _run_cols_wide(state: _State, mod, Xf, Yf, k: int, xn: int) -> None:
    """A column-layout product on ``cols_wide``: its ``k // cW`` full tiles of ``cW``
    columns on the wide module ``mod``, the columns left (fewer than ``cW``) on the
    chain's own ``cols_tiles`` (a part-empty wide tile runs its passes' slower
    run-time-width loops).  The tasks split over threads are the wide tiles, then the
    own tiles left; a product of full wide tiles only runs on the GIL-free body.
    """
    cW, W = state.cW, state.W
    nfull = k // cW
    r0, r1 = nfull * cW // W, (k + W - 1) // W  # the chain's own tiles left
    wide, own = mod.cols_tiles, state.module().cols_tiles
    flat, F, work = state.flat, state.F, state.nnz * k

    def run(lo: int, hi: int) -> None:
        if lo < nfull:
            a, b = _scratch(state.dtype, F * cW, state.dkey)
            wide(flat, Xf, Yf, k, lo, min(hi, nfull), a, b, np.uint64(cW), xn)
        if hi > nfull:
            a, b = _scratch(state.dtype, F * W, state.dkey)
            own(flat, Xf, Yf, k, r0 + max(lo, nfull) - nfull, r0 + hi - nfull, a, b,
                np.uint64(W), xn)

    ntasks = nfull + r1 - r0
    if work < PARALLEL_MIN_WORK:
        run(0, ntasks)
        return

    def native(threads: int, bufs: dict | None = None):
        if r1 > r0:  # two kernels: the Python body
            return None
        return _native.tiles_job(wide, flat, Xf, Yf, k, nfull, cW, xn, F * cW, threads,
                                 None, state.P, bufs, state.jobs if _LANE_JOBS else None)

    _run_split(run, ntasks, work, native=native)


def _fused_guarded(state: _State, kname: str, X, Y, k: int) -> None:
    """:func:`_run_fused`; after a cache failure, again on an in-memory compile."""
    mod = state.module_for(kname)
    try:
        _run_fused(state, mod, kname, X, Y, k)
    except Exception as e:
        _run_fused(state, _recompiled(state, kname, mod, e), kname, X, Y, k)


def _recompiled(state: _State, kname: str, mod, e: Exception):
    """The module of kernel ``kname`` compiled in memory, after ``mod`` raised ``e``.

    Called while ``e`` is handled: a kernel loaded from the cache that fails (a
    corrupted cache file) is forgotten there and compiled again in memory; an
    exception of an in-memory module is the kernel's own, raised again.
    """
    state.lanes.clear()
    state.jobs.clear()
    if not _cache.is_cached(mod):
        raise e
    _cache.forget_cache_files(mod, e)
    with state._lock:
        if kname == "rows_narrow":
            mod = state._nmod = _cg.uncached_kernel_module(state.shapes, NARROW_W)
            _cg.replace_module(state.shapes, NARROW_W, mod)
        elif kname == "cols_wide":
            mod = state._cmod = _cg.uncached_kernel_module(state.shapes, state.cW)
            _cg.replace_module(state.shapes, state.cW, mod)
        else:
            mod = state._mod = _cg.uncached_kernel_module(state.shapes, state.W)
            _cg.replace_module(state.shapes, state.W, mod)
    return mod


def _compile(state: _State, kname: str) -> None:
    """Compile kernel ``kname`` of ``state`` for its dtype (a product on zeros), timed."""
    t0 = time.perf_counter()
    disp = _dispatcher(state, kname)
    misses = _cache_misses(disp)
    if kname == BACKWARD:
        run_backward(state, np.zeros(state.Q, state.dtype), np.zeros(state.P, state.dtype),
                     np.zeros(state.Q, state.dtype), np.zeros((1, state.nnz), state.dtype),
                     np.array([0, 1], np.uint64), 0, 1, state.Q, state.P, True)
    else:
        if kname == "cols_wide" and "cols_tiles" not in state.ready:
            _compile(state, "cols_tiles")  # it runs the columns left of the wide tiles
        k = state.cW if kname == "cols_wide" else 1  # one full wide tile
        cols = kname.startswith("cols")
        X = np.zeros((state.Q, k) if cols else (k, state.Q), state.dtype)
        Y = np.zeros((state.P, k) if cols else (k, state.P), state.dtype)
        with rows_epilogue(None):  # the product on zeros is not the caller's
            _fused_guarded(state, kname, X, Y, k)
    state.ready.add(kname)
    # loaded: the same dispatcher (no in-memory recompile after a cache failure) found
    # its machine code in the cache
    loaded = _dispatcher(state, kname) is disp and _cache_misses(disp) == misses
    what = "the backward" if kname == BACKWARD else f"the {kname}"
    _log_compile(time.perf_counter() - t0,
                 f"{what} kernel of a {len(state.shapes)}-factor chain "
                 f"({state.P}x{state.Q}, {state.dtype})", loaded)


def backward_ready(state: _State, batch: int) -> bool:
    """Whether the gradients of a ``batch``-row product run on the generated backward.

    A chain served by the generic kernels (:func:`_uses_generic`) never uses it.  The
    first call compiles it, in a background thread when the settings allow (``False``
    is returned meanwhile: the caller runs its generic backward), else in this thread.
    """
    if state.nnz < BACKWARD_MIN_NNZ or _uses_generic(state, batch):
        return False
    if BACKWARD in state.ready:
        return True
    if (state.shapes, state.dkey) in _BACKWARD_FAILED:
        return False
    if BACKWARD not in state.pending and not _config.get("background"):
        try:
            _compile(state, BACKWARD)
        except Exception as e:  # never fail a backward: the generic kernel serves it
            _backward_failed(state, e)
            return False
        return True
    _compile_in_background(state, BACKWARD)
    return False


#: Chains (shapes, dtype) whose generated backward failed to compile: the generic
#: backward serves them for the rest of the process; their forward kernels are kept.
_BACKWARD_FAILED: set = set()


def _backward_failed(state: _State, e: BaseException) -> None:
    _BACKWARD_FAILED.add((state.shapes, state.dkey))
    _log.warning("debutla: compiling the backward kernel failed (%s: %s); gradients of "
                 "this chain use the generic backward kernel", type(e).__name__, e)


def run_backward(state: _State, Xf, Gf, GXf, gvs, bounds, g0: int, g1: int, xn: int,
                 gm: int, need_x: bool, VT: np.ndarray | None = None) -> None:
    """Groups ``g0 .. g1-1`` of rows of the generated backward, on this thread.

    ``Xf``/``Gf`` are the flat row-major input (``xn`` features) and output gradient
    (``gm``), ``GXf`` receives the input gradient (when ``need_x``); group ``g`` is the
    rows ``bounds[g] .. bounds[g+1]-1`` (a ``uint64`` array) and accumulates its value
    gradients into ``gvs[g]`` (packed like the values); see :mod:`._numba_backward`.
    ``VT``: ``state.tflat`` when the caller holds it (a live state makes it anew at each
    access).  After a failure of a cached module, the module is compiled again in memory.
    """
    W = state.bw_W
    dt = state.dtype
    count, size, gsize = _bw.scratch_sizes(state.shapes, W)
    acts = _scratch(dt, size, f"bwa{count}" + state.dkey, count)
    ga, gb = _scratch(dt, gsize, "bwg" + state.dkey)
    u = np.uint64
    args = (state.flat, state.tflat if VT is None else VT, Xf, Gf, GXf, gvs, bounds, u(g0),
            u(g1), u(xn), u(gm),
            bool(need_x), acts, ga, gb, u(W), dt.type(0))
    mod = state.backward_module()
    try:
        mod.tiles_placed(*args)
    except Exception as e:
        if not _cache.is_cached(mod):
            raise
        _cache.forget_cache_files(mod, e)
        with state._lock:
            mod = state._bmod = _bw.uncached_kernel_module(state.shapes, W)
            _bw.replace_module(state.shapes, W, mod)
        mod.tiles_placed(*args)


def _compile_in_background(state: _State, kname: str) -> None:
    def work() -> None:
        try:
            _compile(state, kname)
        except Exception as e:  # never fail a product: keep serving with the generic kernel
            if kname == BACKWARD:  # the forward kernels are not concerned
                _backward_failed(state, e)
                return
            state.broken = True
            _log.warning("debutla: compiling the %s kernel failed (%s: %s); products of "
                         "this chain use the generic kernel", kname, type(e).__name__, e)
        finally:
            state.pending.discard(kname)

    with _kernels_lock:
        if kname in state.pending or kname in state.ready:
            return
        state.pending.add(kname)
    th = threading.Thread(target=work, name="debutla-compile", daemon=True)
    if not _compile_threads:
        atexit.register(_join_compiles)
    _compile_threads.append(th)
    th.start()


def wait_for_compiles(timeout: float | None = None) -> None:
    """Wait until the kernels compiling in background threads are ready.

    Examples
    --------
    >>> wait_for_compiles(timeout=1.0)
    """
    for th in list(_compile_threads):
        th.join(timeout=timeout)


def _join_compiles() -> None:
    """At exit, let background compiles finish (their kernels land in the cache)."""
    wait_for_compiles(timeout=60)


def compile_kernels(state: _State, batch: int, layout: str, trans: str = "N") -> None:
    """Compile (now, in this thread) what products of ``batch`` rows/columns need.

    Used by :func:`debutla.warmup`; only the generic kernel when the chain runs on it.
    """
    _generic_module()
    if trans != "N" and not _uses_generic(state, batch):
        state = state.adjoint(trans)
    if _uses_generic(state, batch):
        if not state.ready:  # compile the generic kernel for this dtype
            X = np.zeros((1, state.Q), state.dtype)
            _run_generic(state, X, np.zeros((1, state.P), state.dtype), 1, state.Q,
                         "rows", "N")
        return
    kname = _kernel_name(batch, layout, state if trans == "N" or layout == "cols" else None)
    if kname not in state.ready:
        _compile(state, kname)


def _uses_generic(state: _State, k: int) -> bool:
    return not state.fused or (state.nnz < CODEGEN_MIN_NNZ and state.nnz * k < CODEGEN_MIN_WORK
                               and not state.ready)


# -- products -------------------------------------------------------------------------
def _pad(X, Q: int, layout: str):
    """``X`` zero-padded to ``Q`` features (for the fused kernels, which need them all)."""
    if layout == "rows":
        Xp = np.zeros((X.shape[0], Q), X.dtype)
        Xp[:, :X.shape[1]] = X
    else:
        Xp = np.zeros((Q, X.shape[1]), X.dtype)
        Xp[:X.shape[0]] = X
    return Xp


#: The kernel that serves while another compiles (the same bits on other tiles).
_SERVES_MEANWHILE = {"rows_narrow": "rows_tiles", "cols_wide": "cols_tiles"}


def _apply(state: _State, X, out, layout: str, trans: str):
    """Shared body of :func:`apply_rows` and :func:`apply_cols`."""
    k = X.shape[0] if layout == "rows" else X.shape[1]
    xn = X.shape[1] if layout == "rows" else X.shape[0]
    pout = state.P if trans == "N" else state.Q
    if out is None:
        out = np.empty((k, pout) if layout == "rows" else (pout, k), dtype=state.dtype)
    if k == 0:
        return out
    if trans != "N":
        want = kname = _adjoint_kernel_name(state, trans, k, layout)
        adj = _ready_adjoint(state, trans, k, kname)
        if adj is None and kname in _SERVES_MEANWHILE:
            kname = _SERVES_MEANWHILE[kname]
            adj = _ready_adjoint(state, trans, k, kname)
        if adj is not None:
            if kname != want and _config.get("background"):
                _compile_in_background(adj, want)  # served by the own tiles meanwhile
            _fused_guarded(adj, kname, X, out, k)
            return out
        _generic_module()
        _run_generic(state, X, out, k, xn, layout, trans)
        if not _uses_generic(state, k) and _config.get("background"):
            _compile_in_background(state.adjoint(trans), want)
        return out
    if _uses_generic(state, k):
        _generic_module()
        _run_generic(state, X, out, k, xn, layout, trans)
        return out
    kname = _kernel_name(k, layout, state)
    if kname not in state.ready:
        if kname not in state.pending and not _config.get("background"):
            _compile(state, kname)  # this thread waits for the compile
        elif _SERVES_MEANWHILE.get(kname) in state.ready:
            # the chain's own tiles serve (same bits) while the narrow or wide ones
            # compile
            _compile_in_background(state, kname)
            kname = _SERVES_MEANWHILE[kname]
        else:
            _generic_module()
            _run_generic(state, X, out, k, xn, layout, "N")
            _compile_in_background(state, kname)  # started once; then we switch
            return out
    _fused_guarded(state, kname, X, out, k)
    return out


def lane_ready(state: _State) -> bool:
    """Whether :func:`rows_lane` may serve ``state`` under the settings now in effect.

    The operator asks once and remembers the answer with the settings' token
    (:func:`debutla._config.token`), so that repeated products skip its checks.

    Examples
    --------
    >>> lane_ready(prepare((np.ones((1, 2, 2, 1)),))) in (True, False)
    True
    """
    return state.fused


def single_reads_flat(shapes) -> bool:
    """Whether the one-row kernel of a chain (factor value shapes ``(nb, r, s, t)``, in
    application order) reads the values packed as they are: no ``t = 1, r >= 4``
    factor, whose blocks it wants transposed (``_State.vflat``).  A live state of such
    a chain then makes nothing for a product of one or two rows.

    Examples
    --------
    >>> single_reads_flat([(2, 2, 2, 1), (1, 2, 2, 2)]), single_reads_flat([(1, 4, 2, 1)])
    (True, False)
    """
    return not any(_cg.vec_transposed(sh) for sh in shapes)


def _ready_adjoint(state: _State, trans: str, k: int, kname: str) -> "_State | None":
    """The transposed chain's state whose kernel ``kname`` runs ``op(D)`` products of
    ``k`` rows (``trans`` "T" or "H") now, or None: they run on the generic kernel
    with this state's values (:func:`_apply`).
    """
    if _uses_generic(state, k):
        return None
    adj = state._adj.get(_adj_key(state, trans))
    if adj is None or kname not in adj.ready or _uses_generic(adj, k):
        return None
    return adj


def _adj_key(state: _State, trans: str) -> str:
    """The key of ``op(D)``'s state among ``state``'s adjoints (real: "H" is "T")."""
    return "T" if trans == "H" and state.dtype.kind != "c" else trans


def _adjoint_kernel_name(state: _State, trans: str, k: int, layout: str) -> str:
    """The kernel of an ``op(D)`` product (``trans`` "T" or "H"): the forward's choice
    on the transposed chain's state for the column layout, once that state is made
    (``cols_wide``); the row layout on the transposed chain's own tiles.
    """
    made = state._adj.get(_adj_key(state, trans)) if layout == "cols" else None
    return _kernel_name(k, layout, made)


def adjoint_lane_state(state: _State, trans: str) -> "_State | None":
    """The state whose one-row kernel computes ``op(D) @ x`` for a vector (``trans``
    "T", or "H" for a complex ``D``) as :func:`apply_rows` does now, or None.

    :func:`apply_rows` runs an adjoint product on the transposed chain's state
    (:meth:`_State.adjoint`) once its kernel is compiled; until then on the generic
    kernel with the forward state's values.  The operator's fast lane passes the state
    returned here to :func:`rows_lane`, which runs that same one-row kernel (same
    bits) and declines while it is not ready.

    Examples
    --------
    >>> adjoint_lane_state(prepare((np.ones((1, 2, 2, 1)),)), "T") is None  # no kernel
    True
    """
    return _ready_adjoint(state, trans, 1, "rows_single")


def rows_lane(state: _State, Xf, Yf, k: int) -> bool:
    """``Y = X @ D.T`` on a ready specialised kernel, or nothing.

    The fast lane of :func:`apply_rows` for repeated products (``trans = "N"``): the
    caller has checked everything :func:`apply_rows` checks and that :func:`lane_ready`
    holds under the same settings; this skips :func:`apply_rows`' choice between the
    generic kernel, a compile and the chain's kernel, and runs the chain's kernel the
    same way (:func:`_fused_guarded`).  The first product of each batch size records
    its call (``_State.lanes``: kernel, values, tiles, scratch size; for at most
    ``_LANES_MAX`` sizes) and later ones make that call directly
    (``README_kernels.md``, change 25); a kernel that raises is handled as
    :func:`_fused_guarded` handles it.

    Parameters
    ----------
    state : object
        From :func:`prepare`.
    Xf, Yf : numpy.ndarray
        ``X`` (``k x Q``) and the writeable result (``k x P``), C-contiguous, flat or
        not, the state's dtype, not overlapping.
    k : int
        Rows, at least 1.

    Returns
    -------
    bool
        True when the product was computed into ``Yf``: the chain's kernel for ``k``
        rows is compiled (the same kernel and the same bits as :func:`apply_rows`; a
        product large enough to split across threads goes to :func:`_fused_guarded`
        as there, change 31; once the lane is recorded, the lane posts the product's
        recorded job itself, :func:`_lane_split`, change 38).  False when nothing was
        done: the caller runs :func:`apply_rows`, which compiles or falls back.

    Examples
    --------
    >>> st = prepare((np.ones((1, 2, 2, 1)),))
    >>> rows_lane(st, np.ones(2), np.empty(2), 1)  # no specialised kernel yet
    False
    """
    if state.broken:
        return False
    work = state.nnz * k
    if work >= PARALLEL_MIN_WORK and not _LANE_SPLITS:
        return False
    lane = state.lanes.get(k)
    nth = 0  # the lane's recorded call does not serve this product
    if lane is not None and _EPILOGUE.get() is None and Xf.size == k * state.Q:
        nth = 1 if work < PARALLEL_MIN_WORK else _lane_threads(lane, work)
    if lane is None or nth != 1:
        kname = lane[6] if lane is not None else _kernel_name(k, "rows", state)
        if kname not in state.ready:
            return False
        if lane is None and not state.live and len(state.lanes) < _LANES_MAX:
            _lane_call(state, kname, k)
        if not (lane is not None and nth > 1 and _lane_split(state, lane, Xf, Yf, k, nth)):
            _fused_guarded(state, kname, Xf, Yf, k)  # what apply_rows runs (split or not)
        return True
    # what _run_fused does for this product (one thread, no epilogue, Q features),
    # without looking anything up: the same kernel with the same arguments
    fn, V, tiles, wr, size, mod, kname = lane
    bufs = getattr(_tls, "bufs", _NO_BUFS).get(state.dkey)  # _scratch's, inlined
    if bufs is None or bufs[0].size < size or len(bufs) != 2:
        bufs = _scratch(state.dtype, size, state.dkey)
    X1 = Xf.ravel()  # C-contiguous: a flat view (half the time of reshape(-1))
    Y1 = Yf.ravel()
    try:
        if tiles:
            fn(V, X1, Y1, k, 0, tiles, bufs[0], bufs[1], wr, state.Q)
        else:
            fn(V, X1, Y1, 0, k, bufs[0], bufs[1], _ONE)
    except Exception as e:
        _run_fused(state, _recompiled(state, kname, mod, e), kname, Xf, Yf, k)
    return True


_LANES_MAX = 64  # most batch sizes whose calls one state records (rows_lane)


def _lane_threads(lane: tuple, work: int) -> int:
    """The threads :func:`_run_fused` would split the product the lane recorded
    (``work`` multiply-adds) across, with the threads set now (:func:`_split_threads`);
    1 where it would not split it (the one-row kernel never splits).
    """
    tiles = lane[2]
    return _split_threads(tiles, work) if tiles > 0 else 1


_LANE_JOBS = True  # change 38: split products' jobs copied from records, the lane posts its


def _lane_split(state: _State, lane: tuple, Xf, Yf, k: int, nth: int) -> bool:
    """The split product of the lane ``lane`` (``k`` rows, no epilogue, ``Q`` features,
    on ``nth`` threads) as the GIL-free job that :func:`_run_fused` would post to the
    spinning pool, without the calls in between; False, with nothing run, where that
    path would not post it (the pool absent, busy, or not ready for such jobs; the
    OpenMP team or the executor chosen; an input the body does not take).

    The job is a copy of the one recorded for the product (``state.jobs``, the
    ``memo`` of :func:`._numba_native.tiles_job`, which :func:`_run_fused` fills
    too: packing a job anew took 8-10 us, most of it Python run cold after the
    product before it), and the calls of :func:`_run_fused`, :func:`_run_split` and
    :func:`_run_own` are left out (a few us more).  The same body, kernel, tiles and
    scratch as :func:`_run_fused`'s job: the same bits (change 38).
    """
    if (not _LANE_JOBS or not _POOL_BODIES or _config.get("pool") == "openmp"
            or _config.get("spin") is False):
        return False
    pool = _spin_pool
    if pool is None or pool.workers < nth - 1 or not pool.native:
        return False
    job = _native.tiles_job(lane[5].rows_tiles, lane[1], Xf.ravel(), Yf.ravel(), k,
                            lane[2], int(lane[3]), state.Q, lane[4], nth, None, state.P,
                            pool.scratch, state.jobs)
    return job is not None and pool.run_native(job.body, job.address, nth - 1)


def _lane_call(state: _State, kname: str, k: int) -> tuple:
    """Record the fast lane's call of kernel ``kname`` of ``state`` for ``k`` rows.

    See ``_State.lanes``; :func:`rows_lane` makes the call, to the kernel's compiled
    entry point for the lane's argument types (:func:`_entry`).
    """
    mod = state.module_for(kname)
    buf = np.empty(1, state.dtype)  # stands for X, Y and the scratch: their Numba type
    lane: tuple
    if kname == "rows_single":
        V = state.vflat
        fn = _entry(mod.rows_single, (V, buf, buf, 0, k, buf, buf, _ONE))
        lane = (fn, V, 0, _ONE, state.F, mod, kname)
    else:
        W = _tile_width(state, kname)
        V, tiles, wr = state.flat, (k + W - 1) // W, np.uint64(W)
        fn = _entry(mod.rows_tiles, (V, buf, buf, k, 0, tiles, buf, buf, wr, state.Q))
        lane = (fn, V, tiles, wr, state.F * W, mod, kname)
    state.lanes[k] = lane
    return lane


_LANE_ENTRY = True  # the lane calls the kernel's compiled entry point (change 32)


def _entry(disp, args: tuple):
    """The compiled entry point of dispatcher ``disp`` for arguments of ``args``' Numba
    types (what the dispatcher calls once it has typed them: the same machine code), or
    ``disp`` itself when it holds no such compiled function.

    The fast lane's arguments always have those types (the state's dtype, flat
    C-contiguous arrays, Python ints, the tile rows as ``uint64``), so the lane skips
    the dispatcher's typing of its ten arguments (0.3 us a call; README_kernels.md,
    change 32).
    """
    if not _LANE_ENTRY:
        return disp
    try:
        cres = disp.overloads.get(tuple(numba.typeof(a) for a in args))
        fn = getattr(cres, "entry_point", None)
    except Exception:  # a Numba without these internals: the dispatcher serves
        fn = None
    return disp if fn is None else fn


def apply_rows(state: _State, X, out=None, trans: str = "N"):
    """``X @ op(D).T`` for ``X`` of shape ``(k, n)``; see :mod:`debutla.backends`.

    Parameters
    ----------
    state : object
        From :func:`prepare`.
    X : numpy.ndarray (k, n), C-contiguous, the state's dtype
        ``n`` at most the input size of ``op(D)`` (missing features are zeros).
    out : numpy.ndarray (k, p), optional
        C-contiguous, writeable, the state's dtype, not overlapping ``X``; written in
        place and returned.
    trans : {"N", "T", "H"}
        ``op(D)`` is ``D``, ``D^T`` or ``D^H``.

    Returns
    -------
    numpy.ndarray (k, p)

    Examples
    --------
    >>> st = prepare((np.ones((1, 2, 2, 1)),))
    >>> apply_rows(st, np.ones((1, 2)))
    array([[2., 2.]])
    """
    return _apply(state, X, out, "rows", trans)


def apply_cols(state: _State, X, out=None, trans: str = "N"):
    """``op(D) @ X`` for ``X`` of shape ``(n, k)``; see :func:`apply_rows`.

    Examples
    --------
    >>> st = prepare((np.ones((1, 2, 2, 1)),))
    >>> apply_cols(st, np.ones((2, 1)))
    array([[2.],
           [2.]])
    """
    return _apply(state, X, out, "cols", trans)
