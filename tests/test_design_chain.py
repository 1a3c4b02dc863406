"""Tests of design_chain: validity for any shape, kinds, factor counts, optimality."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from debutla import Chain, design_chain
from strategies import dense_chain_from_rs
from test_chain import PAPER

PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 97, 101, 127, 251, 509, 1021)
sizes = st.one_of(
    st.integers(1, 700),
    st.sampled_from(PRIMES),
    st.sampled_from([2**k for k in range(11)]),
    st.integers(1, 12).map(lambda k: 3 * 2**k),
)

small_sizes = st.one_of(st.integers(1, 200), st.sampled_from(PRIMES[:12]),
                        st.sampled_from([2**k for k in range(8)]))


def check_design(c: Chain, m: int, n: int, kind: str, max_pad: float = 0.25) -> None:
    """The documented guarantees of a designed chain."""
    assert isinstance(c, Chain)
    assert c.is_dense
    M, N = c.shape
    assert M >= m and N >= n
    assert M <= max(m, math.floor(m * (1 + max_pad)))
    assert N <= max(n, math.floor(n * (1 + max_pad)))
    # dense: every entry a product of one value per factor
    assert math.prod(f.r for f in c) == M and math.prod(f.s for f in c) == N
    if kind != "any":
        assert c.kind == kind
    # no waist narrower than the smaller side (it would cap the rank)
    assert min(c.sizes) >= min(M, N)


@given(sizes, sizes, st.sampled_from(["monotonic", "any"]))
def test_monotonic_and_any_designs_are_valid_dense_chains_for_every_shape(m, n, kind):
    check_design(design_chain(m, n, kind=kind), m, n, kind)


@given(small_sizes, small_sizes)
def test_bulging_design_is_bulging_and_exists_unless_a_side_is_one(m, n):
    if min(m, n) == 1:
        # a dense chain with prod r = 1 (or prod s = 1) never widens: none exists
        with pytest.raises(ValueError, match="bulging"):
            design_chain(m, n, kind="bulging")
    else:
        check_design(design_chain(m, n, kind="bulging"), m, n, "bulging")


@pytest.mark.parametrize("m, n", [(1, 1), (2, 3), (7, 13), (1000, 1), (5, 5)])
def test_bulging_design_never_returns_a_single_factor(m, n):
    try:
        c = design_chain(m, n, kind="bulging")
    except ValueError:
        assert min(m, n) == 1
    else:
        assert len(c) >= 2 and c.kind == "bulging"


@pytest.mark.parametrize("m, n", [(1, 1), (1, 7), (7, 1), (13, 13), (97, 101), (1021, 509)])
@pytest.mark.parametrize("kind", ["monotonic", "any"])
def test_design_serves_ones_and_primes(m, n, kind):
    check_design(design_chain(m, n, kind=kind), m, n, kind)


@given(sizes, sizes, st.sampled_from(["monotonic", "bulging", "any"]), st.integers(1, 6))
def test_n_factors_is_respected_or_refused_with_value_error(m, n, kind, L):
    try:
        c = design_chain(m, n, kind=kind, n_factors=L)
    except ValueError as e:
        assert "factors" in str(e) or "bulging" in str(e)
        return
    check_design(c, m, n, kind)
    assert len(c) == L


@pytest.mark.parametrize("a, b", [(a, b) for a in range(0, 9) for b in range(a, 9) if b >= 2])
def test_power_of_two_shapes_get_every_feasible_factor_count(a, b):
    # monotonic 2^a x 2^b (a <= b): each step needs s >= 2 and s <= 16, so every count
    # L with ceil(b / 4) <= L <= b is feasible (without padding); both orientations
    for L in range(max(2, math.ceil(b / 4)), b + 1):
        c = design_chain(2**a, 2**b, n_factors=L)
        check_design(c, 2**a, 2**b, "monotonic")
        assert len(c) == L
        t = design_chain(2**b, 2**a, n_factors=L)
        check_design(t, 2**b, 2**a, "monotonic")
        assert len(t) == L


@pytest.mark.parametrize("m, n, L", [(4096, 4096, 2), (1024, 64, 2), (4608, 512, 3),
                                     (997, 1000, 2)])
def test_few_factors_for_large_shapes_grow_the_radix_automatically(m, n, L):
    c = design_chain(m, n, n_factors=L)
    check_design(c, m, n, "monotonic")
    assert len(c) == L
    with pytest.raises(ValueError, match="max_radix=16"):
        design_chain(m, n, n_factors=L, max_radix=16, max_pad=0)


def test_one_factor_is_the_dense_matrix():
    assert design_chain(12, 20, n_factors=1) == Chain([(12, 20, 12, 20, 1)])
    with pytest.raises(ValueError, match="bulging"):
        design_chain(12, 20, kind="bulging", n_factors=1)


def test_square_power_of_two_with_two_factors_is_the_butterfly():
    assert design_chain(4, 4, n_factors=2) == Chain.parse("4 <-(2,2,2)- 4 <-(2,2,1)- 4")


@given(st.integers(2, 300), st.integers(2, 300), st.sampled_from(["monotonic", "bulging"]))
def test_free_factor_count_has_no_more_parameters_than_any_fixed_count(m, n, kind):
    # at one radix bound (max_radix=None may grow the bound for a fixed count only)
    free = design_chain(m, n, kind=kind, max_radix=16)
    for L in range(1, 7):
        try:
            fixed = design_chain(m, n, kind=kind, n_factors=L, max_radix=16)
        except ValueError:
            continue
        assert free.nnz <= fixed.nnz


# ---------------------------------------------------------------------------------------
# optimality against brute force (no padding, small sizes)
# ---------------------------------------------------------------------------------------

def _ordered_factorizations(x: int, L: int, radix: int):
    """All ordered L-tuples of positive ints <= radix with product x."""
    if L == 0:
        if x == 1:
            yield ()
        return
    for d in range(1, min(x, radix) + 1):
        if x % d == 0:
            for rest in _ordered_factorizations(x // d, L - 1, radix):
                yield (d,) + rest


def _documented_shape_ok(c: Chain, kind: str) -> bool:
    """The rule of design_chain's Notes, written from the sizes."""
    sz = c.sizes
    M, N = c.shape
    if min(sz) < min(M, N):
        return False
    if kind == "monotonic":
        return c.kind == "monotonic"
    if kind == "bulging":
        peak = sz.index(max(sz))
        grows = all(a <= b for a, b in zip(sz[: peak + 1], sz[1: peak + 1]))
        shrinks = all(a >= b for a, b in zip(sz[peak:], sz[peak + 1:]))
        return grows and shrinks and max(sz[1:-1]) > max(M, N)
    return True


