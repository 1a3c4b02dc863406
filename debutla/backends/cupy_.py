"""CuPy backend: NVIDIA GPUs.

Rows layout ``(k, Q)``: one fused kernel applies the whole chain, ``R`` batch rows
(1 to 8) per thread block, the rows and their intermediates held in shared memory (two
ping-pong buffers of the largest size), so global memory sees only the input, the
output and the values (each value read once per ``R`` rows).
Rows too long for shared memory, and the column layout ``(Q, k)``, run one elementwise
CUDA kernel per factor: each thread computes one output entry
``y[b, i, tau] = sum_j V[b, i, j, tau] x[b, j, tau]`` of one batch column, reading the
canonical value layout directly.  Factors are applied one after another through two
ping-pong buffers; nothing is transposed.  Threads are ordered so that neighbouring
threads read neighbouring inputs: along the batch in the column layout ``(Q, k)``, along
``tau`` in the row layout ``(k, Q)``.

The operator's values are uploaded to the device once per operator and dtype (cached by
the operator), so ``op @ cupy_array`` just works; results stay on the device.
"""

from __future__ import annotations

import cupy as cp
import numpy as np

from .. import _config

__all__ = ["prepare", "apply_rows", "apply_cols"]  # name, xp: protocol fields

name = "cupy"
xp = cp

_BODY = """
    const long long o = {o};
    const long long c = {c};
    const long long tt = o % t;
    const long long ii = (o / t) % r;
    const long long b = o / (r * t);
    const long long vbase = ((b * r + ii) * s) * t + tt;
    const long long xbase = b * s * t + tt;
    T acc = T(0);
    for (long long j = 0; j < s; ++j) {{
        acc += V[vbase + j * t] * X[{xidx}];
    }}
    y = acc;
"""

_rows = cp.ElementwiseKernel(
    "raw T V, raw T X, int64 r, int64 s, int64 t, int64 P, int64 Q",
    "T y",
    _BODY.format(o="i % P", c="i / P", xidx="c * Q + xbase + j * t"),
    "debutla_factor_rows",
)

_cols = cp.ElementwiseKernel(
    "raw T V, raw T X, int64 r, int64 s, int64 t, int64 P, int64 K",
    "T y",
    _BODY.format(o="i / K", c="i % K", xidx="(xbase + j * t) * K + c"),
    "debutla_factor_cols",
)


_FUSED_SRC = r"""
#include <cupy/complex.cuh>

// Apply a whole chain to R batch rows held in shared memory (one block per R rows):
// every value read from global memory serves R rows.
// meta: per factor (r, s, t, p, value offset).
template <typename T, int R>
__global__ void debutla_fused_rows(const T* __restrict__ X, T* __restrict__ Y,
                                   const T* __restrict__ V, const long long* __restrict__ meta,
                                   const int nf, const int Q, const int P, const int maxsize,
                                   const long long k)
{
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* buf0 = reinterpret_cast<T*>(smem_raw);
    T* buf1 = buf0 + R * maxsize;
    for (long long c0 = (long long)blockIdx.x * R; c0 < k; c0 += (long long)gridDim.x * R) {
        const int nr = (k - c0 < R) ? (int)(k - c0) : R;
        for (int rr = 0; rr < R; ++rr) {
            const T* xrow = X + (c0 + rr) * (long long)Q;
            for (int i = threadIdx.x; i < Q; i += blockDim.x)
                buf0[rr * maxsize + i] = (rr < nr) ? xrow[i] : T(0);
        }
        __syncthreads();
        T* in = buf0;
        T* out = buf1;
        for (int f = 0; f < nf; ++f) {
            const int r = (int)meta[5 * f + 0];
            const int s = (int)meta[5 * f + 1];
            const int t = (int)meta[5 * f + 2];
            const int p = (int)meta[5 * f + 3];
            const T* Vf = V + meta[5 * f + 4];
            const bool last = (f == nf - 1);
            for (int o = threadIdx.x; o < p; o += blockDim.x) {
                const int tt = o % t;
                const int ii = (o / t) % r;
                const int b = o / (r * t);
                const T* vp = Vf + ((b * r + ii) * s) * t + tt;
                const int xo = b * s * t + tt;
                T acc[R];
#pragma unroll
                for (int rr = 0; rr < R; ++rr) acc[rr] = T(0);
                for (int j = 0; j < s; ++j) {
                    const T v = vp[j * t];
#pragma unroll
                    for (int rr = 0; rr < R; ++rr) acc[rr] += v * in[rr * maxsize + xo + j * t];
                }
                if (last) {
                    for (int rr = 0; rr < nr; ++rr) Y[(c0 + rr) * (long long)P + o] = acc[rr];
                } else {
#pragma unroll
                    for (int rr = 0; rr < R; ++rr) out[rr * maxsize + o] = acc[rr];
                }
            }
            __syncthreads();
            T* tmp = in; in = out; out = tmp;
        }
    }
}
"""

