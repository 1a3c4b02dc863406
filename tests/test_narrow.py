"""Small batches on the narrow-tile kernel module (``numba_.NARROW_W`` rows per tile).

A chain whose tiles are wider than ``NARROW_W`` rows serves batches of 3 to
``NARROW_W`` rows from a second kernel module compiled with ``NARROW_W``-row tiles
(``rows_narrow``); while it compiles, the wide tiles serve.  Both give the same bits:
every column of a tile goes through the same operations whatever the tile width.
"""

from __future__ import annotations


import numpy as np
import pytest

import debutla
import debutla.backends.numba_ as nbk
from debutla.backends import _numba_codegen as cg
from debutla import DeBut
from debutla._config import config

from codegen import forced_codegen
from strategies import DTYPES, DTYPE_IDS, random_values

CHAIN = "24 <-(3,2,4)- 16 <-(4,9,1)- 36"





def _wide(op: DeBut, X: np.ndarray) -> np.ndarray:
    """``X @ op.T`` on the chain's own (wide) tiles."""
    st = op._state(nbk, op.dtype)
    with config(background=False):
        nbk.compile_kernels(st, 3 * st.W, "rows")
    Y = np.empty((X.shape[0], op.shape[0]), op.dtype)
    mod = st.module()
    W = st.W
    a, b = nbk._scratch(op.dtype, st.F * W)
    k = X.shape[0]
    mod.rows_tiles(st.flat, X.reshape(-1), Y.reshape(-1), k, 0, (k + W - 1) // W, a, b,
                   np.uint64(W), X.shape[1])
    return Y


# complex128 tiles have NARROW_W rows already (16 bytes x 16 = 256 bytes per feature)
WIDE_DTYPES = [d for d in DTYPES if np.dtype(d).itemsize < 16]


@pytest.mark.parametrize("dtype", WIDE_DTYPES,
                         ids=[i for d, i in zip(DTYPES, DTYPE_IDS) if d in WIDE_DTYPES])
def test_small_batches_run_on_narrow_tiles_with_the_wide_tiles_bits(dtype, kernels_seen):
    op = DeBut.random(CHAIN, seed=11, dtype=dtype, backend="numba")
    st = op._state(nbk, op.dtype)
    assert st.W > nbk.NARROW_W  # the case this module is for
    rng = np.random.default_rng(12)
    ref = op.to_dense().astype(np.complex128 if np.iscomplexobj(op.to_dense()) else
                                np.float64)
    with forced_codegen(), config(background=False):
        for k in (3, 9, nbk.NARROW_W, nbk.NARROW_W + 1):
            X = random_values(rng, (k, op.shape[1]), dtype)
            kernels_seen.clear()
            op._lane = None  # the full path (the fast lane calls the kernels directly)
            got = op.matmat_rows(X)
            want = "rows_narrow" if k <= nbk.NARROW_W else "rows_tiles"
            assert kernels_seen[-1] == want
            np.testing.assert_array_equal(got, _wide(op, X))
            tol = 1e-4 if np.dtype(dtype).itemsize <= 8 and dtype != np.float64 else 1e-12
            np.testing.assert_allclose(got, X @ ref.T, rtol=tol, atol=tol)
    assert "rows_narrow" in st.ready


def test_wide_tiles_serve_while_the_narrow_ones_compile(kernels_seen):
    # a chain no other test compiles: compiled kernels are shared by every operator of
    # a chain and dtype in the process
    op = DeBut.random("20 <-(5,2,2)- 8 <-(4,9,1)- 18", seed=13, dtype=np.float32,
                      backend="numba")
    st = op._state(nbk, op.dtype)
    X = np.ones((8, op.shape[1]), np.float32)
    with forced_codegen():
        with config(background=False):
            op.matmat_rows(np.ones((40, op.shape[1]), np.float32))  # wide tiles ready
        assert "rows_tiles" in st.ready and "rows_narrow" not in st.ready
        kernels_seen.clear()
        op._lane = None
        first = op.matmat_rows(X)  # starts the narrow compile, served by the wide tiles
        assert kernels_seen[0] == "rows_tiles"
        nbk.wait_for_compiles()
        assert "rows_narrow" in st.ready
        kernels_seen.clear()
        op._lane = None
        again = op.matmat_rows(X)
        assert kernels_seen == ["rows_narrow"]
    np.testing.assert_array_equal(first, again)
    kernels_seen.clear()
    calls = []
    inner = nbk.rows_lane
    try:
        nbk.rows_lane = lambda *a: calls.append(inner(*a)) or calls[-1]
        np.testing.assert_array_equal(op.matmat_rows(X), first)  # the lane, narrow tiles
    finally:
        nbk.rows_lane = inner
    assert calls == [True] and kernels_seen == ["rows_narrow"]


