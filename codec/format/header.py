"""The JSON header of spec/ddz.md: serialisation and validation of the section table,
the objects table and the free-form metadata."""

from __future__ import annotations

import base64
import gc
import json
import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..errors import FormatError, LimitError
from .layout import (DTYPES, INTEGER_DTYPES, MAX_BLOCK_SIZE, MAX_BLOCKS, MAX_JSON_DEPTH, MAX_NAME_BYTES, MAX_NDIM,
                     MAX_OBJECTS, MAX_SECTIONS, MIN_BLOCK_SIZE, PREAMBLE_SIZE, align_up)

# zstd cannot expand one stored byte into more than this many (an RLE block: 4 bytes -> 128 KiB);
# a declared decoded size above the bound is rejected before any allocation.
ZSTD_MAX_RATIO = 32768


def zstd_bound(stored: int) -> int:
    """Largest ``decoded_length`` a section with a zstd step may declare for ``stored`` bytes
    (spec/ddz.md 4.2): the bound of the whole encoding chain, bit-packing included."""
    return ZSTD_MAX_RATIO * stored + 1024
KNOWN_ENCODINGS = ("bitpack", "zstd")
_CONTROL = re.compile("[\x00-\x1f]")
_MAX_U63 = 1 << 63
ITEMSIZE = {name: dt.itemsize for name, dt in DTYPES.items()}


class SectionInfo(NamedTuple):
    """One row of the section table."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    length: int
    decoded_length: int
    encoding: tuple[dict, ...] = ()
    crc32: int = 0
    block_size: int = 0  # 0: no per-block CRCs (minor 0 form)
    block_crc32: str = ""  # base64 of the little-endian u32 CRC-32 of each block (decoded on use)

    @property
    def count(self) -> int:  # type: ignore[override]  # the element count, not tuple.count
        return math.prod(self.shape)

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

    @property
    def packed_length(self) -> int:
        """Bytes after the array->bytes step (before zstd)."""
        bits = self.bits
        return self.decoded_length if bits is None else (self.count * bits + 7) // 8

    @property
    def block_count(self) -> int:
        return (self.length + self.block_size - 1) // self.block_size if self.block_size else 0

    def block_crcs(self) -> np.ndarray:
        """The per-block CRC-32s (uint32); a FormatError when ``blocks.crc32`` is not valid base64."""
        try:
            raw = base64.b64decode(self.block_crc32, validate=True)
        except (ValueError, TypeError):
            raise FormatError("'blocks.crc32' is not valid base64", section=self.name) from None
        if len(raw) != 4 * self.block_count:
            raise FormatError(f"'blocks.crc32' decodes to {len(raw)} bytes, not 4 x {self.block_count}", section=self.name)
        return np.frombuffer(raw, "<u4")

    def block_span(self, lo: int, hi: int) -> tuple[int, int]:
        """Indices ``[first, last + 1)`` of the CRC blocks covering stored bytes ``[lo, hi)``."""
        return lo // self.block_size, (hi + self.block_size - 1) // self.block_size

    def to_json(self) -> dict:
        doc = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "offset": self.offset,
               "length": self.length, "decoded_length": self.decoded_length,
               "encoding": [dict(s) for s in self.encoding], "crc32": self.crc32}
        if self.block_size:
            doc["blocks"] = {"size": self.block_size, "crc32": self.block_crc32}
        return doc


@dataclass(frozen=True)
class Header:
    sections: tuple[SectionInfo, ...]
    objects: dict[str, dict]
    metadata: dict[str, Any]

    def to_doc(self) -> dict:
        return {"sections": [s.to_json() for s in self.sections], "objects": self.objects, "metadata": self.metadata}

    def to_bytes(self) -> bytes:
        return dump_json(self.to_doc())


def dump_text(doc: Any) -> str:
    """Canonical JSON text: sorted keys, no spaces, no escapes beyond JSON's, no NaN (the writer's only JSON form)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dump_json(doc: Any) -> bytes:
    """:func:`dump_text`, UTF-8 encoded."""
    return dump_text(doc).encode()


