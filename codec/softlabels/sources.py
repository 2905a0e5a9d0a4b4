"""Mini-batch sources for streaming VQ training and encoding.

A source yields float tensors of shape (rows, C).  Three kinds cover data larger than RAM:

* :class:`ArraySource` -- a numpy array, ``np.memmap`` or torch tensor.  Batches are
  contiguous row blocks visited in a seeded random block order, so a memmap is read
  sequentially within each batch.
* :class:`DDZSource` -- one section of a .ddz file, read with ``get_rows``.
* :class:`IterSource` -- a callable returning a fresh iterable of batches (each epoch calls it again).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import InvalidInputError


class Source:
    classes: int
    rows: int | None  # None when unknown (iterators)

    def batches(self, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def sequential(self, chunk: int) -> Iterator[torch.Tensor]:
        """All rows in order (for encoding), at most ``chunk`` rows at a time."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the source opened itself (a .ddz file opened from a path)."""

    def row_range(self, start: int, stop: int) -> "Source":
        """Rows ``start:stop`` as a source of their own (one rank's share in sharded encoding)."""
        if not hasattr(self, "_slice") or self.rows is None:
            raise InvalidInputError(f"{type(self).__name__} has no random access; sharded encoding needs an "
                                    "array, memmap or .ddz section")
        if not 0 <= start <= stop <= self.rows:
            raise InvalidInputError(f"rows {start}:{stop} outside 0:{self.rows}")
        return RowRange(self, start, stop)


class RowRange(Source):
    """Rows ``start:stop`` of a random-access source (read in order)."""

    def __init__(self, base: Source, start: int, stop: int):
        self.base, self.start, self.stop = base, start, stop
        self.rows, self.classes = stop - start, base.classes

    def sequential(self, chunk):
        for s in range(self.start, self.stop, chunk):
            yield self.base._slice(s, min(self.stop, s + chunk))


