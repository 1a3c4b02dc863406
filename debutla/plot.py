"""Pictures of DeBut chains, factors and error trade-offs (needs matplotlib).

matplotlib is an optional dependency: ``pip install "debutla[plot]"``.  It is imported
only when a function here is called, and figures are built with
:class:`matplotlib.figure.Figure` directly (no ``pyplot`` state, no GUI backend), so the
functions work on headless machines; save with ``fig.savefig("out.png")``.

Examples
--------
>>> import debutla as db
>>> from debutla.plot import plot_chain
>>> fig = plot_chain("16 <-(2,2,8)- 16 <-(2,2,4)- 16 <-(2,2,2)- 16 <-(2,2,1)- 16")
>>> len(fig.axes)
4
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ._validation import check_int
from .chain import as_chain

__all__ = ["plot_chain", "plot_factor", "plot_tradeoff"]

_INSTALL_HINT = ("debutla.plot needs matplotlib, an optional dependency: install it with "
                 "pip install \"debutla[plot]\" (or pip install matplotlib)")


def _figure_class():
    """Matplotlib's Figure class, or an ImportError naming the ``plot`` extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return Figure


def _chain_of(chain: Any, where: str):
    if hasattr(chain, "chain") and hasattr(chain, "factors"):  # a DeBut operator
        return chain.chain
    return as_chain(chain, where=where)


def _coords(spec) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a factor's support, in the canonical value order."""
    nb, r, s, t = spec.value_shape
    b, i, j, k = np.indices((nb, r, s, t), sparse=True)
    shape = (nb, r, s, t)
    rows = np.broadcast_to(b * (r * t) + i * t + k, shape).ravel()
    cols = np.broadcast_to(b * (s * t) + j * t + k, shape).ravel()
    return rows, cols


