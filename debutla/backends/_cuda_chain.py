"""Chain-specialised CUDA kernels: the source generator, its plan, and a NumPy emulation.

One kernel applies a whole chain to ``R`` batch rows per thread block.  Every size is a
compile-time constant (the chain's ``(nb, r, s, t)``, the input and output widths, ``R``
and the block size), so the compiler turns ``g / t`` into shifts or a multiply-high and
unrolls the short loops; there is no integer division at run time.

Schedule of one block (rows ``c0 .. c0 + R - 1``):

* factor ``f`` has ``G = nb * t`` *groups* ``g = (b, tau)``; a group's ``s`` inputs sit at
  ``b*s*t + j*t + tau`` and its ``r`` outputs at ``b*r*t + i*t + tau``.  A thread takes
  groups ``g = threadIdx.x, threadIdx.x + NT, ...`` and computes all ``r`` outputs of its
  group for all ``R`` rows: each value is read once per block and serves ``R`` rows, each
  input once per group.
* values are stored per factor as ``[i][j][g]`` (:func:`kernel_values`), so the threads of
  a warp read consecutive values (coalesced for every ``t``).
* the first factor reads the input rows straight from global memory (features past the
  input width ``n`` read as zeros: padding needs no copy); the last one writes the output
  rows straight to global memory (outputs past ``m`` are not written).
* intermediates live in shared memory, features-major (``buf[i * R + row]``).  A square
  factor (``r == s``) writes its outputs over its own inputs: a group's outputs occupy
  exactly its inputs' positions and no other thread touches them, so it is safe without
  a second buffer.  Other factors write to the other buffer.  Shared memory per block is
  therefore ``R * (size of buffer 0 + size of buffer 1)`` values of the compute type, and a
  butterfly needs one buffer only.
* ``__syncthreads()`` between factors.

Storage types: ``float32``, ``float64``, ``complex64``, ``complex128`` compute in their own
type; ``float16`` and ``bfloat16`` are *storage* types (input, output and values in 16
bits) with float32 arithmetic and float32 intermediates in shared memory.

This module imports no CuPy: :func:`source` and :func:`emulate` run anywhere (the tests
check the plan on the CPU); :mod:`debutla.backends.cupy_` compiles and launches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["Plan", "make_plan", "source", "kernel_values", "KERNEL_ORDER", "emulate", "STORAGES",
           "to_storage", "from_storage"]

#: storage name -> (storage C type, compute C type, load expression, store expression)
_TYPES = {
    "float32": ("float", "float", "{}", "{}"),
    "float64": ("double", "double", "{}", "{}"),
    "complex64": ("complex<float>", "complex<float>", "{}", "{}"),
    "complex128": ("complex<double>", "complex<double>", "{}", "{}"),
    "float16": ("unsigned short", "float", "h2f({})", "f2h({})"),
    "bfloat16": ("unsigned short", "float", "b2f({})", "f2b({})"),
}
STORAGES = tuple(_TYPES)
#: bytes of one value of the compute type (shared memory) per storage
COMPUTE_ITEMSIZE = {"float32": 4, "float64": 8, "complex64": 8, "complex128": 16,
                    "float16": 4, "bfloat16": 4}
#: 32-bit registers of accumulators per thread (outputs x rows x compute size) before a
#: group's outputs are done in chunks
ACC_MAX = 64

_HALF = r"""
__device__ __forceinline__ float h2f(unsigned short h) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ float b2f(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ unsigned short f2b(float f) {  // round to nearest even
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16); }
"""


@dataclass(frozen=True)
class Plan:
    """Everything the generated kernel bakes in.

    Attributes
    ----------
    specs : tuple of (nb, r, s, t)
        The factors in application order.
    n, m : int
        Features read from each input row (``n <= Q``, the rest are zeros) and outputs
        written to each output row (``m <= P``).  They are also the rows' strides.
    rows : int
        Batch rows per block (``R``).
    threads : int
        Threads per block (``NT``).
    storage : str
        One of :data:`STORAGES`.
    stage : bool
        Copy the block's input rows into shared memory first (coalesced reads, zeros past
        ``n``), for the first factor to read from there instead of global memory.  The
        copy lives in buffer 1, which the first factor never writes.
    """

    specs: tuple
    n: int
    m: int
    rows: int
    threads: int
    storage: str
    stage: bool = False
    out_buf: tuple = field(init=False)   # buffer (0/1) of each factor's output; -1: global
    buf_size: tuple = field(init=False)  # values per row of buffer 0 and buffer 1
    offsets: tuple = field(init=False)   # first value of each factor in kernel_values

    def __post_init__(self) -> None:
        nf = len(self.specs)
        out: list[int] = []
        size = [0, 0]
        cur = -1  # the first factor reads global memory
        for f, (nb, r, s, t) in enumerate(self.specs):
            if f == nf - 1:
                out.append(-1)
                break
            # in place only when a group's outputs are all computed before any is written
            in_place = r == s and _chunk(r, self.rows, self.threads, self.storage) == r
            nxt = 0 if cur < 0 else (cur if in_place else 1 - cur)
            out.append(nxt)
            size[nxt] = max(size[nxt], nb * r * t)
            cur = nxt
        if self.stage:
            size[1] = max(size[1], self.Q)
        offs = np.cumsum([0] + [nb * r * s * t for nb, r, s, t in self.specs])[:-1]
        object.__setattr__(self, "out_buf", tuple(out))
        object.__setattr__(self, "buf_size", tuple(size))
        object.__setattr__(self, "offsets", tuple(int(o) for o in offs))

    @property
    def P(self) -> int:
        nb, r, _, t = self.specs[-1]
        return nb * r * t

    @property
    def Q(self) -> int:
        nb, _, s, t = self.specs[0]
        return nb * s * t

    @property
    def smem_bytes(self) -> int:
        """Dynamic shared memory per block."""
        return self.rows * sum(self.buf_size) * COMPUTE_ITEMSIZE[self.storage]

    def chunk(self, f: int) -> int:
        """Outputs of a group done per pass over its inputs (a divisor of ``r``)."""
        return _chunk(self.specs[f][1], self.rows, self.threads, self.storage)


def _chunk(r: int, rows: int, threads: int, storage: str) -> int:
    """The largest divisor ``c`` of ``r`` whose ``c * rows`` accumulators fit the budget
    (at least 1): ``ACC_MAX`` 32-bit registers, and at most half of what a thread may
    hold at ``threads`` per block (65536 registers per multiprocessor).
    """
    budget = min(ACC_MAX, 32768 // threads)
    words = COMPUTE_ITEMSIZE[storage] // 4
    best = 1
    for c in range(1, r + 1):
        if r % c == 0 and c * rows * words <= budget:
            best = c
    return best


def make_plan(specs: Sequence[Sequence[int]], n: int, m: int, rows: int, threads: int,
              storage: str, stage: bool = False) -> Plan:
    """Check the arguments and build a :class:`Plan` (internal; errors are ValueErrors)."""
    specs = tuple(tuple(int(d) for d in sp) for sp in specs)
    if not specs:
        raise ValueError("make_plan: specs must hold at least one factor")
    if storage not in _TYPES:
        raise ValueError(f"make_plan: storage must be one of {STORAGES}, got {storage!r}")
    if rows < 1 or threads < 32 or threads % 32:
        raise ValueError(f"make_plan: rows must be >= 1 and threads a multiple of 32, got "
                         f"rows={rows}, threads={threads}")
    plan = Plan(specs, int(n), int(m), int(rows), int(threads), storage, bool(stage))
    if not (0 < plan.n <= plan.Q and 0 < plan.m <= plan.P):
        raise ValueError(f"make_plan: need 0 < n <= {plan.Q} and 0 < m <= {plan.P}, got "
                         f"n={n}, m={m}")
    return plan


#: axes of canonical ``(nb, r, s, t)`` values in the kernel's ``[i][j][g]`` layout, with
#: ``g = b * t + tau`` (so ``V.transpose(KERNEL_ORDER)`` is that layout)
KERNEL_ORDER = (1, 2, 0, 3)


def kernel_values(factors: Sequence[np.ndarray], xp=np):
    """Concatenate canonical ``(nb, r, s, t)`` values in the kernel's ``[i][j][g]`` layout."""
    return xp.concatenate([xp.ascontiguousarray(V.transpose(KERNEL_ORDER)).ravel()
                           for V in factors])


