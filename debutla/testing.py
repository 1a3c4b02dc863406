"""Test helpers for code that builds or uses DeBut operators.

* :func:`dottest`: the adjoint ("dot") test ``<D x, y> = <x, D^H y>`` with a rounding
  bound derived from the operator, not a guessed tolerance;
* :func:`assert_operator_close`: two operators (or an operator and a dense matrix) are
  the same linear map, entry by entry, within the rounding of their products.

debutla's own test suite uses both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import as_generator, check_int, check_real
from .operator import DeBut

__all__ = ["dottest", "assert_operator_close"]


def _unit_roundoff(dtype: np.dtype) -> float:
    """Unit roundoff of ``dtype``; complex multiply-adds round about 4x more."""
    u = float(np.finfo(dtype).eps) / 2
    return 4 * u if dtype.kind == "c" else u


def _depth(op: DeBut) -> int:
    """Rounding steps along one path of the product: sums of ``s`` terms per factor."""
    return sum(f.s for f in op.chain) + len(op.chain) + 1


def _abs_op(op: DeBut) -> DeBut:
    """The operator of the entrywise absolute values of ``op``'s factors (a bound on
    ``|D|``, entrywise), in float64.
    """
    return DeBut(op.chain, [np.abs(v).astype(np.float64) for v in op.factors],
                 shape=op.shape)


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype):
    x = rng.standard_normal(shape)
    if dtype.kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def dottest(op: Any, *, k: int = 1, seed: Any = None, raise_error: bool = True,
            factor: float = 1.0) -> tuple[complex, complex]:
    """Check ``<D x, y> == <x, D^H y>`` for random ``x`` and ``y``.

    Parameters
    ----------
    op : DeBut or scipy.sparse.linalg.LinearOperator
        Anything with ``shape``, ``dtype``, ``matmat`` and ``rmatmat``.
    k : int
        Number of columns of the random blocks ``X`` (n, k) and ``Y`` (m, k).
    seed : int or numpy.random.Generator, optional
    raise_error : bool
        Raise ``AssertionError`` when the test fails (else only return the values).
    factor : float
        Multiplies the tolerance (>= 1 to allow for an operator that rounds more than
        a DeBut product of the same chain would).

    Returns
    -------
    (lhs, rhs) : the two inner products ``<Y, D X>`` and ``<D^H Y, X>``.

    Notes
    -----
    For a DeBut operator the tolerance is the rigorous first-order bound
    ``2 (d + m + n) u |Y|^T |D| |X|`` with ``d`` the rounding depth of a product and
    ``|D|`` the product of the factors' absolute values; for another operator
    ``|D|`` is replaced by ``||D X||`` and ``||D^H Y||`` norms (a heuristic).

    Examples
    --------
    >>> from debutla import DeBut
    >>> lhs, rhs = dottest(DeBut.random("8 <-(2,2,4)- 8 <-(2,4,1)- 16", seed=0), seed=1)
    """
    k = check_int(k, "k", where="dottest")
    factor = check_real(factor, "factor", where="dottest", min=0, min_open=True)
    rng = as_generator(seed, where="dottest(seed)")
    m, n = op.shape
    dt = np.dtype(op.dtype)
    X = _random(rng, (n, k), dt)
    Y = _random(rng, (m, k), dt)
    DX = np.asarray(op.matmat(X))
    DHY = np.asarray(op.rmatmat(Y))
    lhs = complex(np.vdot(Y, DX))
    rhs = complex(np.vdot(DHY, X))
    u = _unit_roundoff(dt)
    if isinstance(op, DeBut):
        scale = float(np.sum(np.abs(Y) * (_abs_op(op) @ np.abs(X))))
        steps = _depth(op) + m + n
    else:
        scale = float(np.linalg.norm(Y) * np.linalg.norm(DX)
                      + np.linalg.norm(X) * np.linalg.norm(DHY))
        steps = 4 * (m + n)
    tol = factor * 2 * steps * u * scale + np.finfo(dt).tiny
    if raise_error and not abs(lhs - rhs) <= tol:
        raise AssertionError(f"dottest: <D x, y> = {lhs} but <x, D^H y> = {rhs}; "
                             f"|difference| {abs(lhs - rhs):.3g} > tolerance {tol:.3g}")
    return lhs, rhs


def _dense(a: Any) -> np.ndarray:
    if isinstance(a, DeBut):
        return a.to_dense()
    if hasattr(a, "toarray"):
        return np.asarray(a.toarray())
    return np.asarray(a)


def assert_operator_close(actual: Any, desired: Any, *, rtol: float | None = None,
                          atol: float = 0.0, err_msg: str = "") -> None:
    """Assert that two linear maps are equal entry by entry, within rounding.

    Parameters
    ----------
    actual, desired : DeBut, scipy sparse array or array_like
        Operators or matrices of the same shape.
    rtol : float, optional
        A relative tolerance as in :func:`numpy.testing.assert_allclose`.  By default
        the bound is derived from the DeBut operators given: each entry may differ by
        ``2 d u (|D_a| + |D_d|)`` (``d`` the rounding depth, ``u`` the unit roundoff of
        the lower precision, ``|D|`` the product of the factors' absolute values).
    atol : float
        An absolute tolerance added to the bound.
    err_msg : str
        Prefix of the failure message.

    Raises
    ------
    AssertionError
        If the shapes differ or an entry is outside the bound (the message names the
        first such entry).

    Examples
    --------
    >>> from debutla import DeBut
    >>> op = DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
    >>> assert_operator_close(op.T.T, op.to_dense())
    """
    atol = check_real(atol, "atol", where="assert_operator_close", min=0)
    A, B = _dense(actual), _dense(desired)
    if A.shape != B.shape:
        raise AssertionError(f"{err_msg}shapes differ: {A.shape} != {B.shape}")
    if rtol is not None:
        rtol = check_real(rtol, "rtol", where="assert_operator_close", min=0)
        np.testing.assert_allclose(A, B, rtol=rtol, atol=atol, err_msg=err_msg)
        return
    ops = [a for a in (actual, desired) if isinstance(a, DeBut)]
    dts = [np.dtype(a.dtype) for a in (A, B) if a.dtype.kind in "fc"] or [np.dtype("f8")]
    u = max(_unit_roundoff(d) for d in dts)
    if ops:
        bound = sum(_abs_op(o).to_dense() for o in ops)
        depth = max(_depth(o) for o in ops)
    else:  # two plain matrices: entrywise relative rounding of one operation
        bound, depth = np.abs(A) + np.abs(B), 2
    tol = 2 * depth * u * bound + atol + 4 * float(np.finfo(dts[0]).smallest_normal)
    err = np.abs(A.astype(np.complex128) - B.astype(np.complex128))
    bad = ~(err <= tol)
    if bad.any():
        i = tuple(int(j) for j in np.argwhere(bad)[0])
        tol_i = np.broadcast_to(tol, err.shape)[i]  # tol: an array, or a scalar bound
        raise AssertionError(
            f"{err_msg}{int(bad.sum())} of {bad.size} entries differ beyond rounding; "
            f"first at {i}: {A[i].item()!r} vs {B[i].item()!r}, |difference| {err[i]:.3g} > bound "
            f"{tol_i:.3g}")
