"""Hostile soft-label archives through open_archive, codec.load and ``ddz budget FILE``:
every failure is a DDZError (FormatError/LimitError for file data)."""

from __future__ import annotations

import os

import numpy as np
import torch
import pytest

import codec
from codec import budget as B
from codec.codecs import codec_from_config
from codec.codecs.lpld import LPLDCodec
from codec.codecs.topk import TopKCodec
from codec.codecs.vq import VQCodec
from codec.errors import FormatError, InvalidInputError, LimitError
from codec.format import Writer
from codec.softlabels import open_archive

C = 10
CB = np.random.default_rng(0).random((8, 5), dtype=np.float32)
DEC = np.random.default_rng(1).random((10, C), dtype=np.float32)


def _vq_cfg(**edit):
    return dict(VQCodec(C, 10, 5, 8).get_config(), **edit)


def _file(path, meta=None, parts=None, cfg=None):
    parts = dict({"indices": (np.zeros((5, 2), np.uint8), 3), "codebook": (CB, None), "decoder": (DEC, None)},
                 **(parts or {}))
    with Writer(path, metadata=meta or {}) as w:
        for p, (a, bits) in parts.items():
            w.add(f"labels/{p}", a, bits=bits)
        w.add_object("labels", cfg or _vq_cfg(), {p: f"labels/{p}" for p in parts})
    return path


def _all_readers_fail(p, exc=FormatError):
    with pytest.raises(exc):
        open_archive(p).labels()
    with pytest.raises(exc):
        ds = codec.load(p)
        ds[0]
    rows = B.attribute(p)  # attribution never needs to decode
    assert sum(r.bytes for r in rows) == p.stat().st_size


def test_good_file_reads(tmp_path):
    a = open_archive(_file(tmp_path / "g.ddz"))
    assert a.labels().shape == (5, C)


@pytest.mark.parametrize("meta", [{"softlabels": "x"}, {"softlabels": [1]}, {"softlabels": {"object": ["a"]}},
                                  {"softlabels": {"object": 5}}])
def test_bad_softlabels_metadata(tmp_path, meta):
    _all_readers_fail(_file(tmp_path / "m.ddz", meta=meta))


@pytest.mark.parametrize("parts", [
    {"indices": (np.array(3, np.uint8), 3)},  # 0-d row part
    {"indices": (np.zeros(10, np.uint8), 3)},  # 1-D
    {"indices": (np.zeros((5, 3), np.uint8), 3)},  # wrong m
    {"indices": (np.zeros((5, 2), np.uint16), 3)},  # wrong dtype
    {"indices": (np.zeros((5, 2), np.uint8), 4)},  # wrong bit width
    {"indices": (np.zeros((5, 2), np.uint8), None)},  # not bit-packed
])
def test_row_parts_must_match_row_specs(tmp_path, parts):
    _all_readers_fail(_file(tmp_path / "r.ddz", parts=parts))


def test_entropy_high_plane_cannot_broadcast(tmp_path):
    # k=512 -> 9 bits: indices_lo (n, m) and indices_hi (n, m); an (n, 1) high plane used to
    # broadcast silently into wrong indices
    cfg = dict(VQCodec(C, 10, 5, 512, entropy=True).get_config())
    cb = np.random.default_rng(2).random((512, 5), dtype=np.float32)
    parts = {"indices_lo": (np.zeros((5, 2), np.uint8), None), "indices_hi": (np.ones((5, 1), np.uint8), None),
             "codebook": (cb, None), "decoder": (DEC, None)}
    with Writer(tmp_path / "e.ddz") as w:
        for p, (a, bits) in parts.items():
            w.add(f"labels/{p}", a, bits=bits, zstd=3)
        w.add_object("labels", cfg, {p: f"labels/{p}" for p in parts})
    _all_readers_fail(tmp_path / "e.ddz")


@pytest.mark.parametrize("edit", [{"k": 0}, {"k": "8"}, {"dc": 0}, {"dh": None}, {"classes": [1]},
                                  {"zstd_level": 99}, {"zstd_level": 1e300}])
def test_bad_codec_config_is_a_format_error(tmp_path, edit):
    _all_readers_fail(_file(tmp_path / "c.ddz", cfg=_vq_cfg(**edit)))


def test_topk_classes_from_file_are_capped(tmp_path):
    cfg = dict(TopKCodec(C, 2).get_config(), classes=2**40)
    p = _file(tmp_path / "t.ddz", cfg=cfg, parts={"values": (np.ones((4, 2), np.float16), None),
                                                  "indices": (np.zeros((4, 2), np.uint32), 32)})
    with pytest.raises(FormatError):
        open_archive(p)


