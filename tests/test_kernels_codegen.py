"""Generated Numba kernels: how the generator splits a chain into panel passes, and the
products of the fused (several factors per pass, in place) passes against the dense
reference of ``tests/strategies.py``.

``tests/test_backends.py`` covers every other code path of the generator; the chains
here are chosen so that fused passes actually occur (checked by the first test), with
full tiles (the constant-width column loop) and partial ones (the run-time-width loop).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import debutla.backends.numba_ as nbk
from debutla import Chain, DeBut
from debutla.backends import _numba_codegen as cg

from strategies import random_values
from test_backends import _check, codegen  # noqa: F401  (codegen: a fixture)

# a standard butterfly: (2,2,1) ... (2,2,32), fused into three in-place pairs
BUTTERFLY_64 = str(Chain.butterfly(64))
# a wide t = 1 input factor (never fused), a nesting square pair (fused), then a (2,4,4)
# factor that nests too but would make the pass change the vector size (alone)
MIXED = "8 <-(2,4,4)- 16 <-(2,2,2)- 16 <-(2,2,1)- 16 <-(8,9,1)- 18"
# radix-4: single (4,4,t) factors, each run as an in-place group pass
RADIX4_256 = str(Chain.butterfly(256, radix=4))
# LeNet FC1's chain: (2,2,16) then (1,2,32) nest and narrow (fused from W = 32)
NARROWING = "128 <-(2,2,64)- 128 <-(2,2,32)- 128 <-(1,2,32)- 256 <-(2,2,16)- 256 <-(16,25,1)- 400"


def _shapes(text: str) -> list:
    return [(f.q // (f.s * f.t), f.r, f.s, f.t) for f in Chain.parse(text)]


def test_panel_passes_fuse_nesting_square_pairs():
    assert cg.panel_passes(_shapes(BUTTERFLY_64)) == [(0, 2), (2, 2), (4, 2)]
    assert cg.panel_passes(_shapes(MIXED)) == [(0, 1), (1, 2), (3, 1)]
    # (2,2,1) then (2,4,2) nest, but the pair maps 8 inputs to 4 outputs: not fused
    assert cg.panel_passes([(8, 2, 2, 1), (2, 2, 4, 2)]) == [(0, 1), (1, 1)]
    # radix-4 factors are too wide to fuse (r s = 16)
    r4 = _shapes(str(Chain.butterfly(256, radix=4)))
    assert cg.panel_passes(r4) == [(n, 1) for n in range(len(r4))]
    # two nesting (2,2) pairs with an odd factor between them
    sh = [(8, 2, 2, 1), (4, 2, 2, 2), (2, 2, 2, 4), (1, 2, 2, 8)]
    assert cg.panel_passes(sh) == [(0, 2), (2, 2)]
    assert cg.panel_passes([(8, 2, 2, 1), (8, 2, 2, 1), (4, 2, 2, 2)]) == [(0, 1), (1, 2)]


def test_panel_passes_fuse_narrowing_pairs_from_tiles_of_16_rows():
    """A nesting pair with more inputs than outputs fuses at tile widths of 16 and more
    (32 before change 30), with at most _FUSE_NONSQUARE_COEFS coefficients (change 23)."""
    pair = [(8, 2, 2, 1), (2, 2, 4, 2)]  # 8 inputs, 4 outputs, 16 + 16 coefficients
    assert cg.panel_passes(pair, 16) == cg.panel_passes(pair, 64) == [(0, 2)]
    assert cg.panel_passes(pair, 8) == cg.panel_passes(pair) == [(0, 1), (1, 1)]
    # VGG's last two factors: 16 + 32 coefficients
    assert cg.panel_passes([(4, 2, 4, 128), (1, 2, 4, 256)], 32) == [(0, 1), (1, 1)]
    # LeNet FC1's chain: (2,2,16)(1,2,32) fuses, then its square pair as before
    lenet = _shapes(NARROWING)
    assert cg.panel_passes(lenet, 32) == cg.panel_passes(lenet, 16) == [(0, 1), (1, 2),
                                                                         (3, 2)]
    assert cg.panel_passes(lenet, 8) == [(0, 1), (1, 1), (2, 1), (3, 2)]


@functools.lru_cache(maxsize=None)
def _compiled(src: str) -> dict:
    """The functions of a generated kernel module's source, compiled in memory (once per
    source in the session: the tests compare variants of one module across batches, and
    Numba compiles a function on its first call; the namespace is read, never changed).
    """
    ns: dict = {}
    exec(compile(src.replace("cache=True", "cache=False"), "<kernels>", "exec"), ns)
    return ns


def _tiles_product(rows_tiles, st, X: np.ndarray, W: int, m: int, xn: int) -> np.ndarray:
    """``rows_tiles`` of a generated module on all of ``X`` (``k x xn``, ``k`` rows in
    tiles of ``W``), with fresh scratch: the ``k x m`` product."""
    k = X.shape[0]
    Y = np.empty((k, m), X.dtype)
    rows_tiles(st.flat, X.reshape(-1), Y.reshape(-1), k, 0, (k + W - 1) // W,
               np.empty(st.F * W, X.dtype), np.empty(st.F * W, X.dtype), np.uint64(W), xn)
    return Y


def _function(src: str, name: str) -> str:
    """The source of the generated function ``name`` (to the next decorator)."""
    return src.split(f"def {name}(")[1].split("\n@njit")[0]


def _passes(src: str) -> str:
    """The source of the functions holding the chain's panel passes: ``chain_buf``, or
    the ``step_blocks`` and ``chain_rest`` it calls where row tiles gather in steps, or
    the ``chain_head`` and ``step_tail`` where they run their last passes in steps."""
    if "def step_blocks(" in src:
        return _function(src, "step_blocks") + _function(src, "chain_rest")
    if "def step_tail(" in src:
        head = _function(src, "chain_head") if "def chain_head(" in src else ""
        return head + _function(src, "step_tail")
    return _function(src, "chain_buf")


def test_fused_source_has_in_place_constant_width_loops():
    src = cg.generate_source(tuple(_shapes(BUTTERFLY_64)), 16)
    # three fused passes, each with a full-tile loop of constant trip count and a
    # partial-tile loop, all in place on ba
    body = _passes(src)
    assert body.count("if wr == _u16:") == 3
    assert body.count("for c_ in range(_u16):") == 3
    assert "bb[" not in body
    assert "RESULT_IN_A = True" in src
    # radix-4 factors are not fused, but each runs in place like a group of one
    src = cg.generate_source(tuple(_shapes(RADIX4_256)), 16)
    body = _passes(src)
    assert body.count("for c_ in range(_u16):") == 4 and "bb[" not in body


@pytest.mark.parametrize("text", [BUTTERFLY_64, MIXED, RADIX4_256, NARROWING],
                         ids=["butterfly64", "mixed", "radix4", "narrowing"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128],
                         ids=["float32", "float64", "complex128"])
@pytest.mark.usefixtures("codegen")
def test_fused_passes_match_dense(text, dtype):
    op = DeBut.random(text, seed=7, dtype=dtype, backend="numba")
    W = nbk.prepare(op.factors).W
    rng = np.random.default_rng(3)
    m, n = op.shape
    # full tiles, a partial tile, both layouts
    for k in (W, 2 * W + 3, W // 2 + 1):
        X = random_values(rng, (k, n), dtype)
        _check(op, op.matmat_rows(X), X, "rows", f"rows k={k}")
        Xc = random_values(rng, (n, k), dtype)
        _check(op, op.matmat(Xc), Xc, "cols", f"cols k={k}")
    # the adjoint chain (reversed, transposed factors) fuses the same pairs
    Z = random_values(rng, (m, W + 1), dtype)
    _check(op.H, op.rmatmat(Z), Z, "cols", "rmatmat")


@pytest.mark.parametrize("text, width", [(BUTTERFLY_64, None), (NARROWING, 32)],
                         ids=["square", "narrowing"])
@pytest.mark.usefixtures("codegen")
def test_fused_passes_bitwise_equal_to_unfused(monkeypatch, text, width):
    """Fusing changes where intermediate values live, not the arithmetic."""
    op = DeBut.random(text, seed=2, dtype=np.float64, backend="numba")
    st = nbk.prepare(op.factors)
    W = width or st.W
    k = 2 * W + 5
    X = np.random.default_rng(0).standard_normal((k, op.shape[1]))
    outs = []
    monkeypatch.setattr(cg, "_VEC_PANEL", False)  # its own "if wr ==" branches
    for fuse_max in (cg._FUSE_MAX, 1):
        monkeypatch.setattr(cg, "_FUSE_MAX", fuse_max)
        src = cg.generate_source(st.shapes, W)
        assert ("if wr ==" in src) == (fuse_max > 1)
        outs.append(_tiles_product(_compiled(src)["rows_tiles"], st, X, W, op.shape[0],
                                   op.shape[1]))
    np.testing.assert_array_equal(outs[0], outs[1])


# chains whose consecutive factors nest the other way round once transposed (their t
# shrink: adjoint products) or as written (the last pair of the fourth) (change 36)
BACK_NESTING = [BUTTERFLY_64, MIXED, NARROWING,
                "16 <-(2,2,2)- 16 <-(2,2,4)- 16 <-(2,2,1)- 16"]


def test_factors_nesting_the_other_way_round_fuse():
    a, b = (1, 2, 2, 32), (2, 2, 2, 16)  # a transposed butterfly's first two factors
    assert cg._nests_back(a, b) and not cg._nests(a, b)
    assert cg._nests(b[:3] + (1,), (1, 2, 2, 2)) and not cg._nests_back((2, 2, 2, 1), b)
    adj = nbk.prepare(DeBut.random(BUTTERFLY_64, seed=1).factors).adjoint("T")
    assert cg.panel_passes(adj.shapes, 16) == [(0, 2), (2, 2), (4, 2)]
    assert cg._backward_group(adj.shapes[:2]) and not cg._backward_group(adj.shapes[:1])
    # a chain with both: (2,2,1) alone (it nests neither way in (2,2,4)), then the pair
    # (2,2,4)(2,2,2) the other way round; the row tiles' step stops before that pair
    mixed = tuple(_shapes(BACK_NESTING[3]))
    assert cg.panel_passes(mixed, 16) == [(0, 1), (1, 2)]
    assert cg.step_plan(mixed, 16) == (64, (2,))


@pytest.mark.parametrize("text, dtype, W", [
    *[(t, np.float32, 16) for t in (BUTTERFLY_64, NARROWING, BACK_NESTING[3])],
    (MIXED, np.float64, 8),  # a group with fewer outputs, vector-code steps (group_mac)
    (BUTTERFLY_64, np.complex128, 16)])
def test_groups_nesting_the_other_way_round_bitwise_equal_to_unfused(monkeypatch, text,
                                                                     dtype, W):
    """Transposed chains (and the fourth as written): fused passes of factors nesting
    the other way round give the unfused passes' bits, and the dense product, in both
    layouts, on full and partial tiles."""
    op = DeBut.random(text, seed=8, dtype=dtype, backend="numba")
    st = nbk.prepare(op.factors)
    if text != BACK_NESTING[3]:
        st, D = st.adjoint("T"), op.to_dense().T
    else:
        D = op.to_dense()
    rng = np.random.default_rng(9)
    for k in (W, 2 * W + 3):
        X = random_values(rng, (k, st.Q), dtype)
        rows, cols = [], []
        for back in (True, False):
            monkeypatch.setattr(cg, "_FUSE_REVERSE", back)
            ns = _compiled(cg.generate_source(st.shapes, W))
            rows.append(_tiles_product(ns["rows_tiles"], st, X, W, st.P, st.Q))
            Xc = np.ascontiguousarray(X.T)
            Yc = np.empty((st.P, k), dtype)
            ns["cols_tiles"](st.flat, Xc.reshape(-1), Yc.reshape(-1), k, 0, (k + W - 1) // W,
                             np.empty(st.F * W, dtype), np.empty(st.F * W, dtype),
                             np.uint64(W), st.Q)
            cols.append(Yc)
        np.testing.assert_array_equal(rows[0], rows[1])
        np.testing.assert_array_equal(cols[0], cols[1])
        np.testing.assert_array_equal(cols[0], rows[0].T)
        ref = X.astype(np.complex128) @ D.T.astype(np.complex128)
        tol = 1e-4 if np.dtype(dtype).itemsize in (4, 8) and dtype != np.float64 else 1e-12
        np.testing.assert_allclose(rows[0], ref, rtol=tol, atol=tol * np.abs(ref).max())


# a narrowing pair fused in the step from 32 rows (change 23): (2,2,4)(2,4,8) after the
# in-place pair (2,2,1)(2,2,2)
NARROW_STEP = "128 <-(2,4,8)- 256 <-(2,2,4)- 256 <-(2,2,2)- 256 <-(2,2,1)- 256"
# VGG's shape of chain, smaller: a wide t = 1 factor (8,9,1), then (2,2,t) and a (2,4,t)
VGG_LIKE = "64 <-(2,4,32)- 128 <-(2,2,16)- 128 <-(2,2,8)- 128 <-(8,9,1)- 144"


# tails in steps (change 37): the last pass alone, 60 blocks in steps of 24 and 12 left
# (P = 180: 4 features a row left of the 8 x 8 scatter); the rest in transposed chains
TAIL_LAST = "180 <-(3,4,1)- 240 <-(3,2,4)- 160"
BUTTERFLY_256 = str(Chain.butterfly(256))


def test_tail_plans():
    """Which passes run in steps before the scatter: the last ones while each has a
    multiple of the blocks of the one before, their blocks span at most 64 outputs, and
    no pass writes more into the buffer of the step's input than the step reads; none
    for chains that gather in steps, whose last factor has t > 1, or on tiles that are
    not a multiple of 8 rows."""
    plan = cg.tail_plan
    bfly = tuple(nbk.prepare(DeBut.random(BUTTERFLY_256, seed=1).factors).adjoint("T").shapes)
    assert cg.panel_passes(bfly, 16) == [(0, 2), (2, 2), (4, 2), (6, 2)]
    assert plan(bfly, 16) == (1, 1, (64, 16, 4))  # 4 steps of the pass (1, 2, 2, 32)...
    assert plan(tuple(_shapes(BUTTERFLY_256)), 16) == (0, 0, ())  # forward: t > 1 last
    assert plan(bfly, 12) == (0, 0, ())
    # the first pass would leave the step's input for the last one's 180 outputs
    assert plan(tuple(_shapes(TAIL_LAST)), 16) == (1, 24, (3,))
    # a block of the last pass would read outputs of two blocks of the first
    assert plan(((2, 3, 2, 2), (3, 2, 4, 1)), 16) == (1, 3, (2,))
    # a block of 72 outputs: lcm(8, 72) = 72, within twice _STEP_MAX
    assert plan(((1, 4, 2, 32), (4, 2, 2, 16), (8, 2, 2, 8), (16, 9, 8, 1)), 8) == (
        1, 2, (36, 9))
    # LeNet's transposed chain: a block of 25 outputs (lcm(8, 25) = 200): none
    lenet_t = nbk.prepare(DeBut.random(NARROWING, seed=1).factors).adjoint("T").shapes
    assert plan(tuple(lenet_t), 32) == (0, 0, ())
    fwd = tuple(_shapes(MIXED))
    assert cg.step_plan(fwd, 16)[0] and plan(fwd, 16) == (0, 0, ())


def test_tail_steps_only_where_a_step_keeps_8_rows_per_l1_set():
    """Rows 4 KiB apart share an L1 set: the steps write all W rows of the tile at once,
    so they run only for item sizes that leave at most 8 rows a set (change 37)."""
    sizes = cg.tail_itemsizes
    assert sizes(4608, 16) == (4,) and sizes(4608, 8) == (4, 8, 16)  # VGG's transposed chain
    assert sizes(4096, 16) == () and sizes(4096, 8) == (4, 8, 16)  # the 4096 butterfly's
    assert sizes(2187, 32) == (4, 8, 16) and sizes(180, 16) == (4, 8, 16)
    bfly = tuple(nbk.prepare(DeBut.random(BUTTERFLY_256, seed=1).factors).adjoint("T").shapes)
    assert sizes(256, 16) == (4, 8)
    src = cg.generate_source(bfly, 16)
    assert "if w == _u16 and (out.itemsize == 4 or out.itemsize == 8):" in src
    assert "step_tail(" not in cg.generate_source(bfly, 64)  # 64 rows 1 KiB apart
    assert "if w == _u16:" in cg.generate_source(tuple(_shapes(TAIL_LAST)), 16)


@pytest.mark.parametrize("text, dtype, W, transposed", [
    (TAIL_LAST, np.float32, 16, False),
    (VGG_LIKE, np.float64, 8, True),  # a fused pair and the last factor, in 2 steps
    (BUTTERFLY_256, np.float32, 16, True),  # three in-place pairs, 4 steps
    (TAIL_LAST, np.complex128, 16, False)])
def test_tail_steps_same_bits(monkeypatch, text, dtype, W, transposed):
    """Full row tiles run the tail's passes in steps, each scattered at once (change
    37): bitwise the products of the whole tile's passes then its scatter, and the dense
    product, on full and partial tiles and inputs of fewer features."""
    op = DeBut.random(text, seed=11, dtype=dtype, backend="numba")
    st = nbk.prepare(op.factors)
    D = op.to_dense()
    if transposed:
        st, D = st.adjoint("T"), D.T
    assert cg.tail_plan(st.shapes, W)[1]
    kernels = []
    for on in (True, False):
        monkeypatch.setattr(cg, "_TAIL_STEPS", on)
        src = cg.generate_source(st.shapes, W)
        assert ("step_tail(" in src) == on
        kernels.append(_compiled(src)["rows_tiles"])
    rng = np.random.default_rng(12)
    for k, xn in ((W, st.Q), (2 * W + 3, st.Q), (W, st.Q - 3)):
        X = random_values(rng, (k, xn), dtype)
        outs = [_tiles_product(kern, st, X, W, st.P, xn) for kern in kernels]
        np.testing.assert_array_equal(outs[0], outs[1])
        ref = X.astype(np.complex128) @ D[:, :xn].T.astype(np.complex128)
        tol = 1e-4 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-12
        np.testing.assert_allclose(outs[0], ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_vector_steps_only_where_a_step_is_one_64_byte_vector():
    """Which passes get a vector-code step (changes 28 and 29): single-factor passes and
    fused passes whose loop runs over ``wr``, on tiles of at most 16 float32 rows, or in
    the 16-row parts of wider tiles; not the in-place passes' constant-width loops."""
    vgg, lenet = tuple(_shapes(VGG_LIKE)), tuple(_shapes(NARROWING))
    bfly, parts = tuple(_shapes(BUTTERFLY_64)), tuple(_shapes(NARROW_STEP))
    assert "panel_mac(" in cg.generate_source(vgg, 16)
    assert "group_mac(" not in cg.generate_source(bfly, 16)  # constant-width loops
    assert "group_mac(" in cg.generate_source(bfly, 8)
    for text in (lenet, vgg):
        src = cg.generate_source(text, 32)
        assert "panel_mac(" not in src and "group_mac(" not in src
    src = cg.generate_source(parts, 32)
    assert cg.step_parts(parts, 32) and "if wr == _u16 and group_mac(" in src
    assert "group_mac(" not in _function(src, "chain_rest")


