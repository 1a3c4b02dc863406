"""debutla: Deformable Butterfly (DeBut) matrices for numerical linear algebra.

Public API: :class:`Chain`, :class:`DeBut`, :func:`design_chain`,
:func:`aslinearoperator`, :func:`load`.
"""

from .chain import PAPER_CHAINS, Chain, FactorSpec, design_chain
from .fit import FitInfo, factorize, tradeoff
from .interop.scipy import aslinearoperator
from .io import DeButFileError, load
from .operator import DeBut

__version__ = "0.1.0"

__all__ = [
    "Chain",
    "FactorSpec",
    "DeBut",
    "design_chain",
    "PAPER_CHAINS",
    "factorize",
    "FitInfo",
    "aslinearoperator",
    "load",
    "DeButFileError",
    "__version__",
]
