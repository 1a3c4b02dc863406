"""debutla.fit: budget and error-target search, SVD comparison, bad input (issue 9)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import debutla as db
from debutla import Chain, DeBut, factorize
from debutla.chain import candidate_chains
from debutla.fit.search import search_chain
from test_factorize import _numpy_backend  # noqa: F401  (autouse fixture)


def _svd_error(W, k):
    s = np.linalg.svd(W, compute_uv=False)
    return math.sqrt(float(np.sum(s[k:] ** 2) / np.sum(s ** 2)))


def test_candidates_sorted_unique_within_budget():
    cs = candidate_chains(48, 96)
    assert len(set(cs)) == len(cs)
    nnz = [c.nnz for c in cs]
    assert nnz == sorted(nnz, reverse=True)
    assert cs[0].nnz == 48 * 96 and len(cs[0]) == 1  # the dense matrix itself
    assert all(c.is_dense and c.shape[0] >= 48 and c.shape[1] >= 96 for c in cs)
    assert all(c.nnz < 48 * 96 for c in cs[1:])
    small = candidate_chains(48, 96, max_params=1000)
    assert small and all(c.nnz <= 1000 for c in small)
    assert set(small) <= set(cs)


def test_candidates_impossible_budget():
    smallest = candidate_chains(48, 96)[-1].nnz
    with pytest.raises(ValueError, match=rf"candidate_chains\(max_params\).*{smallest}"):
        candidate_chains(48, 96, max_params=smallest - 1)
    with pytest.raises(ValueError, match=r"max_params"):
        candidate_chains(48, 96, max_params=0)
    with pytest.raises(TypeError, match=r"max_params"):
        candidate_chains(48, 96, max_params=10.5)


def test_search_chain_budget_and_target_logic():
    cs = candidate_chains(16, 72)
    # estimate = 1 / nnz: the budget search picks the largest tried; the target search
    # the smallest reaching it
    res = search_chain(cs, lambda c: 1.0 / c.nnz)
    assert res.chain == cs[0] and res.target_met is None
    res = search_chain(cs, lambda c: 1.0 / c.nnz, rel_error=1.0 / 500)
    assert res.target_met and res.chain.nnz >= 500
    assert all(c.nnz < 500 for c, e in res.tried if e > 1.0 / 500)
    smaller = [c for c in cs if c.nnz < res.chain.nnz]
    assert all(1.0 / c.nnz > 1.0 / 500 for c in smaller)
    res = search_chain(cs, lambda c: 1.0, rel_error=0.5)
    assert res.target_met is False
    with pytest.raises(ValueError, match=r"search_chain\(rel_error\)"):
        search_chain(cs, lambda c: 1.0, rel_error=-1)


@pytest.mark.parametrize("budget", [400, 1000, 3000])
def test_budget_search_respects_budget_and_beats_candidates(budget):
    W = np.random.default_rng(0).standard_normal((32, 64))
    op, info = factorize(W, "auto", max_params=budget, method="hierarchical",
                         return_info=True)
    assert info.n_params <= budget and op.nnz <= budget and op.shape == W.shape
    assert info.searched and info.chain in [c for c, _ in info.searched]
    assert info.rel_error == pytest.approx(min(e for _, e in info.searched), rel=1e-9)
    # every candidate within the budget that was not tried has no more values than a
    # tried chain with the same number of factors
    tried = {c for c, _ in info.searched}
    for c in candidate_chains(32, 64, max_params=budget):
        if c not in tried:
            assert any(len(t) == len(c) and t.nnz >= c.nnz for t in tried)


def test_budget_search_refines_winner_only():
    W = np.random.default_rng(1).standard_normal((32, 64))
    _, h = factorize(W, "auto", max_params=1000, method="hierarchical", return_info=True)
    _, a = factorize(W, "auto", max_params=1000, method="auto", return_info=True)
    assert a.chain == h.chain and a.rel_error <= h.rel_error * (1 + 1e-12)
    assert a.history[0] == pytest.approx(h.rel_error, rel=1e-9)


def test_budget_exact_on_structured_matrix():
    """A DeBut product is recovered when its chain is among the candidates."""
    chain = db.design_chain(32, 64, n_factors=3)
    W = DeBut.random(chain, seed=0).to_dense()
    op, info = factorize(W, "auto", max_params=chain.nnz, return_info=True)
    assert info.n_params <= chain.nnz and info.rel_error < 1e-10


def test_target_search():
    W = np.random.default_rng(2).standard_normal((32, 64))
    for target in (0.9, 0.5, 0.05):
        op, info = factorize(W, "auto", rel_error=target, method="hierarchical",
                             return_info=True)
        assert info.target == target and info.target_met and info.missed_by == 0
        assert info.rel_error <= target
        # no smaller tried chain reached it
        assert all(e > target for c, e in info.searched if c.nnz < info.n_params)
    # with a budget too small for the target: the best within it, and how much it missed
    op, info = factorize(W, "auto", rel_error=0.01, max_params=600, return_info=True)
    assert info.n_params <= 600 and info.target_met is False
    assert info.missed_by == pytest.approx(info.rel_error - 0.01)
    assert "target_met=False" in str(info)


def test_svd_rel_error_in_every_fit():
    W = np.random.default_rng(3).standard_normal((16, 72))
    chain = Chain.parse(db.PAPER_CHAINS["lenet_conv2_mono1"])
    for method in ("hierarchical", "als", "auto"):
        _, info = factorize(W, chain, method=method, seed=0, max_sweeps=3, return_info=True)
        k = chain.nnz // (16 + 72)
        assert info.svd_rank == k
        assert info.svd_rel_error == pytest.approx(_svd_error(W, k), rel=1e-9)
        assert info.data_rel_error is None and info.whitening == "none"
    # scale-free too
    _, big = factorize(W * 1e250, chain, method="hierarchical", return_info=True)
    assert big.svd_rel_error == pytest.approx(_svd_error(W, k), rel=1e-9)
    assert db.fit.lowrank_error(W * 1e250, chain.nnz)[0] == pytest.approx(
        _svd_error(W, k), rel=1e-9)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"max_params": 10}, ValueError, r"factorize\(max_params\).*smallest"),
    ({"max_params": 0}, ValueError, r"factorize\(max_params\)"),
    ({"max_params": 1.5}, TypeError, r"factorize\(max_params\)"),
    ({"rel_error": -0.1}, ValueError, r"factorize\(rel_error\)"),
    ({"rel_error": float("nan")}, ValueError, r"factorize\(rel_error\)"),
    ({"rel_error": "small"}, TypeError, r"factorize\(rel_error\)"),
    ({"X": np.ones((5, 71))}, ValueError, r"factorize\(X\).*\(samples, 72\)"),
    ({"X": np.ones(72)}, ValueError, r"factorize\(X\).*2-D"),
    ({"X": np.full((3, 72), np.nan)}, ValueError, r"factorize\(X\).*NaN or Inf"),
    ({"X": np.full((3, 72), np.inf)}, ValueError, r"factorize\(X\).*NaN or Inf"),
    ({"X": np.zeros((3, 72))}, ValueError, r"factorize\(X\).*zero"),
    ({"X": np.ones((3, 72), dtype=complex)}, TypeError, r"factorize\(X\).*complex"),
    ({"X": [["a"] * 72]}, TypeError, r"factorize\(X\)"),
])
def test_bad_input_before_any_work(monkeypatch, kwargs, exc, match):
    import debutla.fit.api as api

    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("expensive work started before the arguments were checked")

    for name in ("design_chain", "search_chain", "_weights", "_hierarchical"):
        monkeypatch.setattr(api, name, boom)
    with pytest.raises(exc, match=match):
        factorize(np.ones((16, 72)), "auto", **kwargs)


@pytest.mark.parametrize("kwargs", [{"method": "svd"}, {"X": np.ones((2, 5))},
                                    {"tol": -1.0}, {"seed": "x"}])
def test_cheap_checks_before_candidates(monkeypatch, kwargs):
    import debutla.fit.api as api

    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("candidates generated before the cheap checks")

    monkeypatch.setattr(api, "candidate_chains", boom)
    with pytest.raises((TypeError, ValueError)):
        factorize(np.ones((16, 72)), "auto", max_params=1000, **kwargs)


def test_bad_W_with_budget():
    W = np.ones((16, 72))
    W[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"factorize\(W\).*NaN"):
        factorize(W, "auto", max_params=1000)


def test_budget_needs_auto_chain():
    chain = Chain.parse(db.PAPER_CHAINS["lenet_conv2_mono1"])
    for kw in ({"max_params": 1000}, {"rel_error": 0.5}):
        with pytest.raises(ValueError, match=r"chain='auto'"):
            factorize(np.ones((16, 72)), chain, **kw)


@pytest.mark.slow
def test_budget_search_cost_768x3072():
    """Issue 9: a budget search costs at most 3x one 'auto' fit (768 x 3072)."""
    import time

    W = np.random.default_rng(0).standard_normal((768, 3072))
    t = time.perf_counter()
    factorize(W, "auto")
    t_auto = time.perf_counter() - t
    t = time.perf_counter()
    _, info = factorize(W, "auto", max_params=100_000, return_info=True)
    t_budget = time.perf_counter() - t
    assert info.n_params <= 100_000
    assert t_budget <= 3 * t_auto
