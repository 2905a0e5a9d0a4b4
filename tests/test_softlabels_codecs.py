"""Soft-label codecs: round trips through a real .ddz, determinism, malformed input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codec
from codec.codecs import codec_from_config, read_object, write_object
from codec.codecs.vq import VQCodec, nearest_code
from codec.errors import DDZError, InvalidInputError, UnknownCodecError
from codec.softlabels import (LPLDCodec, PCACodec, QuantCodec, TopKCodec, kd_loss, kl_div, open_archive,
                              fit, save_softlabels, train_vq)

C = 24


def _labels(n, seed=0, c=C):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 1.5
    z[torch.arange(n), torch.randint(c, (n,), generator=g)] += 4
    return z


@pytest.fixture(scope="module")
def vq():
    return train_vq(_labels(600).numpy(), dh=24, dc=4, k=16, input="logits", temperature=2.0, epochs=2,
                    batch_size=128, seed=3, progress=False, init_sample=600)


def test_vq_is_deterministic_on_cpu():
    kw = dict(dh=12, dc=3, k=8, epochs=1, batch_size=64, seed=7, progress=False, init_sample=300)
    a = train_vq(_labels(300).numpy(), **kw)
    b = train_vq(_labels(300).numpy(), **kw)
    for name in ("encoder", "decoder", "codebook"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = train_vq(_labels(300).numpy(), **{**kw, "seed": 8})
    assert not torch.equal(a.codebook, c.codebook)


def test_nearest_code_matches_bruteforce():
    g = torch.Generator().manual_seed(0)
    for dc, k in ((3, 37), (5, 64), (20, 33)):
        x = torch.randn(500, dc, generator=g)
        cb = torch.randn(k, dc, generator=g)
        ref = torch.cdist(x.double(), cb.double()).argmin(1)
        for method in ("torch", "numba") if dc <= 16 else ("torch",):
            got = nearest_code(x, cb, method=method)
            assert torch.equal(got, ref), (dc, k, method)
        assert np.array_equal(nearest_code(x.numpy(), cb.numpy()), ref.numpy())


def test_decode_is_eq9_renormalised(vq):
    idx = vq.encode_indices(_labels(50, 1))
    y = vq.decode_indices(idx)
    manual = vq.codebook[torch.from_numpy(idx.astype(np.int64))].reshape(50, -1) @ vq.decoder
    manual = manual.clamp_min(vq.eps)
    manual = manual / manual.sum(1, keepdim=True)
    torch.testing.assert_close(y, manual, rtol=1e-5, atol=1e-7)
    assert torch.allclose(y.sum(1), torch.ones(50), atol=1e-5) and (y > 0).all()
    ybf = vq.decode_indices(idx, dtype=torch.bfloat16)
    assert ybf.dtype == torch.float32 and (ybf - y).abs().max() < 0.05


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 70), chunk=st.integers(1, 50), entropy=st.booleans(), seed=st.integers(0, 10**6))
def test_vq_roundtrip_through_ddz(tmp_path_factory, vq, n, chunk, entropy, seed):
    x = _labels(n, seed).numpy()
    vq.entropy = entropy
    try:
        path = tmp_path_factory.mktemp("vq") / "l.ddz"
        save_softlabels(path, vq, x, chunk=chunk)
        with codec.open(path) as f:
            f.verify()
            cfg = f.objects["labels"]["codec"]
            assert cfg["id"] == "vq" and cfg["entropy"] == entropy
            if not entropy:
                info = f.info("labels/indices")
                assert info.bits == 4 and info.length == math.ceil(n * 6 * 4 / 8)
        arch = open_archive(path)
        assert len(arch) == n
        ref = vq.decode_indices(vq.encode_indices(x)) if n else torch.empty(0, C)
        torch.testing.assert_close(arch.labels(), ref, rtol=0, atol=0)
        if n >= 3:
            s, e = n // 3, n - 1
            torch.testing.assert_close(arch.labels(s, e), ref[s:e], rtol=1e-6, atol=1e-7)
            ids = [e - 1, 0, s, s]
            torch.testing.assert_close(arch.rows_at(ids), ref[ids], rtol=1e-5, atol=1e-7)
    finally:
        vq.entropy = False


def _fitted(kind, x):
    if kind == "topk":
        return TopKCodec(C, 5, input="logits", temperature=2.0)
    if kind == "topk_uniform":
        return TopKCodec(C, 5, missing="uniform", input="logits", temperature=2.0)
    if kind == "topk_bucket":
        return TopKCodec(C, 3, missing="bucket", input="logits", temperature=2.0)
    if kind == "pca":
        return fit(PCACodec(C, 6, input="logits", temperature=2.0), _labels(200, 99))
    if kind == "quant":
        return fit(QuantCodec(C, 8, input="logits", temperature=2.0), _labels(200, 99))
    return LPLDCodec(C, 1.0, input="logits", temperature=2.0)


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(["topk", "topk_uniform", "topk_bucket", "pca", "quant", "lpld"]),
       n=st.integers(0, 60), chunk=st.integers(1, 40), seed=st.integers(0, 10**6))
def test_baselines_roundtrip_through_ddz(tmp_path_factory, kind, n, chunk, seed):
    x = _labels(n, seed).numpy()
    cod = _fitted(kind, x)
    path = tmp_path_factory.mktemp("b") / "l.ddz"
    save_softlabels(path, cod, x, chunk=chunk)
    arch = open_archive(path)
    assert len(arch) == n and arch.codec == cod
    direct = cod.decode_rows({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in cod.encode_rows(x).items()}) if n else None
    got = arch.labels()
    assert got.shape == (n, C)
    if n:
        torch.testing.assert_close(got, direct, rtol=1e-6, atol=1e-7)
        assert torch.allclose(got.sum(1), torch.ones(n), atol=1e-4) and (got > 0).all()
    # Codec interface round trip too (write_object / read_object)
    path2 = tmp_path_factory.mktemp("o") / "o.ddz"
    with codec.Writer(path2) as w:
        write_object(w, "sl", cod, x)
    with codec.open(path2) as f:
        back = read_object(f, "sl")
    assert back.shape == (n, C)
    if n:
        torch.testing.assert_close(back, direct, rtol=1e-6, atol=1e-7)


def test_topk_semantics():
    y = torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])
    parts = lambda c: {k: torch.from_numpy(v) for k, v in c.encode_rows(y).items()}  # noqa: E731
    r = TopKCodec(5, 2, eps=1e-9).decode_rows(parts(TopKCodec(5, 2, eps=1e-9)))
    torch.testing.assert_close(r[0, :2], torch.tensor([0.5, 0.3]) / 0.8, rtol=1e-3, atol=1e-4)
    u = TopKCodec(5, 2, missing="uniform")
    r = u.decode_rows(parts(u))
    torch.testing.assert_close(r[0, 2:], torch.full((3,), 0.2 / 3), rtol=2e-3, atol=1e-4)
    b = TopKCodec(5, 2, missing="bucket")
    p = parts(b)
    v, i, rest = b.buckets(p)
    assert i.tolist() == [[0, 1]] and abs(float(rest[0]) - 0.2) < 1e-3


def test_configs_are_json_and_rebuild(vq):
    for cod in (vq, TopKCodec(C, 5), PCACodec(C, 4), QuantCodec(C, 4), LPLDCodec(C, 40, batch_size=8, batches_per_epoch=3, epochs=300)):
        cfg = json.loads(json.dumps(cod.get_config()))
        again = codec_from_config(cfg)
        assert type(again) is type(cod) and again.get_config() == cod.get_config()


@pytest.mark.parametrize("bad", [
    lambda: VQCodec(10, 10, 3, 8),  # dh not divisible by dc
    lambda: VQCodec(10, 10, 5, 1),
    lambda: VQCodec(10, 10, 5, 8, input="logprobs"),
    lambda: VQCodec(10, 10, 5, 8, temperature=0),
    lambda: TopKCodec(10, 11),
    lambda: TopKCodec(10, 3, missing="zero"),
    lambda: PCACodec(10, 0),
    lambda: QuantCodec(10, 1),
    lambda: LPLDCodec(10, 0.5),
    lambda: codec_from_config({"id": "vq", "classes": 10}),
])
def test_bad_configs_raise_codec_errors(bad):
    with pytest.raises(DDZError):
        bad()


def test_unknown_codec_and_malformed_inputs(vq, tmp_path):
    with pytest.raises(UnknownCodecError):
        codec_from_config({"id": "vq2"})
    with pytest.raises(InvalidInputError):
        vq.encode_indices(np.zeros((3, C + 1), np.float32))
    with pytest.raises(InvalidInputError):
        vq.encode_indices(np.zeros((3, C), np.int32))
    with pytest.raises(InvalidInputError):
        vq.decode_indices(np.full((2, 6), 16))  # index out of range
    with pytest.raises(InvalidInputError):
        vq.decode_indices(np.zeros((2, 5), np.int64))  # wrong m
    with pytest.raises(InvalidInputError):
        VQCodec(C, 24, 4, 16).encode_indices(np.zeros((1, C), np.float32))  # untrained
    with pytest.raises(InvalidInputError):
        TopKCodec(C, 3).decode_rows({"values": np.zeros((2, 3), np.float16), "indices": np.full((2, 3), C)})
    with pytest.raises(InvalidInputError):
        save_softlabels(tmp_path / "x.ddz", TopKCodec(C + 1, 3), _labels(5).numpy())
    assert not (tmp_path / "x.ddz").exists()
    # a soft-label archive whose shared part is corrupt in shape
    p = tmp_path / "bad.ddz"
    with codec.Writer(p) as w:
        w.add("labels/indices", np.zeros((2, 6), np.uint8), bits=4)
        w.add("labels/codebook", np.zeros((3, 4), np.float32))
        w.add("labels/decoder", np.zeros((24, C), np.float32))
        w.add_object("labels", vq.get_config(), {"indices": "labels/indices", "codebook": "labels/codebook", "decoder": "labels/decoder"})
    with pytest.raises(DDZError):
        open_archive(p)


def test_kd_loss_eq10():
    s = torch.randn(4, 7)
    t = torch.softmax(torch.randn(4, 7), 1)
    tau = 3.0
    ref = torch.nn.functional.kl_div(torch.log_softmax(s / tau, 1), t, reduction="batchmean")
    torch.testing.assert_close(kd_loss(s, t, tau), ref)
    torch.testing.assert_close(kd_loss(s, t, tau, scale_by_tau2=True), ref * 9)
    assert float(kd_loss(torch.log(t), t, 1.0)) < 1e-6
    torch.testing.assert_close(kl_div(t, t), torch.zeros(4, dtype=torch.float64))
    with pytest.raises(InvalidInputError):
        kd_loss(s, t[:, :3])


def test_fp16_params_and_stored_encoder(tmp_path):
    x = _labels(200, 5).numpy()
    c = train_vq(x, dh=8, dc=4, k=8, epochs=1, batch_size=64, seed=1, progress=False, param_dtype="f16",
                 store_encoder=True, init_sample=200)
    p = save_softlabels(tmp_path / "h.ddz", c, x)
    with codec.open(p) as f:
        assert f.info("labels/decoder").dtype == "f16" and f.info("labels/codebook").dtype == "f16"
        assert f.info("labels/encoder").shape == (C, 8)
    arch = open_archive(p)
    torch.testing.assert_close(arch.labels(), c.reconstruct(x), rtol=1e-6, atol=1e-7)
    # appending more labels with the stored encoder: rebuild codec from the file
    c2 = arch.codec
    assert c2.encoder is not None
    assert np.array_equal(c2.encode_indices(x), c.encode_indices(x))
