"""SRe2L / LPLD relabel trees written as their generators write them: imported, and replayed exactly."""

from __future__ import annotations

import copyreg
import json
import os

import numpy as np
import pytest
import torch

import codec
from codec._torchfile import read_torch_file
from codec.errors import FormatError, InvalidInputError
from codec.softlabels import LPLDCodec, open_archive
from codec.softlabels.augment import import_fkd_dir, load_fkd_batch
from codec.softlabels.replay import LPLDBatchSampler, ReplayBatchSampler, ReplayCollate, ReplayDataset, replay_loader
from producers import (images_pil, lpld_train_draws, normalize, rewrite_pickle, write_lpld_tree, write_sre2l_tree)

N, C, B, E, S = 10, 7, 4, 2, 16


@pytest.fixture(scope="module")
def imgs():
    return images_pil(N)


@pytest.fixture(scope="module", params=["cutmix", "mixup"])
def sre2l(request, tmp_path_factory, imgs):
    root = tmp_path_factory.mktemp(f"sre2l_{request.param}")
    seen = write_sre2l_tree(root, imgs, batch_size=B, epochs=E, classes=C, mix_type=request.param, size=S)
    dst = root / "labels.ddz"
    import_fkd_dir(root, dst, LPLDCodec(C, input="logits", temperature=20.0), temperature=20.0, sampler_seed=42,
                   num_samples=N)
    return request.param, root, dst, seen


def test_cutmix_tree_holds_numpy_int64_bbox_and_imports(sre2l):
    mix, root, dst, seen = sre2l
    raw = torch.serialization.get_unsafe_globals_in_checkpoint(str(root / "epoch_0" / "batch_0.tar"))
    if mix == "cutmix":  # what made every CutMix tree fail before
        assert "numpy._core.multiarray.scalar" in raw
        cfg = load_fkd_batch(str(root / "epoch_0" / "batch_0.tar"))
        assert all(type(v) is np.int64 for v in cfg[4])
    else:
        assert raw == []
    a = open_archive(dst)
    assert a.epochs == E and len(a) == E * N
    with codec.open(dst) as f:
        stored = f.get("labels/labels")
    for (e, b), (ids, _) in seen.items():
        cfg = torch.load(root / f"epoch_{e}" / f"batch_{b}.tar", weights_only=False)  # the test wrote it
        s0, s1 = a.rows_of(e, b)
        assert np.array_equal(stored[s0:s1], cfg[5].numpy())  # fp16 logits, bit for bit
        rec = a.record(e, b)
        assert rec["sample_ids"].tolist() == ids and rec["mix_type"] == mix
        assert rec["mix_lam"] == cfg[3]  # the Python float, exactly (f64 section)
        if mix == "cutmix":
            assert rec["mix_bbox"] == [int(v) for v in cfg[4]]


def test_pil_replay_rebuilds_the_batch_the_teacher_saw(sre2l, imgs):
    _, _, dst, seen = sre2l
    loader = replay_loader(dst, lambda i: imgs[i], crop="pil", transform=normalize, size=S)
    got = list(loader)
    assert len(got) == len(seen)
    for (x, y), key in zip(got, sorted(seen)):
        assert torch.equal(x, seen[key][1])  # crops, flips, normalisation and CutMix/Mixup, bit for bit
        assert y.shape == (x.shape[0], C)
    # the tensor path on the same uint8 pixels is close but not PIL's resampling
    t_ds = ReplayDataset(dst, lambda i: torch.from_numpy(np.array(imgs[i])).permute(2, 0, 1).float() / 255,
                         transform=normalize, size=S)
    x0 = torch.stack([t_ds[r][0] for r in range(B)])
    assert not torch.equal(x0, seen[(0, 0)][1]) and (x0 - seen[(0, 0)][1]).abs().max() < 1.0


def test_pil_crop_needs_uint8_and_pil_interpolations(sre2l, imgs):
    _, _, dst, _ = sre2l
    with pytest.raises(InvalidInputError):
        ReplayDataset(dst, torch.rand(N, 3, 40, 40), crop="pil")
    with pytest.raises(InvalidInputError):
        ReplayDataset(dst, lambda i: imgs[i], crop="pil", interpolation="area")
    with pytest.raises(InvalidInputError):
        ReplayDataset(dst, lambda i: imgs[i], crop="opencv")
    ds = ReplayDataset(dst, lambda i: torch.rand(3, 40, 40), crop="pil", size=S)
    with pytest.raises(InvalidInputError):
        ds[0]


