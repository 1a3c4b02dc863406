"""NumPy reference backend: reshape + batched matmul, the oracle for the others.

Each factor is applied as one batched matrix product over its ``nb * t`` independent
``r x s`` blocks: with ``x`` viewed as ``(nb, s, t, k)``,
``y[b, :, tau, :] = V[b, :, :, tau] @ x[b, :, tau, :]``.  No Python loop over blocks and
no dense matrix is ever formed.  Adjoint products (``trans`` ``"T"``/``"H"``) apply the
factors in reverse order with each block transposed (and conjugated): views of the
forward values, no second state.  See :mod:`debutla.backends` for the interface.

The kernels use only functions of the Python Array API standard (``reshape``,
``permute_dims``, ``matmul``, ``conj``, ``zeros``, ``concat``, ``asarray``; no item
assignment on another library's arrays, which may be immutable), so they run in
the namespace of whatever array they get: NumPy arrays, and arrays of any compliant
library (PyTorch, JAX, ``array_api_strict``, ... through ``array_api_compat``), in
host memory.  The values are prepared as NumPy arrays and converted to another
namespace (and device) once, on its first use, then kept in the state.  NumPy arrays
take NumPy's own spellings of the same functions (the ``ndarray`` methods, which skip
the argument handling of the module functions).
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import numpy as np

from .. import _arrays

__all__ = ["prepare", "apply_rows", "apply_cols"]  # name, xp: protocol fields

name = "numpy"
xp = np


def _pad_numpy(X, q: int):
    """``X`` (n, k) with ``q - n`` zero rows below it."""
    cur = np.zeros((q, X.shape[1]), X.dtype)
    cur[:X.shape[0]] = X
    return cur


# The functions the kernels use, (reshape, permute_dims, matmul, conj, pad), for NumPy
# arrays: the standard's semantics (a view where the memory allows) without the module
# functions' per-call argument handling.
_NUMPY_OPS = (np.ndarray.reshape, np.ndarray.transpose, np.matmul, np.conj, _pad_numpy)


class _State(NamedTuple):
    blocks: tuple  # per factor (nb, t, r, s): matmul batches over (nb, t)
    shapes: tuple  # per factor (nb, r, s, t)
    P: int
    Q: int
    converted: dict  # (namespace, device) -> blocks in that namespace, filled on first use


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
                  shapes, nbl * rl * tl, nb0 * s0 * t0, {})


def _converted(state: _State, X) -> tuple[tuple, tuple]:
    """``(functions, blocks)`` for an array ``X`` of another library: its namespace's
    standard functions, and the blocks converted to that namespace and ``X``'s device on
    first use, then kept in the state.
    """
    ns = _arrays.namespace(X)
    dev = _arrays.device(X)
    key = (ns, dev)
    blocks = state.converted.get(key)
    if blocks is None:  # a private copy: the library may share the memory it is given
        blocks = tuple(ns.asarray(np.array(B, copy=True), device=dev) for B in state.blocks)
        state.converted[key] = blocks

    def pad(X, q: int):  # no item assignment: some libraries' arrays are immutable (JAX)
        zeros = ns.zeros((q - X.shape[0], X.shape[1]), dtype=X.dtype, device=dev)
        return ns.concat([X, zeros], axis=0)

    return (ns.reshape, ns.permute_dims, ns.matmul, ns.conj, pad), blocks


def _chain_cols(state: _State, X, trans: str):
    """``op(D) @ X`` for ``X`` (n, k), ``n`` at most the input size (zero-padded here)."""
    if isinstance(X, np.ndarray):
        ops, blocks = _NUMPY_OPS, state.blocks
    else:
        ops, blocks = _converted(state, X)
    reshape, permute_dims, matmul, conj, pad = ops
    k = X.shape[1]
    q = state.Q if trans == "N" else state.P
    cur = X if X.shape[0] == q else pad(X, q)
    steps: Iterable[tuple[Any, tuple[int, int, int, int]]]
    if trans == "N":
        steps = zip(blocks, state.shapes)
    else:
        steps = ((permute_dims(Vm, (0, 1, 3, 2)), (nb, s, r, t))
                 for Vm, (nb, r, s, t) in zip(reversed(blocks), reversed(state.shapes)))
    conjugate = trans == "H" and state.blocks[0].dtype.kind == "c"
    for Vm, (nb, r, s, t) in steps:
        x = permute_dims(reshape(cur, (nb, s, t, k)), (0, 2, 1, 3))  # (nb, t, s, k)
        y = matmul(conj(Vm) if conjugate else Vm, x)  # (nb, t, r, k)
        cur = reshape(permute_dims(y, (0, 2, 1, 3)), (nb * r * t, k))
    return cur


def _finish(Y, out):
    """``Y`` written into ``out``, or ``Y`` itself (C-contiguous when a NumPy array)."""
    if out is not None:
        out[...] = Y
        return out
    return np.ascontiguousarray(Y) if isinstance(Y, np.ndarray) else Y


def apply_cols(state: _State, X, out=None, trans: str = "N"):
    """``op(D) @ X`` for ``X`` of shape ``(n, k)``.

    Examples
    --------
    >>> apply_cols(prepare((np.ones((1, 2, 2, 1)),)), np.ones((2, 1)))
    array([[2.],
           [2.]])
    """
    return _finish(_chain_cols(state, X, trans), out)


def apply_rows(state: _State, X, out=None, trans: str = "N"):
    """``X @ op(D).T`` for ``X`` of shape ``(k, n)``.

    Examples
    --------
    >>> apply_rows(prepare((np.ones((1, 2, 2, 1)),)), np.ones((1, 2)))
    array([[2., 2.]])
    """
    return _finish(_chain_cols(state, X.T, trans).T, out)
