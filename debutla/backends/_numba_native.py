"""GIL-free bodies for the split tile products that run on an OpenMP team.

A split product on torch's OpenMP threads (:mod:`._omp_team`) used to run a ``ctypes``
callback on each thread: the thread took the GIL, claimed a chunk of tiles in Python
and dropped the GIL again in the ``nogil`` kernel.  On the 2-vCPU guest those GIL
hand-offs cost the VGG layer's two-thread product about 0.2 ms of its 0.55 ms: the
second thread waited 40-55 us for the GIL before its first tile, and the call returned
75-90 us after the last tile ended (``benchmarks/README_kernels.md``, change 17).

Here the body that each team thread runs is machine code with no Python in it: a Numba
``cfunc`` per dtype (:data:`SOURCE`, loaded through the kernel cache like the generic
kernels) that

* takes a thread slot (its scratch buffers) and then tiles one at a time with an atomic
  fetch-and-add on a shared counter, so a thread that starts late only computes fewer
  tiles, and
* calls the chain's compiled tile kernel (``rows_tiles``, ``rows_narrow``'s or
  ``cols_tiles``) through the C entry point that Numba builds beside every compiled
  function (its *cfunc wrapper*; arrays passed as Numba's array structures), and
* optionally adds a bias to the rows of each tile it computed (the torch layers' bias;
  ``numba_.RowsEpilogue.adding``): the same single rounding as ``y + b`` afterwards,
  so the results are bitwise those of any other split.

:func:`tiles_job` packs one product's arguments (addresses and sizes, ``int64``) for
it; it returns None, and the caller keeps the Python body, whenever anything is not in
place: a dtype without a body, a kernel without the expected compiled signature, an
epilogue that is not a bias, or a body still compiling (the first request starts its
compile in a background thread, so no product waits for it).
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from numba.np.numpy_support import from_dtype

from . import _cache

__all__ = ["SOURCE", "body", "call_tiles", "fetch_add", "pointer_to", "tiles_job",
           "wait_for_bodies"]

_log = logging.getLogger("debutla")

#: dtypes with a body (the tile kernels' dtypes)
DTYPES = ("float32", "float64", "complex64", "complex128")

# the job's fields (int64), read by the body
(F_KERNEL, F_NEXT, F_NTILES, F_SLOT, F_V, F_NV, F_X, F_NX, F_Y, F_NY, F_K, F_W, F_XN,
 F_SCRATCH, F_STRIDE, F_BIAS, F_M, F_P) = range(18)
NFIELDS = 18


# -- intrinsics (used by the bodies' source) -----------------------------------------------
@intrinsic
def fetch_add(typingctx, arr, idx, val):
    """Atomically add ``val`` to ``arr[idx]`` (an ``int64`` array); return the old value."""
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        val = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, val, "acq_rel")

    return types.int64(arr, idx, val), codegen


@intrinsic
def pointer_to(typingctx, addr, dtype):
    """A typed pointer (``CPointer(dtype)``) to the address ``addr`` (an integer)."""
    dt = getattr(dtype, "instance_type", dtype)
    if not isinstance(addr, types.Integer) or not isinstance(dt, types.Number):
        return None

    def codegen(context, builder, signature, args):
        ptrty = context.get_value_type(signature.return_type)
        return builder.inttoptr(args[0], ptrty)

    return types.CPointer(dt)(addr, dtype), codegen


@intrinsic
def call_tiles(typingctx, addr, V, X, Y, k, t0, t1, a, b, wr, xn):
    """Call the tile kernel whose C entry point is at ``addr`` (returns nothing).

    The entry point is the *cfunc wrapper* Numba compiles beside a function: its
    arguments are the LLVM value types of the function's Numba types (arrays as Numba's
    array structure), which are exactly the types of this call's arguments.
    """
    argtys = (V, X, Y, k, t0, t1, a, b, wr, xn)

    def codegen(context, builder, signature, args):
        llargs = [context.get_value_type(t) for t in signature.args[1:]]
        fnty = ir.FunctionType(context.get_value_type(types.none), llargs)
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, args[1:])
        return context.get_dummy_value()

    return types.void(addr, *argtys), codegen


_TEMPLATE = '''"""debutla: the GIL-free team body for {dtype} tile products (loaded by debutla)."""
import numpy as np
from numba import carray, njit

from debutla.backends._numba_native import call_tiles, fetch_add, pointer_to

DT = np.{dtype}


@njit(cache=True, nogil=True, error_model="numpy")
def tiles_body(data):
    """One OpenMP team thread's share of a split tile product (see _numba_native).

    data: the address of the job's int64 fields (called through its C entry point as
    body(void *data), or from Python with the address as an integer).
    """
    d = carray(pointer_to(data, np.int64), {nfields})
    slot = fetch_add(d, {F_SLOT}, 1)
    V = carray(pointer_to(d[{F_V}], DT), d[{F_NV}])
    X = carray(pointer_to(d[{F_X}], DT), d[{F_NX}])
    Y = carray(pointer_to(d[{F_Y}], DT), d[{F_NY}])
    stride = d[{F_STRIDE}]
    at = d[{F_SCRATCH}] + 2 * slot * stride * {itemsize}
    a = carray(pointer_to(at, DT), stride)
    b = carray(pointer_to(at + stride * {itemsize}, DT), stride)
    kern, ntiles, k, W, xn = d[{F_KERNEL}], d[{F_NTILES}], d[{F_K}], d[{F_W}], d[{F_XN}]
    wr = np.uint64(W)
    while True:
        t = fetch_add(d, {F_NEXT}, 1)
        if t >= ntiles:
            break
        call_tiles(kern, V, X, Y, k, t, t + 1, a, b, wr, xn)
        if d[{F_BIAS}] != 0:
            m, P = d[{F_M}], d[{F_P}]
            bias = carray(pointer_to(d[{F_BIAS}], DT), m)
            for r in range(t * W, min((t + 1) * W, k)):
                row = Y[r * P:r * P + m]
                for j in range(m):
                    row[j] += bias[j]
'''


def source(dtype: str) -> str:
    """The body module's source for ``dtype`` (one of :data:`DTYPES`)."""
    fields = {name: value for name, value in globals().items() if name.startswith("F_")}
    return _TEMPLATE.format(dtype=dtype, nfields=NFIELDS,
                            itemsize=np.dtype(dtype).itemsize, **fields)


