"""Column-layout products on wide tiles (``numba_.COLS_RUN_BYTES`` a feature).

``op @ X`` gathers each tile's columns from rows ``k`` entries apart; a real chain whose
own tiles are narrower than ``COLS_RUN_BYTES`` a feature runs the full tiles of such
products on a third kernel module of ``cW`` columns (``cols_wide``) and the columns left
on its own tiles; while the wide module compiles, the own tiles serve.  Both give the
same bits: every column of a tile goes through the same operations whatever the tile
width.
"""

from __future__ import annotations


import numpy as np
import pytest

import debutla
import debutla.backends.numba_ as nbk
from debutla import DeBut
from debutla._config import config

from codegen import forced_codegen, ready_spin_pool
from strategies import random_values

# over 1024 features wide (the narrower tiles' rule): float32 tiles of 32 columns, wide
# ones of 64; float64 16 and 32
CHAIN = "1152 <-(2,2,2)- 1152 <-(2,2,1)- 1152"




def _own(op: DeBut, X: np.ndarray) -> np.ndarray:
    """``op @ X`` on the chain's own tiles only."""
    st = op._state(nbk, op.dtype)
    with config(background=False):
        nbk.compile_kernels(st, 2, "cols")
    Y = np.empty((op.shape[0], X.shape[1]), op.dtype)
    W, k = st.W, X.shape[1]
    a, b = nbk._scratch(op.dtype, st.F * W)
    st.module().cols_tiles(st.flat, X.reshape(-1), Y.reshape(-1), k, 0, (k + W - 1) // W,
                           a, b, np.uint64(W), X.shape[0])
    return Y


VGG = [(512, 8, 9, 1), (256, 2, 2, 8), (128, 2, 2, 16), (64, 2, 2, 32), (16, 2, 4, 64),
       (4, 2, 4, 128), (1, 2, 4, 256)]
