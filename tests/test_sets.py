"""Sharded sets (spec/sets.md): N shards + a JSON index read as one file, with a clear error
for every way a set can break."""

from __future__ import annotations

import json

import numpy as np
import pytest

import codec
from codec.format import Writer, new_set_id, shard_metadata, shard_name, write_set_index
from codec.format.sets import index_crc32

ROWS = (5, 0, 7, 4)


def make_set(folder, rows=ROWS, set_id=None, stem="s", block_size=4096):
    sid = set_id or new_set_id()
    rng = np.random.default_rng(1)
    n = sum(rows)
    idx = rng.integers(0, 1 << 11, (n, 3)).astype(np.uint16)
    raw = rng.standard_normal((n, 2)).astype(np.float32)
    paths, a = [], 0
    for i, r in enumerate(rows):
        p = folder / shard_name(stem, i, len(rows))
        with Writer(p, shard_metadata(sid, i, len(rows)), block_size=block_size) as w:
            w.add("idx", idx[a:a + r], bits=11)
            w.add("raw", raw[a:a + r])
            w.add("z", raw[a:a + r], zstd=1)
            if i == 0:
                w.add("shared", np.arange(7, dtype=np.int32))
        paths.append(p)
        a += r
    index = folder / f"{stem}.ddzset.json"
    write_set_index(index, paths, set_id=sid, objects={"o": {"codec": {"id": "x"}, "sections": {"p": "shared"},
                                                             "must_understand": False}},
                    metadata={"note": "set"})
    return index, idx, raw


def test_set_reads_as_one_file(tmp_path):
    index, idx, raw = make_set(tmp_path)
    with codec.open(index) as s:
        assert isinstance(s, codec.DDZSet) and s.metadata == {"note": "set"} and "o" in s.objects
        assert s.keys() == ["idx", "raw", "z", "shared"]
        assert s.info("idx").shape == (16, 3) and s.info("idx").bits == 11
        assert [p[1:] for p in s.info("idx").pieces] == [(0, 5), (5, 5), (5, 12), (12, 16)]
        assert s.opened_shards == []
        np.testing.assert_array_equal(s.get_rows("idx", 13, 15), idx[13:15])
        assert s.opened_shards == [3]  # rows 13:15 live in shard 3 only
        for a, b in ((0, 16), (3, 9), (4, 13), (5, 5), (11, 12), (0, 0)):
            np.testing.assert_array_equal(s.get_rows("idx", a, b), idx[a:b])
            np.testing.assert_array_equal(s.get_rows("raw", a, b), raw[a:b])
            np.testing.assert_array_equal(s.get_rows("z", a, b), raw[a:b])
        t = s.get_rows("raw", 2, 14, framework="torch")
        assert t.shape == (12, 2)
        np.testing.assert_array_equal(s.get("shared"), np.arange(7))
        s.verify()
        with pytest.raises(codec.InvalidInputError):
            s.get_rows("idx", 3, 17)
        with pytest.raises(codec.SectionNotFoundError):
            s.info("nope")


def _rewrite_index(index, edit):
    doc = json.loads(index.read_bytes())
    edit(doc)
    doc["crc32"] = index_crc32(doc)
    index.write_text(json.dumps(doc))


def test_missing_and_truncated_shards(tmp_path):
    index, idx, _ = make_set(tmp_path)
    (tmp_path / shard_name("s", 2, 4)).unlink()
    with codec.open(index) as s:
        np.testing.assert_array_equal(s.get_rows("idx", 0, 5), idx[:5])  # other shards still read
        with pytest.raises(codec.FileAccessError, match="shard 2 's-00002-of-00004.ddz' is missing"):
            s.get_rows("idx", 6, 7)
        assert len([p for p in s.problems() if isinstance(p, codec.FileAccessError)]) == 1
    index, _, _ = make_set(tmp_path)
    p = tmp_path / shard_name("s", 3, 4)
    p.write_bytes(p.read_bytes()[:-100])
    with codec.open(index) as s, pytest.raises(codec.TruncatedError, match="shard 3"):
        s.get_rows("idx", 15, 16)