@pytest.mark.parametrize("text, W, dtype, vec", [
    (VGG_LIKE, 16, np.float32, True), (VGG_LIKE, 8, np.float64, True),
    (VGG_LIKE, 16, np.complex128, True),
    ("64 <-(2,2,32)- 64 <-(2,2,16)- 64 <-(2,2,8)- 64 <-(2,2,4)- 64 <-(2,2,2)- 64 <-(2,2,1)- 64",
     8, np.float64, True),  # in-place pairs on 8-row tiles (no constant-width loop)
    (NARROW_STEP, 32, np.float32, True),  # the step in 16-row parts
    (NARROW_STEP, 32, np.complex64, True)],
    ids=["vgg-16-float32", "vgg-8-float64", "vgg-16-complex128", "butterfly-8-float64",
         "parts-32-float32", "parts-32-complex64"])
@pytest.mark.usefixtures("codegen")
def test_vector_steps_bitwise_equal_to_the_loops(monkeypatch, text, W, dtype, vec):
    """The panel passes' steps in vector code (``panel_mac``, ``group_mac``: changes 28
    and 29) give the loops' bits, in full and partial tiles; complex products, and
    float64 on 16-row tiles (128 bytes a feature), run the loops (the steps decline);
    tiles of 32 rows get vector steps only in their 16-row parts."""
    op = DeBut.random(text, seed=4, dtype=dtype, backend="numba")
    st = nbk.prepare(op.factors)
    rng = np.random.default_rng(W)
    ks = (W, 2 * W + 5)
    Xs = [random_values(rng, (k, op.shape[1]), dtype) for k in ks]
    outs = []
    for on in (True, False):
        monkeypatch.setattr(cg, "_VEC_PANEL", on)
        monkeypatch.setattr(cg, "_VEC_GROUP", on)
        src = cg.generate_source(st.shapes, W)
        assert ("panel_mac(" in src or "group_mac(" in src) == (on and vec)
        kernel = _compiled(src)["rows_tiles"]
        outs.append([_tiles_product(kernel, st, X, W, op.shape[0], op.shape[1])
                     for X in Xs])
    for k, X, a, b in zip(ks, Xs, *outs):
        np.testing.assert_array_equal(a, b)
        _check(op, a, X, "rows", f"rows k={k}")


