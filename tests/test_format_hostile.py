"""Hostile files and hostile environments at the container level (issue 13): amplification bombs
through the whole encoding chain, allocations the process cannot make, lone surrogates, nesting,
checked reads, a full disk at every write position, and temporaries left by killed writers."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import zstandard

import codec
from codec.errors import FileAccessError, LimitError, MemoryLimitError
from codec.format import files, writer as writer_mod
from codec.format.header import zstd_bound
from ddzutil import split, with_header

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _zero_frame(n: int) -> bytes:
    """One zstd frame decoding to ``n`` zero bytes, built without holding them."""
    c = zstandard.ZstdCompressor(level=1).compressobj()
    chunk = bytes(1 << 20)
    out = [c.compress(chunk) for _ in range(n >> 20)]
    out.append(c.compress(bytes(n & ((1 << 20) - 1))))
    out.append(c.flush())
    return b"".join(out)


def _section_file(path, name, dtype, shape, stored: bytes, encoding) -> None:
    """A one-section file with any (possibly lying) table entry, every CRC correct."""
    with codec.Writer(path) as w:
        w.add(name, np.frombuffer(stored, np.uint8))
    raw = path.read_bytes()
    _, h = split(raw)
    s = h["sections"][0]
    itemsize = np.dtype(codec.format.DTYPES[dtype]).itemsize
    s.update(dtype=dtype, shape=list(shape), decoded_length=int(np.prod(shape)) * itemsize, encoding=encoding)
    path.write_bytes(with_header(raw, h))


# ---- finding 2: the amplification bound covers bitpack + zstd --------------------------------
def test_bitpack_zstd_bomb_is_refused_at_open(tmp_path):
    frame = _zero_frame(1 << 29)  # 4 GiB of 1-bit u64 values would need 2**32 values: 512 MiB packed
    assert len(frame) < 40000
    p = tmp_path / "bomb.ddz"
    _section_file(p, "z", "u64", (1 << 32,), frame, [{"id": "bitpack", "bits": 1}, {"id": "zstd", "level": 1}])
    with pytest.raises(LimitError, match="bound"):
        codec.open(p)
    # the same stream declared as what zstd alone could give is within the bound, and reads
    _section_file(p, "z", "u8", (1 << 29,), frame, [{"id": "zstd", "level": 1}])
    with codec.open(p) as f:
        assert f.info("z").decoded_length <= zstd_bound(f.info("z").length)
        assert f.get_rows("z", 5, 9).tolist() == [0, 0, 0, 0]


def test_writer_refuses_what_a_reader_must_refuse(tmp_path):
    with pytest.raises(codec.InvalidInputError, match="bound"):
        with codec.Writer(tmp_path / "w.ddz") as w:
            w.add("z", np.zeros(1 << 22, np.uint64), bits=1, zstd=19)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bits, dtype", [(None, np.uint8), (3, np.uint8), (10, np.uint16), (17, np.uint32)])
def test_get_rows_of_zstd_decodes_only_its_rows(tmp_path, bits, dtype):
    n = 1 << 22
    x = np.random.default_rng(0).integers(0, 4, (n, 2)).astype(dtype)  # compressible, but not a bomb
    x[n // 2 - 1: n // 2 + 2] = ((0, 0), (5, 6), (0, 0))
    with codec.Writer(tmp_path / "r.ddz") as w:
        w.add("x", x, bits=bits, zstd=3)
    with codec.open(tmp_path / "r.ddz") as f:
        tracemalloc.start()
        try:
            rows = f.get_rows("x", n // 2 - 1, n // 2 + 2)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert rows.tolist() == [[0, 0], [5, 6], [0, 0]]
        assert peak < 3 << 20, peak  # a scratch buffer, not the 8+ MiB section
        whole = f.get("x")
        np.testing.assert_array_equal(whole, x)


# ---- finding 4: an allocation the process cannot make is a DDZError -----------------------------
_LIMITED = """
import os, resource, sys, numpy as np, codec
from codec.errors import MemoryLimitError
import codec.format.resources as res
path, mode = sys.argv[1], sys.argv[2]
with open("/proc/self/statm") as fh:
    used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (used + (384 << 20), resource.RLIM_INFINITY))
