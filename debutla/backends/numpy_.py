"""NumPy reference backend: reshape + batched matmul, the oracle for the others.

Each factor is applied as one batched matrix product over its ``nb * t`` independent
``r x s`` blocks: with ``x`` viewed as ``(nb, s, t, k)``,
``y[b, :, tau, :] = V[b, :, :, tau] @ x[b, :, tau, :]``.  No Python loop over blocks and
no dense matrix is ever formed.  Adjoint products (``trans`` ``"T"``/``"H"``) apply the
factors in reverse order with each block transposed (and conjugated): views of the
forward values, no second state.  See :mod:`debutla.backends` for the interface.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import numpy as np

__all__ = ["prepare", "apply_rows", "apply_cols"]  # name, xp: protocol fields

name = "numpy"
xp = np


class _State(NamedTuple):
    blocks: tuple  # per factor (nb, t, r, s): matmul batches over (nb, t)
    shapes: tuple  # per factor (nb, r, s, t)
    P: int
    Q: int


def prepare(factors) -> _State:
    """Store each factor as ``(nb, t, r, s)`` so ``matmul`` batches over ``(nb, t)``.

    Examples
    --------
    >>> prepare((np.ones((1, 2, 2, 1)),)).P
    2
    """
    shapes = tuple(tuple(int(d) for d in V.shape) for V in factors)
    nb0, _, s0, t0 = shapes[0]
    nbl, rl, _, tl = shapes[-1]
    return _State(tuple(np.ascontiguousarray(V.transpose(0, 3, 1, 2)) for V in factors),
                  shapes, nbl * rl * tl, nb0 * s0 * t0)


def _chain_cols(state: _State, X, trans: str):
    """``op(D) @ X`` for ``X`` (n, k), ``n`` at most the input size (zero-padded here)."""
    k = X.shape[1]
    q = state.Q if trans == "N" else state.P
    cur = X
    if X.shape[0] < q:
        cur = np.zeros((q, k), X.dtype)
        cur[:X.shape[0]] = X
    steps: Iterable[tuple[np.ndarray, tuple[int, int, int, int]]]
    if trans == "N":
        steps = zip(state.blocks, state.shapes)
    else:
        steps = ((Vm.transpose(0, 1, 3, 2), (nb, s, r, t))
                 for Vm, (nb, r, s, t) in zip(reversed(state.blocks), reversed(state.shapes)))
    conj = trans == "H" and cur.dtype.kind == "c"
    for Vm, (nb, r, s, t) in steps:
        x = cur.reshape(nb, s, t, k).transpose(0, 2, 1, 3)  # (nb, t, s, k)
        y = np.matmul(Vm.conj() if conj else Vm, x)  # (nb, t, r, k)
        cur = y.transpose(0, 2, 1, 3).reshape(nb * r * t, k)
    return cur


def apply_cols(state: _State, X, out=None, trans: str = "N"):
    """``op(D) @ X`` for ``X`` of shape ``(n, k)``.

    Examples
    --------
    >>> apply_cols(prepare((np.ones((1, 2, 2, 1)),)), np.ones((2, 1)))
    array([[2.],
           [2.]])
    """
    Y = _chain_cols(state, X, trans)
    if out is not None:
        np.copyto(out, Y)
        return out
    return np.ascontiguousarray(Y)


def apply_rows(state: _State, X, out=None, trans: str = "N"):
    """``X @ op(D).T`` for ``X`` of shape ``(k, n)``.

    Examples
    --------
    >>> apply_rows(prepare((np.ones((1, 2, 2, 1)),)), np.ones((1, 2)))
    array([[2., 2.]])
    """
    Y = _chain_cols(state, X.T, trans).T
    if out is not None:
        np.copyto(out, Y)
        return out
    return np.ascontiguousarray(Y)
