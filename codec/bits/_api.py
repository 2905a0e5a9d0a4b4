"""Public entry points of :mod:`codec.bits`: argument checks and numpy / torch dispatch."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ._numpy import (
    as_byte_array,
    check_bits,
    check_count,
    default_dtype,
    pack_numpy,
    packed_nbytes,
    unpack_numpy,
)

__all__ = ["pack_bits", "unpack_bits", "BitStreamPacker", "packed_nbytes"]


def _torch():
    import sys

    return sys.modules.get("torch")


def _is_tensor(x) -> bool:
    t = _torch()
    return t is not None and isinstance(x, t.Tensor)


def pack_bits(values: Any, bits: int, out: Any = None):
    """Pack non-negative integers into the .ddz bit stream (spec/ddz.md, "bit-packed sections").

    Value ``i`` of ``values`` (flattened in C order) occupies stream bits ``[i*bits, (i+1)*bits)``;
    stream bit ``j`` is bit ``j % 8`` of byte ``j // 8``. The result has exactly
    ``ceil(n*bits/8)`` bytes and the unused high bits of its last byte are zero.

    Args:
        values: numpy integer (or bool) array of any shape, or a torch integer tensor on any device.
        bits: width, 1..32. Every value must be in ``[0, 2**bits)``.
        out: optional preallocated destination of exactly ``ceil(n*bits/8)`` bytes: a C-contiguous
            writeable numpy uint8 array for numpy input, a contiguous uint8 tensor on the input's
            device for torch input. It is returned. Its content is unspecified if an error is raised.

    Returns:
        numpy uint8 array, or a torch uint8 tensor on the input's device.

    Raises:
        InvalidInputError: bad ``bits``, non-integer input, a value outside ``[0, 2**bits)`` (the
            message names the first such index), or an unsuitable ``out``.

    numpy input runs numba kernels specialised per width and, for large inputs, on all cores.
    Torch tensors on the CPU go through the same kernels without a copy; tensors on other
    devices use :func:`codec.bits.pack_bits_torch` (plain tensor ops).
    """
    bits = check_bits(bits)
    if _is_tensor(values):
        torch = _torch()
        if values.device.type == "cpu" and (out is None or (isinstance(out, torch.Tensor) and out.device.type == "cpu")):
            if out is not None and (out.dtype != torch.uint8 or not out.is_contiguous()):
                raise InvalidInputError("out must be a contiguous uint8 tensor on the input's device")
            v = values.detach()
            if v.dtype == torch.bool:
                v = v.to(torch.uint8)
            if v.is_floating_point() or v.is_complex():
                raise InvalidInputError(f"pack_bits needs an integer tensor, got dtype {values.dtype}")
            arr = v.contiguous().numpy()  # zero-copy view for contiguous tensors
            if out is None:
                return torch.from_numpy(pack_numpy(arr, bits))
            pack_numpy(arr, bits, out.numpy())
            return out
        from ._torch import pack_bits_torch

        return pack_bits_torch(values, bits, out)
    if isinstance(values, np.ndarray):
        arr = values
    elif isinstance(values, (list, tuple, range)) or np.isscalar(values):
        arr = np.asarray(values)
        if arr.size == 0:
            arr = arr.astype(np.int64)
    else:
        arr = np.asarray(values)
    if arr.dtype.kind not in "uib":
        raise InvalidInputError(f"pack_bits needs integer values, got dtype {arr.dtype}")
    return pack_numpy(arr, bits, out)


def unpack_bits(data: Any, bits: int, count: int, start: int = 0, out: Any = None):
    """Read values ``start .. start+count-1`` of a .ddz bit stream (spec/ddz.md, "bit-packed sections").

    Args:
        data: the stream from its bit 0: bytes-like (bytes, bytearray, memoryview, mmap), a numpy
            uint8 array, or a torch uint8 tensor on any device. Only the bytes holding the
            requested values are read; the buffer may be longer than needed.
        bits: width, 1..32.
        count: number of values to return (>= 0).
        start: index of the first value (>= 0): random access costs no more than the values read.
        out: optional destination of exactly ``count`` elements. numpy path: a C-contiguous
            writeable integer array whose dtype holds ``bits`` bits (signed dtypes need one more
            bit); it is returned with its shape. torch path: a contiguous integer tensor on the
            data's device.

    Returns:
        numpy path: an array of the smallest unsigned dtype that holds ``bits`` (uint8 for
        bits <= 8, uint16 for <= 16, uint32 otherwise). torch path: an **int64** tensor on the
        data's device, so the result can index an embedding or ``index_select`` directly.

    Raises:
        InvalidInputError: bad ``bits``, negative ``start``/``count``, data too short for
            ``start + count`` values, or an unsuitable ``out``.

    Never reads outside ``data`` and accepts buffers at any alignment.
    """
    bits = check_bits(bits)
    count = check_count(count, "count")
    start = check_count(start, "start")
    if _is_tensor(data):
        torch = _torch()
        if data.dtype != torch.uint8:
            raise InvalidInputError(f"packed data must be a uint8 tensor, got dtype {data.dtype}")
        if data.device.type == "cpu" and (out is None or (isinstance(out, torch.Tensor) and out.device.type == "cpu")):
            src = data.detach().contiguous().numpy()
            if out is None:
                result = torch.empty(count, dtype=torch.int64)
                unpack_numpy(src, bits, count, start, result.numpy())
                return result
            if not out.is_contiguous() or out.dtype == torch.bool or out.is_floating_point() or out.is_complex():
                raise InvalidInputError("out must be a contiguous integer tensor on the data's device")
            unpack_numpy(src, bits, count, start, out.detach().numpy())
            return out
        from ._torch import unpack_bits_torch

        return unpack_bits_torch(data, bits, count, start, out)
    return unpack_numpy(as_byte_array(data), bits, count, start, out)


class BitStreamPacker:
    """Incremental :func:`pack_bits` for writers that receive values in chunks.

    ``feed`` packs every whole group of 8 values it has (8 values of ``bits`` bits are exactly
    ``bits`` bytes, so a group never shares a byte with the next) and carries the < 8 values
    left over; ``finish`` packs the carried values, zero-padding the last byte. The
    concatenation of everything returned equals ``pack_bits`` of the concatenated input.
    Memory use is the size of one fed chunk's output.
    """

    def __init__(self, bits: int):
        self.bits = check_bits(bits)
        self._carry = np.empty(0, np.uint64)
        self.count = 0  # values fed so far
        self._finished = False

    def _as_numpy(self, values) -> np.ndarray:
        if _is_tensor(values):
            values = values.detach()
            if values.device.type != "cpu":
                values = values.cpu()
            if values.dtype == _torch().bool:
                values = values.to(_torch().uint8)
            values = values.numpy()
        arr = np.asarray(values)
        if arr.dtype.kind not in "uib":
            if arr.size == 0:
                return np.empty(0, np.uint8)
            raise InvalidInputError(f"BitStreamPacker needs integer values, got dtype {arr.dtype}")
        return arr.reshape(-1)

    def _bad(self, idx: int, value: int):
        b = self.bits
        raise InvalidInputError(f"value {value} at stream index {idx} is outside [0, 2**{b}) for bits={b}")

    def _checked(self, arr: np.ndarray, base: int) -> np.ndarray:
        """A few (< 8) values as uint64, after checking their range."""
        bad = np.flatnonzero((arr < 0) | (arr >= (1 << self.bits)))
        if bad.size:
            self._bad(base + int(bad[0]), int(arr[bad[0]]))
        return arr.astype(np.uint64)

    def _pack(self, arr: np.ndarray, out: np.ndarray, base: int) -> None:
        try:
            pack_numpy(arr, self.bits, out)
        except InvalidInputError:
            i = int(np.flatnonzero((arr < 0) | (arr >= (1 << self.bits)))[0])
            self._bad(base + i, int(arr[i]))

    def feed(self, values) -> np.ndarray:
        """Pack the whole groups of 8 among the carried and the new values; returns uint8 bytes."""
        if self._finished:
            raise InvalidInputError("BitStreamPacker.feed() after finish()")
        arr = self._as_numpy(values)
        b, nc, n = self.bits, self._carry.size, arr.size
        ngroups = (nc + n) // 8
        result = np.empty(ngroups * b, np.uint8)
        if ngroups == 0:
            carry = np.concatenate([self._carry, self._checked(arr, self.count)])
        else:
            used = 8 * ngroups - nc  # values of arr that go into whole groups
            pos = 0
            if nc:
                head = np.concatenate([self._carry, self._checked(arr[: 8 - nc], self.count)])
                self._pack(head, result[:b], self.count - nc)
                pos = b
            taken = 8 - nc if nc else 0
            if used > taken:
                self._pack(arr[taken:used], result[pos:], self.count + taken)
            carry = self._checked(arr[used:], self.count + used)
        self._carry = carry
        self.count += n
        return result

    def finish(self) -> np.ndarray:
        """Pack the carried (< 8) values, zero-padded to a whole byte; returns uint8 bytes."""
        if self._finished:
            return np.empty(0, np.uint8)
        self._finished = True
        out = np.empty(packed_nbytes(self._carry.size, self.bits), np.uint8)
        if self._carry.size:
            self._pack(self._carry, out, self.count - self._carry.size)
        self._carry = np.empty(0, np.uint64)
        return out


def unpacked_dtype(bits: int) -> np.dtype:
    """The numpy dtype :func:`unpack_bits` returns for ``bits``."""
    return default_dtype(check_bits(bits))
