"""The DeBut product as a differentiable torch operation.

Two implementations compute the same thing, ``Y = X @ D.T`` for ``X`` of shape
``(batch, n)`` and ``D`` the ``m x n`` DeBut product of a chain's factors:

``"numba"``  (CPU tensors, float32/float64)
    The forward product runs debutla's fused whole-chain Numba kernel on the tensors'
    memory (``Tensor.numpy()`` views: the input is read in place and the result is written
    straight into a torch tensor).  See :func:`_cpu_operator` for the one place where the
    operator is built.
``"cuda"``  (CUDA tensors, float16/bfloat16/float32/float64, with CuPy installed)
    The forward product (and the input gradient of a frozen layer) runs debutla's
    chain-specialised CUDA kernel (:mod:`debutla.backends._cuda_chain`) on the tensors'
    memory, on torch's current stream.  float16 and bfloat16 are storage types: the
    kernel reads and writes 16-bit values and accumulates in float32.  The value
    gradients run the ``"torch"`` path.  ``"auto"`` picks it for CUDA tensors when CuPy
    imports.
``"torch"``  (any device and floating dtype)
    One batched product per factor with torch operations, in the features-major layout
    ``(features, batch)``: a factor with ``t = 1`` is one ``bmm`` over its ``nb`` blocks,
    a factor with ``t > 1`` is ``s`` fused multiply-adds over contiguous ``(t, batch)``
    panels.  Used for CUDA tensors, dtypes the kernels do not serve, and on request.

Backward
--------
The value gradient of factor ``i`` needs its input ``X_i`` and the gradient ``G_i`` of its
output: ``dV_i[b, i, j, k] = sum_batch G_i[b, i, k] X_i[b, j, k]``, and
``G_{i-1} = R_i^T G_i``.  The backward therefore walks the chain factor by factor from
the output gradient down to the input gradient: on the CPU in one fused kernel per tile of
rows (the chain's generated backward, :mod:`debutla.backends._numba_backward`, for chains
of at least ``debutla.backends.numba_.BACKWARD_MIN_NNZ`` values once it is compiled; the
run-time-sized kernel of :mod:`debutla.torch._kernels` otherwise), with torch operations
(features-major) in the ``"torch"`` implementation.  The
intermediate ``X_i`` are **recomputed** from the saved input at the start of the backward
(one extra forward, factor by factor) rather than kept from the forward: see
``docs/torch.rst`` for the measurement behind this choice.  Memory held between forward
and backward is therefore the input only (``batch x n`` values) plus the factor values;
during the backward the intermediates (``batch x sum q_i`` values) live transiently.
When no factor value needs a gradient (frozen layer) the input gradient is one fused
adjoint product ``G @ D`` on the CPU.

torch.compile
-------------
The product is registered as the custom operator ``debutla::debut_mm`` with
:mod:`torch.library` (fake/meta implementation and autograd formula), so graphs holding
DeBut layers compile; on torch versions without ``torch.library.custom_op`` the plain
:class:`torch.autograd.Function` is used (compile then breaks the graph around it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from .. import _config
from ..chain import Chain
from ..backends import get_backend
from ..backends import numba_ as _nbk
from ..operator import DeBut
from ._kernels import col_sums, fused_backward
from ._openmp import torch_team

__all__ = ["debut_mm", "parse_chain", "IMPLS", "factor_forward", "chain_forward_cols",
           "factor_backward", "clear_cache", "backward_mode", "packed_values"]

IMPLS = ("auto", "numba", "torch", "cuda")
_NUMBA_DTYPES = (torch.float32, torch.float64)
#: dtypes of the CUDA kernel, and the storage each one is
_CUDA_STORAGE = {torch.float16: "float16", torch.bfloat16: "bfloat16",
                 torch.float32: "float32", torch.float64: "float64"}
_NUMBA = get_backend("numba")


@lru_cache(maxsize=512)
def parse_chain(text: str) -> Chain:
    """The :class:`~debutla.Chain` of a chain string (cached: parsed once per process)."""
    return Chain.parse(text)


@lru_cache(maxsize=512)
def _chain_text(chain: Chain) -> str:
    """``chain.format()``, cached (chains are immutable and hashable)."""
    return chain.format()


# ---------------------------------------------------------------------------------------
# CPU fused path: the one function to swap for a zero-copy core hook
# ---------------------------------------------------------------------------------------

_OP_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()
_OP_CACHE_SIZE = 16
_OP_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget the cached CPU operators (see :func:`_cpu_operator`, :func:`_live_operator`)."""
    with _OP_LOCK:
        _OP_CACHE.clear()
        _LIVE_CACHE.clear()


