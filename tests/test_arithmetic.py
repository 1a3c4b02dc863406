"""Operator arithmetic, N-D batches and the array protocol of :class:`debutla.DeBut`."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from debutla import Chain, DeBut, aslinearoperator
from debutla.testing import assert_operator_close
from strategies import DTYPE_IDS, DTYPES, operators, random_values, reference

SQUARE = "8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8"
WIDE = "24 <-(4,4,6)- 24 <-(2,2,3)- 24 <-(3,5,1)- 40"


# -- composition -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_transpose_times_operator_is_a_debut_with_the_concatenated_chain(dtype):
    A = DeBut.random(WIDE, seed=0, dtype=dtype)
    B = A.H @ A
    assert isinstance(B, DeBut) and B.shape == (40, 40) and B.dtype == np.dtype(dtype)
    assert B.chain.factors == A.chain.factors + A.H.chain.factors
    assert_operator_close(B, reference(A).conj().T @ reference(A))


@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_composition_with_padding_equals_the_dense_product(data):
    """Cut outputs and padded inputs at the junction: an exact selection factor."""
    A = data.draw(operators(np.float64))
    m, n = A.shape
    ch = data.draw(st.sampled_from([f"{n} <-(1,1,{n})- {n}", "12 <-(3,4,1)- 16",
                                    "30 <-(5,6,1)- 36", "9 <-(3,3,1)- 9"]))
    c = Chain.parse(ch)
    P, Q = c.shape
    if P < n:
        return
    k = data.draw(st.integers(1, Q))
    B = DeBut.random(c, seed=1, shape=(n, k))       # B: (n, k), output cut from P to n
    C = A @ B
    assert C.shape == (m, k)
    assert_operator_close(C, reference(A) @ reference(B))


def test_composition_errors():
    A = DeBut.random(SQUARE, seed=0)
    with pytest.raises(ValueError, match=r"inner sizes differ.*8x8.*24x40"):
        A @ DeBut.random(WIDE, seed=0)
    with pytest.raises(TypeError, match="must be a DeBut operator"):
        A.compose(np.eye(8))
    with pytest.raises(TypeError, match="elementwise product"):
        A * A


def test_composition_promotes_dtypes():
    A = DeBut.random(SQUARE, seed=0, dtype=np.float32)
    B = DeBut.random(SQUARE, seed=1, dtype=np.complex64)
    assert (A @ B).dtype == np.complex64
    assert (A @ B.astype(np.complex128)).dtype == np.complex128


# -- scalars -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("a", [2.5, -3, np.float32(0.5), 0.0])
def test_scalar_multiplication_scales_the_operator(dtype, a):
    A = DeBut.random(WIDE, seed=0, dtype=dtype)
    D = reference(A)
    for B in (a * A, A * a):
        assert B.chain == A.chain and B.dtype == np.dtype(dtype)
        assert_operator_close(B, a * D)
    # only one factor changes
    changed = [not np.array_equal(u, v) for u, v in zip((a * A).factors, A.factors)]
    assert sum(changed) <= 1
    assert_operator_close(-A, -D)
    assert (+A) is A


def test_complex_scalar_promotes_and_division():
    A = DeBut.random(SQUARE, seed=0, dtype=np.float32)
    assert (1j * A).dtype == np.complex64
    assert_operator_close(1j * A, 1j * reference(A))
    assert_operator_close(A / 4, reference(A) / 4)
    with pytest.raises(ZeroDivisionError):
        A / 0


@pytest.mark.parametrize("bad", [np.ones(3), [1.0], "a", None])
def test_multiplication_by_a_non_scalar_is_a_type_error(bad):
    A = DeBut.random(SQUARE, seed=0)
    with pytest.raises(TypeError, match="scalar only"):
        A * bad


def test_non_finite_scalar_is_refused():
    with pytest.raises(ValueError, match="finite"):
        np.inf * DeBut.random(SQUARE, seed=0)


def test_sums_are_refused_with_a_pointer_to_the_lazy_sum():
    A = DeBut.random(SQUARE, seed=0)
    for f in (lambda: A + A, lambda: A - A, lambda: 1 + A, lambda: A - 1):
        with pytest.raises(TypeError, match="aslinearoperator"):
            f()
    S = aslinearoperator(A) + aslinearoperator(A)    # the documented alternative
    x = np.arange(8.0)
    np.testing.assert_allclose(S @ x, 2 * (A @ x))


# -- array protocol and non-array inputs ---------------------------------------------------
def test_asarray_raises_with_a_pointer_to_to_dense():
    A = DeBut.random(SQUARE, seed=0)
    with pytest.raises(TypeError, match="to_dense"):
        np.asarray(A)
    with pytest.raises(TypeError, match="to_dense"):
        np.array([A, A])


@pytest.mark.parametrize("make", [sp.csr_array, sp.csr_matrix, sp.coo_array])
def test_scipy_sparse_inputs_get_a_clear_type_error(make):
    A = DeBut.random(SQUARE, seed=0)
    X = make(np.eye(8))
    for f in (lambda: A @ X, lambda: A.matmat(X), lambda: A.matmat_rows(X), lambda: A.matvec(X)):
        with pytest.raises(TypeError, match="sparse"):
            f()


@pytest.mark.parametrize("bad", ["abc", object(), {"a": 1}])
def test_non_numeric_inputs_get_a_type_error(bad):
    A = DeBut.random(SQUARE, seed=0)
    with pytest.raises(TypeError, match="numeric array"):
        A @ bad


def test_lists_are_accepted_as_arrays():
    A = DeBut.random(SQUARE, seed=0)
    np.testing.assert_allclose(A @ list(range(8)), A @ np.arange(8.0))


# -- N-D batches -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@given(data=st.data(), lead=st.lists(st.integers(1, 3), min_size=1, max_size=3))
@settings(max_examples=25, deadline=None)
def test_leading_batch_dimensions_in_the_row_layout(dtype, data, lead):
    A = data.draw(operators(dtype))
    m, n = A.shape
    rng = np.random.default_rng(0)
    X = random_values(rng, (*lead, n), dtype)
    D = reference(A)
    want = X.astype(np.complex128) @ D.T
    tol = 1e-3 if np.dtype(dtype).itemsize <= 8 and dtype != np.float64 else 1e-9
    for Y in (X @ A.T, A.matmat_rows(X)):
        assert Y.shape == (*lead, m) and Y.dtype == np.dtype(dtype)
        np.testing.assert_allclose(Y, want, rtol=tol, atol=tol * np.abs(want).max())
    Yl = random_values(rng, (*lead, m), dtype)
    np.testing.assert_allclose(Yl @ A, Yl.astype(np.complex128) @ D,
                               rtol=tol, atol=tol * max(1.0, np.abs(Yl @ D).max()))


def test_stacked_matmul_matches_numpy_semantics():
    A = DeBut.random(WIDE, seed=0)
    X = np.random.default_rng(0).standard_normal((2, 3, 40, 5))
    Y = A @ X
    assert Y.shape == (2, 3, 24, 5)
    np.testing.assert_allclose(Y, reference(A) @ X, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"second-to-last axis.*\(2, 3, 5, 40\)"):
        A @ np.swapaxes(X, -1, -2)


def test_nd_out_argument():
    A = DeBut.random(WIDE, seed=0)
    X = np.ones((2, 3, 40))
    out = np.empty((2, 3, 24))
    assert A.matmat_rows(X, out=out) is out
    np.testing.assert_allclose(out, X @ reference(A).T)
    with pytest.raises(ValueError, match=r"out must be an array of shape \(2, 3, 24\)"):
        A.matmat_rows(X, out=np.empty((6, 24)))


def test_scalars_are_refused_by_matmul():
    A = DeBut.random(SQUARE, seed=0)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        A @ np.float64(2.0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        A.matmat_rows(np.ones(8))
