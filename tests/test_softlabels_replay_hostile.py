"""Hostile replay archives, replay arguments and relabel directories: every failure is a
DDZError (FormatError for file data, InvalidInputError for arguments), and nothing read from
a file can make the loader allocate without bound."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from codec.errors import FormatError, InvalidInputError
from codec.softlabels import TopKCodec
from codec.softlabels.augment import BatchRecord, import_fkd_dir, write_replay_archive
from codec.softlabels.replay import LPLDBatchSampler, ReplayArchive, ReplayBatchSampler, ReplayDataset, replay_loader
from ddzutil import replay_records, rewrite

C, B = 6, 4
IMGS = torch.rand(10, 3, 16, 16)


_recs = replay_records(C, B, seed=0)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    p = tmp_path_factory.mktemp("rp") / "good.ddz"
    write_replay_archive(p, TopKCodec(C, 3, input="logits"), _recs, classes=C, num_samples=10)
    return p


def _replay_all(p, size=8):
    """Read every record and replay every view; returns (records, views, label rows)."""
    a = ReplayArchive(p)
    records = sum(1 for e in range(a.epochs) for s in range(a.steps(e)) if a.record(e, s) is not None)
    views = rows = 0
    for x, y in replay_loader(p, IMGS, batch_size=5, size=size):
        views, rows = views + x.shape[0], rows + y.shape[0]
        assert x.shape[1:] == (IMGS.shape[1], size, size) and torch.allclose(y.sum(1), torch.ones(y.shape[0]))
    return records, views, rows


def test_good_archive_replays(good):
    assert _replay_all(good) == (6, 6 * B, 6 * B)


@pytest.mark.parametrize("edits", [
    {"aug/epoch_batches": lambda a, b: (np.zeros(0, np.uint64), b)},
    {"aug/epoch_batches": lambda a, b: (np.zeros((3, 2), np.uint64), b)},
    {"aug/batch_rows": lambda a, b: (np.zeros(0, np.uint64), b)},
    {"aug/mix_type": lambda a, b: (np.full_like(a, 9), b)},
    {"aug/mix_lam": lambda a, b: (np.full_like(a, np.nan), b)},
    {"aug/mix_lam": lambda a, b: (np.full_like(a, 7.0), b)},
    {"aug/mix_bbox": lambda a, b: (np.full_like(a, -5), b)},
    {"aug/crop": lambda a, b: (np.full_like(a, np.nan), b)},
    {"aug/crop": lambda a, b: (np.full_like(a, np.inf), b)},
    {"aug/crop": lambda a, b: (np.full_like(a, 3.0), b)},
    {"aug/crop": lambda a, b: (a[:, 0].copy(), b)},
    {"aug/sample": lambda a, b: (np.full_like(a, 1000), 10)},  # >= num_samples 10
    {"aug/flip": lambda a, b: (a.reshape(-1, 1).repeat(2, 1), b)},
], ids=["eb-empty", "eb-2d", "br-empty", "mix_type-9", "lam-nan", "lam-7", "bbox-neg", "crop-nan", "crop-inf",
        "crop-3", "crop-1d", "sample-huge", "flip-2d"])
def test_bad_records_are_format_errors(good, tmp_path, edits):
    p = rewrite(good, tmp_path / "bad.ddz", edits)
    with pytest.raises(FormatError):
        _replay_all(p)


def test_sample_ids_beyond_the_image_tensor(good):
    with pytest.raises(InvalidInputError):
        ReplayDataset(good, IMGS[:3])


@pytest.mark.parametrize("crop", ["x", {"size": "big"}, {"size": 10**6}, {"size": 0}, {"interpolation": "bogus"},
                                  {"size": 4096}, {"size": 1025}])
def test_crop_metadata_is_checked_before_any_allocation(good, tmp_path, crop):
    p = rewrite(good, tmp_path / "m.ddz", meta_edit=lambda m: m["augment"].__setitem__("crop", crop))
    with pytest.raises(FormatError):
        ReplayDataset(p, IMGS)


def test_a_file_cannot_ask_for_huge_views_but_a_caller_can(good, tmp_path):
    """A 4096 x 4096 view is 200 MB of float32: a file's crop.size may ask for at most 1024 (the fuzz
    campaign's FKD mutants made each loader item cost 2.3 GB and 14 s); the caller may pass more."""
    p = rewrite(good, tmp_path / "m.ddz", meta_edit=lambda m: m["augment"]["crop"].__setitem__("size", 1024))
    assert ReplayDataset(p, IMGS).size == 1024
    assert ReplayDataset(good, IMGS, size=2048).size == 2048


