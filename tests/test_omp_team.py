"""Split products on torch's OpenMP threads (debutla.backends._omp_team, pool="openmp")."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import debutla as db  # noqa: E402
from debutla.backends import _omp_team  # noqa: E402
from debutla.backends import numba_ as nbk  # noqa: E402
from debutla.torch import DeButLinear, _ops  # noqa: E402
from debutla.torch._openmp import torch_team  # noqa: E402


@pytest.fixture(scope="module")
def team():
    t = torch_team()
    if t is None:
        pytest.skip("torch does not run on an OpenMP runtime that exports GOMP_parallel")
    return t


@pytest.fixture
def split_everything(monkeypatch):
    """Split every product, however small (the tests' products are small), on the team
    whenever ``pool="openmp"`` (whatever ran faster before: see the chooser's tests)."""
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_omp_team.chooser, "use_team", lambda key: True)


def test_run_calls_the_body_on_each_thread_of_the_team(team):
    for threads in (1, 2, 3):
        seen: list[int] = []
        lock = threading.Lock()

        def body():
            with lock:
                seen.append(threading.get_ident())
        assert team.run(body, threads)
        assert len(seen) == threads and len(set(seen)) == threads
        assert threading.get_ident() in seen  # the caller is one of them


def test_an_error_in_a_body_is_raised_by_run_and_the_team_still_works(team):
    def body():
        raise KeyError("from the team")
    with pytest.raises(KeyError, match="from the team"):
        team.run(body, 2)
    assert team.run(lambda: None, 2)


def test_a_busy_team_answers_false_and_runs_nothing(team):
    started, release = threading.Event(), threading.Event()

    def long_body():
        started.set()
        release.wait(10)

    t = threading.Thread(target=team.run, args=(long_body, 1))
    t.start()
    try:
        assert started.wait(10)
        ran = []
        assert team.run(lambda: ran.append(1), 1) is False
        assert ran == []
    finally:
        release.set()
        t.join(10)
    assert team.run(lambda: None, 1)


def test_register_refuses_a_runtime_that_is_not_loaded(tmp_path):
    bogus = str(tmp_path / "libgomp.so.1")
    with pytest.raises(OSError):
        _omp_team.OpenMPTeam(bogus)
    before = _omp_team.team()
    assert _omp_team.register(bogus) is None
    assert _omp_team.team() is before  # a failed registration keeps the current team


def test_register_refuses_a_library_without_gomp_parallel():
    import ctypes.util
    libm = ctypes.util.find_library("m")
    if libm is None:
        pytest.skip("no libm to try")
    import ctypes
    ctypes.CDLL(libm)  # loaded, but not an OpenMP runtime
    with pytest.raises((OSError, AttributeError)):
        _omp_team.OpenMPTeam(libm)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_no_team_in_a_forked_child(team):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never run a parallel region
        try:
            ok = (_omp_team.team() is None and _omp_team.register(team.path) is None
                  and team.run(lambda: None, 2) is False)
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert got == b"1"
    assert _omp_team.team() is team  # the parent keeps it


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_operator_products_on_the_team_are_bitwise_those_of_one_thread(
        team, split_everything, monkeypatch, dtype):
    calls = []
    real = _omp_team.OpenMPTeam.run
    monkeypatch.setattr(_omp_team.OpenMPTeam, "run",
                        lambda self, body, n: calls.append(n) or real(self, body, n))
    op = db.DeBut.random("64 <-(2,2,16)- 64 <-(4,4,4)- 64 <-(4,4,1)- 64", dtype=dtype,
                         seed=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 64)).astype(dtype)
    with db.config(fused=False, threads=1):
        ref = op.matmat_rows(x)
        ref_t = op.T.matmat_rows(x)
    with db.config(fused=False, threads=2, pool="openmp"):
        got = op.matmat_rows(x)
        got_t = op.T.matmat_rows(x)
    assert calls and all(n == 2 for n in calls)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got_t, ref_t)


