"""Kernel backends: one module per backend, one typed interface (:class:`Backend`).

A backend is a module that satisfies :class:`Backend`:

``name : str``
    Its name (``"numpy"``, ``"numba"``, ``"cupy"``).
``xp``
    The array module its arrays belong to (``numpy`` or ``cupy``).
``prepare(factors) -> state``
    Take the factor values (a tuple of arrays in the canonical ``(nb, r, s, t)`` layout,
    application order, one common supported dtype) and return whatever internal layout
    the kernels want, with everything the kernels need (sizes included).  Called once
    per operator and dtype; the result is cached by the operator and never mutated
    (except for the kernels it compiles lazily).
``apply_rows(state, X, out=None, trans="N") -> Y``
    ``Y = X @ op(D).T`` for ``X`` of shape ``(k, n)`` (row-major batch, the layout of
    neural networks), ``Y`` of shape ``(k, p)``; ``op(D)`` is ``D`` (``"N"``), ``D^T``
    (``"T"``) or ``D^H`` (``"H"``), of size ``p x q``.
``apply_cols(state, X, out=None, trans="N") -> Y``
    ``Y = op(D) @ X`` for ``X`` of shape ``(n, k)``, ``Y`` of shape ``(p, k)``.

The contract (the operator's side, so backends never re-validate):

* ``X`` has the state's dtype and ``n <= q`` features: missing features are zeros
  (padding; a backend may copy into a padded array where its kernels need one).  For
  ``numba`` and ``cupy`` it is a C-contiguous ``xp.ndarray``; the ``numpy`` reference
  backend also takes a host array of any Array API library (PyTorch,
  ``array_api_strict``, ...) and computes in that library's namespace (the operator then
  passes no ``out``);
* ``out`` is None or a C-contiguous, writeable array of exactly the result's shape and
  the state's dtype that does not overlap ``X``; it is written in place and returned;
* adjoint products (``trans`` ``"T"``/``"H"``) run from the forward state: no second
  ``prepare`` and, for Numba, no second compile.

Input validation, dtype promotion and cutting the output to the operator's shape are
the operator's job (:mod:`debutla.operator`).

:func:`get_backend` picks a backend by name; :func:`default_backend_for` picks one for
an input array: arrays on a CUDA device run on ``cupy``; other arrays run on the CPU
backend (``numba`` when it imports, else ``numpy``; ``debutla.config(backend=...)`` or
``DEBUTLA_BACKEND`` choose).  Arrays of other libraries are viewed as NumPy or CuPy
arrays by the operator (:mod:`debutla._arrays`) before a backend sees them, except on
the reference backend.  Numba is imported in a background thread at the first
CPU product, which runs on ``numpy`` meanwhile (about 1 s; ``background=False`` waits
for it instead: see :mod:`debutla._config`).  :func:`is_device_array` tells them apart by the array
libraries' own protocols.

Examples
--------
>>> import numpy as np
>>> b = get_backend("numpy")
>>> st = b.prepare((np.ones((1, 2, 2, 1)),))
>>> b.apply_rows(st, np.ones((1, 2)))
array([[2., 2.]])
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from types import ModuleType
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from .. import _config

__all__ = ["Backend", "get_backend", "default_backend_for", "available_backends",
           "is_device_array", "load_cpu_backend", "BACKENDS"]

BACKENDS = ("numpy", "numba", "cupy")
_MODULES = {"numpy": "numpy_", "numba": "numba_", "cupy": "cupy_"}
_loaded: dict[str, ModuleType] = {}
_failed: dict[str, str] = {}
_log = logging.getLogger("debutla")

Trans = Literal["N", "T", "H"]


@runtime_checkable
class Backend(Protocol):
    """The interface every backend module satisfies (see the module docstring)."""

    name: str
    xp: Any

    def prepare(self, factors: tuple) -> Any:
        """Internal state for the canonical factor values (one dtype)."""
        ...

    def apply_rows(self, state: Any, X: Any, out: Any = None, trans: Trans = "N") -> Any:
        """``X @ op(D).T`` for ``X`` of shape ``(k, n)``."""
        ...

    def apply_cols(self, state: Any, X: Any, out: Any = None, trans: Trans = "N") -> Any:
        """``op(D) @ X`` for ``X`` of shape ``(n, k)``."""
        ...


def get_backend(name: str) -> Backend:
    """Return the backend module called ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not a known backend.
    ImportError
        If the backend's dependencies are not installed.

    Examples
    --------
    >>> get_backend("numpy").name
    'numpy'
    """
    if not isinstance(name, str) or name not in _MODULES:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    mod = _loaded.get(name)
    if mod is not None:
        return mod
    if name in _failed:
        raise ImportError(f"debutla backend {name!r} is unavailable: {_failed[name]}")
    try:
        mod = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    except ImportError as e:
        _failed[name] = str(e)
        raise ImportError(f"debutla backend {name!r} is unavailable: {e}") from e
    _loaded[name] = mod
    return mod


def available_backends() -> list[str]:
    """Names of the backends whose dependencies import.

    Examples
    --------
    >>> "numpy" in available_backends()
    True
    """
    out = []
    for name in BACKENDS:
        try:
            get_backend(name)
        except ImportError:
            continue
        out.append(name)
    return out


def is_device_array(x: object) -> bool:
    """Whether ``x`` is an array in GPU memory (served by the ``cupy`` backend).

    Decided by the array libraries' own means: an instance of ``cupy.ndarray`` when
    CuPy is already imported, else the ``__cuda_array_interface__`` attribute, else a
    CUDA device type from ``__dlpack_device__()`` (2: CUDA, 3: pinned host memory is
    not a device, 13: CUDA managed).  NumPy arrays and plain Python data are never
    device arrays (and never import CuPy).

    Examples
    --------
    >>> import numpy as np
    >>> is_device_array(np.ones(3)), is_device_array([1, 2])
    (False, False)
    """
    cp = sys.modules.get("cupy")
    if cp is not None and isinstance(x, cp.ndarray):
        return True
    if isinstance(x, (np.ndarray, np.generic, list, tuple, int, float, complex)):
        return False
    try:
        if hasattr(x, "__cuda_array_interface__"):
            return True
    except Exception:  # torch raises RuntimeError for a CUDA tensor that requires grad:
        return True    # in GPU memory all the same (the view is refused later, clearly)
    dev = getattr(x, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        kind = int(dev()[0])
    except Exception:  # a foreign object's protocol method misbehaved: not a device
        return False
    return kind in (2, 13)


# -- the CPU backend, made ready in the background ------------------------------------
# Importing Numba and initialising its CPU target take about 1 s, longer than most
# first products.  With ``background`` on (the default), the first CPU product starts a
# thread that does that work and is served by the NumPy reference backend meanwhile;
# products switch to Numba once it is ready.  The thread is not a daemon (a process
# exits only after it finishes, so no import is cut half-way) and a fork waits for it.
_numba_ready = threading.Event()
_warm_lock = threading.Lock()
_warm_thread: threading.Thread | None = None


def _make_numba_ready() -> None:
    """Import the Numba backend and load its generic kernels (raises ImportError)."""
    mod = get_backend("numba")
    try:
        mod.preload()  # type: ignore[attr-defined]
    except Exception as e:  # products still work: each load is retried on first use
        _log.warning("debutla: preloading the Numba kernels failed (%s: %s)",
                     type(e).__name__, e)
    _numba_ready.set()


def _warm_in_background() -> None:
    try:
        _make_numba_ready()
    except ImportError:
        pass  # remembered by get_backend: products stay on NumPy
    except Exception as e:  # e.g. the interpreter shutting down mid-import
        _failed.setdefault("numba", f"{type(e).__name__}: {e}")


def _start_warming() -> None:
    global _warm_thread
    with _warm_lock:
        if _warm_thread is None:
            _warm_thread = threading.Thread(target=_warm_in_background,
                                            name="debutla-load-numba", daemon=False)
            _warm_thread.start()


def _wait_for_warming() -> None:
    th = _warm_thread
    if th is not None and th is not threading.current_thread():
        th.join()


if hasattr(os, "register_at_fork"):  # a child must not inherit a half-done import
    os.register_at_fork(before=_wait_for_warming)


def load_cpu_backend() -> Backend:
    """Make the default CPU backend ready now, waiting for it (see the module docstring).

    Loads Numba and its generic kernels (what the first CPU product of a process
    otherwise starts in a background thread); afterwards every product of NumPy inputs
    runs on it.  Returns the backend: ``numba``, or ``numpy`` when Numba does not
    import.  Public as :func:`debutla.warmup` with no operator.

    Examples
    --------
    >>> load_cpu_backend().name in ("numba", "numpy")
    True
    """
    if not _numba_ready.is_set() and "numba" not in _failed:
        _wait_for_warming()
        try:
            _make_numba_ready()
        except ImportError:
            pass
    return _loaded["numba"] if _numba_ready.is_set() else get_backend("numpy")


def _cpu_backend() -> Backend:
    choice = _config.get("backend")
    if choice is not None:
        return get_backend(choice)
    if _numba_ready.is_set():
        return _loaded["numba"]
    if "numba" not in _failed:
        if _config.get("background"):
            _start_warming()
            return get_backend("numpy")
        return load_cpu_backend()
    return get_backend("numpy")


def default_backend_for(x: object) -> Backend:
    """The backend that serves array ``x`` by default (see the module docstring).

    Raises
    ------
    ValueError
        If ``DEBUTLA_BACKEND`` is malformed (at the first use of the settings).

    Examples
    --------
    >>> import numpy as np
    >>> default_backend_for(np.ones(2)).name in ("numba", "numpy")
    True
    """
    if is_device_array(x):
        return get_backend("cupy")
    return _cpu_backend()
