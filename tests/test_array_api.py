"""Arrays of other libraries: PyTorch tensors and array-api-strict arrays in and out.

Every product entry point takes an array of another library and returns one of the same
library on the same device (``docs/conventions.rst``, "Arrays of other libraries").  Two
routes are checked for each library:

- ``view``: the operator's default backend computes on a NumPy view of the input
  (DLPack); results are *identical* to the NumPy path on the same backend;
- ``namespace``: the operator is forced to the reference backend, which computes in
  the input's own namespace; results are checked against the independent dense
  reference (``tests/strategies.py``) with the forward error bound of the product.

Both are also checked against the dense reference.  CUDA tests need PyTorch with CUDA
and CuPy, and skip cleanly without them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from debutla import DeBut, _arrays
from debutla.backends import default_backend_for, get_backend
from strategies import (DTYPE_IDS, DTYPES, assert_product_close, error_depth, operators,
                        random_values, reference)

SMALL = "8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8"
WIDE = "4 <-(2,3,2)- 6 <-(2,2,1)- 6 <-(1,2,1)- 12"  # 4 x 12, not dense
by_dtype = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)


@dataclasses.dataclass(frozen=True)
class Lib:
    """How a test makes, reads and recognises one library's arrays."""

    name: str
    xp: Any
    array_type: type
    to_np: Callable[[Any], np.ndarray]
    device: Any = None

    def from_np(self, a: np.ndarray) -> Any:
        a = np.array(a, copy=True)  # the library owns its memory
        if self.name == "torch":
            return self.xp.from_numpy(a).to(self.device)
        return self.xp.asarray(a, device=self.device)

    def dtype(self, dt: Any) -> Any:
        return getattr(self.xp, np.dtype(dt).name)

    def zeros(self, shape: tuple, dt: Any) -> Any:
        return self.xp.zeros(shape, dtype=self.dtype(dt), device=self.device)

    def rmatmul(self, x: Any, op: DeBut) -> Any:
        """``x @ op``: array-api-strict refuses foreign right operands (it raises
        TypeError instead of returning NotImplemented), so call the reflected method."""
        return x @ op if self.name == "torch" else op.__rmatmul__(x)

    def device_of(self, a: Any) -> Any:
        return a.device


def _torch_lib() -> Lib:
    torch = pytest.importorskip("torch")
    return Lib("torch", torch, torch.Tensor, lambda y: y.detach().cpu().numpy().copy(),
               torch.device("cpu"))


def _strict_lib() -> Lib:
    xs = pytest.importorskip("array_api_strict")
    return Lib("array_api_strict", xs, type(xs.asarray(0.0)),
               lambda y: np.array(np.from_dlpack(y), copy=True))


LIBS = {"torch": _torch_lib, "array_api_strict": _strict_lib}
by_lib = pytest.mark.parametrize("lib_name", sorted(LIBS))
ROUTES = ("view", "namespace")
by_route = pytest.mark.parametrize("route", ROUTES)


def each_case(test):
    """``test(lib_name, route, dtype, data)`` for every library, route and dtype, with
    hypothesis data (for :func:`_case`)."""
    return by_lib(by_route(by_dtype(given(data=st.data())(test))))


def _routed(op: DeBut, route: str) -> DeBut:
    return op.with_backend("numpy") if route == "namespace" else op


def _case(data, lib_name: str, route: str, dtype) -> tuple:
    """``(lib, op, rng, k, (D, |D|, depth))`` for a drawn operator on ``route``."""
    lib = LIBS[lib_name]()
    op = _routed(data.draw(operators(dtype)), route)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    k = data.draw(st.integers(1, 3))
    return lib, op, rng, k, (reference(op), reference(op, absolute=True),
                             error_depth(op.chain))


def _check_same_kind(got: Any, x: Any, lib: Lib, dt: Any, what: str) -> None:
    assert type(got) is lib.array_type, (what, type(got))
    assert lib.device_of(got) == lib.device_of(x), what
    assert got.dtype == lib.dtype(dt), (what, got.dtype)