def brute_force_min_nnz(M: int, N: int, L: int, kind: str, radix: int = 16):
    best = None
    for rr in _ordered_factorizations(M, L, radix):
        for ss in _ordered_factorizations(N, L, radix):
            pairs = list(zip(rr, ss))
            if (1, 1) in pairs:
                continue  # a (1, 1) step is a pure diagonal scaling: never useful
            c = dense_chain_from_rs(pairs)
            if not _documented_shape_ok(c, kind):
                continue
            nnz = sum(f.p * f.s for f in c)
            best = nnz if best is None else min(best, nnz)
    return best


@pytest.mark.parametrize("kind", ["monotonic", "bulging", "any"])
@pytest.mark.parametrize("M, N", [(4, 4), (6, 8), (8, 6), (12, 8), (16, 12), (9, 12),
                                  (24, 16), (2, 12), (12, 2), (18, 18)])
@pytest.mark.parametrize("L", [2, 3, 4])
def test_design_without_padding_matches_brute_force_minimum(kind, M, N, L):
    best = brute_force_min_nnz(M, N, L, kind)
    if best is None:
        with pytest.raises(ValueError):
            design_chain(M, N, kind=kind, n_factors=L, max_pad=0, max_radix=16)
        return
    c = design_chain(M, N, kind=kind, n_factors=L, max_pad=0, max_radix=16)
    assert c.shape == (M, N) and len(c) == L
    check_design(c, M, N, kind, max_pad=0)
    assert c.nnz == best


