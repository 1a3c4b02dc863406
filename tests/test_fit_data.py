"""debutla.fit: data-aware fitting, factorize(W, chain, X=...) (issue 9)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import debutla as db
from debutla import Chain, DeBut, factorize
from test_factorize import _numpy_backend, chain_from_rs, rs_pairs  # noqa: F401

CHAIN = Chain.parse(db.PAPER_CHAINS["lenet_conv2_mono1"])


def data_error(W, D, X):
    return np.linalg.norm(X @ (W - D).T) / np.linalg.norm(X @ W.T)


def anisotropic(rng, samples, n, rotate):
    X = rng.standard_normal((samples, n)) * np.geomspace(0.01, 10, n)
    if rotate:  # correlated inputs: X^T X far from diagonal
        X = X @ np.linalg.qr(rng.standard_normal((n, n)))[0]
    return X


@settings(deadline=None, max_examples=20)
@given(rs=rs_pairs, seed=st.integers(0, 2**31 - 1), diag=st.booleans(),
       transposed=st.booleans())
def test_exact_on_debut_products(rs, seed, diag, transposed):
    """A DeBut product is fitted exactly whatever the calibration inputs."""
    chain = chain_from_rs(rs)
    chain = chain.transpose() if transposed else chain
    rng = np.random.default_rng(seed)
    W = DeBut.random(chain, seed=rng).to_dense()
    n = W.shape[1]
    X = np.diag(rng.uniform(0.1, 3, n)) if diag else rng.standard_normal((2 * n + 1, n))
    op, info = factorize(W, chain, method="hierarchical", X=X, return_info=True)
    assert info.whitening == ("exact" if diag or n == 1 else "approximate")
    assert info.data_rel_error < 1e-9
    assert info.rel_error < 1e-9
    assert data_error(W, op.to_dense(), X) < 1e-9


@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("method", ["hierarchical", "auto"])
def test_anisotropic_inputs_beat_plain_fit(rotate, method):
    rng = np.random.default_rng(0)
    W = rng.standard_normal(CHAIN.shape)
    X = anisotropic(rng, 400, 72, rotate)
    plain = factorize(W, CHAIN, method=method, max_sweeps=20)
    op, info = factorize(W, CHAIN, method=method, X=X, max_sweeps=20, return_info=True)
    e_plain = data_error(W, plain.to_dense(), X)
    e_data = data_error(W, op.to_dense(), X)
    assert info.data_rel_error == pytest.approx(e_data, rel=1e-9)
    assert e_data < e_plain
    if rotate:  # correlated inputs: the data objective is a different problem
        assert e_data < 0.8 * e_plain


def test_exact_whitening_is_plain_fit_of_scaled_matrix():
    """Diagonal X^T X: the fit is the plain fit of W diag(l), columns scaled back."""
    rng = np.random.default_rng(1)
    W = rng.standard_normal(CHAIN.shape)
    scale = rng.uniform(0.2, 4, 72)
    op, info = factorize(W, CHAIN, method="auto", X=np.diag(scale), return_info=True)
    ref, rinfo = factorize(W * scale, CHAIN, method="auto", return_info=True)
    assert info.whitening == "exact"
    np.testing.assert_allclose(op.to_dense() * scale, ref.to_dense(), rtol=1e-9, atol=1e-12)
    assert info.data_rel_error == pytest.approx(rinfo.rel_error, rel=1e-9)
    assert info.history == pytest.approx(rinfo.history, rel=1e-9)


@pytest.mark.parametrize("method", ["als", "auto"])
def test_weighted_als_monotone(method):
    rng = np.random.default_rng(2)
    W = rng.standard_normal(CHAIN.shape)
    X = anisotropic(rng, 300, 72, rotate=True)
    _, info = factorize(W, CHAIN, method=method, X=X, seed=0, max_sweeps=12, tol=0,
                        return_info=True)
    h = np.array(info.history)
    assert len(h) >= 10 and np.all(np.isfinite(h))
    assert np.all(h[1:] <= h[:-1] * (1 + 1e-10) + 1e-14)
    assert info.data_rel_error == pytest.approx(h.min(), rel=1e-6)


def test_memory_independent_of_samples():
    """Only X^T X is kept: many samples cost no more than a few (beyond reading X)."""
    import tracemalloc

    rng = np.random.default_rng(3)
    W = rng.standard_normal(CHAIN.shape)
    peaks = []
    for samples in (100, 20_000):
        X = rng.standard_normal((samples, 72))
        tracemalloc.start()
        factorize(W, CHAIN, method="hierarchical", X=X)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] + 2 * 20_000 * 72 * 8  # at most a copy of X more


def test_svd_data_error():
    rng = np.random.default_rng(4)
    W = rng.standard_normal(CHAIN.shape)
    X = anisotropic(rng, 200, 72, rotate=True)
    _, info = factorize(W, CHAIN, method="hierarchical", X=X, return_info=True)
    k = info.svd_rank
    M = W @ np.linalg.cholesky(X.T @ X)  # any L with L L^T = X^T X
    s = np.linalg.svd(M, compute_uv=False)
    assert info.svd_data_rel_error == pytest.approx(
        np.sqrt(np.sum(s[k:] ** 2) / np.sum(s ** 2)), rel=1e-8)


def test_data_aware_budget_search():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((32, 64))
    X = np.diag(np.geomspace(0.1, 10, 64))
    op, info = factorize(W, "auto", max_params=1500, X=X, return_info=True)
    assert info.n_params <= 1500 and info.whitening == "exact"
    assert info.data_rel_error <= min(e for _, e in info.searched) * (1 + 1e-12)


@pytest.mark.parametrize("cplx", [False, True])
def test_weighted_closed_form_equals_matrix_free(cplx):
    """The closed-form weighted update takes the same exact LS steps as weighted LSQR."""
    from debutla.fit._layout import analyse_chain, core_tensor, full_to_core
    from debutla.fit.als import GeneralALSState, WeightedALSState

    rng = np.random.default_rng(6)
    W = rng.standard_normal(CHAIN.shape) + (1j * rng.standard_normal(CHAIN.shape)
                                            if cplx else 0)
    X = rng.standard_normal((1000, 72)) * np.linspace(0.5, 2, 72)
    if cplx:
        X = X + 1j * rng.standard_normal((1000, 72))
    C = X.T @ X.conj()
    lam, V = np.linalg.eigh(C)
    L = (V * np.sqrt(np.clip(lam, 0, None))) @ V.conj().T
    init = list(DeBut.random(CHAIN, seed=1, dtype=W.dtype).factors)
    g = GeneralALSState(W, CHAIN, init, weight=L, iter_lim=5000, rtol=1e-15)
    s = analyse_chain(CHAIN)
    T, _ = core_tensor(W, s)
    w = WeightedALSState(T, s.rs, full_to_core(init, s), C)
    for sweep in range(3):
        e_g = g.sweep_up() if sweep % 2 == 0 else g.sweep_down()
        e_w = w.sweep_up() if sweep % 2 == 0 else w.sweep_down()
        assert e_w == pytest.approx(e_g, rel=1e-6)


@pytest.mark.parametrize("diag", [False, True])
def test_data_aware_scale_invariant(diag):
    rng = np.random.default_rng(7)
    W = rng.standard_normal(CHAIN.shape)
    X = np.diag(rng.uniform(0.5, 2, 72)) if diag else anisotropic(rng, 150, 72, True)
    _, a = factorize(W, CHAIN, X=X, max_sweeps=3, return_info=True)
    _, b = factorize(np.ldexp(W, 600), CHAIN, X=np.ldexp(X, -500), max_sweeps=3,
                     return_info=True)
    assert b.data_rel_error == pytest.approx(a.data_rel_error, rel=1e-9)
    assert b.rel_error == pytest.approx(a.rel_error, rel=1e-9)
    assert b.history == pytest.approx(a.history, rel=1e-9)


@pytest.mark.parametrize("chain", ["16 <-(4,4,4)- 16 <-(4,64,1)- 256",     # 4 blocks of 64
                                   "64 <-(4,16,16)- 256 <-(16,16,1)- 256"])  # 16 of 16
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_large_weighted_systems_one_at_a_time_match_the_batched_solve(monkeypatch, chain,
                                                                      dtype):
    """Systems of at least _LOOP_MIN unknowns (here 256, the input-side factor) are built
    and solved one at a time by Cholesky, with the unknowns reordered when the blocks
    outnumber their columns; the batched LU solve of every system at once gives the same
    values."""
    import debutla.fit.als as als

    rng = np.random.default_rng(3)
    W = rng.standard_normal((Chain.parse(chain).shape[0], 256))
    X = anisotropic(rng, 600, 256, rotate=True)
    if dtype is np.complex128:
        W = W + 1j * rng.standard_normal(W.shape)
        X = X + 1j * anisotropic(rng, 600, 256, rotate=True)
    calls = []
    real = als.WeightedALSState._large_systems
    monkeypatch.setattr(als.WeightedALSState, "_large_systems",
                        staticmethod(lambda *a: calls.append(1) or real(*a)))
    fit = factorize(W, chain, method="als", X=X, max_sweeps=3, seed=0)
    assert calls  # the loop served the 256-unknown systems
    monkeypatch.setattr(als, "_LOOP_MIN", 10**9)
    ref = factorize(W, chain, method="als", X=X, max_sweeps=3, seed=0)
    for a, b in zip(fit.factors, ref.factors):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * np.abs(b).max())
