"""debutla.plot: pictures of chains, factors and trade-offs (saved as PNGs and checked)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import debutla as db

mpl = pytest.importorskip("matplotlib")
import matplotlib.image  # noqa: E402

from debutla import plot  # noqa: E402

BFLY = "8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8"


def saved_png(fig, path):
    fig.savefig(path, dpi=60)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    return img


def test_plot_chain_panels_in_product_order(tmp_path):
    fig = plot.plot_chain(BFLY)
    assert [ax.get_title().splitlines() for ax in fig.axes] == [
        ["R_3", "8x8", "(2,2,4)"], ["R_2", "8x8", "(2,2,2)"], ["R_1", "8x8", "(2,2,1)"]]
    # the picture of R_1 = I_4 kron 1_(2x2) is exactly its support
    img = fig.axes[2].get_images()[0].get_array()
    support = np.kron(np.eye(4), np.ones((2, 2)))
    assert np.array_equal(np.asarray(img) > 0, support > 0)
    assert "48 parameters" in fig._suptitle.get_text()
    png = saved_png(fig, tmp_path / "chain.png")
    assert png[..., :3].min() < 0.2  # dark support pixels were drawn


def test_plot_chain_accepts_operator_and_downsamples(tmp_path):
    op = db.DeBut.random(db.PAPER_CHAINS["vgg_512x4608_mono"], seed=0, dtype=np.float32)
    fig = plot.plot_chain(op, max_pixels=64, title="vgg")
    assert len(fig.axes) == 7 and fig._suptitle.get_text() == "vgg"
    for ax in fig.axes:
        arr = np.asarray(ax.get_images()[0].get_array())
        assert max(arr.shape) <= 64 and arr.max() > 0
    saved_png(fig, tmp_path / "vgg.png")


@pytest.mark.parametrize("kw, exc, needle", [
    ({"chain": 3}, TypeError, "plot_chain\\(chain\\)"),
    ({"chain": "8 <-(2,2)- 8"}, ValueError, "plot_chain\\(chain\\)"),
    ({"chain": BFLY, "max_pixels": 4}, ValueError, "max_pixels must be an integer >= 8"),
    ({"chain": BFLY, "max_pixels": 8.5}, TypeError, "max_pixels must be an integer"),
])
def test_plot_chain_errors(kw, exc, needle):
    with pytest.raises(exc, match=needle):
        plot.plot_chain(**kw)


def test_plot_factor_values_and_mask(tmp_path):
    op = db.DeBut.random(BFLY, seed=1)
    fig = plot.plot_factor(op, 1)
    ax = fig.axes[0]
    img = ax.get_images()[0].get_array()
    dense = op.factor_sparse(1).toarray()
    support = np.kron(np.eye(2), np.kron(np.ones((2, 2)), np.eye(2))) > 0
    assert np.array_equal(~np.ma.getmaskarray(img), support)
    assert np.allclose(np.ma.filled(img, 0), dense)
    lo, hi = ax.get_images()[0].get_clim()
    assert lo == -hi == -np.abs(dense).max()
    assert ax.get_title() == "R_2 = factor 1: 8x8 (2,2,2), 16 values"
    assert len(fig.axes) == 2  # the colorbar
    saved_png(fig, tmp_path / "factor.png")


def test_plot_factor_complex_big_and_into_axes(tmp_path):
    from matplotlib.figure import Figure

    op = db.DeBut.random("1024 <-(32,32,32)- 1024 <-(32,32,1)- 1024", seed=0,
                         dtype=np.complex64)
    fig = Figure()
    ax = fig.subplots()
    assert plot.plot_factor(op, -1, ax=ax, max_pixels=64) is fig
    img = ax.get_images()[0]
    assert img.get_array().shape == (64, 64) and img.get_clim()[0] == 0
    saved_png(fig, tmp_path / "big.png")


def test_plot_factor_errors():
    op = db.DeBut.random(BFLY, seed=0)
    with pytest.raises(TypeError, match="op must be a DeBut operator"):
        plot.plot_factor(np.eye(3), 0)
    with pytest.raises(ValueError, match="i=3 out of range for 3 factors"):
        plot.plot_factor(op, 3)
    with pytest.raises(ValueError, match="i=-4 out of range"):
        plot.plot_factor(op, -4)
    with pytest.raises(TypeError, match="i must be an integer"):
        plot.plot_factor(op, 1.0)
    with pytest.raises(ValueError, match="max_pixels must be an integer >= 8"):
        plot.plot_factor(op, 0, max_pixels=2)


RECS = [{"params": 4000, "debut_error": 0.3, "svd_error": 0.25, "label": "4 factors"},
        {"params": 1000, "debut_error": 0.5, "svd_error": 0.6, "data_error": 0.2}]


def test_plot_tradeoff_lines(tmp_path):
    fig = plot.plot_tradeoff(RECS, title="t", dense_params=100000)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines["DeBut"].get_xdata()) == [1000, 4000]  # sorted by parameters
    assert list(lines["DeBut"].get_ydata()) == [0.5, 0.3]
    assert list(lines["truncated SVD (same parameters)"].get_ydata()) == [0.6, 0.25]
    assert list(lines["DeBut, data-aware"].get_xdata()) == [1000]
    assert ax.get_xscale() == "log" and ax.get_title() == "t"
    assert any(t.get_text() == "4 factors" for t in ax.texts)
    saved_png(fig, tmp_path / "tradeoff.png")


@pytest.mark.parametrize("records, exc, needle", [
    ({"params": 1}, TypeError, "must be a list of dicts"),
    ([], ValueError, "must not be empty"),
    ([3], TypeError, "records\\[0\\] must be a dict"),
    ([{"params": 1, "debut_error": 0.1}], ValueError, "has no 'svd_error'"),
    ([{"params": 0, "debut_error": 0.1, "svd_error": 0.1}], ValueError,
     "'params'\\] must be a positive number"),
    ([{"params": 5, "debut_error": float("nan"), "svd_error": 0.1}], ValueError,
     "'debut_error'\\] must be a finite number >= 0"),
    ([{"params": 5, "debut_error": 0.1, "svd_error": "x"}], ValueError, "svd_error"),
])
def test_plot_tradeoff_errors(records, exc, needle):
    with pytest.raises(exc, match=needle):
        plot.plot_tradeoff(records)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    for call in (lambda: plot.plot_chain(BFLY),
                 lambda: plot.plot_factor(db.DeBut.random(BFLY, seed=0), 0),
                 lambda: plot.plot_tradeoff(RECS)):
        with pytest.raises(ImportError, match=r'pip install "debutla\[plot\]"'):
            call()
