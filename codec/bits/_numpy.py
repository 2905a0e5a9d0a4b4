"""numpy / numba implementation of :func:`codec.bits.pack_bits` and :func:`codec.bits.unpack_bits`.

Bulk work goes to the generated per-width kernels in :mod:`codec.bits._kernels`
(groups of 8 values = ``bits`` bytes, constant shifts, unaligned 64-bit loads).
The few values before the first group boundary (when ``start % 8 != 0``), the
last partial group, and the last groups whose 64-bit loads would run past the
end of the buffer go through the byte-at-a-time kernels below, which never touch
a byte outside the stream. Large calls are split into contiguous ranges of groups
and run on a small thread pool (the kernels release the GIL); each group owns
exactly ``bits`` bytes, so threads never write the same byte.
"""

from __future__ import annotations

import operator
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit

from ..errors import InvalidInputError
from . import _kernels
from ._intrinsics import HAVE_FAST_PDEP

MAX_BITS = 32
LITTLE_ENDIAN = sys.byteorder == "little"
#: below this many values a call runs on the calling thread only
PARALLEL_MIN_VALUES = 1 << 20

_UNSIGNED: dict[int, np.dtype] = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32), 8: np.dtype(np.uint64)}
_U64 = np.uint64


# --------------------------------------------------------------------------- byte-at-a-time kernels


@njit(nogil=True)
def _unpack_generic(src, out, bits, i0, count, o):  # pragma: no cover - compiled
    """Values i0 .. i0+count-1 into out[o:o+count]; reads only bytes of those values."""
    b = _U64(bits)
    mask = (_U64(1) << b) - _U64(1)
    q = i0 * bits
    for j in range(count):
        byte = q >> 3
        sh = _U64(q & 7)
        nb = (q & 7) + bits + 7 >> 3
        acc = _U64(0)
        for t in range(nb):
            acc |= _U64(src[byte + t]) << _U64(8 * t)
        out[o + j] = (acc >> sh) & mask
        q += bits
    return 0


@njit(nogil=True)
def _pack_generic(vals, i0, m, bits, dst, p):  # pragma: no cover - compiled
    """Pack vals[i0:i0+m] into dst starting at byte p (a byte boundary of the stream).

    Writes exactly ceil(m*bits/8) bytes, the unused high bits of the last one zero.
    Returns a value that is non-zero iff some value read was >= 2**bits.
    """
    b = _U64(bits)
    mask = (_U64(1) << b) - _U64(1)
    acc = _U64(0)
    nacc = _U64(0)
    bad = _U64(0)
    for j in range(m):
        v = _U64(vals[i0 + j])
        bad |= v
        acc |= (v & mask) << nacc
        nacc += b
        while nacc >= _U64(8):
            dst[p] = np.uint8(acc & _U64(255))
            p += 1
            acc >>= _U64(8)
            nacc -= _U64(8)
    if nacc > _U64(0):
        dst[p] = np.uint8(acc & _U64(255))
    return bad >> b


# --------------------------------------------------------------------------- threads

_pool: ThreadPoolExecutor | None = None
_pool_pid = -1
_pool_lock = threading.Lock()


