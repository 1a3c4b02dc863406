"""The chain-specialised backward kernel (``debutla.backends._numba_backward``).

The torch layers' CPU backward runs it for chains of at least ``BACKWARD_MIN_NNZ``
values once it is compiled; the generic kernel of ``debutla.torch._kernels`` serves the
others and the calls before.  Both are checked against a float64 dense reference and
against each other; the test chains are small (``forced_backward`` lowers the size
threshold), so each compiles in a few seconds on an empty kernel cache.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import debutla as db  # noqa: E402
import debutla.backends.numba_ as nbk  # noqa: E402
from debutla import Chain, DeBut  # noqa: E402
from debutla.backends import _cache, _numba_backward, get_backend  # noqa: E402
from debutla.torch import DeButLinear, _kernels  # noqa: E402
from strategies import reference  # noqa: E402

# a wide t = 1 factor (r s >= 64: the wide panel micro-kernel, and r = 9 transposed),
# factors of r = 2 and r = 3 (value-gradient groups of 2 and 1), t > 1
WIDE = "16 <-(2,2,4)- 16 <-(1,2,2)- 32 <-(8,9,1)- 36"
# served as 11 x 29 (input padded, output cut), and bulging: 30 -> 36 -> 24 -> 12
PADDED = "12 <-(1,2,12)- 24 <-(2,3,4)- 36 <-(6,5,1)- 30"
CHAINS = {"wide": (WIDE, (16, 36)), "padded": (PADDED, (11, 29))}


@contextlib.contextmanager
def forced_backward() -> Iterator[None]:
    """Let every chain use the generated backward and the generated forward kernels."""
    saved = nbk.BACKWARD_MIN_NNZ, nbk.CODEGEN_MIN_NNZ, nbk.CODEGEN_MIN_WORK
    nbk.BACKWARD_MIN_NNZ = nbk.CODEGEN_MIN_NNZ = nbk.CODEGEN_MIN_WORK = 0
    try:
        yield
    finally:
        nbk.BACKWARD_MIN_NNZ, nbk.CODEGEN_MIN_NNZ, nbk.CODEGEN_MIN_WORK = saved


def _case(key: str, dt, batch: int, seed: int = 0):
    text, (m, n) = CHAINS[key]
    chain = Chain.parse(text)
    rng = np.random.default_rng(seed)
    vals = [rng.standard_normal(f.value_shape).astype(dt) for f in chain]
    op = DeBut(chain, vals, shape=(m, n), backend="numba")
    X = rng.standard_normal((batch, n)).astype(dt)
    G = rng.standard_normal((batch, m)).astype(dt)
    return chain, op, vals, X, G


def _dense_grads(op: DeBut, X, G):
    """Float64 reference: dL/dX = G D and each factor's value gradient by the chain rule."""
    D = reference(op)
    chain = op.chain
    m, n = op.shape
    P, Q = chain.shape
    Xp = np.zeros((X.shape[0], Q))
    Xp[:, :n] = X
    Gp = np.zeros((G.shape[0], P))
    Gp[:, :m] = G
    acts = [Xp.T]
    for f, v in zip(chain, op.factors):
        acts.append(_factor_dense(f, v) @ acts[-1])
    grads = []
    g = Gp.T
    for i in range(len(chain) - 1, -1, -1):
        f, v = chain[i], op.factors[i]
        nb, r, s, t = f.value_shape
        full = g @ acts[i].T  # (p, q): the gradient of every entry of the dense factor
        blocks = full.reshape(nb, r, t, nb, s, t)
        gv = np.empty((nb, r, s, t))
        for b in range(nb):
            for k in range(t):
                gv[b, :, :, k] = blocks[b, :, k, b, :, k]
        grads.append(gv)
        g = _factor_dense(f, v).T @ g
    return G.astype(np.float64) @ D, grads[::-1]


def _factor_dense(f, v) -> np.ndarray:
    nb, r, s, t = f.value_shape
    R = np.zeros((nb, r, t, nb, s, t))
    for b in range(nb):
        for k in range(t):
            R[b, :, k, b, :, k] = v[b, :, :, k]
    return R.reshape(nb * r * t, nb * s * t)


