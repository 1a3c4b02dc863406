"""CuPy backend: NVIDIA GPUs.

Rows layout ``(k, n)``: one chain-specialised kernel applies the whole chain
(:mod:`debutla.backends._cuda_chain`: sizes as compile-time constants, ``R`` batch rows
per block, each value read once per block, intermediates in shared memory, square
factors in place).  It is compiled per chain, input width and dtype on first use
(NVRTC, a fraction of a second; CuPy keeps the binary in its on-disk cache).  The column
layout ``(n, k)`` runs the same kernel between two transposes.
Rows too long for shared memory run one elementwise CUDA kernel per factor: each thread
computes one output entry ``y[b, i, tau] = sum_j V[b, i, j, tau] x[b, j, tau]``, reading
the canonical value layout, through two ping-pong buffers.

The operator's values are uploaded to the device once per operator and dtype (cached by
the operator), so ``op @ cupy_array`` just works; results stay on the device.
:func:`choose_plan` and :func:`launch` are also the entry points of the PyTorch CUDA
path (:mod:`debutla.torch._ops`), which passes half-precision storage too.
"""

from __future__ import annotations

import cupy as cp
import numpy as np

from .. import _config
from . import _cuda_chain

# name, xp: protocol fields
__all__ = ["prepare", "apply_rows", "apply_cols", "choose_plan", "launch"]

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


_ROWS = (8, 4, 2, 1)
#: blocks that should share a multiprocessor at large batch (latency hiding across syncs)
_BLOCKS_PER_SM = 2
_THREADS = 256        # threads per block when blocks are plentiful
_THREADS_FEW = 512    # ... and when there are fewer blocks than multiprocessors
_device_info: dict = {}


def _device() -> tuple[int, int, int]:
    """(shared memory per block we may ask for, per multiprocessor, multiprocessors)."""
    dev = cp.cuda.Device().id
    info = _device_info.get(dev)
    if info is None:
        attrs = cp.cuda.Device(dev).attributes
        block = attrs.get("MaxSharedMemoryPerBlockOptin", 48 * 1024)
        info = _device_info[dev] = (block,
                                    attrs.get("MaxSharedMemoryPerMultiprocessor", block),
                                    attrs.get("MultiProcessorCount", 1))
    return info


_compiled: dict = {}


def _kernel(plan: _cuda_chain.Plan):
    """The compiled kernel of ``plan`` (compiled once per process and device; CuPy keeps
    the binary in its on-disk cache, so a new process loads it without compiling).
    """
    key = (plan, cp.cuda.Device().id)
    kern = _compiled.get(key)
    if kern is None:
        module = cp.RawModule(code=_cuda_chain.source(plan), options=("-std=c++17",))
        kern = module.get_function("debutla_chain")
        if plan.smem_bytes > 48 * 1024:
            kern.max_dynamic_shared_size_bytes = plan.smem_bytes
        _compiled[key] = kern
    return kern


_plans: dict = {}


def choose_plan(specs, n: int, m: int, k: int, storage: str):
    """The plan for ``k`` rows: the most rows per block ``R`` whose shared memory fits
    with ``_BLOCKS_PER_SM`` blocks per multiprocessor while the blocks still cover every
    multiprocessor twice; ``R = 1`` otherwise.  Threads per block: 256, 512 when the
    blocks are fewer than the multiprocessors, never more than the largest group count
    of a factor (rounded up to a warp, at least 64).  None: one row does not fit (the caller
    runs factor by factor).  ``config(cupy_rows=..., cupy_threads=...)`` force the sizes.
    """
    forced_rows = _config.get("cupy_rows")
    forced_threads = _config.get("cupy_threads")
    key = (tuple(specs), n, m, k, storage, forced_rows, forced_threads, cp.cuda.Device().id)
    try:
        return _plans[key]
    except KeyError:
        pass
    if len(_plans) > 4096:
        _plans.clear()
    plan = _plans[key] = _choose(specs, n, m, k, storage, forced_rows, forced_threads)
    return plan


