"""GIL-free bodies for the split tile products that run on an OpenMP team (and on
debutla's own spinning pool: :mod:`._numba_pool`, change 31).

A split product on torch's OpenMP threads (:mod:`._omp_team`) used to run a ``ctypes``
callback on each thread: the thread took the GIL, claimed a chunk of tiles in Python
and dropped the GIL again in the ``nogil`` kernel.  On the 2-vCPU guest those GIL
hand-offs cost the VGG layer's two-thread product about 0.2 ms of its 0.55 ms: the
second thread waited 40-55 us for the GIL before its first tile, and the call returned
75-90 us after the last tile ended (``benchmarks/README_kernels.md``, change 17).

Here the body that each team thread runs is machine code with no Python in it: a Numba
function per dtype (:data:`SOURCE`, loaded through the kernel cache like the generic
kernels), called through the C entry point that Numba builds beside every compiled
function (its *cfunc wrapper*), that

* takes a thread slot (its scratch buffers) and then tiles one at a time with an atomic
  fetch-and-add on a shared counter, so a thread that starts late only computes fewer
  tiles, and
* calls the chain's compiled tile kernel (``rows_tiles`` or ``cols_tiles``) through that
  kernel's own C entry point (arrays passed as Numba's array structures), and
* optionally adds a bias to the rows of each tile it computed (the torch layers' bias;
  ``numba_.RowsEpilogue.adding``): the same single rounding as ``y + b`` afterwards,
  so the results are bitwise those of any other split.

A second body per dtype and factor count does the same for the torch layers' generated
backward (:mod:`._numba_backward`): it claims groups of rows, zeroes each group's row of
value gradients and calls the backward kernel (``debutla.torch._kernels.
fused_backward``; change 17 measured 1.03-1.09x on the VGG layer's two-thread training
call, where the kernel's own 1.9 ms dominate).  Once every group is done, the team's
threads also sum the groups' rows, in group order (the bits of NumPy's sum of the rows),
claiming chunks of :data:`SUM_CHUNK` columns: a thread that finishes its last group
waits for the groups the other threads are computing, which every claimed group is, so
the wait always ends (change 19: the VGG chain's 2.4 MB of rows took 100-135 us on one
thread after the product).

:func:`tiles_job` and :func:`backward_job` pack one product's arguments (addresses and
sizes, ``int64``) for a body; they return None, and the caller keeps the Python body,
whenever anything is not in place: a dtype without a body, a kernel without the
expected compiled signature, an epilogue that is not a bias, or a body still compiling
(the first request starts its compile, or its load from the kernel cache, in a
background thread, so no product waits for it).  :func:`tiles_job` may record each
product's fields in a ``memo`` its caller keeps (a chain's state): a later product of
the same kernel and sizes copies them and sets its own arrays' addresses (change 38).
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import threading
import weakref
from typing import Any

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from numba.np.numpy_support import from_dtype

from . import _cache

__all__ = ["SOURCE", "SUM_CHUNK", "MEMO_MAX", "Job", "address_of", "backward_job", "body",
           "call_entry", "fetch_add", "groups_summed", "kernel_address", "load", "pointer_to",
           "source", "tiles_job", "wait_for_bodies"]

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
def call_entry(typingctx, addr, args):
    """Call the compiled function whose C entry point is at ``addr`` with the tuple
    ``args`` (it returns nothing).

    The entry point is the *cfunc wrapper* Numba compiles beside every function: its
    arguments are the LLVM value types of the function's Numba types (arrays as Numba's
    array structure, tuples as structures of those), which are exactly the types of
    ``args``' items when they have the function's Numba types.
    """
    if not isinstance(addr, types.Integer) or not isinstance(args, types.BaseTuple):
        return None

    def codegen(context, builder, signature, llargs):
        items = list(signature.args[1])
        values = [builder.extract_value(llargs[1], i) for i in range(len(items))]
        fnty = ir.FunctionType(context.get_value_type(types.none),
                               [context.get_value_type(t) for t in items])
        builder.call(builder.inttoptr(llargs[0], fnty.as_pointer()), values)
        return context.get_dummy_value()

    return types.void(addr, args), codegen


_TEMPLATE = '''"""debutla: the GIL-free team body for {dtype} tile products (loaded by debutla)."""
import numpy as np
from numba import carray, njit

from debutla.backends._numba_native import call_entry, fetch_add, pointer_to

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
        call_entry(kern, (V, X, Y, k, t, t + 1, a, b, wr, xn))
        if d[{F_BIAS}] != 0:
            m, P = d[{F_M}], d[{F_P}]
            bias = carray(pointer_to(d[{F_BIAS}], DT), m)
            for r in range(t * W, min((t + 1) * W, k)):
                row = Y[r * P:r * P + m]
                for j in range(m):
                    row[j] += bias[j]
'''


_BACKWARD_TEMPLATE = '''"""debutla: the GIL-free team body for {dtype} backward products of
{count}-factor chains (loaded by debutla)."""
import numpy as np
from numba import carray, njit

from debutla.backends._numba_native import call_entry, fetch_add, pointer_to

DT = np.{dtype}


@njit(cache=True, nogil=True, error_model="numpy")
def backward_body(data):
    """One OpenMP team thread's share of a split backward (see _numba_native): groups of
    rows claimed one at a time; each group's value gradients zeroed, then accumulated.
    """
    d = carray(pointer_to(data, np.int64), {nfields})
    slot = fetch_add(d, {B_SLOT}, 1)
    V = carray(pointer_to(d[{B_V}], DT), d[{B_NV}])
    VT = carray(pointer_to(d[{B_VT}], DT), d[{B_NV}])
    X = carray(pointer_to(d[{B_X}], DT), d[{B_NX}])
    G = carray(pointer_to(d[{B_G}], DT), d[{B_NG}])
    GX = carray(pointer_to(d[{B_GX}], DT), d[{B_NGX}])
    ngroups = d[{B_NGROUPS}]
    gvs = carray(pointer_to(d[{B_GVS}], DT), (ngroups, d[{B_NNZ}]))
    bounds = carray(pointer_to(d[{B_BOUNDS}], np.uint64), ngroups + 1)
    asz, gsz = d[{B_ASIZE}], d[{B_GSIZE}]
    at = d[{B_SCRATCH}] + slot * ({count} * asz + 2 * gsz) * {itemsize}
    A = ({acts})
    ga = carray(pointer_to(at + {count} * asz * {itemsize}, DT), gsz)
    gb = carray(pointer_to(at + ({count} * asz + gsz) * {itemsize}, DT), gsz)
    xn, gm, wr = np.uint64(d[{B_XN}]), np.uint64(d[{B_GM}]), np.uint64(d[{B_W}])
    need_x = d[{B_NEEDX}] != 0
    zero = DT(0)
    kern = d[{B_KERNEL}]
    while True:
        g = fetch_add(d, {B_NEXT}, 1)
        if g >= ngroups:
            break
        gvs[g, :] = zero
        call_entry(kern, (V, VT, X, G, GX, gvs, bounds, np.uint64(g), np.uint64(g + 1),
                          xn, gm, need_x, A, ga, gb, wr, zero))
        fetch_add(d, {B_DONE}, 1)
    if d[{B_GV}] == 0:
        return
    # the groups' sum into GV, in group order (the bits of gvs[0] + gvs[1] + ... in
    # NumPy), chunks of columns claimed like the groups, once every group is done: each
    # was claimed by a thread of this team that is computing it
    while fetch_add(d, {B_DONE}, 0) < ngroups:
        pass
    nnz, chunk = d[{B_NNZ}], d[{B_CHUNK}]
    GV = carray(pointer_to(d[{B_GV}], DT), nnz)
    while True:
        j0 = fetch_add(d, {B_SUMNEXT}, 1) * chunk
        if j0 >= nnz:
            break
        j1 = min(nnz, j0 + chunk)
        o = GV[j0:j1]
        a = gvs[0, j0:j1]
        if ngroups == 1:
            for j in range(o.size):
                o[j] = a[j]
            continue
        b = gvs[1, j0:j1]
        for j in range(o.size):
            o[j] = a[j] + b[j]
        for e in range(2, ngroups):
            c = gvs[e, j0:j1]
            for j in range(o.size):
                o[j] += c[j]
'''

#: columns of the groups' sum a backward body's thread claims at a time (16 KB of
#: float32 per group row: the chunk's partial sums stay in L1 across the rows)
SUM_CHUNK = 4096

# the backward job's fields (int64)
(B_KERNEL, B_NEXT, B_NGROUPS, B_SLOT, B_V, B_NV, B_VT, B_X, B_NX, B_G, B_NG, B_GX, B_NGX,
 B_GVS, B_NNZ, B_BOUNDS, B_ASIZE, B_GSIZE, B_XN, B_GM, B_W, B_NEEDX, B_SCRATCH, B_GV,
 B_DONE, B_SUMNEXT, B_CHUNK) = range(27)
NBFIELDS = 27


def source(dtype: str, count: int = 0) -> str:
    """The body module's source for ``dtype`` (one of :data:`DTYPES`): the tile
    products' body, or with ``count`` the backward's for chains of ``count`` factors.
    """
    item = np.dtype(dtype).itemsize
    if not count:
        fields = {k: v for k, v in globals().items() if k.startswith("F_")}
        return _TEMPLATE.format(dtype=dtype, nfields=NFIELDS, itemsize=item, **fields)
    fields = {k: v for k, v in globals().items() if k.startswith("B_")}
    acts = "".join(f"carray(pointer_to(at + {i} * asz * {item}, DT), asz), "
                   for i in range(count))
    return _BACKWARD_TEMPLATE.format(dtype=dtype, count=count, nfields=NBFIELDS,
                                     itemsize=item, acts=acts.rstrip(" "), **fields)


#: the tile products' body modules' sources, by dtype
SOURCE = {dt: source(dt) for dt in DTYPES}

_bodies: dict[tuple, int] = {}  # (dtype name, count) -> the body's address
# (dtype as passed, count) -> the address of a ready body: ``np.dtype(d).name`` is a
# Python property that cost 10-13 us a product right after one (its data out of cache)
_ready: dict[tuple, int] = {}
_failed: set[tuple] = set()
_threads: dict[tuple, threading.Thread] = {}
_lock = threading.Lock()


def load(dtype: str, count: int = 0):
    """The body's dispatcher (``count``: see :func:`source`), from the kernel cache."""
    if not count:
        return _cache.load_module(SOURCE[dtype], f"team_{dtype}").tiles_body
    return _cache.load_module(source(dtype, count), f"team_bw{count}_{dtype}").backward_body


