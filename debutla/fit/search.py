"""Chains for a parameter budget or an error target: candidates and the search over them.

:func:`~debutla.chain.candidate_chains` lists dense chains that serve an ``m x n``
matrix; :func:`search_chain` picks one of them with a caller-supplied error estimate
(``factorize`` uses the hierarchical fit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .._validation import check_int, check_real
from ..chain import Chain

__all__ = ["search_chain", "SearchResult"]


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
    >>> from debutla.chain import candidate_chains
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
