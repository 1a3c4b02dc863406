"""Compile ahead of time what an operator's products will need (``debutla.warmup``)."""

from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np

from ._config import config
from ._validation import check_choice, check_int
from .backends import get_backend, load_cpu_backend
from .operator import DeBut

__all__ = ["warmup"]


def warmup(op: Any = None, batch: int | Iterable[int] | None = None, *,
           layout: str = "both", adjoint: bool = True) -> float:
    """Compile the kernels that products of ``op`` will use, and wait for them.

    A chain's first product otherwise compiles its kernels (seconds on a cold cache;
    see ``docs/performance.rst``), running on the slower generic kernel meanwhile.
    Call this at start-up (or before forking worker processes) to pay that cost once,
    up front.  Later processes load the compiled kernels from the cache.

    With no operator, ``warmup()`` only loads Numba and its generic kernels (about
    1 s), which the first product of a process otherwise starts in a background
    thread, running on the NumPy reference backend meanwhile: after it, every product
    runs on the Numba backend from the first one (unless ``DEBUTLA_BACKEND`` or
    ``debutla.config(backend=...)`` chooses another).

    Parameters
    ----------
    op : DeBut or None
        The operator (its dtype is the one compiled; CPU backend of NumPy inputs);
        None: load Numba only.
    batch : int, iterable of int or None
        Batch sizes the application will use (1: ``op @ x``; kernels differ for one
        or two rows, for batches of up to 16 rows and for larger ones).  None (the
        default): every kernel a product of ``op`` can run on, whatever its batch
        (four kernels a direction: a few seconds each on a cold cache).
    layout : {"both", "rows", "cols"}
        ``"rows"``: ``X @ op.T`` / ``op.matmat_rows``; ``"cols"``: ``op @ X``.
    adjoint : bool
        Also compile the kernels of the adjoint products ``op.rmatvec``,
        ``op.rmatmat``, ``op.H @ y`` and of the transposed ones ``y @ op``,
        ``op.T @ y`` (for a complex operator on values of their own, unconjugated);
        until they are ready those run on the generic kernel.

    Returns
    -------
    float
        Seconds spent.

    Raises
    ------
    TypeError
        If ``op`` is not a DeBut operator or an argument has the wrong kind.
    ValueError
        If a batch size is not positive or ``layout`` is unknown.

    Examples
    --------
    >>> import debutla as db
    >>> op = db.DeBut.random("8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8", seed=0)
    >>> warmup(op, batch=(1, 64)) >= 0  # the kernels of these batch sizes only
    True
    >>> warmup(op) >= 0  # every kernel
    True
    >>> warmup() >= 0  # Numba only
    True
    """
    if op is None:
        t0 = time.perf_counter()
        load_cpu_backend()
        return time.perf_counter() - t0
    if not isinstance(op, DeBut):
        raise TypeError(f"warmup: op must be a DeBut operator or None, got "
                        f"{type(op).__name__}")
    if batch is None:
        sizes: list = list(_every_kernel_batch())
    else:
        sizes = [batch] if not isinstance(batch, Iterable) else list(batch)
    sizes = [check_int(k, "batch", where="warmup") for k in sizes]
    layout = check_choice(layout, "layout", ("both", "rows", "cols"), where="warmup")
    adjoint = bool(adjoint)
    m, n = op.shape
    t0 = time.perf_counter()
    with config(background=False):  # forward products wait for their kernels
        for k in sizes:
            if layout in ("both", "rows") or k == 1:
                op.matmat_rows(np.zeros((k, n), op.dtype))
            if layout in ("both", "cols") and k > 1:
                op.matmat(np.zeros((n, k), op.dtype))
    if adjoint:  # adjoint products start their kernels' compiles in the background
        with config(background=True):
            for A in (op.H, op.T) if op.dtype.kind == "c" else (op.H,):
                for k in sizes:
                    if layout in ("both", "rows") or k == 1:
                        A.matmat_rows(np.zeros((k, m), op.dtype))
                    if layout in ("both", "cols") and k > 1:
                        A.matmat(np.zeros((m, k), op.dtype))
        nb = _numba_backend()
        if nb is not None:
            nb.wait_for_compiles()
    return time.perf_counter() - t0


def _numba_backend() -> Any:
    """The Numba backend module, or None where Numba is unusable."""
    try:
        get_backend("numba")  # ImportError (remembered) when Numba is unusable
    except ImportError:
        return None
    from .backends import numba_  # the module get_backend just loaded

    return numba_


def _every_kernel_batch() -> tuple[int, ...]:
    """Batch sizes whose products reach every kernel of the CPU backend (1 alone where
    Numba is unusable: the NumPy backend compiles nothing).
    """
    nb = _numba_backend()
    return (1,) if nb is None else nb.WARMUP_BATCHES

