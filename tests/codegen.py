"""Test helper: generated kernels for every chain, whatever its size."""

from __future__ import annotations

import contextlib
from typing import Iterator

import debutla.backends.numba_ as nbk


@contextlib.contextmanager
def forced_codegen() -> Iterator[None]:
    """Let every chain use its generated kernels (small test chains otherwise run on the
    generic kernel until a call is big enough)."""
    saved = nbk.CODEGEN_MIN_NNZ, nbk.CODEGEN_MIN_WORK
    nbk.CODEGEN_MIN_NNZ = nbk.CODEGEN_MIN_WORK = 0
    try:
        yield
    finally:
        nbk.CODEGEN_MIN_NNZ, nbk.CODEGEN_MIN_WORK = saved


def padded_operator():
    """A small padded operator (``m < P``, ``n < Q``: 11 x 7 served by a 12 x 8 chain)
    on its generated kernels (call inside :func:`forced_codegen`)."""
    import debutla as db

    chain = db.Chain.parse("12 <-(3,2,2)- 8 <-(2,2,1)- 8")
    full = db.DeBut.random(chain, seed=5)
    return db.DeBut(chain, full.factors, shape=(11, 7))


def ready_spin_pool(workers: int = 1):
    """debutla's spinning pool with at least ``workers`` workers, once it takes GIL-free
    jobs (its first worker compiles, or loads, ``post`` and ``lead``: up to 30 s)."""
    import time

    pool = nbk._get_spin_pool(workers)
    for _ in range(600):
        if pool.native:
            break
        time.sleep(0.05)
    assert pool.native
    return pool
