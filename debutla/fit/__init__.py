"""Fitting a dense matrix with a DeBut chain: :func:`factorize`.

Two methods and their combination:

* :mod:`.hierarchical`: batched rank-one block splits, one factor at a time (exact on
  DeBut products, optimal for two factors, within ``sqrt(N-1)`` of optimal otherwise);
* :mod:`.als`: alternating least squares with exact closed-form factor updates;
* ``method="auto"``: hierarchical, then ALS sweeps while they help.
"""

from .api import FitInfo, METHODS, factorize, lowrank_error

__all__ = ["factorize", "FitInfo", "lowrank_error", "METHODS"]
