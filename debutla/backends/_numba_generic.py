"""Generic (not generated) Numba kernels: factor by factor, sizes at run time.

One compiled function per dtype serves every chain, forward and adjoint:

* small chains and a chain's first products while its specialised kernel compiles
  (see :mod:`debutla.backends.numba_`);
* chains too wide for a fused pass to keep its intermediates in cache, and fused
  kernels switched off (``debutla.config(fused=False)``);
* every adjoint product (``rmatvec``, ``x @ op``, ``to_dense``): each factor is read
  through value strides, so ``R^T`` runs on the forward values without a transposed
  copy and without compiling a second kernel (``R^H`` on their conjugates, made once).
  The arithmetic is the same as on transposed copies of the values, bit for bit.

The source below is loaded through the kernel cache (:func:`load`), like the
generated modules, so its machine code is stored in the same checked folder (a
read-only installation never needs a writable package folder).
"""

from __future__ import annotations

from types import ModuleType

from . import _cache

__all__ = ["SOURCE", "load", "load_uncached"]

SOURCE = '''"""debutla generic Numba kernels (factor by factor; loaded by debutla)."""
import numpy as np
from numba import njit

from debutla.backends._numba_native import call_entry, fetch_add
from debutla.backends._numba_sync import cpu_pause, load_acquire, store_release


@njit(cache=True, nogil=True)
def spin(flags, idx, old, rounds, linger):
    """Spin until flags[idx] != old or `rounds` rounds pass; return the last value read.

    After a change, spin `linger` more rounds before returning (and taking the GIL): the
    thread that made the change has then likely dropped the GIL, so taking it does not
    put this thread to sleep.  Used by debutla.backends._numba_pool, without the GIL.
    """
    v = load_acquire(flags, idx)
    for _ in range(rounds):
        if v != old:
            for _ in range(linger):
                cpu_pause()
            return v
        cpu_pause()
        v = load_acquire(flags, idx)
    return v


@njit(cache=True, nogil=True)
def store_spin(flags, sidx, sval, idx, old, rounds, linger):
    """flags[sidx] = sval (a release store, made without the GIL), then spin()."""
    store_release(flags, sidx, sval)
    return spin(flags, idx, old, rounds, linger)


# the pool's flags (debutla.backends._numba_pool: the same numbers, checked by a test)
GEN, DONE, BODY, DATA, JOINED, HELPERS, ROUNDS, STOP, NJOINED = 0, 1, 2, 3, 4, 5, 6, 7, 8
CLOSED = 1 << 40  # added to JOINED when a GIL-free job closes: no worker joins after


@njit(cache=True, nogil=True)
def serve(flags, seen, rounds, linger):
    """A pool worker's wait: spin() for the next job and run the GIL-free ones here.

    A GIL-free job (flags[BODY] != 0: the address of a debutla.backends._numba_native
    body, called as body(flags[DATA])) is joined with an atomic increment of
    flags[JOINED] (below flags[HELPERS]: the job is open and wants this worker), run,
    and counted in flags[DONE]; then the worker spins flags[ROUNDS] rounds for the next
    one, never taking the GIL.  Returns the generation of a job that needs Python (a
    Python job, or the pool's end: flags[STOP]), after `linger` rounds, or -1 - seen
    when none came within `rounds` (the worker then sleeps).
    """
    while True:
        v = spin(flags, GEN, seen, rounds, 0)
        if v == seen:
            return -1 - seen
        if load_acquire(flags, STOP) != 0 or load_acquire(flags, BODY) == 0:
            for _ in range(linger):
                cpu_pause()
            return v
        seen = v
        # joined: the job stays open (its poster waits for this worker) until DONE
        if fetch_add(flags, JOINED, 1) < load_acquire(flags, HELPERS):
            call_entry(load_acquire(flags, BODY), (load_acquire(flags, DATA),))
            fetch_add(flags, DONE, 1)
        rounds = load_acquire(flags, ROUNDS)


@njit(cache=True, nogil=True)
def post(flags, body, data, helpers, rounds):
    """Post a GIL-free job for serve(): its fields, then JOINED = 0 (the job opens),
    then the next generation (release stores: a worker that sees one sees the rest).
    `rounds`: how long the workers spin for the next job after this one.
    """
    store_release(flags, BODY, body)
    store_release(flags, DATA, data)
    store_release(flags, HELPERS, helpers)
    store_release(flags, ROUNDS, rounds)
    store_release(flags, DONE, 0)
    store_release(flags, JOINED, 0)
    store_release(flags, GEN, load_acquire(flags, GEN) + 1)


@njit(cache=True, nogil=True)
def lead(flags, wait):
    """The poster's part of the job post() made: run the body on this thread, close the
    job (no worker joins after), record in flags[NJOINED] how many workers joined and
    spin up to `wait` rounds for them; return how many are still running.
    """
    call_entry(load_acquire(flags, BODY), (load_acquire(flags, DATA),))
    joined = min(fetch_add(flags, JOINED, CLOSED), load_acquire(flags, HELPERS))
    store_release(flags, NJOINED, joined)
    done = load_acquire(flags, DONE)
    for _ in range(wait):
        if done >= joined:
            break
        cpu_pause()
        done = load_acquire(flags, DONE)
    return joined - done


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def factor(V, voff, nb, r, s, t, vi, vj, src, sf, sc, soff, dst, df, dc, doff, w):
    """dst <- R src for w columns of strided panels.

    Output feature (b r + i) t + k, input feature (b s + j) t + k, value
    V[voff + b r s t + i vi + j vj + k]: vi = s t, vj = t is the factor itself; a
    transposed factor swaps r with s and vi with vj.  Column c of
    feature f lives at src[soff + f sf + c sc] (and likewise dst).  All sizes uint64.
    """
    for b in range(nb):
        vbb = voff + b * r * s * t
        for i in range(r):
            for k in range(t):
                o = doff + ((b * r + i) * t + k) * df
                vb = vbb + i * vi + k
                xb = soff + ((b * s) * t + k) * sf
                v = V[vb]
                for c in range(w):
                    dst[o + c * dc] = v * src[xb + c * sc]
                for j in range(np.uint64(1), s):
                    v = V[vb + j * vj]
                    xj = xb + j * t * sf
                    for c in range(w):
                        dst[o + c * dc] += v * src[xj + c * sc]


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def chain_panels(V, dims, X, xf, xc, xn, out, of, oc, c0, c1, wmax, ba, bb):
    """Apply a chain factor by factor to columns c0 .. c1-1, wmax at a time.

    V: the flat canonical values of all factors, concatenated (one array, so one
    compiled function serves chains of any length); dims: uint64 (N, 7) rows
    (nb, r, s, t, vi, vj, voff) as in factor, in the order the factors are applied;
    X, out: flat input
    and output, column c of feature f at X[f xf + c xc] and out[f of + c oc]; only the
    first xn features of X exist (the rest are zeros: padding without a copy);
    ba, bb: ping-pong buffers of at least F wmax entries, panels features-major.
    """
    N = dims.shape[0]
    one = np.uint64(1)
    zero = np.uint64(0)
    q0 = dims[0, 0] * dims[0, 2] * dims[0, 3]
    p0 = c0
    while p0 < c1:
        w = min(wmax, c1 - p0)
        n0 = 0
        if xn < q0:  # copy the existing features into a zero-padded panel
            for f in range(xn):
                for c in range(w):
                    ba[f * w + c] = X[f * xf + (p0 + c) * xc]
            ba[xn * w:q0 * w] = 0
            n0 = 1
        for n in range(N):
            nb, r, s, t = dims[n, 0], dims[n, 1], dims[n, 2], dims[n, 3]
            vi, vj, voff = dims[n, 4], dims[n, 5], dims[n, 6]
            if n == 0 and n0 == 0:
                src, sf, sc, soff = X, xf, xc, p0 * xc
            elif (n + n0) % 2 == 1:
                src, sf, sc, soff = ba, w, one, zero
            else:
                src, sf, sc, soff = bb, w, one, zero
            if n == N - 1:
                dst, df, dc, doff = out, of, oc, p0 * oc
            elif (n + n0) % 2 == 0:
                dst, df, dc, doff = ba, w, one, zero
            else:
                dst, df, dc, doff = bb, w, one, zero
            factor(V, voff, nb, r, s, t, vi, vj, src, sf, sc, soff, dst, df, dc, doff, w)
        p0 += w
'''


def load() -> ModuleType:
    """The generic kernel module (through the checked kernel cache)."""
    return _cache.load_module(SOURCE, "generic")


def load_uncached() -> ModuleType:
    """The generic kernel module compiled in memory (after a cache failure)."""
    return _cache.uncached_module(SOURCE, "generic")