def _num_threads() -> int:
    return max(1, min(os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():  # a forked child gets a fresh pool
            _pool = ThreadPoolExecutor(max_workers=max(workers, os.cpu_count() or 1), thread_name_prefix="codec-bits")
            _pool_pid = os.getpid()
        return _pool


def run_split(total: int, nt: int, fn) -> list:
    """fn(lo, hi) over nt contiguous parts of [0, total): nt-1 on the pool, one on this thread."""
    nt = max(1, min(nt, total))
    step = -(-total // nt)
    bounds = [(k * step, min(total, (k + 1) * step)) for k in range(nt)]
    if nt == 1:
        return [fn(0, total)]
    pool = _get_pool(nt - 1)
    futs = [pool.submit(fn, lo, hi) for lo, hi in bounds[1:]]
    first = fn(*bounds[0])
    return [first] + [f.result() for f in futs]


def _run_groups(kernel, a, b, g0: int, g1: int, o0: int) -> list:
    """kernel(a, b, gs, ge, o0 + 8*(gs-g0)) over [g0, g1), split across threads when large."""
    ngroups = g1 - g0
    nt = _num_threads()
    if nt == 1 or ngroups * 8 < PARALLEL_MIN_VALUES:
        return [kernel(a, b, g0, g1, o0)]
    nt = min(nt, ngroups * 8 // (PARALLEL_MIN_VALUES // 2))
    return run_split(ngroups, nt, lambda lo, hi: kernel(a, b, g0 + lo, g0 + hi, o0 + 8 * lo))


# --------------------------------------------------------------------------- argument checks


def check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= MAX_BITS:
        raise InvalidInputError(f"bits must be an integer in [1, {MAX_BITS}], got {bits!r}")
    return int(bits)


def check_count(value, what: str) -> int:
    if isinstance(value, bool):
        raise InvalidInputError(f"{what} must be a non-negative integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidInputError(f"{what} must be a non-negative integer, got {value!r}") from None
    if v < 0:
        raise InvalidInputError(f"{what} must be a non-negative integer, got {v}")
    return v


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes of a stream of ``count`` values of ``bits`` bits: ceil(count*bits/8)."""
    return (count * bits + 7) // 8


def _readonly(a: np.ndarray) -> np.ndarray:
    # one numba specialisation per kernel instead of two (read-only inputs are a different type)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def as_byte_array(data) -> np.ndarray:
    """A 1-D C-contiguous uint8 view of bytes-like / numpy data (copied only if it must be)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise InvalidInputError(f"packed data must be uint8, got dtype {data.dtype}")
        return np.ascontiguousarray(data).reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as e:
        try:  # non-contiguous memoryviews and the like
            return np.frombuffer(memoryview(data).tobytes(), dtype=np.uint8)
        except (TypeError, ValueError, BufferError):
            raise InvalidInputError(f"packed data must be bytes-like or a uint8 array, got {type(data).__name__}") from e


def first_bad_index(flat: np.ndarray, bits: int) -> int:
    bad = np.flatnonzero((flat < 0) | (flat >= (1 << bits)))
    return int(bad[0])


def raise_bad_value(values_shape, flat, idx: int, bits: int):
    where = f"index {idx}"
    if len(values_shape) > 1:
        where += f" (position {tuple(int(i) for i in np.unravel_index(idx, values_shape))})"
    raise InvalidInputError(f"value {int(flat[idx])} at {where} is outside [0, 2**{bits}) for bits={bits}")


# --------------------------------------------------------------------------- kernel choice

#: use the BMI2 pdep/pext kernels where they apply (tests switch this off to cover both families)
USE_PDEP = HAVE_FAST_PDEP


def pack_kernel(bits: int, itemsize: int):
    """The group kernel for packing values held in unsigned elements of ``itemsize`` bytes."""
    if USE_PDEP and itemsize < 8:
        k = _kernels.PACK_PEXT[8 * itemsize][bits]
        if k is not None:
            return k
    return _kernels.PACK[bits]


def unpack_kernel(bits: int, itemsize: int):
    """The group kernel for unpacking into unsigned elements of ``itemsize`` bytes."""
    if USE_PDEP and itemsize < 8:
        k = _kernels.UNPACK_PDEP[8 * itemsize][bits]
        if k is not None:
            return k
    return _kernels.UNPACK[bits]


# --------------------------------------------------------------------------- pack


def pack_numpy(values: np.ndarray, bits: int, out=None) -> np.ndarray:
    arr = values
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    if arr.dtype.kind not in "ui":
        raise InvalidInputError(f"pack_bits needs an integer array, got dtype {values.dtype}")
    flat = np.ascontiguousarray(arr).reshape(-1)
    if not flat.flags.aligned:
        flat = flat.copy()
    n = flat.size
    if arr.dtype.kind == "i" and bits >= 8 * arr.dtype.itemsize and n and flat.min() < 0:
        # the unsigned view below would not expose these as >= 2**bits
        raise_bad_value(values.shape, flat, int(np.flatnonzero(flat < 0)[0]), bits)
    uvals = _readonly(flat.view(_UNSIGNED[flat.dtype.itemsize]))
    nbytes = packed_nbytes(n, bits)
    if out is None:
        dst = np.empty(nbytes, np.uint8)
        result = dst
    else:
        if not isinstance(out, np.ndarray) or out.dtype != np.uint8:
            raise InvalidInputError("out must be a numpy uint8 array for numpy input")
        if out.size != nbytes:
            raise InvalidInputError(f"out has {out.size} bytes; {n} values at {bits} bits need exactly {nbytes}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise InvalidInputError("out must be C-contiguous and writeable")
        dst = out.reshape(-1)
        result = out
    ngroups = n // 8
    bad = 0
    if ngroups:
        if LITTLE_ENDIAN:
            for r in _run_groups(pack_kernel(bits, uvals.dtype.itemsize), uvals, dst, 0, ngroups, 0):
                bad |= int(r)
        else:  # pragma: no cover - big-endian hosts
            bad |= int(_pack_generic(uvals, 0, 8 * ngroups, bits, dst, 0))
    if n - 8 * ngroups:
        bad |= int(_pack_generic(uvals, 8 * ngroups, n - 8 * ngroups, bits, dst, ngroups * bits))
    if bad:
        raise_bad_value(values.shape, flat, first_bad_index(flat, bits), bits)
    return result


# --------------------------------------------------------------------------- unpack


def default_dtype(bits: int) -> np.dtype:
    """Smallest unsigned numpy dtype that holds ``bits``-bit values."""
    return _UNSIGNED[1 if bits <= 8 else 2 if bits <= 16 else 4]


def unpack_numpy(data, bits: int, count: int, start: int = 0, out=None) -> np.ndarray:
    src = _readonly(as_byte_array(data))
    need = packed_nbytes(start + count, bits)
    if src.size < need:
        raise InvalidInputError(
            f"packed data has {src.size} bytes; values [{start}, {start + count}) at {bits} bits need {need}"
        )
    if out is None:
        result = np.empty(count, default_dtype(bits))
        flat = result
    else:
        if not isinstance(out, np.ndarray) or out.dtype.kind not in "ui":
            raise InvalidInputError("out must be a numpy integer array")
        room = 8 * out.dtype.itemsize - (out.dtype.kind == "i")
        if room < bits:
            raise InvalidInputError(f"out dtype {out.dtype} cannot hold {bits}-bit values")
        if out.size != count:
            raise InvalidInputError(f"out has {out.size} elements, expected count={count}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise InvalidInputError("out must be C-contiguous and writeable")
        result = out
        flat = out.reshape(-1)
        if not flat.flags.aligned:  # numba would compile (slow) unaligned variants; go through a copy
            tmp = unpack_numpy(src, bits, count, start)
            flat[...] = tmp
            return result
        flat = flat.view(_UNSIGNED[out.dtype.itemsize])
    if count == 0:
        return result
    end = start + count
    head = min(count, -start % 8)
    if head:
        _unpack_generic(src, flat, bits, start, head, 0)
    g0 = (start + head) // 8
    reach = (7 * bits >> 3) + 8  # bytes a fast group reads from its first byte
    g_safe = (src.size - reach) // bits + 1 if src.size >= reach else 0
    g1 = max(g0, min(end // 8, g_safe))
    if g1 > g0:
        if LITTLE_ENDIAN:
            _run_groups(unpack_kernel(bits, flat.dtype.itemsize), src, flat, g0, g1, head)
        else:  # pragma: no cover - big-endian hosts
            _unpack_generic(src, flat, bits, 8 * g0, 8 * (g1 - g0), head)
    done = max(start + head, 8 * g1)
    if end > done:
        _unpack_generic(src, flat, bits, done, end - done, done - start)
    return result
