"""Hostile latent-video archives: every edit of a valid header (metadata, objects table, codec
configs) and every hand-built inconsistent archive must surface as a codec DDZError through
codec.load -> decode_batch / ds[i] / iteration, and as a one-line `ddz: error:` from `ddz unpack`."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

import codec
from codec.cli import main
from codec.errors import DDZError, LimitError
from codec.video import pack_latents, tiny_vae_config, vae_from_config
from ddzutil import split, with_header


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    vae = vae_from_config(tiny_vae_config(blocks=(16, 32), groups=4), seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 2, 4, 8, 8, generator=g), torch.tensor([0, 1, 0, 1, 0])
    path = d / "base.ddz"
    pack_latents(path, vae, x, y, class_names=["a", "b"], chunk_size=3, progress=False)
    return path


def _V(h):
    return h["metadata"]["ddz.video"]


def _LC(h):
    return h["objects"]["latents"]["codec"]


def _VC(h):
    return h["objects"]["vae"]["codec"]


def _set(get, key, value):
    return lambda h: get(h).__setitem__(key, value)


# (edit of the parsed header, must it be refused?). Edits marked False are harmless to decoding.
MUTATIONS = {
    "meta objects list": (_set(_V, "objects", []), True),
    "meta objects latents int": (lambda h: _V(h)["objects"].__setitem__("latents", 5), True),
    "meta objects latents missing": (lambda h: _V(h)["objects"].__setitem__("latents", "nope"), True),
    "meta objects labels missing": (lambda h: _V(h)["objects"].__setitem__("labels", "nope"), True),
    "meta objects soft missing": (lambda h: _V(h)["objects"].__setitem__("soft_labels", "nope"), True),
    "meta objects soft is labels": (lambda h: _V(h)["objects"].__setitem__("soft_labels", "labels"), True),
    "meta class_names int": (_set(_V, "class_names", 7), True),
    "meta num_classes 1": (_set(_V, "num_classes", 1), True),
    "meta num_classes 2**40": (_set(_V, "num_classes", 2**40), True),
    "meta class_names one": (_set(_V, "class_names", ["a"]), True),
    "meta class_names missing": (lambda h: _V(h).pop("class_names"), True),
    "meta class_names ints": (_set(_V, "class_names", [1, 2]), True),
    "meta latent_shape wrong": (_set(_V, "latent_shape", [2, 4, 8, 9]), True),
    "meta latent_shape str": (_set(_V, "latent_shape", "x"), True),
    "meta frames str": (_set(_V, "frames", "x"), False),
    "tucker no core": (lambda h: h["objects"]["latents"]["sections"].pop("core"), True),
    "tucker tol str": (_set(_LC, "tol", "abc"), True),
    "tucker tol list": (_set(_LC, "tol", [1]), True),
    "tucker ranks str": (_set(_LC, "ranks", ["x"]), True),
    "tucker ranks int": (_set(_LC, "ranks", 3), True),
    "tucker keep str": (_set(_LC, "keep", ["x"]), True),
    "tucker chunk_size 2": (_set(_LC, "chunk_size", 2), True),
    "tucker chunk_size huge": (_set(_LC, "chunk_size", 10**30), True),
    "tucker chunk_size float": (_set(_LC, "chunk_size", 3.5), True),
    "tucker n_iter huge": (_set(_LC, "n_iter", 10**30), False),
    "tucker n_iter negative": (_set(_LC, "n_iter", -1), True),
    "tucker extra key": (_set(_LC, "bogus", 1), True),
    "tucker id int8": (_set(_LC, "id", "int8"), True),
    "tucker id unknown": (_set(_LC, "id", "nope"), True),
    "tucker part factor_x": (lambda h: h["objects"]["latents"]["sections"].__setitem__("factor_x", "labels"), True),
    "tucker factor_1 is labels": (lambda h: h["objects"]["latents"]["sections"].__setitem__("factor_1", "labels"), True),
    "tucker factor_1 is factor_3": (lambda h: h["objects"]["latents"]["sections"].__setitem__("factor_1", "latents/factor_3"), True),
    "tucker core is labels": (lambda h: h["objects"]["latents"]["sections"].__setitem__("core", "labels"), True),
    "tucker core is vae/q": (lambda h: h["objects"]["latents"]["sections"].__setitem__("core", "vae/q"), True),
    "vae quantize str": (_set(_VC, "quantize", {"a": "x"}), True),
    "vae quantize list": (_set(_VC, "quantize", [1]), True),
    "vae tensors none": (_set(_VC, "tensors", None), True),
    "vae tensors int": (_set(_VC, "tensors", 3), True),
    "vae tensors shape str": (lambda h: _VC(h)["tensors"][0].__setitem__(1, "ab"), True),
    "vae tensors shape neg": (lambda h: _VC(h)["tensors"][0].__setitem__(1, [-32, 3, 3, 3]), True),
    "vae tensors shape float": (lambda h: _VC(h)["tensors"][1].__setitem__(1, [16.0]), True),
    "vae tensors one zero entry": (_set(_VC, "tensors", [["encoder.conv_in.weight", [0, 3], "q", 0]]), True),
    "vae tensors axis str": (lambda h: _VC(h)["tensors"][0].__setitem__(3, "a"), True),
    "vae tensors axis big": (lambda h: _VC(h)["tensors"][0].__setitem__(3, 9), True),
    "vae tensors name int": (lambda h: _VC(h)["tensors"][0].__setitem__(0, 5), True),
    "vae tensors duplicate": (lambda h: _VC(h)["tensors"].append(list(_VC(h)["tensors"][0])), True),
    "vae tensors swap shapes": (lambda h: _VC(h)["tensors"][0].__setitem__(1, [8, 6, 3, 3]), True),
    "vae scheme symmetric": (_set(_VC, "scheme", "symmetric"), True),
    "vae model none": (_set(_VC, "model", None), True),
    "vae model class Flax": (lambda h: _VC(h)["model"].__setitem__("class", "FlaxAutoencoderKL"), True),
    "vae model class UNet": (lambda h: _VC(h)["model"].__setitem__("class", "UNet2DModel"), True),
    "vae config blocks empty": (lambda h: _VC(h)["model"]["config"].__setitem__("block_out_channels", []), True),
    "vae config groups 0": (lambda h: _VC(h)["model"]["config"].__setitem__("norm_num_groups", 0), True),
    "vae config act bogus": (lambda h: _VC(h)["model"]["config"].__setitem__("act_fn", "bogus"), True),
    "vae config latent str": (lambda h: _VC(h)["model"]["config"].__setitem__("latent_channels", "x"), True),
    "vae config latent 3": (lambda h: _VC(h)["model"]["config"].__setitem__("latent_channels", 3), True),
    "vae config layers 200": (lambda h: _VC(h)["model"]["config"].__setitem__("layers_per_block", 200), True),
    "vae config layers 5000": (lambda h: _VC(h)["model"]["config"].__setitem__("layers_per_block", 5000), True),
    "vae config 2000 blocks": (lambda h: _VC(h)["model"]["config"].update(block_out_channels=[16] * 2000,
                                                                          down_block_types=["DownEncoderBlock2D"] * 2000,
                                                                          up_block_types=["UpDecoderBlock2D"] * 2000), True),
    "vae config blocks huge": (lambda h: _VC(h)["model"]["config"].__setitem__("block_out_channels", [2**20, 2**20]), True),
    "vae config down types bogus": (lambda h: _VC(h)["model"]["config"].__setitem__("down_block_types", ["No", "No"]), True),
    "vae float_dtype list": (_set(_VC, "float_dtype", ["f32"]), True),
    "vae zstd 99": (_set(_VC, "zstd", 99), True),
    "vae q is vae/scale": (lambda h: h["objects"]["vae"]["sections"].__setitem__("q", "vae/scale"), True),
    "labels is vae/scale": (lambda h: _V(h)["objects"].__setitem__("labels", "vae/scale"), True),
    "labels is latents/core": (lambda h: _V(h)["objects"].__setitem__("labels", "latents/core"), True),
}


def _exercise(path) -> None:
    ds = codec.load(path)
    ds.decode_batch([0, 4])
    ds[1]
    assert sum(1 for _ in ds) == len(ds)  # an IndexError inside must not end iteration early


def _mutated(base, tmp_path, edit) -> str:
    raw = base.read_bytes()
    _, header = split(raw)
    h = copy.deepcopy(header)
    edit(h)
    p = tmp_path / "mut.ddz"
    p.write_bytes(with_header(raw, h))
    return str(p)


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_hostile_header_edit_raises_only_ddz_errors(base, tmp_path, name):
    edit, must_raise = MUTATIONS[name]
    path = _mutated(base, tmp_path, edit)
    if must_raise:
        with pytest.raises(DDZError):
            _exercise(path)
    else:
        _exercise(path)


def _build(path, base, parts, cfg=None):
    with codec.open(base) as src, codec.Writer(path, metadata=src.metadata) as w:
        for sec in src.objects["vae"]["sections"].values():
            w.add(sec, src.get(sec))
        w.add_object("vae", src.objects["vae"]["codec"], src.objects["vae"]["sections"])
        secs = {}
        for p, a in parts.items():
            w.add(f"latents/{p}", a)
            secs[p] = f"latents/{p}"
        w.add_object("latents", cfg or src.objects["latents"]["codec"], secs)
        w.add("labels", src.get("labels"))
    return str(path)


def _hand_built(base, tmp_path, case):
    f1, f3 = torch.randn(2, 2, 1), torch.randn(2, 8, 6)
    if case == "C=3 core for a C=4 VAE":
        parts = {"core": torch.randn(5, 1, 3, 6, 6), "factor_1": f1, "factor_3": f3, "factor_4": f3}
    elif case == "factors blow a 0.9 MB file up to 640 MB":
        big = torch.randn(2, 2000, 6)
        parts = {"core": torch.randn(5, 1, 4, 6, 6), "factor_1": f1, "factor_3": big, "factor_4": big}
    elif case == "6-D core":
        parts = {"core": torch.randn(5, 2, 4, 8, 8, 1)}
    elif case == "integer core":
        parts = {"core": torch.zeros(5, 2, 4, 8, 8, dtype=torch.int32)}
    elif case == "zero samples":
        parts = {"core": torch.randn(0, 2, 4, 8, 8)}
    elif case == "factor with no rows":
        parts = {"core": torch.randn(5, 1, 4, 6, 6), "factor_1": f1, "factor_3": torch.randn(2, 0, 6), "factor_4": f3}
    return _build(tmp_path / "h.ddz", base, parts)


HAND_BUILT = ["C=3 core for a C=4 VAE", "factors blow a 0.9 MB file up to 640 MB", "6-D core", "integer core",
              "zero samples", "factor with no rows"]


@pytest.mark.parametrize("case", HAND_BUILT)
def test_inconsistent_archives_are_refused_at_load(base, tmp_path, case):
    path = _hand_built(base, tmp_path, case)
    with pytest.raises(DDZError) as exc:
        codec.load(path)  # refused before any VAE build or allocation
    if "640 MB" in case:
        assert isinstance(exc.value, LimitError) and os.path.getsize(path) < 1_000_000


@pytest.mark.parametrize("name", ["meta objects list", "meta class_names int", "tucker no core", "vae tensors shape float",
                                  "vae config groups 0", "vae config blocks empty", "vae scheme symmetric",
                                  "vae config latent 3"])
def test_unpack_hostile_archive_exits_2_with_one_line(base, tmp_path, capsys, name):
    path = _mutated(base, tmp_path, MUTATIONS[name][0])
    assert main(["unpack", path, "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddz: error: ")


def test_unpack_hand_built_archive_through_python_m(base, tmp_path):
    path = _hand_built(base, tmp_path, "factors blow a 0.9 MB file up to 640 MB")
    r = subprocess.run([sys.executable, "-m", "codec.cli", "unpack", path, "-o", str(tmp_path / "o"), "-q"],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddz: error: ") and "Traceback" not in r.stderr


def test_valid_archive_iterates_fully(base):
    ds = codec.load(base)
    items = list(ds)
    assert len(items) == len(ds) == 5 and items[4][0].shape == (2, 3, 16, 16)


# ---- issue 13 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vae config layers 200", "vae config layers 5000", "vae config 2000 blocks"])
def test_vae_config_is_bounded_by_the_stored_weights(base, tmp_path, name):
    import time

    path = _mutated(base, tmp_path, MUTATIONS[name][0])
    start = time.process_time()
    with pytest.raises(DDZError, match="bigger AutoencoderKL than its weights|does not build|do not match"):
        codec.load(path)[0]
    assert time.process_time() - start < 2.0  # stopped while building, not after minutes


@pytest.mark.parametrize("label", [2, 2**40, -1])
def test_labels_are_checked_against_the_class_count(base, tmp_path, label):
    from ddzutil import rewrite

    def edit(a, bits):
        a = a.copy()
        a[4] = label
        return a, bits

    path = rewrite(base, tmp_path / "l.ddz", edits={"labels": edit})  # every checksum re-sealed
    with codec.open(path) as f:
        f.verify()
    with pytest.raises(codec.FormatError, match="class ids outside 0..1"):
        codec.load(path)
    assert main(["unpack", str(path), "-o", str(tmp_path / "u"), "-q"]) == 2
    assert not (tmp_path / "u").exists()


def test_unpack_output_must_be_new_or_empty_and_no_link(base, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere, out / "vae")  # would redirect out/vae/... writes
    assert main(["unpack", str(base), "-o", str(out), "-q"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert os.listdir(elsewhere) == [] and os.listdir(out) == ["vae"]
    link = tmp_path / "link"
    os.symlink(elsewhere, link)
    assert main(["unpack", str(base), "-o", str(link), "-q"]) == 2
    assert "symlink" in capsys.readouterr().err and os.listdir(elsewhere) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["unpack", str(base), "-o", str(empty), "-q"]) == 0
    assert sorted(os.listdir(empty)) == ["labels.csv", "labels.json", "latents.safetensors", "metadata.json",
                                         "tucker.safetensors", "vae"]
    assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []


def test_unpack_verifies_by_default(base, tmp_path, capsys):
    raw = bytearray(base.read_bytes())
    with codec.open(base) as f:
        at = f.info("vae/q").offset + 3
    raw[at] ^= 0x01
    p = tmp_path / "flip.ddz"
    p.write_bytes(bytes(raw))
    assert main(["unpack", str(p), "-o", str(tmp_path / "u"), "-q"]) == 2
    assert "CRC-32" in capsys.readouterr().err and not (tmp_path / "u").exists()
    assert main(["unpack", str(p), "-o", str(tmp_path / "u"), "-q", "--no-verify"]) == 0
    assert len(codec.load(p)) == 5  # codec.load checks structure by default; verify=True every checksum
    with pytest.raises(codec.ChecksumError):
        codec.load(p, verify=True)


_FSIZE = """
import os, resource, signal, sys
from codec.cli import main
src, root = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
for limit in [0, 1, 100, 4096, 20000, 60000, 200000, 600000, 1200000, 2000000, 4000000, -1]:
    out = os.path.join(root, f"u{limit}")
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY if limit < 0 else limit, hard))
    rc = main(["unpack", src, "-o", out, "-q", "--frames", "png"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    left = sorted(os.listdir(root))
    print(limit, rc, os.path.isdir(out), left, flush=True)
"""


def test_unpack_onto_a_full_disk_leaves_nothing(base, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    script = tmp_path / "fsize.py"
    script.write_text(_FSIZE)
    r = subprocess.run([sys.executable, str(script), str(base), str(root)], capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split(" ", 3) for line in r.stdout.strip().splitlines()]
    errors = [line for line in r.stderr.strip().splitlines() if line]
    assert all(e.startswith("ddz: error: unpacking into") for e in errors), errors
    failed = [row for row in rows if row[1] != "0"]
    assert len(failed) >= 5 and len(errors) == len(failed)
    for limit, rc, exists, left in rows:
        if rc == "0":
            assert exists == "True"
        else:
            assert rc == "2" and exists == "False" and f"'u{limit}'" not in left
    assert rows[-1][1] == "0"  # no limit: it works
    assert [f for f in os.listdir(root) if f.startswith(".")] == []
