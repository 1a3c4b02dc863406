"""The DeBut paper's LeNet / MNIST experiment, reproduced with debutla.torch.

Starting from the authors' pretrained LeNet (``tests/data/lenet_mnist_debut_paper.npz``):

* the baseline test accuracy (paper: 99.29%);
* FC1 (128x400) replaced by the paper's mono2 chain, initialised (a) at random, (b) by
  ALS from a random start, (c) by ``auto`` (hierarchical + ALS), then fine-tuned;
* FC1 replaced by a rank-k layer with at most as many parameters (truncated SVD init), fine-
  tuned the same way (the paper does not show this);
* FC1 + FC2 + CONV2 replaced (the paper's 10.19K-parameter row), random and auto init.

Fine-tuning: the paper's optimiser (SGD, lr 0.01, momentum 0.9, weight decay 5e-4,
batch 64) on the 50,000 training images for ``--epochs`` epochs; every row is run for
``--seeds`` seeds (init, ALS start and data order) and reported as mean, min and max of
the 10,000-image test accuracy, with parameters, model compression (MC) and wall time.

Usage::

    python benchmarks/lenet_mnist.py                       # full table (see docs/reproduction.rst)
    python benchmarks/lenet_mnist.py --quick               # CI smoke run, < 2 minutes
    python benchmarks/lenet_mnist.py --json results.json --rst table.rst

Evaluating an FC1 replacement *without* fine-tuning is one call::

    acc = accuracy_without_finetuning(fc1)   # fc1: a weight tensor/array, a
                                             # debutla.DeBut, or an nn.Module

"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

# one thread by default: on a shared 2-core machine two OpenMP threads per process
# oversubscribe the cores and a LeNet step becomes >10x slower (see docs/reproduction.rst)
os.environ.setdefault("DEBUTLA_NUM_THREADS", os.environ.get("LENET_THREADS", "1"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import debutla as db  # noqa: E402
from debutla.torch import DeButLinear, compress, count_parameters  # noqa: E402
from _mnist import load_mnist  # noqa: E402

WEIGHTS = os.path.join(ROOT, "tests", "data", "lenet_mnist_debut_paper.npz")
FC1 = db.PAPER_CHAINS["lenet_fc1_mono2"]
FC2 = db.PAPER_CHAINS["lenet_fc2"]
CONV2 = db.PAPER_CHAINS["lenet_conv2_bulg1"]  # the chain that gives the paper's 10.19K
CONV2_FLATTEN = "kh_kw_cin"  # the DeBut authors' flattening of the conv filter
PAPER = {"baseline": "99.29", "fc1_random": "98.89", "fc1_als": "98.72",
         "multi_random": "98.64", "multi_als": "97.27"}


class LeNet(nn.Module):
    """The DeBut authors' LeNet: conv1 8x1x3x3, conv2 16x8x3x3, fc 128x400, fc2, fc3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.fc = nn.Linear(400, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc(x.flatten(1)))
        return self.fc3(self.fc2(x))


def pretrained(path: str = WEIGHTS) -> LeNet:
    """The authors' pretrained LeNet (keys: PyTorch names with '.' replaced by '_')."""
    d = np.load(path, allow_pickle=False)
    net = LeNet()
    net.load_state_dict({k.replace("_", ".", 1): torch.from_numpy(d[k]) for k in d.files})
    return net.eval()


class LowRankLinear(nn.Module):
    """``y = x V^T U^T + b`` with ``U`` (m, k), ``V`` (k, n): ``k (m + n) + m`` parameters."""

    def __init__(self, linear: nn.Linear, rank: int) -> None:
        super().__init__()
        W = linear.weight.detach().double()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        r = S[:rank].sqrt()
        self.v = nn.Linear(linear.in_features, rank, bias=False)
        self.u = nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            self.v.weight.copy_((r[:, None] * Vh[:rank]).float())
            self.u.weight.copy_((U[:, :rank] * r).float())
            if linear.bias is not None:
                self.u.bias.copy_(linear.bias)
        self.fit_error = float((W - U[:, :rank] * S[:rank] @ Vh[:rank]).norm() / W.norm())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.u(self.v(x))


# ---------------------------------------------------------------------------------------
# data and evaluation
# ---------------------------------------------------------------------------------------

_DATA: dict = {}
_TEST_LIMIT: dict = {"n": None}


def data() -> dict:
    """MNIST as torch tensors (loaded once per process)."""
    if not _DATA:
        for k, (x, y) in load_mnist().items():
            _DATA[k] = (torch.from_numpy(x), torch.from_numpy(y))
    return _DATA


@torch.inference_mode()
def evaluate(model: nn.Module, split: str = "test", batch: int = 2000) -> float:
    """Accuracy (%) of ``model`` on a split."""
    x, y = data()[split]
    if split == "test" and _TEST_LIMIT["n"] is not None:
        x, y = x[:_TEST_LIMIT["n"]], y[:_TEST_LIMIT["n"]]
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(y)


def accuracy_without_finetuning(fc1: Any, model: nn.Module | None = None) -> float:
    """Test accuracy of the pretrained LeNet with FC1 replaced by ``fc1``, no training.

    Parameters
    ----------
    fc1 : Tensor, ndarray, debutla.DeBut or nn.Module
        A 128x400 weight (dense tensor or array, or a DeBut operator; FC1's bias is
        kept), or a module mapping (batch, 400) to (batch, 128) used as is.
    model : nn.Module, optional
        The network whose ``fc`` is replaced (default: the pretrained LeNet).

    Returns
    -------
    float
        Test accuracy in percent.
    """
    net = copy.deepcopy(model if model is not None else pretrained())
    bias = net.fc.bias
    if isinstance(fc1, nn.Module):
        net.fc = fc1
    elif isinstance(fc1, db.DeBut):
        net.fc = DeButLinear.from_debut(fc1.astype(np.float32), bias=bias)
    else:
        W = torch.as_tensor(np.asarray(fc1), dtype=torch.float32)
        if W.shape != (128, 400):
            raise ValueError(f"accuracy_without_finetuning: FC1 weight must be 128x400, got "
                             f"{tuple(W.shape)}")
        lin = nn.Linear(400, 128)
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(bias)
        net.fc = lin
    return evaluate(net)


def finetune(model: nn.Module, epochs: float, seed: int, batch: int = 64,
             limit: int | None = None) -> nn.Module:
    """The paper's optimiser: SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 64."""
    x, y = data()["train"]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    steps = int(round(epochs * len(y) / batch))
    model.train()
    done = 0
    while done < steps:
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            if done >= steps:
                break
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            done += 1
    return model.eval()


# ---------------------------------------------------------------------------------------
# the rows
# ---------------------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the table (aggregated over seeds)."""

    name: str
    init: str
    params: int
    mc: float
    fit_error: float
    fit_errors: list[list[float]] = field(default_factory=list)  # per seed, per layer
    acc_before: list[float] = field(default_factory=list)
    acc_after: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    paper: str = ""


def variants(quick: bool) -> list[tuple[str, str, str, Callable]]:
    """``(name, init, paper, make(seed) -> (model, fit_error))`` for every row."""
    fit = {"max_sweeps": 10} if quick else {}
    rank = db.Chain.parse(FC1).nnz // (128 + 400)  # 14: 7,392 values <= 7,680

    def debut_fc1(method):
        def make(seed):
            kw = dict(fit) if method != "random" else {}
            if method == "als":
                kw["seed"] = seed
            torch.manual_seed(seed)
            model, rep = compress(pretrained(), {"fc": FC1}, method=method, **kw)
            return model, rep.layers[0].fit_error
        return make

    def lowrank(seed):
        model = pretrained()
        model.fc = LowRankLinear(model.fc, rank)
        return model, model.fc.fit_error

    def multi(method):
        def make(seed):
            kw = dict(fit) if method != "random" else {}
            torch.manual_seed(seed)
            model, rep = compress(pretrained(), {"fc": FC1}, method=method, **kw)
            model, rep2 = compress(model, {"fc2": FC2, "conv2": CONV2}, method=method,
                                   flatten=CONV2_FLATTEN, inplace=True, **kw)
            errs = [rep.layers[0].fit_error] + [r.fit_error for r in rep2.layers]
            return model, errs
        return make

    def calibrated(seed):
        # one call: every layer fitted to its outputs on 1,024 training images
        kw = dict(fit)
        x = data()["train"][0]
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:1024]
        model, rep = compress(pretrained(), {"fc": FC1, "fc2": FC2,
                                             "conv2": {"chain": CONV2,
                                                       "flatten": CONV2_FLATTEN}},
                              method="auto", calibration=x[pick], seed=seed, **kw)
        by = {r.name: r.fit_error for r in rep.layers}
        return model, [by["fc"], by["fc2"], by["conv2"]]

    return [
        ("FC1 mono2", "random", PAPER["fc1_random"], debut_fc1("random")),
        ("FC1 mono2", "ALS", PAPER["fc1_als"], debut_fc1("als")),
        ("FC1 mono2", "auto", "", debut_fc1("auto")),
        (f"FC1 rank {rank}", "SVD", "", lowrank),
        ("FC1+FC2+CONV2", "random", PAPER["multi_random"], multi("random")),
        ("FC1+FC2+CONV2", "auto", PAPER["multi_als"] + " (ALS)", multi("auto")),
        ("FC1+FC2+CONV2", "calibrated", "", calibrated),
    ]


