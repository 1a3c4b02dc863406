"""Tiles of a row-major batch moved to and from the features-major panel layout.

Run-time sizes (all ``numpy.uint64``), one compiled kernel per dtype, cached on disk by
Numba.  The backward kernels (:mod:`debutla.backends._numba_backward` and the generic one
of :mod:`debutla.torch._kernels`) gather a tile of ``X`` and of ``dL/dY`` with
:func:`gather_tile` and scatter ``dL/dX`` with :func:`scatter_tile`.  Full ``8 x 8``
blocks move through vector shuffles (:func:`debutla.backends._numba_simd.transpose8`),
the rest element by element.

Numba compiles these into the generated backward modules that call them, and its cache
of those modules does not see a change here: a change must come with a new
``GENERATOR_VERSION`` (:mod:`debutla.backends._numba_codegen`), which names the
backward modules too.
"""

from __future__ import annotations

import numba
import numpy as np

from ._numba_simd import transpose8

__all__ = ["gather_tile", "scatter_tile"]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def gather_tile(src, t0, w, width, total, W, dst):  # pragma: no cover - compiled
    """Rows ``t0 .. t0+w-1`` of a flat row-major ``(batch, width)`` array into ``dst``,
    features-major ``(total, W)``, zero-padded (features ``>= width``, columns ``>= w``).
    """
    u0, u8 = np.uint64(0), np.uint64(8)  # (sizes are uint64: no mixed-sign arithmetic)
    for f in range(width, total):  # zero padding only: features >= width ...
        for c in range(W):
            dst[f * W + c] = 0.0
    if w < W:  # ... and columns >= w
        for f in range(width):
            for c in range(w, W):
                dst[f * W + c] = 0.0
    w8 = w - w % u8
    f8 = width - width % u8
    # features outer: every line of dst is written whole at once (as the forward
    # kernels' gather, README_kernels.md change 11)
    for fb in range(u0, f8, u8):
        for cb in range(u0, w8, u8):
            transpose8(src, (t0 + cb) * width + fb, width, dst, fb * W + cb, W)
    for c in range(u0, w8):
        for f in range(f8, width):
            dst[f * W + c] = src[(t0 + c) * width + f]
    for c in range(w8, w):
        row = (t0 + c) * width
        for f in range(width):
            dst[f * W + c] = src[row + f]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def scatter_tile(src, t0, w, width, W, dst):  # pragma: no cover - compiled
    """The inverse of :func:`gather_tile`: columns ``0 .. w-1`` of the features-major
    ``src`` (its first ``width`` features) to rows ``t0 .. t0+w-1`` of the flat
    row-major ``dst``.
    """
    u0, u8 = np.uint64(0), np.uint64(8)
    w8 = w - w % u8
    f8 = width - width % u8
    for cb in range(u0, w8, u8):
        row = (t0 + cb) * width
        for fb in range(u0, f8, u8):
            transpose8(src, fb * W + cb, W, dst, row + fb, width)
        for c in range(cb, cb + u8):
            for f in range(f8, width):
                dst[(t0 + c) * width + f] = src[f * W + c]
    for c in range(w8, w):
        row = (t0 + c) * width
        for f in range(width):
            dst[row + f] = src[f * W + c]
