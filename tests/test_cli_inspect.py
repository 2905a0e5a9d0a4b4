"""``ddz info`` and ``ddz verify``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import codec
from codec.cli import main


def _sample(path):
    with codec.Writer(path, {"ipc": 1}) as w:
        w.add("latents", np.zeros((2, 3), np.float32))
        w.add("idx", np.arange(9, dtype=np.uint16), bits=4)
    return path


def test_info_text_and_json(tmp_path, capsys):
    p = _sample(tmp_path / "s.ddz")
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "latents" in out and "bitpack:4" in out and "overhead:" in out
    assert main(["info", str(p), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["file_bytes"] == p.stat().st_size
    o = d["overhead_bytes"]
    assert o["total"] + sum(s["length"] for s in d["sections"]) == d["file_bytes"]
    assert [s["name"] for s in d["sections"]] == ["latents", "idx"] and d["metadata"] == {"ipc": 1}


def test_verify_sound_and_corrupt(tmp_path, capsys):
    p = _sample(tmp_path / "s.ddz")
    assert main(["verify", str(p)]) == 0
    assert "OK" in capsys.readouterr().out
    raw = bytearray(p.read_bytes())
    with codec.open(p) as f:
        a, b = f.info("latents").offset, f.info("idx").offset
    raw[a] ^= 1
    raw[b] ^= 1
    p.write_bytes(bytes(raw))
    assert main(["verify", str(p)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "'latents'" in lines[0] and "'idx'" in lines[1]


def test_malformed_file_is_a_one_line_error(tmp_path):
    p = tmp_path / "junk.ddz"
    p.write_bytes(b"not a ddz file at all, just text" * 3)
    r = subprocess.run([sys.executable, "-m", "codec.cli", "verify", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == "ddz: error: offset 0: not a .ddz file (bad magic)"