def test_shard_from_another_set_or_replaced(tmp_path):
    index, _, _ = make_set(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    make_set(other)  # same layout, another set id
    (tmp_path / shard_name("s", 2, 4)).write_bytes((other / shard_name("s", 2, 4)).read_bytes())
    with codec.open(index) as s, pytest.raises(codec.ShardError, match="a shard from another set"):
        s.get_rows("idx", 0, 16)
    # a shard of the same set id, rewritten with other contents: its header CRC no longer matches the index
    index, _, _ = make_set(tmp_path)
    sid = json.loads(index.read_bytes())["set_id"]
    p = tmp_path / shard_name("s", 1, 4)
    with Writer(p, shard_metadata(sid, 1, 4)) as w:
        w.add("idx", np.zeros((0, 3), np.uint16), bits=11)
        w.add("raw", np.zeros((0, 2), np.float32))
        w.add("z", np.ones((0, 2), np.float32), zstd=3)
    with codec.open(index) as s, pytest.raises(codec.ShardError, match="header CRC"):
        s.verify()  # shard 1 holds no rows, so only verify opens it


def test_index_disagreeing_with_shards(tmp_path):
    index, _, _ = make_set(tmp_path)

    def move_rows(doc):  # shard 0 holds 5 rows; say 4 (and shift the rest)
        for sec in doc["sections"]:
            if sec["name"] in ("idx", "raw", "z"):
                sec["pieces"] = [[0, 0, 4], [1, 4, 4], [2, 4, 11], [3, 11, 16]]
    _rewrite_index(index, move_rows)
    with codec.open(index) as s, pytest.raises(codec.ShardError, match=r"rows \[0, 4\)"):
        s.get_rows("idx", 0, 2)

    index, _, _ = make_set(tmp_path)
    _rewrite_index(index, lambda d: d["shards"][2].update(file_length=d["shards"][2]["file_length"] + 1))
    with codec.open(index) as s, pytest.raises(codec.ShardError, match="the index says"):
        s.get_rows("idx", 6, 7)

    index, _, _ = make_set(tmp_path)
    raw = bytearray(index.read_bytes())
    at = raw.index(b'"file_length":') + 15
    raw[at] = ord("9") if raw[at] != ord("9") else ord("8")  # a damaged digit, checksum left alone
    index.write_bytes(bytes(raw))
    with pytest.raises(codec.ChecksumError, match="index checksum"):
        codec.open(index)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(format="other"), "not a ddz set"),
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(set_id="xyz"), "set_id"),
    (lambda d: d["shards"][0].update(name="../evil.ddz"), "plain file name"),
    (lambda d: d["shards"].append(dict(d["shards"][0])), "twice"),
    (lambda d: d["sections"][0].update(pieces=[[0, 0, 5], [0, 5, 16]]), "later shard"),
    (lambda d: d["sections"][0].update(pieces=[[0, 0, 5], [2, 6, 16]]), "continue"),
    (lambda d: d["sections"][0].update(pieces=[[0, 0, 5]]), "cover"),
    (lambda d: d["sections"][0].update(pieces=[[9, 0, 16]]), "later shard"),
    (lambda d: d["sections"].append(dict(d["sections"][0])), "duplicate"),
    (lambda d: d["objects"]["o"]["sections"].update(p="missing"), "missing section"),
    (lambda d: d.update(shards=[]), "1..65536"),
])
def test_malformed_index_is_a_format_error(tmp_path, edit, match):
    index, _, _ = make_set(tmp_path)
    _rewrite_index(index, edit)
    with pytest.raises(codec.FormatError, match=match):
        codec.open(index)


def test_index_fuzz_never_escapes(tmp_path):
    index, _, _ = make_set(tmp_path)
    good = index.read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(200):
        b = bytearray(good)
        for _ in range(rng.integers(1, 4)):
            b[rng.integers(len(b))] = rng.integers(256)
        index.write_bytes(bytes(b))
        try:
            with codec.open(index) as s:
                s.verify()
        except codec.DDZError:
            pass


def test_write_set_index_refuses_inconsistent_shards(tmp_path):
    sid = new_set_id()
    paths = []
    for i, dt in enumerate((np.uint16, np.int32)):
        p = tmp_path / shard_name("s", i, 2)
        with Writer(p, shard_metadata(sid, i, 2)) as w:
            w.add("a", np.zeros((2, 3), dt))
        paths.append(p)
    with pytest.raises(codec.InvalidInputError, match="differs between shards"):
        write_set_index(tmp_path / "i.json", paths, set_id=sid)
    with pytest.raises(codec.InvalidInputError, match="expected shard 0 of 1"):
        write_set_index(tmp_path / "i.json", paths[1:], set_id=sid)
    assert not (tmp_path / "i.json").exists()


@pytest.mark.parametrize("fails", ["fsync", "replace"])
def test_write_set_index_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch, fails):
    import errno

    import codec.format.sets as sets_mod

    index, _, _ = make_set(tmp_path)
    index.unlink()
    shards = sorted(p for p in tmp_path.iterdir() if p.suffix == ".ddz")
    before = sorted(p.name for p in tmp_path.iterdir())

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sets_mod.os, fails, full)
    with codec.open(shards[0]) as f:
        sid = f.metadata["ddz_set"]["set_id"]
    with pytest.raises(codec.FileAccessError, match="No space left on device"):
        write_set_index(index, shards, set_id=sid)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no index, no temporary


def test_remote_set_reads_only_the_shards_and_blocks_it_needs(tmp_path):
    pytest.importorskip("aiohttp")
    from rangeserver import RangeServer

    index, idx, raw = make_set(tmp_path, rows=(4000, 4000, 4000))
    with RangeServer(tmp_path) as srv, codec.open(f"{srv.url}/{index.name}") as s:
        np.testing.assert_array_equal(s.get_rows("raw", 8100, 8110), raw[8100:8110])
        assert {name for name, _, _ in srv.log} == {index.name, shard_name("s", 2, 3)}
        shard_bytes = sum(b - a for name, a, b in srv.log if name != index.name)
        assert shard_bytes <= 64 + s.shard(2).header_length + 4096
        np.testing.assert_array_equal(s.get_rows("idx", 3990, 4010), idx[3990:4010])
        s.verify()


def test_spec_worked_example(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    spec = (Path(__file__).resolve().parents[1] / "spec" / "sets.md").read_text()
    code = re.search(r"## 5\. Worked example.*?```python\n(.*?)```", spec, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(code, {"np": np, "Writer": Writer, "shard_name": shard_name, "shard_metadata": shard_metadata,  # noqa: S102 - the spec's own example
                "write_set_index": write_set_index})
    shown = re.search(r"wrapped here\):\n\n```\n(.*?)```", spec, re.S).group(1)
    assert (tmp_path / "labels.ddzset.json").read_text() == "".join(line.strip() for line in shown.splitlines())
    assert (tmp_path / shard_name("labels", 0, 2)).stat().st_size == 595
    with codec.open(tmp_path / "labels.ddzset.json") as s:
        np.testing.assert_array_equal(s.get_rows("labels/indices", 2, 4), [[5, 6], [7, 0]])
