"""The rows products' epilogue (debutla.backends.numba_.RowsEpilogue): the torch layers'
bias, added by the threads that computed each part of the output."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import debutla as db
from codegen import padded_operator
from debutla.backends import numba_ as nbk

CHAIN = db.PAPER_CHAINS["lenet_fc1_mono2"]  # 128 x 400, compiled by other tests too


def _counting(bias, rows: list, lock):
    def fn(part):
        with lock:
            rows.append(part.shape[0])
        np.add(part, bias, out=part)
    return nbk.RowsEpilogue(fn)


@pytest.mark.parametrize("batch, threads", [(1, 1), (2, 1), (37, 1), (300, 1), (300, 2),
                                            (1000, 2)])
@pytest.mark.parametrize("pool", ["debutla", "openmp"])
def test_every_row_gets_the_epilogue_exactly_once(monkeypatch, batch, threads, pool):
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)  # split whatever the size
    op = db.DeBut.random(CHAIN, seed=0, dtype=np.float32)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 400)).astype(np.float32)
    bias = rng.standard_normal(128).astype(np.float32)
    with db.config(background=False, threads=1):
        ref = op.matmat_rows(x) + bias
    rows: list = []
    ep = _counting(bias, rows, threading.Lock())
    y = np.empty((batch, 128), np.float32)
    with db.config(background=False, threads=threads, pool=pool), nbk.rows_epilogue(ep):
        op.matmat_rows(x, out=y)
    assert ep.applied and sum(rows) == batch
    np.testing.assert_array_equal(y, ref)


def test_the_generic_kernel_leaves_it_to_the_caller():
    op = db.DeBut.random(CHAIN, seed=0)
    ep = nbk.RowsEpilogue(lambda part: pytest.fail("the generic kernel ran the epilogue"))
    with db.config(fused=False), nbk.rows_epilogue(ep):
        op.matmat_rows(np.ones((64, 400)))
    assert not ep.applied


def test_the_epilogue_is_only_for_its_block_and_never_for_adjoints():
    op = db.DeBut.random(CHAIN, seed=0)
    ep = nbk.RowsEpilogue(lambda part: pytest.fail("ran outside its product"))
    with db.config(background=False), nbk.rows_epilogue(ep):
        op.T.matmat_rows(np.ones((64, 128)))  # an adjoint product (transposed kernel)
        op.matmat(np.ones((400, 64)))  # the columns layout
    assert nbk._EPILOGUE.get() is None
    with db.config(background=False):
        op.matmat_rows(np.ones((64, 400)))  # after the block: nothing


def test_a_compile_inside_the_block_does_not_apply_it_to_its_product_on_zeros(
        monkeypatch):
    """The first product of a new state compiles (or loads) its kernel and runs it on
    zeros; only the caller's product gets the epilogue."""
    monkeypatch.setattr(nbk, "CODEGEN_MIN_NNZ", 0)  # this small chain's own kernel
    monkeypatch.setattr(nbk, "CODEGEN_MIN_WORK", 0)
    monkeypatch.setattr(nbk, "_READY", {})  # as if no state of the chain had run before
    compiled = []
    real = nbk._compile
    monkeypatch.setattr(nbk, "_compile", lambda *a: compiled.append(a[1]) or real(*a))
    op = db.DeBut.random("12 <-(3,2,2)- 8 <-(2,2,1)- 8", seed=5)
    rows: list = []
    ep = _counting(np.ones(12), rows, threading.Lock())
    y = np.empty((40, 12))
    with db.config(background=False), nbk.rows_epilogue(ep):
        op.matmat_rows(np.ones((40, 8)), out=y)
    assert compiled and ep.applied and rows == [40]
    with db.config(fused=False):
        ref = op.matmat_rows(np.ones((40, 8))) + 1.0
    np.testing.assert_allclose(y, ref, rtol=1e-14)


def test_a_padded_chain_gives_parts_of_p_columns_the_outputs_first(monkeypatch):
    monkeypatch.setattr(nbk, "CODEGEN_MIN_NNZ", 0)
    monkeypatch.setattr(nbk, "CODEGEN_MIN_WORK", 0)
    op = padded_operator()  # m < P, n < Q
    x = np.random.default_rng(0).standard_normal((40, 7))
    bias = np.arange(11.0)
    widths = []

    def fn(part):
        widths.append(part.shape[1])
        np.add(part[:, :11], bias, out=part[:, :11])
    ep = nbk.RowsEpilogue(fn)
    with db.config(background=False), nbk.rows_epilogue(ep):
        y = op.matmat_rows(x)
    assert ep.applied and set(widths) == {12}
    with db.config(fused=False):
        np.testing.assert_allclose(y, op.matmat_rows(x) + bias, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("threads, split", [(1, False), (2, False), (2, True)])
def test_the_torch_layer_adds_its_bias_in_split_products_only(monkeypatch, threads, split):
    torch = pytest.importorskip("torch")
    from debutla.torch import DeButLinear

    if split:
        monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    made = []
    real = nbk.RowsEpilogue.adding.__func__

    def spy(cls, b):
        made.append(1)
        return real(cls, b)
    monkeypatch.setattr(nbk.RowsEpilogue, "adding", classmethod(spy))
    torch.manual_seed(0)
    layer = DeButLinear(400, 128, chain=CHAIN)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(300, 400)
    with db.config(threads=threads, background=False), torch.no_grad():
        y = layer(x)
        ref = layer.to_dense()(x)
    assert bool(made) == split  # one thread, or a product too small to split: no epilogue
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
