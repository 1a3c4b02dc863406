"""Adapters to other ecosystems.

* :mod:`debutla.interop.scipy`: ``scipy.sparse.linalg.LinearOperator`` (re-exported here);
* :mod:`debutla.interop.cupyx`: the same for ``cupyx`` on the GPU (needs CuPy);
* :mod:`debutla.interop.lazylinop`: to and from ``lazylinop.butterfly`` (needs lazylinop);
* :mod:`debutla.interop.debut_authors`: the DeBut authors' ``R_shapes`` + flat parameters.

The optional ones are imported only when asked for.
"""

from .scipy import DeButLinearOperator, aslinearoperator

__all__ = ["DeButLinearOperator", "aslinearoperator"]
