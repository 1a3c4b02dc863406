"""The CuPy backend agrees with the NumPy reference (skipped without CuPy and a GPU)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import debutla as db

cp = pytest.importorskip("cupy")
try:
    if cp.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("no device")
except Exception as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"no usable CUDA device: {e}", allow_module_level=True)

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
TOL = {np.float32: 2e-5, np.complex64: 2e-5, np.float64: 1e-12, np.complex128: 1e-12}
CHAINS = [
    "16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72",
    "128 <-(2,2,64)- 128 <-(2,2,32)- 128 <-(1,2,32)- 256 <-(2,2,16)- 256 <-(16,25,1)- 400",
    "12 <-(3,2,2)- 8 <-(2,2,1)- 8",          # dense
    "12 <-(1,2,3)- 24 <-(2,3,1)- 36",        # valid, not dense
]


def _rand(shape, dtype, rng):
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def _close(a, b, dtype):
    a = cp.asnumpy(a)
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype] * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("text", CHAINS)
def test_cupy_matches_numpy_reference(text, dtype):
    rng = np.random.default_rng(0)
    chain = db.Chain.parse(text)
    m, n = chain.shape
    op = db.DeBut.random(chain, seed=1, dtype=dtype, shape=(m - 1, n - 2))
    ref = op.with_backend("numpy")
    x = _rand((n - 2,), dtype, rng)
    X = _rand((n - 2, 5), dtype, rng)
    Xr = _rand((7, n - 2), dtype, rng)
    y = _rand((m - 1,), dtype, rng)
    _close(op @ cp.asarray(x), ref @ x, dtype)
    _close(op @ cp.asarray(X), ref @ X, dtype)
    _close(cp.asarray(Xr) @ op.T, Xr @ ref.T, dtype)
    _close(op.rmatvec(cp.asarray(y)), ref.rmatvec(y), dtype)
    _close(cp.asarray(y) @ op, y @ ref, dtype)


@given(st.sampled_from(CHAINS), st.sampled_from(DTYPES), st.integers(1, 40), st.integers(0, 2**31))
@settings(max_examples=40, deadline=None)
def test_cupy_property_rows_and_cols(text, dtype, k, seed):
    rng = np.random.default_rng(seed)
    op = db.DeBut.random(text, seed=seed, dtype=dtype)
    m, n = op.shape
    X = _rand((n, k), dtype, rng)
    D = op.with_backend("numpy").to_dense()
    _close(op @ cp.asarray(X), D @ X, dtype)
    _close(cp.asarray(X.T.copy()) @ op.T, X.T @ D.T, dtype)


def test_cupy_out_argument_and_dtype_promotion():
    op = db.DeBut.random(CHAINS[1], seed=0, dtype=np.float32)
    X = cp.ones((400, 3), dtype=cp.float32)
    out = cp.empty((128, 3), dtype=cp.float32)
    res = op.matmat(X, out=out)
    assert res is out
    _close(out, op.with_backend("numpy") @ np.ones((400, 3), np.float32), np.float32)
    y64 = op @ cp.ones(400, dtype=cp.float64)
    assert y64.dtype == cp.float64


def test_forced_cpu_backend_refuses_cupy_input():
    op = db.DeBut.random(CHAINS[0], seed=0).with_backend("numpy")
    with pytest.raises(TypeError, match="forced backend"):
        op @ cp.ones(72)


def test_cupyx_linear_operator_gmres():
    from cupyx.scipy.sparse.linalg import gmres

    from debutla.interop.cupyx import aslinearoperator

    op = db.DeBut.random("8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8", seed=3)
    D = op.to_dense()
    b = D @ np.arange(1.0, 9.0)
    A = aslinearoperator(op)
    assert A.H.shape == (8, 8)
    x, info = gmres(A, cp.asarray(b), restart=8, maxiter=20, rtol=1e-12)
    assert info == 0
    np.testing.assert_allclose(cp.asnumpy(x), np.linalg.solve(D, b), rtol=1e-6, atol=1e-8)


def test_fused_and_per_factor_paths_agree():
    """A chain wider than shared memory takes the per-factor path; both match dense."""
    from debutla.backends import cupy_

    wide = db.Chain.parse(" ".join(["65536"] + [f"(4,4,{4**i}) 65536" for i in range(7, -1, -1)]))
    op = db.DeBut.random(wide, seed=0, dtype=np.complex128)
    st = op._state(cupy_, np.dtype(np.complex128))
    X = cp.asarray(_rand((2, 65536), np.complex128, np.random.default_rng(0)))
    assert cupy_._fused(st, X, None) is None  # 2 MiB of shared memory: refused
    ref = op.with_backend("numpy")
    _close(X @ op.T, cp.asnumpy(X) @ ref.T, np.complex128)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [601, 1100, 2501])
def test_fused_multi_row_blocks_with_ragged_tail(k, dtype):
    """Large batches use 2-8 rows per block; the last block holds fewer rows."""
    op = db.DeBut.random(CHAINS[1], seed=k, dtype=dtype)
    X = _rand((k, 400), dtype, np.random.default_rng(k))
    ref = X @ op.with_backend("numpy").T
    _close(cp.asarray(X) @ op.T, ref, dtype)
    _close(op @ cp.asarray(np.ascontiguousarray(X.T)), ref.T, dtype)
