"""The operator's fast lane for repeated products (``DeBut._lane_product``).

Once a product of NumPy inputs has run on the Numba backend, later calls of
``op @ x``, ``op.matvec`` and ``op.matmat_rows`` with plain C-contiguous inputs of the
operator's dtype skip the full path's conversions and call the compiled kernel
directly (``numba_.rows_lane``).  These tests check that the lane gives the same bits as
the full path, that it serves the cases it should, and that every other case (other
settings, dtypes, layouts, shapes, ``out`` arrays, errors) still takes the full path.
"""

from __future__ import annotations

import numpy as np
import pytest

import debutla
import debutla.backends.numba_ as nbk
from debutla import DeBut, _config
from debutla._config import config

from codegen import forced_codegen, ready_spin_pool
from strategies import DTYPES, DTYPE_IDS, random_values

CHAIN = "24 <-(3,2,4)- 16 <-(4,9,1)- 36"  # t = 1 with r = 4: the transposed per-row layout
K_TILES = 37  # rows for the tile kernel (partial last tile)



@pytest.fixture
def lane_spy(monkeypatch):
    """Record what ``rows_lane`` returned for each call."""
    calls: list[bool] = []
    inner = nbk.rows_lane

    def spy(state, Xf, Yf, k):
        done = inner(state, Xf, Yf, k)
        calls.append(done)
        return done

    monkeypatch.setattr(nbk, "rows_lane", spy)
    return calls


def _ready_op(dtype=np.float64, seed=0, **kw) -> DeBut:
    op = DeBut.random(CHAIN, seed=seed, dtype=dtype, backend="numba", **kw)
    with forced_codegen():
        debutla.warmup(op, batch=(1, K_TILES), layout="rows", adjoint=False)
    return op


def _entries(disp) -> list:
    """The compiled entry points of a kernel's dispatcher (one per signature)."""
    return [cres.entry_point for cres in disp.overloads.values()]