# ---------------------------------------------------------------------------------------
# every entry point: type, device, dtype and values
# ---------------------------------------------------------------------------------------

# (name, input shape from (m, n, k), product, dense product from (D, x))
ENTRIES: list[tuple[str, Callable, Callable, Callable]] = [
    ("op @ x", lambda m, n, k: (n,), lambda op, x, lib: op @ x, lambda D, x: D @ x),
    ("op @ X", lambda m, n, k: (n, k), lambda op, x, lib: op @ x, lambda D, x: D @ x),
    ("op @ X3", lambda m, n, k: (2, n, k), lambda op, x, lib: op @ x, lambda D, x: D @ x),
    ("matvec", lambda m, n, k: (n,), lambda op, x, lib: op.matvec(x), lambda D, x: D @ x),
    ("matvec (n,1)", lambda m, n, k: (n, 1), lambda op, x, lib: op.matvec(x),
     lambda D, x: D @ x),
    ("matmat", lambda m, n, k: (n, k), lambda op, x, lib: op.matmat(x), lambda D, x: D @ x),
    ("matmat_rows", lambda m, n, k: (k, n), lambda op, x, lib: op.matmat_rows(x),
     lambda D, x: x @ D.T),
    ("matmat_rows 3-D", lambda m, n, k: (2, k, n), lambda op, x, lib: op.matmat_rows(x),
     lambda D, x: x @ D.T),
    ("X @ op.T", lambda m, n, k: (k, n), lambda op, x, lib: lib.rmatmul(x, op.T),
     lambda D, x: x @ D.T),
    ("z @ op", lambda m, n, k: (m,), lambda op, x, lib: lib.rmatmul(x, op),
     lambda D, x: x @ D),
    ("Z @ op", lambda m, n, k: (k, m), lambda op, x, lib: lib.rmatmul(x, op),
     lambda D, x: x @ D),
    ("Z3 @ op", lambda m, n, k: (2, k, m), lambda op, x, lib: lib.rmatmul(x, op),
     lambda D, x: x @ D),
    ("rmatvec", lambda m, n, k: (m,), lambda op, x, lib: op.rmatvec(x),
     lambda D, x: D.conj().T @ x),
    ("rmatmat", lambda m, n, k: (m, k), lambda op, x, lib: op.rmatmat(x),
     lambda D, x: D.conj().T @ x),
    ("op.H @ y", lambda m, n, k: (m,), lambda op, x, lib: op.H @ x,
     lambda D, x: D.conj().T @ x),
    ("op.T @ Y", lambda m, n, k: (m, k), lambda op, x, lib: op.T @ x, lambda D, x: D.T @ x),
]


@each_case
def test_every_entry_point_returns_the_input_library(lib_name, route, dtype, data):
    lib, op, rng, k, (D, A, depth) = _case(data, lib_name, route, dtype)
    m, n = op.shape
    for what, shape, product, dense in ENTRIES:
        a = random_values(rng, shape(m, n, k), dtype)
        x = lib.from_np(a)
        got = product(op, x, lib)
        _check_same_kind(got, x, lib, dtype, what)
        y = lib.to_np(got)
        expected = product(op.with_backend(None), a, lib)  # the NumPy path
        assert y.shape == expected.shape, what
        if route == "view":  # the same kernel on the same memory: the same numbers
            np.testing.assert_array_equal(y, expected, err_msg=what)
        assert_product_close(y, dense(D, a), dense(A, np.abs(a)), dtype, depth, what)