# -- the numpy allow-list is narrow ----------------------------------------------------------------
class Evil:
    pass


class _NewObj:  # pickled as NEWOBJ of its class; the test rewrites the class to numpy.ndarray
    def __reduce_ex__(self, protocol):
        return (copyreg.__newobj__, (_NewObj, (10**12,)))


def test_only_numeric_numpy_globals_are_let_through(tmp_path):
    before = set(map(repr, torch.serialization.get_safe_globals()))
    ok = tmp_path / "ok.tar"
    torch.save([np.int64(3), np.float16(0.5), np.arange(4, dtype=np.uint8), np.zeros((2, 2), np.float32)], ok)
    got = read_torch_file(ok, numpy=True)
    assert got[0] == 3 and got[2].tolist() == [0, 1, 2, 3] and type(got[3]) is np.ndarray
    with pytest.raises(FormatError, match="numpy._core.multiarray.scalar"):
        read_torch_file(ok)  # numpy not allowed unless asked for
    # NumPy 1.x writers name the module numpy.core
    old = tmp_path / "np1.tar"
    torch.save([[np.int64(2), np.int64(5)], np.ones(3, np.float16)], old)
    rewrite_pickle(old, b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert read_torch_file(old, numpy=True)[0] == [2, 5]
    bad = {"evil": [Evil()], "object": [np.array([1, "a"], dtype=object)],
           "struct": [np.zeros(2, dtype=[("a", "f4")])], "complex": [np.ones(2, np.complex64)],
           "str": [np.str_("x")], "newobj": [_NewObj()]}
    for name, obj in bad.items():
        p = tmp_path / f"{name}.tar"
        torch.save(obj, p)
        if name == "newobj":
            rewrite_pickle(p, b"c" + _NewObj.__module__.encode() + b"\n_NewObj\n", b"cnumpy\nndarray\n")
        with pytest.raises(FormatError) as ei:
            read_torch_file(p, numpy=True)
        assert str(p) in str(ei.value)
    assert set(map(repr, torch.serialization.get_safe_globals())) == before  # nothing left allowed after the loads
    fifo = tmp_path / "fifo.tar"
    os.mkfifo(fifo)
    with pytest.raises(FormatError, match="regular file"):
        read_torch_file(fifo, numpy=True)


def test_a_tree_file_needing_another_global_is_refused(tmp_path, imgs):
    write_sre2l_tree(tmp_path, imgs, batch_size=B, epochs=1, classes=C, mix_type="cutmix", size=S)
    cfg = torch.load(tmp_path / "epoch_0" / "batch_1.tar", weights_only=False)
    cfg[4] = [Evil(), 1, 2, 3]
    torch.save(cfg, tmp_path / "epoch_0" / "batch_1.tar")
    with pytest.raises(FormatError, match="batch_1.tar"):
        import_fkd_dir(tmp_path, tmp_path / "o.ddz", LPLDCodec(C, input="logits"), sampler_seed=42, num_samples=N)
    assert not (tmp_path / "o.ddz").exists()


# -- LPLD ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p, epochs, extra", [(0.5, 3, False), (0.5, 4, True), (0.0, 2, True)])
def test_lpld_generator_tree_keeps_only_the_pool(tmp_path, imgs, p, epochs, extra):
    seen, total, nb = write_lpld_tree(tmp_path, imgs, batch_size=3, epochs=epochs, prune_ratio=p, classes=C, size=S)
    written = sum(1 for _ in tmp_path.glob("epoch_*/batch_*.tar"))
    assert (written > total) == extra  # the generator's extra epoch when total % nb == 0
    dst = tmp_path / "l.ddz"
    import_fkd_dir(tmp_path, dst, LPLDCodec(C, input="logits"), lpld={"prune_ratio": p, "epochs": epochs})
    a = open_archive(dst)
    assert len(a.batch_rows) - 1 == total and a.steps(0) == nb
    with codec.open(dst) as f:
        assert f.metadata["source"]["lpld"]["pool"] == total
    for g in range(total):
        e, b = divmod(g, nb)
        assert a.record(e, b)["sample_ids"].tolist() == seen[(e, b)][0]  # ids from sampler_indices_epoch.json
    with pytest.raises(FormatError, match="generator writes"):
        import_fkd_dir(tmp_path, tmp_path / "x.ddz", LPLDCodec(C, input="logits"), lpld={"prune_ratio": 0.2, "epochs": epochs})
    assert not (tmp_path / "x.ddz").exists()


def test_lpld_exact_draw_matches_lplds_training_loop(tmp_path, imgs):
    _, total, nb = write_lpld_tree(tmp_path, imgs, batch_size=3, epochs=4, prune_ratio=0.5, classes=C, size=S)
    dst = tmp_path / "l.ddz"
    import_fkd_dir(tmp_path, dst, LPLDCodec(C, input="logits"), lpld={"prune_ratio": 0.5, "epochs": 4})
    a = open_archive(dst)
    torch.manual_seed(11)
    want = lpld_train_draws(total, nb, 4)  # LPLD's loop on the global generator seeded with 11
    s = LPLDBatchSampler(dst, epochs=4, seed=11, draw="lpld")
    assert len(s) == 4 * nb
    for e in range(4):
        assert s.draws(e).tolist() == want[e]
    flat = [g for ep in want for g in ep]
    assert [r for r in s] == [list(range(int(a.batch_rows[g]), int(a.batch_rows[g + 1]))) for g in flat]
    assert all((g + 1) % nb for g in flat)  # an epoch's last batch is never drawn
    # resuming recomputes the same stream; the pool rule from LPLD's --prune_ratio gives the stored pool
    r = LPLDBatchSampler(dst, epochs=4, seed=11, draw="lpld", start_epoch=2, start_step=1, prune_ratio=0.5)
    assert list(r) == list(s)[2 * nb + 1:]
    with pytest.raises(InvalidInputError):
        LPLDBatchSampler(dst, epochs=4, seed=11, draw="lpld", steps_per_epoch=nb + 1)
    with pytest.raises(InvalidInputError):
        LPLDBatchSampler(dst, epochs=6, seed=11, draw="lpld", prune_ratio=0.1)  # pool larger than stored
    with pytest.raises(InvalidInputError):
        LPLDBatchSampler(dst, epochs=4, draw="uniform")  # needs steps_per_epoch
    # the default stays the per-epoch uniform draw
    u = LPLDBatchSampler(dst, epochs=2, steps_per_epoch=5)
    assert u.draw == "uniform" and len(list(u)) == 10


def test_lpld_json_and_loader_end_to_end(tmp_path, imgs):
    write_lpld_tree(tmp_path, imgs, batch_size=3, epochs=2, prune_ratio=0.5, classes=C, size=S)
    with open(tmp_path / "sampler_indices_epoch.json") as f:
        assert sorted(json.load(f)) == ["0", "1"]  # the extra epoch is listed too
    dst = tmp_path / "l.ddz"
    import_fkd_dir(tmp_path, dst, LPLDCodec(C, input="logits"), lpld={"prune_ratio": 0.5, "epochs": 2})
    sampler = LPLDBatchSampler(dst, epochs=2, seed=0, draw="lpld")
    loader = torch.utils.data.DataLoader(ReplayDataset(dst, lambda i: imgs[i], crop="pil", transform=normalize, size=S),
                                         batch_sampler=sampler, collate_fn=ReplayCollate(dst))
    batches = list(loader)
    assert len(batches) == len(sampler) and all(x.shape == (3, 3, S, S) and y.shape == (3, C) for x, y in batches)
    assert ReplayBatchSampler(dst).steps(0) == 3


def test_lpld_codec_prunes_a_full_tree_to_lplds_pool(tmp_path, imgs):
    """An unpruned relabel tree (SRe2L's generator) stored through LPLDCodec(prune_ratio=p) keeps LPLD's pool,
    int(E * nb * (1 - p)) batches, with their records; codec.budget counts the same pool."""
    from codec import budget as B

    seen = write_sre2l_tree(tmp_path, imgs, batch_size=5, epochs=4, classes=C, mix_type="cutmix", size=S)
    cod = LPLDCodec(C, prune_ratio=0.7, batch_size=5, batches_per_epoch=2, epochs=4, input="logits")
    dst = tmp_path / "p.ddz"
    import_fkd_dir(tmp_path, dst, cod, sampler_seed=42, num_samples=N)
    a = open_archive(dst)
    pool = int(4 * 2 * (1 - 0.7))
    assert cod.pool_batches == pool == 2 and len(a.batch_rows) - 1 == pool and len(a) == pool * 5
    assert B.lpld_pool(1, N, 4, prune_ratio=0.7, batch_size=5) == pool
    for g in range(pool):
        e, b = divmod(g, 2)
        assert a.record(e, b)["sample_ids"].tolist() == seen[(e, b)][0]
    with codec.open(dst) as f:
        assert f.objects["labels"]["codec"]["prune_ratio"] == 0.7