def _factor_code(plan: Plan, f: int) -> str:
    nb, r, s, t = plan.specs[f]
    G = nb * t
    ld, st = _TYPES[plan.storage][2:]
    first, last = f == 0, f == len(plan.specs) - 1
    src_buf = "buf1" if first and plan.stage else (
        None if first else f"buf{plan.out_buf[f - 1]}")
    dst_buf = None if last else f"buf{plan.out_buf[f]}"
    rc = plan.chunk(f)
    if first and not plan.stage:
        load = ld.format("X[xrow[rr] + xi + j * T]")
        if plan.n < plan.Q:
            load = f"(xi + j * T < NIN ? {load} : C(0))"
    else:
        load = f"{src_buf}[(xi + j * T) * R + rr]"
    if last:
        store = f"if (rr < nr) Y[yrow[rr] + o] = {st.format('acc[ii][rr]')};"
        if plan.m < plan.P:
            store = f"if (o < MOUT) {{ {store} }}"
    else:
        store = f"{dst_buf}[o * R + rr] = acc[ii][rr];"
    # full unroll hoists all s * R input loads: bounded, else the registers spill
    jpragma = "#pragma unroll" if s * plan.rows <= 64 else "#pragma unroll 2"
    ipragma = "#pragma unroll" if r // rc <= 4 else "#pragma unroll 1"
    lines = [
        f"    {{  // factor {f}: nb={nb} r={r} s={s} t={t}",
        f"        constexpr int RF = {r}, SF = {s}, T = {t}, G = {G}, RC = {rc};",
        f"        const S* __restrict__ Vf = V + {plan.offsets[f]};",
        "        for (int g = threadIdx.x; g < G; g += NT) {",
        "            const int b = g / T;",
        "            const int tau = g - b * T;",
        "            const int xi = b * (SF * T) + tau;",
        "            const int yo = b * (RF * T) + tau;",
        f"            {ipragma}",
        "            for (int i0 = 0; i0 < RF; i0 += RC) {",
        "                C acc[RC][R];",
        "#pragma unroll",
        "                for (int ii = 0; ii < RC; ++ii)",
        "#pragma unroll",
        "                    for (int rr = 0; rr < R; ++rr) acc[ii][rr] = C(0);",
        f"{jpragma}",
        "                for (int j = 0; j < SF; ++j) {",
        "                    C xv[R];",
        "#pragma unroll",
        f"                    for (int rr = 0; rr < R; ++rr) xv[rr] = {load};",
        "#pragma unroll",
        "                    for (int ii = 0; ii < RC; ++ii) {",
        f"                        const C v = {ld.format('Vf[((i0 + ii) * SF + j) * G + g]')};",
        "#pragma unroll",
        "                        for (int rr = 0; rr < R; ++rr) acc[ii][rr] += v * xv[rr];",
        "                    }",
        "                }",
        "#pragma unroll",
        "                for (int ii = 0; ii < RC; ++ii) {",
        "                    const int o = yo + (i0 + ii) * T;",
        "#pragma unroll",
        f"                    for (int rr = 0; rr < R; ++rr) {{ {store} }}",
        "                }",
        "            }",
        "        }",
    ]
    if not last:
        lines.append("        __syncthreads();")
    lines.append("    }")
    return "\n".join(lines)