def _load(key: tuple) -> None:
    try:
        disp = load(*key)
        # compiled (or loaded from the cache) here, not at the module's execution: an
        # eager signature compiles before the module is registered, and Numba then
        # cannot load that machine code from the cache in a later process
        disp.compile((types.int64,))
        addr = _entry_point(disp, (types.int64,))
        if addr is None:
            raise RuntimeError("no C entry point for the compiled body")
        _bodies[key] = addr
    except Exception as e:  # never fail a product: the Python body serves it
        _failed.add(key)
        _log.warning("debutla: the GIL-free team body for %s%s failed to compile (%s: %s); "
                     "team products use the Python body", key[0],
                     f" backward products of {key[1]} factors" if key[1] else "",
                     type(e).__name__, e)


def body(dtype: Any, wait: bool = False, count: int = 0) -> int | None:
    """The address of the team body for ``dtype``, or None (not ready, or no body).

    ``count``: the body of the backward products of ``count``-factor chains instead of
    the tile products'.  The first request starts the body's compile (or its load from
    the kernel cache) in a background thread and returns None; ``wait=True`` waits for
    it instead.

    Examples
    --------
    >>> body(np.float32, wait=True) is not None
    True
    >>> body(np.int32) is None
    True
    """
    addr = _ready.get((dtype, count))  # the common call: a ready body, by dtype object
    if addr is not None:
        return addr
    key = (np.dtype(dtype).name, int(count))
    addr = _bodies.get(key)
    if addr is not None:
        _ready[(dtype, count)] = addr
    if addr is not None or key[0] not in SOURCE or key in _failed:
        return addr
    with _lock:
        th = _threads.get(key)
        if th is None:
            th = _threads[key] = threading.Thread(target=_load, args=(key,),
                                                  name="debutla-compile", daemon=True)
            if len(_threads) == 1:
                atexit.register(wait_for_bodies, 60)
            th.start()
    if wait:
        th.join()
    return _bodies.get(key)


