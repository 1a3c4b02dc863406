#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: the GPU tests, then the GPU benchmark.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Needs CuPy (debutla[cuda12] or [cuda13]) and, for the torch CUDA tests, a CUDA build of
# torch.  Writes nvidia-smi.txt, tests.txt and bench_gpu.md under OUT_DIR (default
# benchmarks/results/gpu_check); exits non-zero if any step failed.  Every test that
# needs a GPU is marked `gpu` or skips itself without CUDA, so the tests run here are
# exactly the ones CI skips.
set -u
out=${1:-benchmarks/results/gpu_check}
mkdir -p "$out"
status=0
{ nvidia-smi || status=1; } 2>&1 | tee "$out/nvidia-smi.txt"
python - <<'PY' 2>&1 | tee -a "$out/nvidia-smi.txt" || status=1
import cupy
props = cupy.cuda.runtime.getDeviceProperties(0)
print("cupy", cupy.__version__, props["name"].decode(), f"{props['totalGlobalMem'] / 2**30:.0f} GiB")
try:
    import torch
    print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "no cuda")
except ImportError:
    print("torch not installed: the torch CUDA tests skip")
PY
# GPU-marked tests, then the tests that take CUDA tensors (they skip without CUDA)
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 5 ]; }  # 5: pytest selected no test
python -m pytest -q -rs -m gpu tests 2>&1 | tee "$out/tests.txt"
ok "${PIPESTATUS[0]}" || status=1
python -m pytest -q -rs -k "cuda or gpu or device" tests/test_torch.py tests/test_array_api.py \
    2>&1 | tee -a "$out/tests.txt"
ok "${PIPESTATUS[0]}" || status=1
python benchmarks/bench_gpu.py --out "$out/bench_gpu.md" 2>&1 | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu_check: results in $out (status $status)"
exit $status
