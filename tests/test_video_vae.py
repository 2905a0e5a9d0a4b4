"""Int8 diffusers VAE (Eq. 6): sizes, decode error vs fp32, decoder-only, offline rebuild, bad VAE folders."""

from __future__ import annotations

import json
import os

import pytest
import torch

import codec
from codec.errors import InvalidInputError
from codec.video.vae import (SD_VAE_FT_MSE_CONFIG, decode_error, decode_latents, encode_frames, fake_quantize,
                             load_vae_dir, quantizable_weights, read_vae, save_vae_dir, tiny_vae_config, vae_codec,
                             vae_from_config, write_vae)


@pytest.fixture(scope="module")
def tiny():
    return vae_from_config(tiny_vae_config(), seed=0)


def _write(path, model, **kw):
    with codec.Writer(path) as w:
        write_vae(w, "vae", model, **kw)
    return codec.open(path)


def test_sd_vae_ft_mse_sizes_match_the_paper_scale():
    """B.3: 335 MB fp32 -> ~84.0 MB int8 (fp32 scale + int8 zero point per channel); decoder ~49.7 MB."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        m = AutoencoderKL.from_config(SD_VAE_FT_MSE_CONFIG)
    sd = m.state_dict()
    assert sum(v.numel() for v in sd.values()) == 83_653_863
    for dec, expect in ((False, 83_983_007), (True, 49_677_135)):
        c = vae_codec(m, decoder_only=dec)
        keep = {k: v.shape for k, v in sd.items() if not (dec and k.startswith(("encoder.", "quant_conv.")))}
        assert sum(s.nbytes for s in c.encoded_parts(keep).values()) == expect
    assert len(quantizable_weights(m)) == 72


def test_int8_decode_error_is_small_and_matches_fake_quant(tiny, tmp_path):
    z = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = decode_latents(tiny, z)
    with _write(tmp_path / "v.ddz", tiny) as f:
        q = read_vae(f)
    got = decode_latents(q, z)
    assert torch.equal(got, decode_latents(fake_quantize(tiny), z))  # storage adds nothing beyond Eq. 6
    err = decode_error(ref, got)
    assert err["max_abs"] < 0.05 and err["rel_l2"] < 0.02 and err["psnr_db"] > 40, err
    err_sym = decode_error(ref, decode_latents(fake_quantize(tiny, "symmetric"), z))
    assert err_sym["rel_l2"] < 0.02
    # the bf16 autocast path runs and stays close
    assert decode_error(ref, decode_latents(q, z, autocast="bf16"))["rel_l2"] < 0.05


def test_decoder_only_rebuild_and_encoder_refuses(tiny, tmp_path):
    with _write(tmp_path / "d.ddz", tiny, decoder_only=True, scheme="symmetric") as f:
        assert "vae/zero_point" not in f.keys()
        full = sum(v.numel() for v in tiny.state_dict().values())
        assert f.info("vae/q").shape[0] + f.info("vae/float").shape[0] < full
        d = read_vae(f)
    z = torch.randn(2, 4, 8, 8)
    assert decode_latents(d, z).shape == (2, 3, 16, 16)
    with pytest.raises(InvalidInputError, match="decoder-only"):
        encode_frames(d, torch.rand(1, 3, 16, 16))
    with pytest.raises(InvalidInputError, match="decoder-only"):
        d.encode(torch.rand(1, 3, 16, 16))


def test_encode_is_deterministic(tiny):
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(encode_frames(tiny, x), encode_frames(tiny, x))
    a = encode_frames(tiny, x, mode="sample", seed=5)
    assert torch.equal(a, encode_frames(tiny, x, mode="sample", seed=5))
    assert not torch.equal(a, encode_frames(tiny, x))


def test_vae_dir_roundtrip_and_malformed_dirs(tiny, tmp_path):
    good = save_vae_dir(tiny, tmp_path / "good")
    back = load_vae_dir(good)
    for k, v in tiny.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_vae_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="config.json"):
        load_vae_dir(tmp_path / "empty")
    bad = tmp_path / "badjson"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(InvalidInputError):
        load_vae_dir(bad)
    cls = tmp_path / "badclass"
    cls.mkdir()
    (cls / "config.json").write_text(json.dumps({"_class_name": "os.system"}))
    with pytest.raises(InvalidInputError):
        load_vae_dir(cls)
    now = tmp_path / "noweights"
    now.mkdir()
    (now / "config.json").write_text((tmp_path / "good" / "config.json").read_text())
    with pytest.raises(InvalidInputError, match="safetensors"):
        load_vae_dir(now)
    other = tmp_path / "mismatch"
    save_vae_dir(vae_from_config(tiny_vae_config(blocks=(16, 32), groups=8)), other)
    os.replace(other / "config.json", tmp_path / "x.json")
    (other / "config.json").write_text((tmp_path / "good" / "config.json").read_text())
    with pytest.raises(InvalidInputError, match="shape|match"):
        load_vae_dir(other)
    (other / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InvalidInputError):
        load_vae_dir(other)


def test_other_diffusers_autoencoder_class(tmp_path):
    """Any diffusers autoencoder given its config: AutoencoderTiny (no quant_conv, deterministic encoder)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    m = AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                        num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4).eval()
    with _write(tmp_path / "t.ddz", m) as f:
        q = read_vae(f)
    assert type(q).__name__ == "AutoencoderTiny"
    z = torch.randn(2, 4, 8, 8)
    assert torch.equal(decode_latents(q, z), decode_latents(fake_quantize(m), z))
    assert encode_frames(q, torch.rand(1, 3, 16, 16)).shape[1] == 4


