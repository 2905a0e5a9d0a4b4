"""LLM token-level labels: top-k ids bit-packed at ceil(log2 V), values through VQ."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import codec
from codec.errors import InvalidInputError
from codec.softlabels import open_archive, train_vq
from codec.softlabels.llm import LLMArchive, topk_kd_loss, write_llm_archive

V, K = 50257, 20


def _seqs(n=12, seed=0, dense=False, vocab=V):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        L = int(torch.randint(5, 30, (1,), generator=g))
        pl = int(torch.randint(0, 5, (1,), generator=g))
        s = {"tokens": torch.randint(vocab, (L,), generator=g), "loss_mask": torch.arange(L) >= pl, "prompt_len": pl}
        if dense:
            s["logits"] = torch.randn(L, vocab, generator=g) * 3
        else:
            s["topk_ids"] = torch.randint(vocab, (L, K), generator=g)
            s["topk_logits"] = torch.randn(L, K, generator=g) * 2
        out.append(s)
    return out


@pytest.mark.parametrize("ids_zstd", [None, 3])
def test_llm_roundtrip(tmp_path, ids_zstd):
    seqs = _seqs()
    p = tmp_path / "llm.ddz"
    r = write_llm_archive(p, lambda: seqs, vocab=V, vq={"dh": 20, "dc": 5, "k": 64, "epochs": 2, "batch_size": 64,
                                                         "progress": False}, ids_zstd=ids_zstd)
    a = open_archive(p)
    assert isinstance(a, LLMArchive) and a.num_sequences == len(seqs)
    with codec.open(p) as f:
        f.verify()
        if ids_zstd is None:
            assert f.info("llm/topk_ids").bits == 16 == math.ceil(math.log2(V))
        assert f.info("llm/tokens").bits == 16 and f.info("llm/loss_mask").bits == 1
    n = sum(int(s["loss_mask"].sum()) for s in seqs)
    assert r["label_rows"] == n and r["fp16_topk_bytes_per_token"] == 80 and r["dense_fp16_bytes_per_token"] == 100514
    errs = []
    for i, s in enumerate(seqs):
        got = a.sequence(i)
        m = s["loss_mask"]
        assert torch.equal(got["tokens"], s["tokens"]) and torch.equal(got["loss_mask"], m)
        assert got["prompt_len"] == s["prompt_len"] and torch.equal(got["positions"], torch.nonzero(m).flatten())
        vals, order = torch.sort(s["topk_logits"][m], 1, descending=True)
        assert torch.equal(got["topk_ids"], torch.gather(s["topk_ids"][m], 1, order))
        assert got["topk_probs"].shape == (int(m.sum()), K)
        assert torch.allclose(got["topk_probs"].sum(1), torch.ones(int(m.sum())), atol=1e-5)
        # values: softmax(sorted top-k logits / T) through VQ -> within the codec's error, far
        # better than the uniform guess 1/K
        want = torch.softmax(vals / 1.0, 1)
        err = (got["topk_probs"] - want).abs().sum(1).mean()
        errs.append((float(err), float((want - 1 / K).abs().sum(1).mean())))
    err, base = np.mean([e for e, _ in errs]), np.mean([b for _, b in errs])
    assert err < 0.25 * base, (err, base)  # measured 0.134 vs 1.245 (L1 per row)


def test_llm_dense_logits_and_loss(tmp_path):
    vocab = 300
    seqs = _seqs(6, 1, dense=True, vocab=vocab)
    vq = train_vq(np.random.default_rng(0).dirichlet(np.ones(K), 200).astype(np.float32), dh=20, dc=4, k=32,
                  epochs=1, batch_size=64, progress=False)
    p = tmp_path / "d.ddz"
    write_llm_archive(p, lambda: seqs, vocab=vocab, vq=vq, temperature=2.0)
    a = open_archive(p)
    s = a.sequence(2)
    z = seqs[2]["logits"][seqs[2]["loss_mask"]]
    assert torch.equal(s["topk_ids"], torch.topk(z, K, 1).indices)
    with codec.open(p) as f:
        assert f.info("llm/topk_ids").bits == 9  # ceil(log2 300)
    loss = topk_kd_loss(z, s["topk_ids"], s["topk_probs"], tau=2.0)
    assert loss.ndim == 0 and float(loss) >= 0
    # Eq. 10 on the stored support, by hand: mean_t sum_j p_tj (log p_tj - log softmax(z_t / tau)[id_tj])
    ids, probs, zz = s["topk_ids"].tolist(), s["topk_probs"].double(), z.double() / 2.0
    rows = []
    for t in range(len(ids)):
        logz = math.log(sum(math.exp(v) for v in zz[t].tolist()))
        rows.append(sum(float(probs[t, j]) * (math.log(float(probs[t, j])) - (float(zz[t, ids[t][j]]) - logz))
                        for j in range(K)))
    assert float(loss) == pytest.approx(sum(rows) / len(rows), rel=1e-5, abs=1e-6)


def test_llm_bad_inputs(tmp_path):
    with pytest.raises(InvalidInputError):
        write_llm_archive(tmp_path / "a.ddz", lambda: [{"tokens": [1, 2, V]}], vocab=V)
    bad = _seqs(1)
    bad[0]["loss_mask"] = bad[0]["loss_mask"][:-1]
    with pytest.raises(InvalidInputError):
        write_llm_archive(tmp_path / "b.ddz", lambda: bad, vocab=V, vq={"dh": 20, "dc": 5, "k": 8, "progress": False})
    assert not (tmp_path / "b.ddz").exists()
