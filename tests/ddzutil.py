"""Helpers shared by the tests and tools/fuzz_campaign.py: rebuild a file around an edited header; a
small replay archive's augmentation records."""

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


def replay_records(classes: int, batch: int, seed: int):
    """``recs`` for ``write_replay_archive``: 2 epochs x 3 steps of ``batch`` random logits over
    ``classes``, one step each without mixing, with CutMix and with Mixup (seeded)."""
    import torch

    from codec.softlabels.augment import BatchRecord

    def recs():
        g = torch.Generator().manual_seed(seed)
        for e in range(2):
            for s in range(3):
                mt = ("none", "cutmix", "mixup")[s]
                yield BatchRecord(e, s, torch.randn(batch, classes, generator=g),
                                  torch.rand(batch, 4, generator=g) * .5 + .25, torch.rand(batch, generator=g) > .5,
                                  torch.arange(batch) + s, mt, torch.randperm(batch, generator=g) if mt != "none" else None,
                                  0.3 if mt != "none" else None, [1, 1, 5, 5] if mt == "cutmix" else None)

    return recs
