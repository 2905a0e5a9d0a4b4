"""tools/fidelity.py end to end in its --quick mode: glyph set, teacher, recorded views, every
codec's replay archive at matched bytes, students trained through replay_loader / kd_loss."""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import pytest

pytest.importorskip("matplotlib")  # the fonts ship in its wheel (extras "test" / "examples")


def _tool():
    spec = importlib.util.spec_from_file_location("fidelity", pathlib.Path(__file__).parents[1] / "tools" / "fidelity.py")
    mod = sys.modules.setdefault("fidelity", importlib.util.module_from_spec(spec))
    if not hasattr(mod, "run"):
        spec.loader.exec_module(mod)
    return mod


def test_glyph_classes_are_distinct_renderings():
    fid = _tool()
    render = fid.Renderer(24)
    chars, info = fid.choose_glyphs(40, render)
    assert len(set(chars)) == 40
    fonts = fid.dejavu_fonts()
    # no two chosen glyphs draw identically in at least half of the DejaVu fonts
    imgs = {c: [render(f, c).tobytes() for f in fonts] for c in chars}
    for i, a in enumerate(chars):
        for b in chars[i + 1:]:
            assert sum(x == y for x, y in zip(imgs[a], imgs[b])) * 2 < len(fonts), (a, b)
    assert all(len(info["fonts_of"][c]) >= len(fonts) for c in chars)


def test_quick_run_writes_every_codec_at_its_ratio():
    fid = _tool()
    args = fid.parse(["--quick", "--threads", "1"])
    res = fid.run(args, lambda s: None)
    rows = res["rows"]
    assert 0 < res["info"]["teacher_acc"]["test"] <= 1
    full = [r for r in rows if r["codec"] == "full fp16"]
    assert len(full) == 1 and full[0]["ratio"] == pytest.approx(1.0, rel=1e-3)
    done = {(r["codec"], r["target"]) for r in rows if "acc" in r}
    assert {("vq", 10), ("topk", 10), ("pca", 10), ("quant", 10), ("lpld", 10), ("vq", 40)} <= done
    for r in rows:
        if "acc" in r:
            assert r["ratio"] >= r["target"] * 0.999, r  # stored bytes measured from the written file
            assert all(0 <= a <= 1 for a in r["acc"]) and math.isfinite(r["kept"])
    vq = next(r for r in rows if r["codec"] == "vq" and r["target"] == 10)
    assert vq["config"]["space"] == "logits" and vq["config"]["train"]["refine"] is True
    table = fid.table(res)
    assert table.count("\n") == len(rows) + 1 and "cannot reach the ratio" in table