def wait_for_bodies(timeout: float | None = None) -> None:
    """Wait for the bodies compiling in background threads."""
    for th in list(_threads.values()):
        th.join(timeout)


# (id(dispatcher), dtype, count) -> (dispatcher, address): a kernel module's dispatcher
# holds one compiled kernel per dtype
_addresses: dict[tuple, tuple] = {}


def _tiles_signature(dt: np.dtype) -> tuple:
    arr = types.Array(from_dtype(dt), 1, "C")
    return (arr, arr, arr, types.int64, types.int64, types.int64, arr, arr, types.uint64,
            types.int64)


def _backward_signature(dt: np.dtype, count: int) -> tuple:
    num = from_dtype(dt)
    arr, u = types.Array(num, 1, "C"), types.uint64
    return (arr, arr, arr, arr, arr, types.Array(num, 2, "C"), types.Array(u, 1, "C"),
            u, u, u, u, types.boolean, types.UniTuple(arr, count), arr, arr, u, num)


def kernel_address(disp, dtype: Any, count: int = 0) -> int | None:
    """The C entry point of ``disp``'s compiled kernel for ``dtype``, or None.

    Only the signature that the body passes: for the tile kernels (``count == 0``)
    C-contiguous writeable aligned 1-D arrays, ``k``, ``t0``, ``t1`` int64, ``wr``
    uint64, ``xn`` int64; for the backward of a ``count``-factor chain the arguments
    of ``run_backward`` (:mod:`._numba_backward`'s ``tiles_placed``).  None until the
    dispatcher has compiled (or loaded) it.
    """
    key = (id(disp), dtype, count)  # not the signature: Numba types cost 4-17 us to make
    hit = _addresses.get(key)
    if hit is not None and hit[0] is disp:
        return hit[1]
    dt = np.dtype(dtype)
    sig = _backward_signature(dt, count) if count else _tiles_signature(dt)
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


