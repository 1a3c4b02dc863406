"""Run-time configuration: every ``DEBUTLA_*`` environment variable, and :func:`config`.

One home for the settings that change how products run (not what they compute).

Settings
--------
``backend``
    The CPU backend for NumPy inputs: ``"numba"`` (default when Numba imports) or
    ``"numpy"`` (the reference).  CuPy inputs always run on ``"cupy"``.
    Environment: ``DEBUTLA_BACKEND``.
``threads``
    Threads of the Numba backend for large products; ``None`` follows Numba
    (``numba.get_num_threads()``, i.e. ``NUMBA_NUM_THREADS``).
    Environment: ``DEBUTLA_NUM_THREADS``.
``fused``
    Whether the Numba backend may use its chain-specialised (generated, compiled) kernels;
    off, every product uses the precompiled factor-by-factor kernel.
``background``
    Whether first products run on slower kernels while the fast ones load in a
    background thread (default), or wait for them (``False``: every product runs on
    the kernel it will keep using).  Two things load in the background: Numba itself
    (about 1 s at a process's first CPU product: until it is ready, products run on
    the NumPy reference backend), and a chain's specialised kernel (compiled or loaded
    from the cache: until it is ready, products run on the precompiled generic
    kernel).  Results agree to rounding, but the first products of a process may
    differ from later ones in the last bits; set ``False`` (or
    ``DEBUTLA_BACKGROUND=0``) where bitwise repeatability matters more than the first
    second.  Environment: ``DEBUTLA_BACKGROUND``.
``spin``
    Whether the worker threads of a product split over threads spin between the
    products of a burst instead of sleeping (``debutla.backends._numba_pool``):
    ``None`` (default) spins for the operator's products and not inside the
    ``debutla.torch`` layers, ``True`` / ``False`` everywhere.  Measured on 2 vCPUs
    (``benchmarks/README_kernels.md``, change 12): a loop of VGG products at batch 256
    ran 1.76-1.80x faster on two threads than on one with spinning, 1.40x without; next to
    torch's OpenMP threads (``nn.Linear`` and a DeBut layer called in turn) the layer's
    two-thread inference was about 20 % slower with spinning.
    Environment: ``DEBUTLA_SPIN``.
``pool``
    Which threads run the parts of a product split over threads: ``"debutla"``
    (debutla's own worker threads, see ``spin``) or ``"openmp"`` (the threads of the
    OpenMP runtime that torch loaded, when the ``debutla.torch`` layers found it, for
    each kind of product wherever that ran faster lately; else debutla's).  ``None``
    (default) is ``"openmp"`` inside the ``debutla.torch`` layers and ``"debutla"``
    elsewhere.  After each parallel torch operation torch's OpenMP threads spin for
    milliseconds on the cores a split product needs; running the product on them
    instead made the layers' two-thread calls up to 1.35x faster on a quiet 2-vCPU
    machine, and the measured choice keeps them from the team's stalls on a busy one
    (``benchmarks/README_kernels.md``, change 14).  Results do not depend on it.
    Environment: ``DEBUTLA_POOL``.
``cupy_rows``
    Batch rows per thread block of the CuPy fused kernel (``None``: chosen per call;
    a benchmarking knob).  Environment: ``DEBUTLA_CUPY_ROWS``.
``cupy_threads``
    Threads per block of the CuPy fused kernel (``None``: chosen per call; a
    benchmarking knob).  Environment: ``DEBUTLA_CUPY_THREADS``.

The kernel cache directory is ``DEBUTLA_CACHE_DIR`` (default
``$XDG_CACHE_HOME/debutla``, i.e. ``~/.cache/debutla``); see :func:`cache_root`.

When the environment is read
----------------------------
Once, at the first use of any setting (the first product, or the first call of
:func:`get`), never at import and never again afterwards: changing ``os.environ``
later has no effect (use :func:`config`).  A malformed variable raises ``ValueError``
naming it at that first use, and at every later use until the process is restarted
(or :func:`reload_environment` is called after fixing it).

Overrides
---------
``with config(threads=1, backend="numpy"):`` overrides settings for the code in the
block, in the current thread (and asyncio task) only: other threads keep their own
settings, so ``config`` is safe to use from many threads at once, and blocks nest (the
inner one wins, the outer one is restored on exit).  Threads started inside a block do
not inherit it (Python threads start with a fresh context): set process-wide defaults
with :func:`set_defaults` or the environment.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from typing import Any, Iterator

from ._validation import check_bool, check_choice, check_int

__all__ = ["config", "get", "set_defaults", "cache_root", "reload_environment", "token",
           "override", "ENVIRONMENT"]

#: The environment variables debutla reads, and what each sets.
ENVIRONMENT = {
    "DEBUTLA_BACKEND": "backend: 'numba' or 'numpy' (CPU backend for NumPy inputs)",
    "DEBUTLA_NUM_THREADS": "threads: a positive integer (Numba backend threads)",
    "DEBUTLA_CACHE_DIR": "folder of the kernel cache (default ~/.cache/debutla)",
    "DEBUTLA_CUPY_ROWS": "cupy_rows: 1, 2, 4 or 8 (rows per block of the CuPy kernel)",
    "DEBUTLA_CUPY_THREADS": "cupy_threads: 128, 256, 512 or 1024 (threads per block of the "
                            "CuPy kernel)",
    "DEBUTLA_BACKGROUND": "background: 0 or 1 (load Numba and kernels in the background)",
    "DEBUTLA_SPIN": "spin: 0 or 1 (split products' workers spin between the calls of a "
                    "burst)",
    "DEBUTLA_POOL": "pool: 'debutla' or 'openmp' (the threads of split products)",
}

_KEYS = ("backend", "threads", "fused", "background", "spin", "pool", "cupy_rows",
         "cupy_threads")
_CPU_BACKENDS = ("numba", "numpy")
_POOLS = ("debutla", "openmp")
_CUPY_ROWS = (1, 2, 4, 8)
_CUPY_THREADS = (128, 256, 512, 1024)

_lock = threading.Lock()
_defaults: dict[str, Any] | None = None
_env_error: ValueError | None = None
_cache_root: str | None = None
_overrides: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "debutla_config", default={})
#: Bumped whenever the process-wide defaults may change (see :func:`token`).
_epoch = 0


# -- validation of one setting ----------------------------------------------------------
def _check(key: str, value: Any, where: str) -> Any:
    if key == "backend":
        return None if value is None else check_choice(value, "backend", _CPU_BACKENDS,
                                                       where=where, lower=True)
    if key == "threads":
        return None if value is None else check_int(value, "threads", where=where)
    if key in ("fused", "background"):
        return check_bool(value, key, where=where)
    if key == "spin":
        return None if value is None else check_bool(value, key, where=where)
    if key == "pool":
        return None if value is None else check_choice(value, "pool", _POOLS, where=where,
                                                       lower=True)
    if key in ("cupy_rows", "cupy_threads"):
        if value is None:
            return None
        v = check_int(value, key, where=where)
        allowed = _CUPY_ROWS if key == "cupy_rows" else _CUPY_THREADS
        if v not in allowed:
            raise ValueError(f"{where}: {key} must be one of {allowed}, got {v}")
        return v
    raise TypeError(f"{where}: unknown setting {key!r}; the settings are {_KEYS}")


def _from_env(name: str, key: str, parse) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return _check(key, parse(raw), "")
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name} must be "
                         f"{ENVIRONMENT[name].split(': ', 1)[1]}, got {raw!r}") from None


def _bool_or_raw(raw: str) -> Any:
    return {"0": False, "1": True}.get(raw, raw)


def _int_or_raw(raw: str) -> Any:
    try:
        return int(raw)
    except ValueError:
        return raw


def _load() -> dict[str, Any]:
    """The process-wide defaults, reading the environment on first use."""
    global _defaults, _env_error, _cache_root
    d = _defaults
    if d is not None:
        if _env_error is not None:
            raise _env_error
        return d
    with _lock:
        if _defaults is None:
            d = {"backend": None, "threads": None, "fused": True, "background": True,
                 "spin": None, "pool": None,
                 "cupy_rows": None, "cupy_threads": None}
            try:
                d["backend"] = _from_env("DEBUTLA_BACKEND", "backend", str)
                d["threads"] = _from_env("DEBUTLA_NUM_THREADS", "threads", _int_or_raw)
                d["cupy_rows"] = _from_env("DEBUTLA_CUPY_ROWS", "cupy_rows", _int_or_raw)
                d["cupy_threads"] = _from_env("DEBUTLA_CUPY_THREADS", "cupy_threads",
                                              _int_or_raw)
                bg = _from_env("DEBUTLA_BACKGROUND", "background", _bool_or_raw)
                if bg is not None:
                    d["background"] = bg
                d["spin"] = _from_env("DEBUTLA_SPIN", "spin", _bool_or_raw)
                d["pool"] = _from_env("DEBUTLA_POOL", "pool", str)
            except ValueError as e:
                _env_error = e
            env = os.environ.get("DEBUTLA_CACHE_DIR", "").strip()
            if env:
                _cache_root = os.path.abspath(os.path.expanduser(env))
            else:
                base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(
                    os.path.expanduser("~"), ".cache")
                _cache_root = os.path.join(os.path.abspath(base), "debutla")
            _defaults = d
    if _env_error is not None:
        raise _env_error
    return _defaults


def reload_environment() -> None:
    """Forget what was read from the environment: the next use reads it again.

    For tests and for a process that fixes a malformed variable; settings made with
    :func:`set_defaults` are lost too.

    Examples
    --------
    >>> reload_environment()
    """
    global _defaults, _env_error, _cache_root, _epoch
    with _lock:
        _defaults, _env_error, _cache_root = None, None, None
        _epoch += 1


# -- public accessors ---------------------------------------------------------------------
def get(key: str) -> Any:
    """The current value of setting ``key`` (override of the current thread, else default).

    Raises
    ------
    TypeError
        If ``key`` is not a setting.
    ValueError
        If an environment variable is malformed (named in the message).

    Examples
    --------
    >>> with config(threads=3):
    ...     get("threads")
    3
    """
    ov = _overrides.get()
    if key in ov:
        return ov[key]
    d = _load()
    if key not in d:
        raise TypeError(f"get: unknown setting {key!r}; the settings are {_KEYS}")
    return d[key]


def set_defaults(**settings: Any) -> None:
    """Change process-wide defaults (what threads see outside any :func:`config` block).

    Parameters
    ----------
    **settings
        Any of ``backend``, ``threads``, ``fused``, ``background``, ``spin``, ``pool``,
        ``cupy_rows``, ``cupy_threads``.

    Examples
    --------
    >>> set_defaults(threads=None)
    """
    global _epoch
    checked = {k: _check(k, v, "set_defaults") for k, v in settings.items()}
    d = _load()
    with _lock:
        d.update(checked)
        _epoch += 1


def token() -> int | None:
    """A number naming the settings that choose a product's kernel, or None.

    None inside a :func:`config` block that overrides ``backend`` or ``fused`` (the
    settings that choose the backend and kernel); otherwise two calls return the same
    number exactly when the process-wide defaults did not change in between
    (:func:`set_defaults`, :func:`reload_environment`).  The operator's fast lane for
    repeated products keys its cached decisions (backend, kernel) on it; the lane
    never splits a product across threads, so ``threads`` does not enter.

    Examples
    --------
    >>> token() == token()
    True
    >>> with config(fused=False):
    ...     token() is None
    True
    """
    ov = _overrides.get()
    if ov and ("backend" in ov or "fused" in ov):
        return None
    return _epoch


@contextlib.contextmanager
def config(**settings: Any) -> Iterator[None]:
    """Override settings for the code inside a ``with`` block (this thread only).

    Parameters
    ----------
    backend : {"numba", "numpy"} or None
        CPU backend for NumPy inputs (None: the default).
    threads : int or None
        Threads of the Numba backend (None: follow Numba).
    fused : bool
        Allow the Numba backend's chain-specialised kernels.
    background : bool
        Load Numba and compile a chain's specialised kernel in background threads
        while the first products run on slower kernels (True, the default), or wait
        for them (see the module docstring).
    spin : bool or None
        Whether split products' workers spin between the products of a burst (None:
        for the operator's products, not inside the ``debutla.torch`` layers).
    pool : {"debutla", "openmp"} or None
        Which threads run split products: debutla's own, or the OpenMP threads of the
        runtime torch loaded (None: ``"openmp"`` inside the ``debutla.torch`` layers
        when found, ``"debutla"`` elsewhere).
    cupy_rows : {1, 2, 4, 8} or None
        Rows per block of the CuPy fused kernel (None: automatic).
    cupy_threads : {128, 256, 512, 1024} or None
        Threads per block of the CuPy fused kernel (None: automatic).

    Raises
    ------
    TypeError, ValueError
        For an unknown setting or a bad value (checked before the block runs).

    Notes
    -----
    Blocks nest; each thread (and asyncio task) has its own overrides, so ``config``
    is thread-safe.  See the module docstring for when the environment is read.

    Examples
    --------
    >>> import numpy as np, debutla as db
    >>> op = db.DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
    >>> with config(backend="numpy", threads=1):
    ...     y = op @ np.ones(4)
    >>> y.shape
    (4,)
    """
    checked = {k: _check(k, v, "config") for k, v in settings.items()}
    token = _overrides.set({**_overrides.get(), **checked})
    try:
        yield
    finally:
        _overrides.reset(token)


class override:
    """:func:`config` for settings that are already valid (internal callers that build
    them from checked values): the same block, without the checks and the generator
    (3-4 us of a torch layer's product call, which enters two such blocks).

    Examples
    --------
    >>> with override({"threads": 2}):
    ...     get("threads")
    2
    """

    __slots__ = ("settings", "token")

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def __enter__(self) -> None:
        self.token = _overrides.set({**_overrides.get(), **self.settings})

    def __exit__(self, *exc: Any) -> None:
        _overrides.reset(self.token)


def cache_root() -> str:
    """The kernel cache folder as configured (``DEBUTLA_CACHE_DIR`` or the default).

    Not yet checked for ownership or permissions: the kernel cache
    (:mod:`debutla.backends._cache`) does that before using it.

    Examples
    --------
    >>> isinstance(cache_root(), str)
    True
    """
    try:
        _load()
    except ValueError:
        pass  # the cache folder does not depend on the malformed variable
    assert _cache_root is not None
    return _cache_root


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a thread of the parent may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
