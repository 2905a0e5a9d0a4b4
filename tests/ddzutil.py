"""Helpers shared by the container tests: rebuild a file around an edited header."""

from __future__ import annotations

import json

import numpy as np

from codec.format import Writer
from codec.format import open as ddz_open
from codec.format.layout import PREAMBLE_SIZE, Preamble, crc32


def split(raw: bytes) -> tuple[Preamble, dict]:
    pre = Preamble.from_bytes(raw[:PREAMBLE_SIZE], len(raw))
    return pre, json.loads(raw[pre.header_offset:])


def with_header(raw: bytes, header: dict | bytes) -> bytes:
    """The same sections with a new header and a preamble whose CRCs and lengths match it."""
    pre, _ = split(raw)
    body = raw[: pre.header_offset]
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    new = Preamble(pre.alignment, pre.header_offset, len(h), crc32(h), pre.header_offset + len(h))
    return new.to_bytes() + body[PREAMBLE_SIZE:] + h


def rewrite(src, dst, edits=None, meta_edit=None):
    """Copy a .ddz section by section (decoded, re-encoded with the same bit width), letting
    ``edits[name](array, bits) -> (array, bits)`` and ``meta_edit(metadata)`` change it on the way."""
    with ddz_open(src) as f, Writer(dst, metadata=json.loads(json.dumps(f.metadata))) as w:
        for info in f.sections:
            a, bits = np.array(f.get(info.name)), info.bits
            if edits and info.name in edits:
                a, bits = edits[info.name](a, bits)
            w.add(info.name, a, bits=bits)
        for name, obj in f.objects.items():
            w.add_object(name, obj["codec"], obj["sections"])
        if meta_edit:
            meta_edit(w.metadata)
    return dst
