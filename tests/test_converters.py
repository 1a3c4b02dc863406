"""Tests of the converters to and from lazylinop and the DeBut authors' format."""

from __future__ import annotations

import doctest
import importlib
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from debutla import Chain, DeBut
from debutla.interop.debut_authors import from_debut_authors, to_debut_authors
from strategies import DTYPE_IDS, DTYPES, chains, factor_dense, operators

WIDE = "4 <-(2,3,2)- 6 <-(2,2,1)- 6 <-(1,2,1)- 12"


def assert_same_operator(a: DeBut, b: DeBut) -> None:
    assert a.chain == b.chain and a.shape == b.shape and a.dtype == b.dtype
    for u, v in zip(a.factors, b.factors, strict=True):
        assert u.shape == v.shape and np.array_equal(u, v)


def run_doctests(name: str) -> None:
    mod = importlib.import_module(name)
    extra = {"np": np, **{k: getattr(mod, k) for k in dir(mod) if not k.startswith("__")}}
    res = doctest.testmod(mod, extraglobs=extra, optionflags=doctest.ELLIPSIS
                          | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.attempted > 0 and res.failed == 0


# ---------------------------------------------------------------------------------------
# the DeBut authors' R_shapes + flat parameters (pure NumPy: always run)
# ---------------------------------------------------------------------------------------

def test_authors_docstring_examples_run():
    run_doctests("debutla.interop.debut_authors")


@given(st.sampled_from(DTYPES).flatmap(operators))
def test_authors_format_round_trips(op):
    rows, params = to_debut_authors(op)
    assert rows == op.chain.to_pqrst()
    assert params.ndim == 1 and params.size == op.chain.nnz and params.dtype == op.dtype
    back = from_debut_authors(rows, params, shape=op.shape)
    assert_same_operator(back, op)
    back = from_debut_authors(np.array(rows, dtype=np.int64), list(params), shape=op.shape,
                              dtype=op.dtype)
    assert_same_operator(back, op)


@given(chains(max_factors=4))
@settings(max_examples=15)
def test_authors_layout_is_nb_t_r_s_per_factor(c):
    # build the flat vector from the authors' per-factor tensors W[b, k, i, j] (nb, t, r,
    # s) and check every value lands where DESIGN.md's canonical layout puts V[b, i, j, k]
    rng = np.random.default_rng(0)
    tensors = [rng.standard_normal((f.nb, f.t, f.r, f.s)) for f in c]
    op = from_debut_authors(c.to_pqrst(), np.concatenate([W.ravel() for W in tensors]))
    for spec, W, V in zip(c, tensors, op.factors):
        for b in range(spec.nb):
            for k in range(spec.t):
                for i in range(spec.r):
                    for j in range(spec.s):
                        assert V[b, i, j, k] == W[b, k, i, j]
    dense = None
    for spec, V in zip(c, op.factors):
        F = factor_dense(spec, V)
        dense = F if dense is None else F @ dense
    np.testing.assert_allclose(op.to_dense(), dense, rtol=1e-12, atol=1e-12)


def test_authors_lenet_rows_give_the_paper_chain():
    rows = [(64, 128, 2, 4, 1), (64, 64, 2, 2, 2), (64, 64, 2, 2, 4),
            (64, 64, 2, 2, 8), (64, 64, 2, 2, 16), (64, 64, 2, 2, 32)]
    op = from_debut_authors(rows, np.ones(sum(p * s for p, _, _, s, _ in rows)))
    assert str(op.chain) == ("64 <-(2,2,32)- 64 <-(2,2,16)- 64 <-(2,2,8)- 64 <-(2,2,4)- "
                             "64 <-(2,2,2)- 64 <-(2,4,1)- 128")


@pytest.mark.parametrize("rows, params, exc, words", [
    ([(4, 4, 2, 2, 1)], np.ones(7), ValueError, ["has 8 values", "params has 7"]),
    ([(4, 4, 2, 2, 1)], np.ones((2, 4)), ValueError, ["flat (1-D)", "(2, 4)"]),
    ([(4, 4, 2, 2, 1)], np.array(["a"] * 8), TypeError, ["numeric"]),
    ([(4, 4, 3, 2, 1)], np.ones(8), ValueError, ["factor 0", "multiple of r*t"]),
    ([(4, 4, 2, 2, 1), (8, 8, 2, 2, 1)], np.ones(24), ValueError, ["do not chain"]),
    ([(4, 4, 2, 2)], np.ones(8), ValueError, ["5 numbers"]),
])
def test_authors_bad_input_is_refused(rows, params, exc, words):
    with pytest.raises(exc) as e:
        from_debut_authors(rows, params)
    for w in words:
        assert w in str(e.value)


def test_to_authors_refuses_non_operators():
    with pytest.raises(TypeError, match="DeBut operator"):
        to_debut_authors(np.eye(4))


# ---------------------------------------------------------------------------------------
# lazylinop (skipped when it is not installed)
# ---------------------------------------------------------------------------------------

def test_lazylinop_converters_say_how_to_install_it(monkeypatch):
    from debutla.interop import lazylinop as conv

    monkeypatch.setitem(sys.modules, "lazylinop", None)
    monkeypatch.setitem(sys.modules, "lazylinop.butterfly", None)
    with pytest.raises(ImportError, match="pip install lazylinop"):
        conv.to_lazylinop(DeBut.random(WIDE, seed=0))
    with pytest.raises(ImportError, match="pip install lazylinop"):
        conv.chain_to_lazylinop(Chain.parse(WIDE))


class TestLazylinop:
    @pytest.fixture(autouse=True)
    def lb(self):
        return pytest.importorskip("lazylinop.butterfly")

    def test_docstring_examples_run(self):
        run_doctests("debutla.interop.lazylinop")

    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
    def test_round_trip_and_same_matrix(self, dtype):
        from debutla.interop.lazylinop import from_lazylinop, to_lazylinop

        op = DeBut.random(WIDE, seed=1, dtype=dtype)
        L = to_lazylinop(op)
        assert L.shape == op.shape
        assert [tuple(v.shape) for v in L.ks_values] == op.chain.to_ks()
        np.testing.assert_allclose(L.toarray(), op.to_dense(), rtol=1e-5, atol=1e-6)
        x = np.arange(12, dtype=np.float64)
        np.testing.assert_allclose(L @ x, op @ x, rtol=1e-5, atol=1e-5)
        assert_same_operator(from_lazylinop(L), op)

    @given(op=st.sampled_from([np.float64, np.complex128]).flatmap(operators))
    @settings(max_examples=15)
    def test_random_operators_round_trip(self, op):
        from debutla.interop.lazylinop import from_lazylinop, to_lazylinop

        L = to_lazylinop(op)
        np.testing.assert_allclose(L.toarray(), op.to_dense(), rtol=1e-12, atol=1e-12)
        if op.shape == op.chain.shape:
            assert_same_operator(from_lazylinop(L), op)

    def test_padded_operators_are_cut_and_come_back_with_shape(self):
        from debutla.interop.lazylinop import from_lazylinop, to_lazylinop

        op = DeBut.random(WIDE, seed=2, shape=(3, 10))
        L = to_lazylinop(op)
        assert L.shape == (3, 10)
        np.testing.assert_allclose(L.toarray(), op.to_dense(), rtol=1e-12, atol=1e-12)
        with pytest.raises(TypeError, match="KsmLazyLinOp"):
            from_lazylinop(L)  # a cut operator has lost its factors
        full = to_lazylinop(DeBut(op.chain, op.factors))
        assert_same_operator(from_lazylinop(full, shape=(3, 10)), op)

    def test_values_built_by_lazylinop_become_our_factors(self, lb):
        from debutla.interop.lazylinop import from_lazylinop

        rng = np.random.default_rng(3)
        pats = [(1, 2, 2, 4), (2, 2, 2, 2), (4, 2, 2, 1)]  # the 8-point butterfly
        vals = [rng.standard_normal(p) for p in pats]
        op = from_lazylinop(lb.ksm(vals))
        assert op.chain == Chain.butterfly(8)
        np.testing.assert_allclose(op.to_dense(), lb.ksm(vals).toarray(), rtol=1e-12)

    def test_chains_round_trip(self, lb):
        from debutla.interop.lazylinop import chain_from_lazylinop, chain_to_lazylinop

        for text in (WIDE, "16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72"):
            c = Chain.parse(text)
            lc = chain_to_lazylinop(c)
            assert tuple(lc.ks_patterns) == tuple(c.to_ks()) and lc.shape == c.shape
            assert chain_from_lazylinop(lc) == c

    def test_wrong_kinds_are_type_errors(self):
        from debutla.interop import lazylinop as conv

        with pytest.raises(TypeError, match="DeBut operator"):
            conv.to_lazylinop(np.eye(4))
        with pytest.raises(TypeError, match="KsmLazyLinOp"):
            conv.from_lazylinop(np.eye(4))
        with pytest.raises(TypeError, match="debutla Chain"):
            conv.chain_to_lazylinop("4 <-(2,2,1)- 4")
        with pytest.raises(TypeError, match="lazylinop.butterfly.Chain"):
            conv.chain_from_lazylinop([(1, 2, 2, 1)])