@each_case
def test_out_is_written_in_place(lib_name, route, dtype, data):
    lib, op, rng, k, (D, A, depth) = _case(data, lib_name, route, dtype)
    m, n = op.shape
    forward, rows, adjoint = (lambda M, x: M @ x), (lambda M, x: x @ M.T), \
        (lambda M, x: M.conj().T @ x)
    cases = [("matvec", (n,), forward), ("matvec", (n, 1), forward),
             ("rmatvec", (m,), adjoint), ("matmat", (n, k), forward),
             ("rmatmat", (m, k), adjoint), ("matmat_rows", (k, n), rows),
             ("matmat_rows", (2, k, n), rows)]
    for method, in_shape, dense in cases:
        a = random_values(rng, in_shape, dtype)
        expected = getattr(op.with_backend(None), method)(a)  # the NumPy path
        out = lib.from_np(np.full(expected.shape, 7, dtype))
        res = getattr(op, method)(lib.from_np(a), out=out)
        assert res is out, method
        if route == "view":
            np.testing.assert_array_equal(lib.to_np(out), expected, err_msg=method)
        assert_product_close(lib.to_np(out), dense(D, a), dense(A, np.abs(a)), dtype, depth,
                             method)


@by_route
def test_torch_out_may_be_a_strided_view(route):
    torch = pytest.importorskip("torch")
    op = _routed(DeBut.random(WIDE, seed=1, shape=(3, 11)), route)
    a = np.random.default_rng(0).standard_normal((11, 5))
    buf = torch.full((5, 3), 7.0, dtype=torch.float64)
    out = buf.T  # (3, 5), not C-contiguous
    assert op.matmat(torch.from_numpy(a), out=out) is out
    assert_product_close(buf.T.numpy(), reference(op) @ a,
                         reference(op, absolute=True) @ np.abs(a), np.float64,
                         error_depth(op.chain), "strided out")


# ---------------------------------------------------------------------------------------
# no copies where promised
# ---------------------------------------------------------------------------------------

def _spy(monkeypatch, module, name: str, seen: list) -> None:
    inner = getattr(module, name)

    def spy(state, X, out=None, trans="N"):
        Y = inner(state, X, out, trans)
        seen.append((X, out, Y))
        return Y

    monkeypatch.setattr(module, name, spy)


@by_lib
@pytest.mark.parametrize("layout", ["rows", "cols"])
def test_view_route_reads_and_returns_the_same_memory(monkeypatch, lib_name, layout):
    """A C-contiguous input of the operator's dtype reaches the backend as a view of its
    memory; the result is the backend's own array, handed over without a copy."""
    lib = LIBS[lib_name]()
    op = DeBut.random(SMALL, seed=0)
    backend = default_backend_for(np.ones(1))
    seen: list = []
    name = "apply_rows" if layout == "rows" else "apply_cols"
    _spy(monkeypatch, backend, name, seen)
    x = lib.from_np(np.random.default_rng(0).standard_normal((5, 8) if layout == "rows"
                                                            else (8, 5)))
    y = op.matmat_rows(x) if layout == "rows" else op.matmat(x)
    (X, _, Y), = seen
    assert isinstance(X, np.ndarray) and isinstance(Y, np.ndarray)
    assert np.shares_memory(X, np.from_dlpack(x))
    assert np.shares_memory(Y, np.from_dlpack(y))


@by_lib
def test_view_route_writes_out_directly(monkeypatch, lib_name):
    lib = LIBS[lib_name]()
    op = DeBut.random(SMALL, seed=0)
    seen: list = []
    _spy(monkeypatch, default_backend_for(np.ones(1)), "apply_rows", seen)
    out = lib.zeros((5, 8), np.float64)
    op.matmat_rows(lib.from_np(np.ones((5, 8))), out=out)
    (_, o, _), = seen
    assert o is not None and np.shares_memory(o, np.from_dlpack(out))


def test_torch_view_is_the_tensor_memory(monkeypatch):
    torch = pytest.importorskip("torch")
    op = DeBut.random(SMALL, seed=0)
    seen: list = []
    _spy(monkeypatch, default_backend_for(np.ones(1)), "apply_rows", seen)
    x = torch.randn(5, 8, dtype=torch.float64)
    y = op.matmat_rows(x)
    (X, _, Y), = seen
    assert X.ctypes.data == x.data_ptr() and Y.ctypes.data == y.data_ptr()


# ---------------------------------------------------------------------------------------
# the reference backend computes in the input's namespace
# ---------------------------------------------------------------------------------------

