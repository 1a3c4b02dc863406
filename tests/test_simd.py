"""The vector-shuffle block transpose of the Numba kernels (``_numba_simd.transpose8``)."""

from __future__ import annotations

import numba
import numpy as np
from hypothesis import given, settings, strategies as st

from debutla.backends._numba_simd import BLOCK, transpose8

from strategies import DTYPES, random_values


@numba.njit(cache=False)
def _call(src, so, ss, dst, do, ds):  # pragma: no cover - compiled
    transpose8(src, so, ss, dst, do, ds)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_transpose8_moves_one_block_and_nothing_else(data):
    dtype = data.draw(st.sampled_from(list(DTYPES) + [np.int32, np.int64]), label="dtype")
    ss = data.draw(st.integers(BLOCK, 40), label="source stride")
    ds = data.draw(st.integers(BLOCK, 40), label="destination stride")
    so = data.draw(st.integers(0, 20), label="source offset")
    do = data.draw(st.integers(0, 20), label="destination offset")
    unsigned = data.draw(st.booleans(), label="uint64 offsets")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    n_src = so + (BLOCK - 1) * ss + BLOCK + data.draw(st.integers(0, 5), label="src slack")
    n_dst = do + (BLOCK - 1) * ds + BLOCK + data.draw(st.integers(0, 5), label="dst slack")
    if np.dtype(dtype).kind == "i":
        src = rng.integers(-1000, 1000, n_src).astype(dtype)
        dst = rng.integers(-1000, 1000, n_dst).astype(dtype)
    else:
        src = random_values(rng, (n_src,), dtype)
        dst = random_values(rng, (n_dst,), dtype)
    exp = dst.copy()
    i, j = np.arange(BLOCK)[:, None], np.arange(BLOCK)[None, :]
    exp[do + i * ds + j] = src[so + j * ss + i]  # row j of the block becomes column j
    cast = np.uint64 if unsigned else np.int64
    _call(src, cast(so), cast(ss), dst, cast(do), cast(ds))
    np.testing.assert_array_equal(dst, exp)  # bit copies: exact, the rest untouched


def test_transpose8_reads_a_read_only_source():
    src = np.arange(64, dtype=np.float32)
    src.flags.writeable = False
    dst = np.zeros(64, np.float32)
    _call(src, 0, 8, dst, 0, 8)
    np.testing.assert_array_equal(dst.reshape(8, 8), src.reshape(8, 8).T)
