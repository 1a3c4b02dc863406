"""The :class:`scipy.sparse.linalg.LinearOperator` adapter."""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import LinearOperator

from ..operator import DeBut

__all__ = ["DeButLinearOperator", "aslinearoperator"]


def _vector(x):
    """``x`` (n,) or (n, 1) as a 1-D array; a ``numpy.matrix`` stays 2-D under reshape."""
    if isinstance(x, np.matrix):
        x = x.A
    return x.reshape(-1)


class _DeButAdapter:
    """Product methods shared by the scipy and cupyx adapters (a mixin)."""

    op: DeBut

    def __init__(self, op: DeBut) -> None:
        if not isinstance(op, DeBut):
            raise TypeError(f"aslinearoperator: op must be a DeBut operator, "
                            f"got {type(op).__name__}")
        self.op = op
        # a mixin: super() is scipy's or cupyx's LinearOperator, which mypy cannot see here
        super().__init__(dtype=op.dtype, shape=op.shape)  # type: ignore[call-arg]
        self.args = (op,)  # as scipy's own operators: the operands they wrap

    def _matvec(self, x):
        return self.op.matvec(_vector(x))

    def _rmatvec(self, x):
        return self.op.rmatvec(_vector(x))

    def _matmat(self, X):
        if isinstance(X, np.matrix):  # np.matrix in, np.matrix out, as scipy's operators
            return np.asmatrix(self.op.matmat(X.A))
        return self.op.matmat(X)

    def _rmatmat(self, X):
        if isinstance(X, np.matrix):
            return np.asmatrix(self.op.rmatmat(X.A))
        return self.op.rmatmat(X)

    def _adjoint(self):
        return type(self)(self.op.H)

    def _transpose(self):
        return type(self)(self.op.T)


class DeButLinearOperator(_DeButAdapter, LinearOperator):
    """A DeBut operator seen as a ``scipy.sparse.linalg.LinearOperator``.

    Every product goes to the DeBut kernels; ``.H``/``.adjoint()`` wrap ``op.H``, so
    iterative solvers (``lsqr``, ``lsmr``, ``cg``, ``gmres``, ``svds``, ``eigsh``...) never
    densify.  The dtype is the operator's, given explicitly (scipy does not probe it).

    Parameters
    ----------
    op : DeBut

    Examples
    --------
    >>> import numpy as np, scipy.sparse.linalg as spla
    >>> from debutla import DeBut
    >>> A = aslinearoperator(DeBut.random("8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8", seed=1))
    >>> x = spla.lsqr(A, A @ np.ones(8), atol=1e-12, btol=1e-12)[0]
    >>> np.allclose(x, 1)
    True
    """


def aslinearoperator(op: DeBut | DeButLinearOperator) -> DeButLinearOperator:
    """Wrap a DeBut operator as a :class:`scipy.sparse.linalg.LinearOperator`.

    Idempotent: an adapter passed in is returned as it is.  See
    :class:`DeButLinearOperator`.

    Raises
    ------
    TypeError
        If ``op`` is neither a DeBut operator nor an adapter.

    Examples
    --------
    >>> from debutla import DeBut
    >>> A = aslinearoperator(DeBut.identity(4))
    >>> aslinearoperator(A) is A
    True
    """
    if isinstance(op, DeButLinearOperator):
        return op
    return DeButLinearOperator(op)