GROUPS_OF_THREE = ["18 <-(6,4,3)- 12 <-(3,2,1)- 8", "36 <-(2,1,18)- 18 <-(9,2,1)- 4"]


@pytest.mark.parametrize("text", GROUPS_OF_THREE, ids=["r3-r6", "r9"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.usefixtures("codegen")
def test_groups_of_three_outputs_match_dense(text, dtype):
    """Factors with r = 3, 6, 9 compute three outputs per input row loaded (change 9)."""
    op = DeBut.random(text, seed=8, dtype=dtype, backend="numba")
    W = nbk.prepare(op.factors).W
    body = _passes(cg.generate_source(tuple(_shapes(text)), W))
    assert f"[o_ + _u{2 * W} + c_] =" in body  # the third output of a group
    rng = np.random.default_rng(4)
    m, n = op.shape
    for k in (W, W + 3):
        X = random_values(rng, (k, n), dtype)
        _check(op, op.matmat_rows(X), X, "rows", f"rows k={k}")
    Z = random_values(rng, (m, W + 1), dtype)
    _check(op.H, op.rmatmat(Z), Z, "cols", "rmatmat")


# Q = 52 input features (not a multiple of 8: the 8 x 8 gather leaves 4 per row) and
# P = 39 outputs; batches with full and partial 8-row groups and a partial tile
ODD_WIDTH = "39 <-(3,4,1)- 52"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128],
                         ids=["float32", "float64", "complex128"])  # transpose8's 3 paths