def _full_path(op: DeBut, X: np.ndarray) -> np.ndarray:
    """``X @ op.T`` by the backend's full path (no lane)."""
    st = op._state(nbk, op.dtype)
    return nbk.apply_rows(st, np.ascontiguousarray(X.reshape(-1, op.shape[1])))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_lane_serves_repeated_products_with_the_full_paths_bits(dtype, lane_spy):
    op = _ready_op(dtype)
    lane_spy.clear()  # (warmup's own products)
    rng = np.random.default_rng(1)
    x = random_values(rng, (op.shape[1],), dtype)
    X = random_values(rng, (K_TILES, op.shape[1]), dtype)
    X2 = random_values(rng, (2, op.shape[1]), dtype)
    got = [op @ x, op.matvec(x), op.matmat_rows(X), op.matmat_rows(X2)]
    y = np.empty(op.shape[0], dtype)
    Y = np.empty((K_TILES, op.shape[0]), dtype)
    assert op.matvec(x, out=y) is y
    assert op.matmat_rows(X, out=Y) is Y
    assert lane_spy == [True] * 6
    exp = [_full_path(op, x)[0], _full_path(op, x)[0], _full_path(op, X), _full_path(op, X2)]
    for g, e in zip(got + [y, Y], exp + [exp[0], exp[2]]):
        assert type(g) is np.ndarray and g.dtype == dtype
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_lane_serves_x_at_op_T_the_operators_own_rows_product(dtype, lane_spy):
    """``X @ op.T`` and ``x @ op.T`` are ``op``'s rows products: its lane serves them
    (same bits); ``x @ op.H`` of a complex operator (the conjugate) is not one of them,
    nor ``x @ op`` (the adjoint kernel)."""
    op = _ready_op(dtype)
    rng = np.random.default_rng(3)
    x = random_values(rng, (op.shape[1],), dtype)
    X = random_values(rng, (K_TILES, op.shape[1]), dtype)
    op.matmat_rows(X)  # recorded
    lane_spy.clear()
    got = [X @ op.T, x @ op.T, X[:2] @ op.T]
    assert lane_spy == [True] * 3
    for g, e in zip(got, [_full_path(op, X), _full_path(op, x)[0], _full_path(op, X[:2])]):
        assert type(g) is np.ndarray and g.dtype == dtype and g.flags.c_contiguous
        np.testing.assert_array_equal(g, e)
    lane_spy.clear()
    y = random_values(rng, (op.shape[0],), dtype)
    dense = op.to_dense()
    tol = 1e-4 if dtype in (np.float32, np.complex64) else 1e-12
    if np.iscomplexobj(x):
        np.testing.assert_allclose(x @ op.H, x @ dense.conj().T, rtol=tol, atol=tol)
    np.testing.assert_allclose(y @ op, y @ dense, rtol=tol, atol=tol)
    Xo = X.astype(np.complex64 if dtype == np.complex128 else np.complex128)
    np.testing.assert_allclose(Xo @ op.T, Xo @ dense.T, rtol=tol, atol=tol)  # another
    # dtype: the full path
    assert lane_spy == []


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_adjoint_vector_products_take_the_lane_of_the_adjoint_kernel(dtype, lane_spy):
    """``op.rmatvec(y)``, ``y @ op``, ``op.T @ y`` and ``op.H @ y`` (vectors) take a lane
    once an adjoint product ran on the transposed chain's kernel: the full path's bits;
    other inputs (a column, another dtype, a bad ``out``) and config blocks take the
    full path."""
    op = _ready_op(dtype)
    with forced_codegen():
        debutla.warmup(op, batch=1, layout="rows")  # the adjoint one-row kernels too
    st = op._state(nbk, op.dtype)
    rng = np.random.default_rng(4)
    y = random_values(rng, (op.shape[0],), dtype)
    cplx = np.iscomplexobj(y)

    def full(trans):
        return nbk.apply_rows(st, y[None, :], trans=trans)[0]

    op.rmatvec(y), y @ op  # (a complex y @ op compiles its own kernel in the background)
    nbk.wait_for_compiles()
    op.rmatvec(y), y @ op  # the full path, on the adjoint kernels: the lanes recorded
    assert sorted(op._alanes) == (["H", "T"] if cplx else ["T"])
    lane_spy.clear()
    out = np.empty(op.shape[1], dtype)
    got = [op.rmatvec(y), y @ op, op.T @ y, op.H @ y, op.rmatvec(y, out=out)]
    assert lane_spy == [True] * 5 and got[-1] is out
    exp = [full("H"), full("T"), full("T"), full("H"), full("H")]
    for g, e in zip(got, exp):
        assert type(g) is np.ndarray and g.dtype == dtype and g.shape == (op.shape[1],)
        np.testing.assert_array_equal(g, e)
    lane_spy.clear()
    dense = op.to_dense()
    tol = 1e-4 if dtype in (np.float32, np.complex64) else 1e-12
    yo = y.astype(np.complex64 if dtype == np.complex128 else np.complex128)
    np.testing.assert_allclose(op.rmatvec(yo), dense.conj().T @ yo, rtol=tol, atol=tol)
    np.testing.assert_allclose(op.rmatvec(y[:, None])[:, 0], exp[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="out"):
        op.rmatvec(y, out=np.empty(op.shape[1] + 1, dtype))
    with config(fused=False):
        np.testing.assert_allclose(op.rmatvec(y), dense.conj().T @ y, rtol=tol, atol=tol)
    assert lane_spy == []


def test_lane_declines_inside_a_config_block_and_after_new_defaults(lane_spy):
    op = _ready_op()
    lane_spy.clear()  # (warmup's own products)
    x = np.linspace(-1, 1, op.shape[1])
    op @ x
    lane_spy.clear()
    with config(backend="numpy"):
        y_ref = op.with_backend("numpy") @ x
        op @ x
    with config(fused=False):
        op @ x
    assert lane_spy == []  # these blocks choose the kernel: the full path honours them
    with config(threads=1, background=False):
        op @ x  # settings that do not choose the kernel: served
    assert lane_spy == [True]
    lane_spy.clear()
    token = _config.token()
    try:
        _config.set_defaults(fused=False)  # new defaults: the lane is forgotten
        assert _config.token() != token
        y = op @ x
        assert lane_spy == []
    finally:
        _config.set_defaults(fused=True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    op @ x  # recorded again under the restored defaults
    op @ x
    assert lane_spy == [True]


def test_lane_leaves_other_inputs_to_the_full_path(lane_spy):
    op = _ready_op()
    lane_spy.clear()  # (warmup's own products)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((5, op.shape[1]))
    op.matmat_rows(X)
    lane_spy.clear()
    ref = X @ op.to_dense().T
    cases = [
        X.astype(np.float32),  # another dtype: promoted by the full path
        np.asfortranarray(X),  # not C-contiguous
        np.concatenate([X, X], axis=1)[:, :X.shape[1]],  # rows not adjacent
        X[:0],  # no rows
    ]
    for Z in cases:
        np.testing.assert_allclose(op.matmat_rows(Z), Z.astype(np.float64) @ op.to_dense().T,
                                   rtol=1e-6, atol=1e-6)
    assert lane_spy == []
    np.testing.assert_allclose(op.matmat_rows(X.reshape(1, 5, -1))[0], ref, rtol=1e-12)
    np.testing.assert_allclose(op.matmat_rows(X.tolist()), ref, rtol=1e-12)
    np.testing.assert_allclose(op @ X.T, ref.T, rtol=1e-12)  # cols layout
    np.testing.assert_allclose(op.rmatmat(ref.T), op.to_dense().T @ ref.T, rtol=1e-12)
    assert lane_spy == []  # (adjoint vector products have their own lane: see above)


def test_lane_out_arrays_and_errors(lane_spy):
    op = _ready_op()
    lane_spy.clear()  # (warmup's own products)
    x = np.ones(op.shape[1])
    op @ x
    lane_spy.clear()
    ref = op.to_dense() @ x
    with pytest.raises(ValueError, match="out"):
        op.matvec(x, out=np.empty(op.shape[0] + 1))
    with pytest.raises((TypeError, ValueError), match="out"):
        op.matvec(x, out=np.empty(op.shape[0], np.float32))
    with pytest.raises(ValueError, match="36"):
        op.matvec(np.ones(op.shape[1] - 1))
    with pytest.raises(ValueError, match="36"):
        op.matmat_rows(np.ones((3, op.shape[1] - 1)))
    ro = np.empty(op.shape[0])
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        op.matvec(x, out=ro)
    assert lane_spy == []
    # an out that overlaps the input: the full path copies, the result is still right
    buf = np.zeros(op.shape[1])
    buf[:] = x
    got = op.matvec(buf, out=buf[:op.shape[0]])
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert lane_spy == []
    out = np.empty((1, op.shape[0]))[0]  # a C-contiguous view: served
    assert op.matvec(x, out=out) is out
    assert lane_spy == [True]


def test_no_lane_for_padded_operators_or_other_backends(lane_spy):
    op = _ready_op(shape=(20, 30))  # served by a bigger chain: padded inputs, cut outputs
    x = np.ones(30)
    op @ x
    op @ x
    ref = DeBut.random(CHAIN, seed=0, backend="numpy").to_dense()[:20, :30] @ x
    np.testing.assert_allclose(op @ x, ref, rtol=1e-12)
    assert op._lane is None and lane_spy == []
    onp = DeBut.random(CHAIN, seed=0, backend="numpy")
    onp @ np.ones(36)
    onp @ np.ones(36)
    assert onp._lane is None


@pytest.mark.parametrize("threads", [1, 2])
def test_lane_splits_products_big_enough_to_split(lane_spy, monkeypatch, threads):
    """A product big enough to split goes through the lane too (change 31): split across
    the threads as the full path splits it, with its bits (the first through the full
    path's split, later ones as the lane's recorded job where the pool takes it, change
    38); on one thread the lane's recorded call runs it after the first (change 33)."""
    op = _ready_op()
    k = 8 * K_TILES  # at least two tiles a thread
    X = np.random.default_rng(1).standard_normal((k, op.shape[1]))
    ref = _full_path(op, X)
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 1)
    splits: list[int] = []
    inner = nbk._run_split

    def split(fn, ntasks, work, threads=None, native=None):
        splits.append(nbk.get_num_threads() if threads is None else threads)
        return inner(fn, ntasks, work, threads, native)
    monkeypatch.setattr(nbk, "_run_split", split)
    jobs: list[tuple] = []
    inner_job = nbk._lane_split

    def lane_job(state, lane, Xf, Yf, k_, nth):
        jobs.append((nth, inner_job(state, lane, Xf, Yf, k_, nth)))
        return jobs[-1][1]
    monkeypatch.setattr(nbk, "_lane_split", lane_job)
    lane_spy.clear()  # (warmup's own products)
    with config(threads=threads, background=False):
        Y = op.matmat_rows(X)
        Y2 = op.matmat_rows(X, out=np.empty_like(Y))
    assert lane_spy == [True, True]
    if threads == 2:  # the second on the lane's job, or the full path's split
        assert [nth for nth, _ in jobs] == [2]
        assert splits == [2] + [2] * (not jobs[0][1])
    else:
        assert splits == [1] and jobs == []
    np.testing.assert_array_equal(Y, ref)
    np.testing.assert_array_equal(Y2, ref)


def test_token():
    t = _config.token()
    assert isinstance(t, int) and _config.token() == t
    with config(threads=2):
        assert _config.token() == t
    with config(backend="numba"):
        assert _config.token() is None
    _config.set_defaults(threads=None)
    assert _config.token() not in (None, t)


def test_first_product_records_the_lane_and_threads_share_it(lane_spy):
    from concurrent.futures import ThreadPoolExecutor

    op = DeBut.random(CHAIN, seed=5, dtype=np.float32, backend="numba")
    x = np.ones(op.shape[1], np.float32)
    assert op._lane is None
    with forced_codegen(), config(background=False):  # compiles here (not a kernel choice)
        first = op @ x
    assert op._lane is not None and lane_spy == []  # recorded by the full path
    rng = np.random.default_rng(6)
    xs = [random_values(rng, (op.shape[1],), np.float32) for _ in range(64)]
    exp = [_full_path(op, v)[0] for v in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(op.matvec, xs))
    for g, e in zip(got, exp):
        np.testing.assert_array_equal(g, e)
    assert lane_spy.count(True) == 64
    np.testing.assert_array_equal(op @ x, first)


def test_lane_in_place_product_takes_the_full_path(lane_spy):
    op = DeBut.random("16 <-(2,2,4)- 16 <-(4,4,1)- 16", seed=7, backend="numba")
    with forced_codegen():
        debutla.warmup(op, batch=1, layout="rows", adjoint=False)
    x = np.linspace(-1, 1, 16)
    op @ x
    lane_spy.clear()
    exp = op.to_dense() @ x
    got = op.matvec(x, out=x)  # out is x: the full path computes into a copy first
    assert got is x and lane_spy == []
    np.testing.assert_allclose(x, exp, rtol=1e-12)


def test_lane_records_each_batch_sizes_call_and_recovers_from_a_failing_cached_kernel(
        lane_spy, monkeypatch):
    from debutla.backends import _cache

    op = _ready_op(np.float32, seed=8)
    lane_spy.clear()  # (warmup's own products)
    st = op._state(nbk, op.dtype)
    rng = np.random.default_rng(9)
    X = random_values(rng, (K_TILES, op.shape[1]), np.float32)
    exp = _full_path(op, X)
    np.testing.assert_array_equal(op.matmat_rows(X), exp)  # records the tile kernel's call
    kname = nbk._kernel_name(K_TILES, "rows", st)
    # the call recorded is the kernel's compiled entry point (no dispatcher typing)
    assert st.lanes[K_TILES][0] in _entries(st.module_for(kname).rows_tiles)
    np.testing.assert_array_equal(op.matmat_rows(X), exp)  # by the recorded call

    # a kernel loaded from the cache that fails is forgotten and compiled again in
    # memory; the product then has the same bits, and the recorded calls are dropped
    fn, *rest = st.lanes[K_TILES]

    def broken(*args):
        raise RuntimeError("a corrupted cache file")

    forgotten = []
    monkeypatch.setitem(st.lanes, K_TILES, (broken, *rest))
    monkeypatch.setattr(_cache, "is_cached", lambda mod: True)
    monkeypatch.setattr(_cache, "forget_cache_files", lambda mod, e: forgotten.append(e))
    monkeypatch.setattr(nbk._cg, "replace_module", lambda *a: None)  # this state only
    monkeypatch.setattr(st, "_mod", st._mod)  # restored after the test
    monkeypatch.setattr(st, "_nmod", st._nmod)
    np.testing.assert_array_equal(op.matmat_rows(X), exp)
    assert [str(e) for e in forgotten] == ["a corrupted cache file"]
    assert K_TILES not in st.lanes and fn not in _entries(st.module_for(kname).rows_tiles)

    # a kernel compiled in memory that fails raises its own error
    st.lanes[K_TILES] = (broken, *rest)
    monkeypatch.setattr(_cache, "is_cached", lambda mod: False)
    with pytest.raises(RuntimeError, match="a corrupted cache file"):
        op.matmat_rows(X)
    assert K_TILES not in st.lanes
    assert lane_spy == [True] * 3  # the lane ran the first three products


def test_lane_records_at_most_lanes_max_batch_sizes(lane_spy, monkeypatch):
    op = _ready_op(np.float64, seed=10)
    with forced_codegen():  # the kernels of every size below (not only of _ready_op's)
        debutla.warmup(op, batch=(1, 5, K_TILES), layout="rows", adjoint=False)
    st = op._state(nbk, op.dtype)
    st.lanes.clear()  # (what warmup's products recorded)
    monkeypatch.setattr(nbk, "_LANES_MAX", 3)
    rng = np.random.default_rng(11)
    for k in (1, 2, 5, 7, 9, 1, 7):
        X = random_values(rng, (k, op.shape[1]), np.float64)
        np.testing.assert_array_equal(op.matmat_rows(X), _full_path(op, X))
    assert sorted(st.lanes) == [1, 2, 5]  # sizes after the third run the lane unrecorded


@pytest.mark.parametrize("k", [1, K_TILES])
def test_lane_entry_takes_read_only_inputs_and_falls_back_to_the_dispatcher(lane_spy,
                                                                           monkeypatch, k):
    """The recorded entry point serves a read-only input (the kernel only reads it);
    without a compiled function for the lane's types the lane calls the dispatcher."""
    op = _ready_op(np.float64, seed=11)
    st = op._state(nbk, op.dtype)
    X = np.random.default_rng(12).standard_normal((k, op.shape[1]))
    exp = _full_path(op, X)
    X.flags.writeable = False
    st.lanes.clear()
    for _ in range(2):  # records, then calls the entry point
        np.testing.assert_array_equal(op.matmat_rows(X), exp)
    fn, *_rest, kname = st.lanes[k]
    disp = getattr(st.module_for(kname), "rows_single" if kname == "rows_single"
                   else "rows_tiles")
    assert fn in _entries(disp)
    assert nbk._entry(disp, (np.ones(2, np.int8),)) is disp  # no such overload
    monkeypatch.setattr(nbk, "_LANE_ENTRY", False)
    st.lanes.clear()
    for _ in range(2):
        np.testing.assert_array_equal(op.matmat_rows(X), exp)
    assert st.lanes[k][0] is disp


def test_lane_takes_its_recorded_call_for_a_product_that_would_not_split(lane_spy,
                                                                        monkeypatch):
    """Above the split threshold, a product that _run_fused would run on one thread (one
    thread set, or fewer than two tiles a thread) takes the recorded call, not the path
    through _fused_guarded; the same bits."""
    op = _ready_op()
    st = op._state(nbk, op.dtype)
    X = np.random.default_rng(2).standard_normal((K_TILES, op.shape[1]))
    ref = _full_path(op, X)
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 1)
    guarded: list[int] = []
    inner = nbk._fused_guarded

    def spy(state, kname, X_, Y_, k):
        guarded.append(k)
        inner(state, kname, X_, Y_, k)
    monkeypatch.setattr(nbk, "_fused_guarded", spy)
    st.lanes.clear()
    lane_spy.clear()
    with config(threads=1, background=False):
        for _ in range(3):
            np.testing.assert_array_equal(op.matmat_rows(X), ref)
    assert lane_spy == [True] * 3 and guarded == [K_TILES]  # recorded by the first only
    lane, work = st.lanes[K_TILES], st.nnz * K_TILES
    assert nbk._lane_threads(lane, work) == 1
    with config(threads=2):
        assert (nbk._lane_threads(lane, work) > 1) == (lane[2] >= 2 * nbk._MIN_TASKS_PER_THREAD)
        assert nbk._lane_threads((None, None, 0) + lane[3:], work) == 1  # the one-row kernel


