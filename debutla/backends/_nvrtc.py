"""NVRTC without CuPy or a GPU: compile CUDA source to PTX (checks and tooling only).

Loads ``libnvrtc`` from the ``nvidia-cuda-nvrtc-cu12`` (or ``-cu13``) wheel, so the
generated kernels can be compiled on machines with no GPU: the tests check that every
generated source compiles, and ``benchmarks/cuda_regs.py`` feeds the PTX to ``ptxas``.
The CuPy backend does not use this module (CuPy compiles through its own NVRTC).
"""

from __future__ import annotations

import ctypes
import glob
import os

__all__ = ["load", "compile_ptx"]


def load() -> ctypes.CDLL | None:
    """The NVRTC library of an installed ``nvidia-cuda-nvrtc`` wheel, or None."""
    try:
        import nvidia.cuda_nvrtc as pkg  # type: ignore[import-not-found]
    except ImportError:
        return None
    for d in pkg.__path__:
        libs = [p for p in sorted(glob.glob(os.path.join(d, "lib", "libnvrtc.so*")))
                if ".alt." not in p and "builtins" not in p]
        if libs:
            return ctypes.CDLL(libs[0])
    return None


def compile_ptx(lib: ctypes.CDLL, src: str, arch: str = "compute_90") -> tuple[bool, str, bytes]:
    """Compile ``src`` (C++17) for virtual architecture ``arch``: (ok, log, PTX)."""
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"chain.cu", 0, None,
                              None) != 0:
        raise RuntimeError("nvrtcCreateProgram failed")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17"]
        ok = lib.nvrtcCompileProgram(prog, len(opts),
                                     (ctypes.c_char_p * len(opts))(*opts)) == 0
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        ptx = b""
        if ok:
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, buf)
            ptx = buf.value
        return ok, log.value.decode(errors="replace"), ptx
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
