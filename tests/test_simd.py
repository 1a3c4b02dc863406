"""The vector code of the Numba kernels (``_numba_simd``): the block transpose
``transpose8``, the dot-product blocks ``add_dots``, the panel steps ``panel_mac`` and
``group_mac`` and the ``wide_vectors`` request, alone and in the generated kernels."""

from __future__ import annotations

import numba
import pytest
import numpy as np
from hypothesis import given, settings, strategies as st

from debutla.backends import _numba_backward as bw
from debutla.backends import _numba_codegen as cg
from debutla.backends._numba_simd import (BLOCK, VECTOR_BITS, add_dots, group_mac,
                                          panel_mac, transpose8, wide_vectors)

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
    # chain_rest and step_blocks: row tiles gathered in steps (a t = 1 first factor)
    assert set(fwd) == {"chain_buf", "chain_rest", "step_blocks", "rows_tiles", "cols_tiles",
                        "rows_single"}
    for name, body in fwd.items():
        first = body.splitlines()[0].strip()
        assert (first == "wide_vectors()") == (name != "rows_single"), name
    back = _functions(bw.generate_source(SHAPES, 32))
    passes = {n for n in back if n[:2] in ("fw", "vg", "tr")}
    assert passes and all(back[n].splitlines()[0].strip() == "wide_vectors()" for n in passes)
    monkeypatch.setattr(cg, "_WIDE_VECTORS", False)
    assert "wide_vectors()" not in cg.generate_source(SHAPES, 32)
    assert "wide_vectors()" not in bw.generate_source(SHAPES, 32)


_DOTS: dict = {}


def _dots_kernel(G: int, J: int, W: int):
    """A compiled caller of ``add_dots`` with the literals ``G``, ``J``, ``W``."""
    key = (G, J, W)
    if key not in _DOTS:
        ns: dict = {"add_dots": add_dots, "numba": numba}
        exec(f"@numba.njit(cache=False)\n"
             f"def f(d, do, dg, dj, a, ao, ast, b, bo, bst):\n"
             f"    add_dots(d, do, dg, dj, a, ao, ast, b, bo, bst, {G}, {J}, {W})\n", ns)
        _DOTS[key] = ns["f"]
    return _DOTS[key]


