"""codec.budget: S11-S17 against hand-computed values, plans, solver, CLI, attribution."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import codec
from codec import budget as B
from codec.cli import main
from codec.errors import BudgetError, DDZError, InvalidInputError


def test_s11_hand_computed():
    # 10 * 1000 * 1000 * 300 * 2 = 6e9 B = 5.5879 GiB (Table S6 prints 5.588 "GB")
    assert B.s11(10, 1000, 300) == 6_000_000_000
    assert round(B.s11(10, 1000, 300) / B.GiB, 3) == 5.588
    for ipc, gib in ((20, 11.176), (50, 27.940), (100, 55.879)):
        assert round(B.s11(ipc, 1000, 300) / B.GiB, 3) == gib  # Table S6 label column


def test_s12_hand_computed():
    # dh=795, dc=5, k=1024: m = 159 indices of 10 bits = 198.75 B per label
    t = B.s12_terms(10, 1000, 300, 795, 5, 1024).terms
    assert t == {"indices": 3_000_000 * 198.75, "decoder": 1000 * 795 * 4, "codebook": 1024 * 5 * 4}
    assert B.s12(10, 1000, 300, 795, 5, 1024) == 599_450_480
    assert abs(B.s13(10, 1000, 300, 795, 5, 1024) - 6e9 / 599_450_480) < 1e-12
    # non power of two: formula uses real log2, storage ceil(log2)
    assert B.s12_terms(1, 10, 1, 10, 5, 1000).terms["indices"] == 10 * 2 * math.log2(1000) / 8
    assert B.s12_stored_terms(1, 10, 1, 10, 5, 1000).terms["indices"] == math.ceil(10 * 2 * 10 / 8)


def test_s14_is_only_a_proportionality():
    assert B.s14(25, 512) == 25 / 9
    assert B.s13_limit(1000, 1000, 25, 512) == 16 * 1000 * 25 / (1000 * 9)
    big = B.s13(10, 1000, 10**7, 1000, 25, 512)
    assert abs(big - B.s13_limit(1000, 1000, 25, 512)) / big < 1e-3


def test_baseline_formulas_hand_computed():
    n = 3_000_000
    assert B.s15(10, 1000, 300, 15) == n * (30 + math.log2(1000) / 8 * 15)
    assert B.s16(10, 1000, 300, 24) == n * 48 + 24 * 1000 * 2 == 144_048_000
    assert B.s17(10, 1000, 300, 4) == n * 1000 * 2 / 8 + 8 == 750_000_008
    assert B.s17(10, 1000, 300, 8) == n * 1000 * 3 / 8 + 16
    # LPLD: IPC10 -> 10,000 samples / B=128 -> 78 full batches per epoch, pool floor(300*78/40) = 585
    assert B.lpld_pool(10, 1000, 300, 40) == 585
    assert B.lpld_terms(10, 1000, 300, 40).total == 585 * 128 * 1000 * 2


def test_lpld_pool_is_lplds_own_rule():
    """LPLD keeps int(E * nb * (1 - p)) batches (generate_soft_label_pruning.py, Python floats): its "30x" is
    p = 0.97, 702 batches at IN-1K IPC 10 (780 with the nominal ratio 30), 3,510 at IPC 50 (3,900)."""
    from codec.codecs.lpld import LPLDCodec, lpld_pool_batches

    for ipc, want, nominal in ((10, 702, 780), (50, 3510, 3900)):
        nb = ipc * 1000 // 128
        assert B.lpld_pool(ipc, 1000, 300, prune_ratio=0.97) == want == int(300 * nb * (1 - 0.97))
        assert B.lpld_pool(ipc, 1000, 300, 30) == nominal
        cod = LPLDCodec(1000, prune_ratio=0.97, batch_size=128, batches_per_epoch=nb, epochs=300)
        assert cod.pool_batches == want == lpld_pool_batches(300 * nb, 0.97) and cod.max_rows == want * 128
        r = B.plan(ipc, 1000, 300, "lpld:prune_ratio=0.97")
        assert r.bytes == want * 128 * 1000 * 2 and r.formula == "LPLD"
    # float products as LPLD computes them over 300 x 78 batches: 1 - 0.9 is 0.09999999999999998 in binary
    # floating point, so LPLD's int() keeps 2,339 batches at p = 0.9, not 2,340
    assert [B.lpld_pool(10, 1000, 300, prune_ratio=p) for p in (0.9, 0.95, 0.975, 0.0)] == [2339, 1170, 585, 23400]
    assert int(300 * 78 * (1 - 0.9)) == 2339
    assert LPLDCodec(10).get_config().get("prune_ratio", "absent") == "absent"  # configs of the ratio rule unchanged
    rt = LPLDCodec.from_config(LPLDCodec(10, prune_ratio=0.5, batch_size=2, batches_per_epoch=3, epochs=4).get_config())
    assert rt.pool_batches == 6
    for bad in ({"ratio": 2.0, "prune_ratio": 0.5}, {"prune_ratio": 1.0}, {"prune_ratio": -0.1}, {"prune_ratio": 0.5, "epochs": None}):
        kw = {"batch_size": 2, "batches_per_epoch": 3, "epochs": 4, **bad}
        with pytest.raises(InvalidInputError):
            LPLDCodec(10, **kw)
    for spec in ("lpld:batch=128", "lpld:ratio=30,prune_ratio=0.97"):
        with pytest.raises(InvalidInputError, match="exactly one"):
            B.plan(10, 1000, 300, spec)
    with pytest.raises(InvalidInputError):
        B.lpld_pool(10, 1000, 300)


def test_video_budgets():
    b = B.video_pixel_budget(1, 50, 16, 112, 112)
    assert b == 120_422_400 and round(b / B.MiB, 2) == 114.84
    assert B.tucker_chunk_floats((400, 16, 4, 14, 14), (400, 12, 4, 10, 10)) == 2_080_488
    assert B.video_total(10, B.SD_VAE_INT8_BYTES).total == 10 + 83_983_007


def test_plan_specs():
    r = B.plan(10, 1000, 300, "vq:dh=795,dc=5,k=1024")
    assert r.bytes == 599_450_480 and abs(r.ratio - 10.009) < 1e-3
    assert B.plan(10, 1000, 300, "raw").ratio == 1.0
    assert abs(B.plan(10, 1000, 300, "pca:k=24").ratio - 41.65) < 0.01
    t = B.plan(10, 1000, 300, "topk:k=15")
    assert t.stored_bytes == 3_000_000 * 15 * 2 + math.ceil(3_000_000 * 15 * 10 / 8) and t.stored_bytes > t.bytes
    for bad in ("", "zip:k=3", "vq:dh=10,dc=3,k=8", "vq:dc=5,k=8", "topk:k=x", "topk:q=3", "topk:k=2000"):
        with pytest.raises(InvalidInputError):
            B.plan(10, 1000, 300, bad)


def test_solve_reproduces_table_s8_10x_and_meets_ratio():
    props = B.solve(10, 1000, 300, 10)
    assert (props[0].dc, props[0].k, props[0].dh) == (5, 1024, 795)  # Table S8, 10x
    for r in (20, 40, 100):
        ps = B.solve(10, 1000, 300, r)
        assert [p.dc for p in ps] == sorted((p.dc for p in ps), reverse=True)
        for p in ps:
            assert p.dh % p.dc == 0 and p.dh <= 1000 and r <= p.ratio <= r * 1.1
            assert abs(B.s13(10, 1000, 300, p.dh, p.dc, p.k) - p.ratio) < 1e-9
    with pytest.raises(BudgetError):
        B.solve(10, 1000, 300, 100000)


def _cli_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_plan_and_solve(capsys):
    out = _cli_json(capsys, ["budget", "plan", "--ipc", "10", "--classes", "1000", "--epochs", "300",
                             "--codec", "vq:dh=795,dc=5,k=1024", "--codec", "topk:k=15", "--json"])
    assert [c["codec"] for c in out["codecs"]] == ["vq:dh=795,dc=5,k=1024", "topk:k=15"]
    assert out["codecs"][0]["bytes"] == 599_450_480 and abs(out["codecs"][0]["ratio"] - 10.009) < 1e-3
    assert main(["budget", "plan", "--ipc", "10", "--classes", "1000", "--epochs", "300", "--codec", "raw"]) == 0
    text = capsys.readouterr().out
    assert "GiB" in text and "MiB" in text and "6,000,000,000" in text
    out = _cli_json(capsys, ["budget", "solve", "--ipc", "10", "--classes", "1000", "--epochs", "300", "--ratio", "40", "--json"])
    assert all(p["ratio"] >= 40 for p in out["proposals"])
    assert main(["budget", "plan", "--ipc", "10", "--classes", "1000", "--epochs", "300", "--codec", "vq:dh=7,dc=5,k=8"]) == 2
    assert "ddz: error:" in capsys.readouterr().err
    assert main(["budget", "plan", "--ipc", "10"]) == 2
    assert main(["budget", "/nonexistent/x.ddz"]) == 2


def test_cli_solve_param_bytes(capsys):
    """--param-bytes 2 is solve(param_bytes=2): fp16 decoder and codebook leave room for a larger dh."""
    argv = ["budget", "solve", "--ipc", "10", "--classes", "1000", "--epochs", "300", "--ratio", "40", "--json"]
    fp32 = _cli_json(capsys, argv)
    fp16 = _cli_json(capsys, argv + ["--param-bytes", "2"])
    assert fp32["param_bytes"] == 4 and fp16["param_bytes"] == 2
    want = B.solve(10, 1000, 300, 40, param_bytes=2)
    assert [(p["dc"], p["k"], p["dh"]) for p in fp16["proposals"]] == [(p.dc, p.k, p.dh) for p in want]
    assert [p["bytes"] for p in fp16["proposals"]] == pytest.approx([p.bytes for p in want])
    assert [(p["dc"], p["k"], p["dh"]) for p in fp32["proposals"]] == [
        (p.dc, p.k, p.dh) for p in B.solve(10, 1000, 300, 40)]
    dh = {p["dc"]: p["dh"] for p in fp32["proposals"]}
    assert any(p["dh"] > dh[p["dc"]] for p in fp16["proposals"] if p["dc"] in dh)
    assert main(argv[:-1] + ["--param-bytes", "2"]) == 0
    assert "2 bytes per value" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse: only 2 or 4
        main(argv + ["--param-bytes", "3"])
    capsys.readouterr()
    assert main(["budget", "plan", "--ipc", "10", "--classes", "1000", "--epochs", "300", "--codec", "topk:k=15",
                 "--param-bytes", "2"]) == 2  # plan takes param_bytes in the vq spec
    assert "--param-bytes" in capsys.readouterr().err


def _write_file(path, n, k, dc, m, C, entropy, extra_raw, align, seed):
    from codec.codecs.vq import VQCodec
    from codec.softlabels import write_softlabels

    g = torch.Generator().manual_seed(seed)
    c = VQCodec(C, dc * m, dc, k, entropy=entropy)
    c.set_params(encoder=torch.randn(C, dc * m, generator=g), decoder=torch.randn(dc * m, C, generator=g),
                 codebook=torch.randn(k, dc, generator=g))
    with codec.Writer(path, alignment=align) as w:
        if extra_raw:
            w.add("misc", np.arange(extra_raw, dtype=np.uint8))
        write_softlabels(w, "labels", c, torch.randn(n, C, generator=g).softmax(1).numpy(), chunk=7)
    return c


@settings(max_examples=15, deadline=None)
@given(n=st.integers(0, 40), k=st.sampled_from([2, 3, 16, 100, 300]), dc=st.integers(1, 4), m=st.integers(1, 4),
       entropy=st.booleans(), extra_raw=st.integers(0, 100), align=st.sampled_from([64, 128, 4096]),
       seed=st.integers(0, 1000))
def test_attribution_rows_sum_to_file_size(tmp_path_factory, n, k, dc, m, entropy, extra_raw, align, seed):
    path = tmp_path_factory.mktemp("a") / "f.ddz"
    C = 6
    _write_file(path, n, k, dc, m, C, entropy, extra_raw, align, seed)
    rows = B.attribute(path)
    size = path.stat().st_size
    assert sum(r.bytes for r in rows) == size
    names = [r.name for r in rows]
    assert names[0] == "preamble" and names[-1] == "header"
    with codec.open(path) as f:
        for s in f.sections:
            assert s.name in names
    byname = {r.name: r for r in rows}
    if not entropy:
        idx = byname["labels/indices"]
        assert idx.formula_bytes == pytest.approx(n * m * math.log2(k) / 8)
        assert idx.bytes == math.ceil(n * m * max(1, (k - 1).bit_length()) / 8)
        assert "S12 batch data" in idx.term
    elif n:  # the low plane's formula value and difference cover both planes
        lo, hi = byname["labels/indices_lo"], byname.get("labels/indices_hi")
        planes = lo.bytes + (hi.bytes if hi else 0)
        assert lo.formula_bytes == pytest.approx(n * m * math.log2(k) / 8)
        assert f"term total (indices_lo{' + indices_hi' if hi else ''}): {planes:,} B = {8 * planes / (n * m):.3f} bits per value" in lo.note
        assert f"actual - formula = {planes - lo.formula_bytes:+,.1f} B (term total)" in lo.note
        assert (hi is None) == (k <= 256)
    assert byname["labels/decoder"].formula_bytes == C * dc * m * 4 == byname["labels/decoder"].bytes
    assert byname["labels/codebook"].formula_bytes == k * dc * 4


def test_cli_attribution_json_and_text(tmp_path, capsys):
    p = tmp_path / "f.ddz"
    _write_file(p, 50, 1000, 5, 4, 12, False, 0, 64, 0)
    out = _cli_json(capsys, ["budget", str(p), "--json"])
    assert sum(r["bytes"] for r in out["rows"]) == out["file_size"] == p.stat().st_size
    assert main(["budget", str(p)]) == 0
    text = capsys.readouterr().out
    assert "log2(1000) = 9.9658 bits, storage ceil = 10 bits" in text and "padding" in text


def test_attribute_rejects_non_ddz(tmp_path):
    p = tmp_path / "junk.ddz"
    p.write_bytes(b"not a ddz file at all" * 10)
    with pytest.raises(DDZError):
        B.attribute(p)


def test_attribution_of_tucker_sections_uses_fp32_floats(tmp_path):
    """B.4 counts the HOSVD core and factors as fp32 floats; an fp16 archive shows half of it."""
    import torch

    import codec
    from codec.budget import attribute
    from codec.codecs import write_object
    from codec.codecs.tucker import TuckerCodec

    x = torch.randn(6, 8, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    with codec.Writer(tmp_path / "t.ddz") as w:
        parts = write_object(w, "latents", TuckerCodec(dtype="f16"), x)
    rows = {r.name: r for r in attribute(tmp_path / "t.ddz")}
    assert sum(r.bytes for r in rows.values()) == (tmp_path / "t.ddz").stat().st_size
    for section in parts.values():
        assert rows[section].formula_bytes == 2 * rows[section].bytes and "HOSVD" in rows[section].term
        assert "stored f16 (formula counts f32, 4 B/value)" in rows[section].note


def test_cli_output_into_a_closed_pipe_is_quiet():
    import subprocess
    import sys

    specs = " ".join(f"--codec topk:k={k}" for k in range(1, 1000))
    p = subprocess.run(f"{sys.executable} -m codec.cli budget plan --ipc 10 --classes 1000 --epochs 300 {specs} | head -c 20",
                       shell=True, capture_output=True, text=True, timeout=120)
    assert p.stdout == "IPC 10, 1000 classes" and "Traceback" not in p.stderr and "Error" not in p.stderr
