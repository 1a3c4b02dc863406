"""Size against error for the layers of a model, before choosing how to compress them."""

from __future__ import annotations

from typing import Any, Iterable, Sequence, cast

from torch import nn

from ..chain import candidate_chains
from .compress import _record_inputs, _weight, named_layers, ratio_budget
from .layers import (CALIBRATED_MAX_SWEEPS, CALIBRATION_DAMPING, CALIBRATION_ROWS,
                     DeButConv2d, DeButLinear, _calibration_X)

__all__ = ["layer_tradeoff", "format_tradeoff"]


def layer_tradeoff(model: nn.Module, layers: Iterable[str],
                   ratios: Sequence[float] | None = None, *, calibration: Any = None,
                   methods: Sequence[str] = ("auto",), flatten: str = "cin_kh_kw",
                   calibration_rows: int | None = CALIBRATION_ROWS,
                   calibration_damping: float = CALIBRATION_DAMPING,
                   seed: int = 0, max_sweeps: int | None = None) -> list[dict]:
    """For each named layer and budget: the best DeBut chain's error beside the SVD's.

    :func:`debutla.tradeoff` on each layer's matrix (a conv filter flattened as
    ``flatten``), with the calibration inputs the layer sees in ``model`` when
    ``calibration`` is given (recorded as :func:`compress` does, same rows, same
    damping), so the table predicts what :func:`compress` with ``ratio`` or
    ``max_params`` will give.

    Parameters
    ----------
    model : nn.Module
    layers : iterable of str
        Names of ``nn.Linear`` / ``nn.Conv2d`` submodules.
    ratios : sequence of float, optional
        Budgets as fractions of each ``m x n`` weight (``floor(ratio m n)`` values; a
        budget below the layer's smallest chain is left out).  Default: the budgets of
        :func:`debutla.tradeoff` (five, from ``m n / 64`` to ``m n / 4``).
    calibration : Tensor, tuple or dict, optional
        Inputs of ``model``, as for :func:`compress`.
    methods : sequence of str
        Fitting methods to report.  The default, ``"auto"`` (hierarchical start, then
        ALS sweeps), is :func:`compress`'s default; ``"hierarchical"`` alone is much
        faster with calibration inputs but its output errors are higher (on the paper's
        LeNet FC1 at ratio 0.2: 0.38 against 0.20 after the sweeps).
    flatten, calibration_rows, calibration_damping, seed
        As for :func:`compress`.
    max_sweeps : int, optional
        ALS sweeps; default as :func:`compress`: 20 with calibration inputs, else
        :func:`debutla.factorize`'s own.

    Returns
    -------
    list of dict
        The records of :func:`debutla.tradeoff` (``budget``, ``method``, ``chain``,
        ``n_params``, ``rel_error``, ``svd_rel_error``, ``data_rel_error``,
        ``svd_data_rel_error``, ...), each with ``layer`` (the name), ``shape`` and
        ``ratio`` (``n_params / (m n)``) added.

    Raises
    ------
    ValueError, TypeError
        As :func:`compress` for the names and the calibration inputs; for a ratio
        outside ``(0, 1]`` or ratios that leave a layer no budget.

    Examples
    --------
    >>> import torch
    >>> from debutla.torch import layer_tradeoff
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32))
    >>> rows = layer_tradeoff(net, ["0"], ratios=[0.25, 0.5])
    >>> [(r["layer"], r["n_params"] <= r["budget"]) for r in rows]
    [('0', True), ('0', True)]
    """
    from ..fit.tradeoff import tradeoff

    names = [layers] if isinstance(layers, str) else list(layers)
    modules = named_layers(model, names, "layer_tradeoff")
    if ratios is not None:
        ratios = [float(r) for r in ratios]
        bad = [r for r in ratios if not 0 < r <= 1]
        if bad or not ratios:
            raise ValueError(f"layer_tradeoff: ratios must be numbers in (0, 1], got "
                             f"{ratios}")
    inputs = _record_inputs(model, modules, names, calibration)
    out: list[dict] = []
    for name in names:
        mod = modules[name]
        where = f"layer_tradeoff: layer {name!r}"
        # a layer of the same geometry: its matrix view of the weight and of the inputs
        # (named_layers admits only nn.Linear and nn.Conv2d)
        shell: DeButLinear | DeButConv2d = (
            DeButLinear.like(mod) if isinstance(mod, nn.Linear)
            else DeButConv2d.like(cast(nn.Conv2d, mod), flatten=flatten))
        W = shell._weight_matrix(_weight(mod))
        m, n = W.shape
        budgets = None
        if ratios is not None:
            smallest = candidate_chains(m, n)[-1].nnz
            budgets = sorted({ratio_budget(r, m, n, where) for r in ratios})
            budgets = [b for b in budgets if b >= smallest]
            if not budgets:
                raise ValueError(f"{where}: every ratio in {ratios} is below the smallest "
                                 f"chain ({smallest} values, ratio "
                                 f"{smallest / (m * n):.3g})")
        X = None
        if inputs is not None:
            X = _calibration_X(shell, inputs[name], calibration_rows, calibration_damping,
                               seed, where)
        sweeps = max_sweeps
        if sweeps is None and X is not None:
            sweeps = CALIBRATED_MAX_SWEEPS
        recs = tradeoff(W, budgets=budgets, methods=methods, X=X, as_frame=False,
                        seed=seed, max_sweeps=sweeps)
        for rec in recs:
            rec.update(layer=name, shape=(m, n), ratio=rec["n_params"] / (m * n))
        out.extend(recs)
    return out


def format_tradeoff(records: list[dict]) -> str:
    """The records of :func:`layer_tradeoff` as a text table (one line per record)."""
    data = any(r.get("data_rel_error") is not None for r in records)
    head = (f"{'layer':<16} {'budget':>8} {'values':>8} {'ratio':>6} {'method':<12} "
            f"{'error':>7} {'SVD':>7}" + (f" {'out err':>8} {'SVD out':>8}" if data else "")
            + "  chain")
    lines = [head]
    for r in records:
        line = (f"{r['layer']:<16} {r['budget']:>8,} {r['n_params']:>8,} "
                f"{r['ratio']:6.3f} {r['method']:<12} {r['rel_error']:7.4f} "
                f"{r['svd_rel_error']:7.4f}")
        if data:
            line += f" {r['data_rel_error']:8.4f} {r['svd_data_rel_error']:8.4f}"
        lines.append(line + f"  {r['chain']}")
    return "\n".join(lines)
