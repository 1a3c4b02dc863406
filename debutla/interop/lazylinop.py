"""Converters to and from lazylinop's Kronecker-sparse operators (``lazylinop.butterfly``).

A lazylinop pattern ``(a, b, c, d)`` is the support ``I_a (x) 1_(b x c) (x) I_d``: the DeBut
factor with ``(nb, r, s, t) = (a, b, c, d)``, whose ``ks_values`` array of shape
``(a, b, c, d)`` is exactly our canonical value array.  lazylinop lists factors output
first (left to right in the product); debutla lists them in application order (input
first), so the converters reverse the list.  lazylinop is imported only when a converter
is called (``pip install lazylinop``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import optional_module
from ..chain import Chain
from ..operator import DeBut

__all__ = ["to_lazylinop", "from_lazylinop", "chain_to_lazylinop", "chain_from_lazylinop"]


def _butterfly() -> Any:
    return optional_module("lazylinop.butterfly", what="debutla.interop.lazylinop",
                           package="lazylinop")


def chain_to_lazylinop(chain: Chain) -> Any:
    """The ``lazylinop.butterfly.Chain`` of ``chain``'s patterns (output first).

    Examples
    --------
    >>> chain_to_lazylinop(Chain.butterfly(4)).ks_patterns
    ((1, 2, 2, 2), (2, 2, 2, 1))
    """
    if not isinstance(chain, Chain):
        raise TypeError(f"chain_to_lazylinop: chain must be a debutla Chain, got "
                        f"{type(chain).__name__}")
    return _butterfly().Chain(chain.to_ks())


def chain_from_lazylinop(chain: Any) -> Chain:
    """The debutla :class:`~debutla.Chain` of a ``lazylinop.butterfly.Chain``.

    Raises
    ------
    TypeError
        If ``chain`` has no ``ks_patterns``.
    ValueError
        If its patterns do not form a valid chain.

    Examples
    --------
    >>> import lazylinop.butterfly as lb
    >>> print(chain_from_lazylinop(lb.Chain([(1, 2, 2, 2), (2, 2, 2, 1)])))
    4 <-(2,2,2)- 4 <-(2,2,1)- 4
    """
    patterns = getattr(chain, "ks_patterns", None)
    if patterns is None:
        raise TypeError(f"chain_from_lazylinop: chain must be a lazylinop.butterfly.Chain, "
                        f"got {type(chain).__name__}")
    return Chain.from_ks(patterns)


def to_lazylinop(op: DeBut, **ksm_args: Any) -> Any:
    """``op`` as a lazylinop operator built by ``lazylinop.butterfly.ksm``.

    Parameters
    ----------
    op : DeBut
    **ksm_args
        Passed to ``ksm`` as its ``ksm_args`` dict (e.g. ``backend="xp"``).

    Returns
    -------
    lazylinop.butterfly.KsmLazyLinOp or LazyLinOp
        The Kronecker-sparse operator of ``op``'s chain, holding copies of its values.
        For a padded operator (``op.shape`` smaller than the chain's) it is cut to
        ``op.shape``, which makes it a general ``LazyLinOp``: convert the unpadded
        operator if you need the factors back (:func:`from_lazylinop` with ``shape=``).

    Examples
    --------
    >>> op = DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
    >>> L = to_lazylinop(op)
    >>> np.allclose(L.toarray(), op.to_dense())
    True
    """
    if not isinstance(op, DeBut):
        raise TypeError(f"to_lazylinop: op must be a DeBut operator, got {type(op).__name__}")
    butterfly = _butterfly()
    values = [np.array(v) for v in reversed(op.factors)]  # writeable copies, output first
    args = {"backend": "xp", "params": None, **ksm_args}
    L = butterfly.ksm(values, args)
    m, n = op.shape
    return L if op.shape == op.chain.shape else L[:m, :n]


def from_lazylinop(L: Any, shape: tuple[int, int] | None = None) -> DeBut:
    """A :class:`~debutla.DeBut` operator from a ``lazylinop.butterfly.ksm`` operator.

    Parameters
    ----------
    L : lazylinop.butterfly.KsmLazyLinOp
        Built by ``ksm`` from NumPy values (or anything ``numpy.asarray`` converts).
    shape : (int, int), optional
        The operator's shape, at most the chain's (see :class:`~debutla.DeBut`).

    Raises
    ------
    TypeError
        If ``L`` is not a Kronecker-sparse operator (for example a sliced one).
    ValueError
        If its patterns do not chain or ``shape`` exceeds the chain's.

    Examples
    --------
    >>> op = DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
    >>> back = from_lazylinop(to_lazylinop(op))
    >>> np.array_equal(back.to_dense(), op.to_dense())
    True
    """
    butterfly = _butterfly()
    if not isinstance(L, butterfly.KsmLazyLinOp):
        raise TypeError(f"from_lazylinop: L must be a lazylinop.butterfly.ksm operator "
                        f"(KsmLazyLinOp), got {type(L).__name__}")
    values = L.ks_values
    if not isinstance(values, (list, tuple)):
        values = [values]
    arrays = [np.asarray(v) for v in values]
    chain = Chain.from_ks([a.shape for a in arrays])
    return DeBut(chain, arrays[::-1], shape=shape)
