"""`ddz budget FILE` on every kind of soft-label file: each codec's sections get their
formula term and value (from codec.budget.formulas), aug/ and llm/ sections their own terms,
and the rows sum to the file size.  Also the LPLD prefix pool as written."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from codec import budget as B
from codec.cli import main
from codec.softlabels import LPLDCodec, PCACodec, QuantCodec, TopKCodec, fit, open_archive, save_softlabels
from codec.softlabels.augment import BatchRecord, write_replay_archive
from codec.softlabels.llm import write_llm_archive

C, N = 12, 40
Y = torch.softmax(torch.randn(N, C, generator=torch.Generator().manual_seed(0)) * 2, 1).numpy()


def _rows(p):
    rows = B.attribute(p)
    assert sum(r.bytes for r in rows) == p.stat().st_size
    return {r.name: r for r in rows}


@pytest.mark.parametrize("kind", ["topk", "pca", "quant", "lpld"])
def test_baseline_files_attribute_to_their_formula(tmp_path, kind, capsys):
    cod = {"topk": lambda: TopKCodec(C, 3), "pca": lambda: fit(PCACodec(C, 4), Y), "quant": lambda: fit(QuantCodec(C, 4), Y),
           "lpld": lambda: LPLDCodec(C)}[kind]()
    p = tmp_path / f"{kind}.ddz"
    save_softlabels(p, cod, Y)
    r = _rows(p)
    F = B.formulas
    if kind == "topk":
        t = F.s15_row_terms(N, C, 3).terms
        assert r["labels/values"].formula_bytes == t["values"] == N * 2 * 3 == r["labels/values"].bytes
        assert r["labels/indices"].formula_bytes == pytest.approx(N * math.log2(C) / 8 * 3)
        assert r["labels/indices"].bytes == math.ceil(N * 3 * 4 / 8) and "S15" in r["labels/indices"].term
    elif kind == "pca":
        t = F.s16_row_terms(N, C, 4).terms
        assert r["labels/proj"].formula_bytes == t["projections"] == N * 2 * 4
        assert r["labels/components"].formula_bytes == t["components"] == 4 * C * 2
        assert "not in S16" in r["labels/mean"].term
    elif kind == "quant":
        assert r["labels/indices"].formula_bytes == N * C * 2 / 8 and r["labels/levels"].formula_bytes == 2 * 4
    else:
        assert r["labels/labels"].formula_bytes == N * C * 2 == r["labels/labels"].bytes
    assert main(["budget", str(p)]) == 0
    assert "every byte attributed" in capsys.readouterr().out


def test_replay_file_attributes_aug_sections(tmp_path):
    def recs():
        g = torch.Generator().manual_seed(1)
        for s in range(3):
            yield BatchRecord(0, s, torch.randn(4, C, generator=g), torch.rand(4, 4, generator=g) * .5, torch.zeros(4, dtype=torch.bool),
                              torch.arange(4) + s)
    p = tmp_path / "r.ddz"
    write_replay_archive(p, TopKCodec(C, 2, input="logits"), recs, classes=C)
    r = _rows(p)
    aug = [v for k, v in r.items() if k.startswith("aug/")]
    assert len(aug) >= 8 and all(v.term == "plain section of group 'aug' (in no formula)" for v in aug)


def test_llm_file_attributes_llm_sections(tmp_path):
    g = torch.Generator().manual_seed(0)
    seqs = [{"tokens": torch.randint(300, (10,), generator=g), "loss_mask": torch.ones(10, dtype=torch.bool), "prompt_len": 0,
             "topk_ids": torch.randint(300, (10, 4), generator=g), "topk_logits": torch.randn(10, 4, generator=g)}]
    p = tmp_path / "l.ddz"
    write_llm_archive(p, lambda: seqs, vocab=300, k=4, vq={"dh": 4, "dc": 2, "k": 4, "epochs": 1, "batch_size": 8,
                                                             "progress": False})
    r = _rows(p)
    assert all(v.term == "plain section of group 'llm' (in no formula)" for k, v in r.items() if k.startswith("llm/"))
    assert "S12" in r["llm_values/indices"].term


def test_lpld_writes_only_the_prefix_pool(tmp_path):
    # 4 batches/epoch of 5 rows, 6 epochs, ratio 8: pool = floor(6 * 4 / 8) = 3 batches = 15 rows
    cod = LPLDCodec(C, 8.0, batch_size=5, batches_per_epoch=4, epochs=6)
    assert cod.pool_batches == 3 == B.lpld_pool(5, 4, 6, 8.0, 5)
    y = np.concatenate([Y, Y, Y])[:120]
    p = save_softlabels(tmp_path / "p.ddz", cod, y)
    a = open_archive(p)
    assert len(a) == 15
    want = torch.from_numpy(y[:15]).half().float()
    assert torch.allclose(a.labels(), want / want.sum(1, keepdim=True), atol=1e-6)