def test_gather_loop_orders_move_the_same_values(monkeypatch, dtype):
    """The row gather's 8 x 8 blocks run features outer (change 11): the same bits as
    rows outer, and the dense product, for odd feature counts and partial tiles.  (The
    gather of full tiles interleaved with the first factor, change 20, is tested below;
    here every tile gathers the whole tile first.)"""
    monkeypatch.setattr(cg, "_FUSE_GATHER", False)
    op = DeBut.random(ODD_WIDTH, seed=5, dtype=dtype, backend="numba")
    st = nbk.prepare(op.factors)
    W = st.W
    rng = np.random.default_rng(6)
    for k in (W, 2 * W + 3, W + 13):
        X = random_values(rng, (k, op.shape[1]), dtype)
        outs = []
        for outer in (True, False):
            monkeypatch.setattr(cg, "_GATHER_FEATURES_OUTER", outer)
            src = cg.generate_source(st.shapes, W)
            tiles = src.split("def rows_tiles(")[1].split("def cols_tiles(")[0]
            head = tiles.split("transpose8(X")[0]
            assert (head.rfind("for fb in range(") < head.rfind("for cb in range(")) == outer
            outs.append(_tiles_product(_compiled(src)["rows_tiles"], st, X, W,
                                       op.shape[0], op.shape[1]))
        np.testing.assert_array_equal(outs[0], outs[1])
        _check(op, outs[0], X, "rows", f"rows k={k}")


