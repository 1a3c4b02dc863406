"""Argument validation shared by every module: one error policy, written once.

The policy (see ``docs/contributing.rst``):

* ``TypeError`` when an argument has the wrong *kind* (a float where an int is needed,
  a list where a dtype is needed, an unsupported dtype);
* ``ValueError`` when it has the right kind but a wrong *value* (a negative size, a
  shape that does not fit, NaN in a matrix);
* ``IndexError`` only for *positions* (``chain[7]``, ``op.factor_sparse(99)``), as
  Python's sequence protocol demands.

Every message starts with ``where`` (the public function or argument, e.g.
``"factorize(tol)"``), names the offending value and states the rule it broke.
Messages are built once, at the place that knows the rule: no caller rewrites them.

This module imports nothing from the rest of the package at import time.
"""

from __future__ import annotations

import importlib
import math
import numbers
import operator as _operator
from typing import Any, Iterable

import numpy as np

__all__ = [
    "SUPPORTED_DTYPES",
    "check_int",
    "check_real",
    "check_choice",
    "check_bool",
    "supported_dtype",
    "result_dtype",
    "standard_dtype",
    "as_generator",
    "check_out",
    "check_matrix",
    "optional_module",
]

#: The value dtypes every backend supports.
SUPPORTED_DTYPES: tuple[np.dtype, ...] = (
    np.dtype(np.float32),
    np.dtype(np.float64),
    np.dtype(np.complex64),
    np.dtype(np.complex128),
)

_DTYPE_NAMES = "float32, float64, complex64 or complex128"


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def check_int(value: object, name: str, *, where: str = "", min: int | None = 1,
              max: int | None = None) -> int:
    """``value`` as a Python ``int`` in ``[min, max]``.

    Any integer type (``int``, ``numpy.integer``, anything with ``__index__``) is
    accepted; ``bool`` is refused.

    Raises
    ------
    TypeError
        If ``value`` is not an integer.
    ValueError
        If it lies outside ``[min, max]``.

    Examples
    --------
    >>> check_int(np.int64(3), "n")
    3
    """
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{_prefix(where)}{name} must be an integer, got {value!r}")
    v = _operator.index(value)  # type: ignore[arg-type]
    if min is not None and v < min:
        rule = "a positive integer" if min == 1 else f"an integer >= {min}"
        raise ValueError(f"{_prefix(where)}{name} must be {rule}, got {v}")
    if max is not None and v > max:
        raise ValueError(f"{_prefix(where)}{name} must be an integer <= {max}, got {v}")
    return v


