"""Where a .ddz's bytes come from: a local file (``pread``, or a memory map when asked for) or ranged
reads of any fsspec URL.

The reader (:mod:`codec.format.reader`) parses and verifies through this one small interface, so
the same code reads a local file, an ``https://`` / ``s3://`` URL or any other fsspec target:

* ``size``: the total byte count, known on open;
* ``read(offset, length)``: exactly ``length`` bytes as a fresh writable ``bytearray``, or a
  :class:`~codec.errors.TruncatedError` / :class:`~codec.errors.FileAccessError`;
* ``view(offset, length)``: the same bytes, without a copy where the source maps them
  (``zero_copy``), else in a fresh buffer the caller owns (64-byte aligned for a local file);
* ``verify_reads``: whether readers check CRCs of what they fetch before using it (a remote
  source: bytes crossed a network); a local file is checked by ``verify`` (or a reader's
  ``verify=True``) instead;
* ``close()``; ``bytes_read`` and ``requests`` count what was fetched (for tests and benches).

Every failure of the backing store (a missing file, an HTTP error, a server that stops
mid-read) is turned into a :class:`~codec.errors.DDZError` here, so nothing from ``os``,
fsspec or aiohttp escapes a reader.  Another backend (e.g. ``pread`` without a mapping) is one
more subclass of :class:`ByteSource`.
"""

from __future__ import annotations

import mmap
import os
import re
from typing import Any, Iterator, Mapping

import numpy as np

from ..errors import DDZError, FileAccessError, InvalidInputError, TruncatedError

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(target: Any) -> bool:
    """True for ``"scheme://..."`` strings, which are opened through fsspec."""
    return isinstance(target, str) and _URL.match(target) is not None


class ByteSource:
    """Random-access bytes of one file (see the module docstring)."""

    name: str
    size: int
    zero_copy = False
    verify_reads = True

    def __init__(self) -> None:
        self.bytes_read = 0
        self.requests = 0

    def read(self, offset: int, length: int) -> bytearray:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedError(f"{self.name}: bytes [{offset}, {offset + length}) lie past the end ({self.size} bytes)",
                                 offset=offset)
        if length == 0:
            return bytearray()
        data = self._read(offset, length)
        if len(data) != length:
            raise TruncatedError(f"{self.name}: got {len(data)} of {length} bytes at offset {offset}", offset=offset)
        self.bytes_read += length
        self.requests += 1
        return data

    def view(self, offset: int, length: int):
        return self.read(offset, length)

    def scan(self, offset: int, length: int, step: int) -> Iterator[tuple[int, Any]]:
        """``(position, bytes)`` of ``[offset, offset + length)`` in pieces of ``step`` bytes, each
        valid only until the next one is asked for (for checksumming a whole file)."""
        for at in range(offset, offset + length, step):
            yield at, self.view(at, min(step, offset + length - at))

    def _read(self, offset: int, length: int) -> bytearray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False