_scratch_bufs: dict[Any, np.ndarray] = {}  # by dtype


def _scratch(dtype: np.dtype, size: int, bufs: dict | None = None) -> np.ndarray:
    """Zeroed, aligned scratch of at least ``size`` entries for the threads of a runner.

    ``bufs`` (by dtype) is the runner's: the team's (this module's, the default) or a
    :class:`._numba_pool.SpinPool`'s (``pool.scratch``).  Each runner runs its
    products one at a time (a busy team or pool refuses a second), so its jobs may share
    a buffer; two runners never do.  A larger request replaces the buffer, and a job
    keeps the one it was built with alive.
    """
    if bufs is None:
        bufs = _scratch_bufs
    buf = bufs.get(dtype)
    if buf is None or buf.size < size:
        from .numba_ import aligned_empty  # (here: numba_ imports this module)

        buf = bufs[dtype] = aligned_empty(size, dtype, zero=True)
    return buf


def _aligned(size: int, dt: np.dtype) -> int:
    """``size`` entries rounded up to whole 64-byte lines (each buffer starts on one)."""
    per = 64 // dt.itemsize
    return -(-int(size) // per) * per


def _usable(dt: np.dtype, *arrays: np.ndarray) -> bool:
    return all(a.dtype == dt and a.flags.c_contiguous and a.flags.writeable
               for a in arrays)


def address_of(a: np.ndarray) -> int:
    """The address of ``a``'s first element: ``a.ctypes.data``, in a third of its time
    for a writeable C-contiguous array (no ``ctypes`` helper object; a job packs 5 to 11
    of them, each 2-3 us right after a product that pushed NumPy's Python code out of
    the cache).

    Examples
    --------
    >>> a = np.zeros(4)
    >>> address_of(a) == a.ctypes.data, address_of(a[::2]) == a.ctypes.data
    (True, True)
    """
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))  # type: ignore[arg-type]
    except (TypeError, ValueError, BufferError):  # read-only, empty or not contiguous
        return a.ctypes.data


