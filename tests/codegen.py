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
