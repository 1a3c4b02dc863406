"""Stack placement for the Numba kernels: one frame position, whoever calls.

The fused kernels keep more broadcast values than there are vector registers, so LLVM
spills some of them to the stack and reloads them inside the hot loops.  Where those
spill slots land depends on the caller's stack pointer, which Python's call depth
decides: measured on the VGG chain (float32, batch 1024, one thread), the same call took
5.0-5.3 ms from most call depths and up to 7.5 ms from some (16-byte-aligned slots that
straddle cache lines, and 4 KiB aliasing with the stores they are read between).  A
thread-pool worker sat at one of the slow depths, so a product split over two threads
waited on a worker 1.4-1.5x slower than the calling thread.

:func:`place_stack` moves the stack pointer down (a dynamic ``alloca``) to a fixed
position modulo :data:`PAGE` before the kernel calls its hot inner function, so that
function's frame, and with it every spill slot, sits at the same 64-byte-aligned offset
within a page on every call and every thread.  It costs a few instructions and less
than :data:`PAGE` + 128 bytes of stack per call.

A change here must come with a new ``GENERATOR_VERSION`` in
:mod:`debutla.backends._numba_codegen`: Numba's cache of a generated module does not see
it.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

__all__ = ["place_stack", "stack_pointer", "PAGE", "OFFSET"]

#: The period of the placement in bytes (a page: 4 KiB aliasing repeats with it).
PAGE = 4096
#: The stack pointer's offset within a page after :func:`place_stack`, minus 64.
OFFSET = 0


def _stacksave(builder):
    """The current stack pointer (``llvm.stacksave``) as a 64-bit integer."""
    i8p = ir.PointerType(ir.IntType(8))
    mod = builder.module
    try:
        save = mod.get_global("llvm.stacksave")
    except KeyError:
        save = ir.Function(mod, ir.FunctionType(i8p, []), "llvm.stacksave")
    return builder.ptrtoint(builder.call(save, []), ir.IntType(64))


@intrinsic
def stack_pointer(typingctx):
    """The stack pointer where it is called, as an integer (tests and diagnostics).

    Examples
    --------
    >>> import numba
    >>> @numba.njit
    ... def f():
    ...     place_stack()
    ...     return stack_pointer() % PAGE
    >>> f() == (OFFSET - 64) % PAGE
    True
    """
    return types.uint64(), lambda context, builder, signature, args: _stacksave(builder)


@intrinsic
def place_stack(typingctx):
    """Move the stack pointer to ``OFFSET - 64`` modulo :data:`PAGE` (64-byte aligned).

    Call it first in a kernel, before the calls whose frames should be placed; the space
    is released when the kernel returns.

    Examples
    --------
    >>> import numba
    >>> @numba.njit
    ... def f(x):
    ...     place_stack()
    ...     return x + 1
    >>> f(1)
    2
    """
    sig = types.void()

    def codegen(context, builder, signature, args):
        i8p = ir.PointerType(ir.IntType(8))
        i64 = ir.IntType(64)
        sp = _stacksave(builder)
        pad = builder.and_(builder.sub(sp, ir.Constant(i64, OFFSET)), ir.Constant(i64, PAGE - 1))
        room = builder.alloca(ir.IntType(8), size=builder.add(pad, ir.Constant(i64, 64)))
        room.align = 64
        # an empty asm statement that takes the space's address: LLVM must keep it
        builder.asm(ir.FunctionType(ir.VoidType(), [i8p]), "", "r,~{memory}", [room], True)
        return context.get_dummy_value()

    return sig, codegen