# ---------------------------------------------------------------------------------------
# as good as the paper's chains
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PAPER))
def test_design_has_no_more_parameters_than_the_paper_chain_of_same_kind_and_length(name):
    paper = Chain.parse(PAPER[name][0])
    m, n = paper.shape
    # kind from the sizes: the paper's CONV2 "mono1" is bulging by its sizes
    c = design_chain(m, n, kind=paper.kind, n_factors=len(paper))
    check_design(c, m, n, paper.kind)
    assert len(c) == len(paper)
    assert c.nnz <= paper.nnz


@pytest.mark.parametrize("m, n", [(128, 400), (16, 72), (64, 128), (512, 4608), (512, 2304)])
def test_design_with_free_count_beats_every_paper_chain_of_that_shape(m, n):
    papers = [Chain.parse(v[0]) for v in PAPER.values() if v[1] == (m, n)]
    assert papers
    for kind in ("monotonic", "bulging"):
        c = design_chain(m, n, kind=kind)
        check_design(c, m, n, kind)
        same = [p for p in papers if p.kind == kind]
        assert all(c.nnz <= p.nnz for p in same)


# ---------------------------------------------------------------------------------------
# argument validation
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(m=0, n=4), ValueError, "m"),
    (dict(m=4, n=-1), ValueError, "n"),
    (dict(m=1.5, n=4), TypeError, "m"),
    (dict(m=4, n="4"), TypeError, "n"),
    (dict(m=4, n=4, kind="mono"), ValueError, "kind"),
    (dict(m=4, n=4, n_factors=0), ValueError, "n_factors"),
    (dict(m=4, n=4, n_factors=2.0), TypeError, "n_factors"),
    (dict(m=4, n=4, max_radix=1), ValueError, "max_radix"),
    (dict(m=4, n=4, max_pad=-0.1), ValueError, "max_pad"),
    (dict(m=4, n=4, max_pad=5), ValueError, "max_pad"),
    (dict(m=4, n=4, max_pad="0.1"), TypeError, "max_pad"),
    (dict(m=4, n=4, max_pad=float("nan")), ValueError, "max_pad"),
    (dict(m=4, n=4, max_pad=True), TypeError, "max_pad"),
    (dict(m=2**32 + 1, n=4), ValueError, "m must be an integer <= 4294967296"),
    (dict(m=4, n=10**29, max_pad=0), ValueError, "n must be an integer <= 4294967296"),
    (dict(m=4, n=4, max_radix=2.0), TypeError, "max_radix"),
    (dict(m=4, n=4, max_factors=0), ValueError, "max_factors"),
])
def test_design_chain_rejects_bad_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        design_chain(**kwargs)


def test_max_pad_zero_gives_the_exact_shape():
    for m, n in [(7, 13), (128, 400), (100, 30)]:
        c = design_chain(m, n, max_pad=0)
        assert c.shape == (m, n)


def test_max_radix_bounds_r_and_s_when_the_sizes_allow_it():
    c = design_chain(512, 4608, max_radix=4)
    assert all(f.r <= 4 and f.s <= 4 for f in c)
    check_design(c, 512, 4608, "monotonic")


@pytest.mark.parametrize("max_pad", [np.float32(0.1), np.float64(0.25), 0, 1, np.int64(2)])
def test_max_pad_accepts_any_real_number(max_pad):
    # issue 7 defect 8: np.float32(0.1) was refused
    c = design_chain(100, 30, max_pad=max_pad)
    check_design(c, 100, 30, "monotonic", max_pad=float(max_pad))


