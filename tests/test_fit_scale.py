"""debutla.fit: scale invariance (red-team defect 4), public surface, layering, stages."""

from __future__ import annotations

import ast
import importlib
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import debutla as db
from debutla import Chain, DeBut, factorize
from test_factorize import _numpy_backend  # noqa: F401  (autouse fixture)

CHAIN = Chain.parse(db.PAPER_CHAINS["lenet_conv2_mono1"])
FIT = Path(db.__file__).parent / "fit"


def _scaled(X: np.ndarray, e: int) -> np.ndarray:
    """``X * 2**e`` in double precision, exactly (real and imaginary parts apart)."""
    X = X.astype(np.complex128 if np.iscomplexobj(X) else np.float64)
    if np.iscomplexobj(X):
        return np.ldexp(X.real, e) + 1j * np.ldexp(X.imag, e)
    return np.ldexp(X, e)


def _rel(op: DeBut, W: np.ndarray) -> float:
    """``||W - op||_F / ||W||_F`` computed after scaling both to unit size (no overflow)."""
    e = -math.frexp(float(np.max(np.abs(W))))[1]
    A = _scaled(W, e)
    return float(np.linalg.norm(_scaled(op.to_dense(), e) - A) / np.linalg.norm(A))


@pytest.mark.parametrize("exp10", [-300, -170, -100, -20, 0, 20, 100, 155, 300])
@pytest.mark.parametrize("method", ["hierarchical", "auto", "als"])
def test_exact_product_any_scale_float64(exp10, method):
    W = DeBut.random(CHAIN, seed=0).to_dense() * 10.0 ** exp10
    op, info = factorize(W, CHAIN, method=method, seed=0, max_sweeps=400, tol=0,
                         return_info=True)
    assert np.all(np.isfinite(op.to_dense()))
    assert math.isfinite(info.rel_error)
    if method == "als":  # a random start: only the scale invariance is checked
        ref = factorize(W * 10.0 ** -exp10, CHAIN, method="als", seed=0, max_sweeps=400,
                        tol=0, return_info=True)[1]
        assert info.rel_error == pytest.approx(ref.rel_error, rel=1e-6, abs=1e-12)
    else:
        assert info.rel_error < 1e-10
    assert _rel(op, W) == pytest.approx(info.rel_error, rel=1e-6, abs=1e-12)
    assert np.max(np.abs(op.to_dense())) > 0


@pytest.mark.parametrize("exp10", [-30, -20, -10, 0, 10, 20, 30])
@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_exact_product_any_scale_single(exp10, dtype):
    W = (DeBut.random(CHAIN, seed=1, dtype=dtype).to_dense() * np.float32(10.0 ** exp10))
    W = W.astype(dtype)
    assert np.all(np.isfinite(W)) and np.max(np.abs(W)) > 0
    op, info = factorize(W, CHAIN, method="hierarchical", return_info=True)
    assert op.dtype == np.dtype(dtype)
    assert info.rel_error < 1e-5
    assert _rel(op, W) < 1e-5


@settings(deadline=None, max_examples=25)
@given(exp2=st.integers(-990, 990), seed=st.integers(0, 1000))
def test_fit_is_scale_invariant(exp2, seed):
    """A power-of-two scaling of W scales the fit exactly and leaves the error unchanged."""
    W = np.random.default_rng(seed).standard_normal(CHAIN.shape)
    a, ia = factorize(W, CHAIN, method="auto", max_sweeps=5, return_info=True)
    b, ib = factorize(np.ldexp(W, exp2), CHAIN, method="auto", max_sweeps=5,
                      return_info=True)
    assert ib.rel_error == ia.rel_error
    assert ib.history == ia.history
    assert _rel(b, np.ldexp(W, exp2)) == pytest.approx(ia.rel_error, rel=1e-9)


def test_tiny_and_huge_not_zero_or_nan():
    """The two failures of the red-team report: 1e-170 came back as zero, 1e155 as NaN."""
    base = DeBut.random(CHAIN, seed=0).to_dense()
    for s in (1e-170, 1e155):
        op, info = factorize(base * s, CHAIN, return_info=True)
        assert info.rel_error < 1e-10 and info.stop_reason in ("exact", "hierarchical")
        assert np.linalg.norm(op.to_dense() / s - base) < 1e-9 * np.linalg.norm(base)


def test_init_at_any_scale():
    true = DeBut.random(CHAIN, seed=3)
    for s in (1e-200, 1.0, 1e200):
        W = true.to_dense() * s
        start = [v * s ** (1 / len(CHAIN)) for v in true.factors]
        start[0] = start[0] + 0.1 * s ** (1 / len(CHAIN))
        _, info = factorize(W, CHAIN, method="als", init=start, max_sweeps=50, tol=0,
                            return_info=True)
        assert info.rel_error < 1e-8


# ---------------------------------------------------------------------------------------
# public surface and layering (issue 7)
# ---------------------------------------------------------------------------------------

def test_public_surface():
    import debutla.fit as fit

    assert callable(db.factorize) and db.factorize is fit.factorize
    assert db.tradeoff is fit.tradeoff
    assert fit.lowrank_error(np.eye(4), 8) == (pytest.approx(math.sqrt(0.75)), 1)
    for name in ("debutla.fit", "debutla.fit.api", "debutla.fit.demo",
                 "debutla.fit.hierarchical", "debutla.fit.als", "debutla.fit._layout",
                 "debutla.fit.search", "debutla.fit.tradeoff"):
        mod = importlib.import_module(name)
        public = {k for k, v in vars(mod).items()
                  if not k.startswith("_") and getattr(v, "__module__", None) == name}
        assert set(mod.__all__) >= public, (name, public - set(mod.__all__))
        for k in mod.__all__:
            assert hasattr(mod, k), (name, k)
    assert "hadamard" not in vars(importlib.import_module("debutla.fit.demo"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add(("." * node.level) + (node.module or ""))
    return out


def test_layering():
    layout = _imports(FIT / "_layout.py")
    assert not any("hierarchical" in m or "als" in m for m in layout)
    assert ".hierarchical" not in _imports(FIT / "als.py")
    assert "._layout" in _imports(FIT / "als.py")
    assert "._layout" in _imports(FIT / "hierarchical.py")


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"method": "svd"}, ValueError, r"factorize\(method\)"),
    ({"order": "bfs"}, ValueError, r"factorize\(order\)"),
    ({"tol": -1.0}, ValueError, r"factorize\(tol\)"),
    ({"tol": float("nan")}, ValueError, r"factorize\(tol\)"),
    ({"max_sweeps": -1}, ValueError, r"factorize\(max_sweeps\)"),
    ({"seed": "x"}, TypeError, r"factorize\(seed\)"),
    ({"progress": 1}, TypeError, r"factorize\(progress\)"),
    ({"return_info": "yes"}, TypeError, r"factorize\(return_info\)"),
    ({"init": 3}, TypeError, r"factorize\(init\)"),
])
def test_arguments_checked_before_design(monkeypatch, kwargs, exc, match):
    import debutla.fit.api as api

    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("design_chain called before the arguments were checked")

    monkeypatch.setattr(api, "design_chain", boom)
    with pytest.raises(exc, match=match):
        factorize(np.ones((16, 72)), "auto", **kwargs)


def test_float128_refused():
    if not hasattr(np, "longdouble") or np.dtype(np.longdouble) == np.float64:
        pytest.skip("no extended precision on this platform")
    with pytest.raises(TypeError, match=r"factorize\(W\).*not supported"):
        factorize(np.ones((4, 4), dtype=np.longdouble), "4 <-(2,2,2)- 4 <-(2,2,1)- 4")
