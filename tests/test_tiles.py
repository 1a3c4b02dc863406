"""The tile moves of the backward kernels (``_numba_tiles.gather_tile`` / ``scatter_tile``)
against a NumPy reference: every dtype, partial tiles, padded features."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from debutla.backends._numba_tiles import gather_tile, scatter_tile

from strategies import DTYPES, random_values

u = np.uint64


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_gather_and_scatter_match_numpy(data):
    dtype = data.draw(st.sampled_from(list(DTYPES)), label="dtype")
    W = data.draw(st.sampled_from([8, 16, 32]), label="W")
    w = data.draw(st.integers(1, W), label="rows in the tile")
    width = data.draw(st.integers(1, 40), label="width")
    total = width + data.draw(st.integers(0, 9), label="padding features")
    t0 = data.draw(st.integers(0, 5), label="first row")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    batch = t0 + w + data.draw(st.integers(0, 3), label="rows after")
    src = random_values(rng, (batch, width), dtype)
    dst = np.full(total * W, np.nan, dtype)  # every entry must be written
    gather_tile(src.reshape(-1), u(t0), u(w), u(width), u(total), u(W), dst)
    want = np.zeros((total, W), dtype)
    want[:width, :w] = src[t0:t0 + w].T
    np.testing.assert_array_equal(dst.reshape(total, W), want)
    back = random_values(rng, (batch, width), dtype)
    keep = back.copy()
    scatter_tile(dst, u(t0), u(w), u(width), u(W), back.reshape(-1))
    keep[t0:t0 + w] = src[t0:t0 + w]
    np.testing.assert_array_equal(back, keep)  # only the tile's rows are written