def test_the_team_threads_keep_their_scratch_between_products(team, split_everything,
                                                               monkeypatch):
    """Each thread allocates its scratch once, at the first product it takes part in
    (a worker that starts late may take no chunk of a product), never again: before,
    a team thread's ``threading.local`` buffers were lost after every product."""
    monkeypatch.setattr(nbk, "_team_bufs", {})  # as if no team thread had run before
    op = db.DeBut.random("64 <-(2,2,16)- 64 <-(4,4,4)- 64 <-(4,4,1)- 64", seed=3)
    x = np.ones((96, 64))
    allocs: list = []
    real = nbk.aligned_empty

    def counting(*a, **k):
        allocs.append(threading.get_ident())
        return real(*a, **k)
    monkeypatch.setattr(nbk, "aligned_empty", counting)
    took_part: set = set()
    real_adopt = nbk._adopt_thread_scratch

    def adopt():
        took_part.add(threading.get_ident())
        real_adopt()
    monkeypatch.setattr(nbk, "_adopt_thread_scratch", adopt)
    with db.config(fused=False, threads=2, pool="openmp"):
        for _ in range(30):
            op.matmat_rows(x)
    workers = took_part - {threading.get_ident()}
    assert workers and workers <= set(nbk._team_bufs)
    # one scratch call (two buffers) per thread at most, in 30 products
    assert all(allocs.count(ident) <= 2 for ident in set(allocs))


def test_without_a_team_pool_openmp_uses_debutlas_own_threads(split_everything,
                                                              monkeypatch):
    monkeypatch.setattr(_omp_team, "_team", None)
    op = db.DeBut.random("64 <-(2,2,16)- 64 <-(4,4,4)- 64 <-(4,4,1)- 64", seed=3)
    x = np.ones((96, 64))
    with db.config(fused=False, threads=1):
        ref = op.matmat_rows(x)
    with db.config(fused=False, threads=2, pool="openmp"):
        np.testing.assert_array_equal(op.matmat_rows(x), ref)


def test_the_layers_choose_torchs_threads_unless_told_otherwise(team):
    with db.config(threads=2):
        assert _ops._cpu_settings()["pool"] == "openmp"
        with db.config(pool="debutla"):
            assert _ops._cpu_settings()["pool"] == "debutla"
    with db.config(threads=1):  # nothing to split
        assert _ops._cpu_settings()["pool"] == "debutla"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layer_forward_and_gradients_are_the_same_on_either_pool(team, split_everything,
                                                                 monkeypatch, dtype):
    calls = []
    real = _omp_team.OpenMPTeam.run
    monkeypatch.setattr(_omp_team.OpenMPTeam, "run",
                        lambda self, body, n: calls.append(n) or real(self, body, n))
    torch.manual_seed(0)
    layer = DeButLinear(64, 48, chain="48 <-(3,4,16)- 64 <-(4,4,4)- 64 <-(4,4,1)- 64",
                        dtype=dtype)
    x = torch.randn(80, 64, dtype=dtype)
    g = torch.randn(80, 48, dtype=dtype)
    out = {}
    for pool in ("debutla", "openmp"):
        with db.config(threads=2, pool=pool, background=False):
            xg = x.clone().requires_grad_(True)
            layer.zero_grad(set_to_none=True)
            y = layer(xg)
            y.backward(g)
            out[pool] = [y.detach(), xg.grad] + [p.grad for p in layer.parameters()]
        if pool == "debutla":
            assert calls == []
    assert calls  # the forward and the backward ran on the team
    for a, b in zip(out["debutla"], out["openmp"]):
        assert torch.equal(a, b)


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_chooser_tries_both_then_runs_the_faster_and_explores_the_other():
    clock = _Clock()
    ch = _omp_team.PoolChooser(explore_s=1.0, clock=clock)
    k = ("run", 8, 10**7, 2)
    for team, t in ((True, 0.050), (False, 0.001), (True, 0.004), (False, 0.003)):
        assert ch.use_team(k) == team         # the probes: team first, in turn
        ch.record(k, team, t)
    assert [ch.use_team(k) for _ in range(3)] == [False] * 3  # 0.004 > 1.2 x 0.001
    clock.now += 1.0
    assert ch.use_team(k)                     # explore the other (a second passed)
    ch.record(k, True, 0.0005)                # one fast run is enough to switch
    assert ch.use_team(k) and ch.use_team(k)
    for _ in range(ch.WINDOW):                # the team turned slow (a busy machine):
        ch.record(k, True, 0.02)              # its window fills with slow times
    assert not ch.use_team(k)
    other = ("run", 8, 10**7, 3)              # another kind of product: its own record
    assert ch.use_team(other) and other not in ch._stats


