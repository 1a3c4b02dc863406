"""The kernel cache is trusted only when safe, and no cache failure fails a product.

Regression tests for two red-team findings (issue 7, defects 1 and 2): a predictable
fallback folder whose owner and mode were never checked, with ``.pyc`` files and Numba's
pickled index trusted as found; and ``RuntimeError: cannot cache function`` on every
product when no cache folder is writable.
"""

from __future__ import annotations

import errno
import os
import pickle
import stat
import subprocess
import textwrap

import pytest
from procs import run_python

from debutla import _config
from debutla.backends import _cache

SRC = "VALUE = 42\n"


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    """Point the cache at ``tmp_path/root`` and forget the resolved folder."""
    root = tmp_path / "root"
    monkeypatch.setenv("DEBUTLA_CACHE_DIR", str(root))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    _config.reload_environment()
    monkeypatch.setattr(_cache, "_dir", [])
    monkeypatch.setattr(_cache, "_warned", set())
    yield root
    _config.reload_environment()


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _no_tmp_files(folder) -> bool:
    return not any(".tmp" in name for name in os.listdir(folder))


def test_cache_folders_are_created_private(fresh_cache):
    d = _cache.cache_dir()
    assert d == str(fresh_cache / "numba")
    for p in (fresh_cache, fresh_cache / "numba", fresh_cache / "numba" / "__pycache__"):
        assert _mode(p) == 0o700 and os.lstat(p).st_uid == os.getuid()


@pytest.mark.parametrize("which", ["root", "numba", "__pycache__"])
def test_group_or_world_writable_folder_is_refused(fresh_cache, which):
    path = fresh_cache if which == "root" else fresh_cache / "numba"
    if which == "__pycache__":
        path = path / "__pycache__"
    path.mkdir(parents=True, mode=0o700)
    os.chmod(path, 0o777)
    with pytest.warns(RuntimeWarning, match="writable by group or others"):
        d = _cache.cache_dir()
    assert d is not None and not d.startswith(str(fresh_cache))
    assert _mode(d) == 0o700 and _mode(os.path.dirname(d)) == 0o700


def test_predictable_tmp_folder_is_never_used(fresh_cache):
    fresh_cache.write_text("not a folder")  # the configured root is unusable
    with pytest.warns(RuntimeWarning, match="not using the cache folder"):
        d = _cache.cache_dir()
    assert d is not None
    # a fresh mkdtemp folder: unpredictable name, not /tmp/debutla-<uid>
    assert os.path.basename(os.path.dirname(d)).startswith("debutla-kernels-")
    assert f"debutla-{os.getuid()}" not in d


def test_symlinked_folder_is_refused(fresh_cache, tmp_path):
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o700)
    fresh_cache.mkdir(mode=0o700)
    os.symlink(elsewhere, fresh_cache / "numba")
    with pytest.warns(RuntimeWarning, match="symbolic link"):
        d = _cache.cache_dir()
    assert not d.startswith(str(fresh_cache))
    assert os.listdir(elsewhere) == []


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                    reason="needs root to create a folder owned by another user")
def test_folder_owned_by_another_user_is_refused(fresh_cache):
    (fresh_cache / "numba").mkdir(parents=True, mode=0o700)
    os.chown(fresh_cache / "numba", 12345, 12345)
    with pytest.warns(RuntimeWarning, match="owned by uid 12345"):
        d = _cache.cache_dir()
    assert not d.startswith(str(fresh_cache))


