"""The vector code of the Numba kernels (``_numba_simd``): the block transpose
``transpose8`` and the ``wide_vectors`` request, alone and in the generated kernels."""

from __future__ import annotations

import numba
import pytest
import numpy as np
from hypothesis import given, settings, strategies as st

from debutla.backends import _numba_backward as bw
from debutla.backends import _numba_codegen as cg
from debutla.backends._numba_simd import BLOCK, VECTOR_BITS, transpose8, wide_vectors

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


# -- wide_vectors: the function attribute that lets LLVM use 512-bit vectors -------------


@numba.njit(cache=False, fastmath={"contract"})
def _axpy_wide(y, x, a):  # pragma: no cover - compiled
    wide_vectors()
    for i in range(y.size):
        y[i] += a * x[i]


@numba.njit(cache=False, fastmath={"contract"})
def _axpy_plain(y, x, a):  # pragma: no cover - compiled
    for i in range(y.size):
        y[i] += a * x[i]


def _sig(*args) -> tuple:
    return tuple(numba.typeof(a) for a in args)


def _attribute(fn, *args) -> bool:
    fn(*args)
    ir_text = fn.inspect_llvm(_sig(*args))
    return f'"prefer-vector-width"="{VECTOR_BITS}"' in ir_text


def test_wide_vectors_sets_the_attribute_of_its_function_only():
    y, x = np.zeros(64, np.float32), np.ones(64, np.float32)
    assert _attribute(_axpy_wide, y, x, np.float32(2))
    assert not _attribute(_axpy_plain, y, x, np.float32(2))


def test_wide_vectors_uses_512_bit_registers_where_the_cpu_has_them():
    from numba.core.codegen import get_host_cpu_features

    if "+avx512f" not in get_host_cpu_features().split(","):
        pytest.skip("the CPU has no AVX-512")
    y, x = np.zeros(1000), np.ones(1000)
    _axpy_wide(y, x, 2.0)
    _axpy_plain(y, x, 2.0)
    wide_asm = _axpy_wide.inspect_asm(_sig(y, x, 2.0))
    plain_asm = _axpy_plain.inspect_asm(_sig(y, x, 2.0))
    assert "zmm" in wide_asm
    # LLVM's own choice on this CPU (256-bit for Intel AVX-512 tuning, 512 elsewhere)
    # is whatever it is; the attribute must never narrow it
    assert wide_asm.count("zmm") >= plain_asm.count("zmm")


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_wide_vectors_changes_no_result(data):
    dtype = data.draw(st.sampled_from(list(DTYPES)), label="dtype")
    n = data.draw(st.integers(0, 300), label="n")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x = random_values(rng, (n,), dtype)
    y0 = random_values(rng, (n,), dtype)
    a = random_values(rng, (1,), dtype)[0]
    y1, y2 = y0.copy(), y0.copy()
    _axpy_wide(y1, x, a)
    _axpy_plain(y2, x, a)
    np.testing.assert_array_equal(y1, y2)  # element-wise: the same FMAs, bit for bit
    eps = np.finfo(dtype).eps
    scale = np.abs(y0) + np.abs(a) * np.abs(x)
    assert np.all(np.abs(y1 - (y0 + a * x)) <= 8 * eps * scale)


def _functions(src: str) -> dict[str, str]:
    out, name = {}, None
    for line in src.splitlines():
        if line.startswith("def "):
            name = line[4:line.index("(")]
            out[name] = ""
        elif name is not None:
            out[name] += line + "\n"
    return out


SHAPES = ((512, 8, 9, 1), (256, 2, 2, 8), (1, 2, 4, 256))


def test_generated_kernels_ask_for_wide_vectors_except_rows_single(monkeypatch):
    fwd = _functions(cg.generate_source(SHAPES, 32))
    assert set(fwd) == {"chain_buf", "rows_tiles", "cols_tiles", "rows_single"}
    for name, body in fwd.items():
        first = body.splitlines()[0].strip()
        assert (first == "wide_vectors()") == (name != "rows_single"), name
    back = _functions(bw.generate_source(SHAPES, 32))
    passes = {n for n in back if n[:2] in ("fw", "vg", "tr")}
    assert passes and all(back[n].splitlines()[0].strip() == "wide_vectors()" for n in passes)
    monkeypatch.setattr(cg, "_WIDE_VECTORS", False)
    assert "wide_vectors()" not in cg.generate_source(SHAPES, 32)
    assert "wide_vectors()" not in bw.generate_source(SHAPES, 32)
