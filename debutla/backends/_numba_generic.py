"""Generic (not generated) Numba kernels: the factor-by-factor fallback.

Used when the widest vector of a chain is too large for a fused pass to keep its
intermediates in cache, or when fused kernels are switched off
(:func:`debutla.backends.numba_.set_fused`).  Sizes are run-time values here, so one
compiled function serves every chain (per dtype); it is cached on disk like any
``cache=True`` function of a package file.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def _factor(V, nb, r, s, t, src, sf, sc, soff, dst, df, dc, doff, w):
    """``dst <- R src`` for ``w`` columns of strided panels.

    Column ``c`` of feature ``f`` lives at ``src[soff + f * sf + c * sc]`` (and likewise
    ``dst``).  ``V`` is the flat canonical ``(nb, r, s, t)`` value array.  All sizes are
    nonnegative and passed as uint64 so the index arithmetic stays unsigned.
    """
    for b in range(nb):
        for i in range(r):
            for k in range(t):
                o = doff + ((b * r + i) * t + k) * df
                vb = ((b * r + i) * s) * t + k
                xb = soff + ((b * s) * t + k) * sf
                v = V[vb]
                for c in range(w):
                    dst[o + c * dc] = v * src[xb + c * sc]
                for j in range(np.uint64(1), s):
                    v = V[vb + j * t]
                    xj = xb + j * t * sf
                    for c in range(w):
                        dst[o + c * dc] += v * src[xj + c * sc]


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def chain_panels(Vs, dims, X, xf, xc, out, of, oc, c0, c1, wmax, ba, bb):
    """Apply the chain factor by factor to columns ``c0 .. c1-1``, ``wmax`` at a time.

    Parameters
    ----------
    Vs : tuple of 1-D arrays
        Flat canonical values of each factor, application order.
    dims : uint64 array (N, 4)
        ``(nb, r, s, t)`` of each factor.
    X, out : 1-D arrays
        Flat input and output; column ``c`` of feature ``f`` at ``X[f * xf + c * xc]``,
        ``out[f * of + c * oc]``.
    c0, c1, wmax : uint64
        Column range and panel width.
    ba, bb : 1-D arrays
        Ping-pong buffers of at least ``F * wmax`` entries (``F`` the widest vector);
        a panel is stored features-major (``buf[f * w + c]``).
    """
    N = dims.shape[0]
    one = np.uint64(1)
    zero = np.uint64(0)
    p0 = c0
    while p0 < c1:
        w = min(wmax, c1 - p0)
        for n in range(N):
            nb, r, s, t = dims[n, 0], dims[n, 1], dims[n, 2], dims[n, 3]
            if n == 0:
                src, sf, sc, soff = X, xf, xc, p0 * xc
            elif n % 2 == 1:
                src, sf, sc, soff = ba, w, one, zero
            else:
                src, sf, sc, soff = bb, w, one, zero
            if n == N - 1:
                dst, df, dc, doff = out, of, oc, p0 * oc
            elif n % 2 == 0:
                dst, df, dc, doff = ba, w, one, zero
            else:
                dst, df, dc, doff = bb, w, one, zero
            _factor(Vs[n], nb, r, s, t, src, sf, sc, soff, dst, df, dc, doff, w)
        p0 += w
