"""Tests of codec.bits: the bit-stream layout of spec/ddz.md ("bit-packed sections"),
round trips for every width, the numpy and torch paths, BitStreamPacker and errors."""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codec.bits._numpy as bits_numpy
from codec.bits import BitStreamPacker, pack_bits, pack_bits_torch, unpack_bits, unpack_bits_torch
from codec.bits._gen import TARGET, render
from codec.errors import InvalidInputError

ALL_BITS = list(range(1, 33))
FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ref_pack(values, bits: int) -> bytes:
    """Straight from the spec: value i at stream bits [i*bits, (i+1)*bits), LSB-first bytes."""
    acc = 0
    for i, v in enumerate(values):
        acc |= int(v) << (i * bits)
    return acc.to_bytes((len(values) * bits + 7) // 8, "little")


def small_dtype(bits: int):
    return np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32


def random_values(seed: int, n: int, bits: int, dtype=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hi = 1 << bits
    x = rng.integers(0, hi, n, dtype=np.int64)
    if n:  # make sure the extremes occur
        x[rng.integers(0, n)] = hi - 1
        x[rng.integers(0, n)] = 0
    return x.astype(dtype or small_dtype(bits))


# --------------------------------------------------------------------------- layout


GOLDEN = [
    (3, [1, 2, 3, 4, 5, 6, 7, 0], bytes([0b11010001, 0b01011000, 0b00011111])),  # 209, 88, 31
    (1, [1, 0, 1, 1, 0, 0, 0, 0, 1], bytes([0x0D, 0x01])),
    (5, [31, 0, 1], bytes([0x1F, 0x04])),
    (10, [1, 1023, 0, 512], bytes([0x01, 0xFC, 0x0F, 0x00, 0x80])),
    (17, [0x1FFFF, 1], bytes([0xFF, 0xFF, 0x03, 0x00, 0x00])),
    (32, [0x01020304, 0xFFFFFFFF], bytes([0x04, 0x03, 0x02, 0x01, 0xFF, 0xFF, 0xFF, 0xFF])),
    (7, [], b""),
]


@pytest.mark.parametrize("bits,values,expected", GOLDEN)
def test_golden_vectors(bits, values, expected):
    arr = np.array(values, dtype=np.int64)
    assert ref_pack(values, bits) == expected  # the test's reference agrees with the hand-computed bytes
    assert pack_bits(arr, bits).tobytes() == expected
    assert pack_bits(torch.tensor(values, dtype=torch.int64), bits).numpy().tobytes() == expected
    assert pack_bits_torch(torch.tensor(values, dtype=torch.int64), bits).numpy().tobytes() == expected
    got = unpack_bits(expected, bits, len(values))
    assert got.dtype == small_dtype(bits)
    assert got.tolist() == values
    assert unpack_bits_torch(torch.frombuffer(bytearray(expected) or bytearray(1), dtype=torch.uint8), bits, len(values)).tolist() == values


def test_last_byte_padding_is_zero():
    for bits in ALL_BITS:
        for n in range(1, 17):
            p = pack_bits(np.full(n, (1 << bits) - 1, np.uint64), bits)
            assert p.size == (n * bits + 7) // 8
            used = n * bits % 8
            if used:
                assert p[-1] == (1 << used) - 1
            pt = pack_bits_torch(torch.full((n,), (1 << bits) - 1, dtype=torch.int64), bits)
            assert np.array_equal(pt.numpy(), p)


def test_generated_kernels_up_to_date():
    assert TARGET.read_text() == render(), "run: python -m codec.bits._gen"


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("bits", ALL_BITS)
@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), data=st.data())
def test_roundtrip_numpy(bits, seed, n, data):
    x = random_values(seed, n, bits)
    p = pack_bits(x, bits)
    assert p.dtype == np.uint8 and p.tobytes() == ref_pack(x, bits)
    assert np.array_equal(unpack_bits(p, bits, n), x)
    start = data.draw(st.integers(0, n))
    count = data.draw(st.integers(0, n - start))
    # slice of exactly the bytes needed: no slack after the stream
    stream = p.tobytes()[: (start + count) * bits // 8 + ((start + count) * bits % 8 > 0)]
    got = unpack_bits(stream, bits, count, start)
    assert got.dtype == small_dtype(bits)
    assert np.array_equal(got, x[start : start + count])


@pytest.mark.parametrize("bits", ALL_BITS)
@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), data=st.data())
def test_roundtrip_torch(bits, seed, n, data):
    x = random_values(seed, n, bits, np.int64)
    t = torch.from_numpy(x)
    p = pack_bits_torch(t, bits)
    assert p.dtype == torch.uint8
    assert p.numpy().tobytes() == pack_bits(x, bits).tobytes()  # both paths: byte-identical streams
    assert np.array_equal(pack_bits(t, bits).numpy(), p.numpy())
    start = data.draw(st.integers(0, n))
    count = data.draw(st.integers(0, n - start))
    got = unpack_bits_torch(p, bits, count, start)
    assert got.dtype == torch.int64 and torch.equal(got, t[start : start + count])
    got = unpack_bits(p, bits, count, start)  # CPU tensors: numba kernels, same contract
    assert got.dtype == torch.int64 and torch.equal(got, t[start : start + count])


