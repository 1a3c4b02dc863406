"""Chains for a parameter budget or an error target: candidates and the search over them.

:func:`candidate_chains` lists dense chains that serve an ``m x n`` matrix (it needs
nothing but :mod:`debutla.chain`); :func:`search_chain` picks one of them with a
caller-supplied error estimate (``factorize`` uses the hierarchical fit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .._validation import check_int, check_real
from ..chain import Chain, design_chain

__all__ = ["candidate_chains", "search_chain", "SearchResult"]


def _divisors(x: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(x) + 1) if x % d == 0]
    return sorted(set(small + [x // d for d in small]))


def _two_factor(m: int, n: int, r1: int, s1: int) -> Chain:
    """The dense chain ``(r1, s1), (m / r1, n / s1)`` (a Monarch-like pair)."""
    r2, s2 = m // r1, n // s1
    return Chain.from_pqrst([(r1 * s2, n, r1, s1, 1), (m, r1 * s2, r2, s2, r1)])


def candidate_chains(m: int, n: int, *, max_params: int | None = None,
                     max_factors: int = 8,
                     where: str = "candidate_chains(max_params)") -> list[Chain]:
    """Dense chains that serve an ``m x n`` matrix, most parameters first.

    Parameters
    ----------
    m, n : int
        The matrix shape (each chain's size is at least this; some are padded).
    max_params : int, optional
        Keep only chains with at most this many values.
    max_factors : int
        Largest factor count asked of :func:`~debutla.design_chain`.
    where : str
        How an impossible budget is named in the error (the caller's argument).

    Returns
    -------
    list of Chain
        Without duplicates, sorted by decreasing ``nnz`` (ties: fewer factors first).

    Raises
    ------
    ValueError
        If ``max_params`` is smaller than every candidate (the message gives the
        smallest).

    Notes
    -----
    The candidates are: the minimum-parameter monotonic chain of every factor count
    ``2 .. max_factors`` (:func:`~debutla.design_chain`, which also pads), the same with
    the radix capped at 2 and 4 (more factors, fewer values), every two-factor dense
    chain ``(r_1, s_1), (m / r_1, n / s_1)`` whose middle size ``r_1 n / s_1`` is at least
    ``min(m, n)`` and which is smaller than the dense matrix (these fill the range
    between the two-factor minimum and the dense matrix), and the dense matrix itself
    (one factor).  Bulging designs are not listed: designing them costs about a second
    each at ``768 x 3072``.

    Examples
    --------
    >>> cs = candidate_chains(16, 72, max_params=600)
    >>> all(c.nnz <= 600 for c in cs), cs[0].nnz >= cs[-1].nnz
    (True, True)
    """
    m = check_int(m, "m", where="candidate_chains")
    n = check_int(n, "n", where="candidate_chains")
    max_factors = check_int(max_factors, "max_factors", where="candidate_chains")
    if max_params is not None:
        max_params = check_int(max_params, "max_params", where=where)
    found: dict[Chain, None] = {Chain.from_pqrst([(m, n, m, n, 1)]): None}
    for k in range(2, max_factors + 1):
        for radix in (None, 4, 2):
            try:
                found[design_chain(m, n, "monotonic", k, max_radix=radix)] = None
            except ValueError:  # no chain of this count and radix
                continue
    low = min(m, n)
    for r1 in _divisors(m):
        for s1 in _divisors(n):
            if (r1, s1) in ((1, 1), (m, n)) or r1 * (n // s1) < low:
                continue
            if r1 * n + m * (n // s1) < m * n:  # else the dense matrix is smaller
                found[_two_factor(m, n, r1, s1)] = None
    out = sorted(found, key=lambda c: (-c.nnz, len(c)))
    if max_params is not None:
        fit = [c for c in out if c.nnz <= max_params]
        if not fit:
            raise ValueError(
                f"{where}: no chain serving {m}x{n} has at most "
                f"{max_params} values; the smallest candidate has {out[-1].nnz} "
                f"('{out[-1]}')")
        out = fit
    return out


@dataclass(frozen=True)
class SearchResult:
    """The chain a search picked and what it tried.

    Attributes
    ----------
    chain : Chain
        The winner.
    estimate : float
        Its estimated relative error.
    tried : tuple of (Chain, float)
        Every chain whose error was estimated, with the estimate, in the order tried.
    target_met : bool or None
        With a target: whether the winner's estimate reaches it.
    """

    chain: Chain
    estimate: float
    tried: tuple[tuple[Chain, float], ...]
    target_met: bool | None


def search_chain(candidates: list[Chain], estimate: Callable[[Chain], float], *,
                 rel_error: float | None = None, per_count: int = 2) -> SearchResult:
    """Pick a chain from ``candidates`` (most parameters first) with an error estimate.

    Parameters
    ----------
    candidates : list of Chain
        As :func:`candidate_chains` returns them (decreasing ``nnz``).
    estimate : callable
        ``estimate(chain) -> float``, the relative error of a fast fit.
    rel_error : float, optional
        Without it: the most accurate chain (a budget search).  With it: the smallest
        chain whose estimate reaches ``rel_error``, or the most accurate one when none
        does.
    per_count : int
        Budget search: how many of the largest chains of each factor count are tried.

    Returns
    -------
    SearchResult

    Notes
    -----
    **Budget.**  More values usually means a lower error within one factor count, so
    only the ``per_count`` largest chains of each count are estimated, and the lowest
    estimate wins (ties: fewer values).  **Target.**  The candidates are sorted by
    ``nnz``; a bisection over them (assuming the estimate falls as ``nnz`` grows, which
    holds within a family of one factor count but not across families) runs in each
    family, and the smallest chain found wins: ``O(F log K)`` estimates for ``F``
    factor counts and ``K`` candidates.  The
    estimates are upper bounds of what ALS refinement reaches, so a chain that meets the
    target by its estimate still meets it after refinement.

    Examples
    --------
    >>> from debutla.fit.search import candidate_chains
    >>> cs = candidate_chains(16, 72)
    >>> res = search_chain(cs, lambda c: 1.0 / c.nnz, rel_error=0.01)
    >>> res.target_met, res.chain.nnz >= 100
    (True, True)
    """
    tried: dict[Chain, float] = {}

    def est(c: Chain) -> float:
        if c not in tried:
            tried[c] = float(estimate(c))
        return tried[c]

    if rel_error is None:
        per = check_int(per_count, "per_count", where="search_chain(per_count)")
        seen: dict[int, int] = {}
        for c in candidates:
            if seen.get(len(c), 0) < per:
                seen[len(c)] = seen.get(len(c), 0) + 1
                est(c)
        best = min(tried, key=lambda c: (tried[c], c.nnz))
        return SearchResult(best, tried[best], tuple(tried.items()), None)
    target = check_real(rel_error, "rel_error", where="search_chain(rel_error)", min=0)
    families: dict[int, list[Chain]] = {}
    for c in sorted(candidates, key=lambda c: (c.nnz, -len(c))):
        families.setdefault(len(c), []).append(c)
    winners = []
    for fam in families.values():  # bisection within each factor count
        lo, hi = 0, len(fam) - 1
        if est(fam[hi]) > target:
            continue
        while lo < hi:  # invariant: fam[hi] reaches the target
            mid = (lo + hi) // 2
            if est(fam[mid]) <= target:
                hi = mid
            else:
                lo = mid + 1
        winners.append(fam[hi])
    if not winners:  # even the largest of every family misses: the most accurate tried
        best = min(tried, key=lambda c: (tried[c], c.nnz))
        return SearchResult(best, tried[best], tuple(tried.items()), False)
    best = min(winners, key=lambda c: (c.nnz, tried[c]))
    return SearchResult(best, tried[best], tuple(tried.items()), True)
