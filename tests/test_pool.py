"""The spinning worker pool of split products (debutla.backends._numba_pool)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from debutla.backends import numba_ as nbk
from debutla.backends._numba_pool import SPIN_US, SpinPool


@pytest.fixture(scope="module")
def kernels():
    return nbk._generic_module()


def _recorder():
    seen: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def fn(lo: int, hi: int) -> None:
        time.sleep(0.0002)  # drops the GIL, like the kernels
        with lock:
            seen.append((lo, hi, threading.current_thread().name))
    return fn, seen


@pytest.mark.parametrize("workers, nchunks", [(1, 2), (1, 8), (3, 12), (2, 1)])
def test_every_chunk_runs_exactly_once(kernels, workers, nchunks):
    pool = SpinPool(workers, kernels)
    try:
        bounds = [37 * i // nchunks for i in range(nchunks + 1)]
        for gap in (0.0, 2 * SPIN_US * 1e-6, 0.0):  # spinning and sleeping workers
            for _ in range(20):
                fn, seen = _recorder()
                assert pool.run(fn, bounds)
                assert sorted((lo, hi) for lo, hi, _ in seen) == list(zip(bounds, bounds[1:]))
                time.sleep(gap)
    finally:
        pool.close()


def test_helpers_cap_the_threads_that_join(kernels):
    pool = SpinPool(3, kernels)
    try:
        names = set()
        for _ in range(30):
            fn, seen = _recorder()
            assert pool.run(fn, list(range(17)), helpers=1)
            names |= {name for _, _, name in seen}
            assert len({name for _, _, name in seen}) <= 2
        assert threading.current_thread().name in names
    finally:
        pool.close()


def test_an_error_in_a_chunk_reaches_the_caller_and_the_pool_goes_on(kernels):
    pool = SpinPool(1, kernels)
    try:
        def fn(lo, hi):
            time.sleep(0.0001)
            if lo == 3:
                raise ZeroDivisionError("chunk 3")
        for _ in range(5):
            with pytest.raises(ZeroDivisionError, match="chunk 3"):
                pool.run(fn, list(range(9)))
        fn2, seen = _recorder()
        assert pool.run(fn2, list(range(9)))
        assert len(seen) == 8
    finally:
        pool.close()


def test_a_busy_pool_says_so_instead_of_waiting(kernels):
    pool = SpinPool(1, kernels)
    started, release = threading.Event(), threading.Event()

    def slow(lo, hi):
        started.set()
        release.wait(10)

    t = threading.Thread(target=pool.run, args=(slow, [0, 1, 2]))
    t.start()
    try:
        assert started.wait(10)
        fn, seen = _recorder()
        assert pool.run(fn, [0, 1]) is False and not seen
    finally:
        release.set()
        t.join(10)
        pool.close()
    assert not t.is_alive()


def test_close_ends_the_workers(kernels):
    pool = SpinPool(2, kernels)
    fn, _ = _recorder()
    pool.run(fn, [0, 1, 2, 3])
    time.sleep(2 * SPIN_US * 1e-6)  # one worker asleep, or both
    pool.close()
    for t in pool._threads:
        t.join(10)
        assert not t.is_alive()


def test_split_products_use_the_pool_and_fall_back_when_it_is_busy(monkeypatch):
    """Concurrent split products from two threads: one on the pool, the other on the
    executor; both bitwise equal to one thread."""
    import debutla as db

    op = db.DeBut.random(db.PAPER_CHAINS["lenet_fc1_mono2"], seed=0, dtype=np.float64)
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    X = np.random.default_rng(0).standard_normal((512, 400))
    with db.config(threads=1, background=False):
        ref = X @ op.T
    out: dict = {}

    def work(i):
        with db.config(threads=2, background=False):
            out[i] = [X @ op.T for _ in range(30)]

    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert nbk._spin_pool is not None
    for res in out.values():
        for y in res:
            np.testing.assert_array_equal(y, ref)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_a_pool_of_its_own():
    code = textwrap.dedent("""
        import os, sys
        import numpy as np
        import debutla as db
        from debutla.backends import numba_ as nbk
        nbk.PARALLEL_MIN_WORK = 0
        op = db.DeBut.random(db.PAPER_CHAINS["lenet_fc1_mono2"], seed=0)
        X = np.ones((256, 400))
        with db.config(threads=2, background=False):
            ref = X @ op.T
            parent_pool = nbk._spin_pool
            assert parent_pool is not None
            pid = os.fork()
            if pid == 0:
                ok = nbk._spin_pool is None
                y = X @ op.T
                ok = ok and nbk._spin_pool is not None and np.array_equal(y, ref)
                os._exit(0 if ok else 3)
            _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "child 0" in r.stdout


def test_outside_a_burst_the_worker_sleeps_at_once(kernels, monkeypatch):
    import debutla.backends._numba_pool as mod

    monkeypatch.setattr(mod, "BURST_US", 0.0)  # no job is part of a burst
    monkeypatch.setattr(mod, "SPIN_US", 60e6)  # a burst job would keep it spinning 60 s
    pool = SpinPool(1, kernels)
    try:
        fn, seen = _recorder()
        assert pool.run(fn, [0, 1, 2, 3, 4])
        deadline = time.perf_counter() + 5.0
        while pool._sleeping == 0 and time.perf_counter() < deadline:
            time.sleep(0.001)
        assert pool._sleeping == 1  # asleep on the condition, not spinning
        fn, seen = _recorder()
        assert pool.run(fn, [0, 1, 2, 3, 4]) and len(seen) == 4  # and woken by a job
    finally:
        pool.close()


