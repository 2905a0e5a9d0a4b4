"""Streaming, atomic, deterministic .ddz writer (spec/ddz.md)."""

from __future__ import annotations

import math
import os
import weakref
from typing import Any, Mapping

import numpy as np
import zstandard

from ..bits import BitStreamPacker
from ..errors import FileAccessError, FormatError, InvalidInputError
from .arrays import as_path, to_storage
from .files import make_temp, remove_quietly, umask
from .header import Header, SectionInfo, check_json_tree, check_name, dump_text, zstd_bound
from .layout import (DEFAULT_ALIGNMENT, DEFAULT_BLOCK_SIZE, DTYPES, INTEGER_DTYPES, MAX_ALIGNMENT, MAX_BLOCK_SIZE,
                     MAX_HEADER_LENGTH, MAX_NDIM, MAX_OBJECTS, MAX_SECTIONS, MIN_ALIGNMENT, MIN_BLOCK_SIZE,
                     MINOR_BLOCKS, PREAMBLE_SIZE, Layout, Preamble, crc32, encode_block_crcs, keeps_blocks)


class Writer:
    """Append sections to a new .ddz file, then publish it atomically.

    A section longer than ``block_size`` bytes (default 64 KiB) also gets one CRC-32 per block
    (spec/ddz.md 4.1, minor 1), so a reader fetching part of it remotely can check what it
    fetched; ``block_size=None`` writes none (and a minor-0 file).

    Data goes to a temporary file beside ``path`` as it arrives (nothing is held in
    memory); ``close()`` writes the header, fsyncs and renames it over ``path``. If the
    ``with`` block raises (KeyboardInterrupt included), the temporary file is removed and
    ``path`` is untouched. The same calls produce byte-identical files.
    """

    def __init__(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None, *, alignment: int = DEFAULT_ALIGNMENT,
                 block_size: int | None = DEFAULT_BLOCK_SIZE):
        if type(alignment) is not int or not MIN_ALIGNMENT <= alignment <= MAX_ALIGNMENT or alignment & (alignment - 1):
            raise InvalidInputError(f"alignment must be a power of two in [{MIN_ALIGNMENT}, {MAX_ALIGNMENT}], got {alignment!r}")
        if block_size is not None and (type(block_size) is not int or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE
                                       or block_size & (block_size - 1)):
            raise InvalidInputError(f"block_size must be None or a power of two in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}], got {block_size!r}")
        self.path = as_path(path)
        self.alignment = alignment
        self._layout = Layout(alignment)
        self.block_size = block_size
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._sections: list[SectionInfo] = []
        self._names: set[str] = set()
        self._objects: dict[str, dict] = {}
        self._open_section: SectionWriter | None = None
        self._done = False
        # .{name}.XXXXXXXX.tmp beside the target, locked while open; a writer killed before
        # publishing leaves it behind, and the next Writer for this target removes it
        fd, self._tmp = make_temp(self.path)
        self._cleanup = weakref.finalize(self, remove_quietly, self._tmp)
        self._f = os.fdopen(fd, "wb")
        self._pos = 0
        self._write(bytes(PREAMBLE_SIZE))

    # -- sections ---------------------------------------------------------------------------
    def add(self, name: str, array: Any, *, bits: int | None = None, zstd: int | None = None) -> SectionInfo:
        """Write one whole array (numpy or torch, any shape including 0-d) as a section."""
        arr, dtype = to_storage(array, f"section {name!r}")
        sec = self.section(name, dtype, arr.shape[1:] if arr.ndim else (), bits=bits, zstd=zstd, _shape=arr.shape)
        with sec:
            sec._append(arr if arr.ndim else arr.reshape(1), dtype)
        return self._sections[-1]

    def section(self, name: str, dtype: str, row_shape=(), *, bits: int | None = None, zstd: int | None = None, _shape=None) -> "SectionWriter":
        """Open a section that grows along axis 0 by ``append``; only one may be open at a time."""
        self._check_open()
        if self._open_section is not None:
            raise InvalidInputError(f"section {self._open_section.name!r} is still open; close it before starting {name!r}")
        _check_new_name(name, self._names, MAX_SECTIONS, "section")
        if dtype not in DTYPES:
            raise InvalidInputError(f"section {name!r}: unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        if not isinstance(row_shape, (tuple, list)) or len(row_shape) + 1 > MAX_NDIM \
                or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in row_shape):
            raise InvalidInputError(f"section {name!r}: row shape must be at most {MAX_NDIM - 1} integers >= 0, got {row_shape!r}")
        row_shape = tuple(int(d) for d in row_shape)
        if bits is not None:
            if dtype not in INTEGER_DTYPES or type(bits) is not int or not 1 <= bits <= min(32, 8 * DTYPES[dtype].itemsize):
                raise InvalidInputError(f"section {name!r}: cannot bit-pack dtype {dtype} at bits={bits!r}")
        if zstd is not None and (type(zstd) is not int or not -7 <= zstd <= 22):
            raise InvalidInputError(f"section {name!r}: zstd level must be an integer in [-7, 22], got {zstd!r}")
        self._write(bytes(self._layout.next_offset() - self._pos))
        self._names.add(name)
        self._open_section = SectionWriter(self, name, dtype, row_shape, bits, zstd, _shape)
        return self._open_section

    def add_object(self, name: str, config: Mapping[str, Any], sections: Mapping[str, str], *, must_understand: bool = True) -> None:
        """Record that sections ``sections`` (part -> section name) encode object ``name`` with codec ``config``."""
        self._check_open()
        _check_new_name(name, self._objects, MAX_OBJECTS, "object")
        if not isinstance(config, Mapping) or not isinstance(config.get("id"), str):
            raise InvalidInputError(f"object {name!r}: codec config must have a string 'id'")
        missing = [s for s in sections.values() if s not in self._names]
        if missing:
            raise InvalidInputError(f"object {name!r} names sections not written yet: {missing}")
        self._objects[name] = {"codec": dict(config), "sections": dict(sections), "must_understand": bool(must_understand)}

    # -- publishing ---------------------------------------------------------------------------
    def close(self) -> str:
        """Write the header, fsync and atomically rename to ``path``. Returns the path."""
        self._check_open()
        if self._open_section is not None:
            raise InvalidInputError(f"section {self._open_section.name!r} is still open")
        try:
            try:
                # the reader's whole-header nesting rule (section entries are flat); UTF-8 refuses lone surrogates
                check_json_tree({"objects": self._objects, "metadata": self.metadata}, strings=False)
                header = dump_text(Header(tuple(self._sections), self._objects, self.metadata).to_doc()).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidInputError(f"metadata or codec configs hold a lone surrogate ({exc.object[exc.start:exc.end]!r}), "
                                        "which UTF-8 cannot store") from None
            except FormatError as exc:
                raise InvalidInputError(f"metadata or codec configs: {exc}") from None
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"metadata or codec configs are not JSON-serialisable: {exc}") from None
            if len(header) > MAX_HEADER_LENGTH:
                raise InvalidInputError(f"header of {len(header)} bytes exceeds {MAX_HEADER_LENGTH}")
            header_offset = self._layout.end
            self._write(header)
            minor = MINOR_BLOCKS if any(s.block_size for s in self._sections) else 0
            pre = Preamble(self.alignment, header_offset, len(header), crc32(header), self._layout.file_length(len(header)),
                           minor=minor)
            self._f.seek(0)
            self._f.write(pre.to_bytes())
            self._f.flush()
            os.fchmod(self._f.fileno(), 0o666 & ~umask())  # mkstemp made it 0600; publish like open() would
            os.fsync(self._f.fileno())
            os.replace(self._tmp, self.path)  # still holding the temp's flock: a new Writer's clean-up cannot take it
            self._f.close()
        except OSError as exc:  # disk full at the last flush, fsync or rename: one clean error, no file left
            self.abort()
            raise FileAccessError(f"writing {self.path!r} failed: {exc.strerror or exc}") from None
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._cleanup.detach()
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        return self.path

    def abort(self) -> None:
        """Discard everything written; ``path`` is left as it was. Never raises: closing may
        fail to flush the buffered tail (disk full), which no longer matters."""
        self._done = True
        try:
            if not self._f.closed:
                self._f.close()
        except OSError:
            pass
        finally:
            self._cleanup()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif not self._done:
            self.abort()

    # -- internals ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._done:
            raise InvalidInputError(f"writer for {self.path!r} is already closed")

    def _write(self, data) -> None:
        try:
            self._f.write(data)
        except OSError as exc:
            self.abort()
            raise FileAccessError(f"writing {self.path!r} failed: {exc.strerror}") from None
        self._pos += memoryview(data).nbytes

    def _finish_section(self, info: SectionInfo) -> None:
        self._layout.place(info.length)
        self._sections.append(info)
        self._open_section = None