@pytest.mark.parametrize("bits", [1, 3, 8, 10, 13, 16, 24, 31, 32])
def test_large_threaded_and_unaligned_ranges(bits):
    n = (1 << 21) + 13  # over PARALLEL_MIN_VALUES: split across threads, plus a partial group
    x = random_values(bits, n, bits)
    p = pack_bits(x, bits)
    # an independent vectorised reference of the same layout
    wide = x.astype("<u8").view(np.uint8).reshape(n, 8)
    ref = np.packbits(np.unpackbits(wide, axis=1, bitorder="little")[:, :bits], bitorder="little")
    assert np.array_equal(p, ref)
    assert np.array_equal(unpack_bits(p, bits, n), x)
    for start in (1, 7, 12345):
        count = n - start - 5
        assert np.array_equal(unpack_bits(p, bits, count, start), x[start : start + count])
    t = torch.from_numpy(x.astype(np.int64))
    assert np.array_equal(pack_bits_torch(t, bits).numpy(), p)
    assert torch.equal(unpack_bits_torch(torch.from_numpy(p), bits, n - 100, 77), t[77 : n - 23])


@pytest.mark.parametrize(
    "dtype,bits",
    [(np.uint8, 8), (np.int8, 7), (np.int8, 8), (np.uint16, 16), (np.int16, 12), (np.int32, 32),
     (np.uint32, 32), (np.int64, 32), (np.uint64, 20), (np.bool_, 1), (np.int32, 3)],
)
def test_input_dtypes_and_shapes(dtype, bits):
    rng = np.random.default_rng(bits)
    hi = min(1 << bits, int(np.iinfo(dtype).max) + 1) if dtype is not np.bool_ else 2
    x = rng.integers(0, hi, (5, 7, 3)).astype(dtype)
    expected = ref_pack(x.reshape(-1), bits)
    assert pack_bits(x, bits).tobytes() == expected
    assert pack_bits(np.asfortranarray(x), bits).tobytes() == expected  # flattened in C order
    assert pack_bits(x[:, ::2], bits).tobytes() == ref_pack(x[:, ::2].reshape(-1), bits)
    assert pack_bits(x.tolist(), bits).tobytes() == expected
    tx = torch.from_numpy(x)
    assert pack_bits(tx, bits).numpy().tobytes() == expected
    assert pack_bits_torch(tx, bits).numpy().tobytes() == expected
    assert pack_bits(tx.transpose(0, 2), bits).numpy().tobytes() == ref_pack(x.transpose(2, 1, 0).reshape(-1), bits)


