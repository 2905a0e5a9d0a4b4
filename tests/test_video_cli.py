"""`ddz pack` / `ddz unpack` round trip through the CLI entry point, and CLI error exits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from codec.cli import main
from codec.loader import load
from codec.video import load_vae_dir, save_vae_dir, tiny_vae_config, vae_from_config


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    vae = vae_from_config(tiny_vae_config(), seed=1)
    save_vae_dir(vae, d / "vae")
    g = torch.Generator().manual_seed(0)
    save_file({"latents": torch.randn(6, 4, 4, 8, 8, generator=g), "labels": torch.tensor([0, 0, 1, 1, 2, 2])},
              d / "lat.safetensors")
    return d


def test_pack_unpack_roundtrip(inputs, tmp_path, capsys):
    out = tmp_path / "o.ddz"
    rc = main(["pack", "--vae", str(inputs / "vae"), "--latents", str(inputs / "lat.safetensors"), "-o", str(out),
               "--hosvd-rate", "0.75", "--budget", "2MB", "-q"])
    assert rc == 0 and out.exists()
    ds = load(out)
    assert len(ds) == 6
    rc = main(["unpack", str(out), "-o", str(tmp_path / "un"), "--frames", "png", "--preview", "-q"])
    assert rc == 0
    un = tmp_path / "un"
    t = load_file(un / "latents.safetensors")
    assert t["latents"].shape == (6, 4, 4, 8, 8) and t["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    torch.testing.assert_close(t["latents"], ds.latents(range(6)))
    vae = load_vae_dir(un / "vae")
    assert type(vae).__name__ == "AutoencoderKL"
    assert json.loads((un / "labels.json").read_text())["labels"] == [0, 0, 1, 1, 2, 2]
    assert (un / "labels.csv").read_text().splitlines()[0] == "index,label,class_name"
    assert len(os.listdir(un / "frames" / "2" / "000005")) == 4
    assert sorted(os.listdir(un / "preview")) == ["0.png", "1.png", "2.png"]
    assert "ddz.video" in json.loads((un / "metadata.json").read_text())


def test_dry_run_and_budget_refusal(inputs, tmp_path, capsys):
    args = ["pack", "--vae", str(inputs / "vae"), "--latents", str(inputs / "lat.safetensors"), "-o", str(tmp_path / "x.ddz")]
    assert main(args + ["--dry-run", "--budget", "110MiB"]) == 0
    assert "fits" in capsys.readouterr().out
    assert main(args + ["--budget", "200kB", "-q"]) == 2
    err = capsys.readouterr().err
    assert "over the budget" in err and "vae/q" in err
    assert os.listdir(tmp_path) == []


def test_cli_malformed_inputs_exit_2(inputs, tmp_path, capsys):
    base = ["-o", str(tmp_path / "x.ddz"), "-q"]
    assert main(["pack", "--vae", str(tmp_path / "none"), "--latents", str(inputs / "lat.safetensors")] + base) == 2
    save_file({"latents": torch.randn(3, 4, 4, 8, 8)}, tmp_path / "nolabels.safetensors")
    assert main(["pack", "--vae", str(inputs / "vae"), "--latents", str(tmp_path / "nolabels.safetensors")] + base) == 2
    save_file({"latents": torch.randn(3, 4, 8, 8), "labels": torch.zeros(3, dtype=torch.int64)}, tmp_path / "4d.safetensors")
    assert main(["pack", "--vae", str(inputs / "vae"), "--latents", str(tmp_path / "4d.safetensors")] + base) == 2
    assert main(["pack", "--vae", str(inputs / "vae"), "--latents", str(inputs / "lat.safetensors"), "--budget", "12 parsecs"] + base) == 2
    assert main(["unpack", str(tmp_path / "none.ddz"), "-o", str(tmp_path / "u"), "-q"]) == 2
    assert not (tmp_path / "x.ddz").exists()
    assert "ddz: error" in capsys.readouterr().err


def test_pack_from_frame_tensors(inputs, tmp_path):
    frames = (torch.rand(3, 2, 3, 16, 16) * 255).to(torch.uint8)
    save_file({"frames": frames, "labels": torch.tensor([1, 0, 1])}, tmp_path / "f.safetensors")
    out = tmp_path / "f.ddz"
    assert main(["pack", "--vae", str(inputs / "vae"), "--frames-file", str(tmp_path / "f.safetensors"), "-o", str(out), "-q"]) == 0
    ds = load(out)
    assert len(ds) == 3 and ds.labels.tolist() == [1, 0, 1] and ds[0][0].shape == (2, 3, 16, 16)
    save_file({"frames": torch.rand(3, 2, 3, 16, 16) * 2, "labels": torch.tensor([1, 0, 1])}, tmp_path / "g.safetensors")
    assert main(["pack", "--vae", str(inputs / "vae"), "--frames-file", str(tmp_path / "g.safetensors"), "-o", str(tmp_path / "g.ddz"), "-q"]) == 2


def test_decoder_only_unpacks_to_a_loadable_folder(inputs, tmp_path):
    out = tmp_path / "d.ddz"
    assert main(["pack", "--vae", str(inputs / "vae"), "--latents", str(inputs / "lat.safetensors"), "-o", str(out),
                 "--decoder-only", "--scheme", "symmetric", "--storage", "f16", "-q"]) == 0
    assert main(["unpack", str(out), "-o", str(tmp_path / "u"), "-q"]) == 0
    cfg = json.loads((tmp_path / "u" / "vae" / "config.json").read_text())
    assert cfg["_ddz_decoder_only"] is True
    dec = load_vae_dir(tmp_path / "u" / "vae")
    assert not any(k.startswith("encoder.") for k in dec.state_dict())
    assert dec.decode(torch.randn(1, 4, 8, 8)).sample.shape == (1, 3, 16, 16)


def test_npy_latents_with_labels_npy_or_csv(inputs, tmp_path):
    lat = load_file(inputs / "lat.safetensors")
    np.save(tmp_path / "lat.npy", lat["latents"].numpy())
    np.save(tmp_path / "lab.npy", np.array([2, 2, 1, 1, 0, 0]))
    (tmp_path / "lab.csv").write_text("\ufefflabel\n1\n0\n1\n0\n1\n0\n", encoding="utf-8")  # with an Excel BOM
    base = ["pack", "--vae", str(inputs / "vae"), "--latents", str(tmp_path / "lat.npy"), "-q"]
    assert main(base + ["--labels", str(tmp_path / "lab.npy"), "-o", str(tmp_path / "n.ddz")]) == 0
    assert load(tmp_path / "n.ddz").labels.tolist() == [2, 2, 1, 1, 0, 0]
    assert main(base + ["--labels", str(tmp_path / "lab.csv"), "-o", str(tmp_path / "c.ddz")]) == 0
    assert load(tmp_path / "c.ddz").labels.tolist() == [1, 0, 1, 0, 1, 0]
    (tmp_path / "bad.csv").write_text("label\n1\nx\n")
    assert main(base + ["--labels", str(tmp_path / "bad.csv"), "-o", str(tmp_path / "b.ddz")]) == 2


def test_videos_and_csv_pack_then_unpack_mp4(inputs, tmp_path):
    from codec.video.unpack import write_mp4

    g = torch.Generator().manual_seed(0)
    for c in ("run", "jump"):
        os.makedirs(tmp_path / "v" / c)
        write_mp4(str(tmp_path / "v" / c / "a.mp4"), torch.rand(5, 3, 16, 16, generator=g), fps=5)
    common = ["--vae", str(inputs / "vae"), "--frames", "2", "--resolution", "16", "--frame-gap", "2", "-q"]
    assert main(["pack", "--videos", str(tmp_path / "v"), "-o", str(tmp_path / "v.ddz")] + common) == 0
    assert load(tmp_path / "v.ddz").class_names == ["jump", "run"]
    (tmp_path / "l.csv").write_text("path,label\nv/run/a.mp4,run\nv/jump/a.mp4,jump\n")
    assert main(["pack", "--csv", str(tmp_path / "l.csv"), "-o", str(tmp_path / "c.ddz")] + common) == 0
    ds = load(tmp_path / "c.ddz")
    assert ds.labels.tolist() == [1, 0] and ds.class_names == ["jump", "run"]
    assert main(["unpack", str(tmp_path / "c.ddz"), "-o", str(tmp_path / "u"), "--frames", "mp4", "--fps", "4", "-q"]) == 0
    assert sorted(os.listdir(tmp_path / "u" / "videos")) == ["jump", "run"]
    import av

    with av.open(str(tmp_path / "u" / "videos" / "run" / "000000.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 2


@pytest.mark.parametrize("extra", [["--batch-size", "0"], ["--device", "bogus"], ["--device", "cuda:99"],
                                   ["--chunk-size", "0"]])
def test_bad_pack_arguments_exit_2_with_a_message(inputs, tmp_path, capsys, extra):
    args = ["pack", "--vae", str(inputs / "vae"), "--latents", str(inputs / "lat.safetensors"),
            "-o", str(tmp_path / "x.ddz"), "-q"] + extra
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse rejects malformed numbers itself (exit 2, one usage error line)
        rc = exc.code
    assert rc == 2 and not (tmp_path / "x.ddz").exists()
    assert "error:" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_cuda_without_cuda_is_a_clean_error(inputs, tmp_path, capsys):
    assert main(["pack", "--vae", str(inputs / "vae"), "--latents", str(inputs / "lat.safetensors"),
                 "-o", str(tmp_path / "x.ddz"), "--device", "cuda", "-q"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_unpack_bad_fps_and_device(inputs, tmp_path, capsys):
    out = tmp_path / "o.ddz"
    assert main(["pack", "--vae", str(inputs / "vae"), "--latents", str(inputs / "lat.safetensors"), "-o", str(out), "-q"]) == 0
    with pytest.raises(SystemExit):
        main(["unpack", str(out), "-o", str(tmp_path / "u"), "--frames", "mp4", "--fps", "0"])
    assert main(["unpack", str(out), "-o", str(tmp_path / "u"), "--device", "bogus", "-q"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("ddz: error:")


def test_dry_run_over_budget_exits_1(inputs, tmp_path, capsys):
    args = ["pack", "--vae", str(inputs / "vae"), "--latents", str(inputs / "lat.safetensors"), "-o", str(tmp_path / "x.ddz")]
    assert main(args + ["--dry-run", "--budget", "100kB"]) == 1
    assert "OVER" in capsys.readouterr().out and not (tmp_path / "x.ddz").exists()


def test_unpack_keeps_classes_whose_safe_names_collide_apart(inputs, tmp_path):
    from codec.loader.unpack import class_folders
    from codec.video import pack_latents

    assert class_folders(["a b", "a_b", "c"]) == ["a_b_0", "a_b_1", "c"]
    lat = load_file(inputs / "lat.safetensors")
    pack_latents(tmp_path / "k.ddz", load_vae_dir(inputs / "vae"), lat["latents"][:3], torch.tensor([0, 1, 2]),
                 class_names=["a b", "a_b", "c"], progress=False)
    assert main(["unpack", str(tmp_path / "k.ddz"), "-o", str(tmp_path / "u"), "--frames", "png", "-q"]) == 0
    assert sorted(os.listdir(tmp_path / "u" / "frames")) == ["a_b_0", "a_b_1", "c"]
    assert json.loads((tmp_path / "u" / "labels.json").read_text())["class_names"] == ["a b", "a_b", "c"]
