"""One operator shared by many threads gives the results of serial use."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from debutla import DeBut
from strategies import DTYPE_IDS, DTYPES, assert_product_close, error_depth, reference

CHAIN = "32 <-(2,4,16)- 64 <-(2,2,8)- 64 <-(4,2,2)- 32 <-(2,3,1)- 48"
N_THREADS = 8
ROUNDS = 20
CPU_BACKENDS = ["numpy", "numba"]  # Numba is a dependency: its absence must fail


def _tasks(op: DeBut, seed: int):
    """Products of several kinds (and input dtypes) on inputs private to one thread."""
    rng = np.random.default_rng(seed)
    m, n = op.shape
    x = rng.standard_normal(n).astype(op.dtype)
    X = rng.standard_normal((n, 3)).astype(op.dtype)
    R = rng.standard_normal((5, n)).astype(op.dtype)
    y = rng.standard_normal(m).astype(op.dtype)
    Y = rng.standard_normal((m, 2)).astype(op.dtype)
    xi = rng.integers(-3, 4, n)  # int64: promotes float32/complex64 to a wider dtype
    return [
        ("matvec", lambda o: o @ x, x, "D"),
        ("matmat", lambda o: o.matmat(X), X, "D"),
        ("rows", lambda o: R @ o.T, R.T, "D"),
        ("matmat_rows", lambda o: o.matmat_rows(R), R.T, "D"),
        ("rmatvec", lambda o: o.rmatvec(y), y, "H"),
        ("rmatmat", lambda o: o.rmatmat(Y), Y, "H"),
        ("H", lambda o: o.H @ y, y, "H"),
        ("T", lambda o: o.T @ y, y, "T"),
        ("promoted", lambda o: o @ xi, xi, "D"),
        ("out", lambda o: o.matmat(X, out=np.empty((m, 3), np.result_type(o.dtype, X))),
         X, "D"),
        ("dense", lambda o: o.to_dense(), None, "D"),
    ]


def _run_shared(op: DeBut, seeds):
    """Every thread waits at a barrier, then runs its tasks ROUNDS times on ``op``."""
    barrier = threading.Barrier(len(seeds))

    def work(seed):
        tasks = _tasks(op, seed)
        barrier.wait()
        results = []
        for _ in range(ROUNDS):
            results.append([f(op) for _, f, _, _ in tasks])
        return results

    with ThreadPoolExecutor(max_workers=len(seeds)) as pool:
        return list(pool.map(work, seeds))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_shared_operator_gives_serial_results_under_concurrency(dtype, backend):
    make = lambda: DeBut.random(CHAIN, seed=7, dtype=dtype, shape=(30, 45),  # noqa: E731
                                backend=backend)
    serial_op, shared = make(), make()  # shared starts cold: caches built under contention
    seeds = list(range(N_THREADS))
    serial = {s: [f(serial_op) for _, f, _, _ in _tasks(serial_op, s)] for s in seeds}
    before = [v.copy() for v in shared.factors]

    threaded = _run_shared(shared, seeds)

    D, B, depth = reference(serial_op), reference(serial_op, absolute=True), \
        error_depth(serial_op.chain)
    mats = {"D": (D, B), "H": (D.conj().T, B.T), "T": (D.T, B.T)}
    for s, rounds in zip(seeds, threaded):
        tasks = _tasks(serial_op, s)
        for results in rounds:
            for (name, _, inp, which), got, want in zip(tasks, results, serial[s]):
                assert got.shape == want.shape and got.dtype == want.dtype, name
                M, A = mats[which]
                if inp is None:
                    bound = A
                elif name in ("rows", "matmat_rows"):
                    bound = (A @ np.abs(inp)).T
                else:
                    bound = A @ np.abs(inp)
                # threaded and serial agree to rounding (a race gives garbage)
                assert_product_close(got, want.astype(np.complex128 if want.dtype.kind == "c"
                                                      else np.float64),
                                     2 * bound, got.dtype, depth, name)
    for a, b in zip(before, shared.factors):
        assert np.array_equal(a, b)


def test_threads_with_different_input_dtypes_share_one_operator():
    op = DeBut.random(CHAIN, seed=3, dtype=np.float32)
    ref = DeBut.random(CHAIN, seed=3, dtype=np.float32)
    inputs = [(np.arange(48) % 5).astype(dt) for dt in (np.float32, np.float64, np.complex64,
                                                     np.complex128, np.int32, np.int64)]
    expected = [ref @ x for x in inputs]
    barrier = threading.Barrier(len(inputs))

    def work(i):
        barrier.wait()
        return [op @ inputs[i] for _ in range(ROUNDS)]

    with ThreadPoolExecutor(max_workers=len(inputs)) as pool:
        outs = list(pool.map(work, range(len(inputs))))
    for want, got in zip(expected, outs):
        for g in got:
            assert g.dtype == want.dtype
            np.testing.assert_allclose(g, want, rtol=0,
                                       atol=64 * np.finfo(want.dtype).eps * np.abs(want).max())


_FORK_SCRIPT = """
import os, sys, threading
import numpy as np
import debutla.backends.numba_ as nbk
from debutla import DeBut
from debutla._config import config

