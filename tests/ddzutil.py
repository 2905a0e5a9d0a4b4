"""Helpers shared by the container tests: rebuild a file around an edited header."""

from __future__ import annotations

import json

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
