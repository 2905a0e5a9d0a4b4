"""Remote reads: a .ddz served over HTTP (tests/rangeserver.py on 127.0.0.1) is read with range
requests, fetching the preamble, the header and only the CRC blocks covering the rows asked
for, each checked; a broken server or broken bytes give codec errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("aiohttp")

import codec
from codec.format import Writer
from rangeserver import RangeServer


@pytest.fixture
def served(tmp_path):
    with RangeServer(tmp_path) as srv:
        yield tmp_path, srv


def _write(path, block_size=4096):
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((3000, 16)).astype(np.float32)  # 192,000 B, 47 blocks
    idx = rng.integers(0, 1 << 11, (30000, 8)).astype(np.uint16)  # 11-bit packed: 330,000 B
    small = np.arange(10, dtype=np.int64)
    with Writer(path, {"note": "remote"}, block_size=block_size) as w:
        w.add("raw", raw)
        w.add("idx", idx, bits=11)
        w.add("small", small)
        w.add("z", np.repeat(small, 1000), zstd=3)
    return raw, idx, small


def test_remote_rows_fetch_only_their_blocks(served):
    root, srv = served
    raw, idx, small = _write(root / "a.ddz")
    size = (root / "a.ddz").stat().st_size
    with codec.open(f"{srv.url}/a.ddz") as f:
        opened = srv.bytes_served
        assert opened == 64 + f.header_length  # preamble + header, nothing else
        assert f.version == (1, 1) and f.info("raw").block_size == 4096 and f.info("small").block_size == 0
        srv.reset()
        np.testing.assert_array_equal(f.get_rows("raw", 1000, 1010), raw[1000:1010])  # 640 B in one block
        assert srv.bytes_served == 4096 and srv.requests == 1
        srv.reset()
        np.testing.assert_array_equal(f.get_rows("idx", 12345, 12400), idx[12345:12400])
        assert 0 < srv.bytes_served <= 2 * 4096
        srv.reset()
        np.testing.assert_array_equal(f.get_rows("idx", 12345, 12400), idx[12345:12400])  # cached, verified blocks
        assert srv.bytes_served == 0
        np.testing.assert_array_equal(f.get("small"), small)  # no blocks: whole section, whole CRC
        np.testing.assert_array_equal(f.get_rows("z", 5, 9000), np.repeat(small, 1000)[5:9000])  # zstd: fetched whole
        np.testing.assert_array_equal(f.get("idx"), idx)
        f.verify()
    assert srv.bytes_served < 2 * size


def test_local_and_file_url_agree(tmp_path):
    raw, idx, _ = _write(tmp_path / "a.ddz")
    with codec.open(tmp_path / "a.ddz") as a, codec.open((tmp_path / "a.ddz").as_uri()) as b:
        assert not a.source.verify_reads and b.source.verify_reads
        for s, e in ((0, 1), (7, 8), (2999, 3000), (123, 2345)):
            np.testing.assert_array_equal(a.get_rows("raw", s, e), b.get_rows("raw", s, e))
            np.testing.assert_array_equal(a.get_rows("idx", s * 10 + 3, e * 10), b.get_rows("idx", s * 10 + 3, e * 10))


def test_corrupt_block_is_caught_on_read_and_by_verify(served):
    root, srv = served
    _write(root / "a.ddz")
    with codec.open(root / "a.ddz") as f:
        at = f.info("raw").offset + 5 * 4096 + 17
    data = bytearray((root / "a.ddz").read_bytes())
    data[at] ^= 0x40
    (root / "a.ddz").write_bytes(bytes(data))
    with codec.open(f"{srv.url}/a.ddz") as f:
        f.get_rows("raw", 0, 300)  # blocks 0-4 are sound
        with pytest.raises(codec.ChecksumError, match="block 5"):
            f.get_rows("raw", 330, 340)
        with pytest.raises(codec.ChecksumError):
            f.get("raw")
        problems = list(f.problems())
        assert any("block 5" in str(p) for p in problems) and len(problems) == 2  # block and whole-section CRC
    with codec.open(root / "a.ddz") as f:  # the local reader's verify finds the same
        assert any("block 5" in str(p) for p in f.problems())


def test_server_failures_are_codec_errors(served):
    root, srv = served
    raw, _, _ = _write(root / "a.ddz")
    with pytest.raises(codec.FileAccessError, match="not found"):
        codec.open(f"{srv.url}/missing.ddz")
    f = codec.open(f"{srv.url}/a.ddz")
    srv.cut_after = srv.bytes_served + 1000  # the server dies 1000 bytes into the next body
    with pytest.raises(codec.DDZError):
        f.get_rows("raw", 0, 3000)
    srv.cut_after = None
    np.testing.assert_array_equal(f.get_rows("raw", 0, 3000), raw)  # the next request is served
    f.close()
    with pytest.raises(codec.InvalidInputError, match="closed"):
        f.get("raw")
    (root / "t.ddz").write_bytes((root / "a.ddz").read_bytes()[:-10])
    with pytest.raises(codec.TruncatedError):
        codec.open(f"{srv.url}/t.ddz")
    with pytest.raises(codec.FileAccessError):
        codec.open("http://127.0.0.1:9/nothing-listens.ddz")
    with pytest.raises(codec.FileAccessError):
        codec.open("nosuchprotocol://x/a.ddz")


def test_minor_zero_files_still_read_and_blocks_are_optional(tmp_path):
    raw, idx, _ = _write(tmp_path / "old.ddz", block_size=None)
    with codec.open(tmp_path / "old.ddz") as f:
        assert f.version == (1, 0) and all(s.block_size == 0 for s in f.sections)
    with codec.open((tmp_path / "old.ddz").as_uri()) as f:  # remote reads of a 1.0 file: whole sections, whole CRC
        np.testing.assert_array_equal(f.get_rows("idx", 5, 10), idx[5:10])
        assert f.source.bytes_read >= f.info("idx").length


@pytest.mark.parametrize("blocks", [{"size": 4096, "crc32": [0] * 47}, {"size": 1000, "crc32": ""}, {"size": 4096},
                                    {"size": 1 << 27, "crc32": "AAAAAA=="}, [], {"size": 4096, "crc32": "AAAA"},
                                    {"size": 4096, "crc32": "!" * 64}])
def test_bad_block_tables_are_format_errors(tmp_path, blocks):
    import json

    from ddzutil import split, with_header

    _write(tmp_path / "a.ddz")
    raw = (tmp_path / "a.ddz").read_bytes()
    _, header = split(raw)
    header["sections"][0]["blocks"] = blocks
    (tmp_path / "b.ddz").write_bytes(with_header(raw, json.dumps(header).encode()))
    with pytest.raises(codec.FormatError, match="block"):
        with codec.open(tmp_path / "b.ddz") as f:  # sizes are checked on open, base64 digits on use
            f.verify()


# -- property tests: the verifying (remote) read path under mutation ---------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def blocked(tmp_path_factory):
    p = tmp_path_factory.mktemp("blocked") / "b.ddz"
    rng = np.random.default_rng(3)
    raw = rng.standard_normal((700, 8)).astype(np.float32)  # 22,400 B: 6 blocks of 4 KiB
    idx = rng.integers(0, 1 << 5, (9000,)).astype(np.uint8)  # 5-bit packed: 5,625 B, 2 blocks
    with Writer(p, block_size=4096) as w:
        w.add("raw", raw)
        w.add("idx", idx, bits=5)
    return p.read_bytes(), raw, idx


@given(a=st.integers(0, 700), n=st.integers(0, 700), b=st.integers(0, 9000), m=st.integers(0, 9000))
@settings(max_examples=150, deadline=None)
def test_ranged_reads_equal_local_reads(blocked, tmp_path_factory, a, n, b, m):
    data, raw, idx = blocked
    p = tmp_path_factory.getbasetemp() / "prop.ddz"
    if not p.exists():
        p.write_bytes(data)
    with codec.open(p.as_uri()) as f:
        e, d = min(700, a + n), min(9000, b + m)
        np.testing.assert_array_equal(f.get_rows("raw", a, e), raw[a:e])
        np.testing.assert_array_equal(f.get_rows("idx", b, d), idx[b:d])
        assert f.source.bytes_read <= 64 + f.header_length + 2 * 4096 + (e - a) * 32 + (d - b) * 5 // 8 + 2 * 4096


@given(flips=st.lists(st.integers(0, 1 << 18), min_size=1, max_size=3), data=st.data())
@settings(max_examples=200, deadline=None)
def test_ranged_reads_under_bit_flips_and_block_edits(blocked, tmp_path_factory, flips, data):
    import json

    from ddzutil import split, with_header

    raw = bytearray(blocked[0])
    if data.draw(st.booleans()):
        for f in flips:
            raw[(f // 8) % len(raw)] ^= 1 << (f % 8)
    else:
        _, header = split(bytes(raw))
        sec = header["sections"][data.draw(st.integers(0, 1))]
        sec["blocks"] = data.draw(st.one_of(
            st.none(), st.integers(), st.text(max_size=3),
            st.fixed_dictionaries({"size": st.sampled_from([0, 4095, 4096, 8192, 1 << 30]),
                                   "crc32": st.one_of(st.lists(st.integers(-1, 2**33), max_size=8),
                                                      st.text(alphabet="AB+/=!", max_size=40))})))
        raw = bytearray(with_header(bytes(raw), json.dumps(header).encode()))
    p = tmp_path_factory.getbasetemp() / "flipped.ddz"
    p.write_bytes(bytes(raw))
    try:
        with codec.open(p.as_uri()) as f:
            for name in f.keys():
                info = f.info(name)
                f.get_rows(name, info.shape[0] // 3, info.shape[0] // 2)
                f.get(name)
            f.verify()
    except codec.DDZError as exc:
        assert str(exc)


def test_a_stalled_server_times_out(tmp_path):
    import time

    import aiohttp

    _write(tmp_path / "a.ddz")
    with RangeServer(tmp_path) as srv:
        f = codec.open(f"{srv.url}/a.ddz", storage_options={"client_kwargs": {"timeout": aiohttp.ClientTimeout(sock_read=0.5)}})
        srv.rtt = 3.0  # the server now answers after 3 s
        t0 = time.perf_counter()
        with pytest.raises(codec.FileAccessError, match="failed"):
            f.get_rows("raw", 0, 10)
        assert time.perf_counter() - t0 < 2.5
        srv.rtt = 0.0
        f.close()


@given(n=st.integers(0, 1 << 17), split=st.integers(0, 1 << 17))
@settings(max_examples=60, deadline=None)
def test_crc32_combine_matches_zlib(n, split):
    import os
    import zlib

    from codec.format.layout import crc32_combine, crc32_of_blocks

    data = os.urandom(n)
    k = min(split, n)
    assert crc32_combine(zlib.crc32(data[:k]), zlib.crc32(data[k:]), n - k) == zlib.crc32(data)
    if n:
        crcs = [zlib.crc32(data[i:i + 4096]) for i in range(0, n, 4096)]
        assert crc32_of_blocks(crcs, 4096, n) == zlib.crc32(data)
