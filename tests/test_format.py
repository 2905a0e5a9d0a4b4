"""Round trips, layout rules, atomicity and error reporting of the .ddz container."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import codec
from codec.format.layout import DTYPES, PREAMBLE_SIZE
from ddzutil import split, with_header

NUMPY_DTYPES = [d for d in DTYPES if d != "bf16"]
settings.register_profile("ddz", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("ddz")


def arrays_of(dtype: str):
    return hnp.arrays(DTYPES[dtype], hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
                      elements=hnp.from_dtype(DTYPES[dtype], allow_nan=False) if dtype.startswith("f") else None)


@given(st.sampled_from(NUMPY_DTYPES).flatmap(lambda d: st.tuples(st.just(d), arrays_of(d))), st.booleans())
@settings(max_examples=150)
def test_roundtrip_every_dtype_and_shape(tmp_path, case, use_zstd):
    dtype, arr = case
    path = tmp_path / "a.ddz"
    with codec.Writer(path) as w:
        w.add("x", arr, zstd=3 if use_zstd else None)
    with codec.open(path) as f:
        info = f.info("x")
        assert (info.dtype, info.shape) == (dtype, arr.shape)
        got = f.get("x")
        assert got.dtype == arr.dtype.newbyteorder("<") and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
        np.testing.assert_array_equal(f.get("x", framework="torch").numpy(), arr)
        if arr.ndim and arr.shape[0]:
            np.testing.assert_array_equal(f.get_rows("x", arr.shape[0] // 2, arr.shape[0]), arr[arr.shape[0] // 2:])
        f.verify()


def test_bf16_and_torch_inputs(tmp_path):
    t = torch.randn(3, 4, dtype=torch.bfloat16)
    codec.save_file({"w": t, "i": torch.arange(5)}, tmp_path / "t.ddz")
    with codec.open(tmp_path / "t.ddz") as f:
        assert f.info("w").dtype == "bf16"
        assert torch.equal(f.get("w", framework="torch"), t)
        assert torch.equal(f.get_rows("w", 1, 3, framework="torch"), t[1:3])
        with pytest.raises(codec.InvalidInputError, match="bf16"):
            f.get("w")


@given(bits=st.integers(1, 32), n=st.integers(0, 300), data=st.data(), use_zstd=st.booleans())
@settings(max_examples=120)
def test_bitpacked_sections_every_width(tmp_path, bits, n, data, use_zstd):
    dtype = np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32
    values = np.array(data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=n, max_size=n)), dtype=dtype)
    path = tmp_path / "b.ddz"
    with codec.Writer(path) as w:
        w.add("v", values, bits=bits, zstd=1 if use_zstd else None)
    with codec.open(path) as f:
        info = f.info("v")
        if not use_zstd:
            assert info.length == (n * bits + 7) // 8
        np.testing.assert_array_equal(f.get("v"), values)
        np.testing.assert_array_equal(f.get("v", framework="torch").numpy(), values.astype(np.int64))
        lo = data.draw(st.integers(0, n))
        hi = data.draw(st.integers(lo, n))
        np.testing.assert_array_equal(f.get_rows("v", lo, hi), values[lo:hi])
        whole, rows = f.get("v", framework="torch"), f.get_rows("v", lo, hi, framework="torch")
        assert rows.dtype == whole.dtype and torch.equal(rows, whole[lo:hi])
        f.verify()


@given(chunks=st.lists(st.integers(0, 40), min_size=0, max_size=8), bits=st.sampled_from([None, 3, 10, 17]),
       use_zstd=st.booleans())
@settings(max_examples=60)
def test_streamed_section_equals_whole(tmp_path, chunks, bits, use_zstd):
    rng = np.random.default_rng(len(chunks))
    parts = [rng.integers(0, 2**(bits or 16), size=(c, 3)).astype(np.uint32) for c in chunks]
    whole = np.concatenate(parts) if parts else np.zeros((0, 3), np.uint32)
    z = 3 if use_zstd else None
    with codec.Writer(tmp_path / "s.ddz") as w:
        with w.section("s", "u32", (3,), bits=bits, zstd=z) as s:
            for p in parts:
                s.append(p)
    with codec.Writer(tmp_path / "w.ddz") as w:
        w.add("s", whole, bits=bits, zstd=z)
    assert (tmp_path / "s.ddz").read_bytes() == (tmp_path / "w.ddz").read_bytes()
    with codec.open(tmp_path / "s.ddz") as f:
        np.testing.assert_array_equal(f.get("s"), whole)


def test_deterministic_and_aligned(tmp_path):
    tensors = {"b": np.arange(7, dtype=np.int16), "a": np.ones((3, 3), np.float32)}
    for alignment in (64, 4096):
        paths = []
        for i in range(2):
            p = tmp_path / f"{alignment}-{i}.ddz"
            with codec.Writer(p, {"k": [1, 2]}, alignment=alignment) as w:
                for k, v in tensors.items():
                    w.add(k, v)
            paths.append(p)
        assert paths[0].read_bytes() == paths[1].read_bytes()
        with codec.open(paths[0]) as f:
            assert f.keys() == ["b", "a"]
            assert all(s.offset % alignment == 0 for s in f.sections)
            assert f.get("a").ctypes.data % 64 == 0  # read into a 64-byte aligned buffer
        with codec.open(paths[0], zero_copy=True) as f:
            assert f.get("a").ctypes.data % 64 == 0  # a view of the (aligned) mapping


@pytest.mark.parametrize("zero_copy", [False, True])
def test_arrays_are_writable_and_private(tmp_path, zero_copy):
    codec.save_file({"x": np.zeros(8, np.float32)}, tmp_path / "z.ddz")
    before = (tmp_path / "z.ddz").read_bytes()
    with codec.open(tmp_path / "z.ddz", zero_copy=zero_copy) as f:
        x = f.get("x")
        x[0] = 5  # an owned copy, or a copy-on-write mapping: writable for torch, never written back
        assert f.get("x")[0] == (5 if zero_copy else 0)  # views of one private mapping see each other's edits
        del x
    assert (tmp_path / "z.ddz").read_bytes() == before


def test_metadata_and_objects_roundtrip(tmp_path):
    meta = {"ipc": 10, "classes": ["a", "b"], "nested": {"x": 1.5, "ok": True, "none": None}}
    with codec.Writer(tmp_path / "m.ddz", meta) as w:
        w.add("o/p", np.arange(3, dtype=np.uint8))
        w.add_object("o", {"id": "demo", "k": 3}, {"p": "o/p"}, must_understand=False)
    with codec.open(tmp_path / "m.ddz") as f:
        assert f.metadata == meta
        assert f.objects == {"o": {"codec": {"id": "demo", "k": 3}, "sections": {"p": "o/p"}, "must_understand": False}}


def _leftovers(folder):
    return [p for p in os.listdir(folder) if p.endswith(".tmp")]


def test_failed_write_leaves_target_untouched(tmp_path):
    target = tmp_path / "out.ddz"
    target.write_bytes(b"previous contents")
    with pytest.raises(RuntimeError):
        with codec.Writer(target) as w:
            w.add("x", np.zeros(1000, np.float32))
            raise RuntimeError("boom")
    assert target.read_bytes() == b"previous contents"
    with pytest.raises(KeyboardInterrupt):
        with codec.Writer(tmp_path / "new.ddz") as w:
            with w.section("s", "f32", (2,)) as s:
                s.append(np.zeros((4, 2), np.float32))
                raise KeyboardInterrupt
    assert not (tmp_path / "new.ddz").exists()
    with pytest.raises(codec.InvalidInputError):
        with codec.Writer(tmp_path / "bad.ddz") as w:
            w.add("v", np.array([1, 2, 300], np.uint16), bits=8)
    assert not (tmp_path / "bad.ddz").exists()
    assert _leftovers(tmp_path) == []


def test_published_file_mode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        codec.save_file({"x": np.zeros(1)}, tmp_path / "m.ddz")
    finally:
        os.umask(old)
    assert (tmp_path / "m.ddz").stat().st_mode & 0o777 == 0o640


def test_abandoned_writer_removes_temp_file(tmp_path):
    w = codec.Writer(tmp_path / "never.ddz")
    w.add("x", np.zeros(3, np.float32))
    assert len(_leftovers(tmp_path)) == 1
    del w
    assert _leftovers(tmp_path) == [] and not (tmp_path / "never.ddz").exists()


@pytest.mark.parametrize("call, match", [
    (lambda w: (w.add("x", np.zeros(1)), w.add("x", np.zeros(1))), "duplicate"),
    (lambda w: w.add("", np.zeros(1)), "non-empty"),
    (lambda w: w.add("n" * 300, np.zeros(1)), "longer than"),
    (lambda w: w.add("x", np.zeros(2, np.complex64)), "not storable"),
    (lambda w: w.add("x", [1, 2]), "numpy array or torch tensor"),
    (lambda w: w.add("x", np.zeros(2, np.float32), bits=4), "cannot bit-pack"),
    (lambda w: w.add("x", np.zeros(2, np.uint8), bits=9), "cannot bit-pack"),
    (lambda w: w.add("x", np.array([-1], np.int32), bits=4), None),
    (lambda w: w.add("x", np.zeros(2), zstd=99), "zstd level"),
    (lambda w: w.section("s", "f32", (2,)).append(np.zeros((2, 3), np.float32)), "chunk shape"),
    (lambda w: w.section("s", "f32").append(np.zeros(2, np.float64)), "is f32"),
    (lambda w: w.section("s", "f9"), "unknown dtype"),
    (lambda w: w.section("s", "f32", ("x",)), "row shape"),
    (lambda w: w.section("s", "f32", (-1,)), "row shape"),
    (lambda w: w.add_object("o", {"id": "x"}, {}) or w.add_object("o", {"id": "x"}, {}), "duplicate object"),
    (lambda w: w.add_object("o", {"id": "x"}, {"p": "missing"}), "not written"),
    (lambda w: w.add_object("o", {}, {}), "string 'id'"),
])
def test_writer_rejects_bad_arguments(tmp_path, call, match):
    with pytest.raises(codec.InvalidInputError, match=match):
        with codec.Writer(tmp_path / "e.ddz") as w:
            call(w)
    assert not (tmp_path / "e.ddz").exists() and _leftovers(tmp_path) == []


def test_unserialisable_metadata(tmp_path):
    with pytest.raises(codec.InvalidInputError, match="JSON"):
        with codec.Writer(tmp_path / "m.ddz", {"x": object()}):
            pass
    with pytest.raises(codec.InvalidInputError, match="JSON"):
        with codec.Writer(tmp_path / "m.ddz", {"x": float("nan")}):
            pass
    assert not (tmp_path / "m.ddz").exists()


def test_reader_errors_name_section(tmp_path):
    codec.save_file({"x": np.arange(4, dtype=np.int32)}, tmp_path / "r.ddz")
    with codec.open(tmp_path / "r.ddz") as f:
        with pytest.raises(codec.SectionNotFoundError, match="'nope'"):
            f.get("nope")
        with pytest.raises(codec.InvalidInputError, match="rows 3:9"):
            f.get_rows("x", 3, 9)
        with pytest.raises(codec.InvalidInputError, match="framework"):
            f.get("x", framework="jax")
        with pytest.raises(codec.InvalidInputError, match="device"):
            f.get("x", framework="torch", device="bogus")
        assert [] not in f and "x" in f
    with pytest.raises(codec.FileAccessError):
        codec.open(tmp_path / "missing.ddz")
    with pytest.raises(codec.InvalidInputError, match="file path"):
        codec.open(123)
    with pytest.raises(codec.InvalidInputError, match="file path"):
        codec.Writer(None)


def test_unknown_encoding_minor_version_and_optional_keys(tmp_path):
    codec.save_file({"a": np.arange(4, dtype=np.uint8), "b": np.arange(3, dtype=np.uint8)}, tmp_path / "u.ddz")
    raw = (tmp_path / "u.ddz").read_bytes()
    _, header = split(raw)
    header["sections"][0]["encoding"] = [{"id": "future-codec"}]
    header["future_key"] = {"ignored": True}
    (tmp_path / "u.ddz").write_bytes(with_header(raw, header))
    with codec.open(tmp_path / "u.ddz") as f:
        with pytest.raises(codec.UnknownCodecError, match="future-codec") as err:
            f.get("a")
        assert err.value.section == "a"
        np.testing.assert_array_equal(f.get("b"), [0, 1, 2])
        f.verify()  # checksums still cover the undecodable section


def test_version_rules(tmp_path):
    codec.save_file({"a": np.arange(4, dtype=np.uint8)}, tmp_path / "v.ddz")
    raw = bytearray((tmp_path / "v.ddz").read_bytes())
    from codec.format.layout import crc32
    import struct

    def set_version(major, minor):
        raw[8:12] = struct.pack("<HH", major, minor)
        raw[60:64] = struct.pack("<I", crc32(bytes(raw[:60])))
        (tmp_path / "v.ddz").write_bytes(bytes(raw))

    set_version(1, 7)  # newer minor: readable
    with codec.open(tmp_path / "v.ddz") as f:
        assert f.version == (1, 7) and list(f.get("a")) == [0, 1, 2, 3]
    set_version(2, 0)
    with pytest.raises(codec.UnsupportedVersionError, match="major version 2"):
        codec.open(tmp_path / "v.ddz")
    set_version(256, 0)  # 1 written big-endian
    with pytest.raises(codec.UnsupportedVersionError, match="big-endian"):
        codec.open(tmp_path / "v.ddz")


def test_verify_reports_corruption_with_location(tmp_path):
    codec.save_file({"a": np.arange(100, dtype=np.float32), "b": np.arange(10, dtype=np.uint8)}, tmp_path / "c.ddz")
    raw = bytearray((tmp_path / "c.ddz").read_bytes())
    with codec.open(tmp_path / "c.ddz") as f:
        off = f.info("a").offset
    raw[off + 5] ^= 0x40
    (tmp_path / "c.ddz").write_bytes(bytes(raw))
    with codec.open(tmp_path / "c.ddz") as f:
        problems = list(f.problems())
        assert len(problems) == 1 and isinstance(problems[0], codec.ChecksumError)
        assert problems[0].section == "a" and problems[0].offset == off
        with pytest.raises(codec.ChecksumError):
            f.verify()


def test_open_reads_header_only(tmp_path):
    big = np.zeros(16 << 20, np.uint8)
    codec.save_file({"big": big}, tmp_path / "big.ddz")
    with codec.open(tmp_path / "big.ddz") as f:
        assert f.header_length < 1000 + 12 * 256 and f.file_size > 16 << 20  # 256 block CRCs of 64 KiB
        assert f.header_offset == PREAMBLE_SIZE + (16 << 20)
        json.dumps(f.info("big").to_json())


def test_codec_config_errors_are_codec_errors():
    from codec.codecs import codec_from_config

    with pytest.raises(codec.UnknownCodecError, match="no-such"):
        codec_from_config({"id": "no-such"})
    with pytest.raises(codec.InvalidInputError, match="string 'id'"):
        codec_from_config({"k": 1})
    with pytest.raises(codec.InvalidInputError, match="bad config for codec 'tucker'"):
        codec_from_config({"id": "tucker", "no_such_option": 1})
    with pytest.raises(codec.DDZError):
        codec_from_config({"id": "tucker", "tol": "abc"})
