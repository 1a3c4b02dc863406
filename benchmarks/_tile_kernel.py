"""The chains the kernel benchmarks time, and the tile kernel behind one product.

``bench_kernels.py``, ``diag_threads.py`` and ``diag_align.py`` share them: the first
names its cases from :data:`CHAINS`; the diagnostics call the generated tile kernel
directly (:func:`tile_kernel`) to time it on chosen scratch buffers or threads.
"""

from __future__ import annotations

import numpy as np

import debutla as db
from debutla.backends import numba_ as nbk

__all__ = ["CHAINS", "EXTRA_CHAINS", "ALL_CHAINS", "tile_kernel"]

CHAINS = {
    "lenet": db.PAPER_CHAINS["lenet_fc1_mono2"],
    "vgg": db.PAPER_CHAINS["vgg_512x4608_mono"],
    "resnet": db.PAPER_CHAINS["resnet50_layer4"],
    "butterfly": str(db.Chain.butterfly(4096)),
    "radix4": str(db.Chain.butterfly(4096, radix=4)),
}
#: Chains a benchmark times only when named (``--chains radix3``): not in the tables.
EXTRA_CHAINS = {
    "radix3": str(db.Chain.butterfly(2187, radix=3)),  # (3,3,t) factors: groups of 3
}
ALL_CHAINS = {**CHAINS, **EXTRA_CHAINS}


def tile_kernel(op: db.DeBut, X: np.ndarray, Y: np.ndarray) -> tuple:
    """``(state, module, kernel name)`` that ``op.matmat_rows(X, out=Y)`` runs on.

    The product runs once, on one thread, its kernel compiled first.  The module's
    ``rows_tiles`` is the kernel for ``"rows_tiles"`` and ``"rows_narrow"`` (the narrow
    module's tiles are ``numba_.NARROW_W`` rows); ``"rows_single"`` and ``"cols_tiles"``
    name the others.
    """
    cap: dict = {}
    orig = nbk._run_fused

    def spy(state, mod, kname, X_, Y_, k):
        cap.update(state=state, mod=mod, kname=kname)
        return orig(state, mod, kname, X_, Y_, k)

    nbk._run_fused = spy
    try:
        with db.config(background=False, threads=1):
            op.matmat_rows(X, out=Y)
    finally:
        nbk._run_fused = orig
    return cap["state"], cap["mod"], cap["kname"]
