"""Fitting a dense matrix with a DeBut chain: :func:`factorize`.

Two methods and their combination:

* :mod:`.hierarchical`: batched rank-one block splits, one factor at a time (exact on
  DeBut products, optimal for two factors, within ``sqrt(N-1)`` of optimal otherwise);
* :mod:`.als`: alternating least squares with exact closed-form factor updates;
* ``method="auto"``: hierarchical, then ALS sweeps while they help.

Around them: :mod:`.search` (chains for a parameter budget or an error target),
:func:`tradeoff` (error against parameters beside the truncated SVD) and
:func:`lowrank_error` (the truncated SVD's error at a parameter count); :func:`balance`
(the same product with evenly scaled factors, for training).  The index
calculus both methods share lives in :mod:`._layout`.
"""

from .api import METHODS, FitInfo, factorize, lowrank_error
from .balance import balance
from .tradeoff import tradeoff

__all__ = ["factorize", "FitInfo", "lowrank_error", "METHODS", "tradeoff", "balance"]
