"""Golden vectors: the library writes exactly the bytes of tests/golden/tiny.ddz, and
spec/ddz.md's worked example shows exactly those bytes."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

import codec
from codec.format.layout import crc32

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "tiny.ddz"
sys.path.insert(0, str(ROOT / "tools"))
from make_golden import write_tiny  # noqa: E402


def test_writer_reproduces_golden_bytes(tmp_path):
    write_tiny(str(tmp_path / "tiny.ddz"))
    assert (tmp_path / "tiny.ddz").read_bytes() == GOLDEN.read_bytes()


def test_spec_hex_dump_matches_golden():
    spec = (ROOT / "spec" / "ddz.md").read_text()
    lines = re.findall(r"^[0-9a-f]{8}: ((?:[0-9a-f]{2} ?)+)", spec, flags=re.M)
    dumped = bytes.fromhex("".join(line.replace(" ", "") for line in lines))
    assert dumped == GOLDEN.read_bytes()


def test_golden_contents():
    with codec.open(GOLDEN) as f:
        assert f.metadata == {"note": "tiny"}
        np.testing.assert_array_equal(f.get("labels"), [0, 1, 2])
        np.testing.assert_array_equal(f.get("idx"), [1, 2, 3, 4, 5])
        assert bytes(f.stored_bytes("idx")) == b"\xd1\x58"
        f.verify()


def test_crc32_check_value():
    assert crc32(b"123456789") == 0xCBF43926
