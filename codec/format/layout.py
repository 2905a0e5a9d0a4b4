"""Byte layout constants of spec/ddz.md: preamble, dtypes, alignment and hard limits."""

from __future__ import annotations

import base64
import functools
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import FormatError, LimitError, TruncatedError, UnsupportedVersionError

MAGIC = b"\x89DDZ\r\n\x1a\n"
MAJOR = 1
MINOR = 1  # the highest minor this implementation reads and writes
MINOR_BLOCKS = 1  # the first minor with per-block CRCs (a file is written with the lowest minor it needs)
PREAMBLE_SIZE = 64
# magic, major, minor, alignment, header_offset, header_length, header_crc32, flags, file_length, reserved
_PREAMBLE = struct.Struct("<8sHHIQQIIQ12s")
assert _PREAMBLE.size == 60

DEFAULT_ALIGNMENT = 64
MIN_ALIGNMENT = 64
MAX_ALIGNMENT = 1 << 20
MAX_HEADER_LENGTH = 64 << 20
MAX_SECTIONS = 1 << 16
MAX_OBJECTS = 1 << 12
MAX_NAME_BYTES = 256
MAX_NDIM = 16
MAX_JSON_DEPTH = 32
# per-block CRC-32s of large sections (spec/ddz.md 4.1, minor 1)
DEFAULT_BLOCK_SIZE = 64 << 10
MIN_BLOCK_SIZE = 4 << 10
MAX_BLOCK_SIZE = 64 << 20
MAX_BLOCKS = 1 << 20  # per section

# dtype name -> (numpy dtype, itemsize). bf16 is stored as raw uint16 bits.
DTYPES: dict[str, np.dtype] = {
    "bool": np.dtype("?"),
    "u8": np.dtype("u1"),
    "i8": np.dtype("i1"),
    "u16": np.dtype("<u2"),
    "i16": np.dtype("<i2"),
    "u32": np.dtype("<u4"),
    "i32": np.dtype("<i4"),
    "u64": np.dtype("<u8"),
    "i64": np.dtype("<i8"),
    "f16": np.dtype("<f2"),
    "bf16": np.dtype("<u2"),
    "f32": np.dtype("<f4"),
    "f64": np.dtype("<f8"),
}
INTEGER_DTYPES = {"u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64"}


def crc32(data, value: int = 0) -> int:
    """CRC-32 (ISO-HDLC, zlib's) of a bytes-like object, continuing from ``value``."""
    return zlib.crc32(data, value) & 0xFFFFFFFF


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


@functools.lru_cache(maxsize=8)
def _zeros_operator(nbytes: int) -> tuple[tuple[int, ...], ...]:
    """Byte tables of the GF(2) operator that appends ``nbytes`` zero bytes to a CRC-32 (zlib's crc32_combine)."""
    op = [0xEDB88320] + [1 << (n - 1) for n in range(1, 32)]  # one zero bit
    for _ in range(3):  # -> one zero byte
        op = [_gf2_times(op, op[n]) for n in range(32)]
    acc = [1 << n for n in range(32)]  # identity
    while nbytes:
        if nbytes & 1:
            acc = [_gf2_times(op, acc[n]) for n in range(32)]
        nbytes >>= 1
        if nbytes:
            op = [_gf2_times(op, op[n]) for n in range(32)]
    return tuple(tuple(_gf2_times(acc, b << (8 * k)) for b in range(256)) for k in range(4))


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)``, without the bytes (as zlib's crc32_combine)."""
    t0, t1, t2, t3 = _zeros_operator(len2)
    return t0[crc1 & 255] ^ t1[(crc1 >> 8) & 255] ^ t2[(crc1 >> 16) & 255] ^ t3[crc1 >> 24] ^ crc2


def crc32_of_blocks(crcs, block_size: int, length: int) -> int:
    """The whole section's CRC-32 from its per-block CRC-32s (so ``verify`` reads each byte once)."""
    if not len(crcs):
        return 0
    t0, t1, t2, t3 = _zeros_operator(block_size)
    whole = int(crcs[0])
    for c in crcs[1:-1]:
        whole = t0[whole & 255] ^ t1[(whole >> 8) & 255] ^ t2[(whole >> 16) & 255] ^ t3[whole >> 24] ^ int(c)
    if len(crcs) > 1:
        whole = crc32_combine(whole, int(crcs[-1]), length - (len(crcs) - 1) * block_size)
    return whole


def keeps_blocks(length: int, block_size: int | None) -> bool:
    """Whether a writer records per-block CRCs for a section of ``length`` stored bytes (spec/ddz.md 4.1.1)."""
    return block_size is not None and block_size > 0 and length > block_size \
        and (length + block_size - 1) // block_size <= MAX_BLOCKS


def encode_block_crcs(crcs) -> str:
    """The ``blocks.crc32`` member: base64 (RFC 4648, padded) of the CRC-32s as little-endian u32."""
    return base64.b64encode(np.asarray(crcs, "<u4").tobytes()).decode("ascii")


def block_table(data, block_size: int | None = DEFAULT_BLOCK_SIZE) -> tuple[int, str]:
    """``(block size, blocks.crc32)`` a writer records for these stored bytes, or ``(0, "")``."""
    view = memoryview(data).cast("B")
    if not keeps_blocks(len(view), block_size):
        return 0, ""
    assert block_size is not None
    return block_size, encode_block_crcs([crc32(view[i: i + block_size]) for i in range(0, len(view), block_size)])


def align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) & ~(alignment - 1)


