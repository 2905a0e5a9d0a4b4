"""codec.load: the latent-video Dataset (items, batch decode, cache, pickling, DataLoader workers, DDP sampler)."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from codec.errors import FormatError, InvalidInputError
from codec.loader import load
from codec.video import decode_latents, pack_latents, tiny_vae_config, vae_from_config


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    vae = vae_from_config(tiny_vae_config(), seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, 3, 4, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    path = tmp_path_factory.mktemp("load") / "d.ddz"
    pack_latents(path, vae, x, y, class_names=["r", "g", "b"], chunk_size=4, progress=False)
    return str(path)


def test_items_match_batch_decode_and_direct_decode(archive):
    ds = load(archive)
    v, y = ds.decode_batch([8, 2, 5])
    assert v.shape == (3, 3, 3, 16, 16) and y.tolist() == [2, 2, 2]
    for k, i in enumerate([8, 2, 5]):
        vi, yi = ds[i]
        torch.testing.assert_close(vi, v[k], atol=1e-5, rtol=0)
        assert int(yi) == int(y[k])
    z = ds.latents([5])[0]
    torch.testing.assert_close(decode_latents(ds.vae, z), v[2], atol=1e-5, rtol=0)
    assert ds[-1][0].shape == (3, 3, 16, 16)
    with pytest.raises(IndexError):
        ds[9]


@pytest.mark.parametrize("cache", ["latents", "frames"])
def test_caches_give_same_data(archive, cache):
    plain, cached = load(archive), load(archive, cache=cache)
    for i in (0, 3, 0):
        torch.testing.assert_close(cached[i][0], plain[i][0], atol=1e-5, rtol=0)


def test_pickle_is_small_and_lazy(archive):
    ds = load(archive)
    ds[0]  # opens the file and builds the VAE in this process
    blob = pickle.dumps(ds)
    assert len(blob) < 4096  # path + options + labels: no mmap, no model
    ds2 = pickle.loads(blob)
    torch.testing.assert_close(ds2[1][0], ds[1][0])


def test_two_worker_dataloader_and_distributed_sampler(archive):
    ds = load(archive)
    ref_v, ref_y = ds.decode_batch(list(range(len(ds))))
    dl = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    vs, ys = zip(*dl)
    torch.testing.assert_close(torch.cat(vs), ref_v, atol=1e-5, rtol=0)
    assert torch.equal(torch.cat(ys), ref_y)
    seen = []
    for rank in range(2):
        s = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        s.set_epoch(1)
        for v, _y in DataLoader(ds, batch_size=3, sampler=s):
            assert v.shape[1:] == (3, 3, 16, 16)
        seen += list(s)
    assert sorted(set(seen)) == list(range(9))


def test_bad_paths_and_options(archive, tmp_path):
    with pytest.raises(InvalidInputError):
        load(tmp_path / "missing.ddz")
    import codec

    codec.save_file({"x": torch.zeros(3)}, tmp_path / "plain.ddz")
    with pytest.raises(FormatError):
        load(tmp_path / "plain.ddz")
    for kw in ({"cache": "gpu"}, {"decode_batch": 0}, {"autocast": "int4"}, {"vae_dtype": "f8"}):
        with pytest.raises(InvalidInputError):
            load(archive, **kw)


def test_soft_labels_ride_along(tmp_path):
    vae = vae_from_config(tiny_vae_config(), seed=0)
    x, y = torch.randn(5, 2, 4, 8, 8), torch.tensor([0, 1, 0, 1, 0])
    soft = torch.softmax(torch.randn(5, 2), 1)
    pack_latents(tmp_path / "s.ddz", vae, x, y, soft_labels=soft, progress=False)
    ds = load(tmp_path / "s.ddz")
    v, lab, s = ds[3]
    assert v.shape == (2, 3, 16, 16) and int(lab) == 1
    torch.testing.assert_close(s, soft[3].half().float())
    bv, by, bs = next(iter(DataLoader(ds, batch_size=5, num_workers=0)))
    torch.testing.assert_close(bs, soft.half().float())
    with pytest.raises(InvalidInputError):
        pack_latents(tmp_path / "t.ddz", vae, x, y, soft_labels=soft[:4], progress=False)


def test_soft_label_archives_are_handed_to_codec_softlabels(tmp_path):
    from codec.softlabels import SoftLabelArchive, TopKCodec, save_softlabels

    logits = torch.randn(12, 10, generator=torch.Generator().manual_seed(0))
    save_softlabels(tmp_path / "sl.ddz", TopKCodec(10, 3, input="logits"), logits)
    arch = load(tmp_path / "sl.ddz")
    assert isinstance(arch, SoftLabelArchive) and len(arch) == 12


def test_codec_load_is_callable_as_documented(archive):
    import codec
    import codec.loader.video  # importing the subpackage must not shadow the function

    ds = codec.load(archive)
    assert len(ds) == 9 and ds[0][0].shape == (3, 3, 16, 16)


def test_failed_state_build_closes_the_file(archive, monkeypatch):
    import codec.loader.video as lv
    from codec.errors import FormatError as FE

    opened = []
    real_open = lv.ddz_open

    def spy(path, **kw):
        f = real_open(path, **kw)
        opened.append(f)
        return f

    def boom(*a, **k):
        raise FE("stored VAE is broken")

    monkeypatch.setattr(lv, "ddz_open", spy)
    monkeypatch.setattr(lv, "read_vae", boom)
    ds = load(archive)
    with pytest.raises(FE):
        ds[0]
    assert opened and all(f.closed for f in opened)  # no memory map left behind


def test_numpy_and_tensor_indices(archive):
    import numpy as np

    ds = load(archive, cache="frames")  # full iteration is covered in test_video_hostile.py (smaller VAE)
    a, b, c = ds[np.int64(2)][0], ds[torch.tensor(2)][0], ds[2][0]
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(b, c)
    with pytest.raises(TypeError):
        ds[1.5]
    assert ds.latent_shape == (3, 4, 8, 8) and ds.object_names["latents"] == "latents"


@pytest.mark.parametrize("device", ["bogus", "cuda:99"])
def test_bad_device_is_invalid_input(archive, device):
    with pytest.raises(InvalidInputError):
        load(archive, device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_dataset_matches_cpu_and_spawn_workers(archive):
    cpu, gpu = load(archive), load(archive, device="cuda")
    v, y = gpu.decode_batch([0, 5])
    assert v.device.type == "cuda"
    torch.testing.assert_close(v.cpu(), cpu.decode_batch([0, 5])[0], atol=1e-3, rtol=1e-3)
    dl = DataLoader(load(archive, device="cuda"), batch_size=3, num_workers=1, multiprocessing_context="spawn")
    assert next(iter(dl))[0].shape == (3, 3, 3, 16, 16)