nbk.CODEGEN_MIN_NNZ = 0
nbk.PARALLEL_MIN_WORK = 0
op = DeBut.random("16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72", seed=0,
                  backend="numba")
X = np.ones((8, 72))
with config(background=True):
    Y = X @ op.T                      # generic kernel now, the specialised one compiling
st = op._state(nbk, op.dtype)
held, release = threading.Event(), threading.Event()

def hold():                           # another thread holds debutla's locks at the fork
    with nbk._pool_lock, st._lock:
        held.set()
        release.wait()

threading.Thread(target=hold, daemon=True).start()
held.wait()
pending = bool(st.pending)
pid = os.fork()
if pid == 0:
    code = 0
    try:
        with config(background=True, threads=2):
            for _ in range(3):
                Z = X @ op.T          # pool lock taken, no compile started in the child
        code = 0 if np.allclose(Z, Y) and not st.pending else 3
    except BaseException as e:
        print("child error", repr(e), flush=True)
        code = 4
    sys.exit(code)                    # normal exit: atexit handlers must not hang
release.set()
_, status = os.waitpid(pid, 0)
print("PENDING", pending, "CHILD", os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_compiling_and_holding_locks_does_not_hang_the_child(tmp_path):
    """Defect 9: a child forked while another thread compiles (and holds debutla's locks)
    computes with fresh locks and the generic kernel, and exits, in bounded time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEBUTLA_")}
    env["DEBUTLA_CACHE_DIR"] = str(tmp_path)  # cold: the compile is in flight at the fork
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert "CHILD 0" in r.stdout, r.stdout + r.stderr


# -- splitting a product over threads changes no bit ---------------------------------------
SPLIT_CHAINS = [
    "24 <-(3,2,4)- 16 <-(4,9,1)- 36",
    "16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72",
    "16 <-(8,9,1)- 18 <-(3,2,2)- 12 <-(6,13,1)- 26",
]


@pytest.mark.parametrize("chain", SPLIT_CHAINS)
@pytest.mark.parametrize("dtype", [np.float32, np.complex128], ids=["float32", "complex128"])
def test_split_over_threads_is_bitwise_equal_to_one_thread(chain, dtype, monkeypatch):
    """Every kernel (one row at a time, row tiles, column tiles, generic, adjoint) gives
    the same bits with 1, 2 and 3 threads: a split only decides which thread computes
    which rows, never how a row is computed."""
    import debutla.backends.numba_ as nbk
    from debutla._config import config

    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(nbk, "CODEGEN_MIN_NNZ", 0)
    monkeypatch.setattr(nbk, "CODEGEN_MIN_WORK", 0)
    op = DeBut.random(chain, seed=4, dtype=dtype, backend="numba")
    m, n = op.shape
    W = nbk.prepare(op.factors).W
    rng = np.random.default_rng(0)

    def rand(shape):
        x = rng.standard_normal(shape)
        if np.dtype(dtype).kind == "c":
            x = x + 1j * rng.standard_normal(shape)
        return x.astype(dtype)

    ks = (2, 7, 5 * W + 3)
    inputs = [(k, rand((k, n)), rand((n, k)), rand((m, k))) for k in ks]

    def products():
        out = []
        for k, R, C, Z in inputs:
            out += [op.matmat_rows(R), op.matmat(C), op.rmatmat(Z), Z.T @ op.H.T]
            with config(fused=False):
                out += [op.matmat_rows(R), op.matmat(C)]
        return out

    with config(background=False):
        with config(threads=1):
            one = products()
        for th in (2, 3):
            with config(threads=th):
                for a, b in zip(one, products()):
                    assert a.dtype == b.dtype and np.array_equal(a, b), th
