"""Tests of debutla.fit (factorize): exactness, optimality, ALS, errors, plumbing."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.linalg import hadamard

import debutla as db
from debutla import Chain, DeBut, FactorSpec, factorize

# single precision: about 80 eps (the worst of 1500 random chains measured 6.3e-7)
EXACT_TOL = {np.float64: 1e-10, np.complex128: 1e-10, np.float32: 1e-5, np.complex64: 1e-5}
DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
HSET = settings(deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def _numpy_backend():
    """Products in these tests run on the NumPy reference backend (no JIT per chain)."""
    with db.config(backend="numpy"):
        yield


# ---------------------------------------------------------------------------------------
# helpers (independent of the implementation under test)
# ---------------------------------------------------------------------------------------

def chain_from_rs(rs, A=1, D=1):
    """Chain with t_{k+1} = r_k t_k, t_1 = D, nb_N = A (dense when A = D = 1)."""
    N = math.prod(s for _, s in rs)
    specs = []
    t = D
    rest = N  # product of s_l for l >= k
    for r, s in rs:
        nb = A * (rest // s)
        specs.append(FactorSpec(nb * r * t, nb * s * t, r, s, t))
        rest //= s
        t *= r
    return Chain(specs)


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def random_matrix(shape, dtype, rng):
    X = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        X = X + 1j * rng.standard_normal(shape)
    return X.astype(dtype)


rs_pairs = st.lists(
    st.tuples(st.integers(1, 6), st.integers(1, 6)).filter(lambda p: p != (1, 1)),
    min_size=1, max_size=5,
).filter(lambda rs: math.prod(r for r, _ in rs) <= 96 and math.prod(s for _, s in rs) <= 96)


# ---------------------------------------------------------------------------------------
# exact recovery
# ---------------------------------------------------------------------------------------

@HSET
@given(rs=rs_pairs, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1),
       variant=st.sampled_from(["dense", "transposed", "batched"]),
       method=st.sampled_from(["hierarchical", "auto"]))
def test_exact_recovery_random_chains(rs, dtype, seed, variant, method):
    if variant == "batched":
        chain = chain_from_rs(rs, A=2, D=3)
    else:
        chain = chain_from_rs(rs)
    if variant == "transposed":
        chain = chain.transpose()
    W = DeBut.random(chain, seed=seed, dtype=dtype).to_dense()
    op, info = factorize(W, chain, method=method, return_info=True)
    assert op.shape == W.shape and op.dtype == np.dtype(dtype) and op.chain == chain
    assert info.rel_error < EXACT_TOL[dtype]
    assert rel(op.to_dense(), W) < EXACT_TOL[dtype]


@pytest.mark.parametrize("kind", ["monotonic", "bulging"])
@pytest.mark.parametrize("shape", [(16, 72), (128, 400), (64, 128), (96, 40)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_recovery_designed_chains(kind, shape, dtype):
    chain = db.design_chain(*shape, kind=kind)
    assert chain.is_dense
    W = DeBut.random(chain, seed=1, dtype=dtype).to_dense()
    op, info = factorize(W, chain, method="hierarchical", return_info=True)
    assert info.rel_error < EXACT_TOL[dtype]


PAPER_CHAINS = [
    "128 <-(2,2,64)- 128 <-(2,2,32)- 128 <-(1,2,32)- 256 <-(2,2,16)- 256 <-(16,25,1)- 400",
    "128 <-(2,2,64)- 128 <-(2,2,32)- 128 <-(2,2,16)- 128 <-(2,2,8)- 128 <-(8,25,1)- 400",
    "128 <-(2,4,64)- 256 <-(2,4,32)- 512 <-(4,5,8)- 640 <-(8,5,1)- 400",
    "16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72",
    "16 <-(2,6,8)- 48 <-(1,2,8)- 96 <-(2,2,4)- 96 <-(4,3,1)- 72",
    "64 <-(8,9,8)- 72 <-(2,4,4)- 144 <-(1,2,4)- 288 <-(4,8,1)- 576",
]


@pytest.mark.parametrize("text", PAPER_CHAINS)
def test_exact_recovery_paper_chains(text):
    chain = Chain.parse(text)
    W = DeBut.random(chain, seed=2).to_dense()
    for method in ("hierarchical", "auto"):
        _, info = factorize(W, chain, method=method, return_info=True)
        assert info.rel_error < 1e-10


@pytest.mark.slow
def test_exact_recovery_vgg_chain():
    chain = Chain.parse("512 <-(2,4,256)- 1024 <-(2,4,128)- 2048 <-(2,4,64)- 4096 "
                        "<-(2,2,32)- 4096 <-(2,2,16)- 4096 <-(2,2,8)- 4096 <-(8,9,1)- 4608")
    W = DeBut.random(chain, seed=3).to_dense()
    _, info = factorize(W, chain, method="hierarchical", return_info=True)
    assert info.rel_error < 1e-10


@pytest.mark.parametrize("L", range(1, 9))
def test_hadamard_exact(L):
    H = hadamard(2 ** L).astype(np.float64)
    op, info = factorize(H, Chain.butterfly(2 ** L), method="hierarchical", return_info=True)
    assert info.rel_error < 1e-10
    np.testing.assert_allclose(op.to_dense(), H, atol=1e-10 * 2 ** L)


def bitrev(L):
    idx = np.arange(2 ** L)
    out = np.zeros_like(idx)
    for b in range(L):
        out |= ((idx >> b) & 1) << (L - 1 - b)
    return out


@pytest.mark.parametrize("L", range(1, 9))
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_dft_bitrev_exact(L, dtype):
    n = 2 ** L
    F = np.fft.fft(np.eye(n)).astype(dtype)
    W = F[:, bitrev(L)]  # F @ P with P the bit-reversal permutation
    op, info = factorize(W, Chain.butterfly(2 ** L), method="hierarchical", return_info=True)
    assert info.rel_error < EXACT_TOL[dtype]


# ---------------------------------------------------------------------------------------
# optimality
# ---------------------------------------------------------------------------------------

def two_factor_optimum(W, r1, s1, r2, s2):
    """Closed-form best fit for the chain (r1,s1,1),(r2,s2,r1): one SVD per block."""
    W4 = W.reshape(r2, r1, s2, s1)
    best = np.zeros_like(W4)
    for i1 in range(r1):
        for j2 in range(s2):
            U, S, Vh = np.linalg.svd(W4[:, i1, j2, :])
            best[:, i1, j2, :] = S[0] * np.outer(U[:, 0], Vh[0])
    return best.reshape(W.shape)


@HSET
@given(r1=st.integers(1, 6), s1=st.integers(1, 6), r2=st.integers(1, 6),
       s2=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([np.float64, np.complex128]))
def test_two_factors_is_the_optimum(r1, s1, r2, s2, seed, dtype):
    chain = chain_from_rs([(r1, s1), (r2, s2)])
    W = random_matrix(chain.shape, dtype, np.random.default_rng(seed))
    opt = two_factor_optimum(W, r1, s1, r2, s2)
    op, info = factorize(W, chain, method="hierarchical", return_info=True)
    err_opt = np.linalg.norm(W - opt) / np.linalg.norm(W)
    assert abs(info.rel_error - err_opt) <= 1e-12 * max(1.0, err_opt) + 1e-14
    # generic singular values are distinct: the best approximation is unique
    np.testing.assert_allclose(op.to_dense(), opt, atol=1e-10 * np.abs(W).max())


@pytest.mark.parametrize("n,b", [(16, 4), (64, 8), (36, 6), (32, 4)])
def test_monarch_projection(n, b):
    # Monarch: (b, b, 1) then (n/b, n/b, b); the closed form is a blockwise SVD
    chain = Chain.parse(f"{n} <-({n // b},{n // b},{b})- {n} <-({b},{b},1)- {n}")
    W = np.random.default_rng(n + b).standard_normal((n, n))
    opt = two_factor_optimum(W, b, b, n // b, n // b)
    op = factorize(W, chain, method="hierarchical")
    np.testing.assert_allclose(op.to_dense(), opt, atol=1e-10)


@HSET
@given(rs=rs_pairs.filter(lambda rs: len(rs) >= 2), seed=st.integers(0, 2**31 - 1))
def test_hierarchical_split_errors_orthogonal_and_bounded(rs, seed):
    chain = chain_from_rs(rs)
    W = np.random.default_rng(seed).standard_normal(chain.shape)
    _, h = factorize(W, chain, method="hierarchical", return_info=True)
    # orthogonal split errors: squares add up to the total
    assert math.isclose(math.sqrt(sum(e * e for e in h.split_errors)), h.rel_error,
                        rel_tol=1e-9, abs_tol=1e-12)
    # bound ||W - D_h|| <= sqrt(N-1) * optimum <= sqrt(N-1) * (any fit's error)
    _, a = factorize(W, chain, method="auto", return_info=True)
    assert h.rel_error <= math.sqrt(len(chain) - 1) * a.rel_error * (1 + 1e-12) + 1e-14


# ---------------------------------------------------------------------------------------
# ALS
# ---------------------------------------------------------------------------------------

@HSET
@given(rs=rs_pairs, seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([np.float64, np.complex128]),
       variant=st.sampled_from(["dense", "transposed", "batched"]))
def test_als_error_never_increases(rs, seed, dtype, variant):
    chain = chain_from_rs(rs, A=2, D=2) if variant == "batched" else chain_from_rs(rs)
    if variant == "transposed":
        chain = chain.transpose()
    W = random_matrix(chain.shape, dtype, np.random.default_rng(seed))
    op, info = factorize(W, chain, method="als", max_sweeps=15, tol=0, seed=seed,
                         return_info=True)
    h = np.array(info.history)
    assert len(h) >= 1 and np.all(np.isfinite(h))
    assert np.all(h[1:] <= h[:-1] * (1 + 1e-12) + 1e-15)
    assert math.isclose(info.rel_error, min(h), rel_tol=1e-9, abs_tol=1e-12)


@HSET
@given(rs=rs_pairs, seed=st.integers(0, 2**31 - 1))
def test_auto_at_least_as_good_as_hierarchical(rs, seed):
    chain = chain_from_rs(rs)
    W = np.random.default_rng(seed).standard_normal(chain.shape)
    _, h = factorize(W, chain, method="hierarchical", return_info=True)
    _, a = factorize(W, chain, method="auto", return_info=True)
    assert a.rel_error <= h.rel_error * (1 + 1e-12) + 1e-15
    assert a.history[0] == pytest.approx(h.rel_error, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("text", [
    "128 <-(2,2,64)- 128 <-(2,2,32)- 128 <-(1,2,32)- 256 <-(2,2,16)- 256 <-(16,25,1)- 400",
    "12 <-(3,2,4)- 8 <-(4,5,1)- 10",
])
def test_als_first_factor_layout(text):
    """One ALS update of factor 0 (r>1, s>1) with the others exact recovers it exactly.

    Pins the canonical (nb, r, s, t) layout of the first factor: the DeBut authors' code
    scattered its values when r > 1 and s > 1.
    """
    chain = Chain.parse(text)
    assert chain[0].r > 1 and chain[0].s > 1
    true = DeBut.random(chain, seed=5)
    W = true.to_dense()
    start = list(true.factors)
    start[0] = np.random.default_rng(0).standard_normal(chain[0].value_shape)
    op, info = factorize(W, chain, method="als", init=start, max_sweeps=1,
                         return_info=True)
    np.testing.assert_allclose(op.factors[0], true.factors[0], rtol=1e-10, atol=1e-12)
    for k in range(1, len(chain)):
        np.testing.assert_allclose(op.factors[k], true.factors[k], rtol=1e-10, atol=1e-12)
    assert info.rel_error < 1e-10
    # the value V[b, i, j, 0] multiplies column b*s + j into row b*r + i of factor 0
    F0 = op.factor_sparse(0).toarray()
    V0 = true.factors[0]
    nb, r, s, _ = V0.shape
    for b in (0, nb - 1):
        np.testing.assert_allclose(F0[b * r:(b + 1) * r, b * s:(b + 1) * s],
                                   V0[b, :, :, 0], rtol=1e-10)


def test_als_degenerate_values_no_nan():
    chain = chain_from_rs([(2, 3), (3, 2), (2, 2)])
    W = np.random.default_rng(0).standard_normal(chain.shape)
    W[:, :4] = 0.0          # values touching only zero weights
    W[3, :] = 0.0
    op, info = factorize(W, chain, method="als", seed=0, max_sweeps=20, return_info=True)
    assert all(np.isfinite(f).all() for f in op.factors)
    assert np.isfinite(info.rel_error) and info.rel_error < 1
    # a start with a zero factor: every other factor's update is undetermined
    start = [np.ones(s.value_shape) for s in chain]
    start[1] = np.zeros(chain[1].value_shape)
    op, info = factorize(W, chain, method="als", init=start, max_sweeps=6, return_info=True)
    assert all(np.isfinite(f).all() for f in op.factors)
    assert np.isfinite(info.rel_error)


def test_zero_matrix():
    chain = chain_from_rs([(2, 2), (2, 2)])
    for method in ("hierarchical", "als", "auto"):
        op, info = factorize(np.zeros((4, 4)), chain, method=method, return_info=True)
        assert info.rel_error == 0.0
        assert np.all(op.to_dense() == 0)


def test_determinism_with_seed():
    chain = chain_from_rs([(2, 3), (3, 2), (2, 2)])
    W = np.random.default_rng(1).standard_normal(chain.shape)
    a = factorize(W, chain, method="als", seed=7, max_sweeps=5)
    b = factorize(W, chain, method="als", seed=7, max_sweeps=5)
    c = factorize(W, chain, method="als", seed=8, max_sweeps=5)
    for x, y in zip(a.factors, b.factors):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a.factors, c.factors))
    g1 = factorize(W, chain, method="als", seed=np.random.default_rng(3), max_sweeps=3)
    g2 = factorize(W, chain, method="als", seed=np.random.default_rng(3), max_sweeps=3)
    for x, y in zip(g1.factors, g2.factors):
        np.testing.assert_array_equal(x, y)
    for method in ("hierarchical", "auto"):
        p = factorize(W, chain, method=method)
        q = factorize(W, chain, method=method)
        for x, y in zip(p.factors, q.factors):
            np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------------------
# padding, transposes, dtypes, chain forms
# ---------------------------------------------------------------------------------------

@HSET
@given(rs=rs_pairs, seed=st.integers(0, 2**31 - 1), data=st.data())
def test_padding_exact_when_padding_region_is_zero(rs, seed, data):
    chain = chain_from_rs(rs)
    P, Q = chain.shape
    m = data.draw(st.integers(1, P))
    n = data.draw(st.integers(1, Q))
    vals = [np.array(v) for v in DeBut.random(chain, seed=seed).factors]
    # zero the rows >= m through the output factor, the columns >= n through the input
    last, first = chain[-1], chain[0]
    rows = (np.arange(last.r)[:, None] * last.t + np.arange(last.t)[None, :])  # (r, t)
    vals[-1][0][:, :, :] *= (rows < m)[:, None, :]
    cols = (np.arange(first.nb)[:, None] * first.s + np.arange(first.s)[None, :])  # (nb, s)
    vals[0][:, :, :, 0] *= (cols < n)[:, None, :]
    full = DeBut(chain, vals).to_dense()
    assert np.all(full[m:] == 0) and np.all(full[:, n:] == 0)
    W = full[:m, :n]
    if not np.any(W):
        return
    op, info = factorize(W, chain, method="hierarchical", return_info=True)
    assert op.shape == (m, n) and op.chain == chain
    assert info.rel_error < 1e-10


def test_padding_general():
    chain = Chain.parse("128 <-(2,2,64)- 128 <-(2,2,32)- 128 <-(1,2,32)- 256 "
                        "<-(2,2,16)- 256 <-(16,25,1)- 400")
    W = np.random.default_rng(0).standard_normal((100, 390))
    for method in ("hierarchical", "als", "auto"):
        op, info = factorize(W, chain, method=method, seed=0, max_sweeps=5,
                             return_info=True)
        assert op.shape == (100, 390)
        assert info.rel_error == pytest.approx(rel(op.to_dense(), W), rel=1e-10)
        # the objective is the zero-padded matrix: its error is at least the cut one
        assert info.history[-1] >= info.rel_error * (1 - 1e-12)


def test_transposed_chain_matches_transposed_fit():
    chain = Chain.parse("16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72")
    W = np.random.default_rng(0).standard_normal((16, 72))
    a = factorize(W, chain, method="hierarchical")
    b = factorize(W.T, chain.transpose(), method="hierarchical")
    np.testing.assert_allclose(a.to_dense(), b.to_dense().T, atol=1e-12)
    assert b.chain == chain.transpose()


@pytest.mark.parametrize("dtype", DTYPES + [np.int64, np.float16])
def test_dtypes(dtype):
    chain = chain_from_rs([(2, 3), (2, 2)])
    rng = np.random.default_rng(0)
    W = random_matrix(chain.shape, np.complex128 if np.dtype(dtype).kind == "c"
                      else np.float64, rng)
    W = (W * 10).astype(dtype)
    want = {np.dtype(np.int64): np.float64, np.dtype(np.float16): np.float32}.get(
        np.dtype(dtype), dtype)
    for method in ("hierarchical", "als", "auto"):
        op, info = factorize(W, chain, method=method, seed=0, return_info=True)
        assert op.dtype == np.dtype(want)
        assert all(f.dtype == np.dtype(want) for f in op.factors)
        assert 0 <= info.rel_error < 1


def test_chain_forms():
    W = np.random.default_rng(0).standard_normal((16, 72))
    text = "16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72"
    a = factorize(W, text, method="hierarchical")
    b = factorize(W, Chain.parse(text), method="hierarchical")
    np.testing.assert_array_equal(a.to_dense(), b.to_dense())
    op, info = factorize(W, "auto", method="hierarchical", return_info=True)
    assert info.chain == db.design_chain(16, 72) and op.shape == (16, 72)
    op2, info2 = factorize(W, return_info=True)
    assert info2.method == "auto" and info2.chain == info.chain


# ---------------------------------------------------------------------------------------
# errors, progress, callback
# ---------------------------------------------------------------------------------------

def test_errors():
    chain = chain_from_rs([(2, 2), (2, 2)])
    W = np.ones((4, 4))
    for bad in (np.nan, np.inf, -np.inf):
        X = W.copy()
        X[1, 2] = bad
        with pytest.raises(ValueError, match=r"factorize\(W\).*NaN or Inf"):
            factorize(X, chain)
    with pytest.raises(ValueError, match=r"factorize\(W\).*2-D"):
        factorize(np.ones(4), chain)
    with pytest.raises(ValueError, match=r"factorize\(W\).*empty"):
        factorize(np.ones((0, 4)), chain)
    with pytest.raises(TypeError, match=r"factorize\(W\)"):
        factorize(np.array([["a"]]), chain)
    with pytest.raises(ValueError, match=r"factorize\(chain\).*\(4, 4\).*\(5, 4\).*>= 5"):
        factorize(np.ones((5, 4)), chain)
    with pytest.raises(ValueError, match=r"design_chain\(4, 9\)"):
        factorize(np.ones((4, 9)), chain)
    with pytest.raises(TypeError, match=r"factorize\(chain\)"):
        factorize(W, 42)
    with pytest.raises(ValueError, match=r"factorize\(chain\)"):
        factorize(W, "4 <-(2,2)- 4")
    with pytest.raises(ValueError, match=r"factorize\(method\).*'svd'"):
        factorize(W, chain, method="svd")
    with pytest.raises(ValueError, match=r"factorize\(max_sweeps\)"):
        factorize(W, chain, max_sweeps=-1)
    with pytest.raises(TypeError, match=r"factorize\(max_sweeps\)"):
        factorize(W, chain, max_sweeps=1.5)
    with pytest.raises(ValueError, match=r"factorize\(tol\)"):
        factorize(W, chain, tol=-1)
    with pytest.raises(TypeError, match=r"factorize\(seed\)"):
        factorize(W, chain, method="als", seed="x")
    with pytest.raises(TypeError, match=r"factorize\(callback\)"):
        factorize(W, chain, callback=3)
    with pytest.raises(ValueError, match=r"factorize\(init\)"):
        factorize(W, chain, method="als", init=[np.ones((1, 2, 2, 2))])
    # a valid chain that is not chainable (Le et al.'s condition fails both ways)
    nc = Chain.parse("8 <-(2,2,1)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8")
    W = np.ones((8, 8))
    with pytest.raises(ValueError, match=r"factorize\(chain.*not chainable.*t_\(k\+1\)"):
        factorize(W, nc, method="hierarchical")


def test_callback_stops_and_returns_best():
    chain = chain_from_rs([(2, 3), (3, 2), (2, 2)])
    W = np.random.default_rng(2).standard_normal(chain.shape)
    seen = []

    def cb(sweep, err):
        seen.append((sweep, err))
        return sweep < 3

    op, info = factorize(W, chain, method="als", seed=0, callback=cb, return_info=True)
    assert [s for s, _ in seen] == [1, 2, 3]
    assert info.sweeps == 3 and info.stop_reason == "callback"
    assert info.rel_error == pytest.approx(min(e for _, e in seen), rel=1e-9)
    seen.clear()
    op, info = factorize(W, chain, method="auto", callback=cb, return_info=True)
    assert seen[0][0] == 0 and info.stop_reason == "callback"
    seen.clear()
    factorize(W, chain, method="hierarchical", callback=cb)
    assert [s for s, _ in seen] == [0]
    # returning None (not False) does not stop
    op, info = factorize(W, chain, method="als", seed=0, max_sweeps=4, tol=0,
                         callback=lambda s, e: None, return_info=True)
    assert info.sweeps == 4 and info.stop_reason == "max_sweeps"


def test_progress_writes_to_stderr(capsys):
    chain = chain_from_rs([(2, 3), (3, 2)])
    W = np.random.default_rng(2).standard_normal(chain.shape)
    factorize(W, chain, method="auto", progress=True, max_sweeps=3)
    assert capsys.readouterr().err.strip() != ""
    factorize(W, chain, method="auto", progress=False, max_sweeps=3)
    assert capsys.readouterr().err == ""


def test_progress_without_tqdm(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    chain = chain_from_rs([(2, 3), (3, 2)])
    W = np.random.default_rng(2).standard_normal(chain.shape)
    factorize(W, chain, method="als", progress=True, max_sweeps=2, tol=0, seed=0)
    err = capsys.readouterr().err
    assert "factorize[als]: 2/2" in err and "rel_error=" in err


def test_fitinfo_fields():
    chain = chain_from_rs([(2, 3), (3, 2), (2, 2)])
    W = np.random.default_rng(2).standard_normal(chain.shape)
    op, info = factorize(W, chain, method="auto", return_info=True)
    assert isinstance(info, db.FitInfo)
    assert info.method == "auto" and info.chain == chain and info.seconds > 0
    assert info.n_params == chain.nnz and info.shape == W.shape
    assert info.stop_reason in ("tol", "max_sweeps", "exact")
    assert len(info.history) == info.sweeps + 1
    assert "rel_error" in str(info)


def test_lowrank_error():
    from debutla.fit import lowrank_error

    rng = np.random.default_rng(0)
    W = rng.standard_normal((30, 20))
    err, k = lowrank_error(W, 5 * 50 + 3)
    assert k == 5
    U, S, Vh = np.linalg.svd(W)
    W5 = (U[:, :5] * S[:5]) @ Vh[:5]
    assert err == pytest.approx(rel(W5, W), rel=1e-10)


@pytest.mark.parametrize("name", ["debutla.fit.api", "debutla.fit.demo",
                                  "debutla.fit.hierarchical", "debutla.fit._layout",
                                  "debutla.fit.search", "debutla.fit.tradeoff"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    mod = importlib.import_module(name)
    res = doctest.testmod(mod, extraglobs={"np": np}, optionflags=doctest.ELLIPSIS
                          | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.attempted > 0 and res.failed == 0


def test_demo_output():
    from debutla.fit.demo import run_fit_demo

    lines: list[str] = []
    assert run_fit_demo(out=lines.append) == 0
    text = "\n".join(lines)
    assert "Hadamard(1024)" in text and "truncated SVD" in text and "exact recovery: ok" in text
    assert text.count("rel. error") >= 6


# ---------------------------------------------------------------------------------------
# valid chains that are not chainable: matrix-free ALS
# ---------------------------------------------------------------------------------------

NOT_CHAINABLE = ["8 <-(2,2,1)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8",
                 "8 <-(4,4,1)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8",
                 "8 <-(2,2,4)- 8 <-(2,2,1)- 8 <-(2,2,1)- 8"]
# chainable with splits of rank > 1 (no path structure): hierarchical by truncated SVDs
RANKED = ["4 <-(4,4,1)- 4 <-(4,4,1)- 4", "8 <-(2,2,2)- 8 <-(4,4,1)- 8",
          "12 <-(3,2,2)- 8 <-(2,2,2)- 8 <-(4,4,1)- 8", "32 <-(8,8,4)- 32 <-(8,8,1)- 32"]


@pytest.mark.parametrize("text", NOT_CHAINABLE)
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_not_chainable_als_matrix_free(text, dtype):
    from debutla.fit._layout import analyse_chain, split_ranks

    chain = Chain.parse(text)
    assert analyse_chain(chain) is None
    assert split_ranks(chain) is None and split_ranks(chain.transpose()) is None
    W = random_matrix(chain.shape, dtype, np.random.default_rng(0))
    with pytest.raises(ValueError, match="method='als'"):
        factorize(W, chain, method="hierarchical")
    for method in ("als", "auto"):
        op, info = factorize(W, chain, method=method, seed=0, max_sweeps=8, tol=0,
                             return_info=True)
        h = np.array(info.history)
        assert 1 <= len(h) <= 8 and np.all(np.isfinite(h))
        assert np.all(h[1:] <= h[:-1] * (1 + 1e-10) + 1e-14)
        assert info.rel_error == pytest.approx(rel(op.to_dense(), W), rel=1e-10)


@pytest.mark.parametrize("text", RANKED)
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_ranked_chains_hierarchical(text, dtype):
    """Chainable chains whose splits have rank > 1: exact, orthogonal split errors."""
    from debutla.fit._layout import analyse_chain, split_ranks

    chain = Chain.parse(text)
    assert analyse_chain(chain) is None and max(split_ranks(chain)) > 1
    true = DeBut.random(chain, seed=0, dtype=dtype)
    op, info = factorize(true.to_dense(), chain, method="hierarchical", return_info=True)
    assert info.rel_error < 1e-12 and rel(op.to_dense(), true.to_dense()) < 1e-12
    W = random_matrix(chain.shape, dtype, np.random.default_rng(1))
    op, h = factorize(W, chain, method="hierarchical", return_info=True)
    assert h.rel_error == pytest.approx(rel(op.to_dense(), W), rel=1e-10)
    assert math.sqrt(sum(e * e for e in h.split_errors)) == pytest.approx(h.rel_error,
                                                                           rel=1e-9)
    _, a = factorize(W, chain, method="auto", max_sweeps=5, return_info=True)
    assert a.history[0] == pytest.approx(h.rel_error, rel=1e-9)
    assert a.rel_error <= h.rel_error * (1 + 1e-12)
    if text == "8 <-(2,2,2)- 8 <-(4,4,1)- 8":
        # the product is block-diagonal (two dense 4x4 blocks): the optimum fits the
        # diagonal blocks exactly and misses the rest
        off = W.copy()
        off[:4, :4] = 0
        off[4:, 4:] = 0
        assert h.rel_error == pytest.approx(np.linalg.norm(off) / np.linalg.norm(W),
                                            rel=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_ranked_single_precision_padding_scale(dtype):
    chain = Chain.parse("32 <-(8,8,4)- 32 <-(8,8,1)- 32")
    W = DeBut.random(chain, seed=1, dtype=dtype).to_dense() * np.float32(1e-30)
    op, info = factorize(W, chain, method="hierarchical", return_info=True)
    assert op.dtype == np.dtype(dtype) and info.rel_error < EXACT_TOL[dtype]
    # padded: the zero-padded matrix is fitted and the error measured on W itself
    V = random_matrix((30, 27), dtype, np.random.default_rng(0))
    op, info = factorize(V, chain, method="hierarchical", return_info=True)
    assert op.shape == (30, 27)
    assert info.rel_error == pytest.approx(rel(op.to_dense().astype(np.complex128),
                                               V.astype(np.complex128)), rel=1e-4)


@HSET
@given(seed=st.integers(0, 2**31 - 1), transposed=st.booleans())
def test_ranked_two_factors_is_the_optimum(seed, transposed):
    """Two factors, split rank rho: the blockwise rank-rho truncation is optimal, and on
    rank-one chains the general routine equals the path-based one."""
    from debutla.fit.hierarchical import hierarchical_ranked

    chain = Chain.parse("32 <-(8,8,4)- 32 <-(8,8,1)- 32")
    chain = chain.transpose() if transposed else chain
    W = np.random.default_rng(seed).standard_normal(chain.shape)
    _, h = factorize(W, chain, method="hierarchical", return_info=True)
    _, a = factorize(W, chain, method="als", init=factorize(W, chain, method="hierarchical"),
                     max_sweeps=4, return_info=True)
    assert a.rel_error == pytest.approx(h.rel_error, rel=1e-7)  # ALS cannot improve it
    dense = Chain.parse("16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72")
    V = np.random.default_rng(seed).standard_normal(dense.shape)
    vals, _ = hierarchical_ranked(V, dense, (1, 1, 1))
    _, ref = factorize(V, dense, method="hierarchical", return_info=True)
    assert rel(DeBut(dense, vals).to_dense(), V) == pytest.approx(ref.rel_error, rel=1e-9)


def test_not_chainable_padding():
    chain = Chain.parse("8 <-(2,2,1)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8")
    W = np.random.default_rng(3).standard_normal((7, 6))
    op, info = factorize(W, chain, method="als", seed=0, max_sweeps=6, return_info=True)
    assert op.shape == (7, 6)
    assert info.rel_error == pytest.approx(rel(op.to_dense(), W), rel=1e-10)
    assert info.history[-1] >= info.rel_error * (1 - 1e-12)


def test_init_with_transposed_chain():
    chain = Chain.parse("24 <-(2,3,6)- 36 <-(3,2,2)- 24 <-(2,4,1)- 48").transpose()
    true = DeBut.random(chain, seed=4)
    W = true.to_dense()
    # the transposed chain is fitted through W.T, so the user's last factor is the first
    # one updated: with the others exact, one update recovers it exactly
    start = list(true.factors)
    start[-1] = np.random.default_rng(0).standard_normal(chain[-1].value_shape)
    for method in ("als", "auto"):
        op, info = factorize(W, chain, method=method, init=start, max_sweeps=1,
                             return_info=True)
        assert info.rel_error < 1e-10 and len(info.history) == 1
    with pytest.raises(ValueError, match=r"factorize\(init\).*chain"):
        factorize(W, chain, init=DeBut.random(chain.transpose(), seed=0))


def test_not_chainable_exact_when_representable():
    # two dense 4x4 factors represent any 4x4 matrix: one update of R_1 is exact
    chain = Chain.parse("4 <-(4,4,1)- 4 <-(4,4,1)- 4")
    W = np.random.default_rng(1).standard_normal((4, 4))
    _, info = factorize(W, chain, method="als", seed=0, max_sweeps=1, return_info=True)
    assert info.rel_error < 1e-10


@pytest.mark.parametrize("text", [
    "16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72",
    "24 <-(2,3,6)- 36 <-(3,2,2)- 24 <-(2,4,1)- 48",
])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_matrix_free_update_equals_closed_form(text, dtype):
    """On a chainable chain both ALS engines take the same exact LS steps."""
    from debutla.fit._layout import analyse_chain, core_tensor, core_to_full, full_to_core
    from debutla.fit.als import ALSState, GeneralALSState

    chain = Chain.parse(text)
    W = random_matrix(chain.shape, dtype, np.random.default_rng(0))
    init = list(DeBut.random(chain, seed=1, dtype=dtype).factors)
    g = GeneralALSState(W, chain, init, iter_lim=2000, rtol=1e-15)
    s = analyse_chain(chain)
    T, off2 = core_tensor(W, s)
    a = ALSState(T, s.rs, full_to_core(init, s))
    for sweep in range(3):
        e_g = g.sweep_up() if sweep % 2 == 0 else g.sweep_down()
        e_a = a.sweep_up() if sweep % 2 == 0 else a.sweep_down()
        assert e_g == pytest.approx(e_a + off2, rel=1e-9)
        for x, y in zip(g.vals, core_to_full(a.vals, s)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7 * np.abs(y).max())


# ---------------------------------------------------------------------------------------
# balanced order
# ---------------------------------------------------------------------------------------

@HSET
@given(rs=rs_pairs, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1),
       variant=st.sampled_from(["dense", "transposed", "batched"]))
def test_balanced_exact_recovery(rs, dtype, seed, variant):
    chain = chain_from_rs(rs, A=2, D=3) if variant == "batched" else chain_from_rs(rs)
    if variant == "transposed":
        chain = chain.transpose()
    W = DeBut.random(chain, seed=seed, dtype=dtype).to_dense()
    op, info = factorize(W, chain, method="hierarchical", order="balanced",
                         return_info=True)
    assert info.rel_error < EXACT_TOL[dtype]
    assert rel(op.to_dense(), W) < EXACT_TOL[dtype]


@HSET
@given(rs=rs_pairs, seed=st.integers(0, 2**31 - 1))
def test_balanced_on_any_matrix(rs, seed):
    chain = chain_from_rs(rs)
    W = np.random.default_rng(seed).standard_normal(chain.shape)
    _, b = factorize(W, chain, method="hierarchical", order="balanced", return_info=True)
    _, a = factorize(W, chain, method="auto", order="balanced", return_info=True)
    # history[0] is measured, and auto never ends above it
    assert b.history[0] == pytest.approx(b.rel_error, rel=1e-9, abs=1e-14)
    assert a.rel_error <= b.rel_error * (1 + 1e-12) + 1e-15
    if len(chain) == 2:  # one split: the same as left to right, the optimum
        _, h = factorize(W, chain, method="hierarchical", return_info=True)
        assert b.rel_error == pytest.approx(h.rel_error, rel=1e-10, abs=1e-14)


def test_order_argument():
    chain = chain_from_rs([(2, 2), (2, 2)])
    with pytest.raises(ValueError, match=r"factorize\(order\).*'bfs'"):
        factorize(np.ones((4, 4)), chain, order="bfs")


@pytest.mark.parametrize("tqdm_installed", [True, False])
def test_progress_ends_at_the_real_stop_with_the_error(tqdm_installed, monkeypatch, capsys):
    """An early stop (tol) closes the bar at the sweep that stopped, with error and reason."""
    if not tqdm_installed:
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    else:
        pytest.importorskip("tqdm")
    W = DeBut.random("8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8", seed=0).to_dense()
    W = W + 0.1 * np.random.default_rng(1).standard_normal(W.shape)
    op, info = factorize(W, "8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8", method="auto",
                         max_sweeps=200, tol=1e-2, progress=True, return_info=True)
    assert info.sweeps < 200
    err = capsys.readouterr().err
    assert f"stop={info.stop_reason}" in err or f"stopped: {info.stop_reason}" in err
    if tqdm_installed:
        last = err.replace("\r", "\n").strip().splitlines()[-1]
        assert "100%" in last and "/200" not in last and "rel_error=" in last