@pytest.mark.parametrize("kw", [dict(size=10**6), dict(size=0), dict(size="8"), dict(interpolation="bogus")])
def test_dataset_arguments(good, kw):
    with pytest.raises(InvalidInputError):
        ReplayDataset(good, IMGS, **kw)


@pytest.mark.parametrize("kw", [dict(start_step=-2), dict(start_step=99), dict(start_epoch=5), dict(epochs="x"),
                                dict(start_epoch="1"), dict(steps_per_epoch=0), dict(seed=-1)])
def test_lpld_sampler_arguments(good, kw):
    args = {"epochs": 2, "steps_per_epoch": 3, **kw}
    with pytest.raises(InvalidInputError):
        LPLDBatchSampler(good, **args)


def test_lpld_sampler_batch_step_range(good):
    s = LPLDBatchSampler(good, epochs=2, steps_per_epoch=3)
    assert len(s) == 6 and len(list(s)) == 6
    with pytest.raises(InvalidInputError):
        s.batch(0, 99)
    with pytest.raises(InvalidInputError):
        s.batch(0, -1)


@pytest.mark.parametrize("kw", [dict(start_epoch="1"), dict(epochs="x"), dict(start_step=-1), dict(epochs=1.5)])
def test_replay_sampler_arguments(good, kw):
    with pytest.raises(InvalidInputError):
        ReplayBatchSampler(good, 5, **kw)


def test_pickled_archive_drops_row_cache(good):
    a = ReplayArchive(good)
    a._rowdata("crop")
    st = a.__getstate__()
    assert st["_row_cache"] == {}
    assert len(pickle.dumps(a)) < 4096


# ---- the relabel-directory importer ----------------------------------------------------------
def _fkd(root, lam=0.3, bbox=(1, 1, 3, 3), mix_index="perm"):
    os.makedirs(root / "epoch_0", exist_ok=True)
    n = 4
    mi = torch.randperm(n) if mix_index == "perm" else mix_index
    torch.save([torch.rand(n, 4) * .5, torch.zeros(n, dtype=torch.bool), mi, lam, bbox, torch.randn(n, C)],
               root / "epoch_0" / "batch_0.tar")
    return root


@pytest.mark.parametrize("kw", [dict(lam=torch.tensor([0.1, 0.2])), dict(lam="x"), dict(lam=[0.1]), dict(lam=float("nan")),
                                dict(bbox=[[1, 2], [3, 4]]), dict(bbox="abcd"), dict(bbox=[3, 1, 1, 3]),
                                dict(mix_index=torch.rand(4))])
def test_import_bad_mix_fields(tmp_path, kw):
    src = _fkd(tmp_path / "d", **kw)
    with pytest.raises(FormatError):
        import_fkd_dir(src, tmp_path / "o.ddz", TopKCodec(C, 2, input="logits"))


@pytest.mark.parametrize("content", ["{bad", "5", '[["a"]]', "[[]]", '[[-1, 2]]', '{"abc": [0, 1, 2, 3]}',
                                     '{"1": [0, 1, 2, 3]}', '{"0": [0, 1, 2, 3], "epoch_0": [0, 1, 2, 3]}'])
def test_import_bad_sampler_json(tmp_path, content):
    src = _fkd(tmp_path / "d")
    (src / "sampler_indices_epoch.json").write_text(content)
    with pytest.raises(FormatError):
        import_fkd_dir(src, tmp_path / "o.ddz", TopKCodec(C, 2, input="logits"))