class Job:
    """One split product packed for a body (see :func:`tiles_job`, :func:`backward_job`).

    ``data`` holds the fields; ``keep`` the arrays whose addresses it holds (alive for
    the job's life); ``body`` the body's address; ``address`` the fields' address.
    """

    __slots__ = ("data", "keep", "body", "address")

    def __init__(self, data: np.ndarray, keep: tuple, body_addr: int) -> None:
        self.data, self.keep, self.body = data, keep, body_addr
        self.address = address_of(data)  # what the body is called with


#: the most products whose jobs one ``memo`` of :func:`tiles_job` records
MEMO_MAX = 64


def tiles_job(disp, V: np.ndarray, X: np.ndarray, Y: np.ndarray, k: int, ntiles: int,
              W: int, xn: int, scratch_size: int, threads: int,
              bias: np.ndarray | None = None, P: int = 0,
              bufs: dict | None = None, memo: dict | None = None) -> Job | None:
    """The job for ``threads`` team threads computing tiles ``0..ntiles`` of a product.

    The arguments are those of the tile kernel ``disp`` (``V`` the values, ``X`` and
    ``Y`` flat, ``k`` rows or columns, ``W`` the tile width, ``xn`` input features) and
    the size of each of its two scratch buffers; ``bias`` (length ``m``) is added to the
    first ``m`` of each output row of ``P`` entries; ``bufs`` holds the runner's
    scratch (see :func:`_scratch`: None for the OpenMP team).  None when the body cannot
    run it (see the module docstring); the caller then runs its Python body.

    ``memo`` (a dict the caller keeps, e.g. per chain state) records each product's job
    (by kernel, sizes, thread count, runner and whether a bias is added; at most
    :data:`MEMO_MAX` of them): a later product of the same kernel, values array, sizes
    and runner, whose runner still has the same scratch buffer, gets a copy of the
    recorded fields with the addresses of its own ``X``, ``Y`` and ``bias`` set, in
    about half the time of packing them (change 38).  The same fields, so the same
    bits.
    """
    dt = V.dtype
    if memo is not None:
        key = (id(disp), k, ntiles, W, xn, threads, None if bias is None else bias.size,
               id(bufs), P, scratch_size)
        rec = memo.get(key)
        scr = (_scratch_bufs if bufs is None else bufs).get(dt)
        if (rec is not None and rec[0] is disp and rec[1] is V and scr is not None
                and scr is rec[2]() and _usable(dt, X, Y, *(() if bias is None else (bias,)))):
            data = rec[3].copy()
            data[F_X], data[F_NX] = address_of(X), X.size
            data[F_Y], data[F_NY] = address_of(Y), Y.size
            if bias is not None:
                data[F_BIAS] = address_of(bias)
            return Job(data, (V, X, Y, scr, bias), rec[4])
    addr = body(dt)
    if addr is None or not _usable(dt, V, X, Y, *(() if bias is None else (bias,))):
        return None
    kern = kernel_address(disp, dt)
    if kern is None:
        return None
    stride = _aligned(scratch_size, dt)
    scr = _scratch(dt, 2 * stride * threads, bufs)
    f = [0] * NFIELDS  # filled as a list, then one array (an item set each: 10-15 us)
    f[F_KERNEL], f[F_NTILES] = kern, ntiles
    f[F_V], f[F_NV] = address_of(V), V.size
    f[F_X], f[F_NX] = address_of(X), X.size
    f[F_Y], f[F_NY] = address_of(Y), Y.size
    f[F_K], f[F_W], f[F_XN] = k, W, xn
    f[F_SCRATCH], f[F_STRIDE] = address_of(scr), stride
    if bias is not None:
        f[F_BIAS], f[F_M], f[F_P] = address_of(bias), bias.size, P
    job = Job(np.array(f, np.int64), (V, X, Y, scr, bias), addr)
    if memo is not None and (key in memo or len(memo) < MEMO_MAX):
        # not X, Y or the bias, and the scratch weakly: a record keeps no caller's array
        # alive, nor a scratch buffer that its runner replaced with a larger one
        memo[key] = (disp, V, weakref.ref(scr), job.data.copy(), addr)
    return job