def source(plan: Plan, name: str = "debutla_chain") -> str:
    """CUDA C++ source of the kernel ``name(X, Y, V, k)`` for ``plan``.

    ``X`` is ``(k, n)`` and ``Y`` ``(k, m)``, both C-contiguous in the storage type; ``V``
    is :func:`kernel_values` of the factors.  Launch with ``ceil(k / R)`` blocks of
    ``NT`` threads and :attr:`Plan.smem_bytes` of dynamic shared memory.
    """
    S, C, ld, _ = _TYPES[plan.storage]
    R, NT = plan.rows, plan.threads
    head = ["// generated by debutla.backends._cuda_chain: " + " ".join(
        f"({nb},{r},{s},{t})" for nb, r, s, t in plan.specs)
        + f" n={plan.n} m={plan.m} R={R} NT={NT} {plan.storage}"
        + (" staged" if plan.stage else "")]
    if plan.storage.startswith("complex"):
        head.append("#include <cupy/complex.cuh>")
    if plan.storage in ("float16", "bfloat16"):
        head.append(_HALF)
    body = [
        f"typedef {S} S;",
        f"typedef {C} C;",
        f"constexpr int R = {R}, NT = {NT}, NIN = {plan.n}, MOUT = {plan.m};",
        f'extern "C" __global__ void __launch_bounds__({NT}) {name}(',
        "    const S* __restrict__ X, S* __restrict__ Y, const S* __restrict__ V,"
        " const long long k)",
        "{",
    ]
    if plan.smem_bytes:
        body += [
            "    extern __shared__ __align__(16) unsigned char smem_raw[];",
            "    C* const buf0 = reinterpret_cast<C*>(smem_raw);",
            f"    C* const buf1 = buf0 + R * {plan.buf_size[0]};",
            "    (void)buf0; (void)buf1;",
        ]
    body += [
        "    const long long c0 = (long long)blockIdx.x * R;",
        "    const int nr = (int)(k - c0 < R ? k - c0 : R);",
        "    long long xrow[R], yrow[R];",
        "#pragma unroll",
        "    for (int rr = 0; rr < R; ++rr) {",
        "        const long long c = c0 + rr < k ? c0 + rr : k - 1;  // rows past k: re-read",
        "        xrow[rr] = c * NIN;",
        "        yrow[rr] = c * MOUT;",
        "    }",
        "    (void)nr; (void)xrow; (void)yrow;",
    ]
    if plan.stage:
        load = ld.format("X[xrow[rr] + i]")
        if plan.n < plan.Q:
            load = f"(i < NIN ? {load} : C(0))"
        body += [
            "    // the block's input rows into buffer 1, coalesced, zeros past n",
            f"    for (int i = threadIdx.x; i < {plan.Q}; i += NT) {{",
            "#pragma unroll",
            f"        for (int rr = 0; rr < R; ++rr) buf1[i * R + rr] = {load};",
            "    }",
            "    __syncthreads();",
        ]
    body += [_factor_code(plan, f) for f in range(len(plan.specs))]
    body.append("}")
    return "\n".join(head + body) + "\n"


