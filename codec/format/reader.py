""".ddz reader (spec/ddz.md). Every failure is a DDZError naming section and offset."""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from typing import Any, Iterator, Mapping

import numpy as np
import zstandard

from ..bits import unpack_bits
from ..errors import (ChecksumError, DDZError, FileAccessError, FormatError, InvalidInputError, MemoryLimitError,
                      SectionNotFoundError, UnknownCodecError)
from .arrays import to_device, to_framework
from .header import Header, SectionInfo, parse_header
from .layout import DTYPES, PREAMBLE_SIZE, Preamble, crc32, crc32_of_blocks
from .resources import is_allocation_failure, reserve
from .sets import DDZSet, looks_like_index
from .source import ByteSource, open_source

_CHUNK = 16 << 20
_SCAN = 1 << 20  # streaming zstd checks decode through a buffer of this size
_CACHE_BYTES = 64 << 20  # verified remote bytes kept per open file


def _guard(method):
    """Turn any stray low-level exception into a FormatError naming the file."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except DDZError:
            raise
        except MemoryError as exc:  # numpy's _ArrayMemoryError included
            raise MemoryLimitError(f"{self.path}: out of memory ({exc})") from None
        except RuntimeError as exc:  # torch's allocator
            if is_allocation_failure(exc):
                raise MemoryLimitError(f"{self.path}: out of memory ({str(exc).splitlines()[0][:160]})") from None
            raise
        except (ValueError, OverflowError, IndexError, TypeError, zstandard.ZstdError) as exc:
            raise FormatError(f"{self.path}: {type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise FileAccessError(f"{self.path}: {exc.strerror or exc}") from None

    return wrapper


class DDZFile:
    """An open .ddz file; use :func:`open`. Reads only the preamble and header on open.

    ``path`` is a local path or any fsspec URL (ranged reads: only the bytes asked for are
    fetched, and their CRCs are checked before use; see :mod:`codec.format.source`). A local
    file is read with ``pread`` into arrays the caller owns, so another process truncating or
    rewriting it cannot crash this one (a short read is a TruncatedError); ``zero_copy=True``
    hands out views of a private memory map instead (no copy, but the file must then not be
    truncated while they are alive: that is SIGBUS, as with ``numpy.memmap``). CRCs are checked
    by :meth:`verify`, by ``verify=True`` here (every section, once, on open) or per read by
    ``get``/``get_rows(..., verify=True)`` (on the very bytes decoded).
    """

    def __init__(self, path: Any, *, storage_options: Mapping[str, Any] | None = None, verify: bool = False,
                 zero_copy: bool = False, _head: bytes | None = None):
        self._src = open_source(path, storage_options, zero_copy=zero_copy)
        self.path = self._src.name
        self._cache: OrderedDict[tuple[str, int], bytes | bytearray] = OrderedDict()
        self._cached_bytes = 0
        self._crc_tables: dict[str, np.ndarray] = {}
        try:
            self._load(_head)
            if verify:
                self.verify()
        except BaseException:
            self.close()
            raise

    @_guard
    def _load(self, head: bytes | None) -> None:
        src = self._src
        self.file_size = src.size
        if head is None or len(head) < min(PREAMBLE_SIZE, src.size):
            head = bytes(src.read(0, min(PREAMBLE_SIZE, src.size)))
        pre = Preamble.from_bytes(head[:PREAMBLE_SIZE], src.size)
        self.preamble = pre
        header_bytes = src.read(pre.header_offset, pre.header_length)
        if crc32(header_bytes) != pre.header_crc32:
            raise ChecksumError("header checksum mismatch", offset=pre.header_offset)
        self.header: Header = parse_header(bytes(header_bytes), alignment=pre.alignment, header_offset=pre.header_offset)
        self._by_name = {s.name: s for s in self.header.sections}

    @property
    def source(self) -> ByteSource:
        """Where the bytes come from (``bytes_read``/``requests`` count what was fetched)."""
        return self._src

    @property
    def closed(self) -> bool:
        return self._src.closed

    # -- table -----------------------------------------------------------------------------------
    @property
    def version(self) -> tuple[int, int]:
        return self.preamble.major, self.preamble.minor

    @property
    def alignment(self) -> int:
        return self.preamble.alignment

    @property
    def header_offset(self) -> int:
        return self.preamble.header_offset

    @property
    def header_length(self) -> int:
        return self.preamble.header_length

    @property
    def metadata(self) -> dict:
        return self.header.metadata

    @property
    def objects(self) -> dict:
        return self.header.objects

    @property
    def sections(self) -> tuple[SectionInfo, ...]:
        return self.header.sections

    def keys(self) -> list[str]:
        return [s.name for s in self.header.sections]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._by_name

    def info(self, name: str) -> SectionInfo:
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            raise SectionNotFoundError(f"no section {name!r} in {self.path}") from None

    # -- data --------------------------------------------------------------------------------------
    @_guard
    def get(self, name: str, framework: str = "numpy", device: Any = None, *, verify: bool = False):
        """The whole section, decoded (a raw section is its bytes, in an array of its own, or a view
        of the mapping with ``zero_copy``). ``verify=True`` checks the section's CRC-32 on the
        bytes it decodes first (a ChecksumError when they differ)."""
        info = self.info(name)
        self._check_decodable(info)
        if info.bits is not None or info.zstd:
            reserve(info.decoded_length, f"section {name!r}", section=name)
        if info.bits is not None:
            return self._unpacked(info, 0, info.count, info.shape, framework, device, verify)
        if info.zstd:
            arr = self._inflate(info, check=verify).view(DTYPES[info.dtype]).reshape(info.shape)
        else:
            arr = np.frombuffer(self._stored(info, check=verify), DTYPES[info.dtype], info.count).reshape(info.shape)
        self._check_bool(info, arr)
        return to_framework(arr, info.dtype, framework, device, f"section {name!r}")

    @_guard
    def get_rows(self, name: str, start: int, stop: int, framework: str = "numpy", device: Any = None, *,
                 verify: bool = False):
        """Rows ``start:stop`` of axis 0. Raw and bit-packed sections read only those rows, zstd
        sections decode up to them. ``verify=True`` checks the CRC-32s of the bytes read first:
        the blocks covering the rows when the section has per-block CRCs (spec 4.1.1), else the
        whole section."""
        info = self.info(name)
        self._check_decodable(info)
        if not info.shape:
            raise InvalidInputError(f"section {name!r} is 0-d and has no rows")
        rows = info.shape[0]
        if type(start) is not int or type(stop) is not int or not 0 <= start <= stop <= rows:
            raise InvalidInputError(f"section {name!r}: rows {start}:{stop} outside 0:{rows}")
        per_row = math.prod(info.shape[1:])
        shape = (stop - start, *info.shape[1:])
        if info.bits is not None:
            return self._unpacked(info, start * per_row, (stop - start) * per_row, shape, framework, device, verify)
        row_bytes = per_row * DTYPES[info.dtype].itemsize
        if info.zstd:  # one zstd stream, decoded up to the last byte these rows need, keeping only their bytes
            reserve((stop - start) * row_bytes, f"rows {start}:{stop} of section {name!r}", section=name)
            arr = self._inflate(info, start * row_bytes, stop * row_bytes, check=verify).view(DTYPES[info.dtype]).reshape(shape)
        else:
            arr = np.frombuffer(self._stored(info, start * row_bytes, stop * row_bytes, check=verify), DTYPES[info.dtype],
                                (stop - start) * per_row).reshape(shape)
        self._check_bool(info, arr)
        return to_framework(arr, info.dtype, framework, device, f"section {name!r}")

    @_guard
    def stored_bytes(self, name: str) -> memoryview:
        """The section's bytes exactly as stored (after all encodings)."""
        return memoryview(self._stored(self.info(name)))

    # -- integrity -------------------------------------------------------------------------------
    def problems(self) -> Iterator[DDZError]:
        """Yield every integrity problem: checksums, padding, encoded sizes, value ranges."""
        src = self._live()
        pos = PREAMBLE_SIZE
        for info in self.header.sections:
            try:
                if np.frombuffer(src.view(pos, info.offset - pos), np.uint8).any():
                    yield FormatError("padding before this section is not zero", section=info.name, offset=pos)
                pos = info.offset + info.length
                crc, bad_block = 0, None
                size = info.block_size
                if size:  # one CRC per block; the whole-section CRC is combined from them (each byte read once)
                    table = info.block_crcs()
                    got = np.empty(info.block_count, np.uint32)
                    step = max(size, _CHUNK // size * size)
                    for at, chunk in src.scan(info.offset, info.length, step):
                        first = (at - info.offset) // size
                        for j in range(0, len(chunk), size):
                            got[first + j // size] = crc32(chunk[j: j + size])
                    bad = np.flatnonzero(got != table)
                    bad_block = int(bad[0]) if bad.size else None
                    crc = crc32_of_blocks(got, size, info.length)
                else:
                    for _, chunk in src.scan(info.offset, info.length, _CHUNK):
                        crc = crc32(chunk, crc)
            except FileAccessError as exc:  # a remote source that fails mid-verify: nothing more can be read
                yield exc
                return
            except DDZError as exc:  # e.g. a block table that is not base64
                yield exc
                continue
            if bad_block is not None:
                yield ChecksumError(f"block {bad_block} does not match its CRC-32", section=info.name,
                                    offset=info.offset + bad_block * info.block_size)
            if crc != info.crc32:
                yield ChecksumError(f"CRC-32 {crc:#010x} != stored {info.crc32:#010x}", section=info.name, offset=info.offset)
                continue
            if info.unknown_encoding is not None:
                continue
            try:
                self._deep_check(info)
            except DDZError as exc:
                yield exc
            except Exception as exc:  # noqa: BLE001 - a decoder choking on corrupt input is a finding, not a crash
                yield FormatError(f"{type(exc).__name__}: {exc}", section=info.name, offset=info.offset)

    def verify(self) -> None:
        """Raise the first problem found by :meth:`problems`; return None when the file is sound."""
        for problem in self.problems():
            raise problem

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        self._src.close()
        self._cache.clear()

    def __enter__(self) -> "DDZFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ddz file {self.path!r}: {len(self.header.sections)} sections, {self.file_size} bytes>"

    # -- internals ---------------------------------------------------------------------------------
    def _live(self) -> ByteSource:
        if self._src.closed:
            raise InvalidInputError(f"{self.path} is closed")
        return self._src

    def _stored(self, info: SectionInfo, lo: int = 0, hi: int | None = None, check: bool = False):
        """Stored bytes ``[lo, hi)`` of a section: read from a local file (or a view of its mapping),
        or, from a remote source or with ``check``, fetched and checked against the section's (or
        its blocks') CRCs before use."""
        hi = info.length if hi is None else hi
        src = self._live()
        if not (src.verify_reads or check):
            return src.view(info.offset + lo, hi - lo)
        if hi <= lo:
            return bytearray()
        if info.block_size and (lo, hi) != (0, info.length):
            return self._stored_blocks(info, lo, hi)
        key = (info.name, -1)
        data = self._cache.get(key)
        if data is None:
            data = src.read(info.offset, info.length)
            crc = crc32(data)
            if crc != info.crc32:
                raise ChecksumError(f"fetched bytes have CRC-32 {crc:#010x}, stored {info.crc32:#010x}",
                                    section=info.name, offset=info.offset)
            self._remember(key, data)
        else:
            self._cache.move_to_end(key)
        return bytearray(memoryview(data)[lo:hi])  # a copy: arrays handed out must not share (and let callers edit) the cache

    def _stored_blocks(self, info: SectionInfo, lo: int, hi: int) -> bytearray:
        """Bytes ``[lo, hi)`` of a section with per-block CRCs: only the blocks covering them are
        fetched (the missing ones in one ranged read), each checked against its CRC."""
        size = info.block_size
        first, stop = info.block_span(lo, hi)
        table = self._block_crcs(info)
        missing = [i for i in range(first, stop) if (info.name, i) not in self._cache]
        if missing:
            a, b = missing[0], missing[-1] + 1
            data = self._src.read(info.offset + a * size, min(info.length, b * size) - a * size)
            for i in range(a, b):
                block = bytes(data[(i - a) * size: (i + 1 - a) * size])
                crc = crc32(block)
                if crc != table[i]:
                    raise ChecksumError(f"block {i} fetched with CRC-32 {crc:#010x}, stored {int(table[i]):#010x}",
                                        section=info.name, offset=info.offset + i * size)
                self._remember((info.name, i), block)
        out = bytearray()
        for i in range(first, stop):
            cached = self._cache.get((info.name, i))
            if cached is None:  # evicted by the blocks just fetched (a range larger than the cache)
                return self._stored_blocks_uncached(info, lo, hi)
            self._cache.move_to_end((info.name, i))
            out += cached
        return out[lo - first * size: hi - first * size]

    def _stored_blocks_uncached(self, info: SectionInfo, lo: int, hi: int) -> bytearray:
        size = info.block_size
        first, stop = info.block_span(lo, hi)
        table = self._block_crcs(info)
        data = self._src.read(info.offset + first * size, min(info.length, stop * size) - first * size)
        for i in range(first, stop):
            if crc32(memoryview(data)[(i - first) * size: (i + 1 - first) * size]) != table[i]:
                raise ChecksumError(f"block {i} fetched does not match its CRC-32", section=info.name, offset=info.offset + i * size)
        return data[lo - first * size: hi - first * size]

    def _block_crcs(self, info: SectionInfo) -> np.ndarray:
        table = self._crc_tables.get(info.name)
        if table is None:
            table = self._crc_tables[info.name] = info.block_crcs()
        return table

    def _remember(self, key: tuple[str, int], data: bytes | bytearray) -> None:
        """Keep verified remote bytes in a small LRU (so a section's neighbouring reads do not refetch)."""
        if len(data) > _CACHE_BYTES // 4:
            return
        self._cache[key] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > _CACHE_BYTES:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old)

    def _check_decodable(self, info: SectionInfo) -> None:
        unknown = info.unknown_encoding
        if unknown is not None:
            raise UnknownCodecError(f"encoding {unknown!r} is not supported by this reader", section=info.name, offset=info.offset)

    def _check_bool(self, info: SectionInfo, arr: np.ndarray) -> None:
        if info.dtype == "bool" and arr.size and arr.view(np.uint8).max() > 1:
            raise FormatError("bool section holds a byte other than 0 or 1", section=info.name, offset=info.offset)

    def _zstd_reader(self, info: SectionInfo, check: bool = False):
        src = self._live()
        if check or src.verify_reads or src.zero_copy:  # checked whole, or a view of the mapping
            stored: Any = memoryview(self._stored(info, check=check))
        else:  # read as the decoder consumes it: a range decode holds no more than a chunk of the stream
            stored = _StoredStream(src, info.offset, info.length)
        return zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=True)

    def _inflate(self, info: SectionInfo, lo: int = 0, hi: int | None = None, check: bool = False) -> np.ndarray:
        """zstd-decode bytes ``[lo, hi)`` of the section's packed stream. The whole stream (the
        default) must be exactly ``packed_length`` bytes; a range stops decoding at ``hi`` and
        keeps only its own bytes, so reading the first rows of a bomb costs only those rows."""
        want = info.packed_length
        whole = lo == 0 and hi is None
        hi = want if hi is None else hi
        reader = self._zstd_reader(info, check)
        got = 0
        if lo:
            scratch = memoryview(bytearray(min(lo, _SCAN)))
            while got < lo:
                n = reader.readinto(scratch[: min(len(scratch), lo - got)])
                if n == 0:
                    raise FormatError(f"zstd data decodes to {got} bytes, declared {want}", section=info.name, offset=info.offset)
                got += n
        out = np.empty(hi - lo, np.uint8)
        view = out.data
        pos = 0
        while pos < hi - lo:
            n = reader.readinto(view[pos:])
            if n == 0:
                raise FormatError(f"zstd data decodes to {lo + pos} bytes, declared {want}", section=info.name, offset=info.offset)
            pos += n
        if whole and reader.read(1):
            raise FormatError(f"zstd data decodes to more than the declared {want} bytes", section=info.name, offset=info.offset)
        return out

    def _unpacked(self, info: SectionInfo, start: int, count: int, shape, framework: str, device: Any,
                  check: bool = False):
        """Values ``start .. start+count-1`` of a bit-packed section: only the bytes from the last
        byte-aligned value at or before ``start`` to the last value asked for are read (or, for
        zstd, decoded)."""
        bits = info.bits or 0  # only bit-packed sections come here
        group = 8 // math.gcd(bits, 8)  # values per byte-aligned group
        first = start - start % group
        lo, hi = first * bits // 8, ((start + count) * bits + 7) // 8
        if info.zstd:
            reserve(hi - lo + count * DTYPES[info.dtype].itemsize, f"section {info.name!r}", section=info.name)
            whole = start == 0 and count == info.count  # then the stream must also end where declared
            stream = self._inflate(info, lo, None if whole else hi, check=check)
        else:
            stream = np.frombuffer(self._stored(info, lo, max(lo, hi), check=check), np.uint8)
        start -= first
        np_dtype = DTYPES[info.dtype]
        if framework == "torch":
            import torch

            data = to_device(torch.from_numpy(stream), device, f"section {info.name!r}")
            values = unpack_bits(data, bits, count, start)
            return values.to(getattr(torch, _TORCH_INT[info.dtype])).reshape(shape)
        values = unpack_bits(stream, bits, count, start)
        out = values.astype(np_dtype, copy=False).reshape(shape)
        return to_framework(out, info.dtype, framework, device, f"section {info.name!r}")

    def _deep_check(self, info: SectionInfo) -> None:
        """Decoded size, zero tail bits of a bit-packed stream and bool bytes, streaming (zstd
        sections are decoded through a small buffer, so verify needs no memory per section)."""
        if not info.zstd:  # stored length == packed length (checked at open)
            if info.bits is not None and info.length:  # only the last byte's unused bits can be wrong
                last = info.length - 1
                self._check_stream(info, np.frombuffer(self._stored(info, last, info.length), np.uint8), last)
            elif info.dtype == "bool":
                for lo in range(0, info.length, _SCAN):
                    chunk = self._stored(info, lo, min(info.length, lo + _SCAN))
                    self._check_stream(info, np.frombuffer(chunk, np.uint8), lo)
            return
        want = info.packed_length
        reader = self._zstd_reader(info)
        buf = np.empty(min(max(want, 1), _SCAN), np.uint8)
        got = 0
        while True:
            n = reader.readinto(buf.data)
            if n == 0:
                break
            if got + n > want:
                raise FormatError(f"zstd data decodes to more than the declared {want} bytes", section=info.name, offset=info.offset)
            self._check_stream(info, buf[:n], got)
            got += n
        if got != want:
            raise FormatError(f"zstd data decodes to {got} bytes, declared {want}", section=info.name, offset=info.offset)

    def _check_stream(self, info: SectionInfo, chunk: np.ndarray, at: int) -> None:
        """Checks of a piece ``chunk`` starting at byte ``at`` of the packed stream."""
        if info.bits is not None:
            tail_bits = (info.count * info.bits) % 8
            if tail_bits and at + len(chunk) == info.packed_length and chunk[-1] >> tail_bits:
                raise FormatError("unused bits of the last packed byte are not zero", section=info.name,
                                  offset=info.offset + info.length - 1)
        elif info.dtype == "bool" and chunk.size and chunk.max() > 1:
            raise FormatError("bool section holds a byte other than 0 or 1", section=info.name, offset=info.offset)