def test_the_chooser_explores_early_then_less_and_less_often():
    clock = _Clock()
    ch = _omp_team.PoolChooser(explore_s=1.0, clock=clock)
    k = "key"
    for team, t in ((True, 0.01), (True, 0.01), (False, 0.001), (False, 0.001)):
        ch.record(k, team, t)
    f = ch.FIRST_EXPLORE
    picks = [ch.use_team(k) for _ in range(15 * f)]  # no time passing
    at = [i + 1 for i, p in enumerate(picks) if p]
    assert at == [f, 3 * f, 7 * f, 15 * f]  # after f, 2f, 4f, 8f more calls
    clock.now += 1.0
    assert ch.use_team(k)  # and at least once a second


def test_the_chooser_forgets_everything_beyond_its_table_size(monkeypatch):
    ch = _omp_team.PoolChooser()
    monkeypatch.setattr(ch, "MAX_KEYS", 3)
    for i in range(3):
        ch.record(i, True, 1.0)
    ch.record(3, True, 1.0)
    assert list(ch._stats) == [3]


def test_a_slow_team_hands_the_products_to_debutlas_threads(team, monkeypatch):
    """A team stalled as on a busy machine (each run 20 ms late) stops being used, except
    for one exploration a second; results unchanged."""
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_omp_team, "chooser", _omp_team.PoolChooser(explore_s=60.0))
    runs = []
    real = _omp_team.OpenMPTeam.run

    def stalled(self, body, n):
        runs.append(n)
        ok = real(self, body, n)
        time.sleep(0.02)
        return ok
    monkeypatch.setattr(_omp_team.OpenMPTeam, "run", stalled)
    op = db.DeBut.random("64 <-(2,2,16)- 64 <-(4,4,4)- 64 <-(4,4,1)- 64", seed=3)
    x = np.random.default_rng(0).standard_normal((96, 64))
    with db.config(fused=False, threads=1):
        ref = op.matmat_rows(x)
    with db.config(fused=False, threads=2, pool="openmp"):
        for _ in range(40):
            np.testing.assert_array_equal(op.matmat_rows(x), ref)
    # the probes, then only the explorations (after 4, 8 and 16 more calls)
    assert len(runs) == _omp_team.PoolChooser.PROBES + 3


def test_torchs_runtime_is_found_among_the_loaded_libraries(team):
    from debutla.torch import _openmp

    files = _openmp._loaded_files()
    assert files and all(os.path.isabs(f) for f in files)
    assert team.path in _openmp._candidates()
    assert os.path.basename(team.path).startswith(_openmp._RUNTIMES)


def test_split_products_are_told_apart_by_their_code_not_their_name(team, monkeypatch):
    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    ch = _omp_team.PoolChooser()
    monkeypatch.setattr(_omp_team, "chooser", ch)

    def make(which):
        if which:
            def run(lo, hi):
                pass
        else:
            def run(lo, hi):  # noqa: F811 - the same name, other code
                pass
        return run
    with db.config(threads=2, pool="openmp"):
        nbk._run_split(make(0), 8, 10**8)
        nbk._run_split(make(1), 8, 10**8)
        nbk._run_split(make(1), 8, 10**8)
    assert len(ch._stats) == 2
    assert sorted(len(st[0]) + len(st[1]) for st in ch._stats.values()) == [1, 2]
