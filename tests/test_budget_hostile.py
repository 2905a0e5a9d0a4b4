"""Hostile inputs to codec.budget: bad object configs in a file, bad solver arguments.

Every failure must be a DDZError (or a one-line ``ddz: error:`` from the CLI)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from codec import budget as B
from codec.cli import main
from codec.errors import BudgetError, InvalidInputError
from codec.format import Writer

C = 10
GOOD = {"id": "vq", "classes": C, "dh": 10, "dc": 5, "k": 8, "eps": 1e-8, "input": "probs", "temperature": 1.0,
        "param_dtype": "f32", "entropy": False, "store_encoder": False, "zstd_level": 19}


def _vq_file(path, **edit):
    cfg = dict(GOOD, **edit)
    with Writer(path) as w:
        w.add("labels/indices", np.zeros((5, 2), np.uint8), bits=3)
        w.add("labels/codebook", np.zeros((8, 5), np.float32))
        w.add("labels/decoder", np.zeros((10, 10), np.float32))
        w.add_object("labels", cfg, {"indices": "labels/indices", "codebook": "labels/codebook",
                                     "decoder": "labels/decoder"})
    return path


@pytest.mark.parametrize("edit", [{"k": 0}, {"k": "8"}, {"dc": 0}, {"dh": None}, {"classes": [1]}, {"zstd_level": 10**300},
                                  {"id": "topk", "k": 3, "classes": None}, {"bogus": 1}])
def test_attribute_survives_bad_object_configs(tmp_path, edit, capsys):
    p = _vq_file(tmp_path / "f.ddz", **edit)
    rows = B.attribute(p)
    assert sum(r.bytes for r in rows) == p.stat().st_size
    sec = {r.name: r for r in rows if r.kind == "section"}
    for name in ("labels/indices", "labels/codebook", "labels/decoder"):
        assert "invalid codec config" in sec[name].term and sec[name].formula_bytes is None
    assert main(["budget", str(p)]) == 0
    assert "invalid codec config" in capsys.readouterr().out


def test_attribute_formula_values_come_from_the_formula_functions(tmp_path):
    p = _vq_file(tmp_path / "f.ddz")
    sec = {r.name: r for r in B.attribute(p) if r.kind == "section"}
    t = B.s12_row_terms(5, C, 10, 5, 8).terms
    assert sec["labels/indices"].formula_bytes == t["indices"] == 5 * 2 * 3 / 8
    assert sec["labels/decoder"].formula_bytes == t["decoder"] == C * 10 * 4
    assert sec["labels/codebook"].formula_bytes == t["codebook"] == 8 * 5 * 4


@pytest.mark.parametrize("kw", [dict(ratio=1e-300), dict(ratio=0.5), dict(ratio=math.inf), dict(ratio=math.nan),
                                dict(ratio=True), dict(ratio=40, ks=[0]), dict(ratio=40, ks=[1]),
                                dict(ratio=40, dcs=[0]), dict(ratio=40, dcs=["5"]), dict(ratio=40, dh_max=0)])
def test_solve_rejects_bad_arguments(kw):
    with pytest.raises(InvalidInputError):
        B.solve(10, 1000, 300, **kw)


def test_solve_cli_tiny_ratio_is_a_clean_error(capsys):
    assert main(["budget", "solve", "--ipc", "10", "--classes", "1000", "--epochs", "300", "--ratio", "1e-300"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddz: error:")


def test_solve_says_when_every_candidate_over_compresses():
    with pytest.raises(BudgetError, match=r"lands in \[2x, 2.2x\].*every candidate compresses more \(the least 6.64x\)"):
        B.solve(10, 1000, 300, 2)
    with pytest.raises(BudgetError, match=r"reaches a 1e\+09x ratio"):
        B.solve(10, 1000, 300, 1e9)


def test_formula_functions_validate_their_arguments():
    for call in (lambda: B.eq8(0, 1, 1, 1, 2, 1, 1), lambda: B.eq8(300, 10_000, 1000, 159, "k", 5, 795),
                 lambda: B.video_total("a", 1), lambda: B.video_total(1, -1), lambda: B.tucker_chunk_floats((4, 3), (4, "3")),
                 lambda: B.tucker_chunk_floats((4, 3), (5, 3)), lambda: B.tucker_chunk_floats(4, 3)):
        with pytest.raises(InvalidInputError):
            call()
    assert B.eq8(300, 10_000, 1000, 159, 1024, 5, 795) == pytest.approx(6.28, abs=0.005)


def test_s14_needs_k_at_least_2():
    with pytest.raises(InvalidInputError):
        B.s14(5, 1)
    assert B.s14(5, 4) == 2.5


@pytest.mark.parametrize("opt", [["--ipc", "10"], ["--classes", "10"], ["--epochs", "3"], ["--all"]])
def test_budget_file_rejects_plan_options(tmp_path, opt, capsys):
    p = _vq_file(tmp_path / "f.ddz")
    assert main(["budget", str(p), *opt]) != 0
    assert capsys.readouterr().err.startswith("ddz: error:")


@pytest.mark.parametrize("spec,classes", [("topk:k=1", 1), ("quant:k=4", 1), ("pca:k=20", 10), ("topk:k=1,k=3", 10),
                                          ("vq:dh=10,dc=5,k=8,param_bytes=3", 10), ("vq:dh=10,dc=5,k=8,dh=20", 10),
                                          ("lpld:ratio=inf", 10), ("lpld:ratio=nan", 10), ("quant:k=100000", 1000),
                                          ("vq:dh=10,dc=5,k=33554432", 10), ("topk:k=3", 2**25), ("lpld:ratio=2", 1)])
def test_plan_rejects_specs_the_codecs_reject(spec, classes):
    with pytest.raises(InvalidInputError):
        B.plan(1, classes, 1, spec)


def test_lpld_pool_needs_a_finite_ratio():
    with pytest.raises(InvalidInputError):
        B.lpld_pool(10, 10, 3, math.inf, 4)
    assert B.lpld_pool(10, 10, 3, 5.0, 4) == math.floor(3 * 25 / 5)


def test_row_forms_are_the_one_source_of_the_formulas():
    n = B.formulas.n_labels(2, 10, 3)
    F = B.formulas
    assert F.s12_stored_row_terms(n, 10, 10, 5, 1000).terms == B.s12_stored_terms(2, 10, 3, 10, 5, 1000).terms
    assert F.s15_stored_row_terms(n, 10, 3).terms == B.s15_stored_terms(2, 10, 3, 3).terms
    assert F.s16_stored_row_terms(n, 10, 3).terms == B.s16_stored_terms(2, 10, 3, 3).terms
    assert F.s17_stored_row_terms(n, 10, 4).terms == B.s17_stored_terms(2, 10, 3, 4).terms
    assert F.s11_rows(n, 10) == B.s11(2, 10, 3)
    # hand values: 60 labels, 2 segments of ceil(log2 1000) = 10 bits -> 150 B; top-3 of 10 classes at 4 bits -> 90 B
    assert F.s12_stored_row_terms(n, 10, 10, 5, 1000).terms["indices"] == 150
    assert F.s15_stored_row_terms(n, 10, 3).terms == {"values": 360, "indices": 90}


def test_fidelity_tool_sizes_come_from_codec_budget():
    import importlib.util
    import pathlib

    import sys

    spec = importlib.util.spec_from_file_location("fidelity", pathlib.Path(__file__).parents[1] / "tools" / "fidelity.py")
    assert spec is not None and spec.loader is not None
    fid = sys.modules.setdefault("fidelity", importlib.util.module_from_spec(spec))  # its dataclasses need the module registered
    if not hasattr(fid, "topk_choice"):
        spec.loader.exec_module(fid)
    k, ratio = fid.topk_choice(10, 500, 2)
    assert ratio == B.s11_rows(500, 10) / B.formulas.s15_stored_row_terms(500, 10, k).total >= 2
    k, ratio = fid.quant_choice(10, 500, 4)
    assert ratio == B.s11_rows(500, 10) / B.formulas.s17_stored_row_terms(500, 10, k).total >= 4


@pytest.mark.parametrize("argv", [["plan", "--codec", "raw", "--ratio", "40"], ["plan", "--codec", "raw", "--all"],
                                  ["solve", "--ratio", "40", "--codec", "raw"]])
def test_plan_and_solve_reject_each_others_options(argv, capsys):
    base = ["budget", argv[0], "--ipc", "10", "--classes", "1000", "--epochs", "300", *argv[1:]]
    assert main(base) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddz: error:")