def _to_tensor(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    a = np.asarray(a)
    if a.dtype.kind not in "f":
        raise InvalidInputError(f"soft-label source must hold floating point values, got {a.dtype}")
    return torch.from_numpy(np.array(a, copy=True) if not a.flags.writeable else np.ascontiguousarray(a))


def _release(data, s: int, e: int) -> None:
    """Drop the pages of rows s:e of a file-backed np.memmap from this process's resident set
    (madvise MADV_DONTNEED; the kernel page cache keeps them), so streaming a memmap larger
    than RAM keeps RSS at O(chunk).  Not for a copy-on-write memmap (``mode="c"``), whose
    dropped pages would lose the caller's in-memory changes."""
    if not isinstance(data, np.memmap) or data.mode == "c" or e <= s or not hasattr(os, "sysconf"):
        return
    try:
        import ctypes

        page = os.sysconf("SC_PAGE_SIZE")
        row = data.strides[0]
        a0 = data.ctypes.data + s * row
        a1 = data.ctypes.data + e * row
        lo = a0 - a0 % page
        hi = a1 - a1 % page  # keep the (shared) last partial page
        if hi > lo:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # MADV_DONTNEED
    except Exception:  # noqa: BLE001 - madvise is advisory only
        pass


class ArraySource(Source):
    def __init__(self, data: Any):
        if not isinstance(data, (np.ndarray, torch.Tensor)):
            raise InvalidInputError(f"ArraySource needs a numpy array, memmap or torch tensor, got {type(data).__name__}")
        if data.ndim != 2:
            raise InvalidInputError(f"soft labels must be 2-D (rows, classes), got shape {tuple(data.shape)}")
        self.data = data
        self.rows, self.classes = int(data.shape[0]), int(data.shape[1])

    def _slice(self, s: int, e: int) -> torch.Tensor:
        return _to_tensor(self.data[s:e])

    def batches(self, batch_size, generator):
        nb = (self.rows + batch_size - 1) // batch_size
        order = torch.randperm(nb, generator=generator) if generator is not None else torch.arange(nb)
        for b in order.tolist():
            s, e = b * batch_size, min(self.rows, (b + 1) * batch_size)
            out = self._slice(s, e)
            _release(self.data, s, e)
            yield out

    def sample(self, n, generator):
        n = min(n, self.rows)
        idx = torch.randperm(self.rows, generator=generator)[:n].sort().values.numpy()
        if isinstance(self.data, torch.Tensor):
            return self.data[torch.from_numpy(idx)]
        if not isinstance(self.data, np.memmap):
            return _to_tensor(self.data[idx])
        # a memmap: gather in sorted groups and drop each group's pages right away (random
        # page faults map read-around pages too; one fancy index over a 6 GB file touched 4 GB)
        parts = []
        for g in range(0, len(idx), 256):
            sel = idx[g:g + 256]
            parts.append(np.array(self.data[sel]))
            _release(self.data, int(sel[0]), int(sel[-1]) + 1)
        return _to_tensor(np.concatenate(parts) if parts else np.zeros((0, self.classes), self.data.dtype))

    def sequential(self, chunk):
        for s in range(0, self.rows, chunk):
            e = min(self.rows, s + chunk)
            out = self._slice(s, e)
            _release(self.data, s, e)
            yield out


class DDZSource(Source):
    """Rows of a 2-D section of a .ddz (raw, bit-packed or zstd)."""

    def __init__(self, file: Any, section: str):
        from ..format import DDZFile, open as ddz_open

        self._owned = not isinstance(file, DDZFile)
        self.file = ddz_open(file) if self._owned else file
        info = self.file.info(section)
        if len(info.shape) != 2:
            self.close()
            raise InvalidInputError(f"section {section!r} must be 2-D (rows, classes), has shape {info.shape}")
        self.section = section
        self.rows, self.classes = int(info.shape[0]), int(info.shape[1])

    def _slice(self, s, e):
        return _to_tensor(self.file.get_rows(self.section, s, e))

    def close(self) -> None:
        if self._owned:
            self.file.close()

    def batches(self, batch_size, generator):
        nb = (self.rows + batch_size - 1) // batch_size
        order = torch.randperm(nb, generator=generator) if generator is not None else torch.arange(nb)
        for b in order.tolist():
            yield self._slice(b * batch_size, min(self.rows, (b + 1) * batch_size))

    def sequential(self, chunk):
        for s in range(0, self.rows, chunk):
            yield self._slice(s, min(self.rows, s + chunk))

    def sample(self, n, generator):
        n = min(n, self.rows)
        # blocks of 256 rows at random positions: few reads, still spread over the file
        blk = 256
        nb = (self.rows + blk - 1) // blk
        take = torch.randperm(nb, generator=generator)[: max(1, (n + blk - 1) // blk)].sort().values.tolist()
        out = torch.cat([self._slice(b * blk, min(self.rows, (b + 1) * blk)) for b in take])
        return out[:n]


class IterSource(Source):
    def __init__(self, factory: Callable[[], Iterable[Any]], classes: int | None = None):
        if not callable(factory):
            raise InvalidInputError("IterSource needs a callable returning an iterable of (rows, C) batches")
        self.factory = factory
        self.rows = None
        self.classes = classes  # type: ignore[assignment]  # found from the first batch just below when None
        if classes is None:
            first = next(iter(factory()), None)
            if first is None:
                raise InvalidInputError("IterSource: the iterator yields no batches")
            t = _to_tensor(first)
            if t.ndim != 2:
                raise InvalidInputError(f"IterSource batch has shape {tuple(t.shape)}, expected (rows, classes)")
            self.classes = int(t.shape[1])

    def _iter(self):
        for b in self.factory():
            t = _to_tensor(b)
            if t.ndim != 2 or t.shape[1] != self.classes:
                raise InvalidInputError(f"IterSource batch has shape {tuple(t.shape)}, expected (rows, {self.classes})")
            yield t

    def batches(self, batch_size, generator):
        """Consecutive ``batch_size``-row batches (the last may be short).  Rows of a large
        incoming batch are yielded as slices at an offset; only the pieces that straddle a
        batch boundary are concatenated, so the work is linear in the rows."""
        pend, have = [], 0
        for t in self._iter():
            n, off = int(t.shape[0]), 0
            if have:
                need = batch_size - have
                if n < need:
                    pend.append(t)
                    have += n
                    continue
                pend.append(t[:need])
                yield torch.cat(pend)
                pend, have, off = [], 0, need
            while n - off >= batch_size:
                yield t[off:off + batch_size]
                off += batch_size
            if off < n:
                pend, have = [t[off:]], n - off
        if have:
            yield torch.cat(pend)

    def sample(self, n, generator):
        got, have = [], 0
        for t in self._iter():
            got.append(t)
            have += t.shape[0]
            if have >= n:
                break
        return torch.cat(got)[:n]

    def sequential(self, chunk):
        return self.batches(chunk, None)


def as_source(x: Any, section: str | None = None) -> Source:
    """numpy/memmap/tensor -> ArraySource; (DDZFile or path, section) -> DDZSource;
    callable -> IterSource; an existing Source is returned as is."""
    if isinstance(x, Source):
        return x
    if section is not None:
        return DDZSource(x, section)
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return ArraySource(x)
    if callable(x):
        return IterSource(x)
    raise InvalidInputError(f"cannot use {type(x).__name__} as a soft-label source "
                            "(give an array/memmap/tensor, a .ddz path plus section=, or a callable returning batches)")


@contextmanager
def opened_source(x: Any, section: str | None = None) -> Iterator[Source]:
    """``as_source(x, section)``, closed on exit if it was made here (not a Source passed in)."""
    src = as_source(x, section)
    try:
        yield src
    finally:
        if src is not x:
            src.close()