#: the body modules' sources, by dtype
SOURCE = {dt: source(dt) for dt in DTYPES}

_bodies: dict[str, int] = {}  # dtype -> the body's address
_failed: set[str] = set()
_threads: dict[str, threading.Thread] = {}
_lock = threading.Lock()


def _load(dtype: str) -> None:
    try:
        disp = _cache.load_module(SOURCE[dtype], f"team_{dtype}").tiles_body
        # compiled (or loaded from the cache) here, not at the module's execution: an
        # eager signature compiles before the module is registered, and Numba then
        # cannot load that machine code from the cache in a later process
        disp.compile((types.int64,))
        addr = _entry_point(disp, (types.int64,))
        if addr is None:
            raise RuntimeError("no C entry point for the compiled body")
        _bodies[dtype] = addr
    except Exception as e:  # never fail a product: the Python body serves it
        _failed.add(dtype)
        _log.warning("debutla: the GIL-free team body for %s failed to compile (%s: %s); "
                     "team products use the Python body", dtype, type(e).__name__, e)


def body(dtype: Any, wait: bool = False) -> int | None:
    """The address of the team body for ``dtype``, or None (not ready, or no body).

    The first request starts the body's compile (or its load from the kernel cache) in
    a background thread and returns None; ``wait=True`` waits for it instead.

    Examples
    --------
    >>> body(np.float32, wait=True) is not None
    True
    >>> body(np.int32) is None
    True
    """
    name = np.dtype(dtype).name
    addr = _bodies.get(name)
    if addr is not None or name not in SOURCE or name in _failed:
        return addr
    with _lock:
        th = _threads.get(name)
        if th is None:
            th = _threads[name] = threading.Thread(target=_load, args=(name,),
                                                   name="debutla-compile", daemon=True)
            if len(_threads) == 1:
                atexit.register(wait_for_bodies, 60)
            th.start()
    if wait:
        th.join()
    return _bodies.get(name)


def wait_for_bodies(timeout: float | None = None) -> None:
    """Wait for the bodies compiling in background threads."""
    for th in list(_threads.values()):
        th.join(timeout)


# (id(dispatcher), dtype) -> (dispatcher, address): a kernel module's dispatcher holds
# one compiled kernel per dtype
_addresses: dict[tuple, tuple] = {}