def test_reference_backend_runs_in_the_strict_namespace(monkeypatch):
    xs = pytest.importorskip("array_api_strict")
    numpy_ = get_backend("numpy")
    seen: list = []
    _spy(monkeypatch, numpy_, "apply_rows", seen)
    _spy(monkeypatch, numpy_, "apply_cols", seen)

    def no_view(*args, **kwargs):
        raise AssertionError("the namespace route made a NumPy view")

    monkeypatch.setattr(_arrays, "view", no_view)
    op = DeBut.random(WIDE, seed=3, shape=(3, 11), dtype=np.complex64).with_backend("numpy")
    a = random_values(np.random.default_rng(0), (11, 2), np.complex64)
    for product in (lambda x: op @ x, lambda x: op.matmat_rows(xs.matrix_transpose(x)),
                    lambda x: op.H @ (op @ x)):
        y = product(xs.asarray(a))
        assert isinstance(y, type(xs.asarray(0)))
    assert seen and all(isinstance(X, type(y)) and isinstance(Y, type(y))
                        for X, _, Y in seen)
    st_ = op._state(numpy_, np.dtype(np.complex64))
    (key, blocks), = st_.converted.items()
    assert key[0] is xs and all(isinstance(B, type(y)) for B in blocks)
    ref = op.with_backend(None)
    np.testing.assert_allclose(np.from_dlpack(op @ xs.asarray(a)), ref @ a, rtol=1e-5)


def test_reference_backend_never_assigns_into_foreign_arrays(monkeypatch):
    """Some libraries' arrays are immutable (JAX): the kernels, padding included, must
    not assign into them."""
    xs = pytest.importorskip("array_api_strict")

    def immutable(self, key, value):
        raise TypeError("this array is immutable")

    monkeypatch.setattr(type(xs.asarray(0.0)), "__setitem__", immutable)
    op = DeBut.random(WIDE, seed=3, shape=(3, 11)).with_backend("numpy")  # pads 11 -> 12
    a = np.random.default_rng(0).standard_normal((11, 2))
    D, A, depth = reference(op), reference(op, absolute=True), error_depth(op.chain)
    for got, exp, bound, what in [
            (op @ xs.asarray(a), D @ a, A @ np.abs(a), "op @ X"),
            (op.matmat_rows(xs.asarray(a.T)), a.T @ D.T, np.abs(a.T) @ A.T, "rows"),
            (op.rmatvec(xs.asarray(a[:3, 0])), D.T @ a[:3, 0], A.T @ np.abs(a[:3, 0]),
             "rmatvec")]:
        assert_product_close(np.from_dlpack(got), exp, bound, np.float64, depth, what)
    with pytest.raises(TypeError, match="out .* cannot be written in place"):
        op.matvec(xs.asarray(a[:, 0]), out=xs.zeros(3, dtype=xs.float64))


@by_route
def test_strict_device_is_kept(route):
    xs = pytest.importorskip("array_api_strict")
    dev = xs.__array_namespace_info__().devices()[1]
    assert dev != xs.__array_namespace_info__().default_device()
    op = _routed(DeBut.random(SMALL, seed=0), route)
    x = xs.asarray(np.arange(8.0), device=dev)
    for y in (op @ x, op.rmatvec(x), op.matmat_rows(xs.reshape(x, (1, 8)))):
        assert y.device == dev
    out = xs.zeros(8, dtype=xs.float64, device=dev)
    assert op.matvec(x, out=out) is out
    np.testing.assert_allclose(np.from_dlpack(out), op @ np.arange(8.0), rtol=1e-14)


# ---------------------------------------------------------------------------------------
# dtypes: NumPy's promotion, non-standard dtypes refused
# ---------------------------------------------------------------------------------------

IN_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "float32", "float64",
             "complex64", "complex128")


