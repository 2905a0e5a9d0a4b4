"""Bit-packing of unsigned integers into the .ddz bit stream (spec/ddz.md, "bit-packed sections").

Stream layout (normative): value ``i`` occupies stream bits ``[i*bits, (i+1)*bits)``;
stream bit ``j`` is bit ``j % 8`` (LSB first) of byte ``j // 8``. A stream of ``n``
values is exactly ``ceil(n*bits/8)`` bytes and the unused high bits of its last byte
are zero. ``bits`` is 1..32.

* :func:`pack_bits` / :func:`unpack_bits`: numpy arrays (numba kernels) and torch
  tensors (plain tensor ops on any device; CPU tensors use the numba kernels
  zero-copy, see :mod:`codec.bits._api`).
* :class:`BitStreamPacker`: incremental packing for the streaming writer.
"""

from ._api import BitStreamPacker, pack_bits, packed_nbytes, unpack_bits
from ._torch import pack_bits_torch, unpack_bits_torch

__all__ = ["pack_bits", "unpack_bits", "BitStreamPacker", "packed_nbytes", "pack_bits_torch", "unpack_bits_torch"]