def kernel_address(disp, dtype: np.dtype) -> int | None:
    """The C entry point of ``disp``'s compiled tile kernel for ``dtype``, or None.

    Only the signature that the body passes (C-contiguous writeable aligned 1-D arrays;
    ``k``, ``t0``, ``t1`` int64, ``wr`` uint64, ``xn`` int64) returning nothing; None
    until the dispatcher has compiled (or loaded) it.
    """
    dt = np.dtype(dtype)
    key = (id(disp), dt.str)
    hit = _addresses.get(key)
    if hit is not None and hit[0] is disp:
        return hit[1]
    arr = types.Array(from_dtype(dt), 1, "C")
    sig = (arr, arr, arr, types.int64, types.int64, types.int64, arr, arr, types.uint64,
           types.int64)
    addr = _entry_point(disp, sig)
    if addr is not None:
        _addresses[key] = (disp, addr)
    return addr


def _entry_point(disp, sig: tuple) -> int | None:
    """The C entry point of ``disp``'s compiled ``sig`` returning nothing, or None."""
    cres = disp.overloads.get(sig)
    if cres is None or cres.signature.return_type != types.none:
        return None
    addr = cres.library.get_pointer_to_function(cres.fndesc.llvm_cfunc_wrapper_name)
    return int(addr) if addr else None


_scratch_bufs: dict[tuple, np.ndarray] = {}


def _scratch(dtype: np.dtype, stride: int, slots: int) -> np.ndarray:
    """Zeroed, aligned scratch for ``slots`` threads (two buffers of ``stride`` each).

    Shared by the team's products, which run one at a time (:class:`._omp_team.
    OpenMPTeam` refuses a second); a larger request replaces the buffer, and a job
    keeps the one it was built with alive.
    """
    from .numba_ import aligned_empty

    key = np.dtype(dtype).str
    buf = _scratch_bufs.get(key)
    need = 2 * stride * slots
    if buf is None or buf.size < need:
        buf = _scratch_bufs[key] = aligned_empty(need, dtype, zero=True)
    return buf


class TilesJob:
    """One split tile product packed for :data:`SOURCE`'s body (see :func:`tiles_job`).

    ``data`` holds the fields; ``keep`` the arrays whose addresses it holds (alive for
    the job's life).
    """

    __slots__ = ("data", "keep", "body")

    def __init__(self, data: np.ndarray, keep: tuple, body_addr: int) -> None:
        self.data, self.keep, self.body = data, keep, body_addr


def tiles_job(disp, V: np.ndarray, X: np.ndarray, Y: np.ndarray, k: int, ntiles: int,
              W: int, xn: int, scratch_size: int, threads: int,
              bias: np.ndarray | None = None, P: int = 0) -> TilesJob | None:
    """The job for ``threads`` team threads computing tiles ``0..ntiles`` of a product.

    The arguments are those of the tile kernel ``disp`` (``V`` the values, ``X`` and
    ``Y`` flat, ``k`` rows or columns, ``W`` the tile width, ``xn`` input features) and
    the size of each of its two scratch buffers; ``bias`` (length ``m``) is added to the
    first ``m`` of each output row of ``P`` entries.  None when the body cannot run it
    (see the module docstring); the caller then runs its Python body.
    """
    dt = V.dtype
    addr = body(dt)
    if addr is None:
        return None
    kern = kernel_address(disp, dt)
    if kern is None:
        return None
    for a in (V, X, Y) if bias is None else (V, X, Y, bias):
        if a.dtype != dt or not a.flags.c_contiguous or not a.flags.writeable:
            return None
    align = 64 // dt.itemsize
    stride = -(-int(scratch_size) // align) * align
    scr = _scratch(dt, stride, threads)
    data = np.zeros(NFIELDS, np.int64)
    data[F_KERNEL], data[F_NTILES] = kern, ntiles
    data[F_V], data[F_NV] = V.ctypes.data, V.size
    data[F_X], data[F_NX] = X.ctypes.data, X.size
    data[F_Y], data[F_NY] = Y.ctypes.data, Y.size
    data[F_K], data[F_W], data[F_XN] = k, W, xn
    data[F_SCRATCH], data[F_STRIDE] = scr.ctypes.data, stride
    if bias is not None:
        data[F_BIAS], data[F_M], data[F_P] = bias.ctypes.data, bias.size, P
    return TilesJob(data, (V, X, Y, scr, bias), addr)
