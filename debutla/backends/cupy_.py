"""CuPy backend: NVIDIA GPUs.

One elementwise CUDA kernel per factor: each thread computes one output entry
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


def prepare(factors):
    """Upload the canonical value arrays to the current device (C-contiguous)."""
    return tuple(cp.ascontiguousarray(cp.asarray(V)) for V in factors)


def _run(kernel, state, specs, X, out, shape_of):
    X = cp.ascontiguousarray(X)
    k = X.shape[0] if shape_of == "rows" else X.shape[1]
    cur = X
    last = len(specs) - 1
    for idx, (V, f) in enumerate(zip(state, specs)):
        shape = (k, f.p) if shape_of == "rows" else (f.p, k)
        y = out if (idx == last and out is not None) else cp.empty(shape, dtype=X.dtype)
        extent = f.q if shape_of == "rows" else k
        kernel(V, cur, f.r, f.s, f.t, f.p, extent, y)
        cur = y
    return cur


def apply_rows(state, specs, X, out=None):
    """``X @ D.T`` for a CuPy array ``X`` of shape ``(k, Q)``."""
    return _run(_rows, state, specs, X, out, "rows")


def apply_cols(state, specs, X, out=None):
    """``D @ X`` for a CuPy array ``X`` of shape ``(Q, k)``."""
    return _run(_cols, state, specs, X, out, "cols")