def _cpu_operator(values: Sequence[torch.Tensor], chain: Chain, shape: tuple[int, int],
                  transpose: bool = False) -> DeBut:
    """A :class:`~debutla.DeBut` operator holding ``values`` (CPU tensors), or its transpose.

    This is the only place the torch layer builds core operators.  The operator keeps
    the snapshot below without a further copy (``DeBut(copy=False)``: the snapshot is
    private to the cache entry and never written); the kernel state is still prepared
    on first use (about 0.1 ms for the VGG chain).  Meanwhile the
    last few operators are cached for inference: an entry is found by the tensors'
    addresses and reused only if its snapshot of the values is exactly equal to the
    current values, byte for byte (:func:`_same_bytes`, a read of the values, much
    cheaper than a rebuild; not ``torch.equal``, which runs an OpenMP parallel region
    whose spinning threads then hold the cores the product's threads need, see
    ``docs/torch.rst``),
    so no write to the values can be missed, whatever path it takes.
    """
    key = (chain, shape, transpose, values[0].dtype, tuple(v.data_ptr() for v in values))
    with _OP_LOCK:
        hit = _OP_CACHE.get(key)
    if hit is not None and all(_same_bytes(a, b) for a, b in zip(hit[1], values)):
        with _OP_LOCK:
            if key in _OP_CACHE:
                _OP_CACHE.move_to_end(key)
        return hit[0]
    snap = tuple(v.detach().clone() for v in values)
    # the "numba" implementation runs on Numba from the first call (debutla.torch imports
    # it anyway): never on the NumPy backend that serves a process's first products
    # while Numba loads, so outputs are the same bits in every process
    op = DeBut(chain, [v.numpy() for v in snap], shape=shape, backend="numba", copy=False)
    op = op.T if transpose else op
    with _OP_LOCK:
        _OP_CACHE[key] = (op, snap)
        while len(_OP_CACHE) > _OP_CACHE_SIZE:
            _OP_CACHE.popitem(last=False)
    return op


_LIVE_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()