def _edited_dir(tiny, tmp_path, name, cfg_edit=None, sd_edit=None):
    from safetensors.torch import load_file, save_file

    d = save_vae_dir(tiny, tmp_path / name)
    if cfg_edit is not None:
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        cfg_edit(cfg)
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    if sd_edit is not None:
        f = tmp_path / name / "diffusion_pytorch_model.safetensors"
        save_file(sd_edit(load_file(f)), f)
    return d


@pytest.mark.parametrize("case", ["groups 0", "blocks []", "int64 weights"])
def test_vae_folders_diffusers_cannot_build_are_invalid_input(tiny, tmp_path, case):
    edits = {"groups 0": ({"norm_num_groups": 0}, None), "blocks []": ({"block_out_channels": []}, None),
             "int64 weights": (None, lambda sd: {k: (v * 0).long() for k, v in sd.items()})}
    cfg, sd = edits[case]
    d = _edited_dir(tiny, tmp_path, "v", (lambda c: c.update(cfg)) if cfg else None, sd)
    with pytest.raises(InvalidInputError) as exc:
        load_vae_dir(d)
    assert len(str(exc.value)) < 400  # not torch's thousands-of-lines load_state_dict report


def test_fp16_folder_loads_as_fp32_model(tiny, tmp_path):
    d = _edited_dir(tiny, tmp_path, "h", sd_edit=lambda sd: {k: (v.half() if "decoder" in k else v) for k, v in sd.items()})
    m = load_vae_dir(d)
    assert {p.dtype for p in m.parameters()} == {torch.float32}
    assert decode_latents(m, torch.randn(1, 4, 8, 8)).dtype == torch.float32


def test_batch_size_must_be_positive(tiny):
    with pytest.raises(InvalidInputError):
        decode_latents(tiny, torch.randn(1, 4, 8, 8), batch_size=0)
    with pytest.raises(InvalidInputError):
        encode_frames(tiny, torch.rand(1, 3, 16, 16), batch_size=0)


def test_read_vae_bf16_keeps_dtype(tiny, tmp_path):
    with _write(tmp_path / "b.ddz", tiny) as f:
        q = read_vae(f, dtype=torch.bfloat16)
    assert {p.dtype for p in q.parameters()} == {torch.bfloat16}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_read_vae_on_cuda_matches_cpu(tiny, tmp_path):
    with _write(tmp_path / "c.ddz", tiny) as f:
        gpu, cpu = read_vae(f, device="cuda"), read_vae(f)
    assert next(gpu.parameters()).device.type == "cuda"
    z = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(decode_latents(gpu, z).cpu(), decode_latents(cpu, z), atol=1e-3, rtol=1e-3)
