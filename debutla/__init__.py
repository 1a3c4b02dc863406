"""debutla: Deformable Butterfly (DeBut) matrices for numerical linear algebra.

A DeBut matrix is a product ``D = R_N ... R_2 R_1`` of sparse factors, each
block-diagonal with blocks made of small diagonal matrices (Lin et al., NeurIPS 2021).

Public API
----------
Chains
    :class:`Chain` (parse/format the paper's notation, validate, count), :class:`FactorSpec`,
    :func:`design_chain` (a chain for any shape), :data:`PAPER_CHAINS`.
Operators
    :class:`DeBut` (products, adjoints, dense/sparse export, arithmetic),
    :func:`save` / :func:`load` (``.npz``, no pickle), :class:`DeButFileError`.
Fitting
    :func:`factorize` (fit a dense matrix to a chain, a parameter budget or an error
    target; optionally data-aware), :class:`FitInfo`, :func:`tradeoff` (error against
    parameters beside the truncated SVD); :mod:`debutla.fit` for the methods.
Running
    :func:`config` (threads, backend, fused kernels, as a context manager),
    :func:`warmup` (compile the kernels of an operator ahead of time).
Adapters
    :func:`aslinearoperator` (``scipy.sparse.linalg.LinearOperator``);
    :mod:`debutla.testing` (``dottest``, ``assert_operator_close``).

Heavy dependencies (SciPy, Numba, the fitting code) are imported on first use, so
``import debutla`` is cheap.

Examples
--------
>>> import numpy as np, debutla as db
>>> op = db.DeBut.random("8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8", seed=0)
>>> np.allclose(op @ np.ones(8), op.to_dense() @ np.ones(8))
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .chain import PAPER_CHAINS, Chain, FactorSpec, design_chain
from .operator import DeBut

__version__ = "0.1.0"

# name -> module that defines it; imported on first access (PEP 562)
_LAZY = {
    "factorize": ".fit.api",
    "FitInfo": ".fit.api",
    "tradeoff": ".fit.tradeoff",
    "aslinearoperator": ".interop.scipy",
    "load": ".io",
    "save": ".io",
    "DeButFileError": ".io",
    "config": "._config",
    "warmup": "._warmup",
}
_SUBMODULES = ("testing", "interop", "backends", "io", "fit", "cli")

__all__ = [
    "Chain",
    "FactorSpec",
    "DeBut",
    "design_chain",
    "PAPER_CHAINS",
    "factorize",
    "FitInfo",
    "tradeoff",
    "aslinearoperator",
    "save",
    "load",
    "DeButFileError",
    "config",
    "warmup",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .fit.api import FitInfo, factorize
    from .fit.tradeoff import tradeoff
    from .interop.scipy import aslinearoperator
    from ._config import config
    from ._warmup import warmup
    from .io import DeButFileError, load, save


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is not None:
        value = getattr(importlib.import_module(mod, __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'debutla' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
