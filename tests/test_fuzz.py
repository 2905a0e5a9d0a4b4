"""The reader under mutation: truncations, bit flips and header-field edits of valid files.

Every open/get/get_rows/verify either succeeds or raises a DDZError, and never hangs. Every
byte of a .ddz is covered by a CRC-32, the preamble's checks or the zero-padding rule, so a
file with any bit flipped must be refused by open() or verify(). Header edits are re-sealed
with correct CRCs so they reach the validation logic.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import codec
from ddzutil import split, with_header

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import fuzz_campaign  # the campaign's list of reader entry points

sys.path.pop(0)


def _base_files(folder) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    a = folder / "mixed.ddz"
    with codec.Writer(a, {"ipc": 1, "labels": ["x", "y"]}) as w:
        w.add("f", rng.standard_normal((3, 4)).astype(np.float32))
        w.add("b", np.array([True, False, True]))
        w.add("s", np.array(7, np.int64))
        w.add("e", np.zeros((0, 2), np.float16))
        w.add_object("obj", {"id": "demo"}, {"f": "f"})
    b = folder / "packed.ddz"
    with codec.Writer(b, alignment=128) as w:
        w.add("idx", rng.integers(0, 1000, 37).astype(np.uint16), bits=10)
        with w.section("grow", "u32", (2,), bits=13, zstd=3) as s:
            s.append(rng.integers(0, 8000, (5, 2)).astype(np.uint32))
            s.append(rng.integers(0, 8000, (4, 2)).astype(np.uint32))
        w.add("z", np.arange(50, dtype=np.float64), zstd=1)
    return {p.name: p.read_bytes() for p in (a, b)}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return _base_files(tmp_path_factory.mktemp("bases"))


CONTAINER_ENTRY_POINTS = ("open/get/get_rows", "verify", "open(verify=True)")
#: A hang guard, not a speed check: a pass over these sub-kilobyte files takes milliseconds.
HANG_LIMIT_S = 60.0


def exercise(path, *, corrupted: bool = False) -> None:
    """Use the container's reader entry points, as the fuzz campaign does (tools/fuzz_campaign.py:
    open/keys/info/get/get_rows, problems + verify, open(verify=True)); only DDZError may escape.
    ``corrupted``: the bytes differ from a valid file, so both verifying entry points must refuse it."""
    start = time.perf_counter()
    refused = set()
    for name, use in fuzz_campaign.entry_points(str(path), str(path) + ".scratch", random.Random(0)):
        if name in CONTAINER_ENTRY_POINTS:
            try:
                use()
            except codec.DDZError as exc:
                assert str(exc)
                refused.add(name)
    assert not corrupted or {"verify", "open(verify=True)"} <= refused, f"a corrupted file passed: {refused}"
    assert time.perf_counter() - start < HANG_LIMIT_S


def test_valid_bases_are_sound(bases, tmp_path):
    for name, raw in bases.items():
        (tmp_path / name).write_bytes(raw)
        with codec.open(tmp_path / name) as f:
            f.verify()


def test_every_truncation(bases, tmp_path):
    for name, raw in bases.items():
        p = tmp_path / name
        for n in range(len(raw)):
            p.write_bytes(raw[:n])
            with pytest.raises(codec.DDZError):
                codec.open(p).close()


@given(name=st.sampled_from(["mixed.ddz", "packed.ddz"]), flips=st.lists(st.integers(0, 1 << 20), min_size=1, max_size=3))
@settings(max_examples=1500, deadline=None)
def test_bit_flips(bases, tmp_path_factory, name, flips):
    raw = bytearray(bases[name])
    for f in flips:
        raw[(f // 8) % len(raw)] ^= 1 << (f % 8)
    p = tmp_path_factory.getbasetemp() / "flip.ddz"
    p.write_bytes(bytes(raw))
    exercise(p, corrupted=bytes(raw) != bases[name])  # two flips of one bit cancel


NASTY = st.one_of(st.integers(-2, 3), st.sampled_from([2**31, 2**32, 2**62, 2**63, 2**64, 10**30, -2**63]),
                  st.floats(allow_nan=False), st.text(max_size=5), st.none(), st.booleans(),
                  st.lists(st.integers(-1, 2**40), max_size=20), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
SECTION_FIELDS = ["name", "dtype", "shape", "offset", "length", "decoded_length", "encoding", "crc32"]
ENCODINGS = st.sampled_from([[], [{"id": "bitpack", "bits": 10}], [{"id": "zstd"}], [{"id": "zstd"}, {"id": "bitpack", "bits": 3}],
                             [{"id": "bitpack", "bits": 0}], [{"id": "bitpack", "bits": 33}], [{"id": "bitpack"}], [{"id": 5}],
                             [{"id": "bitpack", "bits": 1}, {"id": "zstd"}], "zstd"])


@given(name=st.sampled_from(["mixed.ddz", "packed.ddz"]), data=st.data())
@settings(max_examples=1500, deadline=None)
def test_header_field_mutations(bases, tmp_path_factory, name, data):
    raw = bases[name]
    _, header = split(raw)
    kind = data.draw(st.sampled_from(["field", "field", "drop", "encoding", "top", "object", "text"]))
    sections = header["sections"]
    i = data.draw(st.integers(0, len(sections) - 1))
    if kind == "field":
        sections[i][data.draw(st.sampled_from(SECTION_FIELDS))] = data.draw(NASTY)
    elif kind == "drop":
        del sections[i][data.draw(st.sampled_from(SECTION_FIELDS))]
    elif kind == "encoding":
        sections[i]["encoding"] = data.draw(ENCODINGS)
    elif kind == "top":
        header[data.draw(st.sampled_from(["sections", "objects", "metadata"]))] = data.draw(NASTY)
    elif kind == "object":
        header["objects"] = {data.draw(st.text(max_size=4)): data.draw(st.one_of(NASTY, st.just({"codec": {"id": "x"}, "sections": {"p": "nope"}})))}
    blob = json.dumps(header).encode()
    if kind == "text":
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob = blob[:pos] + data.draw(st.binary(min_size=0, max_size=3)) + blob[pos + 1:]
    p = tmp_path_factory.getbasetemp() / "hdr.ddz"
    p.write_bytes(with_header(raw, blob))
    exercise(p)


def test_hostile_headers(bases, tmp_path):
    raw = bases["mixed.ddz"]
    p = tmp_path / "h.ddz"
    cases = [b"[" * 100000, b'{"sections": [], "metadata": ' + b"[" * 40 + b"]" * 40 + b"}", b"\xff\xfe", b"{}",
             b'{"sections": [{"name": "x", "dtype": "f32", "shape": [1152921504606846976, 16], "offset": 64,'
             b' "length": 0, "decoded_length": 0, "encoding": [], "crc32": 0}]}', b'{"sections": NaN}']
    for blob in cases:
        p.write_bytes(with_header(raw, blob))
        with pytest.raises(codec.FormatError):
            codec.open(p)