@by_lib
@by_route
@pytest.mark.parametrize("op_dtype", DTYPES, ids=DTYPE_IDS)
def test_inputs_are_promoted_as_numpy_promotes(lib_name, route, op_dtype):
    lib = LIBS[lib_name]()
    op = _routed(DeBut.random(WIDE, seed=2, dtype=op_dtype), route)
    D, A, depth = reference(op), reference(op, absolute=True), error_depth(op.chain)
    for name in IN_DTYPES:
        a = (np.arange(12) % 3).astype(name)
        y = op @ lib.from_np(a)
        expected = op.with_backend(None) @ a  # the NumPy path
        assert y.dtype == lib.dtype(expected.dtype), name
        if route == "view":
            np.testing.assert_array_equal(lib.to_np(y), expected, err_msg=name)
        assert_product_close(lib.to_np(y), D @ a, A @ np.abs(a), expected.dtype, depth, name)


@by_route
@pytest.mark.parametrize("bad", ["bfloat16", "float16"])
def test_torch_dtypes_outside_the_standard_are_refused(route, bad):
    torch = pytest.importorskip("torch")
    op = _routed(DeBut.random(SMALL, seed=0), route)
    x = torch.ones(8, dtype=getattr(torch, bad))
    for call in (lambda: op @ x, lambda: op.matvec(x), lambda: op.matmat_rows(x[None]),
                 lambda: x @ op):
        with pytest.raises(TypeError, match=f"x has dtype torch.{bad}"):
            call()
    with pytest.raises(TypeError, match=f"out has dtype torch.{bad}"):
        op.matvec(torch.ones(8, dtype=torch.float64), out=x)


# ---------------------------------------------------------------------------------------
# adjoints
# ---------------------------------------------------------------------------------------

@each_case
def test_adjoint_dot_test_in_the_library(lib_name, route, dtype, data):
    """``<D x, y> == <x, D^H y>`` with the library's own inner product, within the
    first-order rounding bound ``2 (d + m + n) u |y|^T |D| |x|``."""
    lib, op, rng, _, (_, A, depth) = _case(data, lib_name, route, dtype)
    m, n = op.shape
    a, b = random_values(rng, (n,), dtype), random_values(rng, (m,), dtype)
    x, y = lib.from_np(a), lib.from_np(b)
    vdot = lib.xp.vdot if lib.name == "torch" else lib.xp.vecdot
    lhs = complex(lib.to_np(vdot(y, op @ x)))
    rhs = complex(lib.to_np(vdot(op.rmatvec(y), x)))
    u = np.finfo(dtype).eps / 2 * (4 if np.dtype(dtype).kind == "c" else 1)
    tol = (2 * (depth + m + n) * u * float(np.abs(b) @ A @ np.abs(a))
           + np.finfo(dtype).tiny)
    assert abs(lhs - rhs) <= tol


# ---------------------------------------------------------------------------------------
# tensors DLPack cannot show as they are
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("op_dtype", [np.float64, np.complex128])
def test_requires_grad_runs_in_torch_and_differentiates(op_dtype):
    torch = pytest.importorskip("torch")
    op = DeBut.random(WIDE, seed=4, shape=(3, 11), dtype=op_dtype)
    a = np.random.default_rng(1).standard_normal((2, 11))
    x = torch.tensor(a, requires_grad=True)
    y = op.matmat_rows(x)
    assert y.requires_grad and y.dtype == getattr(torch, np.dtype(op_dtype).name)
    np.testing.assert_allclose(y.detach().numpy(), op.matmat_rows(a), rtol=1e-13)
    g = np.random.default_rng(2).standard_normal((2, 3))
    y.real.backward(torch.tensor(g)) if y.is_complex() else y.backward(torch.tensor(g))
    D = reference(op)  # d<Re(x D^T), g> / dx = g Re(D)
    np.testing.assert_allclose(x.grad.numpy(), g @ D.real, rtol=1e-12, atol=1e-14)


def test_requires_grad_is_refused_by_a_forced_view_backend():
    torch = pytest.importorskip("torch")
    op = DeBut.random(SMALL, seed=0).with_backend("numba")
    with pytest.raises(TypeError, match="forced backend 'numba'"):
        op @ torch.ones(8, dtype=torch.float64, requires_grad=True)


