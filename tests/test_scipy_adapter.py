"""Tests of the scipy LinearOperator adapter, alone and inside scipy's solvers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
from hypothesis import given
from hypothesis import strategies as st

from debutla import DeBut, aslinearoperator
from debutla.interop.scipy import DeButLinearOperator
from strategies import (
    DTYPE_IDS,
    DTYPES,
    assert_product_close,
    error_depth,
    operators,
    random_values,
    reference,
)

TALL = "48 <-(4,2,12)- 24 <-(4,4,3)- 24 <-(3,3,1)- 24"
SQUARE = "32 <-(2,2,16)- 32 <-(2,2,8)- 32 <-(2,2,4)- 32 <-(2,2,2)- 32 <-(2,2,1)- 32"
WIDE = "24 <-(4,4,6)- 24 <-(2,2,3)- 24 <-(3,5,1)- 40"
SOLVER_DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.complex128],
                                        ids=["float64", "complex128"])


def _rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------------------------
# the adapter itself
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_adapter_is_a_linear_operator_with_explicit_shape_and_dtype(dtype):
    op = DeBut.random(WIDE, seed=0, dtype=dtype, shape=(20, 37))
    A = aslinearoperator(op)
    assert isinstance(A, spla.LinearOperator) and isinstance(A, DeButLinearOperator)
    assert A.shape == (20, 37) and A.dtype == np.dtype(dtype)
    assert A.op is op
    assert A.H.shape == A.T.shape == (37, 20)
    assert A.H.dtype == A.T.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@given(data=st.data())
def test_adapter_products_agree_with_dense_reference(dtype, data):
    op = data.draw(operators(dtype))
    A = aslinearoperator(op)
    m, n = op.shape
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    D, B, depth = reference(op), reference(op, absolute=True), error_depth(op.chain)
    x = random_values(rng, (n,), dtype)
    y = random_values(rng, (m,), dtype)
    X = random_values(rng, (n, 3), dtype)
    Y = random_values(rng, (m, 3), dtype)
    checks = [
        (A.matvec(x), D @ x, B @ np.abs(x), (m,)),
        (A @ x, D @ x, B @ np.abs(x), (m,)),
        (A.matvec(x[:, None]), D @ x[:, None], B @ np.abs(x[:, None]), (m, 1)),
        (A.rmatvec(y), D.conj().T @ y, B.T @ np.abs(y), (n,)),
        (A.H @ y, D.conj().T @ y, B.T @ np.abs(y), (n,)),
        (A.adjoint().matvec(y), D.conj().T @ y, B.T @ np.abs(y), (n,)),
        (A.T @ y, D.T @ y, B.T @ np.abs(y), (n,)),
        (A.matmat(X), D @ X, B @ np.abs(X), (m, 3)),
        (A @ X, D @ X, B @ np.abs(X), (m, 3)),
        (A.rmatmat(Y), D.conj().T @ Y, B.T @ np.abs(Y), (n, 3)),
        (A.H.matmat(Y), D.conj().T @ Y, B.T @ np.abs(Y), (n, 3)),
    ]
    for got, ref, bound, shape in checks:
        assert got.shape == shape
        assert_product_close(got, ref, bound, dtype, depth)


def test_adapter_adjoint_and_transpose_wrap_debut_operators():
    op = DeBut.random(WIDE, seed=0, dtype=np.complex128)
    A = aslinearoperator(op)
    assert isinstance(A.H, DeButLinearOperator) and isinstance(A.T, DeButLinearOperator)
    assert A.H.op.chain == op.H.chain and A.T.op.chain == op.T.chain
    assert np.array_equal(A.H.op.to_dense(), op.H.to_dense())
    assert np.array_equal(A.T.op.to_dense(), op.T.to_dense())


@pytest.mark.parametrize("obj", [np.eye(3), None, "4 <-(2,2,1)- 4",
                                 spla.aslinearoperator(np.eye(3))])
def test_adapter_refuses_non_debut_objects(obj):
    with pytest.raises(TypeError, match="DeBut"):
        aslinearoperator(obj)


def test_adapter_passes_input_errors_through():
    A = aslinearoperator(DeBut.random(WIDE, seed=0))
    with pytest.raises(ValueError):
        A.matvec(np.ones(41))
    with pytest.raises(ValueError):
        A.rmatvec(np.ones(23))


# ---------------------------------------------------------------------------------------
# scipy solvers against the dense answer
# ---------------------------------------------------------------------------------------

def _well_posed(op: DeBut, limit: float = 1e4) -> np.ndarray:
    """The dense matrix, after checking that the test problem is well conditioned."""
    D = op.to_dense()
    s = np.linalg.svd(D, compute_uv=False)
    assert s[-1] > 0 and s[0] / s[-1] < limit, "test problem is ill-conditioned"
    return D


@SOLVER_DTYPES
@pytest.mark.parametrize("solver", ["lsqr", "lsmr"])
def test_least_squares_solvers_match_dense_lstsq(dtype, solver):
    op = DeBut.random(TALL, seed=0, dtype=dtype)
    D = _well_posed(op)
    b = random_values(_rng(), (48,), dtype)
    ref = np.linalg.lstsq(D, b, rcond=None)[0]
    limit = {"lsqr": "iter_lim", "lsmr": "maxiter"}[solver]
    x = getattr(spla, solver)(aslinearoperator(op), b, atol=1e-15, btol=1e-15,
                              **{limit: 2000})[0]
    assert x.shape == (24,)
    np.testing.assert_allclose(x, ref, rtol=1e-8, atol=1e-8 * np.linalg.norm(ref))


@SOLVER_DTYPES
def test_cg_solves_a_normal_equations_operator(dtype):
    op = DeBut.random(SQUARE, seed=1, dtype=dtype)
    L = aslinearoperator(op)
    A = L.H @ L + aslinearoperator(DeBut.identity(32, dtype=dtype))  # SPD, eigs >= 1
    D = op.to_dense()
    dense = D.conj().T @ D + np.eye(32)
    b = random_values(_rng(), (32,), dtype)
    x, info = spla.cg(A, b, rtol=1e-13, atol=0, maxiter=1000)
    assert info == 0
    np.testing.assert_allclose(x, np.linalg.solve(dense, b), rtol=1e-9, atol=1e-10)


@SOLVER_DTYPES
def test_gmres_solves_identity_plus_small_debut(dtype):
    op = DeBut.random(SQUARE, seed=2, dtype=dtype)
    D = op.to_dense()
    scale = 0.5 / np.linalg.norm(D, 2)  # ||scale * D|| = 0.5: cond(I + scale D) <= 3
    A = aslinearoperator(DeBut.identity(32, dtype=dtype)) + scale * aslinearoperator(op)
    b = random_values(_rng(), (32,), dtype)
    x, info = spla.gmres(A, b, rtol=1e-13, atol=0, restart=32, maxiter=100)
    assert info == 0
    np.testing.assert_allclose(x, np.linalg.solve(np.eye(32) + scale * D, b),
                               rtol=1e-9, atol=1e-10)


@SOLVER_DTYPES
@pytest.mark.parametrize("text", [TALL, WIDE, SQUARE], ids=["tall", "wide", "square"])
def test_svds_top_singular_values_match_dense_svd(dtype, text):
    op = DeBut.random(text, seed=3, dtype=dtype)
    ref = np.linalg.svd(op.to_dense(), compute_uv=False)[:5]
    s = spla.svds(aslinearoperator(op), k=5, return_singular_vectors=False,
                  tol=1e-12, random_state=0)
    np.testing.assert_allclose(np.sort(s)[::-1], ref, rtol=1e-8)


@SOLVER_DTYPES
def test_svds_singular_vectors_reconstruct_the_operator_action(dtype):
    op = DeBut.random(TALL, seed=4, dtype=dtype)
    u, s, vh = spla.svds(aslinearoperator(op), k=5, tol=1e-12, random_state=0)
    D = op.to_dense()
    np.testing.assert_allclose(D @ vh.conj().T, u * s, atol=1e-8 * s.max())


@SOLVER_DTYPES
def test_eigsh_on_the_gram_operator_matches_dense_eigenvalues(dtype):
    op = DeBut.random(WIDE, seed=5, dtype=dtype)
    L = aslinearoperator(op)
    G = L.H @ L  # Hermitian positive semidefinite, 40 x 40
    D = op.to_dense()
    ref = np.linalg.eigvalsh(D.conj().T @ D)[::-1][:4]
    w = spla.eigsh(G, k=4, which="LA", return_eigenvectors=False, tol=1e-12,
                   v0=np.ones(40, dtype=dtype))
    np.testing.assert_allclose(np.sort(w)[::-1], ref, rtol=1e-8)


def test_float32_operator_serves_float64_solver_vectors():
    op = DeBut.random(TALL, seed=0, dtype=np.float32)
    A = aslinearoperator(op)
    x = np.random.default_rng(0).standard_normal(24)
    y = A.matvec(x)
    assert y.dtype == np.float64  # NumPy promotion, as the operator does
    np.testing.assert_allclose(y, op.astype(np.float64) @ x, rtol=1e-12)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_adapter_accepts_numpy_matrix_inputs_like_scipy_operators():
    # LinearOperator.matvec documents x as "{matrix, ndarray}"
    op = DeBut.random(WIDE, seed=0, dtype=np.complex128)
    A = aslinearoperator(op)
    x = np.arange(40.0)
    y = np.arange(24.0)
    X = np.arange(80.0).reshape(40, 2)
    np.testing.assert_array_equal(np.asarray(A.matvec(np.matrix(x).T)).ravel(), op @ x)
    np.testing.assert_array_equal(np.asarray(A.rmatvec(np.matrix(y).T)).ravel(), op.H @ y)
    np.testing.assert_array_equal(np.asarray(A.matmat(np.matrix(X))), op @ X)
    np.testing.assert_array_equal(np.asarray(A.H.matmat(np.matrix(X[:24]))), op.H @ X[:24])


def test_adapter_pickles_for_process_pools():
    import pickle

    op = DeBut.random(WIDE, seed=0, dtype=np.complex64, shape=(20, 37))
    A = aslinearoperator(op)
    B = pickle.loads(pickle.dumps(A))
    assert isinstance(B, DeButLinearOperator)
    assert B.shape == A.shape and B.dtype == A.dtype
    x = np.arange(37.0)
    np.testing.assert_array_equal(B @ x, A @ x)
    np.testing.assert_array_equal(B.H @ x[:20], A.H @ x[:20])


# ---------------------------------------------------------------------------------------
# scipy's LinearOperator contract in full
# ---------------------------------------------------------------------------------------

def test_aslinearoperator_is_idempotent_and_has_args():
    op = DeBut.random(WIDE, seed=0)
    A = aslinearoperator(op)
    assert aslinearoperator(A) is A
    assert A.args == (op,)
    assert A.H.args[0].shape == (40, 24)
    with pytest.raises(TypeError, match="DeBut operator"):
        aslinearoperator(np.eye(3))


@pytest.mark.parametrize("protocol", range(0, __import__("pickle").HIGHEST_PROTOCOL + 1))
def test_chain_operator_and_adapter_pickle_with_every_protocol(protocol):
    import pickle

    op = DeBut.random(WIDE, seed=0, dtype=np.complex64, shape=(20, 37))
    A = aslinearoperator(op)
    for obj in (op.chain, op.chain[0], op, A):
        back = pickle.loads(pickle.dumps(obj, protocol))
        assert type(back) is type(obj)
    back = pickle.loads(pickle.dumps(A, protocol))
    x = np.arange(37, dtype=np.complex64)
    np.testing.assert_array_equal(back @ x, A @ x)
    assert back.shape == A.shape and back.dtype == A.dtype


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_matrix_in_matrix_out_as_scipys_operators():
    op = DeBut.random(WIDE, seed=0)
    A = aslinearoperator(op)
    ref = spla.aslinearoperator(op.to_dense())
    X = np.asmatrix(np.ones((40, 2)))
    Y = np.asmatrix(np.ones((24, 2)))
    for ours, theirs in ((A.matmat(X), ref.matmat(X)), (A.rmatmat(Y), ref.rmatmat(Y))):
        assert type(ours) is type(theirs) is np.matrix
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    x = np.asmatrix(np.ones((40, 1)))
    assert type(A.matvec(x)) is type(ref.matvec(x))
