"""Converters to and from the DeBut authors' format (rlin27/DeBut): ``R_shapes`` + a flat
parameter vector.

``R_shapes`` holds one ``(p, q, r, s, t)`` row per factor, in application order (input
side first, as debutla).  The parameters of all factors are concatenated into one flat
vector, factor 1 first; factor ``i``'s block of ``nnz_i = p s`` values is their tensor of
shape ``(nb, t, r, s)`` flattened in C order, so its canonical ``(nb, r, s, t)`` array
is ``block.reshape(nb, t, r, s).transpose(0, 2, 3, 1)``.  Pure NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..chain import Chain
from ..operator import DeBut

__all__ = ["to_debut_authors", "from_debut_authors"]


def to_debut_authors(op: DeBut) -> tuple[list[tuple[int, int, int, int, int]], np.ndarray]:
    """``op`` as the DeBut authors' ``(R_shapes, params)``.

    Returns
    -------
    r_shapes : list of (p, q, r, s, t)
        The chain's rows, input side first.
    params : numpy.ndarray
        The flat parameter vector (a new array, ``op.dtype``).  The format has no
        operator shape: keep ``op.shape`` yourself when the operator is padded.

    Examples
    --------
    >>> op = DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
    >>> rows, params = to_debut_authors(op)
    >>> rows, params.shape
    ([(4, 4, 2, 2, 1), (4, 4, 2, 2, 2)], (16,))
    >>> np.array_equal(from_debut_authors(rows, params).to_dense(), op.to_dense())
    True
    """
    if not isinstance(op, DeBut):
        raise TypeError(f"to_debut_authors: op must be a DeBut operator, got "
                        f"{type(op).__name__}")
    blocks = [v.transpose(0, 3, 1, 2).ravel() for v in op.factors]
    return op.chain.to_pqrst(), np.concatenate(blocks)


def from_debut_authors(r_shapes: Any, params: Any, shape: tuple[int, int] | None = None,
                       *, dtype: Any = None) -> DeBut:
    """A :class:`~debutla.DeBut` operator from the DeBut authors' ``(R_shapes, params)``.

    Parameters
    ----------
    r_shapes : sequence of (p, q, r, s, t) rows, or an integer array ``(N, 5)``
        Input side first.
    params : array_like, 1-D
        The flat parameter vector, ``sum(p_i s_i)`` values.
    shape : (int, int), optional
        The operator's shape, at most the chain's.
    dtype : dtype, optional
        As in :class:`~debutla.DeBut` (default: from ``params``).

    Raises
    ------
    TypeError
        If ``params`` is not numeric.
    ValueError
        If the rows do not form a valid chain or ``params`` has the wrong length or is
        not one-dimensional.

    Examples
    --------
    >>> rows = [(4, 4, 2, 2, 1), (4, 4, 2, 2, 2)]
    >>> from_debut_authors(rows, np.arange(16.0)).chain == Chain.from_pqrst(rows)
    True
    """
    chain = Chain.from_pqrst(np.asarray(r_shapes).tolist()
                             if isinstance(r_shapes, np.ndarray) else r_shapes)
    flat = np.asarray(params)
    if flat.ndim != 1:
        raise ValueError(f"from_debut_authors: params must be a flat (1-D) vector, got "
                         f"shape {flat.shape}")
    if flat.dtype.kind not in "biufc":
        raise TypeError(f"from_debut_authors: params must be numeric, got dtype {flat.dtype}")
    if flat.size != chain.nnz:
        raise ValueError(f"from_debut_authors: the chain {chain} has {chain.nnz} values "
                         f"but params has {flat.size}")
    factors = []
    start = 0
    for spec in chain:
        block = flat[start:start + spec.nnz]
        start += spec.nnz
        factors.append(block.reshape(spec.nb, spec.t, spec.r, spec.s).transpose(0, 2, 3, 1))
    return DeBut(chain, factors, shape=shape, dtype=dtype)