# chains whose first panel pass starts with a t = 1 factor, so full row tiles interleave
# the gather with it (change 20): whole steps of CF features and features left over (in
# 8 x 8 blocks and one by one), no step at all (Q < CF), nothing after the first pass, and
# first passes that are in-place groups (a fused pair, a radix-4 factor)
GROWS = ["16 <-(4,2,2)- 8 <-(2,2,1)- 8",  # the (4,2,2) pass would write into ba
         "256 <-(4,2,4)- 128 <-(2,2,2)- 128 <-(2,2,1)- 128",  # (4,2,4): into bb, two steps
         # narrows into bb, widens into ba, widens into bb: a later step's first pass
         # would write bb over the earlier steps' results there, so the third pass stays
         # out of the step
         "450 <-(5,2,10)- 180 <-(5,2,2)- 72 <-(2,5,1)- 180"]
FUSED_FIRST = [
    "80 <-(2,2,8)- 80 <-(8,9,1)- 90",  # s = 9: CF = 72, one step, 18 left (16 + 2)
    "272 <-(4,2,1)- 136",  # s = 2: CF = 64, two steps, 8 left; chain_rest has no pass
    *GROWS,
    ODD_WIDTH,  # Q = 52 < CF = 64: the features left only (48 + 4)
    MIXED,  # Q = 18: the same, then a fused pair and a (2,4,4) factor
    NARROW_STEP,  # (64-row float32 tiles: the step in 16-row parts, change 26)
    str(Chain.butterfly(256)),  # in-place pairs: steps of 64 through three of the four
    str(Chain.butterfly(64, radix=4)),  # in-place (4,4,t): one step of every pass
    "8 <-(2,4,4)- 16 <-(2,2,2)- 16 <-(2,2,1)- 16 <-(2,2,4)- 16 <-(4,2,2)- 8 <-(2,4,1)- 16",
]