def emulate(plan: Plan, values: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Run ``plan``'s schedule in NumPy (float64/complex128): ``Y`` of shape ``(k, m)``.

    Follows the generated code step by step (groups, chunks, buffers, in-place square
    factors, padding and the cut output), vectorised over a block's rows only; for
    checking the plan on small chains.
    """
    k = X.shape[0]
    R = plan.rows
    dt = np.result_type(values.dtype, X.dtype, np.float64)
    Y = np.full((k, plan.m), np.nan, dtype=dt)
    for c0 in range(0, k, R):
        rows = np.minimum(np.arange(c0, c0 + R), k - 1)
        nr = min(R, k - c0)
        bufs = [np.full((plan.buf_size[i], R), np.nan, dtype=dt) for i in range(2)]
        src = None
        if plan.stage:
            bufs[1][:plan.Q] = 0
            bufs[1][:plan.n] = X[rows].T
            src = bufs[1]
        for f, (nb, r, s, t) in enumerate(plan.specs):
            G = nb * t
            rc = plan.chunk(f)
            Vf = values[plan.offsets[f]:plan.offsets[f] + nb * r * s * t]
            dst_id = plan.out_buf[f]
            for g in range(G):
                b, tau = divmod(g, t)
                xi, yo = b * s * t + tau, b * r * t + tau
                for i0 in range(0, r, rc):
                    acc = np.zeros((rc, R), dtype=dt)
                    for j in range(s):
                        idx = xi + j * t
                        if src is None:  # only the first factor, unstaged
                            xv = X[rows, idx] if idx < plan.n else np.zeros(R, dt)
                        else:
                            xv = src[idx]
                        for ii in range(rc):
                            acc[ii] += Vf[((i0 + ii) * s + j) * G + g] * xv
                    for ii in range(rc):
                        o = yo + (i0 + ii) * t
                        if dst_id < 0:
                            if o < plan.m:
                                Y[c0:c0 + nr, o] = acc[ii, :nr]
                        else:
                            bufs[dst_id][o] = acc[ii]
            src = bufs[dst_id] if dst_id >= 0 else None
    return Y


def to_storage(a: np.ndarray, storage: str) -> np.ndarray:
    """Host array ``a`` in the kernel's storage type: float16 as NumPy float16, bfloat16
    as its ``uint16`` bit patterns (rounded to nearest even, as the kernel rounds), other
    storages unchanged.
    """
    if storage == "float16":
        return np.asarray(a, np.float16)
    if storage == "bfloat16":
        u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return a


def from_storage(a: np.ndarray, storage: str) -> np.ndarray:
    """Inverse of :func:`to_storage`: 16-bit storage back to float32 (exact)."""
    if storage == "float16":
        return np.asarray(a, np.float32)
    if storage == "bfloat16":
        return (np.asarray(a, np.uint16).astype(np.uint32) << 16).view(np.float32)
    return a
