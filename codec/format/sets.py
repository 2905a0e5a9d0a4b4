"""Sharded .ddz sets (spec/sets.md): N ordinary .ddz shards plus one JSON index, read as one file.

The index names the shards (with the length and header CRC-32 that pin each one), lists every
section once with its global shape and the row range each shard holds, and carries the objects
table and metadata once.  :class:`DDZSet` answers the read API of :class:`~.reader.DDZFile`
(``keys``, ``info``, ``get``, ``get_rows`` across shard boundaries, ``objects``, ``metadata``,
``problems``/``verify``) and opens a shard only when a read needs it, so a process reading some
rows opens only the shards holding them.  No ML here.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from ..errors import (ChecksumError, DDZError, FileAccessError, FormatError, InvalidInputError, LimitError,
                      SectionNotFoundError, ShardError)
from .header import (ITEMSIZE, KNOWN_ENCODINGS, _CONTROL, _parse_objects, check_json_tree, check_name,
                     dump_json)
from .files import make_temp, remove_quietly, umask
from .layout import DTYPES, MAX_HEADER_LENGTH, MAX_NDIM, MAX_SECTIONS, crc32
from .source import ByteSource, is_url, open_source

SET_FORMAT = "ddz-set"
SET_VERSION = 1
SET_META_KEY = "ddz_set"  # in each shard's own metadata: {"set_id", "shard", "shards"}
MAX_SHARDS = 1 << 16
MAX_INDEX_LENGTH = MAX_HEADER_LENGTH
_SET_ID = re.compile(r"[0-9a-f]{32}")


class SetSection(NamedTuple):
    """One section of a set: its global shape and the rows each shard holds (``pieces``:
    ``(shard, start, stop)`` in row order)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: tuple[dict, ...]
    pieces: tuple[tuple[int, int, int], ...]

    @property
    def decoded_length(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]

    @property
    def bits(self) -> int | None:
        for step in self.encoding:
            if step.get("id") == "bitpack":
                return step["bits"]
        return None

    @property
    def zstd(self) -> bool:
        return any(step.get("id") == "zstd" for step in self.encoding)

    @property
    def unknown_encoding(self) -> str | None:
        for step in self.encoding:
            if step.get("id") not in KNOWN_ENCODINGS:
                return str(step.get("id"))
        return None

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "encoding": [dict(s) for s in self.encoding], "pieces": [list(p) for p in self.pieces]}


class ShardRecord(NamedTuple):
    name: str  # a file name beside the index
    file_length: int
    header_crc32: int

    def to_json(self) -> dict:
        return {"name": self.name, "file_length": self.file_length, "header_crc32": self.header_crc32}


def new_set_id() -> str:
    """A fresh random set id (128 bits, 32 lowercase hex digits)."""
    return uuid.uuid4().hex


def shard_metadata(set_id: str, shard: int, shards: int) -> dict:
    """What each shard's own metadata carries under ``"ddz_set"``, so a stray shard is recognised."""
    _check_set_id(set_id, InvalidInputError)
    return {SET_META_KEY: {"set_id": set_id, "shard": int(shard), "shards": int(shards)}}


def shard_name(stem: str, shard: int, shards: int) -> str:
    """``STEM-00001-of-00004.ddz``."""
    return f"{stem}-{shard:05d}-of-{shards:05d}.ddz"


def _check_set_id(set_id: Any, err=FormatError) -> str:
    if not isinstance(set_id, str) or not _SET_ID.fullmatch(set_id):
        raise err(f"set_id must be 32 lowercase hex digits, got {set_id!r:.60}")
    return set_id


def index_crc32(doc: Mapping[str, Any]) -> int:
    """CRC-32 of the canonical JSON (sorted keys, no whitespace, UTF-8) of the index without ``crc32``."""
    return crc32(dump_json({k: v for k, v in doc.items() if k != "crc32"}))


# ------------------------------------------------------------------------------------------------
# the index: parse + validate
# ------------------------------------------------------------------------------------------------
class SetIndex(NamedTuple):
    set_id: str
    shards: tuple[ShardRecord, ...]
    sections: tuple[SetSection, ...]
    objects: dict
    metadata: dict

    def to_bytes(self) -> bytes:
        doc = {"format": SET_FORMAT, "version": SET_VERSION, "set_id": self.set_id,
               "shards": [s.to_json() for s in self.shards], "sections": [s.to_json() for s in self.sections],
               "objects": self.objects, "metadata": self.metadata}
        doc["crc32"] = index_crc32(doc)
        return dump_json(doc)