def test_step_plan_of_chains():
    """Which passes run step by step, and on steps of how many features (change 20)."""
    assert cg.step_plan(_shapes(FUSED_FIRST[0]), 32) == (72, (9, 18))
    assert cg.step_plan(_shapes(FUSED_FIRST[1]), 16) == (64, (2,))
    assert cg.step_plan(_shapes(ODD_WIDTH), 32) == (64, (4,))
    # MIXED: the pair after (8,9,1) does not nest in it (t = 1, not 8)
    assert cg.step_plan(_shapes(MIXED), 32) == (72, (9,))
    # a narrowing pair fused from 16 rows (changes 23, 30) runs in the step as one pass
    assert cg.step_plan(_shapes(NARROW_STEP), 64) == (64, (4, 32))
    assert cg.step_plan(_shapes(NARROW_STEP), 16) == (64, (4, 32))
    assert cg.step_plan(_shapes(NARROW_STEP), 8) == (64, (4, 8, 32))
    # in-place groups: the butterfly's pairs (s s = 4 each), radix-4 (4,4,t) factors
    assert cg.step_plan(_shapes(BUTTERFLY_64), 32) == (64, (4, 16, 64))
    # ... up to blocks of _STEP_MAX = 64 input features
    assert cg.step_plan(_shapes(RADIX4_256), 32) == (64, (4, 16, 64))
    assert cg.step_plan(_shapes(str(Chain.butterfly(4096))), 16) == (64, (4, 16, 64))
    # odd spans: lcm(8, 27) = 216 is too long a step
    assert cg.step_plan(_shapes(str(Chain.butterfly(2187, radix=3))), 16) == (72, (3, 9))
    # a chain that grows: a pass writing more features into ba than the step gathered
    # stops the step (the next steps' input lies there), one writing them into bb not
    assert cg.step_plan(_shapes(GROWS[0]), 8) == (64, (2,))
    # ... unless the pair fuses (from 16 rows, change 30) into one pass writing bb
    assert cg.panel_passes(_shapes(GROWS[0]), 16) == [(0, 2)]
    assert cg.step_plan(_shapes(GROWS[0]), 16) == (64, (4,))
    assert cg.step_plan(_shapes(GROWS[1]), 16) == (64, (4, 8))
    # narrowing into bb, then widening into ba: in; widening further into bb: out (a
    # later step's first pass would write bb over the earlier steps' results there)
    assert cg.step_plan(_shapes(GROWS[2]), 16) == (80, (5, 10))
    grown = _shapes("64 <-(2,2,16)- " + GROWS[1].replace("256", "64", 1)
                    .replace("128", "32"))
    assert cg.step_plan(grown, 8) == (64, (4, 8))
    assert cg.step_plan(grown, 16) == (64, (4, 16))  # (4,2,4)(2,2,16) fused (change 30)
    assert cg.step_plan(_shapes("16 <-(2,2,4)- 16"), 32) == (0, ())  # t > 1 first
    assert cg.step_plan(_shapes(FUSED_FIRST[0]), 12) == (0, ())  # W not a multiple of 8