def check_real(value: object, name: str, *, where: str = "", min: float | None = None,
               max: float | None = None, min_open: bool = False,
               allow_inf: bool = False) -> float:
    """``value`` as a finite Python ``float`` in ``[min, max]`` (``(min, max]`` with
    ``min_open``).

    Any real number (``int``, ``float``, ``numpy.floating`` ...) is accepted; ``bool`` and
    complex numbers are refused; NaN always, and infinity unless ``allow_inf``.

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If it is NaN, infinite (unless allowed) or out of range.

    Examples
    --------
    >>> check_real(np.float32(0.5), "tol", min=0)
    0.5
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_prefix(where)}{name} must be a real number, got {value!r}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{_prefix(where)}{name} must be finite, got {v}")
    if min is not None and (v < min or (min_open and v == min)):
        op = ">" if min_open else ">="
        raise ValueError(f"{_prefix(where)}{name} must be {op} {min}, got {v}")
    if max is not None and v > max:
        raise ValueError(f"{_prefix(where)}{name} must be <= {max}, got {v}")
    return v


def check_bool(value: object, name: str, *, where: str = "") -> bool:
    """``value`` if it is a ``bool`` (or ``numpy.bool_``), else ``TypeError``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{_prefix(where)}{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(value: object, name: str, choices: Iterable[str], *, where: str = "",
                 lower: bool = False) -> str:
    """``value`` if it is one of the strings ``choices`` (case-folded with ``lower``).

    Raises
    ------
    TypeError
        If ``value`` is not a string.
    ValueError
        If it is not one of ``choices``.
    """
    choices = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(f"{_prefix(where)}{name} must be one of {choices}, got {value!r}")
    v = value.strip().lower() if lower else value
    if v not in choices:
        raise ValueError(f"{_prefix(where)}{name} must be one of {choices}, got {value!r}")
    return v


def supported_dtype(dtype: Any, *, where: str = "", promote: bool = False) -> np.dtype:
    """``dtype`` as one of :data:`SUPPORTED_DTYPES`.

    An explicitly requested dtype must be one of the four. With ``promote`` (a dtype
    inferred from data), integers and bools become float64 and float16 float32, and a
    non-native byte order is converted to the native one.

    Raises
    ------
    TypeError
        If ``dtype`` is not a dtype or is not supported.
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{_prefix(where)}{dtype!r} is not a dtype") from None
    if dt.kind in "fc" and not dt.isnative:
        dt = dt.newbyteorder("=")
    if dt in SUPPORTED_DTYPES:
        return dt
    if promote and dt.kind in "biu":
        return np.dtype(np.float64)
    if promote and dt == np.float16:
        return np.dtype(np.float32)
    raise TypeError(f"{_prefix(where)}dtype {dt} is not supported; use {_DTYPE_NAMES}")


def result_dtype(op_dtype: np.dtype, x_dtype: np.dtype, *, where: str = "") -> np.dtype:
    """The dtype of ``op @ x``: NumPy promotion, refused unless supported.

    Raises
    ------
    TypeError
        If ``x_dtype`` is not numeric or the promoted dtype is not supported.
    """
    if x_dtype.kind not in "biufc":
        raise TypeError(f"{_prefix(where)}input dtype {x_dtype} is not numeric; use "
                        f"{_DTYPE_NAMES}")
    dt = np.result_type(op_dtype, x_dtype)
    if dt not in SUPPORTED_DTYPES:
        raise TypeError(f"{_prefix(where)}{op_dtype} operator with {x_dtype} input gives "
                        f"{dt}, which is not supported ({_DTYPE_NAMES})")
    return dt


#: The numeric dtypes of the Array API standard (float16 and bfloat16 are not among them).
_STANDARD_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                    "uint64", "float32", "float64", "complex64", "complex128")
_standard_cache: dict = {}


def standard_dtype(dtype: Any, xp: Any, name: str, *, where: str = "") -> np.dtype:
    """The NumPy dtype equal to ``dtype``, a dtype of the Array API namespace ``xp``.

    Arrays of other libraries (PyTorch, array-api-strict, ...) are accepted when their
    dtype is one of the standard's numeric dtypes (bool, signed and unsigned integers,
    float32, float64, complex64, complex128); :func:`result_dtype` then promotes it as it
    promotes NumPy inputs.  ``name`` is the argument (``"x"``, ``"out"``).

    Raises
    ------
    TypeError
        If ``dtype`` is none of them (e.g. ``torch.bfloat16`` or ``torch.float16``,
        which the standard does not define).

    Examples
    --------
    >>> standard_dtype(np.float32, np, "x")
    dtype('float32')
    >>> standard_dtype(np.float16, np, "x", where="DeBut @ x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: DeBut @ x: x has dtype <class 'numpy.float16'>, which is not supported; ...
    """
    try:
        return _standard_cache[(xp, dtype)]
    except (KeyError, TypeError):  # TypeError: an unhashable dtype object
        pass
    for n in _STANDARD_DTYPES:
        std = getattr(xp, n, None)
        if std is not None and std == dtype:
            dt = np.dtype(n)
            try:
                _standard_cache[(xp, dtype)] = dt
            except TypeError:
                pass
            return dt
    raise TypeError(f"{_prefix(where)}{name} has dtype {dtype}, which is not supported; use "
                    f"{_DTYPE_NAMES} (integer and bool arrays are promoted)")


def as_generator(seed: Any, *, where: str = "seed") -> np.random.Generator:
    """A ``numpy.random.Generator`` from ``seed``: None, a non-negative int, or a Generator.

    Raises
    ------
    TypeError
        If ``seed`` is of another kind.
    ValueError
        If ``seed`` is a negative int.

    Examples
    --------
    >>> as_generator(0).integers(10) == np.random.default_rng(0).integers(10)
    True
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"{where}: seed must be a non-negative int, got {seed}")
        return np.random.default_rng(int(seed))
    raise TypeError(f"{where}: seed must be None, an int or a numpy.random.Generator, "
                    f"got {seed!r}")