def _choose(specs, n, m, k, storage, forced_rows, forced_threads):
    cap_block, cap_sm, nsm = _device()
    # threads past the largest group count idle through every factor (LeNet FC1 has 128
    # groups at most: 36.9 us with 256 threads against 166 us with 1024 on the H200)
    busy = 32 * -(-max(nb * t for nb, _, _, t in specs) // 32)
    for R in _ROWS:
        if forced_rows is not None and R != forced_rows:
            continue
        blocks = -(-k // R)
        threads = forced_threads or min(_THREADS if blocks >= nsm else _THREADS_FEW,
                                        max(64, busy))
        plan = _cuda_chain.make_plan(specs, n, m, R, threads, storage)
        smem = plan.smem_bytes
        if smem > cap_block:
            continue
        if R == 1 or forced_rows is not None or (
                blocks >= 2 * nsm and smem * _BLOCKS_PER_SM <= cap_sm):
            return plan
    return None


def launch(plan: _cuda_chain.Plan, X, Y, V, k: int) -> None:
    """Run ``plan``'s kernel on ``k`` rows: ``X`` ``(k, n)`` in, ``Y`` ``(k, m)`` out,
    ``V`` the :func:`~debutla.backends._cuda_chain.kernel_values` (CuPy arrays of the
    storage type, C-contiguous, on the current device and stream).
    """
    if k == 0:
        return
    kern = _kernel(plan)
    kern((-(-k // plan.rows),), (plan.threads,), (X, Y, V, np.int64(k)),
         shared_mem=plan.smem_bytes)


class _Spec:
    """Sizes of one factor as the kernels read them."""

    __slots__ = ("nb", "r", "s", "t", "p", "q")

    def __init__(self, nb: int, r: int, s: int, t: int) -> None:
        self.nb, self.r, self.s, self.t = nb, r, s, t
        self.p, self.q = nb * r * t, nb * s * t


class _State:
    """Device copies of the values (canonical, for the per-factor kernels) and in the
    chain kernel's layout (:func:`~debutla.backends._cuda_chain.kernel_values`).

    ``adjoint(trans)`` is the state of ``D^T`` or ``D^H``: transposed values uploaded
    once, on first use; the transposed chain compiles its own kernel on first use.
    """

    def __init__(self, factors: tuple) -> None:
        self.factors = tuple(cp.ascontiguousarray(cp.asarray(V)) for V in factors)
        self.specs = tuple(_Spec(*(int(d) for d in V.shape)) for V in self.factors)
        self.kvalues = _cuda_chain.kernel_values(self.factors, xp=cp)
        self.dtype = self.kvalues.dtype
        self.shapes = tuple((f.nb, f.r, f.s, f.t) for f in self.specs)
        self.P, self.Q = self.specs[-1].p, self.specs[0].q
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


def _pad(X, Q: int, axis: int):
    """``X`` with ``Q`` entries along ``axis`` (zeros after its own; ``X`` if it has them)."""
    if X.shape[axis] == Q:
        return X
    shape = list(X.shape)
    shape[axis] = Q
    Xp = cp.zeros(tuple(shape), X.dtype)
    Xp[(slice(None),) * axis + (slice(0, X.shape[axis]),)] = X
    return Xp


def _fused(state, X, out):
    """The whole chain in one chain-specialised kernel (None: rows too long for it)."""
    k, n = X.shape
    plan = choose_plan(state.shapes, n, state.P, k, state.dtype.name)
    if plan is None:
        return None
    Y = out if out is not None else cp.empty((k, state.P), dtype=X.dtype)
    launch(plan, X, Y, state.kvalues, k)
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
    Y = _fused(state, X, out)  # reads only the n given features: no padding copy
    if Y is None:
        Y = _run(_rows, state, _pad(X, state.Q, 1), out, "rows")
    return Y


def apply_cols(state, X, out=None, trans="N"):
    """``op(D) @ X`` for a C-contiguous CuPy array ``X`` of shape ``(n, k)``.

    Runs the fused row kernel on ``X.T`` (one transpose in, one out: cheaper than a pass
    per factor); chains too long for shared memory run factor by factor with threads
    along the batch (coalesced in this layout).
    """
    state = state.adjoint(trans)
    Xt = cp.ascontiguousarray(X.T)
    Yt = _fused(state, Xt, None)
    if Yt is None:
        return _run(_cols, state, _pad(X, state.Q, 0), out, "cols")
    if out is not None:
        out[...] = Yt.T
        return out
    return cp.ascontiguousarray(Yt.T)
