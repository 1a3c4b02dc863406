"""The first CPU product of a process: served by the NumPy reference backend while Numba
loads in a background thread (``background=True``), or waiting for Numba
(``background=False`` / ``DEBUTLA_BACKGROUND=0``).  Each case runs in a fresh process,
because the loading happens once per process.
"""

from __future__ import annotations

import os

import pytest
from procs import run_python

_CHAIN = "12 <-(3,2,4)- 8 <-(2,2,2)- 8 <-(2,4,1)- 16"


def test_first_product_runs_on_numpy_while_numba_loads_then_switches():
    r = run_python(f"""
        import sys
        import numpy as np
        import debutla as db
        from debutla import backends
        assert "numba" not in sys.modules           # import debutla never loads it
        op = db.DeBut.random("{_CHAIN}", seed=3, dtype=np.float32)
        D = op.astype(np.float64).to_dense()
        x = np.linspace(-1, 1, 16, dtype=np.float32)
        print("first", backends.default_backend_for(x).name)   # before the first product
        y1 = op @ x
        assert backends._warm_thread is not None   # started by the first product
        backends._warm_thread.join(240)
        assert backends._numba_ready.is_set()
        print("later", backends.default_backend_for(x).name)
        y2 = op @ x
        for y in (y1, y2):
            assert y.dtype == np.float32
            np.testing.assert_allclose(y, D @ x, rtol=1e-5, atol=1e-5)
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["first", "numpy", "later", "numba", "ok"], r.stdout
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("how", [{"DEBUTLA_BACKGROUND": "0"}, {"DEBUTLA_BACKEND": "numba"},
                                 {}])
def test_waiting_for_numba_when_asked(how):
    block = "with config(background=False):" if not how else "if True:"
    r = run_python(f"""
        import numpy as np
        import debutla as db
        from debutla import backends
        from debutla._config import config
        op = db.DeBut.random("{_CHAIN}", seed=3)
        {block}
            y = op @ np.ones(16)
            print(backends.default_backend_for(np.ones(2)).name)
        print(backends._warm_thread is None, backends._numba_ready.is_set() or
              "numba" in backends._loaded)
        np.testing.assert_allclose(y, op.to_dense() @ np.ones(16), rtol=1e-12)
    """, **how)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["numba", "True", "True"], r.stdout


def test_process_ending_while_numba_loads_exits_cleanly():
    # the loading thread imports modules while the interpreter shuts down: no traceback
    r = run_python(f"""
        import numpy as np
        import debutla as db
        op = db.DeBut.random("{_CHAIN}", seed=0)
        print((op @ np.ones(16)).shape)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["(12,)"]
    assert r.stderr == "", r.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_numba_loads_waits_and_the_child_computes():
    r = run_python(f"""
        import os
        import numpy as np
        import debutla as db
        from debutla import backends
        op = db.DeBut.random("{_CHAIN}", seed=1)
        y = op @ np.ones(16)                      # starts the loading thread
        pid = os.fork()                           # waits for it (register_at_fork)
        if pid == 0:
            ok = backends._numba_ready.is_set()
            z = op @ np.ones(16)
            good = ok and np.allclose(z, y, rtol=1e-12)
            os._exit(0 if good else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0"], (r.stdout, r.stderr)


def test_without_numba_products_stay_on_numpy():
    r = run_python(f"""
        import sys
        sys.modules["numba"] = None                # as if Numba were not installed
        import numpy as np
        import debutla as db
        from debutla import backends
        op = db.DeBut.random("{_CHAIN}", seed=2)
        y = op @ np.ones(16)
        backends._warm_thread.join(60)
        print(backends.default_backend_for(np.ones(2)).name, "numba" in backends._failed)
        np.testing.assert_allclose(op @ np.ones(16), y, rtol=1e-12)
        try:
            backends.get_backend("numba")
        except ImportError as e:
            print("ImportError")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["numpy", "True", "ImportError"], r.stdout
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_bad_background_variable_names_it(value):
    r = run_python("""
        import numpy as np
        import debutla as db
        op = db.DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
        try:
            op @ np.ones(4)
        except ValueError as e:
            print("ERR", e)
    """, DEBUTLA_BACKGROUND=value)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERR") and "DEBUTLA_BACKGROUND" in r.stdout
    assert repr(value) in r.stdout


def test_warmup_without_an_operator_loads_numba_first():
    r = run_python(f"""
        import numpy as np
        import debutla as db
        from debutla import backends
        print(db.warmup() > 0, backends._numba_ready.is_set())
        op = db.DeBut.random("{_CHAIN}", seed=3)
        print(backends.default_backend_for(np.ones(2)).name, backends._warm_thread is None)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "numba", "True"], r.stdout


def test_load_cpu_backend_falls_back_to_numpy_without_numba():
    r = run_python("""
        import sys
        sys.modules["numba"] = None
        import debutla as db
        from debutla import backends
        print(backends.load_cpu_backend().name, db.warmup() >= 0)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["numpy", "True"], r.stdout


def test_first_products_of_other_libraries_keep_their_type_while_numba_loads():
    pytest.importorskip("torch")
    r = run_python(f"""
        import numpy as np, torch
        import debutla as db
        from debutla import backends
        op = db.DeBut.random("{_CHAIN}", seed=5)
        x = torch.linspace(-1, 1, 16, dtype=torch.float64)
        y1 = op @ x                                  # NumPy reference backend meanwhile
        backends._warm_thread.join(240)
        y2 = op @ x                                  # Numba
        D = op.to_dense()
        for y in (y1, y2):
            assert isinstance(y, torch.Tensor) and y.dtype == torch.float64
            np.testing.assert_allclose(y.numpy(), D @ x.numpy(), rtol=1e-12, atol=1e-12)
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok"]
