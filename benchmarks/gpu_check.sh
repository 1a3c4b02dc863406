#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: the GPU tests, then the GPU benchmark.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Needs CuPy (debutla[cuda12] or [cuda13]) and, for the torch CUDA tests, a CUDA build of
# torch.  Runs from the checkout (PYTHONPATH=.), so nothing needs installing beyond the
# dependencies.  Writes nvidia-smi.txt, tests.txt and bench_gpu.md under OUT_DIR
# (default benchmarks/results/gpu_check); exits non-zero if any step failed.  Every test
# that needs a GPU is marked `gpu` or skips itself without CUDA, so the tests run here
# are exactly the ones CI skips.  Each step has a time limit (GPU_CHECK_TEST_S,
# GPU_CHECK_BENCH_S seconds) so that a hang still leaves the other steps' results.
set -u
out=${1:-benchmarks/results/gpu_check}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0
{ nvidia-smi || status=1; } 2>&1 | tee "$out/nvidia-smi.txt"
python3 - <<'PY' 2>&1 | tee -a "$out/nvidia-smi.txt" || status=1
import cupy, numpy, numba
props = cupy.cuda.runtime.getDeviceProperties(0)
print("cupy", cupy.__version__, props["name"].decode(), f"{props['totalGlobalMem'] / 2**30:.0f} GiB",
      "numpy", numpy.__version__, "numba", numba.__version__)
try:
    import torch
    print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "no cuda")
except ImportError:
    print("torch not installed: the torch CUDA tests skip")
PY
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 5 ]; }  # 5: pytest selected no test
# GPU-marked tests everywhere, plus the torch CUDA module (its error test is unmarked)
timeout "${GPU_CHECK_TEST_S:-300}" python3 -m pytest -q -rs -p no:cacheprovider \
    -m gpu tests tests/test_torch_cuda.py 2>&1 | tee "$out/tests.txt"
ok "${PIPESTATUS[0]}" || status=1
timeout "${GPU_CHECK_BENCH_S:-240}" python3 benchmarks/bench_gpu.py \
    --out "$out/bench_gpu.md" ${GPU_CHECK_BENCH_ARGS:-} 2>&1 | tee "$out/bench_log.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu_check: results in $out (status $status)"
exit $status
