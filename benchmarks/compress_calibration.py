"""Compressing the paper's pretrained LeNet in one call: weight fits against calibrated fits.

For each budget, ``debutla.torch.compress`` replaces FC1, FC2 and CONV2 (the paper's
multi-layer row) by DeBut layers, once fitted to the weights and once to each layer's
outputs on MNIST training images (``calibration=``, 3 draws of the images), and the test
accuracy is measured **without fine-tuning** (what the fit alone keeps).  Fine-tuning
(``benchmarks/lenet_mnist.py``) closes most of these gaps; this table shows the starting
point the calibration buys.

Usage::

    python benchmarks/compress_calibration.py [--images 1024] [--draws 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import debutla as db  # noqa: E402
from debutla.torch import compress  # noqa: E402
from lenet_mnist import CONV2, CONV2_FLATTEN, FC1, FC2, data, evaluate, pretrained  # noqa: E402

LAYERS = ("fc", "fc2", "conv2")


def budgets() -> list[tuple[str, dict]]:
    paper = {"fc": FC1, "fc2": FC2, "conv2": {"chain": CONV2, "flatten": CONV2_FLATTEN}}
    rows = [("paper chains (10.19K params)", paper)]
    for r in (0.2, 0.3, 0.45):  # the smallest chains: fc2 896 of 8192, conv2 208 of 1152
        rows.append((f"ratio {r}", {name: {"ratio": r} for name in LAYERS}))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024, help="calibration images per draw")
    ap.add_argument("--draws", type=int, default=3, help="calibration draws (seeds)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    net = pretrained()
    base = evaluate(net)
    xtr = data()["train"][0]
    print(f"# compress_calibration: LeNet (authors' weights), test accuracy without "
          f"fine-tuning; baseline {base:.2f}%")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load "
          f"{os.getloadavg()[0]:.2f}, torch {torch.__version__}, debutla {db.__version__}, "
          f"{args.images} calibration images x {args.draws} draws")
    print("| budget (FC1, FC2, CONV2) | params | weight fit: acc. % | calibrated: acc. % "
          "(mean, min-max) | output error, calibrated DeBut / SVD same size (FC1, FC2, "
          "CONV2; first draw) | fit s (weight / calibrated) |")
    print("|---|---:|---:|---:|---|---:|")
    for label, layers in budgets():
        t0 = time.perf_counter()
        small, rep = compress(net, layers, method="auto", seed=0)
        tw = time.perf_counter() - t0
        acc_w = evaluate(small)
        accs, tcs, errs = [], [], ""
        for d in range(args.draws):
            g = torch.Generator().manual_seed(d)
            pick = torch.randperm(len(xtr), generator=g)[:args.images]
            t0 = time.perf_counter()
            small_c, rep_c = compress(net, layers, method="auto", seed=0,
                                      calibration=xtr[pick])
            tcs.append(time.perf_counter() - t0)
            accs.append(evaluate(small_c))
            if d == 0:
                by = {r.name: r for r in rep_c.layers}
                errs = ", ".join(f"{by[n].data_rel_error:.3f} / {by[n].svd_data_rel_error:.3f}"
                                 for n in ("fc", "fc2", "conv2"))
        print(f"| {label} | {rep.params_after:,} | {acc_w:.2f} | {np.mean(accs):.2f} "
              f"({min(accs):.2f}-{max(accs):.2f}) | {errs} | {tw:.1f} / {np.median(tcs):.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