if mode == "raw":  # no pre-check: the allocation itself must fail, and be converted
    res.CHECK_FROM = 1 << 62
with codec.open(path) as f:
    assert f.get_rows("z", 0, 3).tolist() == [0, 0, 0]
    try:
        f.get("z")
    except MemoryLimitError as exc:
        print("MemoryLimitError:", exc)
    f.verify()  # streaming: needs no memory per section
print("done")
"""


@pytest.mark.parametrize("mode", ["precheck", "raw"])
def test_declared_size_beyond_the_memory_limit(tmp_path, mode):
    p = tmp_path / "big.ddz"
    frame = _zero_frame(1 << 30)  # a sound file: 1 GiB of zeros in ~33 KiB
    _section_file(p, "z", "u8", (1 << 30,), frame, [{"id": "zstd", "level": 1}])
    script = tmp_path / "limited.py"
    script.write_text(_LIMITED)
    r = subprocess.run([sys.executable, str(script), str(p), mode], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MemoryLimitError:" in r.stdout and "done" in r.stdout, r.stdout
    if mode == "precheck":
        assert "more than the" in r.stdout  # refused before allocating, naming the size


def test_memory_limit_error_is_a_ddz_error_and_a_memory_error():
    assert issubclass(MemoryLimitError, codec.DDZError) and issubclass(MemoryLimitError, MemoryError)


# ---- finding 5: lone surrogates --------------------------------------------------------------
@pytest.mark.parametrize("where", ["section", "object", "metadata key", "metadata value", "unknown member"])
def test_lone_surrogates_are_refused_at_parse(tmp_path, where):
    p = tmp_path / "s.ddz"
    with codec.Writer(p, {"k": "v"}) as w:
        w.add("x", np.zeros(2, np.uint8))
        w.add_object("o", {"id": "demo"}, {"p": "x"})
    raw = p.read_bytes()
    text = raw[split(raw)[0].header_offset:].decode()
    lone = "\\ud800"
    edited = {"section": text.replace('"name":"x"', f'"name":"x{lone}"').replace('"p":"x"', f'"p":"x{lone}"'),
              "object": text.replace('"o":{', f'"o{lone}":{{'),
              "metadata key": text.replace('"k":"v"', f'"k{lone}":"v"'),
              "metadata value": text.replace('"k":"v"', f'"k":"{lone}"'),
              "unknown member": text[:-1] + f',"extra":["{lone}"]}}'}[where]
    assert edited != text
    p.write_bytes(with_header(raw, edited.encode()))
    with pytest.raises(codec.FormatError, match="surrogate"):
        codec.open(p)
    pair = text.replace('"k":"v"', '"k":"\\ud83d\\ude00"')  # a valid pair is one character
    p.write_bytes(with_header(raw, pair.encode()))
    with codec.open(p) as f:
        assert f.metadata["k"] == "\U0001F600"


def test_writer_refuses_lone_surrogates(tmp_path):
    with pytest.raises(codec.InvalidInputError, match="surrogate"):
        with codec.Writer(tmp_path / "a.ddz") as w:
            w.add("x\ud800", np.zeros(1))
    with pytest.raises(codec.InvalidInputError, match="surrogate"):
        codec.save_file({"x": np.zeros(1)}, tmp_path / "b.ddz", metadata={"n": "\udfff"})
    assert os.listdir(tmp_path) == []


# ---- finding 10: one nesting limit for the whole header -------------------------------------
def _nested(depth: int):
    doc: object = 1
    for _ in range(depth):
        doc = [doc]
    return doc


@pytest.mark.parametrize("place", ["top", "section", "object", "metadata", "encoding"])
def test_nesting_limit_covers_the_whole_header(tmp_path, place):
    p = tmp_path / "n.ddz"
    with codec.Writer(p) as w:
        w.add("x", np.zeros(2, np.uint8))
        w.add_object("o", {"id": "demo"}, {"p": "x"})
    raw = p.read_bytes()

    def put(h, value):
        {"top": lambda: h.__setitem__("extra", value),
         "section": lambda: h["sections"][0].__setitem__("extra", value),
         "object": lambda: h["objects"]["o"]["codec"].__setitem__("extra", value),
         "metadata": lambda: h["metadata"].__setitem__("extra", value),
         "encoding": lambda: h["sections"][0].__setitem__("encoding", [{"id": "future", "x": value}])}[place]()

    depth_of_place = {"top": 1, "section": 3, "object": 4, "metadata": 2, "encoding": 5}[place]
    _, h = split(raw)
    put(h, _nested(32 - depth_of_place))  # exactly 32 levels in all
    p.write_bytes(with_header(raw, h))
    codec.open(p).close()
    _, h = split(raw)
    put(h, _nested(33 - depth_of_place))
    p.write_bytes(with_header(raw, h))
    with pytest.raises(LimitError, match="32 levels"):
        codec.open(p)
    _, h = split(raw)
    put(h, _nested(500))
    p.write_bytes(with_header(raw, h))
    with pytest.raises(LimitError):
        codec.open(p)


def test_writer_applies_the_same_nesting_limit(tmp_path):
    codec.save_file({"x": np.zeros(1)}, tmp_path / "ok.ddz", metadata={"m": _nested(30)})  # header+metadata+31
    with pytest.raises(codec.InvalidInputError, match="32 levels"):
        codec.save_file({"x": np.zeros(1)}, tmp_path / "deep.ddz", metadata={"m": _nested(31)})
    assert not (tmp_path / "deep.ddz").exists()


@pytest.mark.parametrize("dtype, shape, stored, encoding, bad", [
    ("u8", (3,), bytes([0xFF, 0x01]), [{"id": "bitpack", "bits": 3}], False),  # 9 bits: the last byte's top 7 unused
    ("u8", (3,), bytes([0xFF, 0x03]), [{"id": "bitpack", "bits": 3}], True),
    ("bool", (4,), bytes([0, 1, 1, 0]), [], False),
    ("bool", (4,), bytes([0, 1, 2, 0]), [], True),
])
def test_verify_checks_what_a_crc_cannot(tmp_path, dtype, shape, stored, encoding, bad):
    """Unused bits of a bit-packed stream and bool bytes other than 0/1, under correct CRCs."""
    p = tmp_path / "a.ddz"
    _section_file(p, "s", dtype, shape, stored, encoding)
    with codec.open(p) as f:
        found = [type(e).__name__ for e in f.problems()]
    assert found == (["FormatError"] if bad else []), found


# ---- finding 11: checked reads -----------------------------------------------------------------
def test_open_verify_refuses_a_flipped_payload_bit(tmp_path):
    p = tmp_path / "v.ddz"
    codec.save_file({"x": np.arange(100, dtype=np.float32)}, p)
    raw = bytearray(p.read_bytes())
    raw[64 + 17] ^= 0x10
    p.write_bytes(bytes(raw))
    with codec.open(p) as f:  # default: structure only, the value is read as stored
        assert f.get("x")[4] != 4
    with pytest.raises(codec.ChecksumError):
        codec.open(p, verify=True)


# ---- finding 7: a full disk at every write position ------------------------------------------
class _FullDisk(io.RawIOBase):
    """A raw file that accepts ``room`` bytes, then fails every write with ENOSPC (the OS's
    answer on a full disk), as the kernel would; ``fsync_fails`` makes fsync fail too."""

    def __init__(self, fd: int, room: int):
        self.fd, self.room = fd, room

    def writable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        return os.lseek(self.fd, pos, whence)

    def fileno(self):
        return self.fd

    def write(self, b):
        n = min(len(b), self.room)
        if n == 0 and len(b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return os.write(self.fd, bytes(b[:n]))

    def close(self):
        if not self.closed:
            os.close(self.fd)
        super().close()


def _write_sample(path):
    rng = np.random.default_rng(0)
    with codec.Writer(path, {"m": "x" * 300}) as w:
        w.add("a", rng.standard_normal((40, 30)).astype(np.float32))
        w.add("b", rng.integers(0, 1000, 3000).astype(np.uint16), bits=10, zstd=3)
        with w.section("c", "u8", (4,)) as s:
            for _ in range(5):
                s.append(rng.integers(0, 255, (200, 4)).astype(np.uint8))


def test_full_disk_at_every_position_is_one_clean_error(tmp_path, monkeypatch):
    ref = tmp_path / "ref.ddz"
    _write_sample(ref)
    size = ref.stat().st_size
    real_fdopen = os.fdopen
    rooms = sorted(set(list(range(0, 256, 7)) + list(range(0, size + 64, max(1, size // 150))) + [size - 1, size]))
    for room in rooms:
        target = tmp_path / "out" / "t.ddz"
        target.parent.mkdir(exist_ok=True)
        monkeypatch.setattr(writer_mod.os, "fdopen", lambda fd, mode, room=room: io.BufferedWriter(_FullDisk(fd, room), 8192))
        try:
            _write_sample(target)
            ok = True
        except FileAccessError as exc:
            assert "No space left" in str(exc) and "\n" not in str(exc)
            ok = False
        finally:
            monkeypatch.setattr(writer_mod.os, "fdopen", real_fdopen)
        left = os.listdir(target.parent)
        if ok:  # the whole file fitted
            assert room >= size and left == ["t.ddz"] and target.read_bytes() == ref.read_bytes()
            target.unlink()
        else:
            assert left == [], (room, left)


def test_fsync_and_rename_failures_are_clean(tmp_path, monkeypatch):
    for name in ("fsync", "replace"):
        def fail(*a, _name=name, **k):
            raise OSError(errno.EIO if _name == "fsync" else errno.ENOSPC, "injected")

        with monkeypatch.context() as m:
            m.setattr(writer_mod.os, name, fail)
            with pytest.raises(FileAccessError, match="injected"):
                _write_sample(tmp_path / "f.ddz")
        assert os.listdir(tmp_path) == []


def test_abort_after_a_failed_flush_never_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_mod.os, "fdopen", lambda fd, mode: io.BufferedWriter(_FullDisk(fd, 0), 1 << 20))
    w = codec.Writer(tmp_path / "x.ddz")
    w.add("a", np.zeros(1000, np.float32))  # buffered: nothing reached the "disk" yet
    w.abort()  # the close flushes into a full disk; abort still returns and removes the temp
    assert os.listdir(tmp_path) == []


# ---- finding 12: temporaries of killed writers -------------------------------------------------
_KILLED = """
import os, sys, numpy as np, codec
w = codec.Writer(sys.argv[1])
w.add("x", np.zeros(100000, np.float32))
w._f.flush()
print("ready", flush=True)
sys.stdin.read()
"""


def _start_writer(tmp_path, target):
    script = tmp_path / "killed.py"
    script.write_text(_KILLED)
    proc = subprocess.Popen([sys.executable, str(script), str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_kill_9_leftovers_are_cleaned_by_the_next_write(tmp_path):
    target = tmp_path / "t.ddz"
    proc = _start_writer(tmp_path, target)
    alive = _start_writer(tmp_path, target)  # a second writer, still working
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    temps = sorted(f for f in os.listdir(tmp_path) if f.endswith(".tmp"))
    assert len(temps) == 2
    (tmp_path / ".t.ddz.other.tmp").write_text("not ours: another naming")
    (tmp_path / ".u.ddz.abcdefgh.tmp").write_text("not ours: another target")
    codec.save_file({"x": np.zeros(3)}, target)
    left = sorted(f for f in os.listdir(tmp_path) if f.endswith(".tmp"))
    assert len(left) == 3 and ".t.ddz.other.tmp" in left and ".u.ddz.abcdefgh.tmp" in left  # the live one stays
    alive.stdin.close()
    alive.wait()
    with codec.open(target) as f:
        f.verify()


def test_clean_stale_never_follows_links(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    os.symlink(victim, tmp_path / ".t.ddz.abcdefgh.tmp")
    assert files.clean_stale(str(tmp_path / "t.ddz")) == []
    assert victim.read_text() == "keep me"


def test_open_regular_refuses_a_fifo_without_blocking(tmp_path):
    from codec._files import open_regular

    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(codec.FormatError, match="not a regular file"):
        open_regular(str(fifo))
    (tmp_path / "r").write_bytes(b"abc")
    with open_regular(str(tmp_path / "r")) as fh:
        assert fh.read() == b"abc"


# ---- finding 9: a file truncated or rewritten under a reader -------------------------------------
_REWRITTEN = """
import os, sys, numpy as np, codec
path, mode = sys.argv[1], sys.argv[2]
f = codec.open(path, zero_copy=(mode == "zero_copy"))
arrays = [f.get("a"), f.get_rows("a", 3, 9), f.get("b"), f.get_rows("z", 0, 10), f.get("a", framework="torch")]
os.truncate(path, 0)  # as `truncate -s 0` or open(path, "wb") by another process
with open(path, "r+b") as g:
    g.write(b"rewritten" * 100)
