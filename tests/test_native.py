"""The GIL-free team body (debutla.backends._numba_native): split tile products whose
OpenMP team threads run machine code only, bitwise the same as any other split."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

import debutla as db
from codegen import padded_operator, ready_spin_pool
from debutla.backends import _numba_native as nat
from debutla.backends import _omp_team
from debutla.backends import numba_ as nbk

CHAIN = db.PAPER_CHAINS["lenet_fc1_mono2"]  # 128 x 400, compiled by other tests too
DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


def _random(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


# -- the intrinsics ---------------------------------------------------------------------
@njit
def _adds(d, n):
    out = np.empty(n, np.int64)
    for i in range(n):
        out[i] = nat.fetch_add(d, 1, 3)
    return out


def test_fetch_add_returns_the_old_value_and_adds():
    d = np.array([7, 10, 5], np.int64)
    np.testing.assert_array_equal(_adds(d, 4), [10, 13, 16, 19])
    np.testing.assert_array_equal(d, [7, 22, 5])


@njit
def _third(addr):
    return nat.pointer_to(addr, np.float64)[2]


def test_pointer_to_reads_the_memory_at_an_address():
    a = np.array([1.5, 2.5, 3.5])
    assert _third(a.ctypes.data) == 3.5


def test_pointer_to_refuses_a_non_integer_address():
    @njit
    def bad(x):
        return nat.pointer_to(x, np.float64)[0]
    with pytest.raises(TypingError):
        bad(1.5)


def test_address_of_is_the_arrays_data_address():
    base = np.zeros((6, 8), np.float32)
    ro = np.zeros(5)
    ro.flags.writeable = False
    for a in (base, base[2:], base[:, 3], base[1:, 2:], np.zeros(0), ro,
              np.zeros(3, np.complex128), np.zeros(4, np.uint64)):
        assert nat.address_of(a) == a.ctypes.data


# -- the body and the kernels' entry points ------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_each_tile_dtype_has_a_body(dtype):
    assert isinstance(nat.body(dtype, wait=True), int)


def test_other_dtypes_have_none():
    assert nat.body(np.int32) is None and nat.body(np.float16) is None


def test_a_kernel_without_the_bodys_signature_has_no_entry_point():
    @njit
    def k(a):
        return a[0]
    assert nat.kernel_address(k, np.float32) is None  # not compiled
    k(np.ones(3, np.float32))
    assert nat.kernel_address(k, np.float32) is None  # another signature


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_body_called_from_python_computes_the_product(monkeypatch, dtype):
    """The body runs on one thread as well: called with the job's address, it computes
    every tile (and adds the bias) bitwise as the kernel called from Python does."""
    nat.body(dtype, wait=True)
    op = db.DeBut.random(CHAIN, seed=0, dtype=dtype)
    x = _random((300, 400), dtype, 1)
    bias = _random(128, dtype, 2)
    with db.config(background=False, threads=1):
        ref = op.matmat_rows(x) + bias
    jobs = []

    def capture(fn, ntasks, work, threads=None, native=None):
        jobs.append(native(1))
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(nbk, "_run_split", capture)
    y = np.zeros((300, 128), dtype)
    with db.config(background=False, threads=2), \
            nbk.rows_epilogue(nbk.RowsEpilogue.adding(bias)):
        op.matmat_rows(x, out=y)
    (job,) = jobs
    assert job is not None
    disp = _body_dispatcher(dtype)
    disp(int(job.data.ctypes.data))
    np.testing.assert_array_equal(y, ref)
    assert job.data[nat.F_NEXT] >= job.data[nat.F_NTILES]  # every tile was claimed


def _body_dispatcher(dtype):
    from debutla.backends import _cache
    name = np.dtype(dtype).name
    return _cache.load_module(nat.SOURCE[name], f"team_{name}").tiles_body


def test_tiles_job_refuses_what_the_body_cannot_run(monkeypatch):
    nat.body(np.float64, wait=True)
    op = db.DeBut.random(CHAIN, seed=0)
    with db.config(background=False):  # compiled (or loaded) before: no other split
        op.matmat_rows(np.ones((64, 400)))  # captured than the two products below
    op._state(nbk, op.dtype).lanes.clear()  # the first product takes the full path
    jobs = []

    def capture(fn, ntasks, work, threads=None, native=None):
        jobs.append(native)
        fn(0, ntasks)
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(nbk, "_run_split", capture)
    with db.config(background=False):
        op.matmat_rows(np.ones((64, 400)))
        with nbk.rows_epilogue(nbk.RowsEpilogue(lambda part: None)):  # not a bias
            op.matmat_rows(np.ones((64, 400)))
    plain, general = jobs
    assert plain(2) is not None
    assert general(2) is None
    # arrays the body cannot take, and a body still compiling
    V = np.ones(10)
    ro = np.ones(10)
    ro.flags.writeable = False
    disp = _body_dispatcher(np.float64)  # any dispatcher: refused before its address
    assert nat.tiles_job(disp, V, ro, V, 1, 1, 1, 1, 1, 2) is None
    assert nat.tiles_job(disp, V, V[::2], V, 1, 1, 1, 1, 1, 2) is None
    monkeypatch.setattr(nat, "body", lambda dtype, wait=False: None)
    op._state(nbk, op.dtype).jobs.clear()  # (a recorded job holds its ready body)
    assert plain(2) is None


def test_tiles_job_memo_copies_the_record_with_each_products_addresses(monkeypatch):
    """With a ``memo``, the second job of the same product comes from the record: the
    same fields but the input's, result's and bias's addresses (and none of the fields
    the body counts in), in no array of the first product's kept alive; other values,
    another runner scratch or thread count, or a full memo pack anew (change 38)."""
    nat.body(np.float64, wait=True)
    op = db.DeBut.random(CHAIN, seed=0)
    with db.config(background=False):
        op.matmat_rows(np.ones((64, 400)))  # the chain's tile kernel, compiled or loaded
    st = op._state(nbk, op.dtype)
    disp, W, k = st.module().rows_tiles, st.W, 64
    ntiles = -(-k // W)
    arrays = [(_random((k, 400), np.float64, s), np.zeros((k, 128)),
               _random(128, np.float64, s + 10)) for s in range(3)]
    bufs: dict = {}
    memo: dict = {}

    def job(i, V=st.flat, threads=2, **kw):
        X, Y, b = arrays[i]
        return nat.tiles_job(disp, V, X.reshape(-1), Y.reshape(-1), k, ntiles, W, 400,
                             st.F * W, threads, b, st.P, bufs, kw.get("memo", memo))

    first = job(0)
    packs: list = []
    real = nat.kernel_address
    monkeypatch.setattr(nat, "kernel_address", lambda *a: packs.append(a) or real(*a))
    second = job(1)
    assert packs == [] and len(memo) == 1
    assert set(np.flatnonzero(first.data != second.data)) == {nat.F_X, nat.F_Y, nat.F_BIAS}
    X, Y, b = arrays[1]
    assert (second.data[nat.F_X], second.data[nat.F_Y], second.data[nat.F_BIAS]) == (
        nat.address_of(X), nat.address_of(Y), nat.address_of(b))
    (rec,) = memo.values()
    assert not any(a is arr for a in rec for arr in arrays[0])
    assert rec[2]() is bufs[np.dtype(np.float64)]  # the scratch, held weakly
    # run on one thread (the body the team runs): the one-thread bits of its own arrays
    _body_dispatcher(np.float64)(int(second.data.ctypes.data))
    with db.config(background=False, threads=1):
        np.testing.assert_array_equal(Y, op.matmat_rows(X) + b)
    assert second.data[nat.F_NEXT] >= ntiles and job(2).data[nat.F_NEXT] == 0
    assert packs == []
    # packed anew: other values, a replaced scratch, another thread count
    job(2, V=st.flat.copy())
    bufs[np.dtype(np.float64)] = np.zeros(2 * bufs[np.dtype(np.float64)].size)
    job(2)
    job(2, threads=3)
    assert len(packs) == 3 and len(memo) == 2  # (new values or scratch: the same key)
    # a read-only input: refused from the record as when packing
    ro = arrays[2][0].copy()
    ro.flags.writeable = False
    assert nat.tiles_job(disp, st.flat, ro.reshape(-1), arrays[2][1].reshape(-1), k, ntiles,
                         W, 400, st.F * W, 2, None, st.P, bufs, memo) is None
    # a full memo records no more products (the jobs are packed all the same)
    monkeypatch.setattr(nat, "MEMO_MAX", len(memo))
    assert job(2, threads=4) is not None and job(2, threads=4) is not None
    assert len(packs) == 5 and len(memo) == 2


def test_rows_epilogue_adding_refuses_a_bias_that_is_not_1d():
    with pytest.raises(ValueError, match="bias must be 1-D"):
        nbk.RowsEpilogue.adding(np.ones((2, 3)))


def test_a_failed_body_compile_leaves_the_python_body(monkeypatch, caplog):
    monkeypatch.setattr(nat, "_bodies", {})
    monkeypatch.setattr(nat, "_ready", {})
    monkeypatch.setattr(nat, "_failed", set())
    monkeypatch.setattr(nat, "_threads", {})

    def broken(src, stem):
        raise RuntimeError("no compiler today")
    monkeypatch.setattr(nat._cache, "load_module", broken)
    with caplog.at_level("WARNING", logger="debutla"):
        assert nat.body(np.float32, wait=True) is None
    assert "failed to compile" in caplog.text
    assert nat.body(np.float32) is None  # not tried again


# -- on torch's OpenMP team -------------------------------------------------------------
@pytest.fixture(scope="module")
def team():
    pytest.importorskip("torch")
    from debutla.torch._openmp import torch_team
    t = torch_team()
    if t is None:
        pytest.skip("torch does not run on an OpenMP runtime that exports GOMP_parallel")
    for dt in DTYPES:
        nat.body(dt, wait=True)
    return t


@pytest.fixture
def on_team(monkeypatch):
    """Every product split on the team, whatever its size; counts the two kinds of body."""
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_omp_team.chooser, "use_team", lambda key: True)
    calls = {"native": 0, "python": 0}
    real_native, real_run = _omp_team.OpenMPTeam.run_native, _omp_team.OpenMPTeam.run

    def native(self, body, data, n):
        calls["native"] += 1
        return real_native(self, body, data, n)

    def run(self, body, n):
        calls["python"] += 1
        return real_run(self, body, n)
    monkeypatch.setattr(_omp_team.OpenMPTeam, "run_native", native)
    monkeypatch.setattr(_omp_team.OpenMPTeam, "run", run)
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [200, 320])  # a partial last tile; whole tiles
def test_team_products_on_the_body_are_bitwise_those_of_one_thread(team, on_team, dtype,
                                                                   batch):
    op = db.DeBut.random(CHAIN, seed=0, dtype=dtype)
    x = _random((batch, 400), dtype, 1)
    xt = _random((batch, 128), dtype, 3)
    with db.config(background=False, threads=1):
        ref, ref_t, ref_c = op.matmat_rows(x), op.T.matmat_rows(xt), op.matmat(x.T)
    with db.config(background=False, threads=2, pool="openmp"):
        got, got_t, got_c = op.matmat_rows(x), op.T.matmat_rows(xt), op.matmat(x.T)
    assert on_team["native"] >= 1
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got_t, ref_t)
    np.testing.assert_array_equal(got_c, ref_c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_body_adds_the_bias_to_every_row_once(team, on_team, dtype):
    op = db.DeBut.random(CHAIN, seed=0, dtype=dtype)
    x = _random((1000, 400), dtype, 1)
    bias = _random(128, dtype, 2)
    with db.config(background=False, threads=1):
        ref = op.matmat_rows(x) + bias
    ep = nbk.RowsEpilogue.adding(bias)
    y = np.empty((1000, 128), dtype)
    with db.config(background=False, threads=2, pool="openmp"), nbk.rows_epilogue(ep):
        op.matmat_rows(x, out=y)
    assert ep.applied and on_team == {"native": 1, "python": 0}
    np.testing.assert_array_equal(y, ref)


def test_the_body_adds_a_padded_chains_bias_to_its_outputs_only(team, on_team,
                                                               monkeypatch):
    monkeypatch.setattr(nbk, "CODEGEN_MIN_NNZ", 0)
    monkeypatch.setattr(nbk, "CODEGEN_MIN_WORK", 0)
    op = padded_operator()  # m < P, n < Q
    x = np.random.default_rng(0).standard_normal((333, 7))
    bias = np.arange(11.0)
    ep = nbk.RowsEpilogue.adding(bias)
    with db.config(background=False, threads=2, pool="openmp"), nbk.rows_epilogue(ep):
        y = op.matmat_rows(x)
    assert ep.applied and on_team["native"] == 1
    with db.config(background=False, threads=1):
        np.testing.assert_array_equal(y, op.matmat_rows(x) + bias)


def test_a_general_epilogue_runs_on_the_python_body(team, on_team):
    op = db.DeBut.random(CHAIN, seed=0)
    x = _random((300, 400), np.float64, 1)
    seen = []
    lock = threading.Lock()

    def fn(part):
        with lock:
            seen.append(part.shape[0])
    with db.config(background=False, threads=2, pool="openmp"), \
            nbk.rows_epilogue(nbk.RowsEpilogue(fn)):
        op.matmat_rows(x)
    assert on_team == {"native": 0, "python": 1} and sum(seen) == 300


def test_a_busy_team_leaves_the_product_to_debutlas_threads(team, on_team):
    op = db.DeBut.random(CHAIN, seed=0)
    x = _random((300, 400), np.float64, 1)
    with db.config(background=False, threads=1):
        ref = op.matmat_rows(x)
    assert team._busy.acquire(blocking=False)  # as if another thread's product held it
    try:
        with db.config(background=False, threads=2, pool="openmp"):
            got = op.matmat_rows(x)
    finally:
        team._busy.release()
    assert on_team["native"] == 1  # tried, refused
    np.testing.assert_array_equal(got, ref)


def test_run_native_runs_a_body_on_each_thread(team):
    """The team runs a body given by address on each of its threads (here: the body with
    a job of no tiles, which only takes a slot each)."""
    data = np.zeros(nat.NFIELDS, np.int64)
    assert team.run_native(nat.body(np.float64, wait=True), data.ctypes.data, 2)
    assert data[nat.F_SLOT] == 2 and data[nat.F_NEXT] == 2


# -- the backward ----------------------------------------------------------------------
# padded (served as 11 x 29) and bulging (30 -> 36 -> 24 -> 12), as in test_torch_backward
LAYER_CHAIN = "12 <-(1,2,12)- 24 <-(2,3,4)- 36 <-(6,5,1)- 30"


@pytest.fixture
def generated_backward(monkeypatch):
    """The generated kernels and backward for the small test chain, split in groups."""
    from debutla.torch import _kernels

    for name in ("BACKWARD_MIN_NNZ", "CODEGEN_MIN_NNZ", "CODEGEN_MIN_WORK"):
        monkeypatch.setattr(nbk, name, 0)
    monkeypatch.setattr(_kernels, "GROUP_MIN_WORK", 1)  # a group per tile: a split


def _layer_grads(torch, layer, x, g):
    xg = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y = layer(xg)
    y.backward(g)
    return [y.detach(), xg.grad] + [p.grad for p in layer.parameters()]


def _padded_case(torch, dtype_name: str):
    """``(layer, x, g, one-thread outputs and gradients)`` of the padded test chain, its
    bodies (forward and backward) compiled."""
    from debutla.torch import DeButLinear

    dtype = getattr(torch, dtype_name)
    nat.body(np.dtype(dtype_name), wait=True)  # the forward tiles' body
    nat.body(np.dtype(dtype_name), wait=True, count=3)
    torch.manual_seed(0)
    layer = DeButLinear(29, 11, chain=LAYER_CHAIN, dtype=dtype)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(300, 29, dtype=dtype)
    g = torch.randn(300, 11, dtype=dtype)
    with db.config(threads=1, background=False):
        return layer, x, g, _layer_grads(torch, layer, x, g)


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_layer_gradients_on_the_bodies_are_bitwise_those_of_one_thread(
        monkeypatch, team, on_team, generated_backward, dtype_name):
    """The forward and the backward both run on the GIL-free bodies, twice (the groups'
    gradients live in reused scratch, zeroed by the body), and give the one-thread bits."""
    import torch

    layer, x, g, ref = _padded_case(torch, dtype_name)
    summed = []
    real = nat.groups_summed
    monkeypatch.setattr(nat, "groups_summed", lambda job: summed.append(real(job)) or
                        summed[-1])
    for _ in range(2):
        before = on_team["native"]
        with db.config(threads=2, pool="openmp", background=False):
            got = _layer_grads(torch, layer, x, g)
        assert on_team["native"] - before == 2 and on_team["python"] == 0
        for a, b in zip(ref, got):
            assert torch.equal(a, b)
    assert summed == [True, True]  # the groups' sums made by the bodies


@pytest.mark.parametrize("chunk", [7, nat.SUM_CHUNK])
def test_the_backward_body_called_from_python_computes_every_group(monkeypatch,
                                                                  generated_backward,
                                                                  chunk):
    """On one thread, called with the job's address: the gradients of the Python body,
    each group's row of the reused scratch zeroed first (it holds garbage here), and
    the groups' sum made by the body (in chunks of 7 columns, the last one partial, or
    in one), bitwise NumPy's sum of the rows in group order."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(nat, "SUM_CHUNK", chunk)
    layer, x, g, ref = _padded_case(torch, "float64")
    jobs = []
    real_split = nbk._run_split

    def capture(fn, ntasks, work, threads=None, native=None):
        if native is None or fn.__code__.co_name != "run" or "gvs" not in \
                fn.__code__.co_freevars:
            return real_split(fn, ntasks, work, threads, native)
        job = native(1)
        assert job is not None
        gvs = job.keep[5]
        gvs[...] = np.nan  # what a previous product may have left
        jobs.append(job)
        _body_dispatcher_bw(np.float64, 3)(int(job.data.ctypes.data))
    monkeypatch.setattr(nbk, "_run_split", capture)
    with db.config(threads=2, background=False):
        got = _layer_grads(torch, layer, x, g)
    assert len(jobs) == 1
    (job,) = jobs
    assert job.data[nat.B_NGROUPS] > 1 and nat.groups_summed(job)
    assert job.data[nat.B_SUMNEXT] > -(-job.data[nat.B_NNZ] // chunk)  # every chunk
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def _body_dispatcher_bw(dtype, count):
    return nat.load(np.dtype(dtype).name, count)


def test_backward_job_refuses_what_the_body_cannot_run():
    nat.body(np.float64, wait=True, count=3)
    disp = nat.load("float64", 3)  # any dispatcher: refused before its address
    a = np.zeros(8)
    gvs = np.zeros((2, 4))
    bounds = np.array([0, 1, 2], np.uint64)
    args = (a, a, a, a, a, gvs, bounds, 1, 1, True, 8, 3, 8, 8, 2)
    assert nat.backward_job(disp, *args) is None  # not a kernel: no such signature
    ro = np.zeros(8)
    ro.flags.writeable = False
    assert nat.backward_job(disp, ro, *args[1:]) is None
    assert nat.backward_job(disp, *args[:5], np.zeros(8), *args[6:]) is None  # gvs 1-D
    assert nat.backward_job(disp, *args[:6], bounds.astype(np.int64), *args[7:]) is None


def test_a_backward_job_refused_by_a_busy_team_runs_on_debutlas_threads(
        team, on_team, generated_backward):
    """The job was built on the body's scratch (holding an earlier product's gradients);
    the Python body that runs instead zeroes each chunk's rows of it first."""
    import torch

    layer, x, g, ref = _padded_case(torch, "float64")
    with db.config(threads=2, pool="openmp", background=False):
        _layer_grads(torch, layer, x, g)  # leaves its groups' gradients in the scratch
        assert on_team["native"] == 2
        assert team._busy.acquire(blocking=False)
        try:
            got = _layer_grads(torch, layer, x, g)
        finally:
            team._busy.release()
    assert on_team["native"] == 4  # both tried, refused
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def test_groups_summed_only_after_the_body_ran_to_the_end():
    data = np.zeros(nat.NBFIELDS, np.int64)
    job = nat.Job(data, (), 0)
    data[nat.B_NGROUPS], data[nat.B_NNZ] = 3, 10
    assert not nat.groups_summed(job)  # no gv
    data[nat.B_GV] = 1
    assert not nat.groups_summed(job)  # not run (a busy team refused it)
    data[nat.B_DONE] = 3
    assert not nat.groups_summed(job)  # groups done, no sum claimed
    data[nat.B_SUMNEXT] = 2
    assert nat.groups_summed(job)


# -- on debutla's own spinning pool (change 31) -------------------------------------------
@pytest.fixture
def on_pool(monkeypatch):
    """Every product split on debutla's spinning pool (its GIL-free jobs ready), whatever
    its size; counts the pool's two kinds of job and how many workers joined each
    GIL-free one."""
    from debutla.backends import _numba_pool as npool

    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    ready_spin_pool(1)
    calls: dict = {"native": 0, "python": 0, "joined": []}
    real_native, real_run = npool.SpinPool.run_native, npool.SpinPool.run

    def native(self, body, data, helpers=None):
        calls["native"] += 1
        ran = real_native(self, body, data, helpers)
        if ran:
            calls["joined"].append(int(self.flags[npool._NJOINED]))
        return ran

    def run(self, fn, bounds, helpers=None):
        calls["python"] += 1
        return real_run(self, fn, bounds, helpers)
    monkeypatch.setattr(npool.SpinPool, "run_native", native)
    monkeypatch.setattr(npool.SpinPool, "run", run)
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_products_on_the_body_are_bitwise_those_of_one_thread(on_pool, dtype):
    for dt in DTYPES:
        nat.body(dt, wait=True)
    op = db.DeBut.random(CHAIN, seed=0, dtype=dtype)
    x = _random((200, 400), dtype, 1)  # a partial last tile
    xt = _random((200, 128), dtype, 3)
    bias = _random(128, dtype, 2)
    with db.config(background=False, threads=1):
        ref, ref_t, ref_c = op.matmat_rows(x), op.T.matmat_rows(xt), op.matmat(x.T)
    y = np.empty((200, 128), dtype)
    with db.config(background=False, threads=2, spin=True):
        for _ in range(3):  # a burst: the worker spinning between the jobs
            got, got_t, got_c = op.matmat_rows(x), op.T.matmat_rows(xt), op.matmat(x.T)
        with nbk.rows_epilogue(nbk.RowsEpilogue.adding(bias)):
            op.matmat_rows(x, out=y)
    # the rows and columns products on the body; the adjoint's too once its kernel is
    # compiled (the generic one, which has no body, serves it before)
    assert on_pool["native"] >= 7 and on_pool["native"] + on_pool["python"] == 10
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got_t, ref_t)
    np.testing.assert_array_equal(got_c, ref_c)
    np.testing.assert_array_equal(y, ref + bias)