def test_topk_decode_allocation_is_limited():
    cod = TopKCodec(2**24, 1)
    n = 100  # 100 x 2**24 x 4 B = 6.25 GiB
    with pytest.raises(LimitError):
        cod.decode_rows({"values": np.ones((n, 1), np.float16), "indices": np.zeros((n, 1), np.uint32)})


def test_topk_index_bits_must_be_ceil_log2_classes(tmp_path):
    cfg = TopKCodec(C, 2).get_config()  # 10 classes -> 4 bits
    p = _file(tmp_path / "t.ddz", cfg=cfg, parts={"values": (np.ones((4, 2), np.float16), None),
                                                  "indices": (np.zeros((4, 2), np.uint8), 8)})
    _all_readers_fail(p)


def test_shared_check_and_codec_limits():
    for bad in (lambda: VQCodec(2**25, 10, 5, 8), lambda: VQCodec(C, 10, 5, 8, zstd_level=23),
                lambda: VQCodec(C, 10, 5, 8, temperature=float("inf")), lambda: TopKCodec(True, 1),
                lambda: LPLDCodec(C, 40.0), lambda: LPLDCodec(C, float("inf"), batch_size=2, batches_per_epoch=2, epochs=2),
                lambda: codec_from_config({"id": "quant", "classes": C, "k": 4, "iters": 1e300})):
        with pytest.raises(InvalidInputError):
            bad()


def test_lpld_ratio_keeps_only_the_pool():
    cod = LPLDCodec(C, 4.0, batch_size=2, batches_per_epoch=4, epochs=2)
    assert cod.max_rows == 2 * 2  # floor(2 * 4 / 4) = 2 batches of 2


def _codec_file(path, cfg, parts):
    return _file(path, cfg=cfg, parts=parts)


NAN16 = np.float16(np.nan)


@pytest.mark.parametrize("cid,parts", [
    ("pca", {"proj": (np.zeros((4, 2), np.float16), None), "components": (np.full((2, C), NAN16), None),
             "mean": (np.zeros(C, np.float16), None)}),
    ("pca", {"proj": (np.zeros((4, 2), np.float16), None), "components": (np.zeros((2, C), np.float16), None),
             "mean": (np.full(C, np.float16(np.inf)), None)}),
    ("pca", {"proj": (np.array([[0, np.inf]] * 4, np.float16), None),
             "components": (np.zeros((2, C), np.float16), None), "mean": (np.zeros(C, np.float16), None)}),
    ("quant", {"indices": (np.zeros((4, C), np.uint8), 2), "levels": (np.array([0, 0.1, np.inf, 1], np.float16), None)}),
    ("topk", {"values": (np.array([[0.5, np.inf]] * 4, np.float16), None), "indices": (np.zeros((4, 2), np.uint8), 4)}),
    ("lpld", {"labels": (np.full((4, C), NAN16), None)}),
])
def test_non_finite_stored_floats_are_format_errors(tmp_path, cid, parts):
    """A stored part that would decode to NaN probabilities is refused, not decoded."""
    cfg = {"pca": {"id": "pca", "classes": C, "k": 2}, "quant": {"id": "quant", "classes": C, "k": 4},
           "topk": {"id": "topk", "classes": C, "k": 2}, "lpld": {"id": "lpld", "classes": C}}[cid]
    p = _codec_file(tmp_path / f"{cid}.ddz", codec_from_config(cfg).get_config(), parts)
    _all_readers_fail(p)


def test_bad_reader_arguments_are_invalid_input(tmp_path):
    p = _file(tmp_path / "g.ddz")
    for bad in (lambda: open_archive(p, device="cuda:7"), lambda: open_archive(p, device="tpu"),
                lambda: open_archive(p, dtype="f32"), lambda: open_archive(p)[["a"]], lambda: open_archive(p)[[0.5]],
                lambda: open_archive(p).labels(0, 2, device="nope"), lambda: open_archive(p).labels(0, 2, dtype=torch.int8),
                lambda: open_archive(1234)):
        with pytest.raises(InvalidInputError):
            bad()
    assert open_archive(p)[[4, 0, 4]].shape == (3, C)