def test_steps_in_parts_of_16_rows_where_a_narrowing_pair_is_in_the_step():
    """Tiles wider than 16 rows gather and step in 16-row parts where the step holds a
    fused pass that is not in place (change 26)."""
    shapes = tuple(_shapes(NARROW_STEP))
    assert cg.step_parts(shapes, 32) and cg.step_parts(shapes, 64)
    assert not cg.step_parts(shapes, 16)  # one part
    src = cg.generate_source(shapes, 64)
    assert "step_blocks(V, ba[hc_:], bb[hc_:], _u16, fc_, fc_ + _u64)" in src
    # in-place groups only (the butterfly, radix-4), or no fused pass in the step
    for text in (BUTTERFLY_64, RADIX4_256, FUSED_FIRST[0]):
        assert not cg.step_parts(tuple(_shapes(text)), 64)
        assert "ba[hc_:]" not in cg.generate_source(tuple(_shapes(text)), 64)


def test_chain_buf_shares_the_stepped_passes():
    """Where row tiles gather in steps, chain_buf (partial tiles, the column layout) runs
    step_blocks over every input feature, then chain_rest: each pass is compiled once
    (the forward module of VGG compiled in 2.8 s instead of 3.7 s)."""
    shapes = tuple(_shapes(FUSED_FIRST[0]))
    body = _function(cg.generate_source(shapes, 32), "chain_buf")
    assert "step_blocks(V, ba, bb, wr, _u0, _u90)" in body and "chain_rest(" in body
    assert "for " not in body