def backward_job(disp, V: np.ndarray, VT: np.ndarray, X: np.ndarray, G: np.ndarray,
                 GX: np.ndarray, gvs: np.ndarray, bounds: np.ndarray, xn: int, gm: int,
                 need_x: bool, W: int, count: int, acts_size: int, grads_size: int,
                 threads: int, gv: np.ndarray | None = None,
                 bufs: dict | None = None) -> Job | None:
    """The job for ``threads`` team threads computing every group of a backward.

    The arguments are those of the generated backward kernel ``disp`` (see
    :func:`debutla.backends.numba_.run_backward`: ``gvs`` holds a row per group of
    ``bounds``, zeroed by the body before the group is computed) and the sizes of its
    scratch (:func:`debutla.backends._numba_backward.scratch_sizes`).  With ``gv`` (a
    row of ``gvs``' length) the body also writes the sum of the groups' rows there, in
    group order, once every group is done (:func:`groups_summed` says whether it did).
    ``bufs``: the runner's scratch, as in :func:`tiles_job`.  None when the body cannot
    run it; the caller then runs its Python body.
    """
    dt = V.dtype
    addr = body(dt, count=count)
    if addr is None or not _usable(dt, V, VT, X, G, GX, gvs) or gvs.ndim != 2:
        return None
    if gv is not None and (not _usable(dt, gv) or gv.shape != gvs.shape[1:]):
        return None
    kern = kernel_address(disp, dt, count)
    if kern is None or bounds.dtype != np.uint64 or not bounds.flags.c_contiguous:
        return None
    asz, gsz = _aligned(acts_size, dt), _aligned(grads_size, dt)
    scr = _scratch(dt, (count * asz + 2 * gsz) * threads, bufs)
    f = [0] * NBFIELDS  # a list, then one array (as in tiles_job)
    f[B_KERNEL], f[B_NGROUPS] = kern, gvs.shape[0]
    f[B_V], f[B_NV], f[B_VT] = address_of(V), V.size, address_of(VT)
    f[B_X], f[B_NX] = address_of(X), X.size
    f[B_G], f[B_NG] = address_of(G), G.size
    f[B_GX], f[B_NGX] = address_of(GX), GX.size
    f[B_GVS], f[B_NNZ] = address_of(gvs), gvs.shape[1]
    f[B_BOUNDS] = address_of(bounds)
    f[B_ASIZE], f[B_GSIZE] = asz, gsz
    f[B_XN], f[B_GM], f[B_W], f[B_NEEDX] = xn, gm, W, int(bool(need_x))
    f[B_SCRATCH] = address_of(scr)
    if gv is not None:
        f[B_GV], f[B_CHUNK] = address_of(gv), SUM_CHUNK
    return Job(np.array(f, np.int64), (V, VT, X, G, GX, gvs, bounds, scr, gv), addr)


def groups_summed(job: Job) -> bool:
    """Whether the body ran ``job`` (a :func:`backward_job` given ``gv``) to the end,
    the groups' sum included (a busy team may have refused it: its Python body ran).
    """
    d = job.data
    return bool(d[B_GV]) and int(d[B_SUMNEXT]) > 0 and int(d[B_DONE]) == int(d[B_NGROUPS])
