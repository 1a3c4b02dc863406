"""Error against parameters: DeBut fits beside the truncated SVD, budget by budget."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Iterable

import numpy as np

from .._validation import check_bool, check_choice, check_int, check_matrix
from .api import METHODS, factorize
from ..chain import candidate_chains

__all__ = ["tradeoff"]


def _budgets(budgets: Any, m: int, n: int) -> list[int]:
    if budgets is None:  # a geometric ladder from the smallest chain to a quarter of W
        lo = max(candidate_chains(m, n)[-1].nnz, (m * n) // 64)
        hi = max((m * n) // 4, min(m * n, 8 * lo))
        return sorted({int(round(x)) for x in np.geomspace(lo, hi, 5)})
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Iterable):
        raise TypeError(f"tradeoff(budgets): budgets must be a sequence of integers, "
                        f"got {type(budgets).__name__}")
    out = [check_int(b, "budgets", where="tradeoff(budgets)") for b in budgets]
    if not out:
        raise ValueError("tradeoff(budgets): budgets must not be empty")
    return out


def tradeoff(W: Any, budgets: Iterable[int] | None = None,
             methods: Iterable[str] = ("hierarchical", "auto"), X: Any = None, *,
             as_frame: bool | None = None, seed: int = 0,
             max_sweeps: int | None = None) -> Any:
    """For each parameter budget: the best DeBut chain's error beside the truncated SVD's.

    Parameters
    ----------
    W : array_like
        The ``m x n`` matrix (as for :func:`~debutla.factorize`).
    budgets : sequence of int, optional
        Parameter budgets.  Default: five budgets spaced geometrically from
        ``m n / 64`` (or the smallest candidate chain, if larger) to ``m n / 4`` (or
        eight times the lower end, at most ``m n``, if larger).
    methods : sequence of str
        Fitting methods (``"hierarchical"``, ``"als"``, ``"auto"``) to report for the
        chain chosen at each budget.
    X : array_like, optional
        Calibration inputs ``(samples, n)``: every fit is data-aware and the data errors
        are reported too.
    as_frame : bool, optional
        Return a pandas DataFrame (True), a list of dicts (False), or a DataFrame when
        pandas is installed (None, the default).
    seed : int
        Seed of the ALS random start (``method="als"``).
    max_sweeps : int, optional
        ALS sweeps of the ``"als"`` and ``"auto"`` fits (default: :func:`~debutla.factorize`'s).

    Returns
    -------
    list of dict or pandas.DataFrame
        One record per budget and method with the keys ``budget``, ``method``, ``chain``
        (its notation), ``n_params``, ``n_factors``, ``rel_error``, ``svd_rel_error``,
        ``svd_rank``, ``data_rel_error``, ``svd_data_rel_error`` (None without ``X``),
        ``whitening`` and ``seconds``.

    Raises
    ------
    TypeError, ValueError
        As :func:`~debutla.factorize` for ``W`` and ``X``; for budgets that are not
        positive integers, a budget smaller than every chain, an unknown method, or
        ``as_frame=True`` without pandas.

    Notes
    -----
    At each budget the chain is chosen once, by the budget search of
    :func:`~debutla.factorize` (hierarchical estimates, :mod:`debutla.fit.search`), and
    then fitted with each method.  The truncated SVD keeps rank
    ``k = floor(n_params / (m + n))`` (it stores ``k (m + n)`` values), so both sides
    use at most the same number of values.  Drawing is left to a plotting module; the
    records are plain data.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.random.default_rng(0).standard_normal((16, 32))
    >>> rows = tradeoff(W, budgets=[200, 400], methods=["hierarchical"], as_frame=False)
    >>> [r["n_params"] <= r["budget"] for r in rows]
    [True, True]
    >>> sorted(rows[0])[:4]
    ['budget', 'chain', 'data_rel_error', 'method']
    """
    methods = [check_choice(mt, "methods", METHODS, where="tradeoff(methods)")
               for mt in methods]
    if not methods:
        raise ValueError("tradeoff(methods): methods must not be empty")
    if as_frame is not None:
        as_frame = check_bool(as_frame, "as_frame", where="tradeoff(as_frame)")
    have_pandas = importlib.util.find_spec("pandas") is not None
    if as_frame and not have_pandas:
        raise ValueError("tradeoff(as_frame): as_frame=True needs pandas, which is not "
                         "installed; use as_frame=False for a list of records")
    W = check_matrix(W, "W", where="tradeoff(W)")
    budgets = _budgets(budgets, *W.shape)
    rows = []
    for budget in budgets:
        chain = None
        for method in methods:
            # the first method searches the chain; the others refit the same chain
            op, info = factorize(W, "auto" if chain is None else chain, method=method,
                                 max_params=budget if chain is None else None, X=X,
                                 seed=seed, return_info=True,
                                 max_sweeps=None if method == "hierarchical" else max_sweeps)
            chain = info.chain
            rows.append({
                "budget": budget, "method": method, "chain": str(info.chain),
                "n_params": info.n_params, "n_factors": len(info.chain),
                "rel_error": info.rel_error, "svd_rel_error": info.svd_rel_error,
                "svd_rank": info.svd_rank, "data_rel_error": info.data_rel_error,
                "svd_data_rel_error": info.svd_data_rel_error,
                "whitening": info.whitening, "seconds": info.seconds,
            })
    if as_frame or (as_frame is None and have_pandas):
        return importlib.import_module("pandas").DataFrame(rows)
    return rows
