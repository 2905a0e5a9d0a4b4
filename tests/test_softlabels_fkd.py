"""FKD per-image label trees written as FKD_SLG/generate_soft_label.py writes them: import and replay."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import codec
from codec.errors import FormatError, InvalidInputError
from codec.softlabels import TopKCodec, VQCodec, open_archive
from codec.softlabels.fkd import FKDCollate, FKDCropDataset, fkd_loader, fkd_probs, import_fkd_labels
from producers import images_pil, normalize, resized_crop, to_tensor, write_fkd_tree

C, CROPS, S = 12, 6, 16
FOLDERS = ("n02", "n01")  # written unsorted: ImageFolder order sorts them


def _named(n=5):
    ims = images_pil(n, side=36, seed=3)
    return [(f"train/{FOLDERS[k % 2]}/{FOLDERS[k % 2]}_{k}.png", im) for k, im in enumerate(ims)]


def recover(labels, label_type, n_classes):
    """FKD utils_FKD.Recover_soft_label, on float32 (its fp16 tensors are upcast here, as its loss does)."""
    label = torch.as_tensor(np.asarray(labels, np.float32))
    if label_type == "hard":
        return torch.zeros(label.size(0), n_classes).scatter_(1, label.long().view(-1, 1), 1)
    if label_type == "smoothing":
        index, value = label[:, 0].long(), label[:, 1]
        minor = ((torch.ones_like(value) - value) / (n_classes - 1)).reshape(-1, 1).repeat_interleave(n_classes, dim=1)
        return (minor * torch.ones(index.size(0), n_classes)).scatter_(1, index.view(-1, 1), value.view(-1, 1))
    index, value = label[:, 0, :].long(), label[:, 1, :]
    k = index.shape[1]
    if label_type.startswith("marginal_renorm"):
        out = torch.zeros(index.size(0), n_classes).scatter_(1, index, value)
        return torch.nn.functional.normalize(out, p=1.0, dim=1, eps=1e-12)
    minor = ((torch.ones(label.size(0), 1) - value.sum(1, keepdim=True)) / (n_classes - k)).repeat_interleave(n_classes, 1)
    return (minor * torch.ones(index.size(0), n_classes)).scatter_(1, index, value)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("fkd")
    named = _named()
    img_root = root / "imagenet"
    for rel, im in named:
        os.makedirs(img_root / os.path.dirname(rel), exist_ok=True)
        im.save(img_root / rel)
    labels = root / "FKD_soft_label" / "imagenet"
    written = write_fkd_tree(labels, named, num_crops=CROPS, num_seg=3, classes=C, use_fp16=True, input_size=S)
    return labels, img_root, named, written


def test_files_are_numpy_arrays_and_import_as_topk(tree, tmp_path):
    labels, _, named, written = tree
    key = os.path.splitext(named[0][0])[0]
    raw = torch.serialization.get_unsafe_globals_in_checkpoint(str(labels / (key + ".tar")))
    assert "numpy._core.multiarray._reconstruct" in raw  # what torch.load(weights_only=True) alone refuses
    coords, flip, _ = written[key]
    assert coords.dtype == np.float16 and flip.dtype == np.bool_
    dst = tmp_path / "fkd.ddz"
    import_fkd_labels(labels, dst, "topk", classes=C, size=S)
    a = open_archive(dst)
    assert a.epochs == 1 and len(a) == len(named) * CROPS
    with codec.open(dst) as f:
        keys = bytes(f.get("fkd/keys")).decode().split("\n")
        targets = f.get("fkd/targets").tolist()
        assert f.metadata["fkd"]["class_folders"] == ["train/n01", "train/n02"]
    assert keys == sorted(keys, key=lambda k: (os.path.dirname(k), os.path.basename(k)))
    assert targets == [0 if "/n01/" in k else 1 for k in keys]
    assert isinstance(a.codec, TopKCodec) and a.codec.k == 5 and a.codec.missing == "uniform"
    for i, k in enumerate(keys):
        state = torch.load(labels / (k + ".tar"), weights_only=False)  # the test wrote it
        r = a.record(0, i)
        assert np.array_equal(r["coords"], state[0].astype(np.float32)) and r["flip"].tolist() == state[1].tolist()
        want = recover(state[2], "marginal_smoothing_k5", C)
        torch.testing.assert_close(a.labels_for(0, i), want / want.sum(1, keepdim=True), atol=1e-6, rtol=0)


@pytest.mark.parametrize("label_type", ["hard", "smoothing", "marginal_renorm_k5", "marginal_smoothing_k10"])
def test_every_label_type_recovers_as_fkd_does(tmp_path, label_type):
    named = _named(3)
    written = write_fkd_tree(tmp_path / "l", named, num_crops=4, num_seg=4, classes=C, label_type=label_type,
                             use_fp16=False, input_size=S)
    for key in written:
        state = torch.load(tmp_path / "l" / (key + ".tar"), weights_only=False)
        got = fkd_probs(state[2], C, label_type)
        torch.testing.assert_close(got, recover(state[2], label_type, C), atol=1e-6, rtol=0)
    dst = tmp_path / "o.ddz"
    import_fkd_labels(tmp_path / "l", dst, "topk", classes=C, label_type=label_type, size=S)
    want_k = {"hard": 1, "smoothing": 1, "marginal_renorm_k5": 5, "marginal_smoothing_k10": 10}[label_type]
    assert open_archive(dst).codec.k == want_k


def test_vq_import_trains_on_recovered_probabilities(tree, tmp_path):
    labels, _, named, _ = tree
    dst = tmp_path / "vq.ddz"
    import_fkd_labels(labels, dst, {"id": "vq", "dh": 12, "dc": 3, "k": 8}, classes=C, size=S,
                      train={"epochs": 2, "batch_size": 8, "init_sample": 30, "progress": False})
    a = open_archive(dst)
    assert isinstance(a.codec, VQCodec) and len(a) == len(named) * CROPS
    y = a.labels(0, len(a))
    assert torch.allclose(y.sum(1), torch.ones(len(a)), atol=1e-5)


def test_replay_picks_crops_as_imagefolder_fkd_and_rebuilds_fkd_views(tree, tmp_path):
    labels, img_root, named, _ = tree
    dst = tmp_path / "fkd.ddz"
    import_fkd_labels(labels, dst, "topk", classes=C, size=S)
    a = open_archive(dst)
    ds = FKDCropDataset(dst, img_root, num_crops=4, seed=5, transform=normalize)
    by_key = dict((os.path.splitext(r)[0], im) for r, im in named)
    with codec.open(dst) as f:
        keys = bytes(f.get("fkd/keys")).decode().split("\n")
    views, target, rows = ds[2]
    assert views.shape == (4, 3, S, S) and len(set(rows.tolist())) == 4
    s, e = a.rows_of(0, 2)
    assert all(s <= r < e for r in rows.tolist())
    state = torch.load(labels / (keys[2] + ".tar"), weights_only=False)
    img = by_key[keys[2]]
    for v, r in zip(views, rows.tolist()):  # RandomResizedCrop_FKD + RandomHorizontalFlip_FKD + ToTensor + normalize
        c = state[0][r - s]
        i, j, h, w = c[0].item() * img.size[1], c[1].item() * img.size[0], c[2].item() * img.size[1], c[3].item() * img.size[0]
        out = resized_crop(img, i, j, h, w, S)
        if state[1][r - s]:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        assert torch.equal(v, normalize(to_tensor(out)))
    # seeded per (seed, epoch, image): the same again, another epoch differs
    assert torch.equal(ds[2][2], rows)
    ds.set_epoch(1)
    assert not all(torch.equal(ds[i][2], FKDCropDataset(dst, img_root, num_crops=4, seed=5)[i][2]) for i in range(len(ds)))
    # a batch is crop-major with targets and soft labels in the same order
    x, t, y = FKDCollate(dst)([ds[0], ds[1]])
    r0, r1 = ds[0][2], ds[1][2]
    assert x.shape == (8, 3, S, S) and t.tolist() == [ds[0][1], ds[1][1]] * 4
    want = a.rows_at(torch.stack([r0, r1], 1).reshape(-1).numpy())
    assert torch.equal(y, want) and torch.equal(x[1], ds[1][0][0]) and torch.equal(x[2], ds[0][0][1])
    batches = list(fkd_loader(dst, img_root, batch_size=2, num_crops=3, seed=1, num_workers=0, transform=normalize))
    assert [b[0].shape[0] for b in batches] == [6, 6, 3]
    with pytest.raises(InvalidInputError):
        FKDCropDataset(dst, img_root, num_crops=CROPS + 1)
    with pytest.raises(InvalidInputError):
        FKDCropDataset(dst, tmp_path / "nope")


def test_bad_fkd_files_are_format_errors(tmp_path):
    (tmp_path / "train" / "n01").mkdir(parents=True)
    f = tmp_path / "train" / "n01" / "a.tar"
    good = [np.zeros((2, 4), np.float16), np.zeros(2, bool), np.zeros((2, 2, 5), np.float16)]
    good[2][:, 0, :] = np.arange(5)
    for bad in ([good[0], good[1]],  # two fields
                [good[0], good[1], np.full((2, 2, 5), 7.5, np.float16)],  # non-integer index
                [good[0], good[1], np.stack([np.full((2, 5), 3000.0), np.zeros((2, 5))], 1).astype(np.float16)],
                [np.zeros((2, 3), np.float32), good[1], good[2]],  # coords not [crops, 4]
                [good[0], good[1], np.array([1, "a"], dtype=object)]):  # object array: refused by the allow-list
        torch.save(bad, f)
        with pytest.raises(FormatError):
            import_fkd_labels(tmp_path, tmp_path / "o.ddz", "topk", classes=C)
        assert not (tmp_path / "o.ddz").exists()
    with pytest.raises(FormatError, match="float16"):  # fp16 indices cannot address 3000 classes
        fkd_probs(good[2], 3000, "marginal_smoothing_k5")
    with pytest.raises(InvalidInputError):
        import_fkd_labels(tmp_path, tmp_path / "o.ddz", "topk", classes=C, label_type="marginal")
    with pytest.raises(InvalidInputError):
        import_fkd_labels(tmp_path / "none", tmp_path / "o.ddz", "topk", classes=C)
    os.unlink(f)
    os.mkfifo(f)
    with pytest.raises(FormatError, match="regular file"):
        import_fkd_labels(tmp_path, tmp_path / "o.ddz", "topk", classes=C)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/abs/x", "train//x", "train/./x", ""])
def test_archive_keys_cannot_leave_the_image_root(tmp_path, bad):
    from codec.codecs.base import Part
    from codec.softlabels.augment import BatchRecord, write_replay_archive

    keys = ["train/n01/a", bad]
    recs = [BatchRecord(0, i, torch.full((2, C), 1.0 / C), torch.full((2, 4), 0.25), torch.zeros(2, dtype=torch.bool),
                        torch.full((2,), i)) for i in range(2)]
    p = write_replay_archive(tmp_path / "x.ddz", TopKCodec(C, 2), lambda: iter(recs), classes=C, num_samples=2,
                             metadata={"fkd": {"version": 1}},
                             sections={"fkd/keys": Part(np.frombuffer("\n".join(keys).encode(), np.uint8).copy()),
                                       "fkd/targets": Part(np.zeros(2, np.uint32))})
    with pytest.raises(FormatError, match="relative path"):
        FKDCropDataset(p, tmp_path, num_crops=1)
