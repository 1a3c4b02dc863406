"""The DeBut operator: a chain plus its factor values.

The operator validates inputs, pads and cuts (DESIGN.md "Padding"), promotes dtypes and
builds adjoints; the arithmetic is delegated to a backend (:mod:`debutla.backends`).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from .backends import default_backend_for, get_backend, is_device_array
from ._validation import (SUPPORTED_DTYPES, as_generator, check_int, check_out,
                          result_dtype, supported_dtype)
from .chain import Chain

__all__ = ["DeBut", "SUPPORTED_DTYPES"]

def _asarray(x: Any):
    """``x`` as an array of its own module: CuPy arrays stay on the device."""
    return x if is_device_array(x) else np.asarray(x)


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
        backend: str | None = None,
    ) -> None:
        if isinstance(chain, str):
            chain = Chain.parse(chain)
        if not isinstance(chain, Chain):
            raise TypeError(f"DeBut: chain must be a Chain or a str, got {type(chain).__name__}")
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
            vals.append(_freeze(np.array(a, dtype=dt, copy=True, order="C")))
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
        if isinstance(chain, str):
            chain = Chain.parse(chain)
        if not isinstance(chain, Chain):
            raise TypeError(f"DeBut.random: chain must be a Chain or a str, "
                            f"got {type(chain).__name__}")
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
            return default_backend_for(x)
        backend = get_backend(self._backend)
        on_device = is_device_array(x)
        if on_device != (backend.name == "cupy"):
            kind = "device (GPU)" if on_device else "host (CPU)"
            raise TypeError(f"{what}: a {kind} array of type {type(x).__name__} cannot run "
                            f"on the operator's forced backend {backend.name!r}")
        return backend

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
        is the transpose or adjoint of, when there is one (one state, one compile)."""
        link = getattr(self, "_adjoint_of", None)
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
        backend, state)``."""
        n_in = self._sizes(trans)[1]
        if X.shape[feat] != n_in:
            axis = "rows" if feat == 0 else "columns"
            side = "n" if trans == "N" else "m"
            raise ValueError(f"{what}: input has {X.shape[feat]} {axis} but the operator "
                             f"has {side}={n_in} (input shape {X.shape})")
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
                Y = Y[:m_out]
        else:
            Y = backend.apply_rows(state, X, direct, trans)
            if m_out < P_out:
                Y = Y[:, :m_out]
        if out is not None and direct is None:
            xp.copyto(out, Y)
            return out
        return Y if m_out == P_out else xp.ascontiguousarray(Y)

    def _apply(self, X: Any, layout: str, what: str, out: np.ndarray | None = None,
               trans: str = "N"):
        """``op(D) @ X`` (layout "cols", X of shape (n_in, k)) or ``X @ op(D).T`` ("rows",
        (k, n_in)); ``op(D)`` is ``D``, ``D^T`` or ``D^H`` (``trans`` "N", "T", "H"), all
        served by the forward state."""
        owner, trans = self._served_by(trans)
        if owner is not self:
            return owner._apply(X, layout, what, out, trans)
        X = _asarray(X)
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
        x = _asarray(x)
        n_in = self._sizes(trans)[1]
        col = x.ndim == 2 and x.shape[1] == 1
        if x.ndim != 1 and not col:
            raise ValueError(f"{what}: x must have shape ({n_in},), got {x.shape}")
        X, dt, backend, state = self._prepare_input(x.reshape(1, -1), 1, trans, what)
        o = None
        if out is not None:
            m_out = self._sizes(trans)[0]
            check_out(out, (m_out, 1) if col else (m_out,), dt, backend.xp, where=what)
            o = out.T if col else out[None, :]  # a (1, m) view: written in place
        y = self._run(X, "rows", trans, dt, backend, state, o)
        if out is not None:
            return out
        return y.reshape(-1, 1) if col else y[0]

    def matvec(self, x: Any, out: np.ndarray | None = None) -> np.ndarray:
        """``D @ x`` for a vector ``x`` of length n (shape ``(n,)`` or ``(n, 1)``).

        Raises
        ------
        ValueError
            If ``x`` has the wrong length or more than one column, or ``out`` the wrong
            shape or dtype.
        TypeError
            If the dtype is unsupported.
        """
        return self._vec(x, out, "N", "DeBut.matvec")

    def rmatvec(self, x: Any, out: np.ndarray | None = None) -> np.ndarray:
        """``D^H @ x`` for a vector ``x`` of length m (computed from ``D``'s own values)."""
        return self._vec(x, out, "H", "DeBut.rmatvec")

    def matmat(self, X: Any, out: np.ndarray | None = None) -> np.ndarray:
        """``D @ X`` for ``X`` of shape ``(n, k)``; ``out`` (m, k) avoids allocation."""
        X = _asarray(X)
        if X.ndim != 2:
            raise ValueError(f"DeBut.matmat: X must be 2-D (n, k) with n={self._shape[1]}, "
                             f"got shape {X.shape}")
        return self._apply(X, "cols", "DeBut.matmat", out)

    def rmatmat(self, X: Any, out: np.ndarray | None = None) -> np.ndarray:
        """``D^H @ X`` for ``X`` of shape ``(m, k)`` (computed from ``D``'s own values)."""
        X = _asarray(X)
        if X.ndim != 2:
            raise ValueError(f"DeBut.rmatmat: X must be 2-D (m, k) with m={self._shape[0]}, "
                             f"got shape {X.shape}")
        return self._apply(X, "cols", "DeBut.rmatmat", out, trans="H")

    def matmat_rows(self, X: Any, out: np.ndarray | None = None) -> np.ndarray:
        """``X @ D.T`` for ``X`` of shape ``(batch, n)``: the neural-network layout.

        Same as ``X @ op.T`` without building ``op.T``; ``out`` (batch, m).
        """
        X = _asarray(X)
        if X.ndim != 2:
            raise ValueError(f"DeBut.matmat_rows: X must be 2-D (batch, n) with "
                             f"n={self._shape[1]}, got shape {X.shape}")
        return self._apply(X, "rows", "DeBut.matmat_rows", out)

    def __matmul__(self, x: Any):
        if isinstance(x, DeBut):
            return NotImplemented
        x = _asarray(x)
        if x.ndim == 1:
            return self.matvec(x)
        if x.ndim == 2:
            return self.matmat(x)
        raise ValueError(f"DeBut @ x: x must be 1-D or 2-D, got shape {x.shape}")

    def __rmatmul__(self, x: Any):
        """``x @ D``: with ``x`` of shape ``(k, m)`` gives ``(k, n)``; ``(m,)`` gives ``(n,)``."""
        x = _asarray(x)
        if x.ndim == 1:
            return self._vec(x, None, "T", "x @ DeBut")
        if x.ndim == 2:
            return self._apply(x, "rows", "x @ DeBut", trans="T")
        raise ValueError(f"x @ DeBut: x must be 1-D or 2-D, got shape {x.shape}")

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

    def factor_sparse(self, i: int, format: str = "csr") -> sp.sparray:
        """Factor ``i`` (application order, negative allowed) as a scipy sparse array.

        Raises
        ------
        IndexError
            Never: an out-of-range ``i`` raises ValueError naming the valid range.
        """
        N = len(self._chain)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"DeBut.factor_sparse: i must be an int, got {i!r}")
        if not -N <= i < N:
            raise ValueError(f"DeBut.factor_sparse: i={i} out of range for {N} factors "
                             f"(valid: {-N}..{N - 1})")
        spec = self._chain[int(i)]
        V = self._factors[int(i)]
        nb, r, s, t = spec.value_shape
        b, ii, jj, kk = np.indices((nb, r, s, t), sparse=True)
        rows = np.broadcast_to(b * (r * t) + ii * t + kk, V.shape).ravel()
        cols = np.broadcast_to(b * (s * t) + jj * t + kk, V.shape).ravel()
        A = sp.coo_array((V.ravel(), (rows, cols)), shape=(spec.p, spec.q))
        return _as_format(A, format, "DeBut.factor_sparse")

    def to_sparse(self, format: str = "csr") -> sp.sparray:
        """The ``m x n`` product as a scipy sparse array (product of the factors).

        For a dense chain every entry is structurally nonzero; prefer :meth:`to_dense`.
        """
        _as_format(None, format, "DeBut.to_sparse")
        S = self.factor_sparse(0, "csr")
        for i in range(1, len(self._chain)):
            S = self.factor_sparse(i, "csr") @ S
        m, n = self._shape
        S = sp.csr_array(S)[:m, :n]
        return _as_format(S, format, "DeBut.to_sparse")

    # -- files -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Save to a ``.npz`` file (see :func:`debutla.load`)."""
        from .io import save

        save(self, path)


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
