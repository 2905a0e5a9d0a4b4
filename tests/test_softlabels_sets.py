"""Soft labels in sharded sets and over HTTP: a set decodes exactly as one file, and one epoch of
a 300-epoch file served over HTTP fetches about 1/300 of the index payload plus the header."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import codec
from codec.format import Writer
from codec.softlabels import open_archive, save_softlabel_set, save_softlabels, train_vq, write_softlabels


@pytest.fixture(scope="module")
def labels():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((3000, 10)) * 2).astype(np.float32)


@pytest.mark.parametrize("entropy", [False, True])
def test_set_decodes_like_one_file(tmp_path, labels, entropy):
    vq = train_vq(labels, dh=8, dc=2, k=300 if entropy else 64, input="logits", max_steps=5, progress=False,
                  entropy=entropy)
    save_softlabels(tmp_path / "one.ddz", vq, labels)
    save_softlabel_set(tmp_path / "s.ddzset.json", vq, labels, shards=3)
    one, s = open_archive(tmp_path / "one.ddz"), open_archive(tmp_path / "s.ddzset.json")
    assert len(s) == len(one) == 3000 and s.shard_ranges() == [(0, 1000), (1000, 2000), (2000, 3000)]
    for a, b in ((0, 3000), (990, 2010), (1999, 2001), (5, 5)):
        assert torch.equal(s.labels(a, b), one.labels(a, b))
    ids = np.random.default_rng(1).integers(0, 3000, 50)
    assert torch.equal(s[ids], one[ids])
    loaded = codec.load(tmp_path / "s.ddzset.json")
    assert torch.equal(loaded.labels(100, 200), one.labels(100, 200))
    with codec.open(tmp_path / "s.ddzset.json") as f:
        f.verify()


def test_failed_set_leaves_no_files(tmp_path, labels):
    vq = train_vq(labels, dh=8, dc=2, k=16, input="logits", max_steps=2, progress=False)
    with pytest.raises(codec.InvalidInputError):
        save_softlabel_set(tmp_path / "s.ddzset.json", vq, labels[:, :9], shards=2)  # wrong class count
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(codec.InvalidInputError, match="known rows"):
        save_softlabel_set(tmp_path / "s.ddzset.json", vq, lambda: iter([labels]), shards=2)
    assert list(tmp_path.iterdir()) == []


def test_one_epoch_of_300_over_http_fetches_about_1_300th(tmp_path):
    pytest.importorskip("aiohttp")
    from rangeserver import RangeServer

    epochs, per_epoch, C = 300, 1000, 10
    rng = np.random.default_rng(0)
    base = rng.standard_normal((per_epoch, C)).astype(np.float32) * 3
    y = (base[None] + 0.3 * rng.standard_normal((epochs, per_epoch, C)).astype(np.float32)).reshape(-1, C)
    vq = train_vq(y[:20000], dh=16, dc=2, k=256, input="logits", max_steps=5, progress=False)
    with Writer(tmp_path / "e300.ddz", block_size=4096) as w:
        write_softlabels(w, "labels", vq, y)
    local = open_archive(tmp_path / "e300.ddz")
    payload = codec.open(tmp_path / "e300.ddz").info("labels/indices").length  # 300,000 rows x 8 B
    size = (tmp_path / "e300.ddz").stat().st_size
    with RangeServer(tmp_path) as srv:
        arch = open_archive(f"{srv.url}/e300.ddz")
        opened = srv.bytes_served  # preamble + header + codebook + decoder, each once
        f = arch._f()
        shared = sum(f.info(f"labels/{p}").length for p in ("codebook", "decoder"))
        assert opened == 64 + f.header_length + shared
        e = 123
        got = arch.labels(e * per_epoch, (e + 1) * per_epoch)
        epoch_bytes = srv.bytes_served - opened
        assert torch.equal(got, local.labels(e * per_epoch, (e + 1) * per_epoch))
    assert payload // epochs <= epoch_bytes <= payload // epochs + 2 * 4096  # 1/300 of the payload + the edge blocks
    assert srv.bytes_served < size / 50


def test_cli_on_a_set(tmp_path, labels, capsys):
    import json

    from codec.budget import attribute
    from codec.cli import main

    np.save(tmp_path / "y.npy", labels)
    args = ["--dh", "8", "--dc", "2", "--k", "64", "--input", "logits", "--max-steps", "3", "-q"]
    assert main(["encode-labels", str(tmp_path / "y.npy"), "-o", str(tmp_path / "s.ddzset.json"), *args, "--shards", "3"]) == 0
    assert main(["encode-labels", str(tmp_path / "y.npy"), "-o", str(tmp_path / "one.ddz"), *args]) == 0
    assert torch.equal(open_archive(tmp_path / "s.ddzset.json").labels(), open_archive(tmp_path / "one.ddz").labels())
    capsys.readouterr()
    assert main(["info", str(tmp_path / "s.ddzset.json"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    shard_bytes = sum((tmp_path / s["name"]).stat().st_size for s in d["shards"])
    assert len(d["shards"]) == 3 and d["set_bytes"] == d["index_bytes"] + shard_bytes
    assert main(["verify", str(tmp_path / "s.ddzset.json")]) == 0
    rows = attribute(tmp_path / "s.ddzset.json")
    assert sum(r.bytes for r in rows) == d["set_bytes"]  # every byte of the index and of every shard
    assert sum(r.formula_bytes or 0 for r in rows if r.name.endswith("labels/indices")) == \
        sum(r.formula_bytes for r in attribute(tmp_path / "one.ddz") if r.name == "labels/indices")
    assert main(["budget", str(tmp_path / "s.ddzset.json")]) == 0
    assert "every byte attributed" in capsys.readouterr().out
    # a damaged shard: verify names it and fails
    p = tmp_path / d["shards"][1]["name"]
    raw = bytearray(p.read_bytes())
    raw[100] ^= 1
    p.write_bytes(bytes(raw))
    assert main(["verify", str(tmp_path / "s.ddzset.json")]) == 1
    assert d["shards"][1]["name"] in capsys.readouterr().out
    p.unlink()
    assert main(["info", str(tmp_path / "s.ddzset.json")]) == 2
    assert "is missing" in capsys.readouterr().err


def test_remote_set_in_dataloader_workers(tmp_path, labels):
    pytest.importorskip("aiohttp")
    from rangeserver import RangeServer

    vq = train_vq(labels, dh=8, dc=2, k=64, input="logits", max_steps=3, progress=False)
    save_softlabel_set(tmp_path / "s.ddzset.json", vq, labels, shards=2)
    local = open_archive(tmp_path / "s.ddzset.json").labels()
    with RangeServer(tmp_path) as srv:
        arch = open_archive(f"{srv.url}/s.ddzset.json")
        loader = torch.utils.data.DataLoader(arch, batch_size=500, num_workers=2)  # each worker re-opens over HTTP
        got = torch.cat(list(loader))
    torch.testing.assert_close(got, local, rtol=1e-5, atol=1e-7)  # other batch shapes: float32 rounding


def test_distributed_training_needs_a_process_group(labels):
    with pytest.raises(codec.InvalidInputError, match="process group"):
        train_vq(labels, dh=8, dc=2, k=16, input="logits", max_steps=1, progress=False, distributed=True)
    with pytest.raises(codec.InvalidInputError, match="process group"):
        from codec.softlabels import save_softlabels_distributed

        save_softlabels_distributed("x.ddzset.json", None, labels)


def test_distributed_path_in_process_with_one_rank(tmp_path, labels):
    """The torchrun code path (chunked training, shard per rank, index after agreement) with a
    one-rank gloo group in this process; tests/test_distributed.py runs 2 ranks under torchrun."""
    import torch.distributed as dist

    from codec.softlabels import save_softlabels_distributed

    dist.init_process_group("gloo", init_method=(tmp_path / "store").as_uri(), rank=0, world_size=1)
    try:
        kw = dict(dh=8, dc=2, k=32, input="logits", max_steps=4, batch_size=500, progress=False)
        vq = train_vq(labels, distributed=True, **kw)
        again = train_vq(labels, distributed=True, **kw)
        assert torch.equal(vq.codebook, again.codebook) and torch.equal(vq.decoder, again.decoder)
        save_softlabels_distributed(tmp_path / "d.ddzset.json", vq, labels)
    finally:
        dist.destroy_process_group()
    save_softlabels(tmp_path / "one.ddz", vq, labels)
    assert torch.equal(open_archive(tmp_path / "d.ddzset.json").labels(), open_archive(tmp_path / "one.ddz").labels())
    assert [p.name for p in sorted(tmp_path.glob("*.ddz"))] == ["d-00000-of-00001.ddz", "one.ddz"]