# ---- issue 13 -------------------------------------------------------------------------------------
def test_decoded_size_is_checked_before_decoding(tmp_path):
    """12 KB can describe 2**20 rows of 2**24 classes (zstd decoder and index plane): labels()
    must refuse the 64 TiB output before allocating it; a few rows still decode."""
    classes, n = 1 << 24, 1 << 20
    cfg = VQCodec(classes, 1, 1, 2, entropy=True).get_config()
    p = tmp_path / "big.ddz"
    with Writer(p, metadata={"softlabels": {"object": "labels", "rows": n, "classes": classes, "codec": "vq"}}) as w:
        w.add("labels/indices_lo", np.zeros((n, 1), np.uint8), zstd=19)
        w.add("labels/codebook", np.ones((2, 1), np.float32))
        w.add("labels/decoder", np.ones((1, classes), np.float32), zstd=19)
        w.add_object("labels", cfg, {p: f"labels/{p}" for p in ("indices_lo", "codebook", "decoder")})
    assert p.stat().st_size < 20000
    a = open_archive(p)
    with pytest.raises(codec.MemoryLimitError, match="1,048,576 rows x 16,777,216 classes"):
        a.labels()
    with pytest.raises(codec.MemoryLimitError):
        a[0: n // 2]
    one = a.labels(3, 4)
    assert one.shape == (1, classes) and float(one[0, 0]) == pytest.approx(1 / classes)


def test_one_row_part_codec_spills_nothing(tmp_path, monkeypatch):
    import tempfile as tf

    made = []
    real = tf.TemporaryFile

    def spy(*a, **k):
        made.append(k.get("dir"))
        return real(*a, **k)

    monkeypatch.setattr(tf, "TemporaryFile", spy)
    vq = VQCodec(C, 10, 5, 8).set_params(encoder=np.eye(C, 10, dtype=np.float32), decoder=DEC, codebook=CB)
    labels = np.random.default_rng(0).random((50, C)).astype(np.float32)
    codec.softlabels.save_softlabels(tmp_path / "v.ddz", vq, labels)
    assert made == []  # VQ has one row part: no spill file at all
    tk = TopKCodec(C, 3)
    codec.softlabels.save_softlabels(tmp_path / "t.ddz", tk, labels)
    assert made == [str(tmp_path)]  # top-k's second row part spills into an unnamed file beside the output
    assert sorted(os.listdir(tmp_path)) == ["t.ddz", "v.ddz"]
    np.testing.assert_allclose(open_archive(tmp_path / "t.ddz").labels().numpy(),
                               tk.decode_rows({k: v for k, v in tk.encode_rows(labels).items()}).numpy(), rtol=1e-6)


_KILLED_SAVE = """
import os, signal, sys, numpy as np
import codec.softlabels as sl
from codec.codecs.topk import TopKCodec

def rows():
    for i in range(40):
        if i == 20:
            os.kill(os.getpid(), signal.SIGKILL)  # killed half-way, spill files and temp file open
        yield np.random.default_rng(i).random((1000, 10)).astype(np.float32)

sl.save_softlabels(sys.argv[1], TopKCodec(10, 3), sl.IterSource(rows, classes=10), chunk=1000)
"""


def test_killed_save_leaves_only_a_temp_file_that_the_next_save_removes(tmp_path):
    import subprocess
    import sys

    script = tmp_path.parent / f"{tmp_path.name}-killed.py"
    script.write_text(_KILLED_SAVE)
    out = tmp_path / "soft_1.ddz"
    r = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == -9
    left = os.listdir(tmp_path)
    assert len(left) == 1 and left[0].startswith(".soft_1.ddz.") and left[0].endswith(".tmp")  # no spill folder
    codec.softlabels.save_softlabels(out, TopKCodec(C, 3), np.random.default_rng(0).random((5, C)).astype(np.float32))
    assert os.listdir(tmp_path) == ["soft_1.ddz"]


def test_scattered_rows_decode_in_few_ranges(tmp_path, monkeypatch):
    """a[::2] of n rows was n/2 separate decodes (4 s for a 65,536-row file); ids close together
    now share one range decode, with the same values."""
    from codec.softlabels.archive import SoftLabelArchive

    labels = np.random.default_rng(0).random((5000, C)).astype(np.float32)
    codec.softlabels.save_softlabels(tmp_path / "t.ddz", TopKCodec(C, 3), labels)
    a = open_archive(tmp_path / "t.ddz")
    full = a.labels()
    calls = []
    real = SoftLabelArchive.labels

    def counting(self, *args, **kw):
        calls.append(args)
        return real(self, *args, **kw)

    monkeypatch.setattr(SoftLabelArchive, "labels", counting)
    assert torch.equal(a[0:5000:2], full[0::2])
    assert len(calls) == 1
    ids = np.random.default_rng(1).integers(0, 5000, 3000)
    calls.clear()
    assert torch.equal(a.rows_at(ids), full[torch.from_numpy(ids)])
    assert len(calls) < 10
    calls.clear()
    far = np.array([4000, 0, 2000, 0])
    assert torch.equal(a.rows_at(far), full[torch.from_numpy(far)]) and len(calls) == 3