_TYPES = {"float32": "float", "float64": "double", "complex64": "complex<float>",
          "complex128": "complex<double>"}
_ROWS = (8, 4, 2, 1)
_BLOCKS_PER_SM = 2
_module = None
# Shared memory per block we may ask for (H100: 227 KiB opt-in; older GPUs 48-163 KiB).
_SMEM_CAP = 48 * 1024
_NUM_SM = 1


_kernels: dict = {}


def _fused_kernel(dtype, rows: int):
    kern = _kernels.get((dtype, rows))
    if kern is not None:
        return kern
    global _module, _SMEM_CAP, _NUM_SM
    if _module is None:
        names = [f"debutla_fused_rows<{t},{R}>" for t in _TYPES.values() for R in _ROWS]
        module = cp.RawModule(code=_FUSED_SRC, options=("-std=c++17",), name_expressions=names)
        attrs = cp.cuda.Device().attributes
        _SMEM_CAP = attrs.get("MaxSharedMemoryPerBlockOptin", 48 * 1024)
        _NUM_SM = attrs.get("MultiProcessorCount", 1)
        _module = module
    kern = _module.get_function(f"debutla_fused_rows<{_TYPES[dtype.name]},{rows}>")
    _kernels[(dtype, rows)] = kern
    return kern


def _rows_per_block(k: int, maxsize: int, itemsize: int):
    """Rows per block: each value read serves R rows, but shared memory limits R, and
    blocks must stay plentiful (two per multiprocessor) and small enough for
    ``_BLOCKS_PER_SM`` of them to share a multiprocessor.  None: the rows do not fit.
    """
    forced = _config.get("cupy_rows")
    for R in _ROWS:
        smem = 2 * R * maxsize * itemsize
        if smem > _SMEM_CAP:
            continue
        if forced is not None:
            if R == forced:
                return R
            continue
        if R == 1 or (k >= 2 * _NUM_SM * R and smem * _BLOCKS_PER_SM <= _SMEM_CAP):
            return R
    return None


class _Spec:
    """Sizes of one factor as the kernels read them."""

    __slots__ = ("nb", "r", "s", "t", "p", "q")

    def __init__(self, nb: int, r: int, s: int, t: int) -> None:
        self.nb, self.r, self.s, self.t = nb, r, s, t
        self.p, self.q = nb * r * t, nb * s * t


class _State:
    """Device copies of the values, plus the concatenated form for the fused kernel.

    ``adjoint(trans)`` is the state of ``D^T`` or ``D^H``: transposed values uploaded
    once, on first use (the CUDA kernels take sizes at run time: nothing compiles).
    """

    def __init__(self, factors: tuple) -> None:
        self.factors = tuple(cp.ascontiguousarray(cp.asarray(V)) for V in factors)
        self.specs = tuple(_Spec(*(int(d) for d in V.shape)) for V in self.factors)
        offsets = np.cumsum([0] + [V.size for V in self.factors])[:-1]
        self.flat = cp.concatenate([V.ravel() for V in self.factors])
        self.dtype = self.flat.dtype
        self.offsets = offsets
        self.P, self.Q = self.specs[-1].p, self.specs[0].q
        self.meta = None
        self._adj: dict = {}

    def adjoint(self, trans: str) -> "_State":
        if trans == "N":
            return self
        st = self._adj.get(trans)
        if st is None:
            vals = tuple(V.transpose(0, 2, 1, 3) for V in reversed(self.factors))
            if trans == "H" and self.dtype.kind == "c":
                vals = tuple(cp.conj(V) for V in vals)
            st = self._adj[trans] = _State(vals)
        return st