# ---------------------------------------------------------------------------------------
# bounded time (issue 7 defect 6: 10^7 took 31 s, 10^29 with max_pad=0 over 12 minutes)
# ---------------------------------------------------------------------------------------

# one second on an idle core; the allowance covers a machine shared by several jobs
TIME_LIMIT = 3.0


@pytest.mark.parametrize("m, n", [
    (10**7, 10**7), (10**8, 10**8), (10**7 + 19, 100), (2**32, 2**32),
    (4294967291, 4294967279),        # the two largest primes below 2**32
    (2**31 - 1, 3), (1, 2**32), (735134400, 735134400),  # a number with many divisors
])
@pytest.mark.parametrize("kwargs", [{}, dict(kind="bulging"), dict(kind="any", max_pad=4),
                                    dict(n_factors=3), dict(max_pad=0)],
                         ids=["default", "bulging", "any-pad4", "3-factors", "no-pad"])
def test_large_sizes_are_answered_or_refused_quickly(m, n, kwargs):
    t0 = time.perf_counter()
    try:
        c = design_chain(m, n, **kwargs)
    except ValueError as e:
        assert "work limit" in str(e) or "no dense" in str(e) or "bulging" in str(e)
    else:
        check_design(c, m, n, kwargs.get("kind", "monotonic"), kwargs.get("max_pad", 0.25))
    assert time.perf_counter() - t0 < TIME_LIMIT


def test_sizes_beyond_the_bound_are_refused_at_once():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="<= 4294967296"):
        design_chain(10**29, 10**29, max_pad=0)
    assert time.perf_counter() - t0 < 0.1


def test_a_search_that_runs_out_of_work_says_so_and_how_to_avoid_it(monkeypatch):
    import debutla.chain as chain_module

    monkeypatch.setattr(chain_module, "_DESIGN_WORK", 10)
    with pytest.raises(ValueError) as e:
        design_chain(4096, 4096)
    msg = str(e.value)
    assert "work limit (10 steps)" in msg and "n_factors" in msg and "4096x4096" in msg


def test_an_interrupted_search_returns_the_best_chain_found_before_the_limit(monkeypatch):
    import debutla.chain as chain_module

    full = design_chain(1000, 1000)
    monkeypatch.setattr(chain_module, "_DESIGN_WORK", 2_000)
    c = design_chain(1000, 1000)  # the unpadded size first, then padded ones
    check_design(c, 1000, 1000, "monotonic")
    assert c.nnz >= full.nnz


def test_pad_candidates_are_the_smallest_smooth_sizes_above_n():
    import debutla.chain as chain_module

    def smooth(k, primes):
        for p in primes:
            while k % p == 0:
                k //= p
        return k == 1

    for n, pad, primes in [(1000, 0.25, (2, 3, 5, 7, 11, 13)), (997, 0.1, (2, 3)),
                           (10**6 + 3, 0.01, (2, 3, 5)), (1, 4.0, (2,)), (7, 0.0, (2, 3))]:
        got = chain_module._pad_candidates(n, pad, primes)
        hi = max(n, math.floor(n * (1 + pad)))
        want = [k for k in range(n + 1, hi + 1) if smooth(k, primes)][:5]
        assert got == (n, *want)


def test_design_chain_with_a_budget_returns_the_largest_candidate_within_it():
    from debutla.chain import candidate_chains

    for budget in (2_500, 20_000, 100_000):
        c = design_chain(128, 400, max_params=budget)
        assert c.is_dense and c.nnz <= budget and c.shape >= (128, 400)
        assert c == candidate_chains(128, 400, max_params=budget)[0]
        assert all(o.nnz <= c.nnz for o in candidate_chains(128, 400, max_params=budget))
    with pytest.raises(ValueError, match=r"design_chain\(max_params\).*smallest"):
        design_chain(128, 400, max_params=10)
    with pytest.raises(TypeError, match="max_params must be an integer"):
        design_chain(128, 400, max_params=1.5)
