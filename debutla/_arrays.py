"""Arrays of other libraries: recognised by their protocols, viewed without copies.

An array that is not a NumPy (or CuPy) array but speaks the Array API standard
(``__array_namespace__``) or DLPack (``__dlpack__``), e.g. a PyTorch tensor, a JAX
array or an ``array_api_strict`` array, is *foreign*.  The operator computes a product
on such an input in one of two ways (``docs/conventions.rst``, "Arrays of other
libraries"):

* through a view: :func:`view` makes a NumPy (host memory) or CuPy (CUDA memory) array
  that shares the input's memory (``from_dlpack``), the usual backend computes, and
  :func:`give_back` hands the result over to the input's own library and device, again
  through DLPack where the library takes it without a copy;
* in the input's own namespace: the NumPy reference backend is written against the
  standard, so it computes with the input's library itself (:func:`namespace`).

Types are told apart by protocol only; ``array_api_compat`` is imported when the first
foreign array arrives, never by ``import debutla``.  Nothing here validates shapes or
dtypes: that is the operator's job (:mod:`debutla._validation` holds the rules).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["REFUSED", "is_foreign", "namespace", "device", "type_name", "view", "give_back",
           "reshape", "matrix_transpose"]

#: What a library raises when it refuses an export, a conversion or a write (PyTorch
#: raises BufferError or RuntimeError, NumPy TypeError or ValueError).
REFUSED = (BufferError, RuntimeError, TypeError, ValueError)
_namespaces: dict[type, Any] = {}


def is_foreign(x: object) -> bool:
    """Whether ``x`` is an array of another library than NumPy and CuPy.

    That is: it has ``__array_namespace__`` or ``__dlpack__`` and is neither a NumPy
    array or scalar nor a CuPy array (CuPy is checked only when already imported).

    Examples
    --------
    >>> is_foreign(np.ones(2)), is_foreign([1.0, 2.0])
    (False, False)
    """
    if isinstance(x, (np.ndarray, np.generic)):
        return False
    if not (hasattr(x, "__array_namespace__") or hasattr(x, "__dlpack__")):
        return False
    cp = sys.modules.get("cupy")
    return cp is None or not isinstance(x, cp.ndarray)


def namespace(x: Any) -> Any:
    """The Array API namespace of ``x`` (``array_api_compat`` wraps libraries that are
    not compliant yet, such as PyTorch), or None when ``x`` has none.

    Looked up once per array type.

    Examples
    --------
    >>> namespace(np.ones(2)).__name__
    'array_api_compat.numpy'
    """
    kind = type(x)
    try:
        return _namespaces[kind]
    except KeyError:
        pass
    from array_api_compat import array_namespace

    try:
        xp = array_namespace(x)
    except TypeError:  # an object that speaks DLPack only
        xp = None
    _namespaces[kind] = xp
    return xp


def device(x: Any) -> Any:
    """The device of ``x`` as its library names it (``array_api_compat.device``)."""
    from array_api_compat import device as _device

    return _device(x)


def type_name(x: Any) -> str:
    """``x``'s type qualified by its top-level module, e.g. ``'torch.Tensor'``.

    Examples
    --------
    >>> type_name(np.ones(2))
    'numpy.ndarray'
    """
    kind = type(x)
    return f"{kind.__module__.split('.')[0]}.{kind.__name__}"


def _lazy_bits(x: Any) -> bool:
    """Whether ``x`` is a view with a pending negation or conjugation.

    PyTorch marks such views (``is_neg()``, ``is_conj()``) instead of computing them;
    DLPack cannot carry the mark (PyTorch 2.14 exports a negated view's memory without
    its sign), so such arrays are not viewed.
    """
    for mark in ("is_neg", "is_conj"):
        f = getattr(x, mark, None)
        if callable(f) and f():
            return True
    return False


def view(x: Any, xp: Any, *, writable: bool = False) -> Any:
    """``x`` as an array of the module ``xp`` (``numpy`` or ``cupy``), or None.

    ``xp.from_dlpack`` first: no copy, and for CuPy the two libraries' CUDA streams are
    ordered by the protocol.  Where the library refuses the export (e.g. a PyTorch
    tensor that requires grad, or an object without ``__dlpack__``), ``xp.asarray``
    (which may copy, through ``__array__`` or ``__cuda_array_interface__``).  None when
    both refuse, when the result would not be numeric, and for views with a pending
    negation or conjugation (:func:`_lazy_bits`).

    With ``writable`` (an ``out`` argument) only a writeable DLPack view will do: a
    copy would lose what is written into it.

    Examples
    --------
    >>> a = np.arange(3.0)
    >>> np.shares_memory(view(memoryview(a), np), a)
    True
    >>> view(memoryview(a), np, writable=True) is None
    True
    """
    if _lazy_bits(x):
        return None
    try:
        v = xp.from_dlpack(x)
    except (*REFUSED, AttributeError):
        v = None
    if writable:
        return v if v is not None and getattr(v.flags, "writeable", True) else None
    if v is not None:
        return v
    try:
        v = xp.asarray(x)
    except REFUSED:
        return None
    return v if v.dtype.kind in "biufc" else None


def give_back(y: Any, xp: Any, dev: Any) -> Any:
    """The result ``y`` (a NumPy or CuPy array) as an array of namespace ``xp`` on ``dev``.

    ``xp.from_dlpack`` shares ``y``'s memory where the library can take it (PyTorch does
    for NumPy and CuPy arrays); ``xp.asarray`` otherwise.  The result is moved to ``dev``
    when the library put it elsewhere.

    Examples
    --------
    >>> import array_api_compat.numpy as xnp
    >>> y = np.ones(2)
    >>> np.shares_memory(give_back(y, xnp, "cpu"), y)
    True
    """
    try:
        r = xp.from_dlpack(y)
    except REFUSED:
        r = xp.asarray(y)
    if device(r) != dev:
        from array_api_compat import to_device

        r = to_device(r, dev)
    return r


def reshape(x: Any, shape: tuple[int, ...]) -> Any:
    """``x`` reshaped (a view where the memory allows), for NumPy, CuPy and foreign arrays.

    Examples
    --------
    >>> reshape(np.arange(4), (2, 2)).shape
    (2, 2)
    """
    if isinstance(x, np.ndarray) or not is_foreign(x):
        return x.reshape(shape)
    return namespace(x).reshape(x, shape)


def matrix_transpose(x: Any, *, contiguous: bool = False) -> Any:
    """``x`` with its last two axes swapped (for NumPy and CuPy a view, or with
    ``contiguous`` a C-contiguous copy; for other libraries, their ``matrix_transpose``).

    Examples
    --------
    >>> matrix_transpose(np.zeros((2, 3, 4))).shape
    (2, 4, 3)
    """
    if is_foreign(x):
        return namespace(x).matrix_transpose(x)
    t = x.swapaxes(-1, -2)  # NumPy or CuPy: the array's own method keeps its module
    return t.copy(order="C") if contiguous and not t.flags.c_contiguous else t
