"""The cost of a calibrated (data-aware) fit of one large layer.

A 512x2304 weight (a VGG-like 3x3 conv on 256 channels) and 4,096 correlated inputs:
the time and output error of ``factorize(W, "auto", X=..., max_params=m n / 10)`` with
the hierarchical start alone and with 20 ALS sweeps, beside the data-aware SVD of the
same size.

Usage::

    python benchmarks/bench_calibrated_fit.py [--sweeps 20]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import debutla as db


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweeps", type=int, default=20)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    m, n = 512, 2304
    W = rng.standard_normal((m, n)) / np.sqrt(n)
    X = rng.standard_normal((4096, n)) @ (rng.standard_normal((n, n)) / np.sqrt(n))
    print(f"# bench_calibrated_fit: {m}x{n}, X 4096x{n} correlated, budget {m * n // 10:,}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load "
          f"{os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    for method, sweeps in (("hierarchical", None), ("auto", args.sweeps)):
        t0 = time.perf_counter()
        op, info = db.factorize(W, "auto", method=method, max_params=m * n // 10, X=X,
                                max_sweeps=sweeps, return_info=True)
        print(f"{method:12s} {time.perf_counter() - t0:6.1f} s  output error "
              f"{info.data_rel_error:.4f} (SVD same size {info.svd_data_rel_error:.4f}), "
              f"{info.sweeps} sweeps, chain {info.chain}", flush=True)


if __name__ == "__main__":
    main()