def check_out(out: Any, want: tuple[int, ...], dtype: np.dtype, xp: Any, *,
              where: str = "", out_dtype: np.dtype | None = None) -> None:
    """Refuse an ``out`` array of the wrong type, shape or dtype, or a read-only one.

    ``want`` is the shape the *user* sees (never an internal padded shape).  ``xp`` is
    the array module whose ``ndarray`` ``out`` must be (``numpy``, ``cupy``), or the
    array type itself (the input's own type, for arrays of other libraries; their
    ``out_dtype`` is ``out.dtype`` as a NumPy dtype, see :func:`standard_dtype`).

    Raises
    ------
    TypeError
        If ``out`` is not an array of module ``xp``.
    ValueError
        If its shape or dtype differs from the result's, or it is read-only.

    Examples
    --------
    >>> check_out(np.zeros(3), (3,), np.dtype(np.float64), np)
    >>> check_out(np.zeros(2), (3,), np.dtype(np.float64), np, where="f")
    Traceback (most recent call last):
    ...
    ValueError: f: out must have shape (3,) and dtype float64, got shape (2,) and dtype float64
    """
    kind: Any = xp if isinstance(xp, type) else xp.ndarray
    if not isinstance(out, kind):
        name = f"{kind.__module__.split('.')[0]}.{kind.__name__}"
        raise TypeError(f"{_prefix(where)}out must be a {name} of shape {want} and dtype "
                        f"{dtype}, got {type(out).__name__}")
    got = out.dtype if out_dtype is None else out_dtype
    if tuple(out.shape) != want or got != dtype:
        raise ValueError(f"{_prefix(where)}out must have shape {want} and dtype {dtype}, "
                         f"got shape {tuple(out.shape)} and dtype {got}")
    if not getattr(getattr(out, "flags", None), "writeable", True):
        raise ValueError(f"{_prefix(where)}out is read-only")


def check_matrix(value: Any, name: str, *, where: str = "") -> np.ndarray:
    """``value`` as a finite, non-empty 2-D NumPy array of a supported dtype.

    Integers and bools become float64, float16 float32 (:func:`supported_dtype` with
    ``promote``); the array is not copied when it already qualifies.

    Raises
    ------
    TypeError
        If ``value`` is a CuPy array or a DeBut operator (the message says how to get a
        NumPy array), is not numeric, or has an unsupported dtype.
    ValueError
        If it is not 2-D, is empty, or holds NaN or Inf.

    Examples
    --------
    >>> check_matrix([[1, 2], [3, 4]], "W").dtype
    dtype('float64')
    """
    if hasattr(value, "__cuda_array_interface__"):
        raise TypeError(f"{_prefix(where)}{name} must be a NumPy array; GPU arrays are "
                        f"not supported here (move it to the host, e.g. {name}.get())")
    if hasattr(value, "to_dense") and hasattr(value, "chain"):  # a DeBut operator
        raise TypeError(f"{_prefix(where)}{name} must be a dense array; use "
                        f"{name}.to_dense() for a DeBut operator")
    try:
        A = np.asarray(value)
    except Exception as e:  # pragma: no cover - exotic array-likes
        raise TypeError(f"{_prefix(where)}{name} must be array-like, got "
                        f"{type(value).__name__}") from e
    if A.dtype.kind not in "biufc":
        raise TypeError(f"{_prefix(where)}{name} must be numeric ({_DTYPE_NAMES}), got "
                        f"dtype {A.dtype}")
    if A.ndim != 2:
        raise ValueError(f"{_prefix(where)}{name} must be a 2-D matrix, got shape {A.shape}")
    if A.size == 0:
        raise ValueError(f"{_prefix(where)}{name} must not be empty, got shape {A.shape}")
    A = A.astype(supported_dtype(A.dtype, where=where, promote=True), copy=False)
    if not np.isfinite(A).all():
        bad = int(A.size - np.count_nonzero(np.isfinite(A)))
        raise ValueError(f"{_prefix(where)}{name} contains {bad} NaN or Inf entries; all "
                         f"entries must be finite")
    return A


def optional_module(name: str, *, what: str, package: str) -> Any:
    """Import the optional dependency ``name``, or say what needs it and how to get it.

    Raises
    ------
    ImportError
        If ``name`` does not import: ``"<what> needs the '<package>' package (pip install
        <package>)"``.

    Examples
    --------
    >>> optional_module("math", what="this example", package="math").sqrt(4.0)
    2.0
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"{what} needs the {package!r} package (pip install "
                          f"{package})") from None
