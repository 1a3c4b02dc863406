"""The DeBut operator: a chain plus its factor values.

The operator validates inputs, pads and cuts (``docs/conventions.rst``, "Padding"),
promotes dtypes, builds adjoints and compositions; the arithmetic of products is
delegated to a backend (:mod:`debutla.backends`).
"""

from __future__ import annotations

import functools
import math
import numbers
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from . import _arrays, _config
from .backends import default_backend_for, get_backend, is_device_array
from ._validation import (SUPPORTED_DTYPES, as_generator, check_bool, check_int, check_out,
                          result_dtype, standard_dtype, supported_dtype)
from .chain import Chain, FactorSpec, as_chain

if TYPE_CHECKING:  # scipy is imported only by the sparse exports
    import scipy.sparse as sp

__all__ = ["DeBut", "SUPPORTED_DTYPES"]


def _asarray(x: Any):
    """``x`` as an array of its own module: CuPy arrays stay on the device."""
    return x if is_device_array(x) else np.asarray(x)


def _as_input(x: Any, what: str):
    """``x`` as an array for a product: CuPy arrays and arrays of other libraries (on the
    reference backend's route, see :meth:`DeBut._foreign`) stay; non-arrays are refused.

    Raises
    ------
    TypeError
        For scipy sparse inputs (densify or use ``op.to_sparse()``), and for anything
        that is not a numeric array (NumPy would make it a 0-d object array).
    """
    if isinstance(x, np.ndarray) or _arrays.is_foreign(x):
        return x
    sparse = sys.modules.get("scipy.sparse")
    if sparse is not None and sparse.issparse(x):
        raise TypeError(f"{what}: scipy sparse inputs are not supported; use x.toarray() "
                        f"(or op.to_sparse() @ x for a sparse product)")
    a = _asarray(x)
    if a.dtype.kind not in "biufc":
        raise TypeError(f"{what}: the input must be a numeric array, got "
                        f"{type(x).__name__} of dtype {a.dtype}")
    return a