def test_runtime_dir_is_the_first_fallback(fresh_cache, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    fresh_cache.write_text("not a folder")
    with pytest.warns(RuntimeWarning):
        d = _cache.cache_dir()
    assert d == str(run / "debutla" / "numba")


@pytest.mark.parametrize("plant", ["fifo", "symlink", "other_text", "foreign_owner"])
def test_whatever_is_planted_at_a_module_path_is_replaced(fresh_cache, tmp_path, plant):
    d = _cache.cache_dir()
    name = _cache._module_name("plant" + plant, SRC)
    path = os.path.join(d, name + ".py")
    target = tmp_path / "target.py"
    target.write_text("VALUE = 666\n")
    if plant == "fifo":
        os.mkfifo(path)  # opening it for reading must not block
    elif plant == "symlink":
        os.symlink(target, path)
    elif plant == "other_text":
        with open(path, "w") as fh:
            fh.write("VALUE = 666\n")
    else:
        if os.getuid() != 0:
            pytest.skip("needs root to create a file owned by another user")
        with open(path, "w") as fh:
            fh.write(SRC)
        os.chown(path, 12345, 12345)
    mod = _cache.load_module(SRC, "plant" + plant)
    assert mod.VALUE == 42
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid()
    with open(path) as fh:
        assert fh.read() == SRC
    assert target.read_text() == "VALUE = 666\n"  # a link's target is never written
    assert _no_tmp_files(d)


def test_modules_run_from_source_never_from_a_planted_pyc(fresh_cache):
    d = _cache.cache_dir()
    mod = _cache.load_module(SRC, "pyc")
    assert mod.__name__.startswith(_cache.KERNEL_PACKAGE + ".pyc_")
    assert not any(n.endswith(".pyc") for n in os.listdir(os.path.join(d, "__pycache__")))


def test_write_failure_falls_back_to_memory_without_tmp_files(fresh_cache, monkeypatch):
    d = _cache.cache_dir()

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_cache.os, "replace", full_disk)
    with pytest.warns(RuntimeWarning, match="No space left"):
        mod = _cache.load_module(SRC + "# full\n", "full")
    assert mod.VALUE == 42 and not _cache.is_cached(mod)
    assert _no_tmp_files(d)


def _script(body: str) -> str:
    return textwrap.dedent("""
        import warnings
        import numpy as np
        import debutla.backends.numba_ as nbk
        from debutla import DeBut
        from debutla._config import config
        from strategies import reference
        nbk.CODEGEN_MIN_NNZ = 0
        op = DeBut.random("10 <-(5,3,1)- 6 <-(3,2,1)- 4", seed=0, backend="numba")
        x = np.arange(4.0)
        with warnings.catch_warnings(record=True) as w, config(background=False):
            warnings.simplefilter("always")
            y = op @ x
            y2 = op.rmatvec(np.ones(10))
        assert np.allclose(y, reference(op) @ x), y
        assert np.allclose(y2, reference(op).T @ np.ones(10)), y2
        print("WARN", sum("debutla kernel cache" in str(m.message) for m in w))
    """) + textwrap.dedent(body)


def _run(script: str, **env: str) -> subprocess.CompletedProcess:
    return run_python(script, keep=(), drop=("XDG_RUNTIME_DIR",), **env)


def test_no_writable_folder_anywhere_still_computes(tmp_path):
    """Read-only install + unwritable home: products work (in-memory compile), one warning."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = _run(_script(""), DEBUTLA_CACHE_DIR=str(blocker / "cache"),
             TMPDIR=str(blocker / "tmp"), HOME=str(blocker / "home"),
             NUMBA_CACHE_DIR=str(blocker / "numba"))
    assert r.returncode == 0, r.stderr
    assert "WARN 1" in r.stdout


@pytest.mark.parametrize("which", [".nbi", ".nbc"])
def test_corrupted_cache_files_are_recompiled_and_removed(tmp_path, which):
    env = {"DEBUTLA_CACHE_DIR": str(tmp_path)}
    r = _run(_script(""), **env)
    assert r.returncode == 0 and "WARN 0" in r.stdout, r.stderr
    pyc = tmp_path / "numba" / "__pycache__"
    files = sorted(p for p in pyc.iterdir() if p.name.startswith("k_") and p.suffix == which)
    assert files
    import numba

    for p in files:
        if which == ".nbi":  # right version header, then garbage where the pickle goes
            p.write_bytes(pickle.dumps(numba.__version__) + b"\x80\x05garbage")
        else:
            p.write_bytes(b"\x80\x05garbage")
    r = _run(_script(""), **env)
    assert r.returncode == 0, r.stderr
    assert "WARN 1" in r.stdout
    assert not any(p.exists() and p.read_bytes().endswith(b"garbage") for p in files)
    assert _no_tmp_files(pyc) and _no_tmp_files(tmp_path / "numba")
    r = _run(_script(""), **env)  # the next process is clean again
    assert r.returncode == 0 and "WARN 0" in r.stdout, r.stderr + r.stdout