# -- split products from the lane's recorded job (change 38) -------------------------------
@pytest.fixture
def pool_jobs(monkeypatch):
    """Products split from two tiles a thread, on a spinning pool that takes GIL-free
    jobs (its bodies ready); counts the jobs that ``tiles_job`` packed anew (not from a
    record: only those look up the kernel's address) and the GIL-free jobs run."""
    from debutla.backends import _numba_native as nat
    from debutla.backends import _numba_pool as npool

    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 1)
    ready_spin_pool(1)
    for dt in DTYPES:
        nat.body(dt, wait=True)
    counts = {"packed": 0, "ran": 0}
    real_pack, real_run = nat.kernel_address, npool.SpinPool.run_native

    def pack(*args, **kw):
        counts["packed"] += 1
        return real_pack(*args, **kw)

    def run(self, body, data, helpers=None):
        ran = real_run(self, body, data, helpers)
        counts["ran"] += ran
        return ran
    monkeypatch.setattr(nat, "kernel_address", pack)
    monkeypatch.setattr(npool.SpinPool, "run_native", run)
    return counts


def _split_op(dtype, seed: int = 0) -> tuple[DeBut, int]:
    """A ready operator and a batch of at least two tiles a thread on two threads, the
    last tile partial."""
    op = _ready_op(dtype, seed=seed)
    k = 4 * op._state(nbk, op.dtype).W + 5
    with forced_codegen():
        debutla.warmup(op, batch=k, layout="rows", adjoint=False)
    return op, k


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_lane_split_packs_its_job_once_with_the_one_thread_bits(pool_jobs, dtype):
    """The first split product of a batch size (the full path, which records the lane)
    packs the job and records it; the lane's later ones post copies with the new
    input's and result's addresses: each result is the one-thread one, inputs and
    ``out`` arrays changing from call to call."""
    op, k = _split_op(dtype, seed=1)
    st = op._state(nbk, op.dtype)
    st.lanes.clear()
    st.jobs.clear()  # (what warmup's products recorded)
    rng = np.random.default_rng(3)
    Xs = [random_values(rng, (k, op.shape[1]), dtype) for _ in range(4)]
    with config(threads=1):
        refs = [_full_path(op, X) for X in Xs]
    pool_jobs.update(packed=0, ran=0)
    with config(threads=2, background=False):
        got = [op.matmat_rows(X) for X in Xs[:2]]
        outs = [np.full_like(refs[0], np.nan) for _ in range(2)]
        for X, out in zip(Xs[2:], outs):
            assert op.matmat_rows(X, out=out) is out
    for g, r in zip(got + outs, refs):
        np.testing.assert_array_equal(g, r)
    # the full path packs the first; the lane copies it for the three after it
    assert pool_jobs == {"packed": 1, "ran": 4}
    assert len(st.jobs) == 1


