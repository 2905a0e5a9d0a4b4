"""Eq. 7 (cache_loss) against a hand computation; streaming training from every source kind;
k-means++ init and dead-code re-seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import codec
from codec.codecs import codec_from_config
from codec.errors import InvalidInputError
from codec.format import Writer
from codec.softlabels import kd_loss, to_probs, train_vq
from codec.softlabels.sources import ArraySource, DDZSource, IterSource, opened_source
from codec.softlabels.train import cache_loss, kmeans_pp


def test_cache_loss_eq7_hand_computed():
    # n=1 label, C=2 classes, dh=2, dc=1 (m=2 segments)
    y = torch.tensor([[0.75, 0.25]])
    h = torch.tensor([[0.5], [1.0]], requires_grad=True)
    muq = torch.tensor([[0.25], [1.5]])
    D = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    loss, l_vq, l_rec = cache_loss(y, h, muq, D, alpha=2.0, beta=0.25)
    # ||h - mu||^2 summed over segments: 0.25^2 + 0.5^2 = 0.3125; L_VQ = (1 + beta) * 0.3125
    assert l_vq.item() == pytest.approx(1.25 * 0.3125)
    # yhat = [0.25, 1.5] @ D = [0.25, 0.75]; ||yhat - y||^2 = 0.25 + 0.25
    assert l_rec.item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(2.0 * 1.25 * 0.3125 + 0.5)
    loss.backward()
    # d/dh: alpha*beta*2*(h - mu) from the commitment term + straight-through L_rec grad 2*(yhat - y) D^T
    g_commit = 2.0 * 0.25 * 2 * torch.tensor([[0.25], [-0.5]])
    g_rec = (2 * torch.tensor([[-0.5, 0.5]]) @ D.T).reshape(2, 1)
    assert torch.allclose(h.grad, g_commit + g_rec)


def test_cache_loss_without_straight_through_trains_the_encoder_only_by_commitment():
    y = torch.tensor([[1.0, 0.0]])
    h = torch.tensor([[0.5], [0.0]], requires_grad=True)
    muq = torch.zeros(2, 1)
    loss, l_vq, l_rec = cache_loss(y, h, muq, torch.eye(2), alpha=1.0, beta=0.25, straight_through=False)
    loss.backward()
    assert l_vq.item() == pytest.approx(1.25 * 0.25) and l_rec.item() == 1.0
    assert torch.allclose(h.grad, 0.25 * 2 * torch.tensor([[0.5], [0.0]]))  # beta * 2 (h - mu) only


def _labels(n=256, C=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, C, generator=g) * 3, 1).numpy()


def test_streaming_training_from_memmap_ddz_and_iterator(tmp_path):
    y = _labels()
    mm = np.lib.format.open_memmap(tmp_path / "y.npy", mode="w+", dtype=np.float32, shape=y.shape)
    mm[:] = y
    mm.flush()
    del mm
    with Writer(tmp_path / "y.ddz") as w:
        w.add("y", y)
    kw = dict(dh=8, dc=2, k=16, epochs=2, batch_size=32, progress=False, init_sample=256, seed=3)
    base = float(((torch.from_numpy(y) - 1 / 8) ** 2).sum(1).mean())  # the uniform guess
    a = train_vq(np.load(tmp_path / "y.npy", mmap_mode="r"), **kw)
    assert torch.equal(a.codebook, train_vq(y, **kw).codebook)  # a memmap trains like the array it holds
    for src in (DDZSource(tmp_path / "y.ddz", "y"), IterSource(lambda: (y[i:i + 50] for i in range(0, len(y), 50)), classes=8)):
        vq = train_vq(src, **kw)
        assert vq.train_log.steps == 2 * 8
        assert float(((vq.reconstruct(y) - torch.from_numpy(y)) ** 2).sum(1).mean()) < base


def test_kmeans_pp_seeds_one_code_per_cluster():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = (centres[:, None, :] + 0.01 * torch.randn(4, 50, 2, generator=g)).reshape(-1, 2)
    got = kmeans_pp(x, 4, torch.Generator().manual_seed(1))
    near = torch.cdist(got, centres).argmin(1)
    assert sorted(near.tolist()) == [0, 1, 2, 3]


def test_dead_codes_are_reseeded():
    y = _labels(128)
    vq = train_vq(y, dh=8, dc=2, k=64, epochs=3, batch_size=16, progress=False, init_sample=128, dead_window=2)
    assert vq.train_log.reseeded > 0  # 64 codes, 64 segments per step: some go unused within 2 steps
    none = train_vq(y, dh=8, dc=2, k=64, epochs=3, batch_size=16, progress=False, init_sample=128, dead_window=0)
    assert none.train_log.reseeded == 0


Y = np.random.default_rng(5).dirichlet(np.ones(10), 300).astype(np.float32)


@pytest.mark.parametrize("kw", [dict(epochs="2"), dict(epochs=-1), dict(batch_size=2.5), dict(batch_size=0),
                                dict(max_steps=-3), dict(seed="x"), dict(seed=-1), dict(lr=0), dict(lr=float("nan")),
                                dict(alpha=-1.0), dict(beta=float("inf")), dict(kmeans_iters=-1), dict(init_sample=0),
                                dict(dead_window=1.5), dict(straight_through="yes"), dict(device="tpu"),
                                dict(device="cuda:7"), dict(init="svd")])
def test_train_vq_rejects_bad_arguments(kw):
    with pytest.raises(InvalidInputError):
        train_vq(Y, dh=10, dc=5, k=8, progress=False, **kw)


@pytest.mark.parametrize("input,value", [("probs", np.nan), ("probs", np.inf), ("logits", np.nan), ("logits", np.inf)])
def test_train_vq_rejects_non_finite_labels(input, value):
    y = Y.copy()
    y[7, 3] = value
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        train_vq(y, dh=10, dc=5, k=8, progress=False, input=input, init_sample=1000)


def test_minus_inf_logits_are_zero_probabilities():
    z = np.log(Y)
    z[:, 0] = -np.inf  # a masked class
    y = to_probs(z, "logits")
    assert bool((y[:, 0] == 0).all()) and bool(torch.isfinite(y).all())
    torch.testing.assert_close(y.sum(1), torch.ones(len(y)))
    c = train_vq(z, dh=10, dc=5, k=8, progress=False, input="logits", max_steps=3)
    assert c.fitted and all(bool(torch.isfinite(getattr(c, p)).all()) for p in ("encoder", "decoder", "codebook"))
    # the logits encode exactly as their probabilities (class 0 at 0) do with the same parameters
    as_probs = codec_from_config({**c.get_config(), "input": "probs"})
    as_probs.set_params(encoder=c.encoder, decoder=c.decoder, codebook=c.codebook)
    assert np.array_equal(c.encode_indices(z), as_probs.encode_indices(y))
    rec = c.reconstruct(z)
    assert bool(torch.isfinite(rec).all()) and bool((rec > 0).all())
    torch.testing.assert_close(rec.sum(1), torch.ones(len(y)))


def test_kd_loss_rejects_bad_tau_and_inputs():
    s, t = torch.randn(4, 10), torch.softmax(torch.randn(4, 10), 1)
    for bad in (lambda: kd_loss(s, t, tau="x"), lambda: kd_loss(s, t, tau=0), lambda: kd_loss(s, t, tau=float("nan")),
                lambda: kd_loss(s.numpy(), t)):
        with pytest.raises(InvalidInputError):
            bad()


def test_iter_source_first_batch_must_be_2d():
    with pytest.raises(InvalidInputError):
        IterSource(lambda: iter([np.zeros(10, np.float32)]))


def test_iter_source_sequential_yields_at_most_chunk_rows():
    src = IterSource(lambda: iter([np.zeros((50, 10), np.float32), np.zeros((3, 10), np.float32)]))
    sizes = [int(b.shape[0]) for b in src.sequential(16)]
    assert sizes == [16, 16, 16, 5]


def test_streaming_keeps_a_copy_on_write_memmap_intact(tmp_path):
    """Pages of a mode='c' memmap are private: releasing them would drop the caller's edits."""
    path = tmp_path / "y.f32"
    rows = np.ones((8192, 10), np.float32)
    rows.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="c", shape=(8192, 10))
    mm[:2048] = 2.0  # in-memory edits, never written to the file
    seen = torch.cat(list(ArraySource(mm).sequential(1024)))
    assert float(seen[:2048].min()) == 2.0 and float(mm[:2048].min()) == 2.0


def test_a_source_opened_from_a_path_is_closed(tmp_path):
    p = tmp_path / "s.ddz"
    with Writer(p) as w:
        w.add("y", Y)
    with opened_source(p, "y") as src:
        f = src.file
        assert src.rows == 300
    with pytest.raises(InvalidInputError, match="closed"):
        f.get("y")
    with codec.open(p) as f:  # a DDZFile passed in stays open
        with opened_source(f, "y"):
            pass
        assert f.get("y").shape == (300, 10)