def test_unpack_out_dtypes():
    x = random_values(1, 1000, 12, np.int64)
    p = pack_bits(x, 12)
    for dtype in (np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64):
        out = np.full((10, 100), 7, dtype)
        got = unpack_bits(p, 12, 1000, out=out)
        assert got is out and np.array_equal(out.reshape(-1), x)
    for dtype in (np.uint8, np.int8):
        with pytest.raises(InvalidInputError, match="cannot hold"):
            unpack_bits(p, 12, 1000, out=np.empty(1000, dtype))
    p16 = pack_bits(np.array([65535, 1]), 16)
    with pytest.raises(InvalidInputError, match="cannot hold"):
        unpack_bits(p16, 16, 2, out=np.empty(2, np.int16))
    pre = np.empty(p.size, np.uint8)
    assert pack_bits(x, 12, out=pre) is pre and pre.tobytes() == p.tobytes()
    for dtype in (torch.int64, torch.int32, torch.int16):
        out = torch.zeros(1000, dtype=dtype)
        assert unpack_bits(torch.from_numpy(p), 12, 1000, out=out) is out
        assert torch.equal(out.long(), torch.from_numpy(x))
        out = torch.zeros(1000, dtype=dtype)
        assert unpack_bits_torch(torch.from_numpy(p), 12, 1000, out=out) is out
        assert torch.equal(out.long(), torch.from_numpy(x))
    tout = torch.empty(p.size, dtype=torch.uint8)
    assert pack_bits_torch(torch.from_numpy(x), 12, out=tout) is tout and tout.numpy().tobytes() == p.tobytes()
    assert pack_bits(torch.from_numpy(x), 12, out=tout) is tout and tout.numpy().tobytes() == p.tobytes()


def test_unaligned_buffers():
    x = random_values(5, 999, 11, np.int64)
    p = pack_bits(x, 11).tobytes()
    raw = bytearray(len(p) + 3)
    raw[1 : 1 + len(p)] = p
    for src in (memoryview(raw)[1 : 1 + len(p)], np.frombuffer(raw, np.uint8, len(p), 1), memoryview(p)[::1]):
        assert np.array_equal(unpack_bits(src, 11, 990, 9), x[9:999])
    tsrc = torch.frombuffer(raw, dtype=torch.uint8)[1 : 1 + len(p)]  # int64 view would be misaligned
    assert torch.equal(unpack_bits_torch(tsrc, 11, 999), torch.from_numpy(x))
    # a misaligned uint16 destination
    buf = np.zeros(2 * 999 + 1, np.uint8)
    out = buf[1:].view(np.uint16)
    assert not out.flags.aligned
    unpack_bits(p, 11, 999, out=out)
    assert np.array_equal(out, x)
    # misaligned values to pack
    vb = np.zeros(8 * 999 + 1, np.uint8)
    vals = vb[1:].view(np.int64)
    vals[:] = x
    assert pack_bits(vals, 11).tobytes() == p
    # non-contiguous uint8 data
    doubled = np.repeat(np.frombuffer(p, np.uint8), 2)[::2]
    assert np.array_equal(unpack_bits(doubled, 11, 999), x)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs mprotect")
def test_never_reads_past_the_end():
    """Streams that end exactly at a PROT_NONE page: any over-read would crash the process."""
    page = mmap.PAGESIZE
    m = mmap.mmap(-1, 2 * page)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(ctypes.c_void_p(addr + page), page, 0) == 0
    try:
        for bits in ALL_BITS:
            n = (page * 8) // bits - 3
            x = random_values(bits, n, bits)
            p = pack_bits(x, bits)
            view = np.frombuffer(m, np.uint8, p.size, page - p.size)
            view[:] = p
            for start, count in ((0, n), (n - 1, 1), (n - 9, 9), (n - 70, 70), (3, n - 3)):
                assert np.array_equal(unpack_bits(view, bits, count, start), x[start : start + count])
            t = torch.from_numpy(view)
            assert torch.equal(unpack_bits_torch(t, bits, 70, n - 70), torch.from_numpy(x[n - 70 :].astype(np.int64)))
            del view, t
    finally:
        libc.mprotect(ctypes.c_void_p(addr + page), page, 3)
        m.close()


# --------------------------------------------------------------------------- streaming packer