@pytest.mark.parametrize("content", ['[[3, 2, 1, 0]]', '{"0": [3, 2, 1, 0]}', '{"epoch_0": [3, 2, 1, 0]}'])
def test_import_sampler_json_forms(tmp_path, content):
    src = _fkd(tmp_path / "d")
    (src / "sampler_indices_epoch.json").write_text(content)
    import_fkd_dir(src, tmp_path / "o.ddz", TopKCodec(C, 2, input="logits"))
    assert ReplayArchive(tmp_path / "o.ddz").sample_ids(0, 0).tolist() == [3, 2, 1, 0]


def test_import_sampler_json_directory_and_epoch_file(tmp_path):
    src = _fkd(tmp_path / "d")
    os.makedirs(src / "sampler_indices_epoch.json")
    with pytest.raises(FormatError):
        import_fkd_dir(src, tmp_path / "o.ddz", TopKCodec(C, 2, input="logits"))
    src2 = _fkd(tmp_path / "e")
    (src2 / "epoch_1").write_text("not a directory")
    with pytest.raises(FormatError):
        import_fkd_dir(src2, tmp_path / "o2.ddz", TopKCodec(C, 2, input="logits"))


@pytest.mark.parametrize("cfg", [{"id": "vq", "dh": 6, "dc": 3}, {"id": "vq", "dh": 6, "dc": 3, "k": 4, "zz": 1},
                                 {"id": "vq", "dh": 6, "dc": 4, "k": 4}, "vq"])
def test_import_bad_codec_argument(tmp_path, cfg):
    src = _fkd(tmp_path / "d")
    with pytest.raises(InvalidInputError):
        import_fkd_dir(src, tmp_path / "o.ddz", cfg)


def test_loader_pieces_share_one_archive_per_process(good):
    from codec.softlabels.replay import ReplayCollate

    s, d, c = ReplayBatchSampler(good, 5), ReplayDataset(good, IMGS), ReplayCollate(good)
    assert s.archive is d.archive is c.archive
    clone = pickle.loads(pickle.dumps(d))  # what a DataLoader worker receives
    assert clone._arch is None and clone.archive is d.archive  # same process -> same archive


@pytest.mark.parametrize("field,value", [("coords", torch.full((B, 4), float("nan"))), ("coords", torch.full((B, 4), 2.0)),
                                         ("flip", torch.full((B,), 0.5)), ("flip", torch.full((B,), 3)),
                                         ("mix_index", torch.rand(B)), ("mix_lam", torch.tensor([0.1, 0.2]))])
def test_recorder_rejects_bad_fields_naming_field_and_batch(tmp_path, field, value):
    def recs():
        r = next(iter(_recs()))
        kw = dict(r.__dict__, mix_type="mixup", mix_index=torch.arange(B), mix_lam=0.5)
        kw[field] = value
        yield BatchRecord(**kw)
    with pytest.raises(FormatError, match=rf"batch 0 .*{field}"):
        write_replay_archive(tmp_path / "x.ddz", TopKCodec(C, 3, input="logits"), recs, classes=C)
    assert not (tmp_path / "x.ddz").exists()


@pytest.mark.parametrize("where", ["batch", "sampler"])
def test_import_refuses_a_fifo_without_blocking(tmp_path, where):
    import signal

    src = _fkd(tmp_path / "d")
    target = src / "epoch_0" / "batch_1.tar" if where == "batch" else src / "sampler_indices_epoch.json"
    os.mkfifo(target)  # opening it for reading would block until a writer comes
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("import_fkd_dir blocked on a FIFO"))
    signal.alarm(20)
    try:
        with pytest.raises(FormatError, match="not a regular file"):
            import_fkd_dir(src, tmp_path / "o.ddz", TopKCodec(C, 2, input="logits"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert not (tmp_path / "o.ddz").exists()


def test_video_folder_refuses_a_fifo(tmp_path):
    from codec.video.io import find_clips, read_video

    (tmp_path / "cls").mkdir()
    os.mkfifo(tmp_path / "cls" / "clip.mp4")
    with pytest.raises(InvalidInputError, match="not a regular file"):
        find_clips(tmp_path)
    with pytest.raises(InvalidInputError, match="not a regular file"):
        read_video(str(tmp_path / "cls" / "clip.mp4"))
