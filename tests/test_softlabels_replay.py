"""Augmentation records, the SRe2L/LPLD directory importer and the replay API."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import codec
from codec.errors import FormatError, InvalidInputError
from codec.softlabels import LPLDCodec, TopKCodec, open_archive
from codec.softlabels.augment import BatchRecord, import_fkd_dir, write_replay_archive
from codec.softlabels.replay import (LPLDBatchSampler, ReplayArchive, ReplayBatchSampler, ReplayDataset,
                                     apply_crop_flip, mix_pair, replay_loader)

N, C, B, E = 20, 10, 8, 3


class Evil:  # an arbitrary pickled object: torch.load(weights_only=True) must refuse it
    pass


def make_fkd_dir(root, seed=0):
    """Write an SRe2L-style relabel directory (what generate_soft_label.py produces)."""
    g = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(range(N), generator=torch.Generator().manual_seed(42))
    written = {}
    for e in range(E):
        order = list(iter(sampler))
        os.makedirs(root / f"epoch_{e}", exist_ok=True)
        for b in range((N + B - 1) // B):
            ids = order[b * B:(b + 1) * B]
            n = len(ids)
            coords = torch.rand(n, 4, generator=g) * 0.5
            coords[:, 2:] += 0.3
            flip = torch.rand(n, generator=g) > 0.5
            mt = ("cutmix", "mixup", "none")[(e + b) % 3]
            mi = torch.randperm(n, generator=g) if mt != "none" else None
            lam = float(torch.rand(1, generator=g)) if mt != "none" else None
            bbox = [2, 3, 9, 12] if mt == "cutmix" else None
            out = (torch.randn(n, C, generator=g) * 2).half()
            torch.save([coords, flip, mi, lam, bbox, out], root / f"epoch_{e}" / f"batch_{b}.tar")
            written[(e, b)] = (ids, coords, flip, mt, mi, lam, bbox, out)
    return written


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("fkd")
    written = make_fkd_dir(root)
    dst = root / "labels.ddz"
    import_fkd_dir(root, dst, TopKCodec(C, 4, input="logits", temperature=4.0), input="logits", temperature=4.0,
                   sampler_seed=42, num_samples=N)
    return dst, written


def test_import_keeps_every_record(imported):
    path, written = imported
    a = open_archive(path)
    assert isinstance(a, ReplayArchive) and a.epochs == E and len(a) == E * N
    for (e, b), (ids, coords, flip, mt, mi, lam, bbox, out) in written.items():
        r = a.record(e, b)
        assert r["sample_ids"].tolist() == ids == a.sample_ids(e, b).tolist()
        assert np.array_equal(r["coords"], coords.numpy()) and r["flip"].tolist() == flip.tolist()
        assert r["mix_type"] == mt and r["mix_bbox"] == bbox
        if mt != "none":
            assert r["mix_index"].tolist() == mi.tolist() and abs(r["mix_lam"] - lam) < 1e-6
        y = torch.softmax(out.float() / 4.0, 1)
        got = a.labels_for(e, b)
        assert torch.equal(got.argmax(1), y.argmax(1))
    with codec.open(path) as f:
        f.verify()
        assert f.info("aug/sample").bits == 5 and f.info("aug/flip").bits == 1


def test_views_are_rebuilt_exactly(imported):
    path, written = imported
    imgs = torch.rand(N, 3, 24, 24)
    ds = ReplayDataset(path, imgs, size=12)
    a = ReplayArchive(path)
    for (e, b) in [(0, 0), (0, 1), (1, 1), (2, 2)]:
        ids, coords, flip, mt, mi, lam, bbox, _ = written[(e, b)]
        s, _ = a.rows_of(e, b)
        views = torch.stack([apply_crop_flip(imgs[i], coords[p], bool(flip[p]), 12) for p, i in enumerate(ids)])
        if mt == "mixup":
            views = lam * views + (1 - lam) * views[mi]
        elif mt == "cutmix":
            views[:, :, bbox[0]:bbox[2], bbox[1]:bbox[3]] = views[mi][:, :, bbox[0]:bbox[2], bbox[1]:bbox[3]]
        got = torch.stack([ds[s + p][0] for p in range(len(ids))])
        torch.testing.assert_close(got, views)


def test_replay_determinism_resume_and_workers(imported):
    path, _ = imported
    imgs = torch.rand(N, 3, 16, 16)
    full = list(replay_loader(path, imgs, size=8, batch_size=5))
    again = list(replay_loader(path, imgs, size=8, batch_size=5))
    assert len(full) == E * 4
    for (x1, y1), (x2, y2) in zip(full, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # resume at epoch 1, step 2 (in units of the training batch size)
    resumed = list(replay_loader(path, imgs, size=8, batch_size=5, start_epoch=1, start_step=2))
    assert len(resumed) == len(full) - 6
    for (x1, y1), (x2, y2) in zip(full[6:], resumed):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # two DataLoader workers give the same batches (file opened lazily per worker)
    workers = list(replay_loader(path, imgs, size=8, batch_size=5, num_workers=2))
    for (x1, y1), (x2, y2) in zip(full, workers):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # stored batch size: step s of epoch e is stored batch (e, s)
    sampler = ReplayBatchSampler(path)
    assert len(sampler) == E * 3 and sampler.batch(1, 2) == list(range(N + 16, 2 * N))
    assert sampler.sample_ids(1, 2).tolist() == ReplayArchive(path).sample_ids(1, 2).tolist()


def test_lpld_pool_sampler_is_seeded(tmp_path):
    g = torch.Generator().manual_seed(0)

    def batches():
        for e in range(4):
            for s in range(2):
                yield BatchRecord(e, s, torch.randn(4, C, generator=g), torch.rand(4, 4, generator=g),
                                  torch.zeros(4, dtype=torch.bool), torch.arange(4) + 4 * s)

    p = write_replay_archive(tmp_path / "l.ddz", LPLDCodec(C, 1.0, input="logits"), batches, classes=C)
    s1 = LPLDBatchSampler(p, epochs=3, steps_per_epoch=5, seed=7)
    s2 = LPLDBatchSampler(p, epochs=3, steps_per_epoch=5, seed=7, start_epoch=1, start_step=3)
    a, b = list(s1), list(s2)
    assert len(a) == 15 and a[8:] == b and all(len(x) == 4 for x in a)
    assert list(LPLDBatchSampler(p, epochs=3, steps_per_epoch=5, seed=8)) != a


def _lpld_batches(g, epochs=4, steps=3, size=4):
    for e in range(epochs):
        for s in range(steps):
            yield BatchRecord(e, s, torch.randn(size, C, generator=g), torch.rand(size, 4, generator=g),
                              torch.zeros(size, dtype=torch.bool), torch.arange(size) + size * s)


def test_lpld_pruned_pool_keeps_the_records_of_its_batches(tmp_path):
    g = torch.Generator().manual_seed(1)
    recs = list(_lpld_batches(g))
    lp = LPLDCodec(C, 2.0, batch_size=4, batches_per_epoch=3, epochs=4, input="logits")  # pool: floor(12 / 2) = 6
    p = write_replay_archive(tmp_path / "l.ddz", lp, lambda: iter(recs), classes=C)
    a = ReplayArchive(p)
    assert len(a) == 24 and len(a.batch_rows) - 1 == 6 and a.epochs == 2
    for r in recs[:6]:
        assert np.array_equal(a.record(r.epoch, r.step)["coords"], r.coords.numpy())
        want = torch.softmax(r.labels.half().float(), 1)
        assert torch.allclose(a.labels_for(r.epoch, r.step), want, atol=1e-6)
    drawn = list(LPLDBatchSampler(p, epochs=2, steps_per_epoch=3, seed=0))
    assert len(drawn) == 6 and all(b in [list(range(4 * i, 4 * i + 4)) for i in range(6)] for b in drawn)


def test_lpld_pool_ending_inside_a_batch_is_refused_and_leaves_no_file(tmp_path):
    g = torch.Generator().manual_seed(2)
    lp = LPLDCodec(C, 2.0, batch_size=3, batches_per_epoch=3, epochs=4)  # 6 x 3 = 18 rows: inside the 5th 4-row batch
    with pytest.raises(InvalidInputError, match="ends inside a batch"):
        write_replay_archive(tmp_path / "l.ddz", lp, lambda: _lpld_batches(g), classes=C)
    assert not (tmp_path / "l.ddz").exists()


def test_importer_rejects_bad_directories(tmp_path):
    (tmp_path / "epoch_0").mkdir()
    torch.save([torch.zeros(2, 4), torch.zeros(2, dtype=torch.bool), None, None, None, torch.zeros(2, C)],
               tmp_path / "epoch_0" / "batch_1.tar")  # batch_0 missing
    with pytest.raises(FormatError):
        import_fkd_dir(tmp_path, tmp_path / "o.ddz", TopKCodec(C, 2, input="logits"))
    os.rename(tmp_path / "epoch_0" / "batch_1.tar", tmp_path / "epoch_0" / "batch_0.tar")

    torch.save([torch.zeros(2, 4), Evil(), None, None, None, torch.zeros(2, C)], tmp_path / "epoch_0" / "batch_1.tar")
    with pytest.raises(FormatError):
        import_fkd_dir(tmp_path, tmp_path / "o.ddz", TopKCodec(C, 2, input="logits"))
    assert not (tmp_path / "o.ddz").exists()
    torch.save({"not": "a list"}, tmp_path / "epoch_0" / "batch_1.tar")
    with pytest.raises(FormatError):
        import_fkd_dir(tmp_path, tmp_path / "o.ddz", TopKCodec(C, 2, input="logits"))
    with pytest.raises(InvalidInputError):
        import_fkd_dir(tmp_path / "nope", tmp_path / "o.ddz", TopKCodec(C, 2, input="logits"))


def test_replay_api_errors(imported):
    path, _ = imported
    a = ReplayArchive(path)
    with pytest.raises(InvalidInputError):
        a.rows_of(E, 0)
    with pytest.raises(InvalidInputError):
        a.rows_of(0, 99)
    with pytest.raises(InvalidInputError):
        ReplayBatchSampler(path, 0)
    with pytest.raises(InvalidInputError):
        ReplayBatchSampler(path, 4, start_epoch=0, start_step=99)
    with pytest.raises(InvalidInputError):
        mix_pair(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), "blend", 0.5, None)


def test_vq_labels_in_workers_equal_single_thread_main_process(tmp_path):
    """Workers decode with one thread; the main process with torch.set_num_threads(1) gives the same bits
    (README: MKL's sgemm order may depend on the thread count)."""
    from codec.softlabels import VQCodec

    g = torch.Generator().manual_seed(3)
    vq = VQCodec(100, 64, 4, 256).set_params(encoder=torch.randn(100, 64, generator=g),
                                           decoder=torch.randn(64, 100, generator=g) * 0.05,
                                           codebook=torch.randn(256, 4, generator=g))

    def batches():
        for e in range(2):
            for s in range(3):
                yield BatchRecord(e, s, torch.softmax(torch.randn(8, 100, generator=g), 1), torch.rand(8, 4, generator=g),
                                  torch.zeros(8, dtype=torch.bool), torch.arange(8) + 8 * s)

    p = write_replay_archive(tmp_path / "vq.ddz", vq, batches, classes=100)
    imgs = torch.rand(24, 3, 8, 8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        main = [y for _, y in replay_loader(p, imgs, size=4, batch_size=6)]
    finally:
        torch.set_num_threads(before)
    workers = [y for _, y in replay_loader(p, imgs, size=4, batch_size=6, num_workers=2)]
    assert len(main) == len(workers) == 8 and all(torch.equal(a, b) for a, b in zip(main, workers))