class SectionWriter:
    """A section being written; obtained from :meth:`Writer.section`."""

    def __init__(self, writer: Writer, name: str, dtype: str, row_shape: tuple, bits, zstd, shape):
        self.name, self.dtype, self.row_shape, self.bits = name, dtype, row_shape, bits
        self._w = writer
        self._shape = None if shape is None else tuple(int(d) for d in shape)
        self._offset = writer._pos
        self._rows = 0
        self._crc = 0
        self._packer = BitStreamPacker(bits) if bits is not None else None
        self._zstd_level = zstd
        self._zstd = zstandard.ZstdCompressor(level=zstd).compressobj() if zstd is not None else None
        self._closed = False
        self._block_size = writer.block_size or 0
        self._blocks: list[int] = []
        self._block_crc = 0
        self._block_fill = 0

    def append(self, chunk: Any) -> None:
        """Append rows: ``chunk`` has shape ``(rows, *row_shape)`` and this section's dtype."""
        if self._closed:
            raise InvalidInputError(f"section {self.name!r} is closed")
        self._append(*to_storage(chunk, f"section {self.name!r}"))

    def _append(self, arr: np.ndarray, dtype: str) -> None:
        if dtype != self.dtype:
            raise InvalidInputError(f"section {self.name!r} is {self.dtype}, got a {dtype} chunk")
        if arr.ndim != len(self.row_shape) + 1 or arr.shape[1:] != self.row_shape:
            raise InvalidInputError(f"section {self.name!r}: chunk shape {arr.shape} does not match (rows, *{self.row_shape})")
        self._rows += arr.shape[0]
        flat = arr.reshape(-1)
        if self._packer is not None:
            self._emit(self._packer.feed(flat))
        else:
            self._emit(flat.view(np.uint8))

    def close(self) -> SectionInfo:
        if self._closed:
            raise InvalidInputError(f"section {self.name!r} is closed")
        self._closed = True
        if self._packer is not None:
            self._emit(self._packer.finish())
        if self._zstd is not None:
            self._store(self._zstd.flush())
        shape = self._shape if self._shape is not None else (self._rows, *self.row_shape)
        itemsize = DTYPES[self.dtype].itemsize
        encoding = []
        if self.bits is not None:
            encoding.append({"id": "bitpack", "bits": self.bits})
        if self._zstd_level is not None:
            encoding.append({"id": "zstd", "level": self._zstd_level})
        length = self._w._pos - self._offset
        if self._block_fill:
            self._blocks.append(self._block_crc)
        keep = keeps_blocks(length, self._block_size)
        info = SectionInfo(self.name, self.dtype, shape, self._offset, length, math.prod(shape) * itemsize,
                           tuple(encoding), self._crc, self._block_size if keep else 0,
                           encode_block_crcs(self._blocks) if keep else "")
        if self._zstd is not None and info.decoded_length > zstd_bound(info.length):
            self._w.abort()  # a reader must refuse it (spec 4.2: the bound covers bit-packing too)
            raise InvalidInputError(f"section {self.name!r}: {info.decoded_length:,} bytes compress to {info.length:,}, "
                                    f"beyond the format's bound of {zstd_bound(info.length):,}; store it with zstd alone or bit-packing alone")
        self._w._finish_section(info)
        return info

    def __enter__(self) -> "SectionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True
            self._w.abort()

    def _emit(self, data) -> None:
        if len(data) == 0:
            return
        self._store(self._zstd.compress(data) if self._zstd is not None else data)

    def _store(self, data) -> None:
        if len(data):
            self._crc = crc32(data, self._crc)
            if self._block_size:
                self._feed_blocks(memoryview(data).cast("B"))
            self._w._write(data)

    def _feed_blocks(self, view: memoryview) -> None:
        pos, n, size = 0, len(view), self._block_size
        while pos < n:
            take = min(n - pos, size - self._block_fill)
            self._block_crc = crc32(view[pos: pos + take], self._block_crc)
            self._block_fill += take
            pos += take
            if self._block_fill == size:
                self._blocks.append(self._block_crc)
                self._block_crc = self._block_fill = 0


def _check_new_name(name: Any, taken, limit: int, what: str) -> None:
    try:
        check_name(name, what)
    except FormatError as exc:
        raise InvalidInputError(str(exc)) from None
    if name in taken:
        raise InvalidInputError(f"duplicate {what} name {name!r}")
    if len(taken) >= limit:
        raise InvalidInputError(f"more than {limit} {what}s")


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_file(tensors: Mapping[str, Any], path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> str:
    """Write ``{name: array}`` (numpy arrays or torch tensors) to a .ddz at ``path``, like safetensors' save_file."""
    if not isinstance(tensors, Mapping):
        raise InvalidInputError(f"tensors must be a mapping of name -> array, got {type(tensors).__name__}")
    with Writer(path, metadata) as w:
        for name, value in tensors.items():
            w.add(name, value)
    return os.fspath(path)
