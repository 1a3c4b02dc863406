"""The fitting part of ``debutla demo``: fit embedded matrices and report honestly."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..chain import PAPER_CHAINS, Chain
from ..operator import DeBut
from .api import factorize, lowrank_error

__all__ = ["run_fit_demo"]


def _report(out, name: str, W: np.ndarray, chain: Chain, methods, seed: int = 0) -> None:
    svd_err, k = lowrank_error(W, chain.nnz)
    out(f"{name}: {W.shape[0]}x{W.shape[1]}, chain {chain}")
    out(f"  {chain.nnz:,} parameters ({chain.nnz / W.size:.1%} of dense); truncated SVD "
        f"with as many parameters (rank {k}): rel. error {svd_err:.3e}")
    for method in methods:
        t0 = time.perf_counter()
        _, info = factorize(W, chain, method=method, seed=seed, return_info=True)
        dt = time.perf_counter() - t0
        extra = f", {info.sweeps} sweeps" if info.sweeps else ""
        out(f"  {method:>12}: rel. error {info.rel_error:.3e} in {dt * 1e3:8.1f} ms{extra}")


def run_fit_demo(out: Callable[[str], object] = print) -> int:
    """Fit a seeded noisy DeBut product and a Hadamard matrix; print errors and times.

    For each matrix, prints the relative Frobenius error and wall time of
    ``factorize`` with each method, and beside it the error of the truncated SVD that
    stores the same number of values (so one sees when a low-rank factorization would
    serve better).

    Parameters
    ----------
    out : callable
        Receives each output line (``print`` by default).

    Returns
    -------
    int
        0 on success, 1 if an exactness check failed (Hadamard not recovered).

    Notes
    -----
    A rank-``k`` factorization of an ``m x n`` matrix stores ``k (m + n)`` values; the
    SVD column uses the largest ``k`` with ``k (m + n) <= nnz`` of the chain, and its error
    is ``sqrt(sum_{i>k} sigma_i^2) / ||W||_F`` (Eckart-Young).  Hadamard(2^L) is exactly
    the standard butterfly with every 2x2 grid ``[[1, 1], [1, -1]]``, so its fit must be
    exact.

    Examples
    --------
    >>> lines = []
    >>> run_fit_demo(out=lines.append)
    0
    >>> any("Hadamard" in line for line in lines)
    True
    """
    from scipy.linalg import hadamard  # scipy only when the demo runs

    out("factorize: fitting dense matrices with DeBut chains "
        "(relative Frobenius errors)")
    chain = Chain.parse(PAPER_CHAINS["lenet_fc1_mono2"])
    rng = np.random.default_rng(0)
    clean = DeBut.random(chain, seed=rng).to_dense()
    noise = rng.standard_normal(clean.shape)
    level = 0.05
    W = clean + level * np.linalg.norm(clean) / np.linalg.norm(noise) * noise
    _report(out, f"DeBut product + {level:.0%} Gaussian noise (seed 0)", W, chain,
            ("hierarchical", "als", "auto"))
    out(f"  (the noise alone is {level:.1e} of the matrix: an error near it is the "
        f"best possible)")

    L = 10
    H = hadamard(2 ** L).astype(np.float64)
    hchain = Chain.butterfly(2 ** L)
    _report(out, f"Hadamard({2 ** L})", H, hchain, ("hierarchical",))
    _, info = factorize(H, hchain, method="hierarchical", return_info=True)
    ok = info.rel_error < 1e-10
    out(f"  exact recovery: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1