@pytest.mark.parametrize("key", sorted(CHAINS))
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [1, 21, 67])
def test_generated_backward_equals_dense_and_generic(key, dt, batch):
    chain, op, vals, X, G = _case(key, dt, batch)
    m, n = op.shape
    shapes = [f.value_shape for f in chain]
    state = op._state(get_backend("numba"), np.dtype(dt))
    with forced_backward(), db.config(background=False):
        gx, gv = _kernels.fused_backward(X, G, vals, shapes, n, m, True, state=state)
        assert nbk.BACKWARD in state.ready
        gx_nox, gv_nox = _kernels.fused_backward(X, G, vals, shapes, n, m, False,
                                                 state=state)
    gx0, gv0 = _kernels.fused_backward(X, G, vals, shapes, n, m, True)  # generic
    rx, rv = _dense_grads(op, X, G)
    tol = 1e-4 if dt == np.float32 else 1e-11
    assert gx.shape == (batch, n) and gx.dtype == dt and gx_nox is None
    scale = np.abs(rx).max()
    np.testing.assert_allclose(gx, rx, atol=tol * scale, rtol=0)
    np.testing.assert_allclose(gx0, rx, atol=tol * scale, rtol=0)
    for a, a_nox, a0, ref in zip(gv, gv_nox, gv0, rv):
        assert a.shape == ref.shape and a.dtype == dt
        np.testing.assert_allclose(a, ref, atol=tol * np.abs(ref).max(), rtol=0)
        np.testing.assert_allclose(a0, ref, atol=tol * np.abs(ref).max(), rtol=0)
        assert np.array_equal(a, a_nox)  # the input gradient changes nothing else