@pytest.mark.parametrize("bits", [1, 3, 7, 8, 10, 17, 32])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sizes=st.lists(st.integers(0, 40), max_size=12))
def test_stream_packer_matches_pack_bits(bits, seed, sizes):
    x = random_values(seed, sum(sizes), bits, np.int64)
    pk = BitStreamPacker(bits)
    parts, i = [], 0
    for k in sizes:
        chunk = x[i : i + k]
        parts.append(pk.feed(chunk if k % 2 else torch.from_numpy(chunk)))
        i += k
    parts.append(pk.finish())
    assert b"".join(bytes(memoryview(q)) for q in parts) == ref_pack(x, bits)
    assert pk.count == x.size


def test_stream_packer_errors():
    pk = BitStreamPacker(4)
    pk.feed(np.arange(5))
    with pytest.raises(InvalidInputError, match="stream index 7"):
        pk.feed(np.array([1, 2, 16]))
    pk = BitStreamPacker(4)
    pk.feed(np.arange(3))
    with pytest.raises(InvalidInputError, match="stream index 20"):
        pk.feed(np.r_[np.arange(17) % 16, -1, 0, 0])
    with pytest.raises(InvalidInputError):
        BitStreamPacker(0)
    pk = BitStreamPacker(4)
    pk.finish()
    with pytest.raises(InvalidInputError):
        pk.feed([1])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bits", [0, 33, -1, True, 2.0, "3", None])
def test_bad_bits(bits):
    with pytest.raises(InvalidInputError, match="bits"):
        pack_bits(np.zeros(3, np.uint8), bits)
    with pytest.raises(InvalidInputError, match="bits"):
        unpack_bits(b"\0" * 8, bits, 1)
    with pytest.raises(InvalidInputError, match="bits"):
        pack_bits_torch(torch.zeros(3, dtype=torch.uint8), bits)
    with pytest.raises(InvalidInputError, match="bits"):
        unpack_bits_torch(torch.zeros(8, dtype=torch.uint8), bits, 1)


@pytest.mark.parametrize(
    "values,bits,index",
    [([0, 1, 2, 3, 4, 8, 9], 3, 5), ([0, -1], 5, 1), ([1] * 20 + [1 << 10], 10, 20), ([0, 1 << 32], 32, 1)],
)
def test_out_of_range_values(values, bits, index):
    arr = np.array(values, dtype=np.int64)
    for f in (pack_bits, lambda v, b: pack_bits(torch.from_numpy(v), b), lambda v, b: pack_bits_torch(torch.from_numpy(v), b)):
        with pytest.raises(InvalidInputError, match=f"index {index}\\b"):
            f(arr, bits)


def test_out_of_range_narrow_signed_and_shapes():
    with pytest.raises(InvalidInputError, match="index 2"):
        pack_bits(np.array([0, 1, -1], np.int32), 32)
    with pytest.raises(InvalidInputError, match="index 1"):
        pack_bits(np.array([0, -3], np.int8), 8)
    with pytest.raises(InvalidInputError, match="index 1"):
        pack_bits(np.array([0, -3], np.int8), 12)
    x = np.zeros((4, 5), np.uint16)
    x[2, 3] = 300
    with pytest.raises(InvalidInputError, match=r"index 13 \(position \(2, 3\)\)"):
        pack_bits(x, 8)
    with pytest.raises(InvalidInputError, match="integer"):
        pack_bits(np.zeros(3, np.float32), 4)
    with pytest.raises(InvalidInputError, match="integer"):
        pack_bits(torch.zeros(3), 4)
    with pytest.raises(InvalidInputError, match="integer"):
        pack_bits_torch(torch.zeros(3), 4)