def test_spin_setting_chooses_the_pool_and_torch_layers_default_to_no_spinning(monkeypatch):
    import debutla as db

    torch = pytest.importorskip("torch")
    from debutla.torch import DeButLinear

    used = []
    real = nbk._get_spin_pool
    monkeypatch.setattr(nbk, "_get_spin_pool", lambda w: used.append(w) or real(w))
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    op = db.DeBut.random(db.PAPER_CHAINS["lenet_fc1_mono2"], seed=0, dtype=np.float32)
    X = np.ones((512, 400), np.float32)
    layer = DeButLinear(400, 128, chain=db.PAPER_CHAINS["lenet_fc1_mono2"])
    x = torch.ones(512, 400)

    def count(fn, **settings) -> int:
        used.clear()
        with db.config(threads=2, background=False, **settings):
            fn()
        return len(used)

    assert count(lambda: X @ op.T) == 1                   # operator: spins by default
    assert count(lambda: X @ op.T, spin=False) == 0
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            assert count(lambda: layer(x)) == 0           # torch layer: no spinning
            # spinning workers of debutla's own pool when asked for, and that pool
            # (torch's OpenMP threads run the splits by default: tests/test_omp_team.py)
            assert count(lambda: layer(x), spin=True, pool="debutla") == 1
        assert count(lambda: layer(x).sum().backward()) == 0
    finally:
        torch.set_num_threads(old)


def test_a_process_that_exits_right_after_a_burst_exits_cleanly():
    """The workers are daemon threads that may be spinning in Numba code when the main
    thread ends; an atexit hook ends them first (no crash, no hang)."""
    code = textwrap.dedent("""
        import numpy as np
        import debutla as db
        from debutla.backends import numba_ as nbk
        nbk.PARALLEL_MIN_WORK = 0
        op = db.DeBut.random(db.PAPER_CHAINS["lenet_fc1_mono2"], seed=0)
        X = np.ones((256, 400))
        with db.config(threads=2, background=False):
            for _ in range(20):
                X @ op.T
        assert nbk._spin_pool is not None
        print("done")
    """)
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr


# -- GIL-free jobs (change 31) ------------------------------------------------------------
@contextlib.contextmanager
def _native_pool(kernels, workers: int):
    """``(pool, body, data, slot)``: a pool that takes GIL-free jobs, and a job of no
    tiles for it (each thread that runs the body takes one slot: ``data[slot]``)."""
    from debutla.backends import _numba_native as nat

    pool = SpinPool(workers, kernels)
    try:
        for _ in range(600):  # its first worker compiles post and lead (or loads them)
            if pool.native:
                break
            time.sleep(0.05)
        assert pool.native
        yield pool, nat.body(np.float64, wait=True), np.zeros(nat.NFIELDS, np.int64), \
            nat.F_SLOT
    finally:
        pool.close()


def test_the_pool_and_its_spin_kernels_agree_on_the_flags(kernels):
    import debutla.backends._numba_pool as mod

    for name in ("GEN", "DONE", "BODY", "DATA", "JOINED", "HELPERS", "ROUNDS", "STOP",
                 "NJOINED"):
        assert getattr(kernels, name) == getattr(mod, "_" + name), name
    assert mod._NFLAGS == 1 + max(getattr(kernels, n) for n in ("GEN", "STOP", "NJOINED"))


@pytest.mark.parametrize("helpers", [None, 0])
def test_run_native_runs_the_body_on_the_caller_and_the_workers_that_join(kernels,
                                                                          helpers):
    """Spinning workers (a burst) and sleeping ones (after a gap): the caller always
    runs the body, at most ``helpers`` workers too, and the call returns only after
    every one that joined is done."""
    import debutla.backends._numba_pool as mod

    runs = []
    with _native_pool(kernels, 2) as (pool, body, data, slot):
        for gap in (0.0, 2 * SPIN_US * 1e-6, 0.0):
            for _ in range(30):
                data[:] = 0
                assert pool.run_native(body, data.ctypes.data, helpers)
                runs.append(int(data[slot]))
                assert data[slot] == 1 + pool.flags[mod._NJOINED]  # the caller + joined
                assert pool.flags[mod._DONE] == pool.flags[mod._NJOINED]
                time.sleep(gap)
    assert min(runs) >= 1 and max(runs) <= (3 if helpers is None else 1)


def test_python_and_gil_free_jobs_alternate_on_one_pool(kernels):
    with _native_pool(kernels, 1) as (pool, body, data, slot):
        for _ in range(50):
            fn, seen = _recorder()
            assert pool.run(fn, [0, 1, 2, 3])
            assert sorted((lo, hi) for lo, hi, _ in seen) == [(0, 1), (1, 2), (2, 3)]
            data[:] = 0
            assert pool.run_native(body, data.ctypes.data)
            assert 1 <= data[slot] <= 2


def test_a_busy_pool_refuses_a_gil_free_job(kernels):
    with _native_pool(kernels, 1) as (pool, body, data, slot):
        assert pool._busy.acquire(blocking=False)
        assert pool.run_native(body, data.ctypes.data) is False and data[slot] == 0
        pool._busy.release()
        pool.native = False  # as while its worker still compiles post and lead
        assert pool.run_native(body, data.ctypes.data) is False and data[slot] == 0


def test_close_ends_workers_that_spin_in_serve(kernels, monkeypatch):
    import debutla.backends._numba_pool as mod

    monkeypatch.setattr(mod, "SPIN_US", 60e6)  # they would serve GIL-free jobs 60 s
    with _native_pool(kernels, 2) as (pool, body, data, _):
        for _ in range(5):
            data[:] = 0
            assert pool.run_native(body, data.ctypes.data)
    for t in pool._threads:  # (closed on leaving the block)
        t.join(10)
        assert not t.is_alive()