def _any_array(what: str, takes_out: bool = True, lane: int = 0
               ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make ``f(self, x[, out])`` a product entry point that takes arrays of other libraries.

    A foreign ``x`` (:func:`debutla._arrays.is_foreign`) goes through
    :meth:`DeBut._foreign`, which calls ``f`` on a NumPy or CuPy view of it (or on ``x``
    itself, on the reference backend's route) and returns the result as ``x``'s own
    type; ``what`` names the entry point in messages.  Other inputs call ``f`` directly
    (a fixed signature: the wrapper costs NumPy inputs one ``isinstance``).

    ``lane`` (1: vectors ``x`` of shape ``(n,)``, 2: rows ``X`` of shape ``(k, n)``):
    the entry point computes ``D @ x`` or ``X @ D.T`` and may try the operator's fast
    lane first (:meth:`DeBut._lane_product`), for NumPy arrays of that many dimensions.
    """
    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        if takes_out:
            def entry(self: "DeBut", x: Any, out: Any = None) -> Any:
                if type(x) is np.ndarray:
                    if self._lane is not None and x.ndim == lane:
                        y = self._lane_product(x, out)
                        if y is not None:
                            return y
                    return f(self, x, out)
                if isinstance(x, np.ndarray) or not _arrays.is_foreign(x):
                    return f(self, x, out)
                return self._foreign(f, what, x, out)
        else:
            def entry(self: "DeBut", x: Any) -> Any:  # type: ignore[misc]
                if type(x) is np.ndarray:
                    if self._lane is not None and x.ndim == lane:
                        y = self._lane_product(x, None)
                        if y is not None:
                            return y
                    return f(self, x)
                if isinstance(x, np.ndarray) or not _arrays.is_foreign(x):
                    return f(self, x)
                return self._foreign(f, what, x)
        return functools.wraps(f)(entry)
    return wrap


def _is_number(a: Any) -> bool:
    """Whether ``a`` is a Python or NumPy scalar (``numbers.Number`` or ``np.generic``).

    A plain ``bool`` rather than a narrowing check: the scalar keeps its ``Any`` type,
    which NumPy's functions and the arithmetic operators accept.
    """
    return isinstance(a, (numbers.Number, np.generic))


def _freeze(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` with a read-only base.

    NumPy lets anyone set ``flags.writeable = True`` again on an array that owns its
    data; on a view of a read-only array it refuses, so the values stay immutable.
    """
    a.flags.writeable = False
    return a.view()


class DeBut:
    """A Deformable Butterfly operator: the product of a chain of sparse DeBut factors.

    ``D = R_N ... R_2 R_1``, applied right to left.

    Parameters
    ----------
    chain : Chain or str
        The factor shapes (a string is parsed with :meth:`Chain.parse`).
    factors : sequence of array_like
        One array per factor, in application order, each of the canonical shape
        ``spec.value_shape = (nb, r, s, t)``: ``V[b, i, j, k]`` sits at row
        ``b r t + i t + k`` and column ``b s t + j t + k`` of the factor.
    shape : (int, int), optional
        The operator's shape ``(m, n)``; at most the chain's ``(P, Q)``.  Inputs are
        zero-padded to ``Q`` and outputs cut to ``m``.  Defaults to the chain's shape.
    dtype : dtype, optional
        Value dtype (float32, float64, complex64 or complex128).  Defaults to the
        factors' common dtype (integers become float64).
    copy : bool
        True (default): the operator keeps private read-only copies of the values.
        False: arrays already C-contiguous in the operator's dtype are kept without a
        copy (read-only views); the caller promises never to modify them, or the
        operator's products change with them.  Fitting code and converters use this to
        hand over values they own.
    backend : {"numpy", "numba", "cupy"}, optional
        Force a backend; by default the input's array type chooses (see
        :mod:`debutla.backends`): NumPy arrays run on the CPU, CuPy arrays on the GPU
        (the values are uploaded once per operator and dtype and kept on the device).

    Raises
    ------
    ValueError
        If the number of factors or an array's shape does not match the chain, or
        ``shape`` exceeds the chain's size.
    TypeError
        If a dtype is not supported.

    Notes
    -----
    Operators are immutable: the factor arrays are private read-only copies, so one
    operator can be shared by many threads.  ``D.T`` and ``D.H`` are DeBut operators of
    the reversed chain with each factor's ``r`` and ``s`` swapped.

    Examples
    --------
    >>> import numpy as np
    >>> op = DeBut.random("16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72", seed=0)
    >>> x = np.ones(72)
    >>> np.allclose(op @ x, op.to_dense() @ x)
    True
    """

    __array_ufunc__ = None  # make ``ndarray @ op`` call our __rmatmul__
    ndim = 2

    def __init__(
        self,
        chain: Chain | str,
        factors: Sequence[Any],
        shape: tuple[int, int] | None = None,
        *,
        dtype: Any = None,
        copy: bool = True,
        backend: str | None = None,
    ) -> None:
        chain = as_chain(chain, where="DeBut(chain)")
        copy = check_bool(copy, "copy", where="DeBut")
        if isinstance(factors, np.ndarray) or not isinstance(factors, Sequence):
            try:
                factors = list(factors)
            except TypeError:
                raise TypeError("DeBut: factors must be a sequence of arrays, one per "
                                "factor of the chain") from None
        if len(factors) != len(chain):
            raise ValueError(f"DeBut: the chain has {len(chain)} factors but "
                             f"{len(factors)} value arrays were given")
        arrs = []
        for i, (f, spec) in enumerate(zip(factors, chain)):
            a = np.asarray(f)
            if a.shape != spec.value_shape:
                raise ValueError(
                    f"DeBut: factor {i} ({spec.notation()}) needs values of shape "
                    f"(nb, r, s, t) = {spec.value_shape}, got {a.shape}"
                )
            if a.dtype.kind not in "biufc":
                raise TypeError(f"DeBut: factor {i} has non-numeric dtype {a.dtype}")
            arrs.append(a)
        if dtype is None:
            dt = supported_dtype(np.result_type(*arrs), where="DeBut", promote=True)
        else:
            dt = supported_dtype(dtype, where="DeBut(dtype)")
            if any(a.dtype.kind == "c" for a in arrs) and dt.kind != "c":
                raise TypeError(f"DeBut: complex factors cannot be stored as {dt}")
        vals = []
        for a in arrs:
            if copy or a.dtype != dt or not a.flags.c_contiguous:
                a = np.array(a, dtype=dt, copy=True, order="C")
            vals.append(_freeze(a if copy else a.view()))
        self._init(chain, tuple(vals), shape, backend)

    def _init(self, chain: Chain, vals: tuple, shape, backend) -> None:
        """Set the fields from validated, read-only arrays (internal fast path)."""
        P, Q = chain.shape
        if shape is None:
            shape = (P, Q)
        else:
            try:
                m, n = shape
            except (TypeError, ValueError):
                raise TypeError(f"DeBut: shape must be a pair (m, n), got {shape!r}") from None
            m = check_int(m, "m", where="DeBut(shape)")
            n = check_int(n, "n", where="DeBut(shape)")
            if m > P or n > Q:
                raise ValueError(f"DeBut: shape ({m}, {n}) exceeds the chain's size "
                                 f"({P}, {Q}); a chain can only serve a smaller matrix")
            shape = (m, n)
        if backend is not None:
            get_backend(backend)  # validates the name and that it imports
        self._chain = chain
        self._factors = vals
        self._shape = shape
        self._dtype = vals[0].dtype
        self._backend = backend
        self._states: dict = {}
        self._lock = threading.Lock()
        self._T: DeBut | None = None
        self._H: DeBut | None = None
        # set by .T/.H on the derived operator: (parent, "T" or "H"), see _served_by
        self._adjoint_of: tuple[DeBut, str] | None = None
        # the fast lane of repeated products (see _lane_product): (settings token,
        # backend, state), recorded by _run once a product ran where the lane may serve
        self._lane: tuple | None = None
        # the same for adjoint matrix-vector products (rmatvec, x @ op, op.T @ x), by
        # "T" or "H" (real operators: "T" only): see _record_adjoint_lane
        self._alanes: dict[str, tuple] = {}

    @classmethod
    def _from_trusted(cls, chain: Chain, vals: tuple, shape, backend) -> "DeBut":
        op = cls.__new__(cls)
        op._init(chain, vals, shape, backend)
        return op

    def __reduce__(self):
        # pickle/copy/deepcopy the values only: the lock and kernel caches are rebuilt
        return (_restore, (self._chain, self._factors, self._shape, self._backend))

    # -- constructors --------------------------------------------------------------
    @classmethod
    def random(
        cls,
        chain: Chain | str,
        seed: int | np.random.Generator | None = None,
        dtype: Any = np.float64,
        shape: tuple[int, int] | None = None,
        *,
        backend: str | None = None,
    ) -> "DeBut":
        """An operator with random values.

        Each factor's values are drawn i.i.d. from ``N(0, 1/s)`` (complex dtypes: real
        and imaginary parts each ``N(0, 1/(2 s))``).  An output entry of a factor sums
        ``s`` products, so it has the variance of an input entry: the scale of a vector
        is kept through the whole chain (``E ||D x||^2 = (m/n) ||x||^2`` for a dense
        chain without padding).

        Parameters
        ----------
        chain : Chain or str
        seed : int or numpy.random.Generator, optional
        dtype : dtype
            float32, float64 (default), complex64 or complex128.
        shape : (int, int), optional
            See :class:`DeBut`.

        Examples
        --------
        >>> DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0).shape
        (4, 4)
        """
        chain = as_chain(chain, where="DeBut.random(chain)")
        dt = supported_dtype(dtype, where="DeBut.random(dtype)")
        rng = as_generator(seed, where="DeBut.random(seed)")
        vals = []
        for spec in chain:
            sd = 1.0 / np.sqrt(spec.s)
            if dt.kind == "c":
                v = (rng.standard_normal(spec.value_shape)
                     + 1j * rng.standard_normal(spec.value_shape)) * (sd / np.sqrt(2.0))
            else:
                v = rng.standard_normal(spec.value_shape) * sd
            vals.append(_freeze(v.astype(dt)))
        return cls._from_trusted(chain, tuple(vals), shape, backend)

    @classmethod
    def identity(cls, n: int, dtype: Any = np.float64) -> "DeBut":
        """The ``n x n`` identity as the one-factor chain ``n <-(1,1,n)- n``.

        Examples
        --------
        >>> DeBut.identity(3).to_dense()
        array([[1., 0., 0.],
               [0., 1., 0.],
               [0., 0., 1.]])
        """
        n = check_int(n, "n", where="DeBut.identity")
        dt = supported_dtype(dtype, where="DeBut.identity(dtype)")
        v = _freeze(np.ones((1, 1, 1, n), dtype=dt))
        return cls._from_trusted(Chain([(n, n, 1, 1, n)]), (v,), None, None)

    # -- attributes ----------------------------------------------------------------
    @property
    def chain(self) -> Chain:
        """The chain of factor specs."""
        return self._chain

    @property
    def factors(self) -> tuple[np.ndarray, ...]:
        """Read-only value arrays, canonical ``(nb, r, s, t)`` layout, application order."""
        return self._factors

    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)``: the served shape (at most the chain's)."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the factor values."""
        return self._dtype

    @property
    def nnz(self) -> int:
        """Number of stored values (parameters)."""
        return self._chain.nnz

    @property
    def nbytes(self) -> int:
        """Bytes held by the factor values."""
        return sum(v.nbytes for v in self._factors)

    @property
    def backend(self) -> str | None:
        """The forced backend name, or None (chosen by the input's array type)."""
        return self._backend

    def __repr__(self) -> str:
        m, n = self._shape
        return (f"<DeBut {m}x{n} {self._dtype}, {len(self._chain)} factors, "
                f"{self.nnz:,} values: {self._chain}>")

    # -- derived operators -----------------------------------------------------------
    def _derived(self, vals: tuple, chain: Chain | None = None, shape=None) -> "DeBut":
        vals = tuple(_freeze(v) for v in vals)
        return DeBut._from_trusted(chain or self._chain, vals,
                                   shape or self._shape, self._backend)

    @property
    def T(self) -> "DeBut":
        """The transpose, a DeBut operator of shape ``(n, m)``."""
        if self._T is None:
            vals = tuple(np.ascontiguousarray(v.transpose(0, 2, 1, 3))
                         for v in reversed(self._factors))
            T = self._derived(vals, self._chain.transpose(), self._shape[::-1])
            T._T = self
            T._adjoint_of = (self, "T")  # products run on self's state (_served_by)
            self._T = T
        return self._T

    @property
    def H(self) -> "DeBut":
        """The conjugate transpose (adjoint), a DeBut operator of shape ``(n, m)``."""
        if self._H is None:
            if self._dtype.kind != "c":
                self._H = self.T
            else:
                H = self.T.conj()
                H._H = self
                H._adjoint_of = (self, "H")
                self._H = H
        return self._H

    def transpose(self) -> "DeBut":
        """Same as :attr:`T`."""
        return self.T

    def adjoint(self) -> "DeBut":
        """Same as :attr:`H`."""
        return self.H

    def conj(self) -> "DeBut":
        """The entrywise complex conjugate (``self`` for real dtypes)."""
        if self._dtype.kind != "c":
            return self
        return self._derived(tuple(np.conj(v) for v in self._factors))

    def astype(self, dtype: Any) -> "DeBut":
        """A copy with values cast to ``dtype`` (``self`` if already that dtype).

        Raises
        ------
        TypeError
            If ``dtype`` is unsupported, or complex values would be cast to a real dtype.
        """
        dt = supported_dtype(dtype, where="DeBut.astype(dtype)")
        if dt == self._dtype:
            return self
        if self._dtype.kind == "c" and dt.kind != "c":
            raise TypeError(f"DeBut.astype: casting complex values to {dt} would drop the "
                            f"imaginary part; take .real of the dense matrix instead")
        return self._derived(tuple(v.astype(dt) for v in self._factors))

    def with_backend(self, backend: str | None) -> "DeBut":
        """The same operator (sharing values) with a forced backend (None: automatic)."""
        return DeBut._from_trusted(self._chain, self._factors, self._shape, backend)

    # -- products ----------------------------------------------------------------------
    def _backend_for(self, x: Any, what: str):
        if self._backend is None:
            if (not isinstance(x, np.ndarray) and _arrays.is_foreign(x)
                    and not is_device_array(x)):
                return get_backend("numpy")  # the reference backend's route (_foreign)
            return default_backend_for(x)
        backend = get_backend(self._backend)
        on_device = is_device_array(x)
        if on_device != (backend.name == "cupy"):
            kind = "device (GPU)" if on_device else "host (CPU)"
            raise TypeError(f"{what}: a {kind} array of type {type(x).__name__} cannot run "
                            f"on the operator's forced backend {backend.name!r}")
        return backend

    def _foreign(self, f: Callable[..., Any], what: str, x: Any, out: Any = None) -> Any:
        """``f(self, x[, out])`` for an array ``x`` of another library (see
        :mod:`debutla._arrays`); the result is an array of ``x``'s library on its device.

        Routes (``docs/conventions.rst``, "Arrays of other libraries"):

        * CUDA memory: a CuPy view of ``x`` (DLPack) on the ``cupy`` backend;
        * host memory, on the reference backend (forced ``"numpy"``, or chosen by the
          settings): ``x`` itself, in its own namespace (no conversion);
        * host memory, on another backend: a NumPy view (DLPack; ``numpy.asarray``
          where the library refuses the export); without one, the reference backend in
          ``x``'s namespace (operators without a forced backend).

        ``out`` must be an array of ``x``'s type on ``x``'s device: written in place
        through a view, or by assignment in ``x``'s namespace.
        """
        xp = _arrays.namespace(x)
        dt = self._dtype  # the result's dtype, known when x has a namespace
        if xp is not None:  # refuse bfloat16 & co. before any view is made
            dt = result_dtype(self._dtype, standard_dtype(x.dtype, xp, "x", where=what),
                              where=what)
        if is_device_array(x):
            native = self._backend_for(x, what).xp  # cupy, or TypeError: forced CPU backend
            xv = _arrays.view(x, native)
            if xv is None:
                raise TypeError(f"{what}: x ({_arrays.type_name(x)}) cannot be viewed as a "
                                f"CuPy array through DLPack or __cuda_array_interface__ (a "
                                f"tensor that requires grad or has a pending conjugation or "
                                f"negation: pass x.detach() or x.resolve_conj().resolve_neg())")
        else:
            native = np
            reference = (self._backend or default_backend_for(x).name) == "numpy"
            xv = None if reference and xp is not None else _arrays.view(x, np)
            if xv is None and xp is None:
                raise TypeError(f"{what}: x ({_arrays.type_name(x)}) has neither a NumPy "
                                f"view (DLPack, __array__) nor an Array API namespace")
            if xv is None and self._backend not in (None, "numpy"):
                raise TypeError(f"{what}: x ({_arrays.type_name(x)}) has no NumPy view "
                                f"(DLPack and __array__ refused it), so it cannot run on the "
                                f"operator's forced backend {self._backend!r}; the 'numpy' "
                                f"reference backend computes in x's own namespace")
        out_dt = None if out is None else self._foreign_out(out, x, xp, what)
        if xv is None:  # the reference backend, in x's namespace
            y = f(self, x)
            if out is None:
                return y
            check_out(out, tuple(y.shape), dt, type(x), where=what, out_dtype=out_dt)
            try:
                out[...] = y
            except _arrays.REFUSED as e:
                raise TypeError(f"{what}: out ({_arrays.type_name(out)}) cannot be written "
                                f"in place: {e}") from e
            return out
        if out is None:
            y = f(self, xv)
            return y if xp is None else _arrays.give_back(y, xp, _arrays.device(x))
        ov = _arrays.view(out, native, writable=True)
        if ov is None:
            raise TypeError(f"{what}: out ({_arrays.type_name(out)}) cannot be written in "
                            f"place through DLPack (e.g. a read-only array, a tensor that "
                            f"requires grad, or one with a pending conjugation or negation)")
        f(self, xv, ov)
        return out

    @staticmethod
    def _foreign_out(out: Any, x: Any, xp: Any, what: str) -> np.dtype | None:
        """Refuse an ``out`` of another type or device than the foreign input ``x``;
        return its dtype as a NumPy dtype (None for a library without a namespace).
        """
        if type(out) is not type(x):
            raise TypeError(f"{what}: out must be of x's type {_arrays.type_name(x)}, got "
                            f"{_arrays.type_name(out)}")
        if xp is None:
            return None
        out_dt = standard_dtype(out.dtype, xp, "out", where=what)
        dev, odev = _arrays.device(x), _arrays.device(out)
        if odev != dev:
            raise TypeError(f"{what}: out must be on x's device {dev}, got {odev}")
        return out_dt

    def _state(self, backend, dtype: np.dtype):
        """The backend's prepared values for ``dtype`` (built once; serves adjoints too)."""
        key = (backend.name, dtype)
        st = self._states.get(key)
        if st is None:
            with self._lock:
                st = self._states.get(key)
                if st is None:
                    vals = tuple(v if v.dtype == dtype else v.astype(dtype)
                                 for v in self._factors)
                    st = backend.prepare(vals)
                    self._states[key] = st
        return st

    def _served_by(self, trans: str):
        """``(operator, trans)`` whose state computes ``op(self)``: the operator this one
        is the transpose or adjoint of, when there is one (one state, one compile).
        """
        link = self._adjoint_of
        if link is not None:
            parent, rel = link
            if trans == "N":
                return parent, rel
            if trans == rel or self._dtype.kind != "c":
                return parent, "N"
        return self, trans

    def _sizes(self, trans: str):
        """``(m_out, n_in, P_out)`` of ``op(D)`` (``D`` for "N", the adjoint otherwise)."""
        m, n = self._shape
        P, Q = self._chain.shape
        return (m, n, P) if trans == "N" else (n, m, Q)

    def _prepare_input(self, X: Any, feat: int, trans: str, what: str):
        """Validate ``X`` once; return ``(X C-contiguous in the product dtype, dtype,
        backend, state)``.  An array of another library (the reference backend's route)
        stays in its namespace, cast to the product dtype.
        """
        n_in = self._sizes(trans)[1]
        if X.shape[feat] != n_in:
            axis = "rows" if feat == 0 else "columns"
            side = "n" if trans == "N" else "m"
            raise ValueError(f"{what}: input has {X.shape[feat]} {axis} but the operator "
                             f"has {side}={n_in} (input shape {tuple(X.shape)})")
        if not isinstance(X, np.ndarray) and _arrays.is_foreign(X):
            ns = _arrays.namespace(X)
            x_dt = standard_dtype(X.dtype, ns, "x", where=what)
            dt = result_dtype(self._dtype, x_dt, where=what)
            if x_dt != dt:
                X = ns.astype(X, getattr(ns, dt.name))
            backend = self._backend_for(X, what)
            return X, dt, backend, self._state(backend, dt)
        dt = self._dtype if X.dtype == self._dtype else result_dtype(self._dtype, X.dtype,
                                                                     where=what)
        backend = self._backend_for(X, what)
        xp = backend.xp
        if not isinstance(X, xp.ndarray):
            X = xp.asarray(X)  # e.g. a device array of another library, for CuPy
        if X.dtype != dt or not X.flags.c_contiguous:
            X = xp.ascontiguousarray(X, dtype=dt)
        return X, dt, backend, self._state(backend, dt)

    def _run(self, X, layout: str, trans: str, dt: np.dtype, backend, state, out):
        """The product on validated input; ``out`` (if any) already checked by the caller.

        The backend gets ``out`` itself only when it is usable as is (C-contiguous, the
        full result, not overlapping ``X``); otherwise the result is copied into it.
        """
        m_out, _, P_out = self._sizes(trans)
        xp = backend.xp
        direct = None
        if (out is not None and m_out == P_out and out.flags.c_contiguous
                and not xp.may_share_memory(out, X)):
            direct = out
        if layout == "cols":
            Y = backend.apply_cols(state, X, direct, trans)
            if m_out < P_out:
                Y = Y[:m_out, :]
        else:
            Y = backend.apply_rows(state, X, direct, trans)
            if m_out < P_out:
                Y = Y[:, :m_out]
        if (layout == "rows" and dt == self._dtype and self._adjoint_of is None
                and isinstance(X, np.ndarray)):
            if trans == "N":
                self._record_lane(backend, state)
            elif X.shape[0] == 1:
                self._record_adjoint_lane(backend, state, trans)
        if out is not None and direct is None:
            xp.copyto(out, Y)
            return out
        if m_out == P_out or not isinstance(Y, xp.ndarray):  # another library's array
            return Y
        return xp.ascontiguousarray(Y)

    def _record_lane(self, backend, state) -> None:
        """Remember that products of NumPy inputs in the operator's dtype run on
        ``backend`` with ``state`` under the settings now in effect (the fast lane).
        """
        tok = _config.token()
        lane = self._lane
        if tok is None or (lane is not None and lane[0] == tok):
            return
        if self._shape != self._chain.shape:  # padded inputs or cut outputs: full path
            return
        ready = getattr(backend, "lane_ready", None)
        if ready is not None and ready(state):
            self._lane = (tok, backend, state)

    def _record_adjoint_lane(self, backend, state, trans: str) -> None:
        """Remember, as :meth:`_record_lane` does, the state of the adjoint kernel that
        just computed an adjoint matrix-vector product (``op(D) @ x``, ``trans`` "T" or
        "H"), when the backend says later ones will run on it
        (``adjoint_lane_state``).
        """
        key = "T" if trans == "H" and self._dtype.kind != "c" else trans
        tok = _config.token()
        lane = self._alanes.get(key)
        if tok is None or (lane is not None and lane[0] == tok):
            return
        if self._shape != self._chain.shape:
            return
        adjoint_state = getattr(backend, "adjoint_lane_state", None)
        adj = None if adjoint_state is None else adjoint_state(state, key)
        if adj is not None:
            self._alanes[key] = (tok, backend, adj)

    def _lane_product(self, x: np.ndarray, out: Any, trans: str = "N") -> Any:
        """``D @ x`` (``x`` of shape ``(n,)``) or ``X @ D.T`` (``(k, n)``) by the fast lane,
        or None: the caller then takes the full path, which validates, chooses and
        raises as usual.

        The lane serves the common repeated product (``x`` a C-contiguous NumPy array of
        the operator's dtype, ``out`` absent or a C-contiguous writeable array of the
        result's shape and dtype, not overlapping ``x``, the same settings as when the
        lane was recorded) with checks only, no conversions: the backend's
        ``rows_lane`` runs the same kernel the full path would run (same bits), split
        across threads as there, or declines (kernel not compiled yet).  For a batch-1
        product this removes most of the microseconds around the kernel.  With
        ``trans`` "T" or "H": ``op(D) @ x`` for a vector ``x`` (shape ``(m,)``) on the
        adjoint kernel's state that :meth:`_record_adjoint_lane` recorded.
        """
        if trans == "N":
            tok, backend, state = self._lane  # type: ignore[misc]
            m, n = self._shape
        else:  # an adjoint product, of vectors only (_record_adjoint_lane)
            if x.ndim != 1:
                return None
            lane = self._alanes.get("T" if self._dtype.kind != "c" else trans)
            if lane is None:
                return None
            tok, backend, state = lane
            n, m = self._shape
        dt = self._dtype
        # ``is``: NumPy's built-in dtypes are singletons; any other dtype object (e.g.
        # non-native byte order) only takes the full path
        if tok != _config.token() or x.dtype is not dt or not x.flags.c_contiguous:
            return None
        shape: tuple[int, ...]
        if x.ndim == 1:
            k, shape = 1, (m,)
            if x.shape[0] != n:
                return None
        else:
            k, xn = x.shape
            if xn != n or k == 0:
                return None
            shape = (k, m)
        if out is None:
            y = np.empty(shape, dt)
        else:
            if type(out) is not np.ndarray or out.shape != shape or out.dtype is not dt:
                return None
            if not out.flags.carray:  # C-contiguous, aligned and writeable
                return None
            # two arrays that own their memory never overlap (the cheap common case)
            if (out is x or out.base is not None or x.base is not None) and \
                    np.may_share_memory(out, x):
                return None
            y = out
        if backend.rows_lane(state, x, y, k):
            return y
        return None

    def _apply(self, X: Any, layout: str, what: str, out: np.ndarray | None = None,
               trans: str = "N"):
        """``op(D) @ X`` (layout "cols", X of shape (n_in, k)) or ``X @ op(D).T`` ("rows",
        (k, n_in)); ``op(D)`` is ``D``, ``D^T`` or ``D^H`` (``trans`` "N", "T", "H"), all
        served by the forward state.
        """
        owner, trans = self._served_by(trans)
        if owner is not self:
            return owner._apply(X, layout, what, out, trans)
        X = _as_input(X, what)
        feat = 0 if layout == "cols" else 1
        X, dt, backend, state = self._prepare_input(X, feat, trans, what)
        k = X.shape[1 - feat]
        if out is not None:
            m_out = self._sizes(trans)[0]
            check_out(out, (m_out, k) if feat == 0 else (k, m_out), dt, backend.xp,
                      where=what)
        return self._run(X, layout, trans, dt, backend, state, out)

    def _vec(self, x: Any, out: Any, trans: str, what: str):
        """``op(D) @ x`` for a vector (shape ``(n_in,)`` or ``(n_in, 1)``)."""
        owner, trans = self._served_by(trans)
        if owner is not self:
            return owner._vec(x, out, trans, what)
        if trans != "N" and self._alanes and type(x) is np.ndarray:
            y = self._lane_product(x, out, trans)
            if y is not None:
                return y
        x = _as_input(x, what)
        n_in = self._sizes(trans)[1]
        col = x.ndim == 2 and x.shape[1] == 1
        if x.ndim != 1 and not col:
            raise ValueError(f"{what}: x must have shape ({n_in},), got {tuple(x.shape)}")
        X, dt, backend, state = self._prepare_input(_arrays.reshape(x, (1, -1)), 1, trans,
                                                     what)
        o = None
        if out is not None:
            m_out = self._sizes(trans)[0]
            check_out(out, (m_out, 1) if col else (m_out,), dt, backend.xp, where=what)
            o = out.T if col else out[None, :]  # a (1, m) view: written in place
        y = self._run(X, "rows", trans, dt, backend, state, o)
        if out is not None:
            return out
        return _arrays.reshape(y, (-1, 1)) if col else y[0, :]

    def _matmat(self, X: Any, out: Any, trans: str, what: str):
        """``op(D) @ X`` for a 2-D ``X`` of shape ``(n_in, k)``."""
        X = _as_input(X, what)
        if X.ndim != 2:
            side, n_in = ("n", self._shape[1]) if trans == "N" else ("m", self._shape[0])
            raise ValueError(f"{what}: X must be 2-D ({side}, k) with {side}={n_in}, got "
                             f"shape {tuple(X.shape)}")
        return self._apply(X, "cols", what, out, trans=trans)

    @_any_array("DeBut.matvec", lane=1)
    def matvec(self, x: Any, out: Any = None) -> Any:
        """``D @ x`` for a vector ``x`` of length n (shape ``(n,)`` or ``(n, 1)``).

        ``x`` may be an array of another library (PyTorch, CuPy, JAX, any Array API
        array): the result, and ``out``, are arrays of that library on ``x``'s device
        (see ``docs/conventions.rst``, "Arrays of other libraries").

        Raises
        ------
        ValueError
            If ``x`` has the wrong length or more than one column, or ``out`` the wrong
            shape or dtype.
        TypeError
            If the dtype is unsupported, or ``out`` is not an array of ``x``'s type.

        Examples
        --------
        >>> op = DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
        >>> y = np.empty(4)
        >>> op.matvec(np.ones(4), out=y) is y
        True
        """
        return self._vec(x, out, "N", "DeBut.matvec")

    @_any_array("DeBut.rmatvec")
    def rmatvec(self, x: Any, out: Any = None) -> Any:
        """``D^H @ x`` for a vector ``x`` of length m (computed from ``D``'s own values).

        Arrays of other libraries as in :meth:`matvec`.
        """
        return self._vec(x, out, "H", "DeBut.rmatvec")

    @_any_array("DeBut.matmat")
    def matmat(self, X: Any, out: Any = None) -> Any:
        """``D @ X`` for ``X`` of shape ``(n, k)``; ``out`` (m, k) avoids allocation.

        Arrays of other libraries as in :meth:`matvec`.
        """
        return self._matmat(X, out, "N", "DeBut.matmat")

    @_any_array("DeBut.rmatmat")
    def rmatmat(self, X: Any, out: Any = None) -> Any:
        """``D^H @ X`` for ``X`` of shape ``(m, k)`` (computed from ``D``'s own values).

        Arrays of other libraries as in :meth:`matvec`.
        """
        return self._matmat(X, out, "H", "DeBut.rmatmat")

    @_any_array("DeBut.matmat_rows", lane=2)
    def matmat_rows(self, X: Any, out: Any = None) -> Any:
        """``X @ D.T`` for ``X`` of shape ``(..., n)``: the neural-network layout.

        Same as ``X @ op.T`` without building ``op.T``.  Any number of leading batch
        dimensions is allowed, as with :func:`numpy.matmul` and ``torch.nn.Linear``;
        the result has shape ``(..., m)``.  ``out`` (same shape as the result) avoids
        the allocation.  Arrays of other libraries as in :meth:`matvec`: a PyTorch
        tensor in, a PyTorch tensor out.

        Examples
        --------
        >>> op = DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
        >>> op.matmat_rows(np.ones((3, 5, 4))).shape
        (3, 5, 4)
        """
        X = _as_input(X, "DeBut.matmat_rows")
        if X.ndim < 2:
            raise ValueError(f"DeBut.matmat_rows: X must have shape (..., n) with at least "
                             f"2 dimensions and n={self._shape[1]}, got shape "
                             f"{tuple(X.shape)}")
        if X.ndim == 2:
            return self._apply(X, "rows", "DeBut.matmat_rows", out)
        return self._rows_nd(X, "DeBut.matmat_rows", out)

    def _rows_nd(self, X: Any, what: str, out: Any = None, axis: str = "last axis",
                 shown: tuple | None = None, trans: str = "N"):
        """``X @ op(D).T`` for ``X`` of shape ``(..., n_in)`` with ``X.ndim > 2``.

        ``axis`` and ``shown`` describe the input as the user passed it, for messages.
        """
        lead, n = tuple(X.shape[:-1]), X.shape[-1]
        m_out, n_in, _ = self._sizes(trans)
        if n != n_in:
            side = "n" if trans == "N" else "m"
            raise ValueError(f"{what}: input has {n} entries along its {axis} but the "
                             f"operator has {side}={n_in} (input shape "
                             f"{shown or tuple(X.shape)})")
        if out is not None:
            want = (*lead, m_out)
            if getattr(out, "shape", None) != want:
                raise (ValueError if hasattr(out, "shape") else TypeError)(
                    f"{what}: out must be an array of shape {want}, got "
                    f"{getattr(out, 'shape', type(out).__name__)}")
        Y = self._apply(_arrays.reshape(X, (-1, n)), "rows", what, trans=trans)
        Y = _arrays.reshape(Y, (*lead, m_out))
        if out is not None:
            out[...] = Y
            return out
        return Y

    @_any_array("DeBut @ x", takes_out=False, lane=1)
    def __matmul__(self, x: Any):
        """``D @ x``: ``x`` of shape ``(n,)``, ``(n, k)`` or ``(..., n, k)`` (as
        :func:`numpy.matmul`); with a :class:`DeBut` on the right, the composed operator
        (see :meth:`compose`).  An array of another library gives an array of that
        library on its device (PyTorch tensor in, PyTorch tensor out).
        """
        if isinstance(x, DeBut):
            return self.compose(x)
        x = _as_input(x, "DeBut @ x")
        if x.ndim == 1:
            return self._vec(x, None, "N", "DeBut.matvec")
        if x.ndim == 2:
            return self._matmat(x, None, "N", "DeBut.matmat")
        if x.ndim == 0:
            raise ValueError("DeBut @ x: x must have at least 1 dimension (matmul does not "
                             "take scalars; use op * a to scale)")
        # (..., n, k): rows of the transposed stack, then back
        Y = self._rows_nd(_arrays.matrix_transpose(x), "DeBut @ x",
                          axis="second-to-last axis", shown=tuple(x.shape))
        return _arrays.matrix_transpose(Y, contiguous=True)

    @_any_array("x @ DeBut", takes_out=False)
    def __rmatmul__(self, x: Any):
        """``x @ D``: ``x`` of shape ``(m,)`` gives ``(n,)``; ``(..., m)`` gives ``(..., n)``.

        Arrays of other libraries as in :meth:`__matmul__`.
        """
        if self._adjoint_of is not None and type(x) is np.ndarray and 0 < x.ndim < 3:
            # ``X @ op.T`` is ``op``'s own rows product: its fast lane, when recorded
            owner, trans = self._served_by("T")
            if trans == "N" and owner._lane is not None:
                y = owner._lane_product(x, None)
                if y is not None:
                    return y
        x = _as_input(x, "x @ DeBut")
        if x.ndim == 1:
            return self._vec(x, None, "T", "x @ DeBut")
        if x.ndim == 2:
            return self._apply(x, "rows", "x @ DeBut", trans="T")
        if x.ndim == 0:
            raise ValueError("x @ DeBut: x must have at least 1 dimension (matmul does not "
                             "take scalars; use a * op to scale)")
        return self._rows_nd(x, "x @ DeBut", trans="T")

    # -- arithmetic ------------------------------------------------------------------
    def compose(self, other: "DeBut") -> "DeBut":
        """The product ``self @ other`` of two DeBut operators, as a DeBut operator.

        ``other``'s factors are applied first, then ``self``'s: the chain is the
        concatenation ``other.chain + self.chain``.  When ``other`` cuts its output
        (``m2 < P2``) or ``self`` pads its input (``n1 < Q1``), or the chains' sizes
        differ at the junction, one exact *selection factor* ``Q1 <-(Q1/g, P2/g, g)- P2``
        (``g = gcd(Q1, P2)``) holding the identity on the first ``m2`` entries and zeros
        elsewhere is inserted between them, so the result is exactly the product.

        Parameters
        ----------
        other : DeBut
            An operator with ``other.shape[0] == self.shape[1]``.

        Returns
        -------
        DeBut
            Shape ``(self.shape[0], other.shape[1])``, dtype the promotion of both.

        Raises
        ------
        TypeError
            If ``other`` is not a DeBut operator, or the dtypes promote to none supported.
        ValueError
            If the inner sizes differ.

        Examples
        --------
        >>> A = DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
        >>> B = A.T @ A                     # a DeBut operator of 4 factors
        >>> len(B.chain), np.allclose(B.to_dense(), A.to_dense().T @ A.to_dense())
        (4, True)
        """
        if not isinstance(other, DeBut):
            raise TypeError(f"DeBut.compose: other must be a DeBut operator, got "
                            f"{type(other).__name__}")
        m1, n1 = self._shape
        m2, n2 = other._shape
        if n1 != m2:
            raise ValueError(f"DeBut.compose: inner sizes differ: self is {m1}x{n1} and "
                             f"other is {m2}x{n2} (self.shape[1] must equal other.shape[0])")
        dt = result_dtype(self._dtype, other._dtype, where="DeBut.compose")
        P2 = other._chain.shape[0]
        Q1 = self._chain.shape[1]
        specs = list(other._chain.factors)
        vals = [v.astype(dt, copy=False) for v in other._factors]
        if not (m2 == P2 and n1 == Q1):
            g = math.gcd(Q1, P2)
            r, s = Q1 // g, P2 // g
            sel = np.zeros((1, r, s, g), dtype=dt)
            idx = np.arange(m2)
            sel[0, idx // g, idx // g, idx % g] = 1
            specs.append(FactorSpec(Q1, P2, r, s, g))
            vals.append(sel)
        specs.extend(self._chain.factors)
        vals.extend(v.astype(dt, copy=False) for v in self._factors)
        backend = self._backend if self._backend == other._backend else None
        # factors already in ``dt`` are shared (they are read-only), not copied
        return DeBut._from_trusted(Chain(specs), tuple(_freeze(v) for v in vals),
                                   (m1, n2), backend)

    def _scaled(self, a: Any, what: str) -> "DeBut":
        if isinstance(a, np.ndarray) and a.ndim == 0:
            a = a[()]
        if not _is_number(a) or isinstance(a, (np.str_, np.bytes_)):
            raise TypeError(f"{what}: a DeBut operator can be multiplied by a scalar only, "
                            f"got {type(a).__name__}; use op @ x for products and "
                            f"op.to_dense() for elementwise arithmetic")
        dt = result_dtype(self._dtype, np.result_type(self._dtype, a), where=what)
        if not np.isfinite(a):
            raise ValueError(f"{what}: the scalar must be finite, got {a}")
        # scale the factor with the fewest values: the cheapest exact scaling
        k = min(range(len(self._factors)), key=lambda i: self._factors[i].size)
        vals = [v.astype(dt, copy=False) for v in self._factors]
        vals[k] = vals[k] * np.asarray(a).astype(dt)
        return self._derived(tuple(vals))  # the other factors are shared, not copied

    def __mul__(self, a: Any) -> "DeBut":
        """``op * a``: the operator scaled by the scalar ``a`` (one factor is scaled)."""
        if isinstance(a, DeBut):
            raise TypeError("DeBut * DeBut: the elementwise product of two operators is not "
                            "supported; use a @ b for the matrix product")
        return self._scaled(a, "DeBut * a")

    def __rmul__(self, a: Any) -> "DeBut":
        """``a * op``: the operator scaled by the scalar ``a``."""
        return self._scaled(a, "a * DeBut")

    def __truediv__(self, a: Any) -> "DeBut":
        """``op / a``: the operator scaled by ``1 / a``."""
        if _is_number(a) and a == 0:
            raise ZeroDivisionError("DeBut / a: division by zero")
        if _is_number(a):
            return self._scaled(1 / a, "DeBut / a")
        return self._scaled(a, "DeBut / a")

    def __neg__(self) -> "DeBut":
        return self._scaled(-1, "-DeBut")

    def __pos__(self) -> "DeBut":
        return self

    def _no_sum(self, other: Any) -> "DeBut":
        raise TypeError(
            "the sum of DeBut operators is not a DeBut operator: use "
            "debutla.aslinearoperator(a) + debutla.aslinearoperator(b) for a lazy sum, or "
            "a.to_dense() + b.to_dense() for a dense one")

    __add__ = __radd__ = __sub__ = __rsub__ = _no_sum

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Refused: a DeBut operator is not converted to a dense array implicitly.

        ``np.asarray(op)`` would silently form the ``m x n`` dense matrix (or, without this
        method, a useless 0-d object array); call :meth:`to_dense` explicitly.
        """
        raise TypeError(f"a DeBut operator is not converted to an array implicitly "
                        f"(it would form the dense {self._shape[0]}x{self._shape[1]} "
                        f"matrix); call op.to_dense()")

    # -- export ------------------------------------------------------------------------
    def to_dense(self) -> np.ndarray:
        """The dense ``m x n`` matrix.

        Computed by applying the operator to the identity of the smaller side (``m x m``
        when ``m <= n``), so the cost is ``O(min(m, n) * nnz)``.
        """
        m, n = self._shape
        if m <= n:  # I_m @ D, from D's own values (no transposed operator is built)
            return self._apply(np.eye(m, dtype=self._dtype), "rows", "DeBut.to_dense",
                               trans="T")
        return np.ascontiguousarray(
            self._apply(np.eye(n, dtype=self._dtype), "rows", "DeBut.to_dense").T)

    def factor_sparse(self, i: int, format: str = "csr") -> "sp.sparray":
        """Factor ``i`` (application order, negative allowed) as a scipy sparse array.

        Raises
        ------
        TypeError
            If ``i`` is not an integer.
        IndexError
            If ``i`` is out of range (the message names the valid range).
        ValueError
            If ``format`` is not a scipy sparse format name.
        """
        N = len(self._chain)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"DeBut.factor_sparse: i must be an int, got {i!r}")
        if not -N <= i < N:
            raise IndexError(f"DeBut.factor_sparse: i={i} out of range for {N} factors "
                             f"(valid: {-N}..{N - 1})")
        _as_format(None, format, "DeBut.factor_sparse")
        import scipy.sparse as sp

        spec = self._chain[int(i)]
        V = self._factors[int(i)]
        nb, r, s, t = spec.value_shape
        b, ii, jj, kk = np.indices((nb, r, s, t), sparse=True)
        rows = np.broadcast_to(b * (r * t) + ii * t + kk, V.shape).ravel()
        cols = np.broadcast_to(b * (s * t) + jj * t + kk, V.shape).ravel()
        A = sp.coo_array((V.ravel(), (rows, cols)), shape=(spec.p, spec.q))
        return _as_format(A, format, "DeBut.factor_sparse")

    def to_sparse(self, format: str = "csr") -> "sp.sparray":
        """The ``m x n`` product as a scipy sparse array (product of the factors).

        For a dense chain every entry is structurally nonzero; prefer :meth:`to_dense`.
        """
        _as_format(None, format, "DeBut.to_sparse")
        S = self.factor_sparse(0, "csr")
        for i in range(1, len(self._chain)):
            S = self.factor_sparse(i, "csr") @ S
        m, n = self._shape
        S = S.tocsr()[:m, :n]
        return _as_format(S, format, "DeBut.to_sparse")


def _restore(chain: Chain, vals: tuple, shape, backend) -> DeBut:
    """Rebuild a pickled or copied operator (unpickled arrays are writeable: freeze)."""
    return DeBut._from_trusted(chain, tuple(_freeze(v) for v in vals), shape, backend)


_FORMATS = ("csr", "csc", "coo", "bsr", "lil", "dok", "dia")


def _as_format(A, format: str, what: str):
    if format not in _FORMATS:
        raise ValueError(f"{what}: format must be one of {_FORMATS}, got {format!r}")
    if A is None:
        return None
    return A.asformat(format)