def test_short_data_and_bad_ranges():
    p = pack_bits(np.arange(10), 4)  # 5 bytes
    assert unpack_bits(p, 4, 10).tolist() == list(range(10))
    for count, start in ((11, 0), (1, 10), (10, 1)):
        with pytest.raises(InvalidInputError, match="need"):
            unpack_bits(p, 4, count, start)
        with pytest.raises(InvalidInputError, match="need"):
            unpack_bits_torch(torch.from_numpy(p), 4, count, start)
        with pytest.raises(InvalidInputError, match="need"):
            unpack_bits(torch.from_numpy(p), 4, count, start)
    for count, start in ((-1, 0), (1, -1), (1.5, 0), (True, 0)):
        with pytest.raises(InvalidInputError):
            unpack_bits(p, 4, count, start)
        with pytest.raises(InvalidInputError):
            unpack_bits_torch(torch.from_numpy(p), 4, count, start)
    assert unpack_bits(b"", 4, 0).size == 0
    assert unpack_bits(p, 4, 0, 10).size == 0
    with pytest.raises(InvalidInputError, match="uint8"):
        unpack_bits(np.zeros(4, np.uint16), 4, 1)
    with pytest.raises(InvalidInputError, match="uint8"):
        unpack_bits(torch.zeros(4, dtype=torch.int32), 4, 1)
    with pytest.raises(InvalidInputError, match="bytes-like"):
        unpack_bits(12345, 4, 1)


def test_bad_out_arguments():
    x = np.arange(16)
    with pytest.raises(InvalidInputError, match="exactly"):
        pack_bits(x, 4, out=np.empty(9, np.uint8))
    with pytest.raises(InvalidInputError, match="uint8"):
        pack_bits(x, 4, out=np.empty(8, np.int8))
    with pytest.raises(InvalidInputError, match="contiguous"):
        pack_bits(x, 4, out=np.empty(16, np.uint8)[::2])
    p = pack_bits(x, 4)
    with pytest.raises(InvalidInputError, match="count"):
        unpack_bits(p, 4, 16, out=np.empty(15, np.uint8))
    with pytest.raises(InvalidInputError, match="integer"):
        unpack_bits(p, 4, 16, out=np.empty(16, np.float32))
    with pytest.raises(InvalidInputError):
        pack_bits_torch(torch.from_numpy(x), 4, out=torch.empty(7, dtype=torch.uint8))
    with pytest.raises(InvalidInputError):
        unpack_bits_torch(torch.from_numpy(p), 4, 16, out=torch.empty(16))
    with pytest.raises(InvalidInputError):
        unpack_bits_torch(torch.from_numpy(p), 4, 16, out=torch.empty(15, dtype=torch.int64))


def test_thread_pool_is_rebuilt_after_fork():
    import os

    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    x = random_values(0, bits_numpy.PARALLEL_MIN_VALUES * 2, 9)
    p = pack_bits(x, 9)  # creates the pool in this process
    pid = os.fork()
    if pid == 0:  # child: must not hang on the parent's (absent) worker threads
        ok = np.array_equal(unpack_bits(p, 9, x.size), x)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


@pytest.mark.slow  # compiles the shift/mask kernels of every width
@pytest.mark.skipif(not bits_numpy.HAVE_FAST_PDEP, reason="host without fast BMI2 pdep/pext")
def test_scalar_and_bmi2_kernels_agree(monkeypatch):
    """Both kernel families on the same (smallest-dtype) arrays: pdep/pext and shift/mask."""
    for bits in ALL_BITS:
        x = random_values(bits, 203, bits)
        start, count = 5, 190
        fast_p, fast_u = pack_bits(x, bits), unpack_bits(pack_bits(x, bits), bits, count, start)
        monkeypatch.setattr(bits_numpy, "USE_PDEP", False)
        slow_p = pack_bits(x, bits)
        slow_u = unpack_bits(slow_p, bits, count, start)
        monkeypatch.setattr(bits_numpy, "USE_PDEP", True)
        assert fast_p.tobytes() == slow_p.tobytes() == ref_pack(x, bits)
        assert np.array_equal(fast_u, slow_u) and np.array_equal(fast_u, x[start : start + count])
        bad = x.copy()
        bad[100] = (1 << bits) if bits < 8 * bad.itemsize else 0
        if bits < 8 * bad.itemsize:
            with pytest.raises(InvalidInputError, match="index 100"):
                pack_bits(bad, bits)