@dataclass(frozen=True)
class Preamble:
    """The fixed 64-byte start of every .ddz file (spec/ddz.md, 'Preamble')."""

    alignment: int
    header_offset: int
    header_length: int
    header_crc32: int
    file_length: int
    major: int = MAJOR
    minor: int = 0

    def to_bytes(self) -> bytes:
        body = _PREAMBLE.pack(MAGIC, self.major, self.minor, self.alignment, self.header_offset,
                              self.header_length, self.header_crc32, 0, self.file_length, bytes(12))
        return body + struct.pack("<I", crc32(body))

    @classmethod
    def from_bytes(cls, raw: bytes, file_size: int) -> "Preamble":
        if len(raw) < PREAMBLE_SIZE:
            if raw[: len(MAGIC)] != MAGIC[: len(raw)]:
                raise FormatError("not a .ddz file (bad magic)", offset=0)
            raise TruncatedError(f"file is {len(raw)} bytes, shorter than the {PREAMBLE_SIZE}-byte preamble", offset=0)
        magic, major, minor, alignment, h_off, h_len, h_crc, flags, f_len, reserved = _PREAMBLE.unpack_from(raw)
        if magic != MAGIC:
            raise FormatError("not a .ddz file (bad magic)", offset=0)
        if major != MAJOR:
            hint = " (byte-swapped: big-endian writer?)" if major.to_bytes(2, "big") == MAJOR.to_bytes(2, "little") else ""
            raise UnsupportedVersionError(f"major version {major} is not supported (this reader implements {MAJOR}){hint}", offset=8)
        (stored_crc,) = struct.unpack_from("<I", raw, 60)
        if crc32(raw[:60]) != stored_crc:
            raise FormatError("preamble checksum mismatch", offset=60)
        if flags != 0:
            raise FormatError(f"unknown preamble flags {flags:#x}", offset=36)
        if reserved != bytes(12):
            raise FormatError("reserved preamble bytes are not zero", offset=48)
        if alignment < MIN_ALIGNMENT or alignment > MAX_ALIGNMENT or alignment & (alignment - 1):
            raise FormatError(f"alignment {alignment} is not a power of two in [{MIN_ALIGNMENT}, {MAX_ALIGNMENT}]", offset=12)
        if h_len > MAX_HEADER_LENGTH:
            raise LimitError(f"header length {h_len} exceeds the limit of {MAX_HEADER_LENGTH} bytes", offset=24)
        if f_len != file_size:
            raise TruncatedError(f"preamble declares {f_len} bytes but the file has {file_size}", offset=40)
        if h_off < PREAMBLE_SIZE or h_off + h_len != f_len:
            raise FormatError(f"header [{h_off}, {h_off + h_len}) does not end the {f_len}-byte file", offset=16)
        return cls(alignment, h_off, h_len, h_crc, f_len, major, minor)


class Layout:
    """Where the parts of a .ddz go (spec/ddz.md section 1): the one calculator the Writer, the
    video pack planner and the accountant share.

    The preamble takes bytes ``[0, 64)``; each section starts at the next multiple of
    ``alignment`` after the previous one (zero padding between); the header follows the last
    section with no padding and ends the file.
    """

    def __init__(self, alignment: int = DEFAULT_ALIGNMENT):
        self.alignment = alignment
        self.end = PREAMBLE_SIZE  # first byte after the last placed section

    def next_offset(self) -> int:
        """Where the next section will start."""
        return align_up(self.end, self.alignment)

    def place(self, length: int) -> int:
        """Place a section of ``length`` stored bytes; returns its offset."""
        offset = self.next_offset()
        self.end = offset + length
        return offset

    def file_length(self, header_length: int) -> int:
        """Total file size once a header of ``header_length`` bytes follows the sections."""
        return self.end + header_length


@dataclass(frozen=True)
class Region:
    """A byte range of a file: ``kind`` is preamble, section, padding or header."""

    kind: str
    name: str
    offset: int
    length: int


def regions(sections: list[tuple[str, int, int]], header_offset: int, header_length: int, file_length: int) -> list[Region]:
    """Every byte of a file, in order: the preamble, each ``(name, offset, length)`` section,
    the zero padding before each, the header and any bytes after it. Raises
    :class:`FormatError` for overlapping sections."""
    out = [Region("preamble", "preamble", 0, PREAMBLE_SIZE)]
    pos = PREAMBLE_SIZE
    for name, offset, length in sorted(sections, key=lambda s: s[1]):
        if offset < pos:
            raise FormatError(f"section {name!r} overlaps the previous one", offset=offset)
        if offset > pos:
            out.append(Region("padding", f"padding before {name}", pos, offset - pos))
        out.append(Region("section", name, offset, length))
        pos = offset + length
    if header_offset < pos:
        raise FormatError("the header overlaps the last section", offset=header_offset)
    if header_offset > pos:
        out.append(Region("padding", "padding before header", pos, header_offset - pos))
    out.append(Region("header", "header", header_offset, header_length))
    end = header_offset + header_length
    if file_length > end:
        out.append(Region("padding", "trailing bytes", end, file_length - end))
    return out
