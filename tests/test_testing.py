"""The public test helpers :mod:`debutla.testing` (the suite itself uses them)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla

from debutla import DeBut, aslinearoperator
from debutla.testing import assert_operator_close, dottest
from strategies import DTYPE_IDS, DTYPES

CHAIN = "24 <-(4,4,6)- 24 <-(2,2,3)- 24 <-(3,5,1)- 40"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dottest_passes_for_debut_and_its_adapter(dtype):
    op = DeBut.random(CHAIN, seed=0, dtype=dtype, shape=(20, 33))
    lhs, rhs = dottest(op, k=3, seed=1)
    assert np.isclose(lhs, rhs, rtol=1e-3)
    dottest(aslinearoperator(op), seed=2)


class _WrongAdjoint(spla.LinearOperator):
    """A deliberately broken operator: its adjoint is not the adjoint."""

    def __init__(self, A):
        self.A = A
        super().__init__(dtype=A.dtype, shape=A.shape)

    def _matmat(self, X):
        return self.A @ X

    def _rmatmat(self, Y):
        return 1.001 * (self.A.T @ Y)


def test_dottest_catches_a_wrong_adjoint():
    A = np.random.default_rng(0).standard_normal((6, 5))
    with pytest.raises(AssertionError, match="dottest"):
        dottest(_WrongAdjoint(A), seed=0)
    lhs, rhs = dottest(_WrongAdjoint(A), seed=0, raise_error=False)
    assert lhs != rhs


def test_dottest_argument_errors():
    op = DeBut.identity(3)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        dottest(op, k=0)
    with pytest.raises(TypeError, match="seed"):
        dottest(op, seed="a")
    with pytest.raises(ValueError, match="factor"):
        dottest(op, factor=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_assert_operator_close_accepts_the_same_map_and_rejects_another(dtype):
    op = DeBut.random(CHAIN, seed=0, dtype=dtype)
    assert_operator_close(op, op.to_dense())
    assert_operator_close(op.T.T, op)
    assert_operator_close(op.to_sparse(), op.to_dense())
    W = op.to_dense().copy()
    W[3, 7] += 1e-2 * (1 + np.abs(W).max())
    with pytest.raises(AssertionError, match=r"first at \(3, 7\)"):
        assert_operator_close(op, W)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_operator_close(op, W[:, :5])
    assert_operator_close(op, W, rtol=0.5, atol=1.0)   # an explicit tolerance is honoured
    with pytest.raises(ValueError, match="atol"):
        assert_operator_close(op, W, atol=-1)
