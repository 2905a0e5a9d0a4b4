"""Unaligned little-endian loads and stores for numba kernels.

numba has no way to read a ``uint64`` at an arbitrary byte offset of a ``uint8``
array; these intrinsics emit a plain LLVM ``load``/``store`` with ``align 1``,
which is a single unaligned ``mov`` on x86-64 and AArch64. They do **no** bounds
checking: callers must prove ``0 <= idx`` and ``idx + width <= len(arr)``.
Host byte order is assumed little-endian; :mod:`codec.bits._numpy` falls back to
byte-at-a-time kernels on big-endian hosts.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic

__all__ = ["load_u64", "store_u8", "store_u16", "store_u32", "store_u64"]


def _byte_ptr(context, builder, arrty, arr, idx, nbits):
    ary = context.make_array(arrty)(context, builder, arr)
    p = builder.gep(ary.data, [idx])
    return builder.bitcast(p, ir.IntType(nbits).as_pointer())


def _make_load(nbits, rtype):
    @intrinsic
    def load(typingctx, arr, idx):
        if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and isinstance(idx, types.Integer)):
            return None
        sig = rtype(arr, idx)

        def codegen(context, builder, signature, args):
            p = _byte_ptr(context, builder, signature.args[0], args[0], args[1], nbits)
            return builder.load(p, align=1)

        return sig, codegen

    return load


def _make_store(nbits):
    @intrinsic
    def store(typingctx, arr, idx, val):
        if not (
            isinstance(arr, types.Array)
            and arr.dtype == types.uint8
            and isinstance(idx, types.Integer)
            and isinstance(val, types.Integer)
        ):
            return None
        sig = types.void(arr, idx, val)

        def codegen(context, builder, signature, args):
            p = _byte_ptr(context, builder, signature.args[0], args[0], args[1], nbits)
            v = args[2]
            if v.type.width > nbits:
                v = builder.trunc(v, ir.IntType(nbits))
            elif v.type.width < nbits:
                v = builder.zext(v, ir.IntType(nbits))
            builder.store(v, p, align=1)
            return context.get_dummy_value()

        return sig, codegen

    return store


load_u64 = _make_load(64, types.uint64)
store_u8 = _make_store(8)
store_u16 = _make_store(16)
store_u32 = _make_store(32)
store_u64 = _make_store(64)
