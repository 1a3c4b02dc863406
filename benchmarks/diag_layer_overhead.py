"""The torch layer's own overhead: the eager paths of ``debut_mm`` against the older ones.

In one process, ``DeButLinear`` calls with the current eager paths ("new") alternate
with the same calls through the older paths ("old"), each right after an ``nn.Linear``
call of the same shape (the regime of ``bench_torch.py``'s A B A B rows):

* "old": every call that records a gradient goes through the registered custom op
  (``debutla::debut_mm`` and its backward op); the cached CPU operator is checked with
  ``numpy.array_equal``, in the forward and again in the backward; the factor list is
  built by iterating the ``ParameterList``; each new operator state (every optimiser
  step gives new values) generates the chain's kernel source again to find its module;
* "new": plain eager calls that record a gradient run the ``torch.autograd.Function``
  (``_ops._plain_eager``); the check compares bytes with ``memcmp``
  (``_ops._same_bytes``), and the backward reuses the forward's operator
  (``ctx.cpu_op``); the factor list comes from the parameter dict
  (``_DeButBase._values``); kernel modules are looked up by chain
  (``_numba_codegen._modules``, ``_numba_backward._modules``).

Modes: ``inference`` (``torch.inference_mode``), ``train`` (forward and backward,
gradients accumulating, as ``bench_torch.py``) and ``step`` (a whole training step:
``zero_grad``, forward, backward and an SGD step, so every step has new values).
Both give the same bits (``tests/test_torch.py``).  Medians over the rounds; the
speed-ups are ``nn.Linear``'s median over the layer's.

``--pools`` compares the threads that run the layer's split products (change 14 of
``benchmarks/README_kernels.md``): ``debutla.config(pool="debutla")`` (debutla's own
worker threads, the layers' choice before) against ``pool="openmp"`` (torch's OpenMP
threads, the default now), alternating in one process, each call right after an
``nn.Linear`` call as above, in the three modes.  It needs two threads or more.

``--bodies`` compares the two bodies that torch's OpenMP threads can run for a split
product (change 17): the ``ctypes`` callback that claims chunks in Python (the
GIL-free jobs of ``debutla.backends._numba_native`` switched off) against the GIL-free
bodies, alternating in one process on ``pool="openmp"`` as above.  It needs two threads
or more.

``--ablate`` answers another question: what do the layer's per-call costs weigh now?
It times ``layer(x)`` under ``torch.inference_mode()`` at each ``--batches`` size
(VGG chain, one process, variants interleaved): the full call, the call without the
cached operator's check of the values (the operator handed back directly), without the
``debutla.config`` block around the product, without the bias, without all three, and
the operator's product alone (``op.matmat_rows(x, out=y)``).  The variants skip work
that a real call needs: they measure, they are not options.

Usage::

    python benchmarks/diag_layer_overhead.py               # 1 and 2 threads
    python benchmarks/diag_layer_overhead.py --threads 1 --rounds 60
    python benchmarks/diag_layer_overhead.py --ablate --threads 1 --batches 1 16 256
    python benchmarks/diag_layer_overhead.py --pools --threads 2 --chain butterfly_4096
    python benchmarks/diag_layer_overhead.py --bodies --threads 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _layer(threads: int, chain_name: str):
    """``(layer, (m, n))``: a DeButLinear of the named paper chain, torch on ``threads``."""
    import torch

    import debutla as db
    from debutla.torch import DeButLinear

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    chain = (db.Chain.butterfly(4096) if chain_name == "butterfly_4096"
             else db.Chain.parse(db.PAPER_CHAINS[chain_name]))
    m, n = chain.shape
    return DeButLinear(n, m, chain=chain), (m, n)


def _alternate(threads: int, rounds: int, chain_name: str, batch: int, title: str,
               tags: tuple, enter) -> None:
    """Time the layer in the three modes under each of ``tags`` (``enter(tag)`` gives a
    context manager that sets it up), alternating, each call after an ``nn.Linear`` call.
    """
    import numpy as np
    import torch

    deb, (m, n) = _layer(threads, chain_name)
    dense = torch.nn.Linear(n, m)
    x = torch.randn(batch, n)
    g = torch.randn(batch, m)
    xg = x.clone().requires_grad_(True)

    def inference(layer):
        with torch.inference_mode():
            layer(x)

    def train(layer):
        layer(xg).backward(g)

    opts = {id(la): torch.optim.SGD(la.parameters(), lr=1e-7) for la in (deb, dense)}

    def step(layer):
        opt = opts[id(layer)]
        opt.zero_grad(set_to_none=True)
        xg.grad = None
        layer(xg).backward(g)
        opt.step()

    a, b = tags
    print(f"# {title}threads {threads}, {chain_name} {m}x{n}, batch {batch}, {rounds} "
          f"rounds, load {os.getloadavg()[0]:.2f}")
    for mode in (inference, train, step):
        times: dict = {a: [], b: [], "dense": []}
        for r in range(rounds + 5):
            for tag in tags:
                t0 = time.perf_counter()
                mode(dense)
                td = time.perf_counter() - t0
                with enter(tag):
                    t0 = time.perf_counter()
                    mode(deb)
                    t = time.perf_counter() - t0
                if r >= 5:  # warm-up rounds
                    times[tag].append(t)
                    times["dense"].append(td)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        print(f"{mode.__name__:9s}  {a} {med[a]:.3f} ms  {b} {med[b]:.3f} ms  "
              f"nn.Linear {med['dense']:.3f} ms  {a}/{b} {med[a] / med[b]:.2f}  "
              f"speed-up over nn.Linear: {a} {med['dense'] / med[a]:.2f}x, "
              f"{b} {med['dense'] / med[b]:.2f}x")
    print(f"# load at the end {os.getloadavg()[0]:.2f}")


def worker(threads: int, rounds: int, chain_name: str, batch: int) -> None:
    """The old eager paths against the new ones (the module docstring)."""
    import contextlib

    import numpy as np

    import debutla.backends._numba_backward as bw
    import debutla.backends._numba_codegen as cg
    import debutla.torch._ops as ops
    import debutla.torch.layers as layers

    new = (ops._plain_eager, ops._same_bytes, layers._DeButBase._values, ops._backward)
    tables = (cg._modules, bw._modules)

    def old_backward(*a, op=None):
        return new[3](*a)

    def old_same(a, b):
        return bool(np.array_equal(a.numpy(), b.detach().numpy()))

    @contextlib.contextmanager
    def set_mode(tag: str):
        old = tag == "old"
        ops._plain_eager = (lambda x: False) if old else new[0]
        ops._same_bytes = old_same if old else new[1]
        layers._DeButBase._values = (lambda self: list(self.factors)) if old else new[2]
        ops._backward = old_backward if old else new[3]
        # old: an empty table for each call, so new states generate their source again
        cg._modules = {} if old else tables[0]
        bw._modules = {} if old else tables[1]
        try:
            yield
        finally:  # the new paths outside the timed calls
            ops._plain_eager, ops._same_bytes, layers._DeButBase._values, \
                ops._backward = new
            cg._modules, bw._modules = tables

    _alternate(threads, rounds, chain_name, batch, "", ("old", "new"), set_mode)


def pools(threads: int, rounds: int, chain_name: str, batch: int) -> None:
    """``--pools``: the layer on debutla's worker threads against torch's OpenMP ones."""
    import debutla as db

    _alternate(threads, rounds, chain_name, batch, "--pools: ", ("debutla", "openmp"),
               lambda tag: db.config(pool=tag))


def bodies(threads: int, rounds: int, chain_name: str, batch: int) -> None:
    """``--bodies``: the team's GIL-free bodies against its Python callback body."""
    import contextlib

    import numpy as np

    import debutla as db
    from debutla.backends import _numba_native as nat

    jobs = (nat.tiles_job, nat.backward_job)
    for count in (0, len(_layer(threads, chain_name)[0].chain)):
        nat.body(np.float32, wait=True, count=count)

    @contextlib.contextmanager
    def set_body(tag: str):
        if tag == "python":
            nat.tiles_job = nat.backward_job = lambda *a, **k: None
        try:
            with db.config(pool="openmp"):
                yield
        finally:
            nat.tiles_job, nat.backward_job = jobs

    _alternate(threads, rounds, chain_name, batch, "--bodies: ", ("python", "native"),
               set_body)