def prepare(factors):
    """Upload the canonical value arrays to the current device (C-contiguous)."""
    return _State(factors)


def _pad(X, Q: int, layout: str):
    if layout == "rows":
        if X.shape[1] == Q:
            return X
        Xp = cp.zeros((X.shape[0], Q), X.dtype)
        Xp[:, :X.shape[1]] = X
    else:
        if X.shape[0] == Q:
            return X
        Xp = cp.zeros((Q, X.shape[1]), X.dtype)
        Xp[:X.shape[0]] = X
    return Xp


def _fused(state, X, out):
    """The whole chain in one kernel, R batch rows per block in shared memory (or None)."""
    specs = state.specs
    maxsize = max([specs[0].q] + [f.p for f in specs])
    k = X.shape[0]
    _fused_kernel(state.dtype, 1)  # compiles once, reads the device limits
    rows = _rows_per_block(k, maxsize, state.dtype.itemsize)
    if rows is None:
        return None
    smem = 2 * rows * maxsize * state.dtype.itemsize
    kern = _fused_kernel(state.dtype, rows)
    meta = state.meta
    if meta is None:
        meta = cp.asarray(np.array([[f.r, f.s, f.t, f.p, off] for f, off
                                    in zip(specs, state.offsets)], dtype=np.int64).ravel())
        state.meta = meta
    if smem > 48 * 1024:
        kern.max_dynamic_shared_size_bytes = smem
    P, Q = state.P, state.Q
    Y = out if out is not None else cp.empty((k, P), dtype=X.dtype)
    threads = 256 if maxsize <= 2048 else 512
    grid = int(min(-(-k // rows), 65535 * 4))
    kern((grid,), (threads,), (X, Y, state.flat, meta, np.int32(len(specs)), np.int32(Q),
                               np.int32(P), np.int32(maxsize), np.int64(k)),
         shared_mem=smem)
    return Y


def _run(kernel, state, X, out, shape_of):
    """Factor by factor, one elementwise kernel each (for rows too long for shared memory)."""
    k = X.shape[0] if shape_of == "rows" else X.shape[1]
    cur = X
    last = len(state.specs) - 1
    for idx, (V, f) in enumerate(zip(state.factors, state.specs)):
        shape = (k, f.p) if shape_of == "rows" else (f.p, k)
        y = out if (idx == last and out is not None) else cp.empty(shape, dtype=X.dtype)
        extent = f.q if shape_of == "rows" else k
        kernel(V, cur, f.r, f.s, f.t, f.p, extent, y)
        cur = y
    return cur


def apply_rows(state, X, out=None, trans="N"):
    """``X @ op(D).T`` for a C-contiguous CuPy array ``X`` of shape ``(k, n)``.

    See :mod:`debutla.backends` for the contract (``n`` at most the input size).
    """
    state = state.adjoint(trans)
    X = _pad(X, state.Q, "rows")
    Y = _fused(state, X, out)
    if Y is None:
        Y = _run(_rows, state, X, out, "rows")
    return Y


def apply_cols(state, X, out=None, trans="N"):
    """``op(D) @ X`` for a C-contiguous CuPy array ``X`` of shape ``(n, k)``.

    Runs the fused row kernel on ``X.T`` (one transpose in, one out: cheaper than a pass
    per factor); chains too long for shared memory run factor by factor with threads
    along the batch (coalesced in this layout).
    """
    state = state.adjoint(trans)
    X = _pad(X, state.Q, "cols")
    Xt = cp.ascontiguousarray(X.T)
    Yt = _fused(state, Xt, None)
    if Yt is None:
        return _run(_cols, state, X, out, "cols")
    if out is not None:
        out[...] = Yt.T
        return out
    return cp.ascontiguousarray(Yt.T)