def test_background_compile_serves_the_generic_kernel_first(monkeypatch):
    chain, op, vals, X, G = _case("wide", np.float32, 40, seed=1)
    m, n = op.shape
    shapes = [f.value_shape for f in chain]
    state = op._state(get_backend("numba"), np.dtype(np.float32))
    state.ready.discard(nbk.BACKWARD)
    calls = []
    inner = nbk.run_backward
    main = threading.current_thread()

    def spy(*a):  # calls from this thread (the compile thread runs one on zeros)
        if threading.current_thread() is main:
            calls.append(1)
        return inner(*a)

    monkeypatch.setattr(nbk, "run_backward", spy)
    with forced_backward(), db.config(background=True):
        first = _kernels.fused_backward(X, G, vals, shapes, n, m, True, state=state)
        nbk.wait_for_compiles()
        assert calls == [] and nbk.BACKWARD in state.ready
        second = _kernels.fused_backward(X, G, vals, shapes, n, m, True, state=state)
    assert calls
    np.testing.assert_allclose(first[0], second[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(first[1], second[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_small_chains_keep_the_generic_backward():
    chain, op, vals, X, G = _case("wide", np.float64, 5)
    state = op._state(get_backend("numba"), np.dtype(np.float64))
    assert state.nnz < nbk.BACKWARD_MIN_NNZ
    assert not nbk.backward_ready(state, 5)
    with db.config(fused=False), forced_backward():  # the generic kernels only
        assert not nbk.backward_ready(state, 5)


@pytest.mark.parametrize("key, frozen_x", [("padded", False), ("padded", True),
                                           ("stepped", False)])
def test_layer_training_runs_the_generated_backward_bitwise_for_any_threads(
        monkeypatch, key, frozen_x):
    """A DeButLinear's gradients come from the generated kernel, equal the dense
    reference, and are the same bits with 1, 2 or 3 threads (groups, not threads);
    ``stepped``: a chain whose backward runs in steps and residue groups (two more
    scratch arrays per thread in the team's bodies)."""
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_kernels, "GROUP_MIN_WORK", 0)
    monkeypatch.setattr(_numba_backward, "_GROUP_MIN", 2)
    torch.manual_seed(0)
    if key == "stepped":
        shapes = STEPPED["shapes"][0]
        assert _numba_backward.step_plan(shapes)[0] and _numba_backward.group_plan(shapes)[0]
        chain = _chain_of(shapes)
        text, (m, n) = str(chain), (chain.shape[0] - 1, chain.shape[1] - 1)
    else:
        text, (m, n) = CHAINS[key]
    layer = DeButLinear(n, m, chain=text, bias=True, dtype=torch.float64)
    x = torch.randn(3 * 16 + 5, n, dtype=torch.float64)
    w = torch.randn(x.shape[0], m, dtype=torch.float64)
    calls = []
    inner = nbk.run_backward
    monkeypatch.setattr(nbk, "run_backward", lambda *a: calls.append(1) or inner(*a))
    results = {}
    old = torch.get_num_threads()
    try:
        with forced_backward(), db.config(background=False):
            for th in (1, 2, 3):
                torch.set_num_threads(th)
                layer.zero_grad()
                xr = x.clone().requires_grad_(not frozen_x)
                (layer(xr) * w).sum().backward()
                results[th] = ([] if frozen_x else [xr.grad]) + [
                    p.grad.clone() for p in layer.factors]
    finally:
        torch.set_num_threads(old)
    # 4 groups of 16-row tiles; one kernel call per thread's share of them
    assert len(_kernels.groups_of(x.shape[0], 16, Chain.parse(text).nnz)) == 5
    assert len(calls) > 3
    for th in (2, 3):
        for a, b in zip(results[1], results[th]):
            assert torch.equal(a, b), th
    op = DeBut(Chain.parse(text), [p.detach().numpy() for p in layer.factors], shape=(m, n))
    rx, rv = _dense_grads(op, x.numpy(), w.numpy())
    got = results[1]
    if not frozen_x:
        np.testing.assert_allclose(got[0].numpy(), rx, rtol=1e-10, atol=1e-10)
        got = got[1:]
    for a, ref in zip(got, rv):
        np.testing.assert_allclose(a.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_generated_source_names_the_chain_and_width():
    src = _numba_backward.generate_source(((2, 2, 2, 1), (1, 2, 2, 2)), 16)
    assert "def tiles_placed(" in src and "tile width W = 16" in src
    assert "[(2, 2, 2, 1), (1, 2, 2, 2)]" in src
    # one array per factor input, of the widest input; two gradient buffers
    assert _numba_backward.scratch_sizes(((2, 2, 2, 1), (1, 2, 2, 2)), 16) == (
        2, 4 * 16, 4 * 16)


# chains whose first factors run step by step (_numba_backward.step_plan), application
# order, with their step plan and residue-group plan (group_plan, with _GROUP_MIN = 2):
# every factor of the step in one whole step (and the last factor outside); a whole
# step and the features left (spans 3, 6, 12: 72 + 48 features); a widening then
# narrowing step smaller than one step (40 features); a wide (8, 9, 1) factor first;
# nine radix-2 factors (the last two by 4 residue groups of 32 classes); factors of
# other shapes after the step (a narrowing, a widening and a narrowing one) in residue
# groups, one group of both classes, and two groups of one with at most 6 features of
# a level per group
STEPPED = {
    "pow2": (((32, 2, 2, 1), (16, 2, 2, 2), (8, 2, 2, 4), (4, 2, 2, 8), (2, 2, 2, 16),
              (1, 2, 2, 32)), (64, (2, 4, 8, 16, 32)), (0, 0), {}),
    "rest": (((40, 2, 3, 1), (20, 2, 2, 2), (10, 2, 2, 4), (1, 5, 10, 8)), (72, (3, 6, 12)),
             (0, 0), {}),
    "grows": (((20, 3, 2, 1), (10, 1, 2, 3), (5, 2, 2, 3), (1, 4, 5, 6)), (64, (2, 4, 8)),
              (0, 0), {}),
    "wide": (((12, 8, 9, 1), (6, 2, 2, 8), (3, 2, 2, 16), (1, 2, 3, 32)), (72, (9, 18, 36)),
             (0, 0), {}),
    "groups": (tuple((256 >> n, 2, 2, 1 << n) for n in range(9)),
               (128, (2, 4, 8, 16, 32, 64, 128)), (128, 32), {}),
    "shapes": (((6, 2, 3, 1), (3, 2, 2, 2), (2, 2, 3, 2), (1, 3, 2, 4), (1, 5, 6, 2)),
               (66, (3, 6)), (2, 2), {}),
    "classes": (((6, 2, 3, 1), (3, 2, 2, 2), (2, 2, 3, 2), (1, 3, 2, 4), (1, 5, 6, 2)),
                (66, (3, 6)), (2, 1), {"_GROUP_ROWS": 6}),
}


def _chain_of(shapes) -> Chain:
    q = shapes[0][0] * shapes[0][2] * shapes[0][3]
    text = str(q)
    for nb, r, s, t in shapes:
        q = nb * r * t
        text = f"{q} <-({r},{s},{t})- " + text
    return Chain.parse(text)


@pytest.mark.parametrize("key, dt", [(key, np.float32) for key in sorted(STEPPED)] + [
    pytest.param(key, np.float64, marks=pytest.mark.slow) for key in ("rest", "classes")])
def test_stepped_backward_same_bits_as_whole_tiles(key, dt, monkeypatch):
    """The stepped backward, and the residue groups after the step, compute every
    gradient with the same arithmetic, in the same order, as the backward on whole
    tiles: the same bits, and the dense values."""
    shapes, plan, groups, consts = STEPPED[key]
    monkeypatch.setattr(_numba_backward, "_GROUP_MIN", 2)  # groups after two factors
    for name, value in consts.items():
        monkeypatch.setattr(_numba_backward, name, value)
    assert _numba_backward.step_plan(shapes) == plan
    assert _numba_backward.group_plan(shapes) == groups
    chain = _chain_of(shapes)
    assert [f.value_shape for f in chain] == list(shapes)
    P, Q = chain.shape
    m, n = P - 1, Q - 1  # served smaller: padded input, cut output
    rng = np.random.default_rng(7)
    vals = [rng.standard_normal(sh).astype(dt) for sh in shapes]
    op = DeBut(chain, vals, shape=(m, n), backend="numba")
    state = op._state(get_backend("numba"), np.dtype(dt))
    batch = 3 * state.bw_W + 5  # whole tiles and a partial one
    X = rng.standard_normal((batch, n)).astype(dt)
    G = rng.standard_normal((batch, m)).astype(dt)
    variants = [("whole", {"_STEP": False}), ("steps", {"_GROUPS": False}), ("both", {})]
    if not groups[0]:
        variants.pop()
    srcs = {}
    for label, switch in variants:
        for name in ("_STEP", "_GROUPS"):
            monkeypatch.setattr(_numba_backward, name, switch.get(name, True))
        src = _numba_backward.generate_source(tuple(shapes), state.bw_W)
        assert ("for st_ in range(" in src or "fs_ = " in src) == (label != "whole")
        assert ("for g_ in range(" in src) == (label == "both")
        srcs[label] = src
    monkeypatch.setattr(_numba_backward, "_STEP", True)
    monkeypatch.setattr(_numba_backward, "_GROUPS", True)
    _numba_backward.scratch_sizes.cache_clear()  # scratch for the stepped kernel
    out = {}
    with forced_backward(), db.config(background=False):
        _kernels.fused_backward(X, G, vals, shapes, n, m, True, state=state)
        assert nbk.BACKWARD in state.ready
        # the variant the switches choose is the module the layer just compiled: run
        # that one instead of compiling it again in memory (unless the layer took a
        # module of the same shapes that an earlier test made under other constants)
        prod = _numba_backward.generate_source(tuple(shapes), state.bw_W)
        assert prod in srcs.values()
        made = f"{_cache.KERNEL_PACKAGE}.{_cache._module_name('bw', prod)}"
        reuse = state._bmod.__name__.startswith(made)
        mods = {label: state._bmod if reuse and src == prod
                else _cache.uncached_module(src, "bw") for label, src in srcs.items()}
        for label in mods:
            for need_x in (True, False):
                state._bmod = mods[label]
                out[label, need_x] = _kernels.fused_backward(X, G, vals, shapes, n, m,
                                                             need_x, state=state)
    gx0, gv0 = out["whole", True]
    for label in mods:
        (gx, gv), (gx_nox, gv_nox) = out[label, True], out[label, False]
        assert np.array_equal(gx, gx0) and gx_nox is None
        for a, a0, a_nox in zip(gv, gv0, gv_nox):
            assert np.array_equal(a, a0) and np.array_equal(a, a_nox)
    rx, rv = _dense_grads(op, X, G)
    tol = 1e-4 if dt == np.float32 else 1e-11
    np.testing.assert_allclose(gx0, rx, atol=tol * np.abs(rx).max(), rtol=0)
    for a, ref in zip(gv0, rv):
        np.testing.assert_allclose(a, ref, atol=tol * np.abs(ref).max(), rtol=0)


def test_step_plan_of_chains():
    """Which factors run step by step: none when factor 0 has t > 1, when the second
    does not nest in the first, or when it is the chain's last; spans at most
    _STEP_MAX."""
    plan = _numba_backward.step_plan
    assert plan(((8, 2, 2, 2), (4, 2, 2, 4), (1, 2, 4, 8))) == (0, ())
    assert plan(((4, 8, 9, 1), (1, 2, 2, 2), (1, 2, 4, 4))) == (0, ())  # t = 2 != 8
    assert plan(((2, 2, 2, 1), (1, 2, 2, 2))) == (0, ())  # the last factor never joins
    assert plan(((2, 2, 130, 1), (1, 2, 2, 2), (1, 2, 2, 4))) == (0, ())  # 130 features
    butterfly = tuple((2048 >> n, 2, 2, 1 << n) for n in range(12))
    assert plan(butterfly) == (128, (2, 4, 8, 16, 32, 64, 128))
    radix4 = tuple((1024 >> 2 * n, 4, 4, 1 << 2 * n) for n in range(6))
    assert plan(radix4) == (64, (4, 16, 64))
    groups = _numba_backward.group_plan
    assert groups(butterfly) == (128, 4)  # five factors after the step, 32 rows a class
    assert groups(radix4) == (0, 0)  # three after it: fewer than _GROUP_MIN
    assert plan(((20, 2, 5, 1), (10, 2, 2, 2), (1, 2, 10, 4))) == (70, (5, 10))
    assert _numba_backward.scratch_sizes(butterfly, 32)[0] == 14  # 12 inputs + 2


def test_a_failing_cached_backward_module_is_forgotten_and_compiled_again(monkeypatch):
    """A cached module whose kernel fails (e.g. stale machine code) is dropped from the
    cache and the call is served by a module compiled in memory."""
    from debutla.backends import _cache

    chain, op, vals, X, G = _case("wide", np.float64, 9, seed=2)
    m, n = op.shape
    shapes = [f.value_shape for f in chain]
    state = op._state(get_backend("numba"), np.dtype(np.float64))
    with forced_backward(), db.config(background=False):
        expected = _kernels.fused_backward(X, G, vals, shapes, n, m, True, state=state)
    good = state.backward_module()

    class Stale:
        __name__ = good.__name__  # a cached module's name

        @staticmethod
        def tiles_placed(*args):
            raise RuntimeError("stale machine code")

    forgotten = []
    monkeypatch.setattr(_cache, "forget_cache_files", lambda mod, e: forgotten.append(e))
    monkeypatch.setattr(nbk._bw, "uncached_kernel_module", lambda shapes, W: good)
    state._bmod = Stale()
    with forced_backward():
        got = _kernels.fused_backward(X, G, vals, shapes, n, m, True, state=state)
    assert len(forgotten) == 1 and state._bmod is good
    assert np.array_equal(got[0], expected[0])
    for a, b in zip(got[1], expected[1]):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("background", [False, True])
def test_a_backward_that_fails_to_compile_leaves_the_generic_kernel(monkeypatch, caplog,
                                                                     background):
    """The gradients are still computed (generic kernel), a warning says why, and the
    chain's forward kernels stay in use."""
    import logging

    monkeypatch.setattr(nbk, "_BACKWARD_FAILED", set())

    def broken(shapes, W):
        raise RuntimeError("no compiler today")

    monkeypatch.setattr(nbk._bw, "kernel_module", broken)
    chain, op, vals, X, G = _case("padded", np.float32, 20, seed=3)
    m, n = op.shape
    shapes = [f.value_shape for f in chain]
    state = op._state(get_backend("numba"), np.dtype(np.float32))
    state.ready.discard(nbk.BACKWARD)
    expected = _kernels.fused_backward(X, G, vals, shapes, n, m, True)  # generic
    with caplog.at_level(logging.WARNING, logger="debutla"), forced_backward(), \
            db.config(background=background):
        for _ in range(2):
            got = _kernels.fused_backward(X, G, vals, shapes, n, m, True, state=state)
            nbk.wait_for_compiles()
            assert np.array_equal(got[0], expected[0])
            for a, b in zip(got[1], expected[1]):
                assert np.array_equal(a, b)
        assert not nbk.backward_ready(state, 20)
    msgs = [r.getMessage() for r in caplog.records if "backward kernel failed" in r.message]
    assert len(msgs) == 1 and "no compiler today" in msgs[0]
    assert not state.broken and nbk.BACKWARD not in state.ready


def test_fused_backward_takes_the_states_values_or_needs_them():
    """Without factors and shapes the state's own values serve (the generic kernel
    here: a chain below BACKWARD_MIN_NNZ); without a state they are needed."""
    key = sorted(CHAINS)[0]
    chain, op, vals, X, G = _case(key, np.float64, 21)
    m, n = op.shape
    shapes = [f.value_shape for f in chain]
    state = op._state(get_backend("numba"), np.dtype(np.float64))
    gx, gv = _kernels.fused_backward(X, G, vals, shapes, n, m, True)
    gx2, gv2 = _kernels.fused_backward(X, G, None, None, n, m, True, state=state)
    np.testing.assert_array_equal(gx, gx2)
    for a, b in zip(gv, gv2):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="factors and shapes are needed"):
        _kernels.fused_backward(X, G, None, None, n, m, True)