def test_the_pools_workers_join_its_gil_free_jobs(on_pool):
    """In a burst the spinning worker runs GIL-free jobs next to the caller (it joins
    within a few tries even on a loaded machine); each job's result is the one-thread
    one whoever computed its tiles."""
    nat.body(np.float64, wait=True)
    op = db.DeBut.random(CHAIN, seed=0)
    x = _random((1000, 400), np.float64, 1)
    with db.config(background=False, threads=1):
        ref = op.matmat_rows(x)
    y = np.empty_like(ref)
    with db.config(background=False, threads=2, spin=True):
        for _ in range(300):
            op.matmat_rows(x, out=y)
            np.testing.assert_array_equal(y, ref)
            if max(on_pool["joined"]) == 1:
                break
    assert set(on_pool["joined"]) <= {0, 1} and max(on_pool["joined"]) == 1


def test_a_busy_pool_leaves_the_gil_free_job_to_the_executor(on_pool):
    nat.body(np.float64, wait=True)
    op = db.DeBut.random(CHAIN, seed=0)
    x = _random((300, 400), np.float64, 1)
    with db.config(background=False, threads=1):
        ref = op.matmat_rows(x)
    pool = nbk._get_spin_pool(1)
    assert pool._busy.acquire(blocking=False)  # as if another thread's product held it
    try:
        with db.config(background=False, threads=2, spin=True):
            got = op.matmat_rows(x)
    finally:
        pool._busy.release()
    assert on_pool["native"] == 1 and on_pool["joined"] == []  # tried, refused
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_pool_products_from_recorded_jobs_have_each_products_bits(on_pool, dtype):
    """Rows products with a bias and column products, each repeated with other arrays
    on the pool: the second and later come from the jobs the state recorded (change
    38), with the one-thread bits of their own input, result and bias."""
    nat.body(dtype, wait=True)
    op = db.DeBut.random(CHAIN, seed=4, dtype=dtype)
    st = op._state(nbk, op.dtype)
    xs = [_random((200, 400), dtype, s) for s in range(3)]
    biases = [_random(128, dtype, s + 5) for s in range(3)]
    with db.config(background=False, threads=1):
        refs = [op.matmat_rows(x) for x in xs]
        crefs = [op.matmat(x.T) for x in xs]
    st.jobs.clear()
    with db.config(background=False, threads=2, spin=True):
        for x, b, ref, cref in zip(xs, biases, refs, crefs):
            y = np.empty((200, 128), dtype)
            with nbk.rows_epilogue(nbk.RowsEpilogue.adding(b)):
                op.matmat_rows(x, out=y)
            np.testing.assert_array_equal(y, ref + b)
            np.testing.assert_array_equal(op.matmat(x.T), cref)
    assert on_pool["native"] >= 6
    assert len(st.jobs) >= 1  # (the column product's kernel may be the wide one's)


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_layer_gradients_on_the_pools_bodies_are_bitwise_those_of_one_thread(
        on_pool, generated_backward, dtype_name):
    """The torch layer's forward and backward on debutla's pool (torch's OpenMP team not
    chosen) run the GIL-free bodies there: the one-thread bits, the groups' sum made by
    the backward body."""
    torch = pytest.importorskip("torch")
    layer, x, g, ref = _padded_case(torch, dtype_name)
    for _ in range(2):
        with db.config(threads=2, pool="debutla", spin=True, background=False):
            got = _layer_grads(torch, layer, x, g)
        for a, b in zip(ref, got):
            assert torch.equal(a, b)
    assert on_pool["native"] == 4 and on_pool["python"] == 0