class _StoredStream:
    """A section's stored bytes as a file-like object for the zstd decoder, read from the source
    ``_SCAN`` bytes at a time."""

    def __init__(self, src: ByteSource, offset: int, length: int):
        self._src, self._offset, self._end = src, offset, offset + length

    def read(self, size: int = -1) -> bytes | bytearray:
        n = self._end - self._offset if size is None or size < 0 else min(size, _SCAN, self._end - self._offset)
        if n <= 0:
            return b""
        data = self._src.read(self._offset, n)
        self._offset += n
        return data


_TORCH_INT = {"u8": "uint8", "i8": "int8", "u16": "int32", "i16": "int16", "u32": "int64", "i32": "int32",
              "u64": "int64", "i64": "int64"}


def open(path: Any, *, storage_options: Mapping[str, Any] | None = None, verify: bool = False,  # noqa: A001 - mirrors safetensors.safe_open / builtin open
         zero_copy: bool = False):
    """Open a .ddz file, or the JSON index of a sharded set (spec/sets.md), for reading (a
    context manager): a local path or any fsspec URL.  A set is a :class:`~.sets.DDZSet`, which
    reads like one file.  ``verify=True`` also checks every checksum and encoded size before
    returning (one read of the whole file, as ``ddz verify``).  ``zero_copy=True`` (a local
    file): raw sections are views of a memory map, not copies; see :class:`DDZFile`."""
    src = open_source(path, storage_options, zero_copy=zero_copy)
    try:
        head = bytes(src.read(0, min(PREAMBLE_SIZE, src.size)))
    except BaseException:
        src.close()
        raise
    if looks_like_index(head):
        dset = DDZSet(path, storage_options=storage_options, _source=src)
        if verify:
            try:
                dset.verify()
            except BaseException:
                dset.close()
                raise
        return dset
    return DDZFile(src, verify=verify, _head=head)
