"""Registers and spills of the generated CUDA kernels, without a GPU.

Compiles each plan's source to PTX with NVRTC and the PTX to sm_90 machine code with
``ptxas -v``, and prints registers per thread, spill stores and stack frame::

    pip install nvidia-cuda-nvrtc-cu12      # NVRTC (no GPU needed)
    PTXAS=/path/to/ptxas python benchmarks/cuda_regs.py [--arch sm_90]

``ptxas`` comes with the CUDA toolkit, or with the ``triton`` wheel
(``triton/backends/nvidia/bin/ptxas``); ``PTXAS`` names it, else ``ptxas`` on ``PATH``.
On 2026-12-04 the counts matched those CuPy reported on an H200 for the same plans
(e.g. VGG R=4, 256 threads: 64 registers; LeNet R=8 before the unroll bound: 255
registers and 112 bytes of stack).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import debutla as db  # noqa: E402
from debutla.backends import _cuda_chain as cc, _nvrtc  # noqa: E402

from bench_gpu import CHAINS  # noqa: E402  (the same chains as the GPU benchmark)


def registers(lib, ptxas: str, plan: cc.Plan, arch: str) -> tuple[int, int, int]:
    """(registers, spill-store bytes, stack-frame bytes) of ``plan``'s kernel."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "wb") as f:
            ok, log, ptx = _nvrtc.compile_ptx(lib, cc.source(plan), f"compute_{arch[3:]}")
            if not ok:
                raise RuntimeError(log)
            f.write(ptx)
        out = subprocess.run([ptxas, f"-arch={arch}", "-v", path, "-o",
                              os.path.join(d, "k.cubin")], capture_output=True, text=True)
    txt = out.stderr + out.stdout

    def num(pattern):
        hit = re.search(pattern, txt)
        return int(hit.group(1)) if hit else -1
    return (num(r"Used (\d+) registers"), num(r"(\d+) bytes spill stores"),
            num(r"(\d+) bytes stack frame"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sm_90")
    args = ap.parse_args(argv)
    ptxas = os.environ.get("PTXAS") or shutil.which("ptxas")
    if not ptxas:
        print("ptxas not found: set PTXAS", file=sys.stderr)
        return 2
    lib = _nvrtc.load()
    if lib is None:
        print("NVRTC not found: pip install nvidia-cuda-nvrtc-cu12", file=sys.stderr)
        return 2
    print("| chain | R | NT | input | registers | spill stores (B) | stack (B) |")
    print("|---|---|---|---|---|---|---|")
    for label, text in CHAINS.items():
        chain = db.Chain.parse(text)
        specs = [sp.value_shape for sp in chain]
        for stage in (False, True):
            for R in (1, 2, 4, 8):
                for NT in (128, 256, 512, 1024):
                    plan = cc.make_plan(specs, chain.shape[1], chain.shape[0], R, NT,
                                        "float32", stage=stage)
                    regs, spill, stack = registers(lib, ptxas, plan, args.arch)
                    print(f"| {label} | {R} | {NT} | {'staged' if stage else 'global'} "
                          f"| {regs} | {spill} | {stack} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
