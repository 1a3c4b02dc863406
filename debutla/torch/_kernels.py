"""A fused CPU backward for ``Y = X @ D.T``: recompute, walk back, accumulate, per tile.

:func:`fused_backward` runs one of two kernels: the chain's generated backward
(:mod:`debutla.backends._numba_backward`, every size a constant; chains of at least
``debutla.backends.numba_.BACKWARD_MIN_NNZ`` values once it is compiled), or the kernel
of this module, whose sizes are run-time arguments (one compiled kernel per dtype), for
small chains and the calls before that compile.  Both follow the scheme below.

The batch is cut into tiles of ``W`` rows.  For one tile the kernel

1. gathers the rows of ``X`` features-major into a scratch block (zero-padded to ``Q``),
2. recomputes every factor's input (``X_1 = X``, ``X_{i+1} = R_i X_i``) into one scratch
   area (``W * sum q_i`` values, sized to stay in cache),
3. gathers the tile of ``G = dL/dY`` (zero-padded to ``P``) and walks the chain back:
   for factor ``i``, in one pass over each pair of rows,
   ``dV_i[b, i, j, k] += sum_w G_i[(b,i,k), w] X_i[(b,j,k), w]`` and
   ``G_{i-1}[(b,j,k), w] = sum_i V[b, i, j, k] G_i[(b,i,k), w]``,
4. scatters ``G_0`` (cut to ``n``) to the rows of ``dL/dX``.

Memory traffic is the minimum (read ``X`` and ``G``, write ``dL/dX``; the intermediates
never leave the cache) and nothing is allocated per tile.  Sizes are run-time arguments
(one compiled kernel per dtype, cached on disk by Numba).

The kernel runs through :func:`_tile_backward_placed`, which first places the stack
(:func:`debutla.backends._numba_stack.place_stack`): the kernel's register spills then
sit at the same place whatever Python call depth or thread calls it.

Threads and determinism
-----------------------
The tiles are cut into at most :data:`MAX_GROUPS` contiguous *groups*, a number that
depends on the batch and the chain only, never on the thread count.  Each group
accumulates its own value gradients; the groups are summed in their order at the end
(by the OpenMP team's threads themselves when they ran the backward:
:mod:`debutla.backends._numba_native`).
Threads take whole groups (the Numba backend's pool, :func:`debutla.backends.numba_.
_run_split`), so the results are bitwise the same with any number of threads.  The
thread count is the caller's (:func:`debutla.torch._ops._num_threads`).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import cast

import numba
import numpy as np

from ..backends import _numba_backward as _bw
from ..backends import _numba_native as _native
from ..backends import numba_ as _nbk
from ..backends._numba_codegen import norm_shapes
from ..backends._numba_tiles import gather_tile, scatter_tile
from ..backends._numba_stack import place_stack

__all__ = ["col_sums", "fused_backward", "groups_of", "MAX_GROUPS", "GROUP_MIN_WORK"]

#: Bytes of scratch one tile may use (intermediates + two gradient blocks).
TILE_BYTES = 2**24
#: Most groups of tiles (each with its own value-gradient accumulator; see above).
MAX_GROUPS = 16
#: Least multiply-adds (``rows * nnz``) of a group.
GROUP_MIN_WORK = 500_000
_MIN_W, _MAX_W = 4, 64


@numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"}, error_model="numpy")
def _tile_backward(X, G, GX, dims, vals, voff, xoff, lo, hi, W, n, m, need_x,
                   acts, ga, gb, gv, z):  # pragma: no cover - compiled
    """Fused backward over rows ``lo .. hi-1`` (all sizes uint64; see the module doc).

    ``z`` is a zero of the value dtype: the reductions accumulate in that dtype.
    """
    zero = np.uint64(0)
    one = np.uint64(1)
    nf = np.uint64(dims.shape[0])
    Q = dims[0, 0] * dims[0, 2] * dims[0, 3]
    P = dims[nf - one, 0] * dims[nf - one, 1] * dims[nf - one, 3]
    Xf = X.reshape(-1)
    Gf = G.reshape(-1)
    GXf = GX.reshape(-1)
    t0 = lo
    while t0 < hi:
        w = min(W, hi - t0)
        # 1. gather X (features-major, zero-padded)
        gather_tile(Xf, t0, w, n, Q, W, acts)
        # 2. recompute every factor's input (the last output is not needed)
        for fi in range(nf - one):
            nb, r, s, t = dims[fi, 0], dims[fi, 1], dims[fi, 2], dims[fi, 3]
            xin = xoff[fi]
            xout = xoff[fi + one]
            vo = voff[fi]
            for b in range(nb):
                for i in range(r):
                    for k in range(t):
                        ob = xout + ((b * r + i) * t + k) * W
                        vb = vo + ((b * r + i) * s) * t + k
                        ib = xin + ((b * s) * t + k) * W
                        v = vals[vb]
                        for c in range(W):
                            acts[ob + c] = v * acts[ib + c]
                        for j in range(one, s):
                            v = vals[vb + j * t]
                            ij = ib + j * t * W
                            for c in range(W):
                                acts[ob + c] += v * acts[ij + c]
        # 3. gather G (zero-padded to P)
        gather_tile(Gf, t0, w, m, P, W, ga)
        # 4. walk back
        cur = ga
        nxt = gb
        fi = nf
        while fi > zero:
            fi -= one
            nb, r, s, t = dims[fi, 0], dims[fi, 1], dims[fi, 2], dims[fi, 3]
            xin = xoff[fi]
            vo = voff[fi]
            want_gx = fi > zero or need_x
            for b in range(nb):
                for j in range(s):
                    for k in range(t):
                        xb = xin + ((b * s + j) * t + k) * W
                        nbse = ((b * s + j) * t + k) * W
                        if want_gx:
                            for c in range(W):
                                nxt[nbse + c] = 0.0
                        for i in range(r):
                            gbse = ((b * r + i) * t + k) * W
                            vi = vo + ((b * r + i) * s + j) * t + k
                            v = vals[vi]
                            acc = z
                            if want_gx:
                                for c in range(W):
                                    gg = cur[gbse + c]
                                    acc += gg * acts[xb + c]
                                    nxt[nbse + c] += v * gg
                            else:
                                for c in range(W):
                                    acc += cur[gbse + c] * acts[xb + c]
                            gv[vi] += acc
            cur, nxt = nxt, cur
        # 5. scatter dL/dX
        if need_x:
            scatter_tile(cur, t0, w, n, W, GXf)
        t0 += W


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _tile_backward_placed(X, G, GX, dims, vals, voff, xoff, lo, hi, W, n, m, need_x,
                          acts, ga, gb, gv, z):  # pragma: no cover - compiled
    """:func:`_tile_backward` with its frame at a fixed place (see ``_numba_stack``)."""
    place_stack()
    _tile_backward(X, G, GX, dims, vals, voff, xoff, lo, hi, W, n, m, need_x,
                   acts, ga, gb, gv, z)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def col_sums(g, block, wide):  # pragma: no cover - compiled
    """Column sums of the 2-D C-contiguous ``g``: ``block`` rows at a time in ``g``'s
    dtype, each in row order, the block sums (and the rows after the last whole block)
    in the dtype of the zero ``wide``.

    The bits of NumPy's ``g.reshape(-1, block, m).sum(axis=1).sum(axis=0, dtype=W)``
    (plus the tail's ``sum(axis=0, dtype=W)``) wherever NumPy sums in row order (two
    columns or more; it sums a single, contiguous column pairwise), in one pass and one
    call: the torch layers' bias gradient took 80-105 us with those NumPy calls right
    after a backward, out of cache (``debutla.torch._ops._col_sums``).
    """
    rows, m = g.shape
    full = rows - rows % block
    acc = np.zeros(m, type(wide))
    blk = np.empty(m, g.dtype)
    for b0 in range(0, full, block):
        row = g[b0]
        for j in range(m):
            blk[j] = row[j]
        for i in range(b0 + 1, b0 + block):
            row = g[i]
            for j in range(m):
                blk[j] += row[j]
        for j in range(m):
            acc[j] += blk[j]
    if full < rows:
        tail = np.zeros(m, type(wide))
        for i in range(full, rows):
            row = g[i]
            for j in range(m):
                tail[j] += row[j]
        for j in range(m):
            acc[j] += tail[j]
    out = np.empty(m, g.dtype)
    for j in range(m):
        out[j] = acc[j]
    return out


def groups_of(batch: int, W: int, nnz: int) -> list[int]:
    """Row bounds of the groups of tiles (depends on the sizes only, never on threads).

    Examples
    --------
    >>> groups_of(256, 64, 75776)
    [0, 64, 128, 192, 256]
    >>> groups_of(10, 64, 75776)
    [0, 10]
    """
    ntiles = (batch + W - 1) // W
    g = max(1, min(ntiles, MAX_GROUPS, (batch * nnz) // max(1, GROUP_MIN_WORK)))
    return [min(batch, (ntiles * i // g) * W) for i in range(g + 1)]


@lru_cache(maxsize=64)
def _layout(shapes: tuple) -> tuple:
    """``(dims, voff, nnz, parts)`` of value shapes ``((nb, r, s, t), ...)``: ``uint64``
    arrays of the shapes and of each factor's offset in the packed values, their total
    count, and ``(offset, size, shape)`` per factor as Python ints.
    Made once per chain (NumPy's small-array calls cost 50-70 us per backward when the
    product has just pushed the interpreter's data out of the cache).
    """
    dims = np.asarray(shapes, dtype=np.uint64).reshape(-1, 4)
    sizes = dims.prod(axis=1)
    voff = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
    parts = tuple((int(o), int(z), tuple(int(v) for v in d))
                  for o, z, d in zip(voff, sizes, dims))
    return dims, voff, int(sizes.sum()), parts


@lru_cache(maxsize=256)
def _groups(batch: int, W: int, nnz: int) -> tuple[list[int], np.ndarray]:
    """:func:`groups_of` and the same bounds as a ``uint64`` array (the kernels')."""
    bounds = groups_of(batch, W, nnz)
    return bounds, np.asarray(bounds, dtype=np.uint64)


def _sum_groups(gvs: np.ndarray) -> np.ndarray:
    """The rows of ``gvs`` summed in order (the same sum for any thread count)."""
    gv = gvs[0].copy() if len(gvs) == 1 else np.add(gvs[0], gvs[1])
    for extra in gvs[2:]:
        gv += extra
    return gv


def fused_backward(X: np.ndarray, G: np.ndarray, factors, shapes, n: int, m: int,
                   need_x: bool, threads: int = 1, state=None):
    """Input and value gradients of ``Y = X @ D.T`` (NumPy arrays, one dtype).

    Parameters
    ----------
    X : ndarray (batch, n), C-contiguous
    G : ndarray (batch, m), C-contiguous
    factors : sequence of ndarray (nb, r, s, t), or None with ``state``
        (the state's own values then serve)
    shapes : sequence of (nb, r, s, t), or None with ``state``
    n, m : int
        The served shape (at most the chain's ``(P, Q)``).
    need_x : bool
        Also compute ``dL/dX``.
    threads : int
        Threads to split the groups of tiles over (the result does not depend on it).
    state : numba backend state of ``factors`` in ``X``'s dtype, optional
        With it, the chain's generated backward (:mod:`debutla.backends._numba_backward`)
        runs once it is compiled (:func:`debutla.backends.numba_.backward_ready`); the
        kernel of this module serves small chains and the calls before that.

    Returns
    -------
    (gx, gvs) : ndarray (batch, n) or None, list of ndarray (nb, r, s, t)
    """
    dt = X.dtype
    B = X.shape[0]
    GX = np.empty((B, n), dtype=dt) if need_x else np.empty((1, 1), dtype=dt)
    if state is not None and _nbk.backward_ready(state, B):
        parts = _layout(state.shapes)[3]
        gv = _generated(state, X, G, GX, n, m, need_x, threads)
    else:
        if factors is None or shapes is None:
            if state is None:
                raise ValueError("fused_backward: factors and shapes are needed without "
                                 "a state")
            factors, shapes = (state.flat,), state.shapes
        dims, voff, nnz, parts = _layout(norm_shapes(shapes))
        gv = _generic(X, G, GX, factors, dims, voff, nnz, n, m, need_x, threads)
    out = [gv[o:o + z].reshape(d) for o, z, d in parts]
    return (GX if need_x else None), out


def _generated(state, X: np.ndarray, G: np.ndarray, GX: np.ndarray, n: int, m: int,
               need_x: bool, threads: int) -> np.ndarray:
    """:func:`fused_backward` on the chain's generated backward; the value gradients."""
    dt = X.dtype
    nnz = state.nnz
    bounds, ubounds = _groups(X.shape[0], state.bw_W, nnz)
    ng = len(bounds) - 1
    # the groups' gradients (a row each): fresh zeros for the Python body, made at its
    # first chunk (a memset of reused memory before the product was 2-3% slower at one
    # thread, the VGG layer's training call after nn.Linear); reused scratch for the
    # team's GIL-free body, which zeroes each group's row right before computing it
    # (and then no fresh zeros are made: 57 us for the VGG chain) and sums the rows
    # into ``gv`` once every group is done (both threads: 2.4 MB of rows for VGG at
    # batch 256, 100-135 us on one thread after the product)
    gvs: np.ndarray | None = None
    zero_rows = False  # the body's scratch, left to the Python body by a busy team
    made = threading.Lock()
    Xf, Gf, GXf = X.reshape(-1), G.reshape(-1), GX.reshape(-1)
    VT = state.tflat  # once per call (a live state checks its values at each access)
    jobs: list = []

    def run(lo: int, hi: int) -> None:
        nonlocal gvs
        if gvs is None:
            with made:
                if gvs is None:
                    gvs = np.zeros((ng, nnz), dtype=dt)
        if zero_rows:
            gvs[lo:hi] = 0
        _nbk.run_backward(state, Xf, Gf, GXf, gvs, ubounds, lo, hi, n, m, need_x, VT)

    def native(threads: int, bufs: dict | None = None):  # the groups for a GIL-free body
        nonlocal gvs, zero_rows
        buf, = _nbk._scratch(dt, ng * nnz, "bw-gvs" + dt.str, 1)
        scratch = buf[:ng * nnz].reshape(ng, nnz)
        count, size, gsize = _bw.scratch_sizes(state.shapes, state.bw_W)
        gv = np.empty(nnz, dtype=dt)
        job = _native.backward_job(
            state.backward_module().tiles_placed, state.flat, VT, Xf, Gf,
            GXf, scratch, ubounds, n, m, need_x, state.bw_W, count, size, gsize,
            threads, gv, bufs)
        if job is not None:
            gvs, zero_rows = scratch, True
            jobs.append(job)
        return job

    _nbk._run_split(run, ng, X.shape[0] * nnz, threads=threads, native=native)
    if jobs and _native.groups_summed(jobs[-1]):  # the last packed (a busy team: the pool's)
        return jobs[-1].keep[-1]
    return _sum_groups(cast(np.ndarray, gvs))  # run or native set it (one group at least)


def _generic(X: np.ndarray, G: np.ndarray, GX: np.ndarray, factors, dims: np.ndarray,
             voff: np.ndarray, nnz: int, n: int, m: int, need_x: bool,
             threads: int) -> np.ndarray:
    """:func:`fused_backward` on this module's kernel; the value gradients."""
    dt = X.dtype
    B = X.shape[0]
    vals = np.concatenate([np.ascontiguousarray(v, dtype=dt).reshape(-1) for v in factors])
    qs = dims[:, 0] * dims[:, 2] * dims[:, 3]
    ps = dims[:, 0] * dims[:, 1] * dims[:, 3]
    F = int(max(qs.max(), ps.max()))
    item = dt.itemsize
    W = _MAX_W
    while W > _MIN_W and (int(qs.sum()) + 2 * F) * W * item > TILE_BYTES:
        W //= 2
    xoff = (np.concatenate([[0], np.cumsum(qs)[:-1]]) * W).astype(np.uint64)
    bounds = groups_of(B, W, nnz)
    zeros = np.zeros((len(bounds) - 1, nnz), dtype=dt)
    u = np.uint64

    def run(lo: int, hi: int) -> None:
        # per-thread scratch, kept between calls (fresh memory costs a page fault per
        # 4 KiB: about 1.5 ms per call for the VGG chain's 6 MB of intermediates)
        acts, = _nbk._scratch(dt, int(qs.sum()) * W, "bw-acts" + dt.str, 1)
        ga, gb = _nbk._scratch(dt, F * W, "bw-grads" + dt.str)
        for g in range(lo, hi):
            _tile_backward_placed(X, G, GX, dims, vals, voff, xoff, u(bounds[g]),
                                  u(bounds[g + 1]), u(W), u(n), u(m), bool(need_x),
                                  acts, ga, gb, zeros[g], dt.type(0))

    _nbk._run_split(run, len(bounds) - 1, B * nnz, threads=threads)
    return _sum_groups(zeros)
