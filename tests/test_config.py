"""debutla._config: settings, the config() block, the environment read once at first use,
the compile log and warmup."""

from __future__ import annotations

import logging
import sys
import threading

import numpy as np
import pytest
from procs import run_python

import debutla.backends.numba_ as nbk
from debutla import DeBut, _config
from debutla._config import config
from debutla._warmup import warmup
from debutla.backends import default_backend_for, is_device_array

from strategies import reference


def test_config_overrides_nest_and_restore():
    before = _config.get("threads"), _config.get("backend"), _config.get("fused")
    with config(threads=2, backend="numpy"):
        assert _config.get("threads") == 2 and _config.get("backend") == "numpy"
        assert default_backend_for(np.ones(2)).name == "numpy"
        with config(threads=1, fused=False):
            assert _config.get("threads") == 1 and _config.get("backend") == "numpy"
            assert _config.get("fused") is False
        assert _config.get("threads") == 2 and _config.get("fused") == before[2]
    assert (_config.get("threads"), _config.get("backend"), _config.get("fused")) == before


def test_config_restores_after_an_exception():
    with pytest.raises(KeyError):
        with config(threads=5):
            raise KeyError
    assert _config.get("threads") != 5


def test_config_is_per_thread():
    seen = {}
    inside = threading.Event()
    done = threading.Event()

    def other():
        inside.wait(10)
        seen["other"] = _config.get("threads")
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with config(threads=7):
        inside.set()
        done.wait(10)
        seen["main"] = _config.get("threads")
    t.join(10)
    assert seen["main"] == 7 and seen["other"] != 7


@pytest.mark.parametrize("kw, exc, match", [
    ({"threads": 0}, ValueError, "threads must be a positive"),
    ({"threads": "2"}, TypeError, "threads must be an integer"),
    ({"backend": "cuda"}, ValueError, "backend must be one of"),
    ({"backend": 3}, TypeError, "backend must be one of"),
    ({"fused": "no"}, TypeError, "fused must be True or False"),
    ({"cupy_rows": 3}, ValueError, "cupy_rows must be one of"),
    ({"cupy_threads": 300}, ValueError, "cupy_threads must be one of"),
    ({"spin": "yes"}, TypeError, "spin must be True or False"),
    ({"pool": "gomp"}, ValueError, "pool must be one of"),
    ({"pool": 1}, TypeError, "pool must be one of"),
    ({"cupy_threads": 256.0}, TypeError, "cupy_threads must be an integer"),
    ({"colour": 1}, TypeError, "unknown setting 'colour'"),
])
def test_config_refuses_bad_settings_before_the_block(kw, exc, match):
    ran = []
    with pytest.raises(exc, match=match):
        with config(**kw):
            ran.append(1)
    assert not ran


@pytest.mark.parametrize("var, value", [("DEBUTLA_NUM_THREADS", "two"),
                                        ("DEBUTLA_NUM_THREADS", "0"),
                                        ("DEBUTLA_BACKEND", "fortran"),
                                        ("DEBUTLA_CUPY_ROWS", "3"),
                                        ("DEBUTLA_CUPY_THREADS", "100"),
                                        ("DEBUTLA_SPIN", "2"),
                                        ("DEBUTLA_POOL", "tbb")])
def test_bad_environment_fails_at_first_use_naming_the_variable(var, value):
    r = run_python("""
        import numpy as np
        import debutla as db                       # import never reads the environment
        op = db.DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
        for _ in range(2):                         # the same error at every use
            try:
                op @ np.ones(4)
            except ValueError as e:
                print("ERR", e)
    """, **{var: value})
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("ERR")]
    assert len(lines) == 2 and all(var in ln and repr(value) in ln for ln in lines)


