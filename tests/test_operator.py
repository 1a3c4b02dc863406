"""Tests of the DeBut operator against an independent dense reference.

The reference (tests/strategies.py) places each factor's values by the canonical layout
formula and multiplies the dense factors; it never calls the library's kernels, sparse
export or ``to_dense``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from debutla.testing import dottest
from debutla import Chain, DeBut
from debutla.backends import get_backend
from strategies import (
    DTYPE_IDS,
    DTYPES,
    assert_product_close,
    chains,
    error_depth,
    factor_dense,
    operators,
    random_values,
    reference,
)

seeds = st.integers(0, 2**32 - 1)
batch = st.integers(1, 3)
by_dtype = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)

SMALL = "8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8"
WIDE = "4 <-(2,3,2)- 6 <-(2,2,1)- 6 <-(1,2,1)- 12"  # 4 x 12, not dense


def _case(data, dtype):
    op = data.draw(operators(dtype))
    rng = np.random.default_rng(data.draw(seeds))
    k = data.draw(batch)
    return op, rng, k, reference(op), reference(op, absolute=True), error_depth(op.chain)


# ---------------------------------------------------------------------------------------
# products against the reference, all four dtypes
# ---------------------------------------------------------------------------------------

@by_dtype
@given(data=st.data())
def test_matvec_and_matmat_agree_with_dense_reference(dtype, data):
    op, rng, k, D, A, depth = _case(data, dtype)
    m, n = op.shape
    x = random_values(rng, (n,), dtype)
    X = random_values(rng, (n, k), dtype)
    for y, what in [(op @ x, "op @ x"), (op.matvec(x), "matvec")]:
        assert y.shape == (m,) and y.dtype == np.dtype(dtype)
        assert_product_close(y, D @ x, A @ np.abs(x), dtype, depth, what)
    y = op.matvec(x[:, None])
    assert y.shape == (m, 1)
    assert_product_close(y, D @ x[:, None], A @ np.abs(x[:, None]), dtype, depth, "(n,1)")
    for Y, what in [(op @ X, "op @ X"), (op.matmat(X), "matmat")]:
        assert Y.shape == (m, k) and Y.dtype == np.dtype(dtype)
        assert_product_close(Y, D @ X, A @ np.abs(X), dtype, depth, what)


@by_dtype
@given(data=st.data())
def test_row_layout_products_agree_with_dense_reference(dtype, data):
    op, rng, k, D, A, depth = _case(data, dtype)
    m, n = op.shape
    X = random_values(rng, (k, n), dtype)
    ref, bound = X @ D.T, np.abs(X) @ A.T
    for Y, what in [(X @ op.T, "X @ op.T"), (op.matmat_rows(X), "matmat_rows")]:
        assert Y.shape == (k, m) and Y.dtype == np.dtype(dtype)
        assert_product_close(Y, ref, bound, dtype, depth, what)
    # x @ op (__rmatmul__): (k, m) @ (m, n)
    Z = random_values(rng, (k, m), dtype)
    W = Z @ op
    assert W.shape == (k, n)
    assert_product_close(W, Z @ D, np.abs(Z) @ A, dtype, depth, "Z @ op")
    z = Z[0]
    w = z @ op
    assert w.shape == (n,)
    assert_product_close(w, z @ D, np.abs(z) @ A, dtype, depth, "z @ op")


@by_dtype
@given(data=st.data())
def test_adjoint_products_agree_with_dense_reference(dtype, data):
    op, rng, k, D, A, depth = _case(data, dtype)
    m, n = op.shape
    y = random_values(rng, (m,), dtype)
    Y = random_values(rng, (m, k), dtype)
    DH = D.conj().T
    for v, what in [(op.rmatvec(y), "rmatvec"), (op.H @ y, "op.H @ y"),
                    (op.H.matvec(y), "H.matvec")]:
        assert v.shape == (n,) and v.dtype == np.dtype(dtype)
        assert_product_close(v, DH @ y, A.T @ np.abs(y), dtype, depth, what)
    for V, what in [(op.rmatmat(Y), "rmatmat"), (op.H @ Y, "op.H @ Y")]:
        assert V.shape == (n, k)
        assert_product_close(V, DH @ Y, A.T @ np.abs(Y), dtype, depth, what)
    v = op.T @ y
    assert_product_close(v, D.T @ y, A.T @ np.abs(y), dtype, depth, "op.T @ y")


@by_dtype
@given(data=st.data())
def test_to_dense_and_to_sparse_agree_with_dense_reference(dtype, data):
    op, _, _, D, A, depth = _case(data, dtype)
    dense = op.to_dense()
    assert isinstance(dense, np.ndarray) and dense.dtype == np.dtype(dtype)
    assert_product_close(dense, D, A, dtype, depth, "to_dense")
    S = op.to_sparse()
    assert sp.issparse(S) and S.format == "csr" and S.shape == op.shape
    assert_product_close(S.toarray(), D, A, dtype, depth, "to_sparse")
    assert_product_close(op.T.to_dense(), D.T, A.T, dtype, depth, "T.to_dense")
    assert_product_close(op.H.to_dense(), D.conj().T, A.T, dtype, depth, "H.to_dense")
    assert_product_close(op.conj().to_dense(), D.conj(), A, dtype, depth, "conj")


@by_dtype
@given(data=st.data())
def test_factor_sparse_places_values_by_the_canonical_layout(dtype, data):
    op = data.draw(operators(dtype))
    N = len(op.chain)
    for i, spec in enumerate(op.chain):
        F = op.factor_sparse(i)
        assert F.shape == (spec.p, spec.q) and F.format == "csr"
        expected = factor_dense(spec, op.factors[i])
        assert np.array_equal(F.toarray(), expected)
        assert np.array_equal(op.factor_sparse(i - N, "coo").toarray(), expected)


@by_dtype
@given(data=st.data())
def test_transpose_and_adjoint_factors_are_exact_rearrangements(dtype, data):
    op = data.draw(operators(dtype))
    N = len(op.chain)
    T, H = op.T, op.H
    assert T.chain == op.chain.T == H.chain
    assert T.shape == H.shape == op.shape[::-1]
    assert T.dtype == H.dtype == op.dtype
    for i in range(N):
        src = factor_dense(op.chain[N - 1 - i], op.factors[N - 1 - i])
        assert np.array_equal(factor_dense(T.chain[i], T.factors[i]), src.T)
        assert np.array_equal(factor_dense(H.chain[i], H.factors[i]), src.conj().T)
    assert T.T is op and H.H is op
    if np.dtype(dtype).kind != "c":
        assert op.conj() is op
        assert np.array_equal(H.to_dense(), T.to_dense())


@by_dtype
@given(data=st.data())
def test_adjoint_dot_test(dtype, data):
    op = _case(data, dtype)[0]
    seed = data.draw(st.integers(0, 2**32 - 1))
    dottest(op, k=1, seed=seed)      # matvec-sized blocks
    dottest(op, k=2, seed=seed + 1)  # and matmat / rmatmat


@given(operators(np.float64))
def test_operator_holds_the_values_it_was_given(op):
    again = DeBut(op.chain, [np.array(v) for v in op.factors], shape=op.shape)
    assert again.chain == op.chain and again.shape == op.shape
    for a, b in zip(again.factors, op.factors):
        assert a.shape == b.shape and np.array_equal(a, b)
    assert np.array_equal(again.to_dense(), op.to_dense())


# ---------------------------------------------------------------------------------------
# dtype promotion
# ---------------------------------------------------------------------------------------

INPUT_DTYPES = [np.bool_, np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64,
                np.float16, np.float32, np.float64, np.complex64, np.complex128]


@pytest.mark.parametrize("in_dtype", INPUT_DTYPES, ids=lambda d: np.dtype(d).name)
@by_dtype
def test_inputs_are_promoted_as_numpy_promotes(dtype, in_dtype):
    rng = np.random.default_rng(7)
    op = DeBut.random(WIDE, seed=3, dtype=dtype, shape=(3, 11))
    m, n = op.shape
    want = np.result_type(np.dtype(dtype), np.dtype(in_dtype))
    x = rng.integers(0, 2 if in_dtype is np.bool_ else 5, size=(n, 2)).astype(in_dtype)
    y = rng.integers(0, 2 if in_dtype is np.bool_ else 5, size=(m, 2)).astype(in_dtype)
    D, A, depth = reference(op), reference(op, absolute=True), error_depth(op.chain)
    xr, yr = x.astype(np.complex128), y.astype(np.complex128)
    cases = [
        (op @ x[:, 0], D @ xr[:, 0], A @ np.abs(xr[:, 0])),
        (op @ x, D @ xr, A @ np.abs(xr)),
        (x.T @ op.T, xr.T @ D.T, np.abs(xr.T) @ A.T),
        (op.matmat_rows(x.T), xr.T @ D.T, np.abs(xr.T) @ A.T),
        (op.rmatvec(y[:, 0]), D.conj().T @ yr[:, 0], A.T @ np.abs(yr[:, 0])),
        (op.rmatmat(y), D.conj().T @ yr, A.T @ np.abs(yr)),
        (y.T @ op, yr.T @ D, np.abs(yr.T) @ A),
    ]
    for got, ref, bound in cases:
        assert got.dtype == want
        assert_product_close(got, ref if want.kind == "c" else ref.real, bound, want, depth)


@pytest.mark.parametrize("bad", [
    np.array(["a"] * 11),
    np.array([b"a"] * 11),
    np.array([object()] * 11),
    np.ones(11, dtype="m8[s]"),
    np.ones(11, dtype="M8[s]"),
])
def test_non_numeric_inputs_are_refused_with_type_error(bad):
    op = DeBut.random(WIDE, seed=0, shape=(3, 11))
    for f in (op.matvec, lambda v: op @ v, lambda v: op.matmat(v[:, None]),
              lambda v: op.matmat_rows(v[None, :])):
        with pytest.raises(TypeError, match="dtype"):
            f(bad)


@pytest.mark.skipif(np.dtype(np.longdouble) == np.dtype(np.float64),
                    reason="long double is float64 on this platform")
def test_long_double_input_is_refused_not_silently_downcast():
    op = DeBut.random(WIDE, seed=0)
    with pytest.raises(TypeError, match="not supported"):
        op @ np.ones(12, dtype=np.longdouble)


# ---------------------------------------------------------------------------------------
# input shape errors
# ---------------------------------------------------------------------------------------

def test_wrong_input_length_is_refused_naming_the_expected_size():
    op = DeBut.random(WIDE, seed=0, shape=(3, 11))
    bad = [
        lambda: op @ np.ones(12),
        lambda: op @ np.ones(10),
        lambda: op.matvec(np.ones(12)),
        lambda: op.matvec(np.ones((12, 1))),
        lambda: op.matmat(np.ones((12, 2))),
        lambda: op.matmat_rows(np.ones((2, 12))),
        lambda: np.ones((2, 12)) @ op.T,
    ]
    for f in bad:
        with pytest.raises(ValueError, match="11"):
            f()
    for f in [lambda: op.rmatvec(np.ones(4)), lambda: op.rmatmat(np.ones((4, 2))),
              lambda: np.ones(4) @ op, lambda: np.ones((2, 4)) @ op]:
        with pytest.raises(ValueError, match="3"):
            f()


@pytest.mark.parametrize("x", [np.float64(1.0), np.ones((11, 2, 2)), np.ones((1, 1, 11))])
def test_wrong_input_rank_is_refused(x):
    op = DeBut.random(WIDE, seed=0, shape=(3, 11))
    with pytest.raises(ValueError, match="D"):
        op @ x


def test_wrong_rank_for_each_product_method_is_refused():
    op = DeBut.random(WIDE, seed=0, shape=(3, 11))
    with pytest.raises(ValueError):
        op.matvec(np.ones((11, 2)))
    with pytest.raises(ValueError):
        op.matmat(np.ones(11))
    with pytest.raises(ValueError):
        op.matmat_rows(np.ones(11))
    with pytest.raises(ValueError):
        op.rmatmat(np.ones(3))
    with pytest.raises(ValueError, match="has 2 entries along its last axis"):
        np.ones((2, 3, 2)) @ op     # N-D batches work (test_arithmetic), wrong sizes not


def test_operator_times_operator_of_the_wrong_size_is_a_value_error():
    op = DeBut.random(SMALL, seed=0)
    with pytest.raises(ValueError, match="inner sizes differ"):
        op @ DeBut.random(WIDE, seed=0)


def test_lists_are_accepted_as_inputs():
    op = DeBut.random(SMALL, seed=0)
    x = [1.0, 2, 3, 4, 5, 6, 7, 8]
    assert np.array_equal(op @ x, op @ np.array(x))


def test_empty_batches_give_empty_results():
    op = DeBut.random(WIDE, seed=0, shape=(3, 11))
    assert op.matmat(np.zeros((11, 0))).shape == (3, 0)
    assert op.matmat_rows(np.zeros((0, 11))).shape == (0, 3)
    assert op.rmatmat(np.zeros((3, 0))).shape == (11, 0)


# ---------------------------------------------------------------------------------------
# out= arguments
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [None, (3, 11)], ids=["full", "padded"])
@by_dtype
def test_out_arguments_are_filled_and_returned(dtype, shape):
    op = DeBut.random(WIDE, seed=1, dtype=dtype, shape=shape)
    m, n = op.shape
    rng = np.random.default_rng(0)
    x = random_values(rng, (n,), dtype)
    X = random_values(rng, (n, 3), dtype)
    y = random_values(rng, (m,), dtype)
    Y = random_values(rng, (m, 3), dtype)
    calls = [
        (op.matvec, x, (m,), op @ x),
        (op.matvec, x[:, None], (m, 1), (op @ x)[:, None]),
        (op.matmat, X, (m, 3), op @ X),
        (op.matmat_rows, X.T, (3, m), X.T @ op.T),
        (op.rmatvec, y, (n,), op.H @ y),
        (op.rmatmat, Y, (n, 3), op.H @ Y),
    ]
    for f, arg, oshape, expected in calls:
        out = np.full(oshape, np.nan, dtype=dtype)
        res = f(arg, out=out)
        assert res is out
        np.testing.assert_array_equal(out, expected)


def test_out_may_be_a_non_contiguous_view():
    op = DeBut.random(WIDE, seed=1, shape=(3, 11))
    X = np.random.default_rng(0).standard_normal((11, 4))
    buf = np.zeros((4, 3))
    view = buf.T
    assert op.matmat(X, out=view) is view
    np.testing.assert_array_equal(buf.T, op @ X)
    col = np.zeros((3, 2))
    view = col[:, 1]
    assert op.matvec(X[:, 0], out=view) is view
    np.testing.assert_array_equal(col[:, 1], op @ X[:, 0])
    assert (col[:, 0] == 0).all()


@pytest.mark.parametrize("method, arg_shape, bad_out", [
    ("matvec", (11,), np.zeros(4)),
    ("matvec", (11,), np.zeros((3, 1))),
    ("matvec", (11,), np.zeros(3, dtype=np.float32)),
    ("matvec", (11,), [0.0, 0.0, 0.0]),
    ("matvec", (11, 1), np.zeros(3)),
    ("matmat", (11, 2), np.zeros((2, 3))),
    ("matmat", (11, 2), np.zeros((3, 2), dtype=np.complex128)),
    ("matmat", (11, 2), [[0.0, 0.0]] * 3),
    ("matmat_rows", (2, 11), np.zeros((3, 2))),
    ("rmatvec", (3,), np.zeros(3)),
    ("rmatvec", (3,), [0.0] * 11),
    ("rmatmat", (3, 2), np.zeros((11, 2), dtype=np.float32)),
])
def test_bad_out_arguments_are_refused(method, arg_shape, bad_out):
    op = DeBut.random(WIDE, seed=1, shape=(3, 11))
    with pytest.raises((TypeError, ValueError), match="out"):
        getattr(op, method)(np.ones(arg_shape), out=bad_out)


def test_read_only_out_is_refused():
    op = DeBut.random(SMALL, seed=1)
    out = np.zeros(8)
    out.flags.writeable = False
    with pytest.raises(ValueError):
        op.matvec(np.ones(8), out=out)


# ---------------------------------------------------------------------------------------
# to_dense uses the smaller identity
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, shape", [
    (WIDE, None), (WIDE, (3, 10)), ("12 <-(2,1,6)- 6 <-(3,2,1)- 4", None),
    ("12 <-(2,1,6)- 6 <-(3,2,1)- 4", (11, 3)), (SMALL, (8, 8)),
])
def test_to_dense_applies_the_identity_of_the_smaller_side(monkeypatch, text, shape):
    op = DeBut.random(text, seed=2, shape=shape).with_backend("numpy")
    m, n = op.shape
    be = get_backend("numpy")
    widths = []

    def spy(name):
        inner = getattr(be, name)
        k_axis = 0 if name == "apply_rows" else 1

        def wrapped(state, X, out=None, trans="N"):
            widths.append(X.shape[k_axis])
            return inner(state, X, out, trans)
        return wrapped

    monkeypatch.setattr(be, "apply_rows", spy("apply_rows"))
    monkeypatch.setattr(be, "apply_cols", spy("apply_cols"))
    dense = op.to_dense()
    assert widths and max(widths) == min(m, n)
    assert dense.shape == (m, n)
    monkeypatch.undo()
    assert_product_close(dense, reference(op), reference(op, absolute=True),
                         op.dtype, error_depth(op.chain))


# ---------------------------------------------------------------------------------------
# construction and validation
# ---------------------------------------------------------------------------------------

def _vals(chain, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [random_values(rng, f.value_shape, dtype) for f in chain]


def test_constructor_accepts_a_chain_or_its_text():
    c = Chain.parse(SMALL)
    v = _vals(c)
    a, b = DeBut(c, v), DeBut(SMALL, v)
    assert a.chain == b.chain == c
    assert a.shape == c.shape and a.dtype == np.float64
    assert np.array_equal(a.to_dense(), b.to_dense())


def test_constructor_rejects_the_wrong_number_of_factors():
    c = Chain.parse(SMALL)
    with pytest.raises(ValueError, match="3 factors but 2"):
        DeBut(c, _vals(c)[:2])
    with pytest.raises(ValueError, match="3 factors but 4"):
        DeBut(c, _vals(c) + [np.ones((1, 1, 1, 1))])


def test_constructor_rejects_a_wrong_factor_shape_naming_the_factor():
    c = Chain.parse(SMALL)
    v = _vals(c)
    v[1] = v[1].reshape(2, 2, 2, 2).transpose(0, 1, 3, 2).reshape(4, 2, 2, 1)
    with pytest.raises(ValueError) as e:
        DeBut(c, v)
    assert "factor 1" in str(e.value) and "(2, 2, 2, 2)" in str(e.value)
    v = _vals(c)
    v[2] = v[2].ravel()
    with pytest.raises(ValueError, match="factor 2"):
        DeBut(c, v)


@pytest.mark.parametrize("bad", [np.array(["a"]), np.array([object()]), np.array([b"x"])])
def test_constructor_rejects_non_numeric_factors(bad):
    c = Chain.parse(SMALL)
    v = _vals(c)
    v[0] = np.broadcast_to(bad, c[0].value_shape)
    with pytest.raises(TypeError, match="factor 0"):
        DeBut(c, v)


@pytest.mark.parametrize("dtype", ["U3", object, np.longdouble, "M8[s]", "not-a-dtype"])
def test_constructor_rejects_unsupported_dtypes(dtype):
    if np.dtype(np.longdouble) == np.dtype(np.float64) and dtype is np.longdouble:
        pytest.skip("long double is float64 here")
    with pytest.raises(TypeError, match="dtype"):
        DeBut(SMALL, _vals(Chain.parse(SMALL)), dtype=dtype)
    with pytest.raises(TypeError, match="dtype"):
        DeBut.random(SMALL, dtype=dtype)


def test_constructor_dtype_follows_the_factors_or_the_argument():
    c = Chain.parse(SMALL)
    assert DeBut(c, _vals(c, np.float32)).dtype == np.float32
    assert DeBut(c, [v.astype(np.int32) for v in _vals(c)]).dtype == np.float64
    mixed = _vals(c, np.float32)
    mixed[1] = mixed[1].astype(np.complex64)
    assert DeBut(c, mixed).dtype == np.complex64
    assert DeBut(c, _vals(c), dtype=np.complex64).dtype == np.complex64
    op = DeBut(c, _vals(c), dtype=np.float32)
    assert all(v.dtype == np.float32 for v in op.factors)
    with pytest.raises(TypeError, match="complex"):
        DeBut(c, _vals(c, np.complex128), dtype=np.float64)


@pytest.mark.parametrize("shape, exc", [
    ((9, 8), ValueError), ((8, 9), ValueError), ((0, 8), ValueError), ((8, -1), ValueError),
    ((8,), TypeError), ((1, 2, 3), TypeError), ((1.0, 8), TypeError), ("ab", TypeError),
    (8, TypeError),
])
def test_constructor_rejects_bad_shapes(shape, exc):
    with pytest.raises(exc, match="shape|m|n"):
        DeBut(SMALL, _vals(Chain.parse(SMALL)), shape=shape)
    with pytest.raises(exc):
        DeBut.random(SMALL, shape=shape)


def test_constructor_rejects_bad_chain_and_backend_arguments():
    v = _vals(Chain.parse(SMALL))
    with pytest.raises(TypeError, match="chain"):
        DeBut([(8, 8, 2, 2, 1)], v)
    with pytest.raises(ValueError):
        DeBut("8 <-(3,2,1)- 8", v)
    with pytest.raises(ValueError, match="backend"):
        DeBut(SMALL, v, backend="fortran")
    with pytest.raises(TypeError, match="factors"):
        DeBut(SMALL, 3)


def test_padded_shape_is_kept_by_transpose_adjoint_conj_and_astype():
    op = DeBut.random(WIDE, seed=0, dtype=np.complex128, shape=(3, 10))
    assert op.T.shape == op.H.shape == (10, 3)
    assert op.conj().shape == op.astype(np.complex64).shape == (3, 10)
    assert op.T.T.shape == (3, 10)


# ---------------------------------------------------------------------------------------
# immutability
# ---------------------------------------------------------------------------------------

def _all_derived(op):
    return [op, op.T, op.H, op.conj(), op.astype(np.complex128), op.with_backend("numpy")]


@pytest.mark.parametrize("make", [
    lambda: DeBut.random(SMALL, seed=0),
    lambda: DeBut.random(SMALL, seed=0, dtype=np.complex64),
    lambda: DeBut(SMALL, _vals(Chain.parse(SMALL))),
    lambda: DeBut.identity(5),
], ids=["random", "random-complex", "constructor", "identity"])
def test_factor_arrays_are_read_only(make):
    for op in _all_derived(make()):
        for v in op.factors:
            with pytest.raises(ValueError, match="read-only"):
                v[...] = 0
            with pytest.raises(ValueError):
                v.flags.writeable = True
            assert not v.flags.writeable


def test_operator_copies_the_given_values():
    c = Chain.parse(SMALL)
    v = _vals(c)
    op = DeBut(c, v)
    before = op.to_dense()
    for a in v:
        a[...] = 0
    assert np.array_equal(op.to_dense(), before)
    assert all(not np.shares_memory(a, b) for a, b in zip(v, op.factors))


def test_operator_attributes_cannot_be_reassigned():
    op = DeBut.random(SMALL, seed=0)
    for name in ("shape", "dtype", "chain", "factors", "nnz", "T", "H"):
        with pytest.raises(AttributeError):
            setattr(op, name, None)
    assert isinstance(op.factors, tuple)


# ---------------------------------------------------------------------------------------
# constructors, conversions, counts
# ---------------------------------------------------------------------------------------

@by_dtype
def test_random_is_reproducible_and_accepts_a_generator(dtype):
    a = DeBut.random(SMALL, seed=5, dtype=dtype)
    b = DeBut.random(SMALL, seed=5, dtype=dtype)
    c = DeBut.random(SMALL, seed=np.random.default_rng(5), dtype=dtype)
    d = DeBut.random(SMALL, seed=6, dtype=dtype)
    assert all(np.array_equal(x, y) for x, y in zip(a.factors, b.factors))
    assert all(np.array_equal(x, y) for x, y in zip(a.factors, c.factors))
    assert not all(np.array_equal(x, y) for x, y in zip(a.factors, d.factors))
    assert a.dtype == np.dtype(dtype) and all(v.dtype == a.dtype for v in a.factors)


@pytest.mark.parametrize("seed", [1.5, "3", True, [1]])
def test_random_rejects_bad_seeds(seed):
    with pytest.raises(TypeError, match="seed"):
        DeBut.random(SMALL, seed=seed)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_random_values_have_the_documented_variance(dtype):
    # N(0, 1/s); complex: real and imaginary parts N(0, 1/(2 s)) each
    op = DeBut.random("10000 <-(4,5,100)- 12500", seed=11, dtype=dtype)
    v = op.factors[0].ravel()
    assert v.size == 50_000
    s = 5
    assert abs(v.mean()) < 5 / np.sqrt(s * v.size)
    assert abs(np.mean(np.abs(v) ** 2) * s - 1) < 0.03
    if np.dtype(dtype).kind == "c":
        assert abs(np.var(v.real) * 2 * s - 1) < 0.03
        assert abs(np.var(v.imag) * 2 * s - 1) < 0.03


@by_dtype
def test_identity_is_the_identity(dtype):
    op = DeBut.identity(6, dtype=dtype)
    assert op.shape == (6, 6) and op.dtype == np.dtype(dtype)
    assert np.array_equal(op.to_dense(), np.eye(6))
    x = random_values(np.random.default_rng(0), (6,), dtype)
    assert np.array_equal(op @ x, x)
    with pytest.raises(ValueError):
        DeBut.identity(0)


@pytest.mark.parametrize("src", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("dst", DTYPES, ids=DTYPE_IDS)
def test_astype_casts_the_values(src, dst):
    op = DeBut.random(WIDE, seed=4, dtype=src, shape=(3, 10))
    if np.dtype(src).kind == "c" and np.dtype(dst).kind != "c":
        with pytest.raises(TypeError, match="complex"):
            op.astype(dst)
        return
    new = op.astype(dst)
    assert new.dtype == np.dtype(dst) and new.shape == op.shape and new.chain == op.chain
    for a, b in zip(new.factors, op.factors):
        assert np.array_equal(a, b.astype(dst))
    if np.dtype(src) == np.dtype(dst):
        assert new is op


def test_nnz_and_nbytes_count_the_stored_values():
    for dtype in DTYPES:
        op = DeBut.random(WIDE, seed=0, dtype=dtype, shape=(3, 10))
        assert op.nnz == op.chain.nnz == sum(v.size for v in op.factors)
        assert op.nbytes == op.nnz * np.dtype(dtype).itemsize


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "bsr", "lil", "dok", "dia"])
def test_sparse_export_formats(fmt):
    op = DeBut.random(WIDE, seed=0, shape=(3, 10))
    S = op.to_sparse(fmt)
    assert S.format == fmt and S.shape == (3, 10)
    np.testing.assert_allclose(S.toarray(), reference(op), rtol=1e-12, atol=1e-12)
    F = op.factor_sparse(1, fmt)
    assert F.format == fmt
    assert np.array_equal(F.toarray(), factor_dense(op.chain[1], op.factors[1]))


def test_sparse_export_rejects_bad_format_and_index():
    op = DeBut.random(SMALL, seed=0)
    with pytest.raises(ValueError, match="format"):
        op.to_sparse("dense")
    with pytest.raises(ValueError, match="format"):
        op.factor_sparse(0, "csv")
    for i in (3, -4, 99):
        with pytest.raises(IndexError, match="range"):
            op.factor_sparse(i)
    for i in (1.0, True, "0"):
        with pytest.raises(TypeError):
            op.factor_sparse(i)


def test_repr_shows_shape_dtype_and_chain():
    op = DeBut.random(WIDE, seed=0, dtype=np.complex64, shape=(3, 10))
    r = repr(op)
    assert "3x10" in r and "complex64" in r and str(op.chain) in r


@given(chains(), st.sampled_from(DTYPES))
def test_transposed_chain_of_operator_is_the_transposed_chain(c, dtype):
    op = DeBut.random(c, seed=0, dtype=dtype)
    assert op.T.chain == c.T
    assert op.T.nnz == op.nnz


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_operators_pickle_and_deepcopy_to_equal_read_only_operators(dtype):
    import copy
    import pickle

    op = DeBut.random(WIDE, seed=0, dtype=dtype, shape=(3, 10)).H
    op @ np.ones(op.shape[1])  # a used operator (cached kernel state) copies too
    for other in (pickle.loads(pickle.dumps(op)), copy.deepcopy(op), copy.copy(op)):
        assert other.chain == op.chain and other.shape == op.shape
        assert other.dtype == op.dtype and other.backend == op.backend
        for a, b in zip(other.factors, op.factors):
            assert np.array_equal(a, b)
            with pytest.raises(ValueError):
                a[...] = 0
            with pytest.raises(ValueError):
                a.flags.writeable = True
        x = np.arange(op.shape[1], dtype=dtype)
        assert np.array_equal(other @ x, op @ x)


def test_scipy_aslinearoperator_accepts_a_debut_operator_directly():
    import scipy.sparse.linalg as spla

    op = DeBut.random(WIDE, seed=0, dtype=np.complex128, shape=(3, 10))
    A = spla.aslinearoperator(op)
    assert A.shape == (3, 10) and A.dtype == np.complex128
    x = np.arange(10.0)
    y = np.arange(3.0)
    assert np.array_equal(A @ x, op @ x)
    assert np.array_equal(A.H @ y, op.H @ y)


@by_dtype
@given(data=st.data())
def test_strided_reversed_and_fortran_inputs_agree_with_dense_reference(dtype, data):
    op, rng, k, D, A, depth = _case(data, dtype)
    m, n = op.shape
    big = random_values(rng, (2 * n + 1, 3 * k + 2), dtype)
    views = [big[1::2, ::3][:n, :k], np.asfortranarray(big[:n, :k]), big[::-1][:n, :k]]
    for X in views:
        assert X.shape == (n, k)
        bound = A @ np.abs(X)
        assert_product_close(op @ X, D @ X, bound, dtype, depth, "op @ view")
        assert_product_close(X.T @ op.T, (D @ X).T, bound.T, dtype, depth, "view.T @ op.T")
        assert_product_close(op @ X[:, 0], D @ X[:, 0], bound[:, 0], dtype, depth, "vector")


@pytest.mark.parametrize("text", [SMALL, "6 <-(3,2,2)- 4 <-(2,3,1)- 6",
                                  "12 <-(2,3,6)- 18 <-(3,2,2)- 12 <-(2,2,1)- 12"])
@by_dtype
def test_out_may_alias_the_input_of_a_square_operator(dtype, text):
    op = DeBut.random(text, seed=0, dtype=dtype)
    n = op.shape[1]
    assert op.shape == (n, n)
    rng = np.random.default_rng(1)
    X = random_values(rng, (n, 3), dtype)
    for f, arg in [(op.matmat, X), (op.matmat_rows, X.T), (op.rmatmat, X),
                   (op.matvec, X[:, 0]), (op.rmatvec, X[:, 0])]:
        expected = f(arg.copy())
        buf = np.array(arg)
        assert f(buf, out=buf) is buf
        np.testing.assert_array_equal(buf, expected)


@by_dtype
@given(data=st.data())
def test_products_never_modify_their_inputs(dtype, data):
    op, rng, k, _, _, _ = _case(data, dtype)
    m, n = op.shape
    x, X = random_values(rng, (n,), dtype), random_values(rng, (n, k), dtype)
    y, Y = random_values(rng, (m,), dtype), random_values(rng, (m, k), dtype)
    saved = [a.copy() for a in (x, X, y, Y)]
    op @ x, op @ X, X.T @ op.T, op.matmat_rows(X.T), op.rmatvec(y), op.rmatmat(Y)
    y @ op, Y.T @ op, op.H @ Y, op.T @ y
    for a, b in zip((x, X, y, Y), saved):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("bad", [np.int64, np.float16, np.bool_, np.longdouble])
def test_explicit_unsupported_dtype_is_refused_not_mapped(bad):
    chain = Chain.parse("4 <-(2,2,2)- 4 <-(2,2,1)- 4")
    with pytest.raises(TypeError, match="not supported"):
        DeBut.random(chain, dtype=bad)
    with pytest.raises(TypeError, match="not supported"):
        DeBut.random(chain).astype(bad)
    with pytest.raises(TypeError, match="not supported"):
        DeBut.identity(3, dtype=bad)


def test_copy_false_keeps_owned_values_without_a_copy():
    vals = [np.ascontiguousarray(v) for v in DeBut.random(SMALL, seed=0).factors]
    vals = [v.copy() for v in vals]
    op = DeBut(SMALL, vals, copy=False)
    assert all(np.shares_memory(a, b) for a, b in zip(op.factors, vals))
    assert not any(a.flags.writeable for a in op.factors)
    op2 = DeBut(SMALL, [v.astype(np.float32) for v in vals], dtype=np.float64, copy=False)
    assert op2.dtype == np.float64      # a dtype change still copies
    with pytest.raises(TypeError, match="copy must be True or False"):
        DeBut(SMALL, vals, copy="no")