def packed_values(values: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The 1-D tensor over ``values`` when they lie back to back, in order, in one CPU
    storage (the layers' packed parameters, :meth:`DeButLinear._pack`), else None.

    Examples
    --------
    >>> buf = torch.arange(6.0)
    >>> packed_values([buf[:2], buf[2:].view(2, 2)])
    tensor([0., 1., 2., 3., 4., 5.])
    >>> packed_values([buf[2:], buf[:2]]) is None
    True
    """
    v0 = values[0]
    if v0.device.type != "cpu":
        return None
    st = v0.untyped_storage()
    at = v0.storage_offset()
    start = at
    for v in values:
        if (v.dtype != v0.dtype or not v.is_contiguous()
                or v.untyped_storage().data_ptr() != st.data_ptr() or v.storage_offset() != at):
            return None
        at += v.numel()
    return torch.empty(0, dtype=v0.dtype).set_(st, start, (at - start,), (1,))


def _live_operator(values: Sequence[torch.Tensor], chain: Chain,
                   shape: tuple[int, int]) -> DeBut | None:
    """An operator that reads ``values`` where they are (no snapshot, no check of their
    bytes), or None.

    Only for packed values (:func:`packed_values`), and only for products of at least
    3 rows: the kernels of those read the values themselves, so each product sees the
    values as they are when it runs, whatever wrote them; the state makes everything
    else from the values again at each use (``numba_.prepare(flat=...)``).  The check
    of :func:`_cpu_operator` reads the values and their snapshot, about 40 us for the
    VGG chain right after a product (0.3 MB each, out of cache), 7% of the layer's
    two-thread inference at batch 256 and a third of it at batch 16
    (``benchmarks/README_kernels.md``, change 18).

    An entry's operator holds NumPy views of the buffer, so the buffer's memory stays
    allocated to it: values whose addresses, shapes, dtype and contiguity are the ones
    recorded lie where the operator reads, in the same layout.  That check serves a hit
    (no :func:`packed_values`, whose storage objects and view cost 20-40 us a call right
    after a product).
    """
    v0 = values[0]
    key = (chain, shape, v0.dtype, v0.data_ptr(), len(values))
    with _OP_LOCK:
        hit = _LIVE_CACHE.get(key)
        if hit is not None:
            _LIVE_CACHE.move_to_end(key)
    if hit is not None and v0.device.type == "cpu":
        dt = v0.dtype
        if all(v.data_ptr() == p and v.shape == sh and v.dtype == dt and v.is_contiguous()
               for v, (p, sh) in zip(values, hit[1])):
            return hit[0]
    flat = packed_values(values)
    if flat is None:
        return None
    arr = flat.numpy()
    views = tuple(v.detach().numpy() for v in values)  # views of arr (prepare checks)
    op = DeBut(chain, list(views), shape=shape, backend="numba", copy=False)
    op._states[(_NUMBA.name, arr.dtype)] = _nbk.prepare(views, flat=arr)
    layout = tuple((v.data_ptr(), v.shape) for v in values)
    with _OP_LOCK:
        _LIVE_CACHE[key] = (op, layout)
        while len(_LIVE_CACHE) > _OP_CACHE_SIZE:
            _LIVE_CACHE.popitem(last=False)
    return op


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two CPU tensors of one dtype and shape hold the same bytes.

    ``memcmp`` on contiguous memory (about 3x faster than ``numpy.array_equal`` on the
    VGG chain's 75,776 values, and no temporary); NumPy otherwise.  Bytes, not values:
    ``-0.0`` differs from ``0.0`` (a rebuild, harmless) and a NaN equals itself (so
    values holding NaNs still reuse the cached operator).

    Examples
    --------
    >>> z = torch.zeros(3)
    >>> _same_bytes(z, torch.zeros(3)), _same_bytes(z, -z), _same_bytes(z, torch.zeros(4))
    (True, False, False)
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    f = _nbk.memcmp()
    if f is not None and a.is_contiguous() and b.is_contiguous():
        nbytes = a.numel() * a.element_size()
        return nbytes == 0 or f(a.data_ptr(), b.data_ptr(), nbytes) == 0
    def raw(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().numpy()).reshape(-1).view(np.uint8)
    return bool(np.array_equal(raw(a), raw(b)))


def _cpu_settings() -> dict:
    """The settings the layers' CPU products run under: :func:`_num_threads` threads, on
    torch's own OpenMP threads where they can be used (``pool="openmp"``, see
    :mod:`debutla.backends._omp_team`: after a parallel torch operation they spin on the
    cores a split product needs; change 14 of ``benchmarks/README_kernels.md``), and
    without spinning workers of debutla's own pool unless the user asked for them
    (``debutla.config(spin=True)``): next to torch's OpenMP threads, spinning made the
    layers' two-thread products about 20 % slower (change 12).
    """
    spin, pool = _config.get("spin"), _config.get("pool")
    threads = _num_threads()
    if pool != "debutla":  # None or "openmp": torch's threads where they can be used
        pool = "openmp" if threads > 1 and torch_team() is not None else "debutla"
    return {"threads": threads, "spin": False if spin is None else spin, "pool": pool}


def _num_threads() -> int:
    """Threads of the CPU kernels behind the torch layers.

    debutla's setting when one is given (``debutla.config(threads=n)`` around the call,
    ``debutla._config.set_defaults(threads=n)`` or ``DEBUTLA_NUM_THREADS``), else torch's
    intra-op thread count (``torch.get_num_threads()``, i.e. ``torch.set_num_threads``),
    so a torch program sets its threads in one place.  Results do not depend on it.
    """
    n = _config.get("threads")
    return max(1, int(n) if n is not None else torch.get_num_threads())


def _numba_rows(x: torch.Tensor, values: Sequence[torch.Tensor], chain: Chain,
                shape: tuple[int, int], transpose: bool = False,
                bias: torch.Tensor | None = None, op: DeBut | None = None) -> torch.Tensor:
    """``x @ D.T (+ bias)`` (or ``x @ D`` with ``transpose``) by the fused CPU kernel.

    No copies; the bias is added in place with NumPy (no torch OpenMP region: see
    :func:`_col_sums`): in a product large enough to be split over threads, by each
    thread to the rows it just computed (:class:`debutla.backends.numba_.RowsEpilogue`),
    else after the product.  ``op``: the operator of ``values`` (``D``, not its
    transpose) when the caller holds it (:func:`_forward`'s ``ctx``), else the cached one.
    """
    if op is None:
        op = _cpu_operator(values, chain, shape, transpose)
    elif transpose:
        op = op.T
    x = x.detach()
    if not x.is_contiguous():
        x = x.contiguous()
    out = torch.empty((x.shape[0], op.shape[0]), dtype=x.dtype)
    y = out.numpy()
    xn = x.numpy()
    product = op.matmat_rows
    if op.shape == chain.shape and x.shape[0]:
        # the operator's numba state, straight to the backend: this function has done
        # the operator's checks (its layers cost 15-20 us a product right after another)
        st = op._states.get((_NUMBA.name, xn.dtype))
        if st is not None and op._adjoint_of is None:
            def product(xn: np.ndarray, out: np.ndarray) -> None:
                _nbk.apply_rows(st, xn, out)
    settings = _cpu_settings()
    b = None if bias is None else bias.detach().numpy()
    if b is not None and _nbk.may_split(x.shape[0] * _nnz(chain), settings["threads"]):
        # a split product: each thread adds the bias to the rows it computed (an
        # epilogue costs about 2 us a call, more than it saves on one thread)
        # (a padded chain's parts have more columns: its outputs first)
        ep = _nbk.RowsEpilogue.adding(b)
        with _config.override(settings), _nbk.rows_epilogue(ep):
            product(xn, out=y)
        if ep.applied:
            return out
    else:
        with _config.override(settings):
            product(xn, out=y)
    if b is not None:  # one pass after the product (no epilogue ran)
        np.add(y, b, out=y)
    return out


@lru_cache(maxsize=64)
def _single_in_place(chain: Chain) -> bool:
    """Whether the one-row kernel reads ``chain``'s values as they lie packed, so that
    inference on one or two rows may read a layer's values in place
    (:func:`debutla.backends.numba_.single_reads_flat`): a butterfly 4096 layer at
    batch 1 took 93-106 us on the checked snapshot, 39-40 us in place.
    """
    return _nbk.single_reads_flat([f.value_shape for f in chain])


@lru_cache(maxsize=64)
def _nnz(chain: Chain) -> int:
    """``chain.nnz``, made once per chain (a sum over the factors at each access)."""
    return chain.nnz


#: Rows summed in the working dtype before the block sums are added in float64.
_COLSUM_BLOCK = 128


def _col_sums(g: np.ndarray) -> np.ndarray:
    """The column sums of a C-contiguous ``(rows, m)`` array, in its dtype (bias gradient).

    Not ``torch.sum``: it would run an OpenMP parallel region whose threads keep spinning
    for milliseconds afterwards on the cores the product's own threads need
    (``docs/torch.rst``).  Blocks of :data:`_COLSUM_BLOCK` rows are summed in the array's
    dtype and the block sums in float64 (complex128 for complex), so the rounding error
    grows with the block length, not with the number of rows.  One compiled pass
    (:func:`debutla.torch._kernels.col_sums`).

    Examples
    --------
    >>> _col_sums(np.ones((300, 2), np.float32))
    array([300., 300.], dtype=float32)
    """
    return col_sums(g, _COLSUM_BLOCK, (np.complex128 if g.dtype.kind == "c" else np.float64)(0))


def _use_numba(x: torch.Tensor, impl: str) -> bool:
    if impl == "torch":
        return False
    ok = x.device.type == "cpu" and x.dtype in _NUMBA_DTYPES
    if impl == "numba" and not ok:
        raise TypeError(f"debut_mm: impl='numba' needs float32/float64 CPU tensors, got "
                        f"{x.dtype} on {x.device}")
    return ok


@lru_cache(maxsize=1)
def _cupy_backend():
    """Debutla's CuPy backend module, or None where CuPy is missing or has no device."""
    try:
        from ..backends import cupy_
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # ImportError, or CUDA errors of a machine without a driver
        return None
    return cupy_


def _use_cuda(x: torch.Tensor, impl: str) -> bool:
    if impl not in ("auto", "cuda"):
        return False
    ok = x.device.type == "cuda" and x.dtype in _CUDA_STORAGE
    if impl == "cuda":
        if not ok:
            raise TypeError(f"debut_mm: impl='cuda' needs CUDA tensors of dtype float16, "
                            f"bfloat16, float32 or float64, got {x.dtype} on {x.device}")
        if _cupy_backend() is None:
            raise RuntimeError("debut_mm: impl='cuda' needs CuPy with a usable GPU "
                               "(pip install 'debutla[cuda12]' or 'debutla[cuda13]')")
        return True
    return ok and _cupy_backend() is not None


def _cupy_view(t: torch.Tensor):
    """The bytes of a contiguous CUDA tensor as a CuPy ``uint8`` array (no copy; the
    kernels take it as a pointer of their own type).
    """
    import cupy
    nbytes = t.numel() * t.element_size()
    mem = cupy.cuda.UnownedMemory(t.data_ptr(), nbytes, t, t.device.index)
    return cupy.ndarray((nbytes,), cupy.uint8, cupy.cuda.MemoryPointer(mem, 0))


_STREAMS: dict = {}


def _cupy_stream(device: torch.device):
    """The current torch stream on ``device`` as a CuPy stream (one wrapper per stream)."""
    ptr = torch.cuda.current_stream(device).cuda_stream
    key = (ptr, device.index)
    st = _STREAMS.get(key)
    if st is None:
        import warnings

        import cupy
        with warnings.catch_warnings():
            # CuPy 14 deprecates ExternalStream for Stream.from_external; it is the one
            # spelling that works from CuPy 12 on, and is created once per stream here
            warnings.simplefilter("ignore", DeprecationWarning)
            st = cupy.cuda.ExternalStream(ptr, device.index)
        if len(_STREAMS) > 64:
            _STREAMS.clear()
        _STREAMS[key] = st
    return st


def _cuda_rows(x: torch.Tensor, values: Sequence[torch.Tensor], chain: Chain,
               shape: tuple[int, int], transpose: bool = False) -> torch.Tensor | None:
    """``x @ D.T`` (or ``x @ D`` with ``transpose``) with the chain-specialised CUDA
    kernel; None where a row does not fit the kernel's shared memory.
    """
    import cupy

    from ..backends._cuda_chain import KERNEL_ORDER
    cupy_ = _cupy_backend()
    m, n = shape
    if transpose:  # D^T: the transposed chain, on the transposed values
        specs = [sp.value_shape for sp in chain.T]
        vals = [v.detach().transpose(1, 2) for v in reversed(values)]
        n_in, m_out = m, n
    else:
        specs = [sp.value_shape for sp in chain]
        vals = [v.detach() for v in values]
        n_in, m_out = n, m
    parts = [v.permute(KERNEL_ORDER).reshape(-1) for v in vals]
    x = x.contiguous()
    k = x.shape[0]
    with cupy.cuda.Device(x.device.index):
        plan = cupy_.choose_plan(specs, n_in, m_out, k, _CUDA_STORAGE[x.dtype])
        if plan is None:
            return None
        kv = torch.cat(parts).to(x.dtype)
        y = torch.empty((k, m_out), dtype=x.dtype, device=x.device)
        with _cupy_stream(x.device):
            cupy_.launch(plan, _cupy_view(x), _cupy_view(y), _cupy_view(kv), k)
    return y


# ---------------------------------------------------------------------------------------
# torch path: one factor at a time, features-major (features, batch)
# ---------------------------------------------------------------------------------------

def factor_forward(xc: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One factor ``R x`` in the features-major layout.

    Parameters
    ----------
    xc : Tensor (q, batch)
    v : Tensor (nb, r, s, t)
        Canonical values.

    Returns
    -------
    Tensor (p, batch)
    """
    nb, r, s, t = v.shape
    k = xc.shape[-1]
    if t == 1:
        return torch.bmm(v[..., 0], xc.reshape(nb, s, k)).reshape(nb * r, k)
    x = xc.reshape(nb, 1, s, t, k)
    vv = v.unsqueeze(-1)  # (nb, r, s, t, 1)
    y = vv[:, :, 0] * x[:, :, 0]
    for j in range(1, s):
        y.addcmul_(vv[:, :, j], x[:, :, j])
    return y.reshape(nb * r * t, k)


def factor_backward(g: torch.Tensor, xc: torch.Tensor | None, v: torch.Tensor,
                    need_x: bool, need_v: bool):
    """Gradients of one factor, features-major.

    Parameters
    ----------
    g : Tensor (p, batch)
        Gradient of the factor's output.
    xc : Tensor (q, batch) or None
        The factor's input (needed for ``need_v``).
    v : Tensor (nb, r, s, t)

    Returns
    -------
    (gx, gv) : Tensor (q, batch) or None, Tensor (nb, r, s, t) or None
    """
    nb, r, s, t = v.shape
    k = g.shape[-1]
    gx = gv = None
    if need_x:
        gx = factor_forward(g, v.transpose(1, 2))
    if need_v:
        if xc is None:
            raise RuntimeError("internal: factor_backward needs the factor's input for need_v")
        if t == 1:
            gv = torch.bmm(g.reshape(nb, r, k), xc.reshape(nb, s, k).transpose(1, 2))
            gv = gv.unsqueeze(-1)
        else:  # one batched product over the nb * t (block, tau) pairs
            gg = g.reshape(nb, r, t, k).transpose(1, 2).reshape(nb * t, r, k)
            xx = xc.reshape(nb, s, t, k).transpose(1, 2).reshape(nb * t, s, k)
            gv = torch.bmm(gg, xx.transpose(1, 2)).reshape(nb, t, r, s)
            gv = gv.permute(0, 2, 3, 1).contiguous()
    return gx, gv


def _to_cols(x: torch.Tensor, Q: int) -> torch.Tensor:
    """``(batch, n)`` rows to the zero-padded features-major ``(Q, batch)`` layout."""
    B, n = x.shape
    if n == Q:
        return x.t().contiguous()
    xc = x.new_zeros((Q, B))
    xc[:n] = x.t()
    return xc


def chain_forward_cols(xc: torch.Tensor, values: Sequence[torch.Tensor],
                       keep: bool = False):
    """Apply every factor to ``xc`` (Q, batch); with ``keep`` also return each factor's input."""
    inputs = []
    cur = xc
    for v in values:
        if keep:
            inputs.append(cur)
        cur = factor_forward(cur, v)
    return (cur, inputs) if keep else cur


def _torch_rows(x: torch.Tensor, values: Sequence[torch.Tensor], chain: Chain,
                shape: tuple[int, int]) -> torch.Tensor:
    m, _ = shape
    y = chain_forward_cols(_to_cols(x, chain.shape[1]), values)
    return y[:m].t().contiguous()


def _forward(x, values, chain, shape, impl, bias=None, ctx=None):
    """``x @ D.T (+ bias)``.  With ``ctx`` (:class:`_DeButMM`'s context: the values are
    its inputs from index 6), the CPU operator used is kept as ``ctx.cpu_op`` for the
    backward (:func:`_backward`'s ``op``), which then skips the cache's check of the
    values (about 0.08 ms for the VGG layer) and differentiates exactly the product the
    forward computed (an autograd-visible in-place write to the values in between makes
    autograd refuse the backward anyway).  Packed values (:func:`packed_values`) are
    read in place (:func:`_live_operator`) by products of 3 rows or more, unless the
    backward will need the values' adjoint only (frozen values), and in inference by
    products of one or two rows too where the one-row kernel reads the values as they
    lie (:func:`_single_in_place`).
    """
    if x.shape[0] == 0:
        y = x.new_zeros((0, shape[0]))
        return y if bias is None else y + bias
    if _use_cuda(x, impl):
        y = _cuda_rows(x, values, chain, shape)
        if y is not None:
            return y if bias is None else y.add_(bias)
    if _use_numba(x, impl):
        op = None
        # the tile kernels (3 rows or more), not for a backward of frozen values (its
        # adjoint products would make the adjoint's state at every call); one or two
        # rows in inference where the one-row kernel reads the values as they lie
        if ((x.shape[0] > _nbk._ROWS_SINGLE_MAX or (ctx is None and _single_in_place(chain)))
                and (ctx is None or any(ctx.needs_input_grad[6:]))):
            op = _live_operator(values, chain, shape)
        if op is None:
            op = _cpu_operator(values, chain, shape)
        if ctx is not None:
            ctx.cpu_op = op
        return _numba_rows(x, values, chain, shape, bias=bias, op=op)
    y = _torch_rows(x, values, chain, shape)
    return y if bias is None else y.add_(bias)


def _bias_grad(grad: torch.Tensor, impl: str) -> torch.Tensor:
    """``dL/db`` of ``Y = X @ D.T + b``: the column sums of ``grad``."""
    if grad.shape[0] > 0 and _use_numba(grad, impl):
        return torch.from_numpy(_col_sums(grad.detach().contiguous().numpy()))
    return grad.sum(0)


def _backward(grad, x, values, chain, shape, impl, need_x: bool, need_v: bool,
              op: DeBut | None = None):
    """Input and value gradients of ``Y = X @ D.T`` given ``grad = dL/dY``.

    ``op``: the CPU operator of the forward (``ctx.cpu_op``, see :func:`_forward`), or
    None to take the cached one.
    """
    m, n = shape
    P, Q = chain.shape
    gx = None
    gvs: list = [None] * len(values)
    if not (need_x or need_v):
        return gx, gvs
    if x.shape[0] == 0:
        return (torch.zeros_like(x) if need_x else None,
                [torch.zeros_like(v) for v in values] if need_v else gvs)
    if not need_v:  # frozen values: one adjoint product
        if _use_cuda(grad, impl):
            gx = _cuda_rows(grad, values, chain, shape, transpose=True)
            if gx is not None:
                return gx, gvs
        if _use_numba(grad, impl):
            return _numba_rows(grad, values, chain, shape, transpose=True, op=op), gvs
        g = _to_cols(grad, P)
        for v in reversed(values):
            g, _ = factor_backward(g, None, v, True, False)
        return g[:n].t().contiguous(), gvs
    if _use_numba(grad, impl):  # fused per-tile recompute + walk back (_kernels)
        xn = x.detach().numpy()
        if op is None:
            op = _cpu_operator(values, chain, shape)
        state = op._state(_NUMBA, xn.dtype)
        cpu = _cpu_settings()
        with _config.override({"spin": cpu["spin"], "pool": cpu["pool"]}):
            gxn, gvn = fused_backward(xn, grad.detach().numpy(), None, None, n, m, need_x,
                                      threads=cpu["threads"], state=state)
        return (torch.from_numpy(gxn) if need_x else None), [torch.from_numpy(g) for g in gvn]
    # recompute the factors' inputs, then walk back
    with torch.no_grad():
        _, inputs = chain_forward_cols(_to_cols(x, Q), values, keep=True)
        g = _to_cols(grad, P)
        last = len(values) - 1
        for i in range(last, -1, -1):
            g_in, gv = factor_backward(g, inputs[i], values[i], need_x or i > 0, True)
            gvs[i] = gv
            g = g_in
    if need_x:
        gx = g[:n].t().contiguous()
    return gx, gvs


# ---------------------------------------------------------------------------------------
# registration: torch.library custom op (compile) or a plain autograd.Function
# ---------------------------------------------------------------------------------------

class _DeButMM(torch.autograd.Function):
    """The autograd function of plain eager calls (:func:`_plain_eager`), and of every
    call where torch has no ``torch.library.custom_op``.
    """

    @staticmethod
    def forward(ctx, x, chain_text, m, n, impl, bias, *values):
        chain = parse_chain(chain_text)
        ctx.save_for_backward(x, *values)
        ctx.meta = (chain_text, m, n, impl)
        ctx.cpu_op = None
        return _forward(x, values, chain, (m, n), impl, bias, ctx=ctx)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # a second derivative raises instead of being wrong
        x, *values = ctx.saved_tensors
        chain_text, m, n, impl = ctx.meta
        need_x = ctx.needs_input_grad[0]
        need_v = any(ctx.needs_input_grad[6:])
        grad = grad.contiguous()
        gx, gvs = _backward(grad, x, values, parse_chain(chain_text), (m, n), impl, need_x,
                            need_v, op=ctx.cpu_op)
        gb = _bias_grad(grad, impl) if ctx.needs_input_grad[5] else None
        return (gx, None, None, None, None, gb, *gvs)


class _DeButMMKeep(torch.autograd.Function):
    """Keep-the-intermediates variant (eager only; see :func:`backward_mode`)."""

    @staticmethod
    def forward(ctx, x, chain_text, m, n, *values):
        chain = parse_chain(chain_text)
        with torch.no_grad():
            y, inputs = chain_forward_cols(_to_cols(x, chain.shape[1]), values, keep=True)
        ctx.save_for_backward(*inputs, *values)
        ctx.meta = (chain_text, m, n, len(inputs))
        return y[:m].t().contiguous()

    @staticmethod
    def backward(ctx, grad):
        chain_text, m, n, k = ctx.meta
        saved = ctx.saved_tensors
        inputs, values = saved[:k], saved[k:]
        need_x = ctx.needs_input_grad[0]
        g = _to_cols(grad.contiguous(), parse_chain(chain_text).shape[0])
        gvs = [None] * len(values)
        for i in range(len(values) - 1, -1, -1):
            g, gvs[i] = factor_backward(g, inputs[i], values[i], need_x or i > 0, True)
        gx = g[:n].t().contiguous() if need_x else None
        return (gx, None, None, None, *gvs)


_BACKWARD = {"mode": "recompute"}


class backward_mode:
    """Context manager choosing how the backward gets each factor's input (benchmarks).

    ``"recompute"`` (default): only the layer input is saved; the backward recomputes the
    intermediates (fused per tile on the CPU).  ``"keep"``: the forward runs factor by
    factor with torch operations and keeps every intermediate (``batch x sum q_i``
    values) for the backward; eager mode only.

    Examples
    --------
    >>> from debutla.torch._ops import backward_mode
    >>> with backward_mode("keep"):
    ...     pass
    """

    def __init__(self, mode: str) -> None:
        if mode not in ("recompute", "keep"):
            raise ValueError(f"backward_mode: mode must be 'recompute' or 'keep', got {mode!r}")
        self.mode = mode

    def __enter__(self):
        self.prev = _BACKWARD["mode"]
        _BACKWARD["mode"] = self.mode
        return self

    def __exit__(self, *exc):
        _BACKWARD["mode"] = self.prev


_HAS_CUSTOM_OP = hasattr(torch.library, "custom_op") and hasattr(torch.library,
                                                                 "register_fake")

if _HAS_CUSTOM_OP:
    @torch.library.custom_op("debutla::debut_mm", mutates_args=())
    def _debut_mm_op(x: torch.Tensor, values: list[torch.Tensor], chain: str, m: int,
                     n: int, impl: str, bias: torch.Tensor | None) -> torch.Tensor:
        return _forward(x, values, parse_chain(chain), (m, n), impl, bias)

    @_debut_mm_op.register_fake
    def _(x, values, chain, m, n, impl, bias):
        return x.new_empty((x.shape[0], m))

    @torch.library.custom_op("debutla::debut_mm_backward", mutates_args=())
    def _debut_mm_backward_op(grad: torch.Tensor, x: torch.Tensor,
                              values: list[torch.Tensor], chain: str, m: int, n: int,
                              impl: str, need_x: bool, need_v: bool,
                              need_b: bool) -> list[torch.Tensor]:
        grad = grad.contiguous()
        gx, gvs = _backward(grad, x, values, parse_chain(chain), (m, n), impl, need_x,
                            need_v)
        out = [gx if gx is not None else x.new_zeros(())]
        out.append(_bias_grad(grad, impl) if need_b else x.new_zeros(()))
        out += [g if g is not None else v.new_zeros(()) for g, v in zip(gvs, values)]
        return out

    @_debut_mm_backward_op.register_fake
    def _(grad, x, values, chain, m, n, impl, need_x, need_v, need_b):
        out = [torch.empty_like(x) if need_x else x.new_empty(())]
        out.append(grad.new_empty((m,)) if need_b else x.new_empty(()))
        out += [torch.empty_like(v) if need_v else v.new_empty(()) for v in values]
        return out

    def _setup_context(ctx, inputs, output):
        x, values, chain, m, n, impl, bias = inputs
        ctx.save_for_backward(x, *values)
        ctx.meta = (chain, m, n, impl)

    def _autograd_backward(ctx, grad):
        x, *values = ctx.saved_tensors
        chain, m, n, impl = ctx.meta
        need_x = bool(ctx.needs_input_grad[0])
        need_v = bool(ctx.needs_input_grad[1]) if not isinstance(
            ctx.needs_input_grad[1], (list, tuple)) else any(ctx.needs_input_grad[1])
        need_b = bool(ctx.needs_input_grad[6])
        outs = _debut_mm_backward_op(grad, x, list(values), chain, m, n, impl, need_x,
                                     need_v, need_b)
        gx = outs[0] if need_x else None
        gb = outs[1] if need_b else None
        gvs = list(outs[2:]) if need_v else [None] * len(values)
        return gx, gvs, None, None, None, None, gb

    _debut_mm_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def debut_mm(x: torch.Tensor, values: Sequence[torch.Tensor], chain: Chain | str,
             shape: tuple[int, int] | None = None, impl: str = "auto",
             bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ D.T (+ bias)`` for a DeBut matrix ``D`` given by its chain and factor values.

    Differentiable in ``x``, in every value tensor and in ``bias``.

    Parameters
    ----------
    x : Tensor (batch, n)
    values : sequence of Tensor
        One tensor per factor, canonical ``(nb, r, s, t)`` layout, application order, same
        dtype and device as ``x``.
    chain : Chain or str
    shape : (int, int), optional
        ``(m, n)`` served by the chain (at most its size; inputs are zero-padded and
        outputs cut).  Default: the chain's size.
    impl : {"auto", "numba", "torch", "cuda"}
        ``"auto"``: the fused Numba kernel for float32/float64 CPU tensors, else torch.
    bias : Tensor (m,), optional
        Added to every row.  On the CPU kernels it is added, and its gradient summed,
        with NumPy on the calling thread: a torch operation there would start an OpenMP
        parallel region whose threads then spin on the cores the product's threads need.

    Returns
    -------
    Tensor (batch, m)

    Raises
    ------
    ValueError
        If ``impl`` is unknown, or ``x`` or ``bias`` has the wrong shape.
    TypeError
        If ``bias`` differs from ``x`` in dtype or device.

    Examples
    --------
    >>> import torch
    >>> from debutla.torch import debut_mm
    >>> chain = "4 <-(2,2,2)- 4 <-(2,2,1)- 4"
    >>> vals = [torch.ones(2, 2, 2, 1), torch.ones(1, 2, 2, 2)]
    >>> debut_mm(torch.ones(3, 4), vals, chain).shape
    torch.Size([3, 4])
    """
    if isinstance(chain, Chain):
        text = _chain_text(chain)
        ch = chain
    else:
        text = str(chain)
        ch = parse_chain(text)
    m, n = ch.shape if shape is None else (int(shape[0]), int(shape[1]))
    if impl not in IMPLS:
        raise ValueError(f"debut_mm: impl must be one of {IMPLS}, got {impl!r}")
    if x.dim() != 2 or x.shape[1] != n:
        raise ValueError(f"debut_mm: x must have shape (batch, {n}), got {tuple(x.shape)}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dtype != x.dtype or bias.device != x.device:
            raise TypeError(f"debut_mm: bias must be a tensor of x's dtype and device "
                            f"({x.dtype}, {x.device}), got "
                            f"{getattr(bias, 'dtype', type(bias).__name__)} on "
                            f"{getattr(bias, 'device', '-')}")
        if tuple(bias.shape) != (m,):
            raise ValueError(f"debut_mm: bias must have shape ({m},), got {tuple(bias.shape)}")
    if not x.is_contiguous():
        x = x.contiguous()
    values = list(values)
    if (_BACKWARD["mode"] == "keep" and torch.is_grad_enabled()
            and (x.requires_grad or any(v.requires_grad for v in values))):
        y = _DeButMMKeep.apply(x, text, m, n, *values)
        return y if bias is None else y + bias
    if _plain_eager(x):
        if not _records_grad(x, values, bias):
            return _forward(x, values, ch, (m, n), impl, bias)
        return _DeButMM.apply(x, text, m, n, impl, bias, *values)
    if _HAS_CUSTOM_OP:
        return _debut_mm_op(x, values, text, m, n, impl, bias)
    return _DeButMM.apply(x, text, m, n, impl, bias, *values)


def _records_grad(x: torch.Tensor, values: list, bias: torch.Tensor | None) -> bool:
    """Whether autograd records this call (grad mode on and some input requires grad)."""
    return torch.is_grad_enabled() and (
        x.requires_grad or (bias is not None and bias.requires_grad)
        or any(v.requires_grad for v in values))


def _plain_eager(x: torch.Tensor) -> bool:
    """Whether :func:`debut_mm` may skip the registered custom op.

    True in plain eager execution: no ``torch.compile`` tracing, no functorch transform
    (``vmap``, ``grad``) and a plain tensor input (not a fake tensor or other subclass).
    There a call that records no gradient runs the implementation directly and one that
    records a gradient runs the plain :class:`torch.autograd.Function` ``_DeButMM`` (the
    same forward and backward functions): the custom op's dispatch costs about 0.1 ms
    per call and its autograd wrapper about 0.35 ms per training step of the VGG layer at
    batch 256 (``docs/torch.rst``).  Compiled graphs and transforms use the op.
    """
    if type(x) is not torch.Tensor or torch.compiler.is_compiling():
        return False
    transforms = getattr(torch._C, "_are_functorch_transforms_active", None)
    return transforms is not None and not transforms()
