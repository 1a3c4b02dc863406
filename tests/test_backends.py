"""CPU backends (NumPy reference and Numba) agree with an independent dense reference.

Every product is checked entrywise against the dense matrix built from the canonical
layout formula (``tests/strategies.py``) with the forward error bound of a product of
matrices, so one test covers both backends to dtype tolerance.

The Numba backend has three kinds of kernels: generated fused kernels (one row at a
time, tiles of rows, tiles of columns), and a precompiled generic factor-by-factor
kernel that serves small chains (fewer than ``CODEGEN_MIN_NNZ`` values) and chains too
wide to fuse.  Random hypothesis chains are small, so they exercise the generic kernel;
the generated kernels are exercised on fixed chains chosen to reach every code path of
the generator (``t = 1`` with ``r >= 4``, ``s > 8`` sums, partial tiles, padding), with
code generation forced, and on a few random chains.  Generated kernels cost 1-3 s each
to compile the first time; they are then cached on disk.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import debutla.backends.numba_ as nbk
from debutla import DeBut
from debutla._config import config
from debutla.backends import Backend, get_backend

from codegen import forced_codegen
from strategies import (DTYPES, DTYPE_IDS, assert_product_close, chains, error_depth,
                        operators, random_values, reference)

BACKENDS = ("numpy", "numba")

# t = 1 with r = 4 (transposed per-row layout), s = 9 (looped j-sum), t = 4, not dense
CHAIN_A = "24 <-(3,2,4)- 16 <-(4,9,1)- 36"
# LeNet CONV2 mono1 from the paper: dense, r = 1 factor, t up to 8
CHAIN_B = "16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72"
# wide t = 1 factors (r s >= 64, the panel micro-kernel): (6,13,1) sums in passes of
# 5 + 5 + 3 (one looped), groups of 2 outputs; its adjoint (13,6,1) groups of 1;
# (8,9,1) passes of 5 + 4, groups of 4
CHAIN_C = "16 <-(8,9,1)- 18 <-(3,2,2)- 12 <-(6,13,1)- 26"


def _check(op: DeBut, got, X, layout: str, what: str) -> None:
    """``got`` equals ``op @ X`` (layout "cols") or ``X @ op.T`` ("rows")."""
    ref = reference(op)
    bound_m = reference(op, absolute=True)
    Xw = X.astype(np.complex128 if np.iscomplexobj(X) else np.float64)
    if layout == "cols":
        exp, bound = ref @ Xw, bound_m @ np.abs(Xw)
    else:
        exp, bound = Xw @ ref.T, np.abs(Xw) @ bound_m.T
    assert_product_close(got, exp, bound, op.dtype, error_depth(op.chain), what)


def _all_products(op: DeBut, rng, ks, use_out: bool, adjoint_ks: bool = True) -> None:
    """Matvec, both layouts, adjoints via ``op.H`` and ``op.T``, with and without ``out``.

    With ``adjoint_ks`` false the adjoint is checked by ``rmatvec`` only (fewer kernels
    to compile for the generated-kernel tests).
    """
    m, n = op.shape
    dt = op.dtype
    x = random_values(rng, (n,), dt)
    y = op.matvec(x) if not use_out else op.matvec(x, out=np.empty(m, dt))
    _check(op, y[:, None], x[:, None], "cols", "matvec")
    for k in ks:
        Xc = random_values(rng, (n, k), dt)
        out = np.full((m, k), np.nan, dt) if use_out else None
        Y = op.matmat(Xc, out=out)
        if use_out:
            assert Y is out
        _check(op, Y, Xc, "cols", f"matmat k={k}")
        Xr = random_values(rng, (k, n), dt)
        out = np.full((k, m), np.nan, dt) if use_out else None
        Y = op.matmat_rows(Xr, out=out)
        if use_out:
            assert Y is out
        _check(op, Y, Xr, "rows", f"matmat_rows k={k}")
        if not adjoint_ks:
            continue
        # adjoint: D^H Z for Z (m, k), and Z^T conj(D) = (D^H Z)^T in the row layout
        Z = random_values(rng, (m, k), dt)
        H = op.H
        _check(H, op.rmatmat(Z), Z, "cols", f"rmatmat k={k}")
        _check(H, Z.T @ H.T, Z.T, "rows", f"rows adjoint k={k}")
    z = random_values(rng, (m,), dt)
    _check(op.H, op.rmatvec(z)[:, None], z[:, None], "cols", "rmatvec")


# -- random chains (generic kernel for numba) ----------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_random_chains_match_dense(backend, data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    op = data.draw(operators(dtype), label="op").with_backend(backend)
    ks = data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=2), label="ks")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    _all_products(op, rng, ks, use_out=data.draw(st.booleans(), label="out"))


# -- generated fused kernels ------------------------------------------------------------
@contextlib.contextmanager
def _forced_codegen():
    """Generated kernels for every chain, compiled in the calling thread (no background
    compile: every product runs on the kernel under test)."""
    with forced_codegen(), config(background=False):
        yield


@pytest.fixture
def codegen():
    """Force generated kernels for every chain, whatever its size."""
    with _forced_codegen():
        yield


def _tile_width(op: DeBut) -> int:
    return nbk.prepare(op.factors).W


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_fused_kernels_chain_a(codegen, dtype):
    op = DeBut.random(CHAIN_A, seed=3, dtype=dtype, backend="numba")
    W = _tile_width(op)
    # 1, 3 rows: one row at a time; W + 5: a full and a partial tile
    _all_products(op, np.random.default_rng(0), (1, 3, W + 5), use_out=True,
                  adjoint_ks=dtype == np.complex128)


@pytest.mark.parametrize("dtype", [np.float32, np.complex128], ids=["float32", "complex128"])
def test_fused_kernels_wide_t1_factors(codegen, dtype):
    op = DeBut.random(CHAIN_C, seed=5, dtype=dtype, backend="numba")
    W = _tile_width(op)
    _all_products(op, np.random.default_rng(2), (1, W + 5), use_out=True,
                  adjoint_ks=dtype == np.complex128)


def test_fused_kernels_dense_chain_padded(codegen):
    op = DeBut.random(CHAIN_B, seed=4, dtype=np.float32, shape=(15, 70), backend="numba")
    W = _tile_width(op)
    _all_products(op, np.random.default_rng(1), (2, 2 * W), use_out=False, adjoint_ks=False)


@settings(max_examples=2)
@given(op=operators(np.float64, chains(1, 4)), k=st.integers(1, 20))
def test_fused_kernels_random_chains(op, k):
    with _forced_codegen():
        _all_products(op.with_backend("numba"), np.random.default_rng(k), (k,),
                      use_out=False, adjoint_ks=False)


@pytest.mark.slow
@settings(max_examples=20)
@given(data=st.data())
def test_fused_kernels_random_chains_long(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    op = data.draw(operators(dtype), label="op").with_backend("numba")
    k = data.draw(st.integers(1, 70), label="k")
    with _forced_codegen():
        _all_products(op, np.random.default_rng(k), (k,), use_out=data.draw(st.booleans()))


# -- fallback, threads, out, edge cases ---------------------------------------------------
@pytest.fixture
def unfused():
    with config(fused=False):
        yield


@pytest.fixture
def threaded(monkeypatch):
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    with config(threads=2):
        yield


@pytest.mark.parametrize("dtype", [np.float32, np.complex64], ids=["float32", "complex64"])
def test_factor_by_factor_fallback(unfused, dtype):
    op = DeBut.random(CHAIN_B, seed=5, dtype=dtype, shape=(16, 70), backend="numba")
    _all_products(op, np.random.default_rng(2), (1, 5, 33), use_out=True)


def test_chain_too_wide_to_fuse_uses_factor_by_factor(monkeypatch, codegen):
    monkeypatch.setattr(nbk, "FUSED_BYTES", 64)  # no tile fits: every chain is "too wide"
    op = DeBut.random(CHAIN_A, seed=10, dtype=np.float64, backend="numba")
    assert not nbk.prepare(op.factors).fused
    _all_products(op, np.random.default_rng(8), (1, 9), use_out=True)


def test_threads_split_generic_and_fused(threaded, codegen):
    op = DeBut.random(CHAIN_A, seed=6, dtype=np.float64, backend="numba")
    W = _tile_width(op)
    _all_products(op, np.random.default_rng(3), (3, 4 * W + 1), use_out=True)
    with config(fused=False):
        _all_products(op, np.random.default_rng(4), (7,), use_out=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_inputs_and_empty_batch(backend):
    op = DeBut.random(CHAIN_B, seed=7, dtype=np.float64, backend=backend)
    rng = np.random.default_rng(5)
    big = rng.standard_normal((72, 20))
    X = big[:, ::2]  # strided columns
    _check(op, op @ X, X, "cols", "strided matmat")
    _check(op, op.matmat_rows(X.T), X.T, "rows", "transposed matmat_rows")
    assert op.matmat(np.zeros((72, 0))).shape == (16, 0)
    assert op.matmat_rows(np.zeros((0, 72))).shape == (0, 16)


def test_numba_result_does_not_alias_input_when_out_is_input():
    # a square one-factor chain written in place: the kernel must not read what it wrote
    op = DeBut.random("8 <-(2,2,2)- 8", seed=8, backend="numba")
    X = np.random.default_rng(6).standard_normal((3, 8))
    expected = X @ reference(op).T
    Y = op.matmat_rows(X, out=X)
    assert Y is X
    np.testing.assert_allclose(X, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_out_is_refused(backend):
    op = DeBut.random(CHAIN_A, seed=11, backend=backend)
    out = np.zeros((2, 24))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only|writeable|not writeable"):
        op.matmat_rows(np.ones((2, 36)), out=out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("trans", ["N", "T", "H"])
def test_backend_contract_direct_calls(backend, trans):
    """Every backend satisfies the Protocol; apply_* with padding (n < q), out and trans."""
    b = get_backend(backend)
    assert isinstance(b, Backend) and b.name == backend and b.xp is np
    op = DeBut.random(CHAIN_A, seed=9, dtype=np.complex128)  # 24 x 36
    D = reference(op)
    M = {"N": D, "T": D.T, "H": D.conj().T}[trans]
    state = b.prepare(op.factors)
    p, q = M.shape
    rng = np.random.default_rng(7)
    n = q - 3  # three missing features: zeros
    X = random_values(rng, (n, 4), np.complex128)
    out = np.empty((p, 4), np.complex128)
    assert b.apply_cols(state, X, out, trans) is out
    np.testing.assert_allclose(out, M[:, :n] @ X, rtol=1e-12, atol=1e-12)
    Y = b.apply_rows(state, np.ascontiguousarray(X.T), None, trans)
    np.testing.assert_allclose(Y, X.T @ M[:, :n].T, rtol=1e-12, atol=1e-12)


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="threads must be a positive"):
        with config(threads=0):
            pass
    with pytest.raises(TypeError, match="threads must be an integer"):
        with config(threads=1.5):
            pass
    with pytest.raises(TypeError, match="fused must be True or False"):
        with config(fused=1):
            pass
    with pytest.raises(ValueError, match="at least one"):
        nbk.prepare(())
    with config(threads=3):
        assert nbk.get_num_threads() == 3
    assert nbk.get_num_threads() >= 1


def test_deprecated_global_toggles_still_work():
    from debutla import _config

    with pytest.warns(DeprecationWarning, match="config"):
        nbk.set_num_threads(3)
    try:
        assert nbk.get_num_threads() == 3
    finally:
        _config.set_defaults(threads=None)
    with pytest.warns(DeprecationWarning, match="config"):
        nbk.set_fused(True)


def test_generated_source_bakes_sizes_and_is_deterministic():
    src = nbk.kernel_source([(2, 2, 2, 1), (1, 2, 2, 2)], np.float32)
    assert src == nbk.kernel_source([(2, 2, 2, 1), (1, 2, 2, 2)], np.float32)
    assert "cache=True" in src and "np.uint64(" in src
    assert "get_num_threads" not in src  # it would silently disable caching


def test_compiled_kernels_are_reused_by_a_second_process(tmp_path, codegen):
    """A second process finds the kernel in the on-disk cache instead of compiling."""
    chain = "10 <-(5,3,1)- 6"  # a chain no other test uses
    script = textwrap.dedent(f"""
        import numpy as np
        import debutla.backends.numba_ as nbk
        from debutla import DeBut
        from debutla._config import config
        nbk.CODEGEN_MIN_NNZ = 0
        op = DeBut.random({chain!r}, seed=0)
        state = nbk.prepare(op.factors)
        with config(background=False):
            nbk.apply_rows(state, np.ones((1, 6)))
        s = state.module().rows_single.stats
        print(len(s.cache_hits), len(s.cache_misses))
    """)
    env = dict(os.environ, DEBUTLA_CACHE_DIR=str(tmp_path))

    def run():
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, check=True)
        return tuple(int(v) for v in r.stdout.split())

    hits1, misses1 = run()
    hits2, misses2 = run()
    assert (hits1, misses1) == (0, 1)
    assert (hits2, misses2) == (1, 0)
    assert any(p.suffix == ".py" for p in (tmp_path / "numba").iterdir())


@pytest.mark.parametrize("layout", ["rows", "cols"])
def test_padded_input_reaches_the_tile_kernels_without_a_padded_copy(codegen, monkeypatch,
                                                                     layout):
    """The operator passes n < Q features as they are; the tile kernels take the extent."""
    op = DeBut.random(CHAIN_B, seed=12, dtype=np.float32, shape=(15, 70), backend="numba")
    W = _tile_width(op)

    def no_pad(*args):
        raise AssertionError("a padded copy of the input was made")

    monkeypatch.setattr(nbk, "_pad", no_pad)
    seen = []
    inner = nbk._run_fused

    def spy(state, mod, kname, X, Y, k):
        seen.append((kname, X.shape))
        return inner(state, mod, kname, X, Y, k)

    monkeypatch.setattr(nbk, "_run_fused", spy)
    rng = np.random.default_rng(13)
    k = 2 * W + 3
    if layout == "rows":
        X = random_values(rng, (k, 70), np.float32)
        _check(op, op.matmat_rows(X), X, "rows", "padded rows")
        assert seen[-1] == ("rows_tiles", (k, 70))  # (after the compile, on zeros)
    else:
        X = random_values(rng, (70, k), np.float32)
        _check(op, op.matmat(X), X, "cols", "padded cols")
        assert seen[-1] == ("cols_tiles", (70, k))


def test_adjoint_products_compile_nothing_for_the_chain(monkeypatch):
    """rmatvec, x @ op, op.T @ x, op.H @ y and to_dense run on the forward state, with
    no compile for the chain (with background compiles off: none is even started)."""
    monkeypatch.setattr(nbk, "CODEGEN_MIN_NNZ", 0)  # the chain would use its own kernels
    op = DeBut.random(CHAIN_B, seed=14, dtype=np.complex64, backend="numba")
    calls = []
    monkeypatch.setattr(nbk, "_compile", lambda *a: calls.append(a))
    monkeypatch.setattr(nbk._cg, "kernel_module", lambda *a: calls.append(a))
    m, n = op.shape
    rng = np.random.default_rng(15)
    z = random_values(rng, (m,), np.complex64)
    Z = random_values(rng, (5, m), np.complex64)
    D = reference(op)
    tol = dict(rtol=1e-5, atol=1e-5)
    with config(background=False):
        np.testing.assert_allclose(op.rmatvec(z), D.conj().T @ z, **tol)
        np.testing.assert_allclose(z @ op, z @ D, **tol)
        np.testing.assert_allclose(Z @ op, Z @ D, **tol)
        np.testing.assert_allclose(op.T @ z, D.T @ z, **tol)
        np.testing.assert_allclose(op.H @ z, D.conj().T @ z, **tol)
        np.testing.assert_allclose(op.rmatmat(Z.T), D.conj().T @ Z.T, **tol)
        np.testing.assert_allclose(op.to_dense(), D, **tol)
    assert calls == []
    assert list(op.T._states) == [] and list(op.H._states) == []


def test_adjoint_kernels_compile_in_the_background_and_are_then_used(monkeypatch):
    monkeypatch.setattr(nbk, "CODEGEN_MIN_NNZ", 0)
    op = DeBut.random(CHAIN_A, seed=16, dtype=np.float64, backend="numba")
    D = reference(op)
    z = np.arange(24.0)
    with config(background=True):
        np.testing.assert_allclose(op.rmatvec(z), D.T @ z, rtol=1e-12, atol=1e-12)
        nbk.wait_for_compiles(timeout=300)
        st = op._state(nbk, op.dtype)
        assert "rows_single" in st.adjoint("H").ready
        np.testing.assert_allclose(op.rmatvec(z), D.T @ z, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(z @ op, z @ D, rtol=1e-12, atol=1e-12)


def test_compiled_kernels_serve_every_operator_of_the_chain(monkeypatch):
    """Compiled kernels belong to the chain and dtype: an operator with other values (a
    torch layer after an optimiser step) runs them from its first product."""
    chain = "14 <-(7,3,1)- 6"  # a chain no other test uses
    with _forced_codegen():
        first = DeBut.random(chain, seed=0, dtype=np.float32, backend="numba")
        nbk.compile_kernels(first._state(nbk, first.dtype), 1, "rows")
        nbk.compile_kernels(first._state(nbk, first.dtype), 40, "rows")

    def no_generic(*args):
        raise AssertionError("the generic kernel ran")

    monkeypatch.setattr(nbk, "_run_generic", no_generic)
    # nor is the chain's kernel source generated again (about 1 ms for the VGG chain)
    generated = []
    real_source = nbk._cg.generate_source
    monkeypatch.setattr(nbk._cg, "generate_source",
                        lambda *a: generated.append(a) or real_source(*a))
    rng = np.random.default_rng(3)
    with forced_codegen():  # background compiles allowed: a cold kernel would run generic
        other = DeBut.random(chain, seed=1, dtype=np.float32, backend="numba")
        for k in (1, 40):
            X = random_values(rng, (k, 6), np.float32)
            _check(other, other.matmat_rows(X), X, "rows", f"other values, {k} rows")
    assert generated == []
