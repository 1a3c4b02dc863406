"""debutla.tradeoff: DeBut error against parameters beside the truncated SVD (issue 9)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import debutla as db
from debutla.fit import tradeoff
from test_factorize import _numpy_backend  # noqa: F401  (autouse fixture)

KEYS = {"budget", "method", "chain", "n_params", "n_factors", "rel_error",
        "svd_rel_error", "svd_rank", "data_rel_error", "svd_data_rel_error", "whitening",
        "seconds"}


def test_records():
    W = np.random.default_rng(0).standard_normal((32, 64))
    rows = tradeoff(W, budgets=[400, 900, 2000], as_frame=False)
    assert [(r["budget"], r["method"]) for r in rows] == [
        (b, m) for b in (400, 900, 2000) for m in ("hierarchical", "auto")]
    for r in rows:
        assert set(r) == KEYS
        assert r["n_params"] <= r["budget"]
        assert r["svd_rank"] == r["n_params"] // (32 + 64)
        s = np.linalg.svd(W, compute_uv=False)
        k = r["svd_rank"]
        assert r["svd_rel_error"] == pytest.approx(
            np.sqrt(np.sum(s[k:] ** 2) / np.sum(s ** 2)), rel=1e-9)
        assert r["data_rel_error"] is None and r["whitening"] == "none"
        assert db.Chain.parse(r["chain"]).nnz == r["n_params"]
    for h, a in zip(rows[::2], rows[1::2]):  # same chain, auto never worse
        assert h["chain"] == a["chain"] and a["rel_error"] <= h["rel_error"] * (1 + 1e-12)
    # a larger budget is never worse for the hierarchical estimate of the search
    errs = [r["rel_error"] for r in rows if r["method"] == "hierarchical"]
    assert errs == sorted(errs, reverse=True)


def test_default_budgets_and_data():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((16, 32))
    X = rng.standard_normal((100, 32)) * np.geomspace(0.1, 10, 32)
    rows = tradeoff(W, methods=["hierarchical"], X=X, as_frame=False)
    assert len(rows) >= 3
    assert all(r["data_rel_error"] is not None and r["svd_data_rel_error"] is not None
               for r in rows)
    assert all(r["whitening"] == "approximate" for r in rows)


def test_frame_optional(monkeypatch):
    W = np.random.default_rng(2).standard_normal((16, 32))
    if importlib.util.find_spec("pandas") is not None:
        df = tradeoff(W, budgets=[300], methods=["hierarchical"])
        assert set(df.columns) == KEYS and len(df) == 1
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pandas" else object())
    rows = tradeoff(W, budgets=[300], methods=["hierarchical"])
    assert isinstance(rows, list) and len(rows) == 1
    with pytest.raises(ValueError, match=r"tradeoff\(as_frame\).*pandas"):
        tradeoff(W, budgets=[300], as_frame=True)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"budgets": [0]}, ValueError, r"tradeoff\(budgets\)"),
    ({"budgets": [1.5]}, TypeError, r"tradeoff\(budgets\)"),
    ({"budgets": []}, ValueError, r"tradeoff\(budgets\).*empty"),
    ({"budgets": 100}, TypeError, r"tradeoff\(budgets\)"),
    ({"budgets": [3]}, ValueError, r"factorize\(max_params\).*smallest"),
    ({"methods": ["svd"]}, ValueError, r"tradeoff\(methods\)"),
    ({"methods": []}, ValueError, r"tradeoff\(methods\).*empty"),
    ({"as_frame": "yes"}, TypeError, r"tradeoff\(as_frame\)"),
    ({"X": np.ones((3, 5))}, ValueError, r"factorize\(X\)"),
])
def test_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tradeoff(np.ones((16, 32)), **kwargs)


def test_bad_W():
    with pytest.raises(ValueError, match=r"tradeoff\(W\).*2-D"):
        tradeoff(np.ones(5))
    with pytest.raises(ValueError, match=r"tradeoff\(W\).*NaN"):
        tradeoff(np.full((4, 4), np.nan))