def _nonneg(v: Any, what: str, hi: int = (1 << 63) - 1) -> int:
    if type(v) is not int or not 0 <= v <= hi:
        raise FormatError(f"{what} must be an integer in [0, {hi}], got {v!r:.40}")
    return v


def parse_index(raw: bytes, where: str = "index") -> SetIndex:
    """Decode and validate a set index (spec/sets.md); every violation is a FormatError."""
    if len(raw) > MAX_INDEX_LENGTH:
        raise LimitError(f"{where}: index of {len(raw)} bytes exceeds {MAX_INDEX_LENGTH}")
    try:
        doc = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise LimitError(f"{where}: index JSON nests too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{where}: the set index is not UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != SET_FORMAT:
        raise FormatError(f"{where}: not a ddz set index (no \"format\": \"{SET_FORMAT}\")")
    check_json_tree(doc, where)  # the header's rules, once, on the whole index: nesting, no lone surrogates
    if doc.get("version") != SET_VERSION:
        raise FormatError(f"{where}: set index version {doc.get('version')!r:.20} is not supported (this reader: {SET_VERSION})")
    if type(doc.get("crc32")) is not int or index_crc32(doc) != doc["crc32"]:
        raise ChecksumError(f"{where}: index checksum mismatch (the index was edited or damaged)")
    set_id = _check_set_id(doc.get("set_id"))
    shards_doc = doc.get("shards")
    if not isinstance(shards_doc, list) or not 1 <= len(shards_doc) <= MAX_SHARDS:
        raise FormatError(f"{where}: 'shards' must list 1..{MAX_SHARDS} shards")
    shards, seen = [], set()
    for i, s in enumerate(shards_doc):
        if not isinstance(s, dict):
            raise FormatError(f"{where}: shard {i} is not an object")
        name = check_name(s.get("name"), "shard")
        if "/" in name or "\\" in name or name in (".", "..") or _CONTROL.search(name):
            raise FormatError(f"{where}: shard name {name!r} must be a plain file name beside the index")
        if name in seen:
            raise FormatError(f"{where}: shard {name!r} listed twice")
        seen.add(name)
        shards.append(ShardRecord(name, _nonneg(s.get("file_length"), f"shard {i} file_length"),
                                  _nonneg(s.get("header_crc32"), f"shard {i} header_crc32", 0xFFFFFFFF)))
    secs_doc = doc.get("sections")
    if not isinstance(secs_doc, list) or len(secs_doc) > MAX_SECTIONS:
        raise FormatError(f"{where}: 'sections' must be a list of at most {MAX_SECTIONS}")
    sections, names = [], set()
    for entry in secs_doc:
        sec = _parse_set_section(entry, len(shards))
        if sec.name in names:
            raise FormatError(f"{where}: duplicate section", section=sec.name)
        names.add(sec.name)
        sections.append(sec)
    objects = _parse_objects(doc.get("objects", {}), names, 0)
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        raise FormatError(f"{where}: 'metadata' must be a JSON object")
    return SetIndex(set_id, tuple(shards), tuple(sections), objects, metadata)


def _reject_constant(token: str):
    raise FormatError(f"set index contains the non-JSON number {token}")


def _parse_set_section(entry: Any, nshards: int) -> SetSection:
    if not isinstance(entry, dict):
        raise FormatError("set section entry is not an object")
    name = check_name(entry.get("name"))
    dtype = entry.get("dtype")
    if dtype not in DTYPES:
        raise FormatError(f"unknown dtype {dtype!r:.40}", section=name)
    shape = entry.get("shape")
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise FormatError(f"shape must be a list of at most {MAX_NDIM} integers", section=name)
    shape = tuple(_nonneg(d, f"section {name!r} shape dimension") for d in shape)
    encoding = entry.get("encoding", [])
    if not isinstance(encoding, list) or len(encoding) > 8 or not all(
            isinstance(s, dict) and isinstance(s.get("id"), str) for s in encoding):
        raise FormatError("encoding must be a list of at most 8 objects with a string 'id'", section=name)
    pieces = entry.get("pieces")
    if not isinstance(pieces, list) or not 1 <= len(pieces) <= nshards:
        raise FormatError(f"'pieces' must list 1..{nshards} [shard, start, stop] row ranges", section=name)
    rows = shape[0] if shape else 1
    out, pos, last = [], 0, -1
    for p in pieces:
        if not (isinstance(p, list) and len(p) == 3 and all(type(v) is int for v in p)):
            raise FormatError(f"piece {p!r:.60} is not [shard, start, stop]", section=name)
        shard, a, b = p
        if not last < shard < nshards:
            raise FormatError(f"piece shard {shard} is not a later shard in 0..{nshards - 1}", section=name)
        if a != pos or b < a:
            raise FormatError(f"piece rows [{a}, {b}) do not continue at row {pos}", section=name)
        if not shape and len(pieces) != 1:
            raise FormatError("a 0-d section is one piece", section=name)
        out.append((shard, a, b))
        pos, last = b, shard
    if pos != rows:
        raise FormatError(f"pieces cover rows [0, {pos}) of {rows}", section=name)
    return SetSection(name, dtype, shape, tuple(encoding), tuple(out))


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
def looks_like_index(head: bytes) -> bool:
    return head.lstrip()[:1] == b"{"


class DDZSet:
    """A sharded set opened through its index; use :func:`codec.format.open`."""

    def __init__(self, path: Any, *, storage_options: Mapping[str, Any] | None = None, _source: ByteSource | None = None):
        src = _source if _source is not None else open_source(path, storage_options)
        self.path = src.name
        self.storage_options = dict(storage_options or {})
        try:
            if src.size > MAX_INDEX_LENGTH:
                raise LimitError(f"{self.path}: index of {src.size} bytes exceeds {MAX_INDEX_LENGTH}")
            raw = bytes(src.read(0, src.size))
        finally:
            src.close()
        self.index_length = len(raw)
        self.index = parse_index(raw, self.path)
        self.set_id = self.index.set_id
        self._by_name = {s.name: s for s in self.index.sections}
        self._files: dict[int, Any] = {}
        self._zstd_cache: dict[tuple[int, str], Any] = {}
        self._pid = os.getpid()
        self._closed = False

    # -- table -------------------------------------------------------------------------------------
    @property
    def metadata(self) -> dict:
        return self.index.metadata

    @property
    def objects(self) -> dict:
        return self.index.objects

    @property
    def sections(self) -> tuple[SetSection, ...]:
        return self.index.sections

    @property
    def shards(self) -> tuple[ShardRecord, ...]:
        return self.index.shards

    @property
    def opened_shards(self) -> list[int]:
        """Shards this process has opened so far (a reader of some rows opens only theirs)."""
        return sorted(self._files)

    @property
    def closed(self) -> bool:
        return self._closed

    def keys(self) -> list[str]:
        return [s.name for s in self.index.sections]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._by_name

    def info(self, name: str) -> SetSection:
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            raise SectionNotFoundError(f"no section {name!r} in set {self.path}") from None

    def shard_path(self, i: int) -> str:
        name = self.index.shards[i].name
        if is_url(self.path):
            return self.path.rsplit("/", 1)[0] + "/" + name
        return os.path.join(os.path.dirname(self.path), name)

    # -- shards --------------------------------------------------------------------------------------
    def shard(self, i: int):
        """Shard ``i`` as an open, index-checked :class:`~.reader.DDZFile` (opened on first use)."""
        if self._closed:
            raise InvalidInputError(f"set {self.path} is closed")
        if self._pid != os.getpid():  # forked: the parent's handles are not ours
            self._files, self._zstd_cache, self._pid = {}, {}, os.getpid()
        f = self._files.get(i)
        if f is None:
            f = self._files[i] = self._open_shard(i)
        return f

    def _open_shard(self, i: int):
        from .reader import DDZFile

        rec = self.index.shards[i]
        where = f"set {self.path}: shard {i} {rec.name!r}"
        try:
            f = DDZFile(self.shard_path(i), storage_options=self.storage_options or None)
        except FileAccessError as exc:
            raise FileAccessError(f"{where} is missing or unreadable: {exc}") from None
        except DDZError as exc:
            raise type(exc)(f"{where}: {exc}") from None
        try:
            self._check_shard(i, f, where)
        except BaseException:
            f.close()
            raise
        return f

    def _check_shard(self, i: int, f, where: str) -> None:
        rec = self.index.shards[i]
        meta = f.metadata.get(SET_META_KEY)
        if not isinstance(meta, dict) or meta.get("set_id") != self.set_id:
            got = meta.get("set_id") if isinstance(meta, dict) else None
            raise ShardError(f"{where} belongs to set {got!r}, not {self.set_id!r} (a shard from another set)")
        if f.file_size != rec.file_length:
            raise ShardError(f"{where} has {f.file_size} bytes, the index says {rec.file_length} (truncated or replaced)")
        if f.preamble.header_crc32 != rec.header_crc32:
            raise ShardError(f"{where}: header CRC-32 {f.preamble.header_crc32:#010x} != the index's "
                             f"{rec.header_crc32:#010x} (the shard was replaced or rewritten)")
        if meta.get("shard") != i or meta.get("shards") != len(self.index.shards):
            raise ShardError(f"{where} says it is shard {meta.get('shard')!r} of {meta.get('shards')!r}, "
                             f"the index lists it as {i} of {len(self.index.shards)}")
        expected = {s.name: (s, p) for s in self.index.sections for p in s.pieces if p[0] == i}
        extra = [n for n in f.keys() if n not in expected]
        if extra:
            raise ShardError(f"{where} holds sections the index does not list: {extra[:5]}")
        for name, (sec, (_, a, b)) in expected.items():
            if name not in f:
                raise ShardError(f"{where} lacks section {name!r}", section=name)
            info = f.info(name)
            rows = info.shape[0] if info.shape else 1
            if info.dtype != sec.dtype or tuple(info.shape[1:]) != tuple(sec.shape[1:]) or len(info.shape) != len(sec.shape) \
                    or list(info.encoding) != list(sec.encoding) or rows != b - a:
                raise ShardError(f"{where}: section is {info.dtype} {list(info.shape)} {list(info.encoding)}, the index "
                                 f"says rows [{a}, {b}) of {sec.dtype} {list(sec.shape)} {list(sec.encoding)}", section=name)

    # -- data ------------------------------------------------------------------------------------------
    def get(self, name: str, framework: str = "numpy", device: Any = None):
        sec = self.info(name)
        if not sec.shape:
            return self.shard(sec.pieces[0][0]).get(name, framework, device)
        return self.get_rows(name, 0, sec.shape[0], framework, device)

    def get_rows(self, name: str, start: int, stop: int, framework: str = "numpy", device: Any = None):
        """Rows ``start:stop`` (global row ids) of axis 0, read from the shards that hold them."""
        sec = self.info(name)
        if not sec.shape:
            raise InvalidInputError(f"section {name!r} is 0-d and has no rows")
        rows = sec.shape[0]
        if type(start) is not int or type(stop) is not int or not 0 <= start <= stop <= rows:
            raise InvalidInputError(f"section {name!r}: rows {start}:{stop} outside 0:{rows}")
        parts = [self._piece_rows(sec, shard, max(a, start) - a, min(b, stop) - a, framework, device)
                 for shard, a, b in sec.pieces if max(a, start) < min(b, stop)]
        if not parts:  # an empty range: zero rows of the first piece, typed as any read
            parts.append(self._piece_rows(sec, sec.pieces[0][0], 0, 0, framework, device))
        if len(parts) == 1:
            return parts[0]
        if framework == "torch":
            import torch

            return torch.cat(parts)
        return np.concatenate(parts)

    def _piece_rows(self, sec: SetSection, shard: int, s: int, e: int, framework: str, device: Any):
        f = self.shard(shard)
        if not sec.zstd:
            return f.get_rows(sec.name, s, e, framework, device)
        key = (shard, sec.name)  # a zstd piece is one stream: decode once, then slice
        full = self._zstd_cache.get(key)
        if full is None:
            full = self._zstd_cache[key] = f.get(sec.name)
        from .arrays import to_framework

        return to_framework(np.ascontiguousarray(full[s:e]), sec.dtype, framework, device, f"section {sec.name!r}")

    # -- integrity ---------------------------------------------------------------------------------------
    def problems(self) -> Iterator[DDZError]:
        """Every problem of the set: each shard against the index, then each shard's own problems."""
        for i, rec in enumerate(self.index.shards):
            try:
                f = self.shard(i)
            except DDZError as exc:
                yield exc
                continue
            for p in f.problems():
                yield type(p)(f"shard {i} {rec.name!r}: {p}")

    def verify(self) -> None:
        for problem in self.problems():
            raise problem

    # -- lifecycle ----------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files, self._zstd_cache = {}, {}
        self._closed = True

    def __enter__(self) -> "DDZSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ddz set {self.path!r}: {len(self.index.shards)} shards, {len(self.index.sections)} sections>"


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def write_set_index(path: str | os.PathLike, shard_paths: Sequence[str | os.PathLike], *, set_id: str,
                    objects: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None) -> str:
    """Write the index of a set whose shards are already written (beside ``path``, in row order).

    Each shard must carry ``shard_metadata(set_id, i, N)``.  A section present in several shards
    is row-partitioned (concatenated along axis 0 in shard order; dtype, row shape and encoding
    must agree); one present in a single shard is stored there whole.  ``objects``/``metadata``
    are the set's (written once, here).  The index is published atomically.
    """
    from .reader import DDZFile

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    _check_set_id(set_id, InvalidInputError)
    if not 1 <= len(shard_paths) <= MAX_SHARDS:
        raise InvalidInputError(f"a set has 1..{MAX_SHARDS} shards, got {len(shard_paths)}")
    shards: list[ShardRecord] = []
    table: dict[str, dict] = {}
    for i, sp in enumerate(shard_paths):
        sp = os.fspath(sp)
        if os.path.dirname(os.path.abspath(sp)) != folder:
            raise InvalidInputError(f"shard {sp!r} must be in the index's folder {folder!r}")
        with DDZFile(sp) as f:
            meta = f.metadata.get(SET_META_KEY)
            if meta != {"set_id": set_id, "shard": i, "shards": len(shard_paths)}:
                raise InvalidInputError(f"shard {sp!r} carries {SET_META_KEY}={meta!r}, expected shard {i} of "
                                        f"{len(shard_paths)} of set {set_id}")
            shards.append(ShardRecord(os.path.basename(sp), f.file_size, f.preamble.header_crc32))
            for info in f.sections:
                rows = info.shape[0] if info.shape else 1
                t = table.get(info.name)
                if t is None:
                    table[info.name] = {"dtype": info.dtype, "shape": list(info.shape), "encoding": list(info.encoding),
                                        "pieces": [[i, 0, rows]]}
                    continue
                if t["dtype"] != info.dtype or t["shape"][1:] != list(info.shape[1:]) or not info.shape \
                        or t["encoding"] != list(info.encoding):
                    raise InvalidInputError(f"section {info.name!r} differs between shards (dtype, row shape or encoding)")
                start = t["pieces"][-1][2]
                t["pieces"].append([i, start, start + rows])
                t["shape"][0] = start + rows
    sections = tuple(_parse_set_section({"name": n, **t}, len(shards)) for n, t in table.items())
    index = SetIndex(set_id, tuple(shards), sections, dict(objects or {}), dict(metadata or {}))
    try:
        raw = index.to_bytes()
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"objects or metadata are not JSON-serialisable: {exc}") from None
    parse_index(raw, path)  # what we publish must read back
    fd, tmp = make_temp(path)  # locked, beside the target, stale ones of a killed writer removed: as the Writer
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~umask())
            os.fsync(fh.fileno())
            os.replace(tmp, path)  # before closing: the lock is held until the index is published
    except OSError as exc:  # a full disk or a failed fsync/rename: one clean error, nothing left
        remove_quietly(tmp)
        raise FileAccessError(f"writing the set index {path!r} failed: {exc.strerror or exc}") from None
    except BaseException:
        remove_quietly(tmp)
        raise
    return path


__all__ = ["DDZSet", "SetSection", "ShardError", "new_set_id", "shard_metadata", "shard_name", "write_set_index",
           "parse_index", "looks_like_index", "MAX_SHARDS"]