def test_pending_conjugation_and_negation_are_honoured():
    """PyTorch marks ``t.conj()`` and ``t.conj().imag`` instead of computing them;
    DLPack drops the negation, so these tensors are not viewed."""
    torch = pytest.importorskip("torch")
    op = DeBut.random(SMALL, seed=0, dtype=np.complex128)
    a = random_values(np.random.default_rng(0), (8,), np.complex128)
    t = torch.from_numpy(a.copy())
    assert _arrays.view(t.conj(), np) is None and _arrays.view(t.conj().imag, np) is None
    np.testing.assert_allclose((op @ t.conj()).numpy(), op @ a.conj(), rtol=1e-13)
    neg = t.conj().imag
    assert neg.is_neg()
    np.testing.assert_allclose((op @ neg).numpy(), op @ (-a.imag), rtol=1e-13)
    with pytest.raises(TypeError, match="out .* cannot be written in place"):
        op.matvec(t, out=torch.zeros(8, dtype=torch.complex128).conj())


def test_non_contiguous_torch_input():
    torch = pytest.importorskip("torch")
    op = DeBut.random(WIDE, seed=1)
    a = np.random.default_rng(0).standard_normal((5, 24))
    x = torch.from_numpy(a)
    np.testing.assert_array_equal((op @ x[:, :12].T).numpy(), op @ a[:, :12].T)
    np.testing.assert_array_equal(op.matmat_rows(x[:, ::2]).numpy(), op.matmat_rows(a[:, ::2]))


class DLPackOnly:
    """An array that speaks DLPack and nothing else (no namespace)."""

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self._a.__dlpack_device__()


@by_route
def test_dlpack_only_objects_give_numpy_results(route):
    op = _routed(DeBut.random(SMALL, seed=0), route)
    a = np.arange(8.0)
    y = op @ DLPackOnly(a)
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, op @ a)


def test_refusing_object_without_namespace_is_a_type_error():
    class Refusing(DLPackOnly):
        def __dlpack__(self, **kwargs: Any) -> Any:
            raise BufferError("no export today")

    with pytest.raises(TypeError, match=r"DeBut @ x: x \(.*Refusing\) has neither"):
        DeBut.random(SMALL, seed=0) @ Refusing(np.ones(8))


# ---------------------------------------------------------------------------------------
# errors name the argument
# ---------------------------------------------------------------------------------------

@by_lib
@by_route
def test_wrong_shapes_are_refused(lib_name, route):
    lib = LIBS[lib_name]()
    op = _routed(DeBut.random(WIDE, seed=1, shape=(3, 11)), route)
    with pytest.raises(ValueError, match="input has 12 columns but the operator has n=11"):
        op @ lib.from_np(np.ones(12))
    with pytest.raises(ValueError, match="X must be 2-D"):
        op.matmat(lib.from_np(np.ones(11)))
    with pytest.raises(ValueError, match="out must have shape \\(3,\\) and dtype float64, "
                                         "got shape \\(4,\\)"):
        op.matvec(lib.from_np(np.ones(11)), out=lib.zeros((4,), np.float64))
    with pytest.raises(ValueError, match="out must have shape \\(3,\\) and dtype float64, "
                                         "got shape \\(3,\\) and dtype float32"):
        op.matvec(lib.from_np(np.ones(11)), out=lib.zeros((3,), np.float32))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        op @ lib.from_np(np.ones(()))


@by_lib
@by_route
def test_out_of_another_type_is_refused(lib_name, route):
    lib = LIBS[lib_name]()
    op = _routed(DeBut.random(SMALL, seed=0), route)
    x = lib.from_np(np.ones(8))
    with pytest.raises(TypeError, match="out must be of x's type .*, got numpy.ndarray"):
        op.matvec(x, out=np.zeros(8))
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        op.with_backend(None).matvec(np.ones(8), out=lib.zeros((8,), np.float64))
    other = _strict_lib() if lib.name == "torch" else _torch_lib()
    with pytest.raises(TypeError, match="out must be of x's type"):
        op.matmat(lib.from_np(np.ones((8, 2))), out=other.zeros((8, 2), np.float64))


