"""Backward compatibility (numcodecs' ``check_backwards_compatibility``): one golden .ddz per codec
id, written by ``tools/make_golden.py`` and never rewritten by tests. Today's code must rebuild
each stored config unchanged, decode the stored parts to the stored value and re-encode the
stored input to the stored parts, byte for byte. The examples use dyadic values, so none of
this depends on the CPU or BLAS build (see tools/make_golden.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import codec
from codec.codecs import codec_from_config, registered_codecs

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "codecs"
sys.path.insert(0, str(ROOT / "tools"))


def _unflat(f, prefix: str):
    names = [n for n in f.keys() if n == prefix or n.startswith(prefix + "/")]
    if names == [prefix]:
        return f.get(prefix, framework="torch")
    return {n[len(prefix) + 1:]: f.get(n, framework="torch") for n in names}


def test_every_registered_codec_has_a_golden_file():
    assert sorted(p.stem for p in GOLDEN.glob("*.ddz")) == registered_codecs()


@pytest.mark.parametrize("codec_id", registered_codecs())
def test_golden_file_decodes_and_reencodes_byte_for_byte(codec_id):
    with codec.open(GOLDEN / f"{codec_id}.ddz") as f:
        f.verify()
        obj = f.objects["obj"]
        cfg = obj["codec"]
        stored = {p: f.get(s, framework="torch") for p, s in obj["sections"].items()}
        infos = {p: f.info(s) for p, s in obj["sections"].items()}
        x, decoded = _unflat(f, "input"), _unflat(f, "decoded")
    c = codec_from_config(cfg)
    assert c.codec_id == codec_id and c.get_config() == cfg  # keys and defaults unchanged
    # decode, as any reader would: config, then learned parameters from the stored parts
    got = c.decode(stored)
    if isinstance(decoded, dict):
        assert got.keys() == decoded.keys()
        for k in decoded:
            assert torch.equal(got[k], decoded[k]), k
    else:
        assert torch.equal(got, decoded)
    # re-encode the stored input: the same parts, stored the same way, byte for byte
    again = c.with_params(stored).encode(x)
    assert sorted(again) == sorted(stored)
    for p, part in again.items():
        a = torch.as_tensor(part.array)
        assert a.dtype == stored[p].dtype and a.shape == stored[p].shape, p
        assert a.contiguous().view(torch.uint8).numpy().tobytes() == stored[p].contiguous().view(torch.uint8).numpy().tobytes(), p
        zstd = next((e.get("level") for e in infos[p].encoding if e["id"] == "zstd"), None)
        assert (part.bits, part.zstd) == (infos[p].bits, zstd), p


def test_golden_examples_are_what_the_tool_writes(tmp_path):
    """The tool regenerates these bytes (so the files are its output, not hand edits)."""
    from make_golden import write_codec_golden

    for cid in registered_codecs():
        write_codec_golden(str(tmp_path / f"{cid}.ddz"), cid)
        assert (tmp_path / f"{cid}.ddz").read_bytes() == (GOLDEN / f"{cid}.ddz").read_bytes(), cid
