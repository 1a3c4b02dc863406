"""GPU benchmark: DeBut on CuPy against dense cuBLAS, same card, same run.

Run on a machine with an NVIDIA GPU and CuPy::

    python benchmarks/bench_gpu.py [--out benchmarks/results/gpu.md]

For each chain, dtype float32 and batch size it times ``X @ op.T`` (row-major batch) and
``op @ X`` on the CuPy backend and the dense ``X @ W.T`` with cuBLAS, with CUDA events,
median of repeated runs after warm-up, and prints a Markdown table with the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys

# time the checkout this script belongs to, not another installed copy of debutla
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

import debutla as db

CHAINS = {
    "LeNet FC1 128x400": db.PAPER_CHAINS["lenet_fc1_mono2"],
    "VGG 512x4608": db.PAPER_CHAINS["vgg_512x4608_mono"],
    "butterfly 4096": str(db.Chain.butterfly(4096)),
}


def _time(cp, fn, reps=20):
    fn()
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) * 1e3)  # us
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the Markdown table here too")
    ap.add_argument("--batches", default="1,256,4096")
    args = ap.parse_args(argv)
    import cupy as cp

    batches = [int(b) for b in args.batches.split(",")]
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    lines = [f"GPU: {name}; CuPy {cp.__version__}; float32; median of 20 (CUDA events)", "",
             "| chain | batch | dense X@W.T (us) | DeBut X@op.T (us) | DeBut op@X (us) "
             "| speed-up rows |",
             "|---|---|---|---|---|---|"]
    for label, text in CHAINS.items():
        op = db.DeBut.random(text, seed=0, dtype=np.float32)
        W = cp.asarray(op.to_dense())
        m, n = op.shape
        for k in batches:
            X = cp.asarray(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32))
            Xc = cp.ascontiguousarray(X.T)
            t_dense = _time(cp, lambda: X @ W.T)
            t_rows = _time(cp, lambda: X @ op.T)
            t_cols = _time(cp, lambda: op @ Xc)
            err = float(cp.abs(X @ op.T - X @ W.T).max() / cp.abs(X @ W.T).max())
            assert err < 1e-4, (label, k, err)
            lines.append(f"| {label} | {k} | {t_dense:.1f} | {t_rows:.1f} | {t_cols:.1f} | "
                         f"{t_dense / t_rows:.2f}x |")
    # rows per block (R) and blocks per SM: the tuning knobs of the fused kernel
    from debutla._config import config
    from debutla.backends import cupy_

    lines += ["", "Fused kernel tuning, batch 4096 (X @ op.T, us):", "",
              "| chain | " + " | ".join(f"R={R}" for R in (1, 2, 4, 8)) + " |",
              "|---|---|---|---|---|"]
    for label, text in CHAINS.items():
        op = db.DeBut.random(text, seed=0, dtype=np.float32)
        X = cp.asarray(np.random.default_rng(0).standard_normal((4096, op.shape[1]))
                       .astype(np.float32))
        row = []
        for R in (1, 2, 4, 8):
            with config(cupy_rows=R):
                maxsize = max(op.chain.sizes)
                if cupy_._rows_per_block(4096, maxsize, 4) != R:
                    row.append("n/a")
                    continue
                row.append(f"{_time(cp, lambda: X @ op.T):.1f}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