@pytest.mark.parametrize("G, J, W", [(1, 1, 1), (1, 1, 16), (2, 2, 32), (4, 2, 32),
                                     (2, 3, 32), (4, 2, 16), (1, 5, 8), (2, 4, 6),
                                     (4, 1, 64), (1, 8, 48), (2, 2, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_dots_adds_each_dot_product_to_its_place_and_nothing_else(G, J, W, dtype):
    rng = np.random.default_rng(G * 100 + J * 10 + W)
    f = _dots_kernel(G, J, W)
    for _ in range(3):
        ast, bst = int(rng.integers(W, W + 9)), int(rng.integers(W, W + 9))
        ao, bo = int(rng.integers(0, 7)), int(rng.integers(0, 7))
        dj = int(rng.integers(1, 4))
        dg, do = J * dj + int(rng.integers(0, 3)), int(rng.integers(0, 5))
        a = rng.standard_normal(ao + G * ast + 3).astype(dtype)
        b = rng.standard_normal(bo + J * bst + 3).astype(dtype)
        d = rng.standard_normal(do + G * dg + J * dj + 3).astype(dtype)
        want = d.astype(np.float64)
        for g in range(G):
            for j in range(J):
                want[do + g * dg + j * dj] += np.dot(
                    a[ao + g * ast:ao + g * ast + W].astype(np.float64),
                    b[bo + j * bst:bo + j * bst + W].astype(np.float64))
        f(d, do, dg, dj, a, ao, ast, b, bo, bst)
        tol = 2e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(d, want, rtol=tol, atol=tol * W)
        touched = {do + g * dg + j * dj for g in range(G) for j in range(J)}
        for i in set(range(d.size)) - touched:  # nothing else written
            assert d[i] == dtype(want[i])


@pytest.mark.parametrize("source, match", [
    ("add_dots(d, 0, 1, 1, a, 0, 4, b, 0, 4, n, 1, 4)", "add_dots"),      # G not literal
    ("add_dots(d, 0, 1, 1, a, 0, 4, b, 0, 4, 3, 3, 4)", "add_dots"),      # G J > 8
])
def test_add_dots_refuses_what_it_cannot_compile(source, match):
    ns: dict = {"add_dots": add_dots, "numba": numba}
    exec(f"@numba.njit(cache=False)\ndef f(d, a, b, n):\n    {source}\n", ns)
    x = np.zeros(64)
    with pytest.raises(numba.core.errors.TypingError, match=match):
        ns["f"](x, x.copy(), x.copy(), 1)


def test_add_dots_refuses_complex_and_integer_arrays():
    ns: dict = {"add_dots": add_dots, "numba": numba}
    exec("@numba.njit(cache=False)\ndef f(d, a, b):\n"
         "    add_dots(d, 0, 1, 1, a, 0, 4, b, 0, 4, 1, 1, 4)\n", ns)
    for dt in (np.complex128, np.int64):
        x = np.zeros(16, dt)
        with pytest.raises(numba.core.errors.TypingError):
            ns["f"](x, x.copy(), x.copy())


_MACS: dict = {}


def _mac_kernel(G: int, N: int, W: int, ACC: int, B: int = 64):
    """Two compiled callers of ``panel_mac`` with these literals: the intrinsic, and the
    generated kernels' loop for the same step (``fastmath={'contract'}`` as they are)."""
    key = (G, N, W, ACC, B)
    if key not in _MACS:
        terms = " + ".join(f"V[v + g * vg + {j} * vj] * src[x + {j} * xj + c]"
                           for j in range(N))
        op = "+=" if ACC else "="
        ns: dict = {"panel_mac": panel_mac, "numba": numba}
        exec(f"@numba.njit(cache=False, fastmath={{'contract'}})\n"
             f"def f(dst, o, og, src, x, xj, V, v, vg, vj):\n"
             f"    return panel_mac(dst, o, og, src, x, xj, V, v, vg, vj, "
             f"{G}, {N}, {W}, {ACC}, {B})\n"
             f"@numba.njit(cache=False, fastmath={{'contract'}})\n"
             f"def loop(dst, o, og, src, x, xj, V, v, vg, vj):\n"
             f"    for g in range({G}):\n"
             f"        for c in range({W}):\n"
             f"            dst[o + g * og + c] {op} {terms}\n", ns)
        _MACS[key] = ns["f"], ns["loop"]
    return _MACS[key]


@pytest.mark.parametrize("G, N, W, ACC", [(1, 1, 16, 0), (2, 2, 16, 0), (2, 4, 16, 0),
                                          (4, 5, 16, 0), (4, 4, 16, 1), (3, 3, 8, 1),
                                          (4, 5, 8, 1), (1, 2, 4, 0), (2, 2, 3, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_panel_mac_is_the_loop_bit_for_bit(G, N, W, ACC, dtype):
    """Each output row gets the generated loop's value, bit for bit, and nothing else
    is written; it says it did the work (``B`` = 256 bytes: the rows of more than 64
    bytes run in 64-byte parts)."""
    f, loop = _mac_kernel(G, N, W, ACC, 256)
    rng = np.random.default_rng(G * 1000 + N * 100 + W * 10 + ACC)
    for _ in range(3):
        xj = int(rng.integers(W, W + 9))
        og = int(rng.integers(W, W + 5))
        x, o = int(rng.integers(0, 7)), int(rng.integers(0, 7))
        vj, vg = int(rng.integers(1, 4)), int(rng.integers(1, 9))
        v = int(rng.integers(0, 5))
        src = rng.standard_normal(x + N * xj + 3).astype(dtype)
        V = rng.standard_normal(v + G * vg + N * vj + 3).astype(dtype)
        dst = rng.standard_normal(o + G * og + W + 3).astype(dtype)
        want = dst.copy()
        loop(want, o, og, src, x, xj, V, v, vg, vj)
        assert f(dst, o, og, src, x, xj, V, v, vg, vj) is True
        np.testing.assert_array_equal(dst, want)
        ref = np.einsum("gj,jc->gc", V[v + np.arange(G)[:, None] * vg
                                       + np.arange(N) * vj].astype(np.float64),
                        np.stack([src[x + j * xj:x + j * xj + W] for j in range(N)]))
        rows = np.stack([want[o + g * og:o + g * og + W] for g in range(G)])
        assert np.isfinite(rows).all()
        if not ACC:  # the reference too (the loop could be wrong as well)
            tol = 2e-6 if dtype == np.float32 else 1e-13
            np.testing.assert_allclose(rows, ref, rtol=tol, atol=tol * N)


@pytest.mark.parametrize("dtype, W", [(np.complex128, 4), (np.complex64, 8),
                                      (np.int64, 8), (np.float32, 32), (np.float64, 16)])
def test_panel_mac_declines_what_its_vectors_do_not_hold(dtype, W):
    """Complex and integer arrays, and rows of more than ``B`` bytes: ``False``, and
    nothing written (the generated kernels then run their loop)."""
    f, _ = _mac_kernel(2, 2, W, 0, 64)
    dst = np.ones(4 * W, dtype)
    src = np.ones(4 * W, dtype)
    assert f(dst, 0, W, src, 0, W, np.ones(8, dtype), 0, 2, 1) is False
    np.testing.assert_array_equal(dst, np.ones(4 * W, dtype))


# a radix-4 step as two stages: m = (c0 i0 + c1 i1, c2 i0 + c3 i1, ...), o = (c8 m..)
_PROG = ("m1_0=0*i0,1*i1;m1_1=2*i0,3*i1;m1_2=4*i2,5*i3;m1_3=6*i2,7*i3;"
         "o0=8*m1_0,9*m1_2;o1=10*m1_1,11*m1_3;o2=12*m1_0,13*m1_2;o3=14*m1_1,15*m1_3")


def _group_kernel(W: int, B: int = 64):
    """A compiled caller of ``group_mac`` running ``_PROG``, and the same step written
    as the generated kernels' loop."""
    ns: dict = {"group_mac": group_mac, "numba": numba}
    cs = ", ".join(f"C[{i}]" for i in range(16))
    exec(f"@numba.njit(cache=False, fastmath={{'contract'}})\n"
         f"def f(dst, o, os, src, x, xs, C):\n"
         f"    return group_mac(dst, o, os, src, x, xs, ({cs},), \"{_PROG}\", {W}, {B})\n"
         f"@numba.njit(cache=False, fastmath={{'contract'}})\n"
         f"def loop(dst, o, os, src, x, xs, C):\n"
         f"    for c in range({W}):\n"
         f"        i0 = src[x + c]\n        i1 = src[x + xs + c]\n"
         f"        i2 = src[x + 2 * xs + c]\n        i3 = src[x + 3 * xs + c]\n"
         f"        m0 = C[0] * i0 + C[1] * i1\n        m1 = C[2] * i0 + C[3] * i1\n"
         f"        m2 = C[4] * i2 + C[5] * i3\n        m3 = C[6] * i2 + C[7] * i3\n"
         f"        dst[o + c] = C[8] * m0 + C[9] * m2\n"
         f"        dst[o + os + c] = C[10] * m1 + C[11] * m3\n"
         f"        dst[o + 2 * os + c] = C[12] * m0 + C[13] * m2\n"
         f"        dst[o + 3 * os + c] = C[14] * m1 + C[15] * m3\n", ns)
    return ns["f"], ns["loop"]


@pytest.mark.parametrize("W, B, dtype", [
    (16, 64, np.float32), (8, 64, np.float32), (4, 64, np.float32), (32, 256, np.float32),
    (8, 64, np.float64), (4, 64, np.float64), (16, 128, np.float64), (32, 256, np.float64)])
def test_group_mac_is_the_loop_bit_for_bit_and_runs_in_place(W, B, dtype):
    """Each output row gets the generated loop's value, bit for bit, in place too (every
    input read before any output is written), in 64-byte parts where ``W`` is wider."""
    f, loop = _group_kernel(W, B)
    rng = np.random.default_rng(W)
    C = rng.standard_normal(16).astype(dtype)
    for inplace in (False, True):
        xs = W + int(rng.integers(0, 5))
        src = rng.standard_normal(5 * xs + 8).astype(dtype)
        dst = src if inplace else rng.standard_normal(5 * xs + 8).astype(dtype)
        want = dst.copy()
        loop(want, 3, xs, src.copy() if inplace else src, 3, xs, C)
        assert f(dst, 3, xs, src, 3, xs, C) is True
        np.testing.assert_array_equal(dst, want)
        # and against NumPy in float64
        X = np.stack([src[3 + j * xs:3 + j * xs + W] for j in range(4)]).astype(np.float64)
        if not inplace:
            c = C.astype(np.float64)
            m = [c[0] * X[0] + c[1] * X[1], c[2] * X[0] + c[3] * X[1],
                 c[4] * X[2] + c[5] * X[3], c[6] * X[2] + c[7] * X[3]]
            ref = [c[8] * m[0] + c[9] * m[2], c[10] * m[1] + c[11] * m[3],
                   c[12] * m[0] + c[13] * m[2], c[14] * m[1] + c[15] * m[3]]
            got = np.stack([dst[3 + j * xs:3 + j * xs + W] for j in range(4)])
            tol = 1e-5 if dtype == np.float32 else 1e-13
            np.testing.assert_allclose(got, np.stack(ref), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype, W", [(np.complex128, 4), (np.float64, 16),
                                      (np.float32, 32)])
def test_group_mac_declines_what_its_vectors_do_not_hold(dtype, W):
    """Complex arrays and rows over ``B`` bytes: ``False``, nothing written."""
    f, _ = _group_kernel(W, 64)
    dst = np.ones(8 * W, dtype)
    assert f(dst, 0, W, np.ones(8 * W, dtype), 0, W, np.ones(16, dtype)) is False
    np.testing.assert_array_equal(dst, np.ones(8 * W, dtype))


@pytest.mark.parametrize("name, call, arg", [
    ("panel_mac", "panel_mac(d, 0, 4, s, 0, 4, s, 0, 1, 1, a, 1, 4, 0, 64)", 1),  # G
    ("group_mac", "group_mac(d, 0, 4, s, 0, 4, (1.0, 2.0), a, 4, 64)", "o0=0*i0,1*i1"),
])
def test_vector_steps_refuse_arguments_that_are_not_literals(name, call, arg):
    """``panel_mac``'s ``G`` and ``group_mac``'s program must be literals: a typing
    error naming the intrinsic otherwise."""
    ns: dict = {name: {"panel_mac": panel_mac, "group_mac": group_mac}[name],
                "numba": numba}
    exec(f"@numba.njit(cache=False)\ndef f(d, s, a):\n    return {call}\n", ns)
    x = np.zeros(16)
    with pytest.raises(numba.core.errors.TypingError, match=name):
        ns["f"](x, x.copy(), arg)
