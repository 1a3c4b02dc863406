"""NumPy reference backend: reshape + batched matmul, the oracle for the others.

Each factor is applied as one batched matrix product over its ``nb * t`` independent
``r x s`` blocks: with ``x`` viewed as ``(nb, s, t, k)``,
``y[b, :, tau, :] = V[b, :, :, tau] @ x[b, :, tau, :]``.  No Python loop over blocks and
no dense matrix is ever formed.
"""

from __future__ import annotations

import numpy as np

name = "numpy"
xp = np


def prepare(factors):
    """Store each factor as ``(nb, t, r, s)`` so ``matmul`` batches over ``(nb, t)``."""
    return tuple(np.ascontiguousarray(V.transpose(0, 3, 1, 2)) for V in factors)


def _chain_cols(state, specs, X):
    k = X.shape[1]
    cur = X
    for Vm, f in zip(state, specs):
        x = cur.reshape(f.nb, f.s, f.t, k).transpose(0, 2, 1, 3)  # (nb, t, s, k)
        y = np.matmul(Vm, x)  # (nb, t, r, k)
        cur = y.transpose(0, 2, 1, 3).reshape(f.p, k)
    return cur


def apply_cols(state, specs, X, out=None):
    """``D @ X`` for ``X`` of shape ``(Q, k)``."""
    Y = _chain_cols(state, specs, X)
    if out is not None:
        np.copyto(out, Y)
        return out
    return np.ascontiguousarray(Y)


def apply_rows(state, specs, X, out=None):
    """``X @ D.T`` for ``X`` of shape ``(k, Q)``."""
    Y = _chain_cols(state, specs, X.T).T
    if out is not None:
        np.copyto(out, Y)
        return out
    return np.ascontiguousarray(Y)