def _pool(p: int, q: int, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray | None,
          max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum of ``weights`` (or counts) and counts of entries per pixel of a pooled grid.

    A ``p x q`` matrix is drawn on at most ``max_pixels`` pixels per side: pixel
    ``(a, b)`` covers rows ``[a p / H, (a + 1) p / H)`` and the same for columns.
    """
    H, W = min(p, max_pixels), min(q, max_pixels)
    pr = rows * H // p
    pc = cols * W // q
    count = np.zeros((H, W))
    np.add.at(count, (pr, pc), 1.0)
    total = np.zeros((H, W))
    np.add.at(total, (pr, pc), 1.0 if weights is None else weights)
    return total, count


def plot_chain(chain: Any, *, max_pixels: int = 128, figsize: tuple[float, float] | None
               = None, title: str | None = None):
    """Each factor's support, side by side in product order (like the paper's figures).

    Parameters
    ----------
    chain : Chain, str or DeBut
        The chain (or an operator, whose chain is drawn).
    max_pixels : int
        Largest number of pixels per side of one factor's picture (>= 8).  A larger
        factor is downsampled: a pixel's darkness is the fraction of the matrix entries
        it covers that lie in the support, so the block and diagonal structure stays
        visible.
    figsize : (float, float), optional
        Figure size in inches (default: scaled to the number of factors).
    title : str, optional
        Figure title (default: the chain in the paper's notation).

    Returns
    -------
    matplotlib.figure.Figure
        One axes per factor, left to right ``R_N, ..., R_2, R_1`` as in
        ``D = R_N ... R_2 R_1``; each panel is as wide as its factor has columns and
        as tall as it has rows (same scale for all panels), titled with its index,
        shape and ``(r, s, t)``.

    Raises
    ------
    ImportError
        If matplotlib is not installed.

    Notes
    -----
    The support of ``R^(p,q)_(r,s,t)`` is ``I_nb kron 1_(r x s) kron I_t``: ``nb``
    diagonal blocks, each an ``r x s`` grid of ``t x t`` diagonals.

    Examples
    --------
    >>> fig = plot_chain("8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8")
    >>> [ax.get_title().splitlines()[0] for ax in fig.axes]
    ['R_3', 'R_2', 'R_1']
    """
    chain = _chain_of(chain, "plot_chain(chain)")
    max_pixels = check_int(max_pixels, "max_pixels", where="plot_chain", min=8)
    Figure = _figure_class()
    N = len(chain)
    specs = list(reversed(list(chain)))  # product order: R_N first
    widths = [float(f.q) for f in specs]
    tallest = max(f.p for f in specs)
    if figsize is None:
        w = min(2.6 * N + 1.0, 18.0)
        figsize = (w, max(2.6, min(6.0, w * tallest / sum(widths) + 1.4)))
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, N, squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    for ax, spec, idx in zip(axes, specs, range(N, 0, -1)):
        rows, cols = _coords(spec)
        total, count = _pool(spec.p, spec.q, rows, cols, None, max_pixels)
        H, W = total.shape
        density = total * (H * W) / (spec.p * spec.q)  # fraction of covered entries
        ax.imshow(density, cmap="Greys", vmin=0, vmax=max(float(density.max()), 1e-12),
                  extent=(0, spec.q, spec.p, 0), interpolation="nearest", aspect="equal")
        ax.set_ylim(tallest, 0)
        ax.set_title(f"R_{idx}\n{spec.p}x{spec.q}\n({spec.r},{spec.s},{spec.t})",
                     fontsize=8)
        ax.set_xticks([0, spec.q])
        ax.set_yticks([0, spec.p])
        ax.tick_params(labelsize=7)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    m, n = chain.shape
    fig.suptitle(title if title is not None else
                 f"{chain}\n{m}x{n}, {chain.nnz:,} parameters "
                 f"(compression {chain.compression:.1%})", fontsize=9)
    return fig


def plot_factor(op: Any, i: int = 0, *, max_pixels: int = 512, ax: Any = None,
                cmap: str = "RdBu_r"):
    """Factor ``i``'s values as a heat map on its ``p x q`` support.

    Parameters
    ----------
    op : DeBut
        The operator.
    i : int
        Factor index in application order (``0`` is ``R_1``; negative counts from
        the end, ``-1`` is ``R_N``).
    max_pixels : int
        Largest number of pixels per side (>= 8); a larger factor is downsampled and a
        pixel shows the mean of the stored values it covers.
    ax : matplotlib.axes.Axes, optional
        Draw into these axes (the figure is ``ax.figure``); default: a new figure.
    cmap : str
        A diverging colormap; colors are symmetric around zero, entries outside the
        support are grey.  Complex values are drawn by modulus.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError
        If ``op`` is not a DeBut operator or ``i`` not an int.
    ValueError
        If ``i`` is out of range.
    ImportError
        If matplotlib is not installed.

    Examples
    --------
    >>> import debutla as db
    >>> op = db.DeBut.random("8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8", seed=0)
    >>> fig = plot_factor(op, -1)
    >>> fig.axes[0].get_title()
    'R_3 = factor -1: 8x8 (2,2,4), 16 values'
    """
    if not (hasattr(op, "chain") and hasattr(op, "factors")):
        raise TypeError(f"plot_factor(op): op must be a DeBut operator, got "
                        f"{type(op).__name__}")
    N = len(op.chain)
    i = check_int(i, "i", where="plot_factor", min=None)
    if not -N <= i < N:
        raise ValueError(f"plot_factor(i): i={i} out of range for {N} factors "
                         f"(valid: {-N}..{N - 1})")
    max_pixels = check_int(max_pixels, "max_pixels", where="plot_factor", min=8)
    Figure = _figure_class()
    spec = op.chain[i]
    V = np.asarray(op.factors[i])
    if hasattr(V, "get"):  # pragma: no cover - CuPy values
        V = V.get()
    vals = np.abs(V).ravel() if np.iscomplexobj(V) else V.ravel().astype(np.float64)
    rows, cols = _coords(spec)
    total, count = _pool(spec.p, spec.q, rows, cols, vals, max_pixels)
    with np.errstate(invalid="ignore", divide="ignore"):
        img = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    img = np.ma.masked_invalid(img)
    lim = float(np.abs(vals).max()) if vals.size else 1.0
    lim = lim if lim > 0 else 1.0
    if ax is None:
        fig = Figure(figsize=(5.2, 4.2), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    ax.set_facecolor("0.85")  # outside the support (masked pixels)
    im = ax.imshow(img, cmap=cmap, vmin=0 if np.iscomplexobj(V) else -lim, vmax=lim,
                   extent=(0, spec.q, spec.p, 0), interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.85, label="|value|" if np.iscomplexobj(V) else "value")
    idx = i % N + 1
    ax.set_title(f"R_{idx} = factor {i}: {spec.p}x{spec.q} ({spec.r},{spec.s},{spec.t}), "
                 f"{spec.nnz:,} values", fontsize=9)
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    return fig


_REQUIRED = ("params", "debut_error", "svd_error")


def _check_records(records: Any) -> list[Mapping[str, Any]]:
    if isinstance(records, Mapping) or not isinstance(records, Sequence) or \
            isinstance(records, str):
        raise TypeError(f"plot_tradeoff(records): records must be a list of dicts, got "
                        f"{type(records).__name__}")
    if not records:
        raise ValueError("plot_tradeoff(records): records must not be empty")
    out = []
    for k, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise TypeError(f"plot_tradeoff(records): records[{k}] must be a dict, got "
                            f"{type(rec).__name__}")
        for key in _REQUIRED:
            if key not in rec:
                raise ValueError(f"plot_tradeoff(records): records[{k}] has no {key!r}; "
                                 f"each record needs the keys {', '.join(_REQUIRED)} "
                                 f"(and optionally 'data_error')")
        for key in _REQUIRED + ("data_error",):
            if key in rec and rec[key] is not None:
                v = rec[key]
                if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or \
                        not np.isfinite(v) or v < 0 or (key == "params" and v <= 0):
                    rule = "a positive number" if key == "params" else \
                        "a finite number >= 0"
                    raise ValueError(f"plot_tradeoff(records): records[{k}][{key!r}] must "
                                     f"be {rule}, got {v!r}")
        out.append(rec)
    return out


def plot_tradeoff(records: Sequence[Mapping[str, Any]], *, ax: Any = None,
                  title: str | None = None, dense_params: int | None = None):
    """Relative error against parameters: DeBut fits beside truncated SVDs of equal size.

    Parameters
    ----------
    records : list of dict
        One dict per fit with the keys ``params`` (stored values), ``debut_error`` and
        ``svd_error`` (relative Frobenius errors of the DeBut fit and of the truncated SVD
        with at most as many values), and optionally ``data_error`` (error of a
        data-aware fit, on its own data).  Optional ``label`` keys annotate the DeBut
        points (e.g. the factor count).
    ax : matplotlib.axes.Axes, optional
        Draw into these axes; default: a new figure.
    title : str, optional
        Axes title.
    dense_params : int, optional
        Parameters of the dense matrix: drawn as a vertical line for reference.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError, ValueError
        If ``records`` is not a non-empty list of dicts with the required keys and
        finite non-negative numbers.
    ImportError
        If matplotlib is not installed.

    Examples
    --------
    >>> recs = [{"params": 1000, "debut_error": 0.5, "svd_error": 0.6},
    ...         {"params": 4000, "debut_error": 0.3, "svd_error": 0.25}]
    >>> fig = plot_tradeoff(recs)
    >>> [line.get_label() for line in fig.axes[0].get_lines()]
    ['DeBut', 'truncated SVD (same parameters)']
    """
    recs = sorted(_check_records(records), key=lambda r: r["params"])
    Figure = _figure_class()
    if ax is None:
        fig = Figure(figsize=(6.0, 4.0), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    x = np.array([r["params"] for r in recs], dtype=float)
    ax.plot(x, [r["debut_error"] for r in recs], "o-", color="C0", label="DeBut")
    ax.plot(x, [r["svd_error"] for r in recs], "s--", color="C1",
            label="truncated SVD (same parameters)")
    data = [(r["params"], r["data_error"]) for r in recs if r.get("data_error") is not None]
    if data:
        ax.plot(*zip(*data), "^-", color="C2", label="DeBut, data-aware")
    for r in recs:
        if r.get("label") is not None:
            ax.annotate(str(r["label"]), (r["params"], r["debut_error"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7, color="C0")
    if dense_params is not None:
        dense_params = check_int(dense_params, "dense_params", where="plot_tradeoff")
        ax.axvline(dense_params, color="0.5", lw=0.8, ls=":")
        ax.annotate("dense", (dense_params, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(-3, -12), textcoords="offset points", ha="right",
                    fontsize=7, color="0.4")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (stored values)")
    ax.set_ylabel("relative error ||W - A||_F / ||W||_F")
    top = max(max(r["debut_error"], r["svd_error"], r.get("data_error") or 0) for r in recs)
    ax.set_ylim(0, max(1.05, 1.08 * top))  # room above the points for their labels
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title is not None:
        ax.set_title(title, fontsize=10)
    return fig