def test_out_on_another_device_is_refused():
    xs = pytest.importorskip("array_api_strict")
    dev = xs.__array_namespace_info__().devices()[1]
    op = DeBut.random(SMALL, seed=0)
    with pytest.raises(TypeError, match="out must be on x's device"):
        op.matvec(xs.ones(8, dtype=xs.float64), out=xs.zeros(8, dtype=xs.float64, device=dev))


@by_route
def test_torch_out_that_requires_grad_is_refused(route):
    torch = pytest.importorskip("torch")
    op = _routed(DeBut.random(SMALL, seed=0), route)
    out = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match=r"DeBut.matvec: out \(torch.Tensor\) cannot be "
                                        r"written in place"):
        op.matvec(torch.ones(8, dtype=torch.float64), out=out)


def test_detection_is_by_protocol():
    torch = pytest.importorskip("torch")
    assert _arrays.is_foreign(torch.ones(1)) and _arrays.is_foreign(DLPackOnly(np.ones(1)))
    assert not _arrays.is_foreign(np.ones(1)) and not _arrays.is_foreign(np.float64(1))
    assert not _arrays.is_foreign([1.0]) and not _arrays.is_foreign(DeBut.identity(2))


# ---------------------------------------------------------------------------------------
# CUDA tensors (PyTorch + CuPy + a GPU)
# ---------------------------------------------------------------------------------------

def _cuda_lib() -> Lib:
    torch = pytest.importorskip("torch")
    pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return Lib("torch", torch, torch.Tensor, lambda y: y.detach().cpu().numpy().copy(),
               torch.device("cuda", torch.cuda.current_device()))


@pytest.mark.gpu
@by_dtype
def test_cuda_tensors_come_back_as_cuda_tensors(dtype):
    lib = _cuda_lib()
    op = DeBut.random(WIDE, seed=5, shape=(3, 11), dtype=dtype)
    m, n = op.shape
    D, A, depth = reference(op), reference(op, absolute=True), error_depth(op.chain)
    rng = np.random.default_rng(0)
    for what, shape, product, dense in ENTRIES:
        a = random_values(rng, shape(m, n, 3), dtype)
        x = lib.from_np(a)
        got = product(op, x, lib)
        _check_same_kind(got, x, lib, dtype, what)
        assert_product_close(lib.to_np(got), dense(D, a), dense(A, np.abs(a)), dtype,
                             depth, what)


@pytest.mark.gpu
def test_cuda_view_and_out_share_the_tensor_memory(monkeypatch):
    lib = _cuda_lib()
    cupy_ = get_backend("cupy")
    seen: list = []
    _spy(monkeypatch, cupy_, "apply_rows", seen)
    op = DeBut.random(SMALL, seed=0, dtype=np.float32)
    x = lib.from_np(np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32))
    out = lib.zeros((5, 8), np.float32)
    assert op.matmat_rows(x, out=out) is out
    (X, o, _), = seen
    assert X.data.ptr == x.data_ptr() and o.data.ptr == out.data_ptr()
    np.testing.assert_allclose(lib.to_np(out), op.matmat_rows(lib.to_np(x)), rtol=1e-5)


@pytest.mark.gpu
def test_cuda_tensor_on_a_forced_cpu_backend_is_refused():
    lib = _cuda_lib()
    op = DeBut.random(SMALL, seed=0).with_backend("numpy")
    with pytest.raises(TypeError, match="forced backend 'numpy'"):
        op @ lib.from_np(np.ones(8))
    with pytest.raises(TypeError, match="cannot be viewed as a CuPy array"):
        DeBut.random(SMALL, seed=0) @ lib.xp.ones(8, dtype=lib.xp.float64, device=lib.device,
                                                 requires_grad=True)