class LocalFileSource(ByteSource):
    """A local file, read with ``pread`` into buffers the caller owns.

    Nothing handed out points into the file, so another process truncating or rewriting it in
    place (``open(path, "wb")``, ``truncate -s 0``) while arrays from it are alive cannot kill
    the reader with SIGBUS: a read that comes back short is a :class:`TruncatedError`, and
    changed bytes are caught by a checked read.  ``zero_copy=True`` makes :meth:`view` a window
    of a private (copy-on-write) memory map instead, with no copy at all; the caller then
    promises that the file is not truncated while those views are alive (as with
    ``numpy.memmap`` or safetensors), since touching a page past the new end raises SIGBUS.
    """

    verify_reads = False

    def __init__(self, path: str, zero_copy: bool = False):
        super().__init__()
        self.name = path
        self.zero_copy = bool(zero_copy)
        self._mm: mmap.mmap | None = None
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            raise FileAccessError(f"cannot open {path!r}: {exc.strerror}") from None
        try:
            self.size = os.fstat(self._fd).st_size
        except OSError as exc:
            os.close(self._fd)
            self._fd = -1
            raise FileAccessError(f"cannot stat {path!r}: {exc.strerror}") from None

    def _read(self, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        got = self._fill(memoryview(buf), offset)
        return buf if got == length else buf[:got]  # short: the base class reports the truncation

    def _fill(self, out: memoryview, offset: int) -> int:
        """``pread`` into ``out`` until it is full or the file ends; returns the bytes read."""
        self._check_open()
        got = 0
        try:
            while got < len(out):
                if hasattr(os, "preadv"):
                    n = os.preadv(self._fd, [out[got:]], offset + got)
                else:  # pragma: no cover - Windows and macOS before 11
                    chunk = os.pread(self._fd, len(out) - got, offset + got)
                    n = len(chunk)
                    out[got: got + n] = chunk
                if n == 0:
                    break
                got += n
        except OSError as exc:
            raise FileAccessError(f"reading {self.name!r} at offset {offset + got}: {exc.strerror}") from None
        return got

    def scan(self, offset: int, length: int, step: int) -> Iterator[tuple[int, Any]]:
        if self.zero_copy:
            yield from super().scan(offset, length, step)
            return
        buf = np.empty(min(step, length), np.uint8).data  # one buffer for the whole scan: no page faults per piece
        for at in range(offset, offset + length, step):
            n = min(step, offset + length - at)
            got = self._fill(buf[:n], at)
            if got != n:
                raise TruncatedError(f"{self.name}: the file ends at {at + got} bytes, not {self.size} as when it was "
                                     "opened (truncated or rewritten by another process?)", offset=at + got)
            self.bytes_read += n
            self.requests += 1
            yield at, buf[:n]

    def view(self, offset: int, length: int):
        """The bytes in a fresh, writable, 64-byte aligned buffer (``zero_copy``: a writable,
        copy-on-write view of the mapping; the file itself is never modified)."""
        self._check_open()
        if not self.zero_copy:
            if offset < 0 or length < 0 or offset + length > self.size:
                raise TruncatedError(f"{self.name}: bytes [{offset}, {offset + length}) lie past the end", offset=offset)
            raw = np.empty(length + 63, np.uint8)
            start = -raw.ctypes.data % 64
            out = raw[start: start + length].data
            got = self._fill(out, offset)
            if got != length:
                raise TruncatedError(f"{self.name}: the file ends at {offset + got} bytes, not {self.size} as when it was "
                                     "opened (truncated or rewritten by another process?)", offset=offset + got)
            self.bytes_read += length
            self.requests += 1
            return out
        if self._mm is None:
            try:
                self._mm = mmap.mmap(self._fd, 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as exc:
                raise FileAccessError(f"cannot map {self.name!r}: {exc}") from None
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedError(f"{self.name}: bytes [{offset}, {offset + length}) lie past the end", offset=offset)
        return memoryview(self._mm)[offset: offset + length]

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # arrays still view the mapping; it is unmapped when they are freed
            self._mm = None
        os.close(self._fd)
        self._fd = -1

    def __del__(self) -> None:  # a source nobody closed must not keep its descriptor (the mapping frees itself)
        if getattr(self, "_fd", -1) >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _check_open(self) -> None:
        if self._fd < 0:
            raise InvalidInputError(f"{self.name} is closed")


class FsspecSource(ByteSource):
    """Ranged reads of an fsspec URL (``https://``, ``s3://``, ``gs://``, ``file://``, ...).

    Each ``read`` is one ranged request (``fs.cat_file(path, start, end)``); a response of the
    wrong length (a server ignoring ``Range``, a connection closed mid-body) is an error, never
    silently short data.  ``storage_options`` go to the fsspec filesystem (credentials,
    ``client_kwargs={"timeout": aiohttp.ClientTimeout(...)}`` for HTTP, ...); without
    ``client_kwargs`` an HTTP(S) read fails after 60 s without data (30 s to connect).
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        super().__init__()
        self.name = url
        self._closed = False
        try:
            import fsspec
        except ImportError:
            raise FileAccessError(f"{url}: reading URLs needs fsspec (pip install 'ddz[remote]')") from None
        options = dict(storage_options or {})
        if url.split("://", 1)[0].lower() in ("http", "https") and "client_kwargs" not in options:
            options["client_kwargs"] = {"timeout": _http_timeout()}  # a stalled server is an error, not a hang
        try:
            self._fs, self._path = fsspec.core.url_to_fs(url, **options)
        except ImportError as exc:  # the protocol's backend (aiohttp, s3fs, ...) is not installed
            raise FileAccessError(f"{url}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - an unknown protocol or bad options, in the backend's own types
            raise FileAccessError(f"{url}: cannot open ({type(exc).__name__}: {exc})") from None
        size = self._call("size", self._fs.size, self._path)
        if type(size) is not int or size < 0:
            raise FileAccessError(f"{url}: the server does not report the file's size")
        self.size = size

    def _read(self, offset: int, length: int) -> bytearray:
        if self._closed:
            raise InvalidInputError(f"{self.name} is closed")
        data = self._call(f"read of bytes [{offset}, {offset + length})", self._fs.cat_file, self._path,
                          start=offset, end=offset + length)
        if len(data) != length and len(data) == self.size:
            raise FileAccessError(f"{self.name}: the server ignored a Range request (sent the whole file); "
                                  "ranged reads need a server that honours Range")
        return bytearray(data)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DDZError:
            raise
        except FileNotFoundError as exc:
            raise FileAccessError(f"{self.name}: not found ({str(exc)[:200]})") from None
        except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types (aiohttp, botocore, ...)
            raise FileAccessError(f"{self.name}: {what} failed ({type(exc).__name__}: {str(exc)[:200]})") from None

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed


HTTP_CONNECT_TIMEOUT, HTTP_READ_TIMEOUT = 30.0, 60.0


def _http_timeout():
    import aiohttp

    return aiohttp.ClientTimeout(total=None, sock_connect=HTTP_CONNECT_TIMEOUT, sock_read=HTTP_READ_TIMEOUT)


def open_source(target: Any, storage_options: Mapping[str, Any] | None = None, zero_copy: bool = False) -> ByteSource:
    """A :class:`ByteSource` for a local path (``zero_copy``: memory-mapped views) or a
    ``scheme://`` URL (fsspec)."""
    if isinstance(target, ByteSource):
        return target
    if is_url(target):
        return FsspecSource(target, storage_options)
    if storage_options:
        raise InvalidInputError("storage_options apply to URLs only")
    from .arrays import as_path

    return LocalFileSource(as_path(target), zero_copy=zero_copy)