# every chain in float32; transpose8's two other paths (float64, complex128) on the
# chain with a whole step and features left in 8 x 8 blocks and one by one (each case
# compiles two kernel modules: 3-10 s)
@pytest.mark.parametrize("text, dtype", [(t, np.float32) for t in FUSED_FIRST]
                         + [(FUSED_FIRST[0], np.float64), (FUSED_FIRST[0], np.complex128),
                            (NARROW_STEP, np.float64)],
                         ids=[f"float32-{i}" for i in range(len(FUSED_FIRST))]
                         + ["float64-0", "complex128-0", "float64-parts"])
def test_gather_fused_with_first_factor_same_bits(monkeypatch, text, dtype):
    """Full row tiles gather the input in steps and run the first factor on each step
    (change 20): bitwise the product of gathering the whole tile first, and the dense
    product, with full tiles, partial tiles and an input of fewer features."""
    op = DeBut.random(text, seed=7, dtype=dtype, backend="numba")
    st = nbk.prepare(op.factors)
    W = st.W
    m, n = op.shape
    kernels = []
    for fuse in (True, False):
        monkeypatch.setattr(cg, "_FUSE_GATHER", fuse)
        src = cg.generate_source(st.shapes, W)
        tiles = src.split("def rows_tiles(")[1].split("def cols_tiles(")[0]
        assert ("step_blocks(" in tiles) == fuse
        kernels.append(_compiled(src)["rows_tiles"])
    rng = np.random.default_rng(8)
    for k, xn in ((W, n), (2 * W + 3, n), (W + 5, n), (W, n - 1)):
        X = random_values(rng, (k, xn), dtype)
        outs = []
        for kern in kernels:
            outs.append(_tiles_product(kern, st, X, W, m, xn))
        np.testing.assert_array_equal(outs[0], outs[1])
        Xp = np.zeros((k, n), dtype)
        Xp[:, :xn] = X
        _check(op, outs[0], Xp, "rows", f"rows k={k} xn={xn}")