def test_environment_is_read_once_at_first_use():
    r = run_python("""
        import os
        import numpy as np
        import debutla as db
        from debutla import _config
        os.environ["DEBUTLA_NUM_THREADS"] = "3"     # before first use: read
        op = db.DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
        op @ np.ones(4)
        os.environ["DEBUTLA_NUM_THREADS"] = "5"     # after: ignored
        os.environ["DEBUTLA_BACKEND"] = "bogus"
        op @ np.ones(4)
        print(_config.get("threads"), _config.get("backend"))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "None"]


def test_array_type_detection_uses_the_array_protocols():
    class CudaLike:
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False),
                                    "version": 3}

    class DLPackDevice:
        def __init__(self, kind):
            self.kind = kind

        def __dlpack_device__(self):
            return (self.kind, 0)

    assert is_device_array(CudaLike())
    assert is_device_array(DLPackDevice(2)) and is_device_array(DLPackDevice(13))
    assert not is_device_array(DLPackDevice(1))  # CPU memory
    assert not is_device_array(np.ones(2)) and not is_device_array([1.0])

    class NamedLikeCupy:  # a module name is not evidence of a device array
        pass

    NamedLikeCupy.__module__ = "cupy.fake"
    assert not is_device_array(NamedLikeCupy())


def test_generated_modules_live_under_the_package_namespace():
    op = DeBut.random("10 <-(5,3,1)- 6 <-(2,3,1)- 9", seed=1, backend="numba")
    with config(background=False):
        st = op._state(nbk, op.dtype)
        nbk.compile_kernels(st, 1, "rows")
    mod = st.module()
    assert mod.__name__.startswith("debutla.backends._kernels.k_")
    assert sys.modules[mod.__name__] is mod
    assert not any(name.startswith("debutla_k_") for name in sys.modules)


def test_slow_compile_is_logged_once_per_kernel(monkeypatch, caplog):
    monkeypatch.setattr(nbk, "SLOW_COMPILE_SECONDS", 0.0)
    monkeypatch.setattr(nbk, "CODEGEN_MIN_NNZ", 0)
    monkeypatch.setattr(nbk, "_logged_first", [False])
    # compiled, whatever the kernel cache holds: the module is compiled in memory
    monkeypatch.setattr(nbk._cg, "kernel_module", nbk._cg.uncached_kernel_module)
    op = DeBut.random("6 <-(3,2,1)- 4 <-(2,2,1)- 4", seed=2, dtype=np.float32,
                      backend="numba")
    with caplog.at_level(logging.INFO, logger="debutla"), config(background=False):
        op @ np.ones(4, np.float32)
        op @ np.ones(4, np.float32)
    recs = [r for r in caplog.records if r.name == "debutla" and "compiled" in r.message]
    assert len(recs) == 1
    assert recs[0].levelno == logging.WARNING and "warmup" in recs[0].message


def test_a_kernel_loaded_from_the_cache_is_not_reported_as_compiled(tmp_path):
    """Two fresh processes on one empty cache folder: the first compiles the chain's
    kernel (a WARNING saying so), the second loads it (INFO, "loaded")."""
    code = """
        import logging, numpy as np
        import debutla as db
        from debutla.backends import numba_ as nbk
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        nbk.SLOW_COMPILE_SECONDS = 0.0
        nbk.CODEGEN_MIN_NNZ = 0
        op = db.DeBut.random("6 <-(3,2,1)- 4 <-(2,2,1)- 4", seed=5, backend="numba")
        with db.config(background=False):
            op.matmat_rows(np.ones((40, 4)))
    """
    runs = [run_python(code, DEBUTLA_CACHE_DIR=str(tmp_path)) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr + runs[1].stderr
    logs = [r.stderr for r in runs]
    assert "WARNING debutla: compiled the rows_tiles kernel" in logs[0]
    assert "loaded the rows_tiles kernel" not in logs[0]
    assert "INFO debutla: loaded the rows_tiles kernel" in logs[1]
    assert "compiled the rows_tiles kernel" not in logs[1]


def test_warmup_compiles_ahead_and_products_use_the_compiled_kernels(monkeypatch):
    monkeypatch.setattr(nbk, "CODEGEN_MIN_NNZ", 0)
    op = DeBut.random("12 <-(3,2,2)- 8 <-(2,2,1)- 8", seed=3, backend="numba")
    secs = warmup(op, batch=(1, 40), layout="rows")
    assert secs >= 0
    st = op._state(nbk, op.dtype)
    assert {"rows_single", "rows_tiles"} <= st.ready
    assert {"rows_single", "rows_tiles"} <= st.adjoint("H").ready
    X = np.random.default_rng(0).standard_normal((40, 8))
    np.testing.assert_allclose(X @ op.T, X @ reference(op).T, rtol=1e-12, atol=1e-12)


def test_warmup_by_default_compiles_every_kernel_a_product_can_run_on(monkeypatch):
    """No batch sizes given: the one-row, narrow and wide tile kernels (the chain's
    float32 tiles are wider than NARROW_W rows), so no batch size compiles later."""
    monkeypatch.setattr(nbk, "CODEGEN_MIN_NNZ", 0)
    op = DeBut.random("12 <-(3,2,2)- 8 <-(2,2,1)- 8", seed=4, dtype=np.float32,
                      backend="numba")
    st = op._state(nbk, op.dtype)
    assert st.W > nbk.NARROW_W
    assert warmup(op, layout="rows", adjoint=False) >= 0
    assert {"rows_single", "rows_narrow", "rows_tiles"} <= st.ready
    X = np.random.default_rng(1).standard_normal((9, 8)).astype(np.float32)
    np.testing.assert_allclose(X @ op.T, X @ reference(op).T, rtol=1e-5, atol=1e-5)


def test_warmup_readies_both_adjoints_of_a_complex_operator(monkeypatch):
    """``op.H`` products (conjugated values) and ``op.T`` ones (``y @ op``) run on two
    adjoint states of a complex operator: after warmup neither takes the generic
    kernel, from the first product on."""
    monkeypatch.setattr(nbk, "CODEGEN_MIN_NNZ", 0)
    op = DeBut.random("12 <-(3,2,2)- 8 <-(2,2,1)- 8", seed=5, dtype=np.complex128,
                      backend="numba")
    warmup(op, batch=1, layout="rows")
    generic = []
    run_generic = nbk._run_generic
    monkeypatch.setattr(nbk, "_run_generic",
                        lambda *a: generic.append(a[-1]) or run_generic(*a))
    y = np.random.default_rng(2).standard_normal(12) + 1j
    y @ op, op.rmatvec(y), op.T @ y, op.H @ y
    assert generic == []
    dense = reference(op)
    np.testing.assert_allclose(y @ op, y @ dense, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.rmatvec(y), dense.conj().T @ y, rtol=1e-12, atol=1e-12)


def test_warmup_refuses_bad_arguments():
    op = DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
    with pytest.raises(TypeError, match="DeBut"):
        warmup(np.eye(4))
    with pytest.raises(ValueError, match="batch"):
        warmup(op, batch=0)
    with pytest.raises(ValueError, match="layout"):
        warmup(op, layout="diagonal")


def test_background_compile_serves_first_calls_then_switches(monkeypatch):
    monkeypatch.setattr(nbk, "CODEGEN_MIN_NNZ", 0)
    op = DeBut.random("14 <-(7,2,1)- 4 <-(2,2,1)- 4", seed=4, backend="numba")
    D = reference(op)
    x = np.arange(4.0)
    with config(background=True):
        y = op @ x  # served now (generic kernel), compile started
        st = op._state(nbk, op.dtype)
        np.testing.assert_allclose(y, D @ x, rtol=1e-13, atol=1e-13)
        for th in list(nbk._compile_threads):
            th.join(120)
        assert "rows_single" in st.ready
        np.testing.assert_allclose(op @ x, D @ x, rtol=1e-13, atol=1e-13)


def test_pool_setting_from_the_environment_and_config():
    r = run_python("""
        from debutla import _config
        print(_config.get("pool"))
        with _config.config(pool="DebutLA"):
            print(_config.get("pool"))
        with _config.config(pool=None):
            print(_config.get("pool"))
    """, DEBUTLA_POOL="OpenMP")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["openmp", "debutla", "None"]