def run(epochs: float, seeds: int, quick: bool, limit: int | None,
        log=print, only: list[str] | None = None) -> tuple[float, list[Row]]:
    base = pretrained()
    baseline = evaluate(base)
    n0 = count_parameters(base)
    log(f"baseline test accuracy {baseline:.2f}% (paper 99.29%), {n0:,} parameters")
    rows = []
    for name, init, paper, make in variants(quick):
        if only and not any(o in f"{name} {init}" for o in only):
            continue
        row = None
        for seed in range(seeds):
            t0 = time.perf_counter()
            model, err = make(seed)
            before = evaluate(model)
            finetune(model, epochs, seed, limit=limit)
            after = evaluate(model)
            dt = time.perf_counter() - t0
            if row is None:
                n = count_parameters(model)
                row = Row(name, init, n, 1 - n / n0, 0.0, paper=paper)
            errs = [float(err)] if isinstance(err, float) else [float(e) for e in err]
            row.fit_errors.append(errs)
            row.fit_error = float(np.mean([e[0] for e in row.fit_errors]))
            row.acc_before.append(before)
            row.acc_after.append(after)
            row.seconds.append(dt)
            log(f"  {name:<15} {init:<7} seed {seed}: fit err {row.fit_error:.4f}, "
                f"acc {before:.2f}% -> {after:.2f}%, {dt:.1f} s")
        rows.append(row)
    return baseline, rows


def _spread(values, digits: int) -> str:
    """``"x"`` when all values round alike, else ``"min-max"``."""
    lo, hi = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return lo if lo == hi else f"{lo}-{hi}"


def rst_table(baseline: float, rows: list[Row], n0: int = 61482) -> str:
    head = ["Model", "Init", "Params", "MC", "Fit error", "Acc. no FT", "Acc. fine-tuned",
            "Paper", "Time/seed"]
    body = [["LeNet (pretrained)", "", f"{n0:,}", "0", "", f"{baseline:.2f}", "", "99.29",
             ""]]
    for r in rows:
        a = np.array(r.acc_after)
        b = np.array(r.acc_before)
        fe = "/".join(_spread(col, 3 if len(r.fit_errors[0]) == 1 else 2)
                      for col in zip(*r.fit_errors))
        body.append([r.name, r.init, f"{r.params:,}", f"{100 * r.mc:.2f}%", fe,
                     f"{b.mean():.2f}",
                     f"{a.mean():.2f} ({a.min():.2f}-{a.max():.2f})", r.paper,
                     f"{np.mean(r.seconds):.0f} s"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    sep = "  ".join("=" * w for w in widths)

    def fmt(row):
        return "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()

    return "\n".join([sep, fmt(head), sep] + [fmt(r) for r in body] + [sep])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="The DeBut paper's LeNet/MNIST experiment.")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: 1 seed, 50 steps on 3,200 images, 10 ALS sweeps, "
                         "first 2,000 test images")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("LENET_THREADS", 1)),
                    help="torch threads (default 1; DEBUTLA_NUM_THREADS for the kernels)")
    ap.add_argument("--rows", default=None,
                    help="only the rows whose 'name init' contains one of these "
                         "comma-separated strings (e.g. 'FC1+FC2+CONV2')")
    ap.add_argument("--json", default=None)
    ap.add_argument("--rst", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    limit = None
    if args.quick:
        args.seeds, args.epochs, limit = 1, 1.0, 3200
        _TEST_LIMIT["n"] = 2000
    t0 = time.perf_counter()
    only = [r.strip() for r in args.rows.split(",")] if args.rows else None
    baseline, rows = run(args.epochs, args.seeds, args.quick, limit, only=only)
    table = rst_table(baseline, rows)
    if args.quick:
        table += ("\n\n--quick: 1 seed, 50 steps on 3,200 training images, accuracy on the "
                  "first 2,000 test images only (a smoke run, not the result)")
    total = time.perf_counter() - t0
    print(table)
    print(f"total {total:.0f} s; torch {torch.__version__}, {torch.get_num_threads()} torch "
          f"thread(s), DEBUTLA_NUM_THREADS={os.environ.get('DEBUTLA_NUM_THREADS')}, load "
          f"average {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"baseline": baseline, "rows": [asdict(r) for r in rows],
                       "epochs": args.epochs, "seeds": args.seeds, "quick": args.quick,
                       "seconds": total}, f, indent=1)
    if args.rst:
        with open(args.rst, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
