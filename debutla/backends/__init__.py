"""Kernel backends: one module per backend, one small interface.

A backend is a module object exposing

``name : str``
    Its name (``"numpy"``, ``"numba"``, ``"cupy"``).
``xp``
    The array module its arrays belong to (``numpy`` or ``cupy``).
``prepare(factors) -> state``
    Take the factor values (a tuple of arrays in the canonical ``(nb, r, s, t)`` layout,
    application order, one common supported dtype) and return whatever internal layout
    the kernels want.  Called once per operator and dtype; the result is cached and never
    mutated.
``apply_rows(state, specs, X, out=None) -> Y``
    ``Y = X @ D.T`` for ``X`` of shape ``(k, Q)`` (row-major batch, the layout of neural
    networks), ``Y`` of shape ``(k, P)``.  ``X`` has the state's dtype.
``apply_cols(state, specs, X, out=None) -> Y``
    ``Y = D @ X`` for ``X`` of shape ``(Q, k)``, ``Y`` of shape ``(P, k)``.

``specs`` is the tuple of :class:`~debutla.chain.FactorSpec`.  Padding, dtype promotion,
input validation and adjoints are the operator's job: ``D.T`` and ``D.H`` are operators
of their own (reversed chain, transposed factors), so backends implement the forward
product only.  ``out`` (when given) has the result's shape and dtype and is written in
place and returned.

:func:`get_backend` picks a backend by name; :func:`default_backend_for` picks one for
an input array: NumPy arrays run on ``numba`` when it imports, else ``numpy``; CuPy
arrays on ``cupy``.  The environment variable ``DEBUTLA_BACKEND`` overrides the default
for NumPy inputs.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from numpy import ndarray as _np_ndarray

__all__ = ["get_backend", "default_backend_for", "available_backends", "BACKENDS"]

BACKENDS = ("numpy", "numba", "cupy")
_MODULES = {"numpy": "numpy_", "numba": "numba_", "cupy": "cupy_"}
_loaded: dict[str, ModuleType] = {}
_failed: dict[str, str] = {}


def get_backend(name: str) -> ModuleType:
    """Return the backend module called ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not a known backend.
    ImportError
        If the backend's dependencies are not installed.
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
    """Names of the backends whose dependencies import."""
    out = []
    for name in BACKENDS:
        try:
            get_backend(name)
        except ImportError:
            continue
        out.append(name)
    return out


def _is_cupy_array(x: object) -> bool:
    t = type(x)
    return t is not _np_ndarray and t.__module__.split(".")[0] == "cupy"


# default CPU backend per value of DEBUTLA_BACKEND (read at every call, resolved once)
_cpu_default: dict = {}


def default_backend_for(x: object) -> ModuleType:
    """The backend that serves array ``x`` by default (see module docstring)."""
    if _is_cupy_array(x):
        return get_backend("cupy")
    raw = os.environ.get("DEBUTLA_BACKEND")
    mod = _cpu_default.get(raw)
    if mod is not None:
        return mod
    env = (raw or "").strip().lower()
    if env:
        if env not in ("numpy", "numba"):
            raise ValueError(
                f"DEBUTLA_BACKEND must be 'numpy' or 'numba' for NumPy inputs, got {env!r}"
            )
        mod = get_backend(env)
    else:
        try:
            mod = get_backend("numba")
        except ImportError:
            mod = get_backend("numpy")
    _cpu_default[raw] = mod
    return mod
