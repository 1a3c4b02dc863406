"""Balanced factors: the same product, every intermediate feature's scale shared evenly.

The factor that writes a feature and the factor that reads it hold its scale together.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_int
from ..operator import DeBut

__all__ = ["balance"]


def _row_norms2(V: np.ndarray) -> np.ndarray:
    """Squared norms of a factor's rows (its outputs), in feature order."""
    return np.sum(np.abs(V) ** 2, axis=2).reshape(-1)  # (nb, r, t)


def _col_norms2(V: np.ndarray) -> np.ndarray:
    """Squared norms of a factor's columns (its inputs), in feature order."""
    return np.sum(np.abs(V) ** 2, axis=1).reshape(-1)  # (nb, s, t)


def balance(op: DeBut, sweeps: int = 8) -> DeBut:
    """The same operator with balanced factor values.

    A DeBut product is unchanged when an intermediate feature's row of the factor that
    writes it is scaled by ``d`` and the column of the factor that reads it by
    ``1 / d``.  Fits in the data's metric (``factorize(..., X=...)``) use this freedom
    at random and can return factors whose values differ by orders of magnitude (a
    factor norm of 2,000 beside one of 5 on the paper's LeNet FC1); gradient descent on
    such values diverges.  ``balance`` chooses every ``d`` so that the row and the
    column have equal norms, pair of adjacent factors by pair, for ``sweeps`` passes
    over the chain (each pass makes the norms closer; the product changes only by
    rounding).

    Parameters
    ----------
    op : DeBut
    sweeps : int
        Passes over the chain (0 returns ``op`` unchanged).

    Returns
    -------
    DeBut
        Same chain, shape, dtype and backend; ``op`` itself for a one-factor chain.

    Raises
    ------
    TypeError
        If ``op`` is not a :class:`debutla.DeBut`.
    ValueError
        If ``sweeps`` is negative.

    Examples
    --------
    >>> import numpy as np, debutla as db
    >>> from debutla.fit import balance
    >>> op = db.DeBut.random(db.Chain.parse("8 <-(2,2,4)- 8 <-(4,8,1)- 16"), seed=0)
    >>> skewed = db.DeBut(op.chain, [op.factors[0] * 1e3, op.factors[1] / 1e3])
    >>> even = balance(skewed)
    >>> bool(np.allclose(even.to_dense(), op.to_dense()))
    True
    >>> [round(float(np.linalg.norm(f)) / float(np.linalg.norm(even.factors[0])), 1)
    ...  for f in even.factors]
    [1.0, 1.0]
    """
    if not isinstance(op, DeBut):
        raise TypeError(f"balance(op): op must be a debutla.DeBut, got {type(op).__name__}")
    sweeps = check_int(sweeps, "sweeps", where="balance(sweeps)", min=0)
    if len(op.factors) < 2 or sweeps == 0:
        return op
    vals = [np.array(v, dtype=op.dtype) for v in op.factors]
    tiny = np.finfo(np.abs(vals[0][:0]).dtype).tiny  # of the values' real dtype
    for _ in range(sweeps):
        for k in range(len(vals) - 1):
            rows = _row_norms2(vals[k])
            cols = _col_norms2(vals[k + 1])
            ok = (rows > tiny) & (cols > tiny)
            d = np.ones_like(rows)
            d[ok] = (cols[ok] / rows[ok]) ** 0.25
            nb, r, s, t = vals[k].shape
            vals[k] = vals[k] * d.reshape(nb, r, 1, t).astype(vals[k].dtype)
            nb2, r2, s2, t2 = vals[k + 1].shape
            vals[k + 1] = vals[k + 1] / d.reshape(nb2, 1, s2, t2).astype(vals[k + 1].dtype)
    return DeBut(op.chain, vals, shape=op.shape, backend=op.backend)
