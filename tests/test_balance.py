"""debutla.fit.balance: the same product with evenly scaled factors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import debutla as db
from debutla.fit import balance
from strategies import operators

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


@settings(deadline=None, max_examples=30)
@given(op=st.sampled_from(DTYPES).flatmap(operators), seed=st.integers(0, 2**31 - 1))
def test_same_product_and_even_scales(op, seed):
    """Skew every intermediate feature at random: balance undoes the skew exactly where
    it can and never changes the product beyond rounding."""
    rng = np.random.default_rng(seed)
    vals = [np.array(v) for v in op.factors]
    for k in range(len(vals) - 1):  # feature scales 10^[-3, 3], undone on the next factor
        d = 10.0 ** rng.uniform(-3, 3, size=vals[k].shape[0] * vals[k].shape[1]
                                * vals[k].shape[3])
        nb, r, s, t = vals[k].shape
        vals[k] = vals[k] * d.reshape(nb, r, 1, t).astype(vals[k].dtype)
        nb2, r2, s2, t2 = vals[k + 1].shape
        vals[k + 1] = vals[k + 1] / d.reshape(nb2, 1, s2, t2).astype(vals[k + 1].dtype)
    skewed = db.DeBut(op.chain, vals, shape=op.shape)
    even = balance(skewed, sweeps=30)
    assert even.chain == op.chain and even.shape == op.shape and even.dtype == op.dtype
    D, E = skewed.to_dense().astype(np.complex128), even.to_dense().astype(np.complex128)
    # every value is rounded at most 4 times a sweep; a product of N values, each path's
    # magnitude bounded by the product of absolute values (which the scaling keeps)
    absprod = db.DeBut(op.chain, [np.abs(v).astype(np.float64) for v in vals],
                       shape=op.shape).to_dense()
    eps = np.finfo(np.dtype(op.dtype).type(0).real.dtype).eps
    K = 4 * len(op.factors) * (30 + 1)
    assert np.all(np.abs(D - E) <= K * eps * absprod + np.finfo(float).tiny)
    if len(op.factors) > 1:
        # every intermediate feature: row of the writer and column of the reader equal
        for k in range(len(op.factors) - 1):
            rows = np.sum(np.abs(even.factors[k]) ** 2, axis=2).reshape(-1)
            cols = np.sum(np.abs(even.factors[k + 1]) ** 2, axis=1).reshape(-1)
            both = (rows > 1e-20) & (cols > 1e-20)
            np.testing.assert_allclose(np.sqrt(rows[both]), np.sqrt(cols[both]), rtol=0.05)


@pytest.mark.parametrize("dtype", DTYPES)
def test_skewed_factors_come_back_even(dtype):
    chain = db.Chain.parse("16 <-(2,2,8)- 16 <-(2,2,4)- 16 <-(4,4,1)- 16")
    op = db.DeBut.random(chain, seed=0, dtype=dtype)
    skewed = db.DeBut(chain, [op.factors[0] * 1e4, op.factors[1], op.factors[2] / 1e4])
    even = balance(skewed)
    norms = [float(np.linalg.norm(f)) for f in even.factors]
    assert max(norms) / min(norms) < 2
    np.testing.assert_allclose(even.to_dense(), op.to_dense(),
                               rtol=1e-4 if dtype in (np.float32, np.complex64) else 1e-10,
                               atol=1e-5 if dtype in (np.float32, np.complex64) else 1e-12)


def test_trivial_cases_and_errors():
    op = db.DeBut.random(db.Chain.parse("8 <-(8,16,1)- 16"), seed=0)
    assert balance(op) is op
    two = db.DeBut.random(db.Chain.parse("8 <-(2,2,4)- 8 <-(4,8,1)- 16"), seed=0)
    assert balance(two, sweeps=0) is two
    with pytest.raises(TypeError, match="balance\\(op\\): op must be a debutla.DeBut"):
        balance(np.ones((2, 2)))
    with pytest.raises(ValueError, match="balance\\(sweeps\\)"):
        balance(two, sweeps=-1)
