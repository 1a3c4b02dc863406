"""The kernel benchmark's products (benchmarks/bench_kernels.py ``--product``) are the
products their names say, through the operator and on the backend alone, and ``--ab``
refuses names that are not constants."""

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

# a plain import: the benchmark is the project's own (its imports are dependencies), so
# one that no longer imports fails here instead of skipping
import bench_kernels as bk  # noqa: E402
import debutla.backends.numba_ as nbk  # noqa: E402
from debutla import DeBut  # noqa: E402

# a small chain (generic kernel: nothing to compile), non-square so that a product of
# the wrong side fails on shapes
CHAIN = "6 <-(3,2,2)- 4 <-(2,2,1)- 4"


def dense_product(product: str, D: np.ndarray, X: np.ndarray) -> np.ndarray:
    A = D.conj().T if product.startswith("adjoint") else D
    return A @ X if product.endswith("cols") else X @ A.T


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("product", bk.PRODUCTS)
def test_products_match_dense(product, dtype):
    op = DeBut.random(CHAIN, seed=3, dtype=dtype, backend="numba")
    D = op.to_dense()
    rng = np.random.default_rng(0)
    X, Y = bk.product_io(product, op, 5, rng)
    if np.iscomplexobj(Y):
        X = (X + 1j * rng.standard_normal(X.shape)).astype(dtype)
    want = dense_product(product, D, X)
    assert Y.shape == want.shape
    np.testing.assert_allclose(bk.op_call(product, op)(X, Y), want, rtol=1e-12, atol=1e-12)
    Y2 = np.empty_like(Y)
    bk.backend_call(product)(nbk.prepare(op.factors), X, Y2)
    np.testing.assert_allclose(Y2, want, rtol=1e-12, atol=1e-12)


def test_backend_set_restores():
    assert nbk._COLS_WIDE is True
    with bk.backend_set({"backend": {"_COLS_WIDE": False}}):
        assert nbk._COLS_WIDE is False
    assert nbk._COLS_WIDE is True


@pytest.mark.parametrize("item", ["_NO_SUCH_NAME=1", "tile_rows=1"])
def test_ab_refuses_what_is_not_a_constant(item, capsys):
    with pytest.raises(SystemExit) as e:
        bk.main(["--ab", item])
    assert e.value.code == 2
    assert "has no constant" in capsys.readouterr().err


def test_scaling_ab_times_the_old_constants_per_thread_count(monkeypatch, tmp_path):
    """``--scaling --ab`` adds each thread count above one with the backend constants
    set around its timings (and only there), and reports their paired ratio."""
    seen: list[tuple] = []
    real_tmin = bk.tmin

    def tmin(fn, budget, min_reps=5):
        seen.append((nbk.get_num_threads(), nbk._LANE_JOBS))
        return real_tmin(fn, 0.0, 1)
    monkeypatch.setattr(bk, "tmin", tmin)
    monkeypatch.setattr(bk, "Machine", lambda: None)  # (no 64 MiB probe: not measured)
    monkeypatch.setattr(bk, "set_defaults", lambda **kw: None)  # process-wide settings
    monkeypatch.setattr(bk, "threadpool_limits", lambda **kw: None)
    monkeypatch.setitem(bk.ALL_CHAINS, "lenet", CHAIN)  # the generic kernel: no compile
    out = tmp_path / "table.md"
    assert bk.main(["--scaling", "--ab", "_LANE_JOBS=False", "--chains", "lenet",
                    "--dtypes", "float64", "--batches", "3", "--rounds", "2",
                    "--out", str(out)]) == 0
    assert sorted(set(seen)) == [(1, True), (2, False), (2, True)]
    assert len(seen) == 6 and nbk._LANE_JOBS is True
    table = out.read_text()
    assert "2 thr old / new (paired)" in table and "_LANE_JOBS" in table


def test_scaling_ab_refuses_generator_constants(capsys):
    with pytest.raises(SystemExit) as e:
        bk.main(["--scaling", "--ab", "_FUSE_MAX=1"])
    assert e.value.code == 2
    assert "numba_ only" in capsys.readouterr().err
