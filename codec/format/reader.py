"""Zero-copy .ddz reader (spec/ddz.md). Every failure is a DDZError naming section and offset."""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from typing import Any, Iterator, Mapping

import numpy as np
import zstandard

from ..bits import unpack_bits
from ..errors import (ChecksumError, DDZError, FileAccessError, FormatError, InvalidInputError,
                      SectionNotFoundError, UnknownCodecError)
from .arrays import to_device, to_framework
from .header import Header, SectionInfo, parse_header
from .layout import DTYPES, PREAMBLE_SIZE, Preamble, crc32, crc32_of_blocks
from .sets import DDZSet, looks_like_index
from .source import ByteSource, open_source

_CHUNK = 16 << 20
_CACHE_BYTES = 64 << 20  # verified remote bytes kept per open file


def _guard(method):
    """Turn any stray low-level exception into a FormatError naming the file."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except DDZError:
            raise
        except (ValueError, OverflowError, IndexError, TypeError, zstandard.ZstdError) as exc:
            raise FormatError(f"{self.path}: {type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise FileAccessError(f"{self.path}: {exc.strerror or exc}") from None

    return wrapper


class DDZFile:
    """An open .ddz file; use :func:`open`. Reads only the preamble and header on open.

    ``path`` is a local path (memory-mapped: raw sections are zero-copy views, CRCs are checked by
    :meth:`verify`) or any fsspec URL (ranged reads: only the bytes asked for are fetched, and
    their CRCs are checked before use; see :mod:`codec.format.source`).
    """

    def __init__(self, path: Any, *, storage_options: Mapping[str, Any] | None = None, _head: bytes | None = None):
        self._src = open_source(path, storage_options)
        self.path = self._src.name
        self._cache: OrderedDict[tuple[str, int], bytes | bytearray] = OrderedDict()
        self._cached_bytes = 0
        self._crc_tables: dict[str, np.ndarray] = {}
        try:
            self._load(_head)
        except BaseException:
            self._src.close()
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
    def get(self, name: str, framework: str = "numpy", device: Any = None):
        """The whole section, decoded. Raw sections are zero-copy views of the file mapping."""
        info = self.info(name)
        self._check_decodable(info)
        if info.bits is not None:
            return self._unpacked(info, 0, info.count, info.shape, framework, device)
        if info.zstd:
            arr = self._inflate(info).view(DTYPES[info.dtype]).reshape(info.shape)
        else:
            arr = np.frombuffer(self._stored(info), DTYPES[info.dtype], info.count).reshape(info.shape)
        self._check_bool(info, arr)
        return to_framework(arr, info.dtype, framework, device, f"section {name!r}")

    @_guard
    def get_rows(self, name: str, start: int, stop: int, framework: str = "numpy", device: Any = None):
        """Rows ``start:stop`` of axis 0. Raw and bit-packed sections decode only those rows."""
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
            if info.zstd:  # one zstd stream: the whole section is decoded, then sliced
                return self._unpacked(info, 0, info.count, info.shape, framework, device)[start:stop]
            return self._unpacked(info, start * per_row, (stop - start) * per_row, shape, framework, device)
        if info.zstd:  # one zstd stream: fetched and decoded whole
            arr = self._inflate(info).view(DTYPES[info.dtype]).reshape(info.shape)[start:stop]
        else:
            row_bytes = per_row * DTYPES[info.dtype].itemsize
            arr = np.frombuffer(self._stored(info, start * row_bytes, stop * row_bytes), DTYPES[info.dtype],
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
                if any(src.view(pos, info.offset - pos)):
                    yield FormatError("padding before this section is not zero", section=info.name, offset=pos)
                pos = info.offset + info.length
                crc, bad_block = 0, None
                size = info.block_size
                if size:  # one CRC per block; the whole-section CRC is combined from them (each byte read once)
                    table = info.block_crcs()
                    got = np.empty(info.block_count, np.uint32)
                    step = max(size, _CHUNK // size * size)
                    for at in range(info.offset, pos, step):
                        chunk = src.view(at, min(step, pos - at))
                        first = (at - info.offset) // size
                        for j in range(0, len(chunk), size):
                            got[first + j // size] = crc32(chunk[j: j + size])
                    bad = np.flatnonzero(got != table)
                    bad_block = int(bad[0]) if bad.size else None
                    crc = crc32_of_blocks(got, size, info.length)
                else:
                    for at in range(info.offset, pos, _CHUNK):
                        crc = crc32(src.view(at, min(_CHUNK, pos - at)), crc)
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

    def _stored(self, info: SectionInfo, lo: int = 0, hi: int | None = None):
        """Stored bytes ``[lo, hi)`` of a section: a zero-copy view of a local file, or bytes
        fetched from a remote source and checked against the section's CRC before use."""
        hi = info.length if hi is None else hi
        src = self._live()
        if not src.verify_reads:
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
        return memoryview(data)[lo:hi]

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

    def _inflate(self, info: SectionInfo) -> np.ndarray:
        """zstd-decode into a buffer of exactly the declared size; more or less output is an error."""
        want = info.packed_length
        out = np.empty(want, np.uint8)
        reader = zstandard.ZstdDecompressor().stream_reader(memoryview(self._stored(info)), read_across_frames=True)
        got = 0
        view = out.data
        while got < want:
            n = reader.readinto(view[got:])
            if n == 0:
                raise FormatError(f"zstd data decodes to {got} bytes, declared {want}", section=info.name, offset=info.offset)
            got += n
        if reader.read(1):
            raise FormatError(f"zstd data decodes to more than the declared {want} bytes", section=info.name, offset=info.offset)
        return out

    def _unpacked(self, info: SectionInfo, start: int, count: int, shape, framework: str, device: Any):
        if info.zstd:
            stream = self._inflate(info)
        else:  # only the bytes holding values start..start+count-1, from a byte-aligned value on
            b = info.bits or 8  # only bit-packed sections come here
            group = 8 // math.gcd(b, 8)
            first = start - start % group
            lo, hi = first * b // 8, ((start + count) * b + 7) // 8
            stream = np.frombuffer(self._stored(info, lo, max(lo, hi)), np.uint8)
            start -= first
        np_dtype = DTYPES[info.dtype]
        bits = info.bits or 0  # only bit-packed sections come here
        if framework == "torch":
            import torch

            data = to_device(torch.from_numpy(stream), device, f"section {info.name!r}")
            values = unpack_bits(data, bits, count, start)
            return values.to(getattr(torch, _TORCH_INT[info.dtype])).reshape(shape)
        values = unpack_bits(stream, bits, count, start)
        out = values.astype(np_dtype, copy=False).reshape(shape)
        return to_framework(out, info.dtype, framework, device, f"section {info.name!r}")

    def _deep_check(self, info: SectionInfo) -> None:
        stream = self._inflate(info) if info.zstd else np.frombuffer(self._stored(info), np.uint8)
        if info.bits is not None:
            tail_bits = (info.count * info.bits) % 8
            if tail_bits and stream[-1] >> tail_bits:
                raise FormatError("unused bits of the last packed byte are not zero", section=info.name, offset=info.offset + info.length - 1)
        elif info.dtype == "bool":
            self._check_bool(info, stream)


_TORCH_INT = {"u8": "uint8", "i8": "int8", "u16": "int32", "i16": "int16", "u32": "int64", "i32": "int32",
              "u64": "int64", "i64": "int64"}


def open(path: Any, *, storage_options: Mapping[str, Any] | None = None):  # noqa: A001 - mirrors safetensors.safe_open / builtin open
    """Open a .ddz file, or the JSON index of a sharded set (spec/sets.md), for reading (a
    context manager): a local path or any fsspec URL.  A set is a :class:`~.sets.DDZSet`, which
    reads like one file."""
    src = open_source(path, storage_options)
    try:
        head = bytes(src.read(0, min(PREAMBLE_SIZE, src.size)))
    except BaseException:
        src.close()
        raise
    if looks_like_index(head):
        return DDZSet(path, storage_options=storage_options, _source=src)
    return DDZFile(src, _head=head)