print("sum", sum(float(a.sum()) for a in arrays), flush=True)  # touching pages past the new end
def first_problem():
    raise next(iter(f.problems()))  # no problem at all: StopIteration, which fails the test


outcomes = []
for call in (lambda: f.get("a"), lambda: f.get_rows("a", 1, 3), lambda: f.get("z"), lambda: f.verify(),
             first_problem, lambda: f.get("b", verify=True), lambda: codec.open(path)):
    try:
        call()
        outcomes.append("ok")
    except codec.DDZError as exc:
        outcomes.append(type(exc).__name__)
print("survived", " ".join(outcomes))
"""


def _big_file(path):
    rng = np.random.default_rng(0)
    with codec.Writer(path) as w:
        w.add("a", rng.standard_normal((1 << 16, 8)).astype(np.float32))  # 2 MiB
        w.add("b", np.arange(1 << 18, dtype=np.int64))
        w.add("z", np.zeros(1 << 20, np.uint8), zstd=3)


@pytest.mark.parametrize("mode", ["copy", "zero_copy"])
def test_a_file_truncated_underneath(tmp_path, mode):
    """Default reads copy into owned arrays, so every later read of the truncated file is a DDZError;
    ``zero_copy=True`` views are the documented SIGBUS hazard: touching them kills the process."""
    p = tmp_path / "live.ddz"
    _big_file(p)
    script = tmp_path / "rewritten.py"
    script.write_text(_REWRITTEN)
    r = subprocess.run([sys.executable, str(script), str(p), mode], capture_output=True, text=True, timeout=300, cwd=ROOT)
    if mode == "zero_copy":
        assert r.returncode == -signal.SIGBUS and "survived" not in r.stdout
        return
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    got = dict(zip(["get", "get_rows in the new bytes", "get zstd", "verify", "problems", "get verify", "open"],
                   r.stdout.split("survived ")[1].split()))
    assert got == {"get": "TruncatedError", "get_rows in the new bytes": "ok", "get zstd": "TruncatedError",
                   "verify": "TruncatedError", "problems": "TruncatedError", "get verify": "TruncatedError", "open": "FormatError"}, got


def test_rewritten_in_place_with_the_same_size_is_caught_by_checked_reads(tmp_path):
    p = tmp_path / "same.ddz"
    _big_file(p)
    with codec.open(p) as f:
        before = f.get("b")
        at = f.info("b").offset + 8 * 1000
        with open(p, "r+b") as g:  # another writer changes one value in place
            g.seek(at)
            g.write(np.int64(-5).tobytes())
        assert f.get("b")[1000] == -5 and before[1000] == 1000  # what is read is what is there now
        with pytest.raises(codec.ChecksumError):
            f.get("b", verify=True)
        with pytest.raises(codec.ChecksumError):
            f.get_rows("b", 990, 1010, verify=True)  # the 64 KiB block holding those rows
        assert f.get_rows("b", 200000, 200010, verify=True).tolist() == list(range(200000, 200010))  # other blocks are fine


def test_checked_reads_hand_out_arrays_of_their_own(tmp_path):
    p = tmp_path / "c.ddz"
    codec.save_file({"x": np.arange(100, dtype=np.float32)}, p)
    with codec.open(p) as f:
        x = f.get("x", verify=True)
        x[:] = -1  # must not edit the verified bytes a later read is served from
        assert f.get("x", verify=True).tolist() == list(range(100))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_an_unclosed_file_does_not_keep_its_descriptor(tmp_path):
    import gc

    p = tmp_path / "a.ddz"
    _big_file(p)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        codec.open(p).get("b")  # never closed
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 1