def check_name(name: Any, what: str = "section") -> str:
    if not isinstance(name, str) or not name:
        raise FormatError(f"{what} name must be a non-empty string, got {name!r:.60}")
    check_text(name, f"{what} name")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise LimitError(f"{what} name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    if _CONTROL.search(name):
        raise FormatError(f"{what} name {name!r} contains a control character")
    return name


def check_text(s: str, where: str) -> None:
    """``s`` must be Unicode scalar values only: a lone surrogate (``"\\ud800"`` in JSON) cannot be
    written as UTF-8, so every consumer that prints or stores it would fail later."""
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise FormatError(f"{where}: string {s[:40]!r} holds a lone surrogate at character {exc.start}") from None


def check_json_tree(doc: Any, where: str = "header", level: int = 1, strings: bool = True) -> None:
    """The whole-document rules of spec section 4 on (part of) a parsed header: at most
    ``MAX_JSON_DEPTH`` nested objects/arrays, ``doc`` being at ``level`` (the header object
    itself is level 1), and, with ``strings``, every key and string Unicode scalar values."""
    stack = [(doc, level)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_JSON_DEPTH:
                raise LimitError(f"{where} nests deeper than {MAX_JSON_DEPTH} levels")
            for k, v in node.items():
                if strings:
                    check_text(k, where)
                if isinstance(v, (dict, list)):
                    stack.append((v, depth + 1))
                elif strings and isinstance(v, str):
                    check_text(v, where)
        elif isinstance(node, list):
            if depth > MAX_JSON_DEPTH:
                raise LimitError(f"{where} nests deeper than {MAX_JSON_DEPTH} levels")
            for v in node:
                if isinstance(v, (dict, list)):
                    stack.append((v, depth + 1))
                elif strings and isinstance(v, str):
                    check_text(v, where)
        elif strings and isinstance(node, str):
            check_text(node, where)


def _int(value: Any, what: str, name: str, hi: int = (1 << 63) - 1) -> None:
    if type(value) is not int or not 0 <= value <= hi:
        raise FormatError(f"{what} must be an integer in [0, {hi}], got {value!r:.40}", section=name)


def _reject_constant(token: str):
    raise FormatError(f"header contains the non-JSON number {token}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_header(raw: bytes, *, alignment: int, header_offset: int) -> Header:
    """Decode and validate the header bytes; every violation raises a FormatError subclass."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"header is not UTF-8 ({exc.reason} at header byte {exc.start})", offset=header_offset + exc.start) from None
    collect = gc.isenabled() and len(text) > 1 << 20
    if collect:  # a big header is ~10 objects per section entry: collecting while building them triples the time
        gc.disable()
    try:
        return _parse_doc(text, alignment, header_offset)
    finally:
        if collect:
            gc.enable()


_SECTION_FIELDS = frozenset(("name", "dtype", "shape", "offset", "length", "decoded_length", "encoding", "crc32"))


def _parse_doc(text: str, alignment: int, header_offset: int) -> Header:
    try:
        doc = _DECODER.decode(text)
    except RecursionError:
        raise LimitError(f"header JSON nests deeper than {MAX_JSON_DEPTH} levels", offset=header_offset) from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"header is not valid JSON: {exc.msg} at header char {exc.pos}", offset=header_offset) from None
    if not isinstance(doc, dict):
        raise FormatError("header must be a JSON object", offset=header_offset)
    # nesting and strings of the whole header, unknown members and extra keys included; a lone
    # surrogate can only come from a \u escape, so without one only the nesting needs a walk,
    # and section entries (validated flat below) only where they have more than their fields
    try:
        if "\\u" in text:
            check_json_tree(doc)
        else:
            for key, value in doc.items():
                if key != "sections" or not isinstance(value, list):
                    check_json_tree(value, level=2, strings=False)
                else:
                    for entry in value:
                        if isinstance(entry, dict) and (len(entry) > 8 or entry.get("encoding") or entry.keys() - _SECTION_FIELDS):
                            check_json_tree(entry, level=3, strings=False)
    except FormatError as exc:
        raise type(exc)(str(exc), offset=header_offset) from None
    raw_sections = doc.get("sections")
    if not isinstance(raw_sections, list):
        raise FormatError("header has no 'sections' list", offset=header_offset)
    if len(raw_sections) > MAX_SECTIONS:
        raise LimitError(f"{len(raw_sections)} sections exceed the limit of {MAX_SECTIONS}", offset=header_offset)
    sections: list[SectionInfo] = []
    seen: set[str] = set()
    pos = PREAMBLE_SIZE
    for i, entry in enumerate(raw_sections):
        info = _parse_section(entry, i)
        if info.name in seen:
            raise FormatError("duplicate section name", section=info.name)
        seen.add(info.name)
        expected = align_up(pos, alignment)
        if info.offset != expected:
            raise FormatError(f"offset {info.offset} is not the next aligned position {expected}", section=info.name, offset=info.offset)
        pos = info.offset + info.length
        if pos > header_offset:
            raise FormatError(f"section [{info.offset}, {pos}) runs into the header at {header_offset}", section=info.name, offset=info.offset)
        sections.append(info)
    if pos != header_offset:
        raise FormatError(f"{header_offset - pos} unaccounted bytes between the last section and the header", offset=pos)
    objects = _parse_objects(doc.get("objects", {}), seen, header_offset)
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        raise FormatError("'metadata' must be a JSON object", offset=header_offset)
    return Header(tuple(sections), objects, metadata)


def _parse_section(entry: Any, index: int) -> SectionInfo:
    if type(entry) is not dict:
        raise FormatError(f"section table entry {index} is not an object")
    name: Any = entry.get("name")  # checked below; Any for the type checker
    if type(name) is not str or not 0 < len(name) <= MAX_NAME_BYTES // 4 or _CONTROL.search(name):
        try:
            check_name(name)
        except FormatError as exc:
            raise type(exc)(f"section table entry {index}: {exc}") from None
    dtype = entry.get("dtype")
    if dtype not in ITEMSIZE:
        raise FormatError(f"unknown dtype {dtype!r:.40}; known: {', '.join(DTYPES)}", section=name)
    shape = entry.get("shape")
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise FormatError(f"shape must be a list of at most {MAX_NDIM} integers", section=name)
    fields: Any = entry.get("offset"), entry.get("length"), entry.get("decoded_length"), entry.get("crc32")
    offset, length, decoded, crc = fields
    ok = (type(offset) is int and type(length) is int and type(decoded) is int and type(crc) is int
          and 0 <= offset < _MAX_U63 and 0 <= length < _MAX_U63 and 0 <= decoded < _MAX_U63 and 0 <= crc <= 0xFFFFFFFF)
    for d in shape:
        if type(d) is not int or not 0 <= d < _MAX_U63:
            ok = False
    if not ok:
        for d in shape:
            _int(d, "shape dimension", name)
        _int(offset, "offset", name)
        _int(length, "length", name)
        _int(decoded, "decoded_length", name)
        _int(crc, "crc32", name, hi=0xFFFFFFFF)
    shape = tuple(shape)
    encoding = entry.get("encoding", [])
    if not isinstance(encoding, list) or len(encoding) > 8:
        raise FormatError("encoding must be a list of at most 8 codec configs", section=name)
    for step in encoding:
        if not isinstance(step, dict) or not isinstance(step.get("id"), str):
            raise FormatError("every encoding step must be an object with a string 'id'", section=name)
    itemsize = ITEMSIZE[dtype]
    count = math.prod(shape)
    if count * itemsize != decoded:
        raise FormatError(f"decoded_length {decoded} != {count} elements x {itemsize} bytes", section=name)
    block_size, block_crcs = _parse_blocks(entry.get("blocks"), length, name)
    info = SectionInfo(name, dtype, shape, offset, length, decoded, tuple(encoding), crc, block_size, block_crcs)
    if not encoding:
        if length != decoded:
            raise FormatError(f"stored length {length} != decoded length {decoded} of a raw section", section=name, offset=offset)
    elif info.unknown_encoding is None:
        _check_known_encoding(info)
    return info


def _parse_blocks(blocks: Any, length: int, name: str) -> tuple[int, str]:
    """The optional ``blocks`` member (minor 1): ``{"size": B, "crc32": base64}``, one CRC-32 per
    ``B`` stored bytes (the last block may be shorter).  Only sizes are checked here (so a header
    with many blocks opens in time independent of their number); the CRCs decode on use."""
    if blocks is None:
        return 0, ""
    if type(blocks) is not dict:
        raise FormatError("'blocks' must be an object {size, crc32}", section=name)
    size, crcs = blocks.get("size"), blocks.get("crc32")
    if type(size) is not int or not MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE or size & (size - 1):
        raise FormatError(f"block size must be a power of two in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}], got {size!r:.20}", section=name)
    count = (length + size - 1) // size
    if count > MAX_BLOCKS:
        raise LimitError(f"{count} blocks exceed the limit of {MAX_BLOCKS} per section", section=name)
    if type(crcs) is not str or len(crcs) != 4 * ((4 * count + 2) // 3) or length == 0:
        raise FormatError(f"'blocks.crc32' must be the base64 of ceil({length} / {size}) = {count} CRC-32s "
                          "(and length > 0)", section=name)
    return size, crcs


def _check_known_encoding(info: SectionInfo) -> None:
    ids = [s["id"] for s in info.encoding]
    if ids not in ([], ["bitpack"], ["zstd"], ["bitpack", "zstd"]):
        raise FormatError(f"encoding chain {ids} is not one of [], [bitpack], [zstd], [bitpack, zstd]", section=info.name)
    if "bitpack" in ids:
        bits = info.encoding[0].get("bits")
        if type(bits) is not int or not 1 <= bits <= 32:
            raise FormatError(f"bitpack bits must be an integer in [1, 32], got {bits!r:.20}", section=info.name)
        if info.dtype not in INTEGER_DTYPES or bits > 8 * DTYPES[info.dtype].itemsize:
            raise FormatError(f"bitpack at {bits} bits cannot decode to dtype {info.dtype}", section=info.name)
    if info.zstd:
        # the bound covers the whole chain: bit-packing after zstd must not multiply it (1-bit u64: 64x more)
        if info.decoded_length > zstd_bound(info.length):
            raise LimitError(f"declared size {info.decoded_length} exceeds the format's bound of {zstd_bound(info.length)} "
                             f"for {info.length} zstd bytes", section=info.name, offset=info.offset)
    elif info.length != info.packed_length:
        raise FormatError(f"stored length {info.length} != expected {info.packed_length}", section=info.name, offset=info.offset)


def _parse_objects(objects: Any, section_names: set[str], header_offset: int) -> dict[str, dict]:
    if not isinstance(objects, dict):
        raise FormatError("'objects' must be a JSON object", offset=header_offset)
    if len(objects) > MAX_OBJECTS:
        raise LimitError(f"{len(objects)} objects exceed the limit of {MAX_OBJECTS}", offset=header_offset)
    for name, obj in objects.items():
        check_name(name, "object")
        if not isinstance(obj, dict) or not isinstance(obj.get("codec"), dict) or not isinstance(obj["codec"].get("id"), str):
            raise FormatError(f"object {name!r} needs a 'codec' object with a string 'id'", offset=header_offset)
        parts = obj.get("sections")
        if not isinstance(parts, dict):
            raise FormatError(f"object {name!r} needs a 'sections' object", offset=header_offset)
        for part, sec in parts.items():
            if sec not in section_names:
                raise FormatError(f"object {name!r} part {part!r} names missing section {sec!r:.60}", offset=header_offset)
        if not isinstance(obj.get("must_understand", True), bool):
            raise FormatError(f"object {name!r}: 'must_understand' must be a boolean", offset=header_offset)
    return objects
