"""GPU benchmark: DeBut on CuPy against dense cuBLAS, same card, same run.

Run on a machine with an NVIDIA GPU and CuPy::

    python benchmarks/bench_gpu.py [--out benchmarks/results/gpu.md] [--quick]

Every time is the median of repeated CUDA-event timings after a warm-up (float32 unless
said).  Sections:

1. the card's copy bandwidth (device-to-device copy of 1 GiB, bytes read + written), the
   ceiling of the roofline column;
2. per chain and batch: dense ``X @ W.T`` (cuBLAS), ``X @ op.T`` through the operator (what
   a user calls: validation and dispatch included), the backend call
   (``cupy_.apply_rows``: plan lookup, output allocation, launch), the chain kernel alone
   (``cupy_.launch``), ``op @ X`` (column layout), the speed-up of the operator call over
   cuBLAS, and the kernel's time over the roofline (input + output + values bytes at the
   measured copy bandwidth);
3. the kernel's tuning grid at batch 4096: rows per block x threads per block;
4. 16-bit storage (float16, bfloat16; float32 arithmetic) against float32 storage;
5. with PyTorch (CUDA build): ``DeButLinear`` against ``nn.Linear`` of the same shape,
   inference (``no_grad``) and a training step (forward + backward), module calls timed.
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
    "butterfly 4096 radix 4": str(db.Chain.butterfly(4096, radix=4)),
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


def _copy_bandwidth(cp) -> float:
    """GB/s of a device-to-device copy of 1 GiB (bytes read + written)."""
    src = cp.ones(2**28, dtype=cp.float32)
    dst = cp.empty_like(src)
    t = _time(cp, lambda: cp.copyto(dst, src), reps=10)
    return 2 * 2**30 / (t * 1e-6) / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the Markdown report here too")
    ap.add_argument("--batches", default="1,256,4096")
    ap.add_argument("--quick", action="store_true", help="fewer tuning points, no torch")
    args = ap.parse_args(argv)
    import cupy as cp

    batches = [int(b) for b in args.batches.split(",")]
    props = cp.cuda.runtime.getDeviceProperties(0)
    bw = _copy_bandwidth(cp)
    lines = [f"GPU: {props['name'].decode()}; CuPy {cp.__version__}; median of 20 "
             f"(CUDA events); copy bandwidth {bw:.0f} GB/s (1 GiB device-to-device copy, "
             "read + write)", ""]
    out = []

    def emit(text=""):
        print(text, flush=True)
        out.append(text)

    for line in lines:
        emit(line)
    emit("| chain | batch | dense X@W.T (us) | X@op.T (us) | backend (us) | kernel (us) "
         "| op@X (us) | speed-up X@op.T | kernel / roofline |")
    emit("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for label, text in CHAINS.items():
        try:
            _main_rows(cp, emit, rng, label, text, batches, bw)
        except Exception:  # report and go on
            import traceback
            emit("```\n" + traceback.format_exc() + "```")

    for section in (_tuning, _half) + (() if args.quick else (_torch_section,)):
        try:
            section(cp, emit, rng, args)
        except Exception:  # report and go on: one broken section keeps the others
            import traceback
            emit("```\n" + traceback.format_exc() + "```")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(out) + "\n")
    return 0


def _main_rows(cp, emit, rng, label, text, batches, bw):
    from debutla.backends import cupy_

    op = db.DeBut.random(text, seed=0, dtype=np.float32)
    # the dense matrix from the NumPy reference: no Numba compile in a background thread
    # (it would hold the GIL and stall the timed launches)
    W = cp.asarray(op.with_backend("numpy").to_dense())
    m, n = op.shape
    state = cupy_.prepare(tuple(op.factors))
    for k in batches:
        X = cp.asarray(rng.standard_normal((k, n)).astype(np.float32))
        Xc = cp.ascontiguousarray(X.T)
        Y = cp.empty((k, state.P), cp.float32)
        plan = cupy_.choose_plan(state.shapes, n, state.P, k, "float32")
        t_dense = _time(cp, lambda: X @ W.T)
        t_rows = _time(cp, lambda: X @ op.T)
        t_back = _time(cp, lambda: cupy_.apply_rows(state, X))
        t_kern = _time(cp, lambda: cupy_.launch(plan, X, Y, state.kvalues, k))
        t_cols = _time(cp, lambda: op @ Xc)
        ref = X @ W.T
        err = float(cp.abs(X @ op.T - ref).max() / cp.abs(ref).max())
        assert err < 1e-4, (label, k, err)
        nbytes = 4 * (k * n + k * m + op.nnz)
        roof = nbytes / (bw * 1e9) * 1e6
        kern = cupy_._kernel(plan)
        regs = (f"{getattr(kern, 'num_regs', '?')} regs, "
                f"{getattr(kern, 'local_size_bytes', '?')} B local")
        emit(f"| {label} | {k} | {t_dense:.1f} | {t_rows:.1f} | {t_back:.1f} | {t_kern:.1f} "
             f"| {t_cols:.1f} | {t_dense / t_rows:.2f}x | {t_kern / roof:.2f}x "
             f"(R={plan.rows}, NT={plan.threads}, {regs}) |")


def _tuning(cp, emit, rng, args):
    from debutla.backends import _cuda_chain, cupy_

    k = 4096
    grid_rows = (1, 2, 4, 8)
    grid_threads = (256, 512) if args.quick else (256, 512, 1024)
    cap = cupy_._device()[0]
    emit()
    emit(f"Kernel tuning grid, batch {k}, float32 (us; rows per block R x threads NT; "
         "staged: the input rows copied to shared memory first; * the automatic plan):")
    emit()
    emit("| chain | NT | input | " + " | ".join(f"R={R}" for R in grid_rows) + " |")
    emit("|---|---|---|" + "---|" * len(grid_rows))
    for label, text in CHAINS.items():
        op = db.DeBut.random(text, seed=0, dtype=np.float32)
        state = cupy_.prepare(tuple(op.factors))
        m, n = op.shape
        auto = cupy_.choose_plan(state.shapes, n, state.P, k, "float32")
        X = cp.asarray(rng.standard_normal((k, n)).astype(np.float32))
        Y = cp.empty((k, state.P), cp.float32)
        ref = None
        for stage in (False, True):
            for NT in grid_threads:
                row = []
                for R in grid_rows:
                    plan = _cuda_chain.make_plan(state.shapes, n, state.P, R, NT, "float32",
                                                 stage=stage)
                    if plan.smem_bytes > cap:
                        row.append("n/a")
                        continue
                    try:
                        t = _time(cp, lambda: cupy_.launch(plan, X, Y, state.kvalues, k))
                    except cp.cuda.driver.CUDADriverError as e:  # registers x threads
                        row.append(f"fails ({str(e)[:30]})")
                        continue
                    if ref is None:
                        ref = Y.copy()
                    err = float(cp.abs(Y - ref).max() / cp.abs(ref).max())
                    star = "*" if plan == auto else ""
                    row.append(f"{t:.1f}{star}" if err < 1e-5 else f"WRONG ({err:.1e})")
                emit(f"| {label} | {NT} | {'staged' if stage else 'global'} | "
                     + " | ".join(row) + " |")


def _half(cp, emit, rng, args):
    from debutla.backends import _cuda_chain, cupy_

    k = 4096
    emit()
    emit(f"16-bit storage, float32 arithmetic, batch {k} (kernel us; error relative to the "
         "float32 kernel's largest output):")
    emit()
    emit("| chain | float32 | float16 | bfloat16 | err float16 | err bfloat16 |")
    emit("|---|---|---|---|---|---|")
    for label, text in CHAINS.items():
        op = db.DeBut.random(text, seed=0, dtype=np.float32)
        m, n = op.shape
        shapes = tuple(sp.value_shape for sp in op.chain)
        X32 = rng.standard_normal((k, n)).astype(np.float32)
        V32 = _cuda_chain.kernel_values(op.factors)
        res = {}
        for storage in ("float32", "float16", "bfloat16"):
            X = cp.asarray(_cuda_chain.to_storage(X32, storage))
            V = cp.asarray(_cuda_chain.to_storage(V32, storage))
            Y = cp.empty((k, m), X.dtype)
            plan = cupy_.choose_plan(shapes, n, m, k, storage)
            t = _time(cp, lambda: cupy_.launch(plan, X, Y, V, k))
            res[storage] = (t, _cuda_chain.from_storage(cp.asnumpy(Y), storage))
        y32 = res["float32"][1]
        scale = float(np.abs(y32).max())
        errs = [float(np.abs(res[s][1] - y32).max()) / scale for s in ("float16", "bfloat16")]
        emit(f"| {label} | {res['float32'][0]:.1f} | {res['float16'][0]:.1f} "
             f"| {res['bfloat16'][0]:.1f} | {errs[0]:.1e} | {errs[1]:.1e} |")


def _torch_section(cp, emit, rng, args):
    try:
        import torch
    except ImportError:
        emit("\n(torch not installed: no layer timings)")
        return
    if not torch.cuda.is_available():
        emit("\n(torch has no CUDA: no layer timings)")
        return
    from debutla.torch import DeButLinear

    def tt(fn):  # CuPy's events: torch's current stream is the same default stream
        assert torch.cuda.current_stream().cuda_stream == cp.cuda.get_current_stream().ptr
        return _time(cp, fn)

    emit()
    emit(f"PyTorch {torch.__version__} layers on CUDA (module calls, us): DeButLinear "
         "with the chain kernel (impl 'auto' = 'cuda'), with torch operations per factor "
         "(impl 'torch'), and nn.Linear of the same shape")
    emit()
    emit("| chain | batch | dtype | pass | nn.Linear | DeBut cuda | DeBut torch "
         "| speed-up cuda |")
    emit("|---|---|---|---|---|---|---|---|")
    dev = torch.device("cuda")
    for label in ("VGG 512x4608", "butterfly 4096"):
        chain = CHAINS[label]
        c = db.Chain.parse(chain)
        m, n = c.shape
        for dtype in (torch.float32, torch.bfloat16):
            lin = torch.nn.Linear(n, m, device=dev, dtype=dtype)
            layers = {impl: DeButLinear(n, m, chain=chain, device=dev, dtype=dtype, impl=impl)
                      for impl in ("cuda", "torch")}
            layers["torch"].load_state_dict(layers["cuda"].state_dict())
            for k in (256, 4096):
                x = torch.randn(k, n, device=dev, dtype=dtype)
                with torch.no_grad():
                    ref = layers["torch"](x).float()
                    got = layers["cuda"](x).float()
                    err = float((got - ref).abs().max() / ref.abs().max())
                    assert err < (1e-4 if dtype == torch.float32 else 3e-2), (label, err)
                    times = [tt(lambda: lin(x))] + [tt(lambda layer=layers[i]: layer(x))
                                                    for i in ("cuda", "torch")]
                emit(f"| {label} | {k} | {str(dtype)[6:]} | inference | {times[0]:.1f} "
                     f"| {times[1]:.1f} | {times[2]:.1f} | {times[0] / times[1]:.2f}x |")
                if dtype != torch.float32:
                    continue
                xg = x.clone().requires_grad_(True)

                def step(mod):
                    mod.zero_grad(set_to_none=True)
                    xg.grad = None
                    mod(xg).sum().backward()

                times = [tt(lambda: step(lin))] + [tt(lambda i=i: step(layers[i]))
                                                   for i in ("cuda", "torch")]
                emit(f"| {label} | {k} | float32 | forward+backward | {times[0]:.1f} "
                     f"| {times[1]:.1f} | {times[2]:.1f} | {times[0] / times[1]:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