def test_no_narrow_module_where_the_tiles_are_narrow_already(kernels_seen):
    op = DeBut.random(CHAIN, seed=14, dtype=np.float32, backend="numba")
    st = op._state(nbk, op.dtype)
    with forced_codegen(), config(background=False):
        op.matmat_rows(np.ones((5, op.shape[1]), np.float32))
        assert kernels_seen[-1] == "rows_narrow"
        kernels_seen.clear()
        op.matmat(np.ones((op.shape[1], 5), np.float32))  # the column layout: its own tiles
        assert kernels_seen[-1] == "cols_tiles"
    assert nbk._kernel_name(5, "rows", None) == "rows_tiles"
    st.W = nbk.NARROW_W  # a chain whose own tiles have NARROW_W rows
    assert nbk._kernel_name(5, "rows", st) == "rows_tiles"


def test_warmup_compiles_the_kernel_of_each_batch():
    op = DeBut.random(CHAIN, seed=15, dtype=np.float32, backend="numba")
    st = op._state(nbk, op.dtype)
    with forced_codegen():
        debutla.warmup(op, batch=(1, 8, 64), layout="rows", adjoint=False)
    assert {"rows_single", "rows_narrow", "rows_tiles"} <= st.ready


VGG = [(512, 8, 9, 1), (256, 2, 2, 8), (128, 2, 2, 16), (64, 2, 2, 32), (16, 2, 4, 64),
       (4, 2, 4, 128), (1, 2, 4, 256)]
BUTTERFLY_4096 = [(4096 // (2 * t), 2, 2, t) for t in (2 ** i for i in range(12))]
RESNET = [(1024, 2, 2, 1), (512, 2, 2, 2), (256, 2, 2, 4), (64, 2, 4, 8), (32, 2, 2, 16),
          (16, 2, 2, 32), (8, 2, 2, 64), (2, 2, 4, 128), (1, 2, 2, 256)]


def test_tile_rows_go_below_16_only_for_real_chains_that_mostly_ping_pong():
    """Tile widths (README_kernels.md, changes 5, 13 and 24)."""
    dt = np.dtype
    assert nbk.tile_rows([(1, 2, 2, 1)], dt("float32")) == 64  # narrow: 256 bytes a row
    assert nbk.tile_rows([(1, 2, 2, 1)], dt("complex128")) == 16  # never below 16 here
    # VGG: blocks over TILE_BLOCK_BYTES at 16 rows in float64, one in-place pass of six
    assert [nbk.tile_rows(VGG, dt(d)) for d in ("float32", "float64")] == [16, 8]
    assert nbk.tile_rows(VGG, dt("complex64")) == nbk.tile_rows(VGG, dt("complex128")) == 16
    # the 4096 butterfly: as wide, but its six passes all run in place
    assert nbk.tile_rows(BUTTERFLY_4096, dt("float64")) == 16
    # ResNet: on 32 rows its step holds a narrowing pair and runs in 16-row parts, so
    # 32 rows in float64 too (the budget alone gives 16); complex dtypes keep the budget
    assert cg.step_parts(RESNET, 32)
    assert [nbk.tile_rows(RESNET, dt(d)) for d in ("float32", "float64", "complex128")] \
        == [32, 32, 16]
    # the state's own width: VGG's first factor alone, float64 (blocks of 1.18 MB at 16)
    assert nbk.prepare((np.ones(VGG[0]),)).W == 8
    assert nbk.prepare((np.ones(VGG[0], np.float32),)).W == 16


def test_eight_row_float64_tiles_match_dense():
    """A mostly ping-pong chain on tiles of 8 rows (what VGG gets in float64)."""
    op = DeBut.random("8 <-(2,4,4)- 16 <-(2,2,4)- 16 <-(2,2,2)- 16 <-(8,9,1)- 18", seed=4,
                      dtype=np.float64, backend="numba")
    st = nbk.prepare(op.factors)
    src = cg.generate_source(st.shapes, 8)
    ns: dict = {}
    exec(compile(src.replace("cache=True", "cache=False"), "<kernels>", "exec"), ns)
    rng = np.random.default_rng(5)
    for k in (8, 21):  # full tiles, then a partial one
        X = rng.standard_normal((k, op.shape[1]))
        Y = np.empty((k, op.shape[0]))
        ba, bb = np.zeros(st.F * 8), np.zeros(st.F * 8)
        ns["rows_tiles"](st.flat, X.reshape(-1), Y.reshape(-1), k, 0, (k + 7) // 8, ba, bb,
                         np.uint64(8), op.shape[1])
        np.testing.assert_allclose(Y, X @ op.to_dense().T, rtol=1e-12, atol=1e-12)


def test_tile_rows_stop_at_the_vector_transposes_blocks():
    """A very wide ping-pong chain goes to 8 rows on the L2 budget, not below (the
    8 x 8 vector transposes); below 8 only for the fused limit, as before."""
    wide = [(2048, 8, 9, 1), (1024, 2, 2, 8), (256, 4, 4, 16)]  # 18,432 features
    assert nbk.tile_rows(wide, np.dtype("float64")) == 8  # 2.4 MB at 8 rows, 1.2 at 4
    huge = [(65536, 8, 9, 1), (32768, 2, 4, 8)]  # blocks over the fused limit at 8 rows
    assert nbk.tile_rows(huge, np.dtype("float64")) == 4
