"""Atomic loads and stores and the spin-wait hint, for Numba code (see ``_numba_pool``).

Numba has no atomics for CPU code, and a plain load in a loop may be hoisted out of it
by LLVM.  These intrinsics emit LLVM's ``load atomic ... acquire`` and ``store atomic ...
release`` on an element of an ``int64`` array, and the x86 ``pause`` instruction
(``llvm.x86.sse2.pause``; nothing on other processors).  They serve the spin loops of
the generic kernel module (:mod:`debutla.backends._numba_generic`), which the split
products' worker pool calls without the GIL.
"""

from __future__ import annotations

import platform

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["load_acquire", "store_release", "cpu_pause"]

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _element_pointer(context, builder, aryty, ary, idx):
    arr = context.make_array(aryty)(context, builder, ary)
    return cgutils.get_item_pointer(context, builder, aryty, arr, [idx])


@intrinsic
def load_acquire(typingctx, arr, idx):
    """``arr[idx]`` (an ``int64`` array) read with an atomic acquire load."""
    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(arr, idx), codegen


@intrinsic
def store_release(typingctx, arr, idx, val):
    """``arr[idx] = val`` (an ``int64`` array) with an atomic release store."""
    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        val = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(val, ptr, "release", 8)
        return context.get_dummy_value()

    return types.void(arr, idx, val), codegen


@intrinsic
def cpu_pause(typingctx):
    """The x86 ``pause`` spin-wait hint (nothing on other processors)."""
    def codegen(context, builder, signature, args):
        if _X86:
            fnty = ir.FunctionType(ir.VoidType(), [])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen
