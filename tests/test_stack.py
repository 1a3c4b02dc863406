"""Stack placement of the Numba tile kernels (``_numba_stack.place_stack``)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from debutla import Chain, DeBut
from debutla.backends import _numba_codegen as cg
from debutla.backends import numba_ as nbk
from debutla.backends._numba_stack import OFFSET, PAGE, place_stack, stack_pointer

BUTTERFLY_64 = str(Chain.butterfly(64))


@numba.njit(nogil=True, cache=False)
def _placed():  # pragma: no cover - compiled
    place_stack()
    return stack_pointer()


@numba.njit(nogil=True, cache=False)
def _plain():  # pragma: no cover - compiled
    return stack_pointer()


def _at_depth(depth: int, fn):
    """``fn()`` called ``depth`` C-level calls deeper (each ``map`` grows the C stack)."""
    if depth == 0:
        return fn()
    return list(map(lambda _: _at_depth(depth - 1, fn), (0,)))[0]


def _offsets(fn) -> set:
    return {int(_at_depth(d, fn)) % PAGE for d in range(12)}


def test_place_stack_gives_one_page_offset_from_any_depth_and_thread():
    want = {(OFFSET - 64) % PAGE}
    assert len(_offsets(_plain)) > 1  # the depths do move the stack: the check can fail
    assert _offsets(_placed) == want
    out: list = []
    th = threading.Thread(target=lambda: out.append(_offsets(_placed)))
    th.start()
    th.join()
    with ThreadPoolExecutor(1) as pool:
        out.append(pool.submit(_offsets, _placed).result())
    assert out == [want, want]


def test_place_stack_runs_on_a_small_thread_stack():
    old = threading.stack_size(64 * 1024)  # the placement takes at most PAGE + 64 bytes
    try:
        out: list = []
        th = threading.Thread(target=lambda: out.append(int(_placed()) % PAGE))
        th.start()
        th.join()
    finally:
        threading.stack_size(old)
    assert out == [(OFFSET - 64) % PAGE]


def _run_tiles(src: str, st, X: np.ndarray, k: int, m: int) -> np.ndarray:
    ns: dict = {}
    exec(compile(src.replace("cache=True", "cache=False"), "<kernels>", "exec"), ns)
    Y = np.empty((k, m))
    W = st.W
    ns["rows_tiles"](st.flat, X.reshape(-1), Y.reshape(-1), k, 0, (k + W - 1) // W,
                     np.empty(st.F * W), np.empty(st.F * W), np.uint64(W), X.shape[1])
    return Y


def test_tile_kernels_place_the_stack_and_compute_the_same(monkeypatch):
    """Placing the stack moves chain_buf's frame, not the arithmetic (bitwise)."""
    op = DeBut.random(BUTTERFLY_64, seed=3, dtype=np.float64, backend="numba")
    st = nbk.prepare(op.factors)
    k = 2 * st.W + 3
    X = np.random.default_rng(1).standard_normal((k, op.shape[1]))
    outs = []
    for place in (True, False):
        monkeypatch.setattr(cg, "_PLACE_STACK", place)
        src = cg.generate_source(st.shapes, st.W)
        def first(fname: str) -> str:  # the first statement after wide_vectors()
            lines = [ln.strip() for ln in src.split(f"def {fname}(")[1].split("\n")[1:4]]
            return [ln for ln in lines if ln != "wide_vectors()"][0]
        head = first("rows_tiles")
        assert (head == "place_stack()") == place
        assert first("cols_tiles") == head
        assert "place_stack" not in src.split("def rows_single(")[1]  # see the docstring
        outs.append(_run_tiles(src, st, X, k, op.shape[0]))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], op.matmat_rows(X), rtol=1e-12, atol=1e-12)


def test_scratch_is_aligned_per_thread_and_dtype():
    for dt in (np.float32, np.float64, np.complex64, np.complex128):
        for size in (1, 7, 4608 * 32):
            a = nbk.aligned_empty(size, dt, zero=True)
            assert (a.ctypes.data % nbk.SCRATCH_ALIGN, a.size, a.dtype) == (0, size, dt)
            assert a.flags.c_contiguous and a.flags.writeable and not a.any()
        pair = nbk._scratch(np.dtype(dt), 1000)
        assert all(b.ctypes.data % nbk.SCRATCH_ALIGN == 0 and b.size >= 1000 for b in pair)
        with ThreadPoolExecutor(1) as pool:
            other = pool.submit(nbk._scratch, np.dtype(dt), 1000).result()
        assert other[0].ctypes.data % nbk.SCRATCH_ALIGN == 0
        assert not np.shares_memory(other[0], pair[0])  # one pair per thread
