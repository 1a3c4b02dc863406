"""The ``debutla`` command line (``debutla demo``, ``python -m debutla demo``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Sequence

import numpy as np

from .chain import PAPER_CHAINS, Chain
from .operator import DeBut

__all__ = ["main", "run_demo"]


def _best_time(fn: Callable[[], object], min_total: float = 0.2, max_reps: int = 1000) -> float:
    """Best wall time of ``fn`` over repeated calls (at least 3, about ``min_total`` s)."""
    fn()  # warm up (JIT compile, caches)
    best = float("inf")
    start = time.perf_counter()
    reps = 0
    while reps < 3 or (time.perf_counter() - start < min_total and reps < max_reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return best


def run_demo(out: Callable[[str], object] = print, fit: bool = True) -> int:
    """The main demo: the paper's VGG chain as an operator, checked and timed.

    Builds the 512x4608 chain of the DeBut paper, draws a seeded random operator,
    checks ``op @ X`` against its dense matrix, prints the chain in the paper's notation,
    its parameters and compression, and times ``X @ op.T`` against the dense product at
    batch 1 and 256.  Returns 0 on success, 1 if the check fails.
    """
    chain = Chain.parse(PAPER_CHAINS["vgg_512x4608_mono"])
    out("debutla demo: the DeBut paper's VGG-16 CONV chain (512 x 4608)")
    out(chain.summary())
    op = DeBut.random(chain, seed=0, dtype=np.float32)
    W = op.to_dense()
    rng = np.random.default_rng(1)
    X = rng.standard_normal((256, chain.shape[1])).astype(np.float32)
    Y = X @ op.T
    ref = X @ W.T
    err = float(np.linalg.norm(Y - ref) / np.linalg.norm(ref))
    ok = err < 1e-5
    out(f"check: ||X @ op.T - X @ W.T|| / ||X @ W.T|| = {err:.2e} "
        f"({'ok' if ok else 'FAILED'}, float32)")
    from .backends import default_backend_for

    out(f"backend: {default_backend_for(X).name}")
    for batch in (1, 256):
        Xb = np.ascontiguousarray(X[:batch])
        t_op = _best_time(lambda: Xb @ op.T)
        t_dense = _best_time(lambda: Xb @ W.T)
        out(f"batch {batch:4d}: DeBut {t_op * 1e6:9.1f} us   dense {t_dense * 1e6:9.1f} us   "
            f"speed-up {t_dense / t_op:5.1f}x")
    if fit:
        try:
            from .fit.demo import run_fit_demo
        except ImportError:
            pass
        else:
            out("")
            run_fit_demo(out=out)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``debutla`` command."""
    parser = argparse.ArgumentParser(
        prog="debutla", description="Deformable Butterfly (DeBut) matrices.")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="build the paper's VGG chain, check it, time it")
    demo.add_argument("--no-fit", action="store_true", help="skip the factorization demo")
    info = sub.add_parser("info", help="describe a chain given in the paper's notation")
    info.add_argument("chain", help="e.g. '16 <-(2,8,1)- 128'")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return run_demo(fit=not args.no_fit)
    if args.command == "info":
        try:
            print(Chain.parse(args.chain).summary())
        except ValueError as e:
            print(f"debutla: {e}", file=sys.stderr)
            return 2
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