def ablate(threads: int, rounds: int, chain_name: str, batches: list) -> None:
    import contextlib

    import numpy as np
    import torch

    import debutla.torch._ops as ops
    from debutla import _config

    layer, (m, n) = _layer(threads, chain_name)
    real_getop, real_cfg = ops._cpu_operator, _config.config
    op = real_getop(layer._values(), layer.chain, (m, n))

    @contextlib.contextmanager
    def no_config(**settings):
        yield

    def no_check(*args, **kwargs):
        return op

    variants = {"full": {}, "no check": {"getop": no_check},
                "no config block": {"cfg": no_config}, "no bias": {"bias": True},
                "none of the three": {"getop": no_check, "cfg": no_config, "bias": True}}
    print(f"# --ablate: threads {threads}, {chain_name} {m}x{n}, {rounds} rounds, load "
          f"{os.getloadavg()[0]:.2f}; medians, us")
    for batch in batches:
        x = torch.randn(batch, n)

        def call(v):
            ops._cpu_operator = v.get("getop", real_getop)
            _config.config = v.get("cfg", real_cfg)
            bias = layer.bias
            if v.get("bias"):
                layer.bias = None
            try:
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    layer(x)
                    return time.perf_counter() - t0
            finally:
                layer.bias = bias
                ops._cpu_operator, _config.config = real_getop, real_cfg

        times: dict = {k: [] for k in variants}
        for r in range(rounds + 20):
            for k, v in variants.items():
                t = call(v)
                if r >= 20:
                    times[k].append(t)
        xn, yn = x.numpy(), np.empty((batch, m), np.float32)
        alone = []
        for r in range(rounds + 20):
            t0 = time.perf_counter()
            op.matmat_rows(xn, out=yn)
            if r >= 20:
                alone.append(time.perf_counter() - t0)
        cells = ", ".join(f"{k} {float(np.median(v)) * 1e6:.1f}" for k, v in times.items())
        print(f"batch {batch:5d}: {cells}, product alone {float(np.median(alone)) * 1e6:.1f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--chain", default="vgg_512x4608_mono")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--ablate", action="store_true",
                    help="time the layer's per-call costs instead (see the module doc)")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 16, 256],
                    help="batch sizes of --ablate")
    ap.add_argument("--pools", action="store_true",
                    help="debutla's worker threads against torch's OpenMP threads")
    ap.add_argument("--bodies", action="store_true",
                    help="the OpenMP team's GIL-free bodies against its Python body")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        if args.ablate:
            ablate(args.worker, args.rounds, args.chain, args.batches)
        elif args.pools:
            pools(args.worker, args.rounds, args.chain, args.batch)
        elif args.bodies:
            bodies(args.worker, args.rounds, args.chain, args.batch)
        else:
            worker(args.worker, args.rounds, args.chain, args.batch)
        return
    for k in args.threads:
        env = dict(os.environ, DEBUTLA_NUM_THREADS=str(k), OMP_NUM_THREADS=str(k),
                   PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(k),
                        "--rounds", str(args.rounds), "--chain", args.chain,
                        "--batch", str(args.batch), "--batches", *map(str, args.batches)]
                       + (["--ablate"] if args.ablate else [])
                       + (["--pools"] if args.pools else [])
                       + (["--bodies"] if args.bodies else []), env=env, check=True)


if __name__ == "__main__":
    main()
