"""Compile, before a job starts, what a model's DeBut layers will run (``warmup``).

A DeBut layer's first calls in a process otherwise run on slower code while the faster
one gets ready in background threads: the generic kernels while the chain's own compile
(seconds on a cold kernel cache; the generated backward of a large chain 18-31 s), and
the Python team body while the GIL-free one loads (about 0.3 s;
``benchmarks/README_kernels.md``, changes 17 and 19).  The results are right either way;
:func:`warmup` pays those costs up front instead, for benchmarks, latency-bound serving
or a training job's first steps.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _config
from ..backends import _numba_native
from ..backends import numba_ as _nbk
from . import _ops
from .layers import _DeButBase

__all__ = ["warmup"]


def warmup(model: nn.Module, *inputs: Any, train: bool = True) -> float:
    """Compile the kernels that ``model(*inputs)`` and its backward will use, and wait.

    Runs the model once on ``inputs`` (in eval mode: no batch-norm statistics change,
    no dropout) with every compile in the calling thread, takes the gradients of its
    DeBut layers' parameters with :func:`torch.autograd.grad` (nothing is written to any
    ``.grad``; with every such parameter frozen, the forward only), then waits for the
    team bodies of those layers' CPU products and for the compiles the calls started
    in the background (the adjoint's kernels).  The model's parameters, buffers and
    each module's training mode are as before.  Kernels are made per
    chain, dtype and kind of batch (one or two rows, a few, many): give inputs of the
    batch size the job will use.

    Parameters
    ----------
    model : torch.nn.Module
        A model holding :class:`DeButLinear` or :class:`DeButConv2d` layers (itself one
        of them, or none: then nothing runs).
    *inputs
        What ``model`` is called with.
    train : bool
        Also run the backward (the value gradients' kernels): for training jobs.

    Returns
    -------
    float
        Seconds spent.

    Raises
    ------
    TypeError
        If ``model`` is not a ``torch.nn.Module``.

    Examples
    --------
    >>> import torch
    >>> from debutla.torch import DeButLinear, warmup
    >>> layer = DeButLinear(16, 8)
    >>> warmup(layer, torch.zeros(32, 16)) >= 0
    True
    >>> layer.factors[0].grad is None
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"warmup: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    layers = [m for m in model.modules() if isinstance(m, _DeButBase)]
    t0 = time.perf_counter()
    if not layers:
        return 0.0
    params = [p for m in layers for p in m.parameters() if p.requires_grad]
    modes = [(m, m.training) for m in model.modules()]  # each its own (frozen parts)
    model.eval()
    try:
        with _config.config(background=False):
            if train and params:
                with torch.enable_grad():
                    out = model(*inputs)
                    total = _sum_of(out)
                    if total is not None and total.requires_grad:
                        torch.autograd.grad(total, params, allow_unused=True)
            else:
                with torch.no_grad():
                    model(*inputs)
        _wait_for_bodies(layers, train)
        _nbk.wait_for_compiles()
    finally:
        for m, mode in modes:
            m.training = mode
    return time.perf_counter() - t0


def _sum_of(out: Any) -> torch.Tensor | None:
    """One scalar from the floating-point tensors in ``out`` (nested tuples, lists, dicts)."""
    if isinstance(out, torch.Tensor):
        return out.sum() if out.is_floating_point() else None
    items = out.values() if isinstance(out, dict) else (
        out if isinstance(out, (tuple, list)) else ())
    parts = [s for s in (_sum_of(o) for o in items) if s is not None]
    if not parts:
        return None
    total = parts[0]
    for s in parts[1:]:
        total = total + s.to(total.dtype)
    return total


def _wait_for_bodies(layers: list, train: bool) -> None:
    """The GIL-free team bodies of the layers' CPU products, where they would run."""
    if _ops._cpu_settings()["pool"] != "openmp":
        return
    for layer in layers:
        p = next(iter(layer.parameters()), None)
        if p is None or p.device.type != "cpu" or p.dtype not in _ops._NUMBA_DTYPES:
            continue
        dt = np.dtype(str(p.dtype).removeprefix("torch."))
        _numba_native.body(dt, wait=True)
        if train:
            _numba_native.body(dt, wait=True, count=len(layer.chain))
