"""Unaligned little-endian loads/stores and BMI2 ``pdep``/``pext`` for numba kernels.

numba cannot read a ``uint64`` at an arbitrary offset of an array of another dtype;
``load_u64(arr, i)`` / ``store_uN(arr, i, v)`` emit a plain LLVM ``load``/``store`` with
``align 1`` at the address of element ``i`` of ``arr`` (a byte offset for uint8 arrays),
which is a single unaligned ``mov`` on x86-64 and AArch64. They do **no** bounds
checking: callers must prove that the ``N/8`` bytes from element ``i`` are inside ``arr``.
Host byte order is assumed little-endian; :mod:`codec.bits._numpy` uses byte-at-a-time
kernels on big-endian hosts.

``pdep(x, mask)`` / ``pext(x, mask)`` are the x86 BMI2 parallel bit deposit / extract
instructions. Kernels using them may only be *called* where :data:`HAVE_FAST_PDEP` is
true (numba compiles lazily, so merely defining them is safe on any host).
"""

from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

__all__ = ["load_u64", "store_u8", "store_u16", "store_u32", "store_u64", "pdep", "pext", "HAVE_FAST_PDEP"]


def _fast_pdep() -> bool:
    try:
        if not llvm.get_host_cpu_features().get("bmi2", False):
            return False
        name = llvm.get_host_cpu_name()
    except Exception:  # noqa: BLE001  # pragma: no cover - exotic hosts: any failure means "no BMI2"
        return False
    # AMD before Zen 3 implements pdep/pext in microcode (hundreds of cycles each)
    return not (name.startswith("bdver") or name in ("znver1", "znver2"))


#: the host has BMI2 with pdep/pext implemented in hardware (Intel Haswell+, AMD Zen 3+)
HAVE_FAST_PDEP = _fast_pdep()


def _elem_ptr(context, builder, arrty, arr, idx, nbits):
    ary = context.make_array(arrty)(context, builder, arr)
    p = builder.gep(ary.data, [idx])
    return builder.bitcast(p, ir.IntType(nbits).as_pointer())


def _ok(arr, idx) -> bool:
    return isinstance(arr, types.Array) and isinstance(arr.dtype, types.Integer) and isinstance(idx, types.Integer)


def _make_load(nbits, rtype):
    @intrinsic
    def load(typingctx, arr, idx):
        if not _ok(arr, idx):
            return None
        sig = rtype(arr, idx)

        def codegen(context, builder, signature, args):
            p = _elem_ptr(context, builder, signature.args[0], args[0], args[1], nbits)
            return builder.load(p, align=1)

        return sig, codegen

    return load


def _make_store(nbits):
    @intrinsic
    def store(typingctx, arr, idx, val):
        if not (_ok(arr, idx) and isinstance(val, types.Integer)):
            return None
        sig = types.void(arr, idx, val)

        def codegen(context, builder, signature, args):
            p = _elem_ptr(context, builder, signature.args[0], args[0], args[1], nbits)
            v = args[2]
            if v.type.width > nbits:
                v = builder.trunc(v, ir.IntType(nbits))
            elif v.type.width < nbits:
                v = builder.zext(v, ir.IntType(nbits))
            builder.store(v, p, align=1)
            return context.get_dummy_value()

        return sig, codegen

    return store


def _make_bmi2(name):
    @intrinsic
    def op(typingctx, x, mask):
        if not (x == types.uint64 and mask == types.uint64):
            return None
        sig = types.uint64(types.uint64, types.uint64)

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, i64]), name)
            return builder.call(fn, args)

        return sig, codegen

    return op


load_u64 = _make_load(64, types.uint64)
store_u8 = _make_store(8)
store_u16 = _make_store(16)
store_u32 = _make_store(32)
store_u64 = _make_store(64)
pdep = _make_bmi2("llvm.x86.bmi.pdep.64")
pext = _make_bmi2("llvm.x86.bmi.pext.64")
