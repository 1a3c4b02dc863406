"""The :class:`cupyx.scipy.sparse.linalg.LinearOperator` adapter (GPU solvers)."""

from __future__ import annotations

from cupyx.scipy.sparse.linalg import LinearOperator

from ..operator import DeBut
from .scipy import _DeButAdapter

__all__ = ["DeButCupyLinearOperator", "aslinearoperator"]


class DeButCupyLinearOperator(_DeButAdapter, LinearOperator):
    """A DeBut operator seen as a ``cupyx.scipy.sparse.linalg.LinearOperator``.

    Products take and return CuPy arrays and run on the GPU backend, so cupyx solvers
    (``cg``, ``gmres``, ``lsqr``, ``svds``...) run entirely on the device.

    Parameters
    ----------
    op : DeBut

    Examples
    --------
    >>> import cupy as cp, cupyx.scipy.sparse.linalg as cspla   # doctest: +SKIP
    >>> A = aslinearoperator(DeBut.random("8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8"))
    >>> x = cspla.lsqr(A, cp.ones(8))[0]                        # doctest: +SKIP
    """


def aslinearoperator(op: DeBut | DeButCupyLinearOperator) -> DeButCupyLinearOperator:
    """Wrap a DeBut operator as a cupyx ``LinearOperator`` (see
    :class:`DeButCupyLinearOperator`); an adapter passed in is returned as it is.
    """
    if isinstance(op, DeButCupyLinearOperator):
        return op
    return DeButCupyLinearOperator(op)
