"""Hostile LLM archives: bad metadata, offsets and ids end as FormatError, never as a
KeyError/ValueError or an out-of-bounds gather in topk_kd_loss."""

from __future__ import annotations


import numpy as np
import pytest
import torch

import codec
from codec.errors import FormatError, InvalidInputError
from codec.softlabels import open_archive
from codec.softlabels.llm import topk_kd_loss, write_llm_archive
from ddzutil import rewrite

V, K = 300, 4


def _seqs():
    g = torch.Generator().manual_seed(0)
    return [{"tokens": torch.randint(V, (12,), generator=g), "loss_mask": torch.arange(12) >= 2, "prompt_len": 2,
             "topk_ids": torch.randint(V, (12, K), generator=g), "topk_logits": torch.randn(12, K, generator=g)}
            for _ in range(3)]


def _write(p, **kw):
    seqs = _seqs()
    return write_llm_archive(p, lambda: seqs, vocab=V, k=K, vq={"dh": 4, "dc": 2, "k": 8, "epochs": 1, "batch_size": 16,
                                                           "progress": False}, **kw)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    p = tmp_path_factory.mktemp("llm") / "good.ddz"
    _write(p)
    return p


def _read_all(p):
    a = open_archive(p)
    for i in range(a.num_sequences):
        s = a.sequence(i)
        topk_kd_loss(torch.randn(s["topk_ids"].shape[0], a.vocab), s["topk_ids"], s["topk_probs"])


def test_good(good):
    _read_all(good)
    a = open_archive(good)
    for i, want in enumerate(_seqs()):  # ids, tokens and mask are stored exactly; ids ordered by logit
        s = a.sequence(i)
        order = torch.argsort(want["topk_logits"][2:], dim=1, descending=True)
        assert torch.equal(s["topk_ids"], torch.gather(want["topk_ids"][2:], 1, order))
        assert torch.equal(s["tokens"], want["tokens"]) and torch.equal(s["loss_mask"], want["loss_mask"])
        assert s["prompt_len"] == 2 and torch.allclose(s["topk_probs"].sum(1), torch.ones(10))


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), "a", None])
def test_bad_temperature_is_invalid_input(tmp_path, temperature):
    with pytest.raises(InvalidInputError, match="temperature"):
        _write(tmp_path / "t.ddz", temperature=temperature)
    assert not (tmp_path / "t.ddz").exists()


def test_bad_tau_and_device_are_invalid_input(good):
    s = open_archive(good).sequence(0)
    for bad in (lambda: topk_kd_loss(torch.randn(10, V), s["topk_ids"], s["topk_probs"], tau="x"),
                lambda: topk_kd_loss(torch.randn(10, V), s["topk_ids"], s["topk_probs"], tau=0),
                lambda: open_archive(good).sequence(0, device="cuda:9")):
        with pytest.raises(InvalidInputError):
            bad()


@pytest.mark.parametrize("case", [
    (None, lambda m: m["llm"].pop("vocab")),
    (None, lambda m: m["llm"].__setitem__("vocab", "x")),
    (None, lambda m: m["llm"].__setitem__("vocab", 1)),
    (None, lambda m: m["llm"].__setitem__("k", 5)),
    ({"llm/seq_tokens": lambda a, b: (a * 1000, b)}, None),
    ({"llm/seq_tokens": lambda a, b: (a + 3, b)}, None),
    ({"llm/seq_labels": lambda a, b: (a.reshape(1, -1), b)}, None),
    ({"llm/prompt_len": lambda a, b: (np.full_like(a, 10**6), b)}, None),
    ({"llm/topk_ids": lambda a, b: (np.full_like(a, 511), b)}, None),  # 9 bits hold 511 >= vocab 300
    ({"llm/tokens": lambda a, b: (np.full_like(a, 400), b)}, None),
], ids=["vocab-missing", "vocab-str", "vocab-1", "k-wrong", "tokens-beyond", "tokens-first", "labels-2d",
        "prompt-huge", "ids-ge-vocab", "tokens-ge-vocab"])
def test_hostile_llm_archives(good, tmp_path, case):
    edits, meta_edit = case
    p = rewrite(good, tmp_path / "bad.ddz", edits, meta_edit)
    with pytest.raises(FormatError):
        _read_all(p)
    if edits is None or not any(k in edits for k in ("llm/topk_ids", "llm/tokens")):
        with pytest.raises(FormatError):  # bad metadata/offsets are caught on open
            codec.load(p)


def test_topk_kd_loss_checks_id_range():
    with pytest.raises(InvalidInputError):
        topk_kd_loss(torch.randn(2, 5), torch.tensor([[0, 5], [1, 2]]), torch.full((2, 2), 0.5))
