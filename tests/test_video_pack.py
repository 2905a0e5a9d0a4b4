"""Pack pipeline: latents/videos -> .ddz, exact planned size, budget refusal, atomicity, malformed input."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import codec
from codec.errors import BudgetError, InvalidInputError
from codec.loader import load
from codec.video import (find_clips, load_tensors, pack_latents, pack_videos, parse_size, plan_latent_archive,
                         read_clip, tiny_vae_config, vae_from_config)
from codec.video.pack import ArchivePlan
from codec.video.unpack import write_mp4


@pytest.fixture(scope="module")
def vae():
    return vae_from_config(tiny_vae_config(), seed=0)


def latents(n=7, t=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, t, 4, 8, 8, generator=g), torch.arange(n) % 3


def test_parse_size_units_are_explicit():
    assert parse_size("115MB") == 115_000_000
    assert parse_size("110MiB") == 110 * 2**20
    assert parse_size("1.5 kB") == 1500
    assert parse_size(42) == 42
    for bad in ("115 MBs", "", "-3MB", "0", True, "1e3"):
        with pytest.raises(InvalidInputError):
            parse_size(bad)


def test_pack_load_roundtrip_and_exact_planned_size(vae, tmp_path):
    x, y = latents()
    out = tmp_path / "a.ddz"
    plan = pack_latents(out, vae, x, y, class_names=["a", "b", "c"], chunk_size=3, progress=False)
    assert os.path.getsize(out) == plan.size
    with codec.open(out) as f:
        f.verify()
        meta = f.metadata["ddz.video"]
        assert meta["latent_shape"] == [4, 4, 8, 8] and meta["resolution"] == [16, 16]
        assert meta["tucker"]["ranks"] == [3, 3, 4, 6, 6]
        assert sorted(f.objects) == ["latents", "vae"]
    ds = load(out)
    assert len(ds) == 7 and ds.class_names == ["a", "b", "c"]
    assert torch.equal(ds.labels, y)
    v, lab = ds[5]
    assert v.shape == (4, 3, 16, 16) and v.dtype == torch.float32 and int(lab) == int(y[5])
    assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0


def test_budget_refusal_writes_nothing(vae, tmp_path):
    x, y = latents()
    plan = plan_latent_archive(vae, x, y, progress=False)
    out = tmp_path / "b.ddz"
    with pytest.raises(BudgetError) as exc:
        pack_latents(out, vae, x, y, budget=plan.size - 1, progress=False)
    msg = str(exc.value)
    assert "vae/q" in msg and "over the budget" in msg
    assert os.listdir(tmp_path) == []
    pack_latents(out, vae, x, y, budget=plan.size, progress=False)  # exactly at the budget fits
    assert os.path.getsize(out) == plan.size


def test_interrupt_while_writing_leaves_no_file(vae, tmp_path, monkeypatch):
    x, y = latents()
    plan = plan_latent_archive(vae, x, y, progress=False)
    calls = []
    orig = codec.Writer.add

    def boom(self, name, *a, **k):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return orig(self, name, *a, **k)

    monkeypatch.setattr(codec.Writer, "add", boom)
    with pytest.raises(KeyboardInterrupt):
        plan.write(tmp_path / "c.ddz", progress=False)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case", ["ndim", "labels_len", "float_labels", "channels", "nan", "negative"])
def test_malformed_latents_raise(vae, tmp_path, case):
    x, y = latents()
    if case == "ndim":
        x = x[:, 0]
    elif case == "labels_len":
        y = y[:-1]
    elif case == "float_labels":
        y = y.float()
    elif case == "channels":
        x = torch.randn(7, 4, 3, 8, 8)
    elif case == "nan":
        x[0, 0, 0, 0, 0] = float("nan")
    elif case == "negative":
        y = y - 1
    with pytest.raises(InvalidInputError):
        pack_latents(tmp_path / "m.ddz", vae, x, y, progress=False)
    assert not (tmp_path / "m.ddz").exists()


def test_load_tensors_formats_and_errors(tmp_path):
    from safetensors.torch import save_file

    x, y = latents(3)
    save_file({"latents": x, "labels": y}, tmp_path / "l.safetensors")
    np.save(tmp_path / "l.npy", x.numpy())
    assert set(load_tensors(tmp_path / "l.safetensors")) == {"latents", "labels"}
    assert torch.equal(load_tensors(tmp_path / "l.npy")["latents"], x)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    for bad in ("bad.safetensors", "missing.npy", "l.txt"):
        (tmp_path / "l.txt").write_text("x")
        with pytest.raises(InvalidInputError):
            load_tensors(tmp_path / bad)
    with pytest.raises(InvalidInputError):
        load_tensors(tmp_path / "l.safetensors", names=["latents", "soft"])


def _make_videos(root, classes=("cat", "dog"), per_class=2, frames=10):
    g = torch.Generator().manual_seed(0)
    for c in classes:
        os.makedirs(root / c)
        for k in range(per_class):
            base = torch.rand(3, 1, 1, generator=g)
            ramp = torch.linspace(0, 1, 24)[None, None, :] * torch.linspace(0, 1, 20)[None, :, None]
            v = torch.stack([(base * 0.5 + 0.5 * ramp.roll(t, 2)).clamp(0, 1) for t in range(frames)])
            write_mp4(str(root / c / f"clip{k}.mp4"), v, fps=10)


def test_pack_videos_folder_frames_and_csv(vae, tmp_path):
    root = tmp_path / "vids"
    _make_videos(root)
    from PIL import Image

    fdir = root / "dog" / "clip_frames"
    fdir.mkdir()
    for t in range(3):
        Image.fromarray(np.full((20, 30, 3), 40 * t, np.uint8)).save(fdir / f"{t:03d}.png")
    clips, classes = find_clips(root)
    assert classes == ["cat", "dog"] and len(clips) == 5
    v = read_clip(str(fdir), frames=4, resolution=16, frame_gap=1)
    assert v.shape == (4, 3, 16, 16) and torch.equal(v[3], v[2])  # short clip: last frame repeated
    out = tmp_path / "v.ddz"
    plan = pack_videos(out, vae, root, frames=4, resolution=16, frame_gap=2, budget="10MB", progress=False)
    assert os.path.getsize(out) == plan.size
    ds = load(out)
    assert len(ds) == 5 and ds.labels.tolist() == [0, 0, 1, 1, 1]
    assert ds[0][0].shape == (4, 3, 16, 16)
    assert ds.meta["encode"]["distribution"] == "latent_dist.mean"
    # CSV listing
    (tmp_path / "list.csv").write_text("path,label\nvids/cat/clip0.mp4,cat\nvids/dog/clip1.mp4,dog\n")
    pack_videos(tmp_path / "c.ddz", vae, csv=tmp_path / "list.csv", frames=2, resolution=16, progress=False)
    assert load(tmp_path / "c.ddz").class_names == ["cat", "dog"]
    # a budget that cannot hold the VAE is refused before any encoding
    with pytest.raises(BudgetError):
        pack_videos(tmp_path / "x.ddz", vae, root, frames=4, resolution=16, budget="100kB", progress=False)
    assert not (tmp_path / "x.ddz").exists()


def test_bad_video_inputs(vae, tmp_path):
    with pytest.raises(InvalidInputError):
        find_clips(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no class subfolders"):
        find_clips(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(InvalidInputError, match="holds no videos"):
        find_clips(tmp_path / "empty")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(InvalidInputError):
        read_clip(str(tmp_path / "broken.mp4"))
    root = tmp_path / "v2"
    _make_videos(root, classes=("a",), per_class=1)
    with pytest.raises(InvalidInputError, match="multiple"):
        pack_videos(tmp_path / "o.ddz", vae, root, frames=2, resolution=15, progress=False)


def test_exact_size_with_zstd_bf16_decoder_only(vae, tmp_path):
    x, y = latents()
    out = tmp_path / "z.ddz"
    plan = pack_latents(out, vae, x, y, zstd=19, storage="bf16", decoder_only=True, method="hooi", progress=False)
    assert os.path.getsize(out) == plan.size
    with codec.open(out) as f:
        f.verify()
        assert f.info("vae/q").zstd and f.info("latents/core").dtype == "bf16"
    v, _ = load(out)[0]
    assert v.shape == (4, 3, 16, 16)


def test_csv_short_rows_are_named_and_bom_is_tolerated(tmp_path):
    root = tmp_path / "v"
    _make_videos(root, classes=("a",), per_class=1, frames=2)
    (tmp_path / "short.csv").write_text("path,label\nv/a/clip0.mp4,a\nv/a/clip0.mp4\n")
    with pytest.raises(InvalidInputError, match="row 3"):
        find_clips(None, tmp_path / "short.csv")
    (tmp_path / "bom.csv").write_text("\ufeffpath,label\nv/a/clip0.mp4,a\n", encoding="utf-8")
    clips, classes = find_clips(None, tmp_path / "bom.csv")
    assert classes == ["a"] and len(clips) == 1


def test_plan_that_disagrees_with_the_writer_publishes_nothing(vae, tmp_path):
    from codec.errors import FormatError

    x, y = latents()
    plan = plan_latent_archive(vae, x, y, zstd=3, progress=False)
    assert plan.sections[0].encoding and plan.sections[0].zstd == 3  # encoding row taken from the Writer
    plan.sections[2].crc ^= 1  # as if the format's framing changed under the plan
    with pytest.raises(FormatError, match="nothing was written"):
        plan.write(tmp_path / "p.ddz", progress=False)
    assert os.listdir(tmp_path) == []
    assert not hasattr(ArchivePlan, "header_bytes")


def test_short_video_pads_with_the_clips_last_frame(tmp_path):
    from codec.video.unpack import write_mp4

    v = torch.stack([torch.full((3, 16, 16), 0.1 + 0.2 * t) for t in range(4)])  # 4 flat frames, distinct levels
    write_mp4(str(tmp_path / "s.mp4"), v, fps=4)
    x = read_clip(str(tmp_path / "s.mp4"), frames=3, resolution=16, frame_gap=2)  # wants frames 0, 2, 4
    assert x.shape == (3, 3, 16, 16)
    # frame 4 does not exist: padded with the clip's last frame (3, level 0.7), not the last sampled one (2, 0.5)
    assert abs(float(x[2].mean()) - 0.7) < 0.05 and abs(float(x[1].mean()) - 0.5) < 0.05