BUTTERFLY_4096 = [(4096 // (2 * t), 2, 2, t) for t in (2 ** i for i in range(12))]


def test_cols_width_rules():
    dt = np.dtype
    # 256 bytes a feature for real dtypes; complex ones keep their own tiles
    assert [nbk.cols_width(VGG, dt(d)) for d in ("float32", "float64")] == [64, 32]
    assert nbk.cols_width(VGG, dt("complex64")) == nbk.tile_rows(VGG, dt("complex64"))
    assert nbk.cols_width(BUTTERFLY_4096, dt("float32")) == 64
    # never below the own tiles (a narrow chain has 256 bytes a feature already)
    small = [(1, 2, 2, 1)]
    assert nbk.cols_width(small, dt("float32")) == nbk.tile_rows(small, dt("float32")) == 64
    # halved while the two blocks exceed the fused limit
    huge = [(32768, 2, 2, 1), (16384, 2, 2, 2)]  # 65,536 features
    W = nbk.tile_rows(huge, dt("float32"))
    cW = nbk.cols_width(huge, dt("float32"), W)
    assert W <= cW < 64 and cW % W == 0
    assert cW == W or 2 * 65536 * cW * 4 <= 4 * nbk.FUSED_BYTES
    st = nbk.prepare(tuple(np.ones(sh, np.float32) for sh in VGG))
    assert (st.W, st.cW) == (16, 64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_column_products_on_wide_tiles_have_the_own_tiles_bits(dtype, kernels_seen):
    op = DeBut.random(CHAIN, seed=21, dtype=dtype, backend="numba")
    st = op._state(nbk, op.dtype)
    assert st.cW == 2 * st.W  # the case this module is for
    rng = np.random.default_rng(22)
    D = op.to_dense().astype(np.float64)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    with forced_codegen(), config(background=False, threads=1):
        # full wide tiles only; with own tiles left (a full and a partial one); under
        # one wide tile (the own tiles)
        for k, want in ((st.cW, "cols_wide"), (3 * st.cW + st.W + 3, "cols_wide"),
                        (st.cW - 1, "cols_tiles")):
            X = random_values(rng, (op.shape[1], k), dtype)
            kernels_seen.clear()
            got = op @ X
            assert kernels_seen[-1] == want
            np.testing.assert_array_equal(got, _own(op, X))
            np.testing.assert_allclose(got, D @ X, rtol=tol, atol=tol)
    assert "cols_wide" in st.ready


@pytest.mark.parametrize("extra", [0, 7], ids=["wide-tiles-only", "own-tiles-left"])
def test_split_column_products_on_wide_tiles(monkeypatch, extra, kernels_seen):
    """Split over two threads: full wide tiles only run on the GIL-free body, with own
    tiles left on the Python one; the bits are one thread's."""
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    ready_spin_pool(1)  # (else the pool's worker may still compile what posts the body)
    op = DeBut.random(CHAIN, seed=23, dtype=np.float32, backend="numba")
    st = op._state(nbk, op.dtype)
    k = 2 * nbk._MIN_TASKS_PER_THREAD * st.cW + extra  # enough wide tiles for 2 threads
    X = random_values(np.random.default_rng(24), (op.shape[1], k), np.float32)
    jobs = []
    inner = nbk._native.tiles_job
    monkeypatch.setattr(nbk._native, "tiles_job",
                        lambda *a, **kw: jobs.append(a[6]) or inner(*a, **kw))
    with forced_codegen(), config(background=False):
        with config(threads=1):
            one = op @ X
        with config(threads=2):
            assert nbk._kernel_name(k, "cols", st) == "cols_wide"
            kernels_seen.clear()
            two = op @ X
    assert kernels_seen == ["cols_wide"]
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(two, _own(op, X))
    # the GIL-free body was asked for the wide tiles only where nothing was left
    assert (st.cW in jobs) == (extra == 0)


def test_wide_tiles_only_where_they_keep_every_thread(monkeypatch):
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    op = DeBut.random(CHAIN, seed=25, dtype=np.float32, backend="numba")
    st = op._state(nbk, op.dtype)
    with config(threads=1):
        assert nbk._kernel_name(st.cW - 1, "cols", st) == "cols_tiles"
        assert nbk._kernel_name(st.cW, "cols", st) == "cols_wide"
    with config(threads=2):  # two wide tiles a thread, else the own tiles split finer
        assert nbk._kernel_name(4 * st.cW - 1, "cols", st) == "cols_tiles"
        assert nbk._kernel_name(4 * st.cW, "cols", st) == "cols_wide"
    assert nbk._kernel_name(4 * st.cW, "cols", None) == "cols_tiles"  # adjoints
    assert nbk._kernel_name(4 * st.cW, "rows", st) == "rows_tiles"  # the row layout
    cx = DeBut.random(CHAIN, seed=25, dtype=np.complex64, backend="numba")
    cst = cx._state(nbk, cx.dtype)
    assert cst.cW == cst.W
    with config(threads=1):
        assert nbk._kernel_name(8 * cst.W, "cols", cst) == "cols_tiles"
    monkeypatch.setattr(nbk, "_COLS_WIDE", False)  # the A/B switch of bench_kernels.py
    with config(threads=1):
        assert nbk._kernel_name(4 * st.cW, "cols", st) == "cols_tiles"


def test_own_tiles_serve_while_the_wide_ones_compile(kernels_seen):
    # a chain no other test compiles: compiled kernels are shared by every operator of
    # a chain and dtype in the process
    op = DeBut.random("1280 <-(2,2,2)- 1280 <-(2,2,1)- 1280", seed=26, dtype=np.float32,
                      backend="numba")
    st = op._state(nbk, op.dtype)
    X = np.ones((op.shape[1], st.cW), np.float32)
    with forced_codegen(), config(threads=1):
        with config(background=False):
            op @ np.ones((op.shape[1], 5), np.float32)  # the own tiles ready
        assert "cols_tiles" in st.ready and "cols_wide" not in st.ready
        kernels_seen.clear()
        first = op @ X  # starts the wide compile, served by the own tiles
        assert kernels_seen == ["cols_tiles"]
        nbk.wait_for_compiles()
        assert "cols_wide" in st.ready
        kernels_seen.clear()
        again = op @ X
        assert kernels_seen == ["cols_wide"]
    np.testing.assert_array_equal(first, again)


def test_the_wide_compile_readies_the_own_tiles_first():
    """The columns left of the wide tiles run on the own tiles: never compiled in the
    middle of a product."""
    op = DeBut.random("1408 <-(2,2,2)- 1408 <-(2,2,1)- 1408", seed=27, dtype=np.float64,
                      backend="numba")
    st = op._state(nbk, op.dtype)
    with forced_codegen(), config(background=False, threads=1):
        X = np.ones((op.shape[1], st.cW + 3))
        np.testing.assert_allclose(op @ X, op.to_dense() @ X, rtol=1e-12, atol=1e-12)
    assert {"cols_tiles", "cols_wide"} <= st.ready


def test_warmup_by_default_compiles_the_wide_column_tiles():
    op = DeBut.random("1536 <-(2,2,2)- 1536 <-(2,2,1)- 1536", seed=28, dtype=np.float32,
                      backend="numba")
    st = op._state(nbk, op.dtype)
    with forced_codegen(), config(threads=2):
        assert debutla.warmup(op, layout="cols") >= 0
    assert {"rows_single", "cols_tiles", "cols_wide"} <= st.ready
    # and the adjoint's (op.H @ Z, op.rmatmat(Z))
    assert {"rows_single", "cols_tiles", "cols_wide"} <= st.adjoint("H").ready


def test_adjoint_column_products_move_to_wide_tiles(kernels_seen):
    """``op.H @ Z`` (the column layout of the adjoint): the generic kernel while the
    transposed chain's own tiles compile, then those while its wide tiles compile, then
    the wide tiles; the last two with the same bits."""
    op = DeBut.random("1664 <-(2,2,2)- 1664 <-(2,2,1)- 1664", seed=29, dtype=np.float32,
                      backend="numba")
    st = op._state(nbk, op.dtype)
    rng = np.random.default_rng(30)
    with forced_codegen(), config(threads=1):
        Z = random_values(rng, (op.shape[0], 2 * st.cW + 5), np.float32)
        seen = []
        for _ in range(3):
            kernels_seen.clear()
            seen.append((op.H @ Z, list(kernels_seen)))
            nbk.wait_for_compiles()
    assert [ks for _, ks in seen] == [[], ["cols_tiles"], ["cols_wide"]]  # []: generic
    np.testing.assert_array_equal(seen[1][0], seen[2][0])
    np.testing.assert_allclose(seen[2][0], op.to_dense().T @ Z, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(op.rmatmat(Z), seen[2][0])  # the same state ("H" = "T")
    assert {"cols_tiles", "cols_wide"} <= st.adjoint("T").ready
    # the row layout of the adjoint keeps the transposed chain's own tiles
    assert nbk._adjoint_kernel_name(st, "T", 4 * st.cW, "rows") == "rows_tiles"