def test_lane_split_declines_where_the_full_path_would_not_post_the_job(pool_jobs,
                                                                       monkeypatch):
    """The OpenMP team chosen, the executor chosen (``spin=False``), a read-only input,
    the switch off or a busy pool: the lane leaves the product to the full path (same
    bits); a pool whose scratch was replaced (by a larger product) gets the job packed
    again."""
    op, k = _split_op(np.float64, seed=2)
    st = op._state(nbk, op.dtype)
    X = np.random.default_rng(4).standard_normal((k, op.shape[1]))
    with config(threads=1):
        ref = _full_path(op, X)
    declined: list[bool] = []
    inner = nbk._lane_split

    def spy(*args):
        declined.append(not inner(*args))
        return not declined[-1]
    monkeypatch.setattr(nbk, "_lane_split", spy)
    with config(threads=2, background=False):
        op.matmat_rows(X)  # records the lane (and its job) if warmup did not
        np.testing.assert_array_equal(op.matmat_rows(X), ref)
        assert declined[-1] is False
        for settings in ({"pool": "openmp"}, {"spin": False}):
            with config(**settings):
                np.testing.assert_array_equal(op.matmat_rows(X), ref)
            assert declined[-1] is True, settings
        Xr = X.copy()
        Xr.flags.writeable = False
        np.testing.assert_array_equal(op.matmat_rows(Xr), ref)
        assert declined[-1] is True
        monkeypatch.setattr(nbk, "_LANE_JOBS", False)
        np.testing.assert_array_equal(op.matmat_rows(X), ref)
        assert declined[-1] is True
        monkeypatch.setattr(nbk, "_LANE_JOBS", True)
        pool = nbk._get_spin_pool(1)
        assert pool._busy.acquire(blocking=False)  # as if another thread's product held it
        try:
            np.testing.assert_array_equal(op.matmat_rows(X), ref)  # on the executor
        finally:
            pool._busy.release()
        assert declined[-1] is True
        pool_jobs.update(packed=0)
        old = pool.scratch[op.dtype]
        monkeypatch.setitem(pool.scratch, op.dtype, np.zeros(2 * old.size, op.dtype))
        for _ in range(2):
            np.testing.assert_array_equal(op.matmat_rows(X), ref)
            assert declined[-1] is False
        assert pool_jobs["packed"] == 1  # packed again once, for the new scratch
        assert any(rec[2]() is pool.scratch[op.dtype] for rec in st.jobs.values())
