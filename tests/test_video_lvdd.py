"""LVDD's own outputs: the Tucker synthetic_data.pt and the optimum-quanto qint8 VAE folder, packed as they are."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import codec
from codec.cli import main
from codec.codecs.int8 import Int8StateDictCodec
from codec.errors import FormatError, InvalidInputError
from codec.loader import load
from codec.video import tiny_vae_config, vae_from_config
from codec.video.lvdd import class_order_labels, read_lvdd_synthetic, read_quanto_vae_dir
from producers import quanto_qint8_state, write_lvdd_synthetic, write_quanto_vae_dir

N, T, CH, HW = 9, 8, 4, 6


@pytest.fixture(scope="module")
def lvdd(tmp_path_factory):
    d = tmp_path_factory.mktemp("lvdd")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(N, 1, CH, HW, HW, generator=g)
    latents = base + 0.3 * torch.randn(N, T, CH, HW, HW, generator=g)  # some temporal structure
    recon = write_lvdd_synthetic(d / "synthetic_data.pt", latents, batch_size=4)  # chunks of 4, 4, 1
    vae = vae_from_config(tiny_vae_config(), seed=2)
    state, qmap = write_quanto_vae_dir(d / "quantized_vae", vae)
    return d, latents, recon, vae, state, qmap


def test_synthetic_data_is_stored_without_a_second_decomposition(lvdd):
    d, _, recon, _, _, _ = lvdd
    saved = torch.load(d / "synthetic_data.pt", weights_only=True)
    assert len(saved["cores"]) == 3 and [tuple(f.shape) for f in saved["factors"][0]] == [(4, 4), (8, 6), (4, 4), (6, 4), (6, 4)]
    tc, parts, shape = read_lvdd_synthetic(d / "synthetic_data.pt")
    assert shape == (N, T, CH, HW, HW) and tc.chunk_size == 4 and tc.ranks == [6, 4, 4, 4] and tc.method == "hooi"
    for k in range(1, 5):  # every non-sample factor, as LVDD saved it (U_C included: HOOI's is not the identity)
        assert torch.equal(parts[f"factor_{k}"].array, torch.stack([f[k] for f in saved["factors"]], 0))
    assert not torch.allclose(saved["factors"][0][2], torch.eye(CH))
    out = tc.decode({p: v.array for p, v in parts.items()})
    torch.testing.assert_close(out, recon.float(), rtol=1e-5, atol=1e-5)  # tensorly's own reconstruction
    assert parts["core"].array.shape == (N, 6, 4, 4, 4)  # the n x n sample factors are folded in, not stored


def test_quanto_folder_imports_exactly(lvdd):
    d, _, _, vae, state, qmap = lvdd
    assert set(json.loads((d / "quantized_vae" / "quantization_map.json").read_text())) == set(qmap)
    assert any(k.endswith(".weight._scale") for k in load_file(d / "quantized_vae" / "quantized_vae.safetensors"))
    vc, parts = read_quanto_vae_dir(d / "quantized_vae")
    assert isinstance(vc, Int8StateDictCodec) and vc.scheme == "symmetric" and "zero_point" not in parts
    got = vc.decode({k: p.array for k, p in parts.items()})
    assert set(got) == set(vae.state_dict())
    for name in qmap:  # quanto's dequantize(): scale * data, bit for bit
        w = state[f"{name}.weight._scale"] * state[f"{name}.weight._data"]
        assert torch.equal(got[f"{name}.weight"], w)
    for k, t in vae.state_dict().items():
        if k not in {f"{n}.weight" for n in qmap}:
            assert torch.equal(got[k], t)
    dec, dparts = read_quanto_vae_dir(d / "quantized_vae", decoder_only=True)
    assert all(not m[0].startswith(("encoder.", "quant_conv.")) for m in dec.tensors)


def test_ddz_pack_takes_lvdds_files(lvdd, tmp_path, capsys):
    d, _, recon, _, state, qmap = lvdd
    out = tmp_path / "o.ddz"
    rc = main(["pack", "--vae", str(d / "quantized_vae"), "--latents", str(d / "synthetic_data.pt"), "--ipc", "3",
               "-o", str(out), "-q"])
    assert rc == 0
    ds = load(out)
    assert len(ds) == N and [int(ds.labels[i]) for i in range(N)] == [i // 3 for i in range(N)]
    torch.testing.assert_close(ds.latents(range(N)), recon.float(), rtol=1e-5, atol=1e-5)
    with codec.open(out) as f:
        meta = f.metadata["ddz.video"]
        assert meta["vae"]["quantization"]["scheme"] == "symmetric" and "quanto" in meta["vae"]["quantization"]["source"]["format"]
        assert meta["tucker"]["method"] == "hooi" and meta["source"]["labels"].endswith("i // 3")
        q = f.get("vae/q")
    first = next(iter(qmap))
    assert torch.equal(torch.as_tensor(q[: state[f"{first}.weight._data"].numel()]), state[f"{first}.weight._data"].reshape(-1))
    # labels by class count, or explicit; the default class count (miniUCF101's 50) does not divide 9
    assert main(["pack", "--vae", str(d / "quantized_vae"), "--latents", str(d / "synthetic_data.pt"), "--num-classes", "9",
                 "-o", str(tmp_path / "b.ddz"), "-q"]) == 0
    assert [int(load(tmp_path / "b.ddz").labels[i]) for i in range(N)] == list(range(N))
    rc = main(["pack", "--vae", str(d / "quantized_vae"), "--latents", str(d / "synthetic_data.pt"), "-o", str(tmp_path / "c.ddz")])
    assert rc == 2 and "50" in capsys.readouterr().err and not (tmp_path / "c.ddz").exists()
    for extra in (["--hosvd-rate", "0.5"], ["--scheme", "asymmetric"]):
        rc = main(["pack", "--vae", str(d / "quantized_vae"), "--latents", str(d / "synthetic_data.pt"), "--ipc", "3",
                   "-o", str(tmp_path / "c.ddz"), "-q", *extra])
        assert rc == 2 and not (tmp_path / "c.ddz").exists()


def test_class_order_labels():
    assert class_order_labels(100).tolist() == [i // 2 for i in range(100)]  # 50 classes, IPC 2
    assert class_order_labels(6, ipc=2).tolist() == [0, 0, 1, 1, 2, 2]
    for kw in ({"ipc": 4}, {"num_classes": 4}, {"ipc": 2, "num_classes": 3}):
        with pytest.raises(InvalidInputError):
            class_order_labels(6, **kw)


class Evil:
    pass


def test_bad_lvdd_files_are_refused(lvdd, tmp_path):
    d, latents, *_ = lvdd
    saved = torch.load(d / "synthetic_data.pt", weights_only=True)
    cases = {"pca": {"basis": torch.zeros(2, 3), "coeffs": torch.zeros(4, 2)},
             "evil": {"cores": [Evil()], "factors": [[]]},
             "lists": {"cores": saved["cores"], "factors": saved["factors"][:2]},
             "rank": {"cores": [saved["cores"][0][:3]], "factors": [[saved["factors"][0][0][:, :3], *saved["factors"][0][1:]]]},
             "chunks": {"cores": saved["cores"][::-1], "factors": saved["factors"][::-1]},
             "nan": {"cores": [saved["cores"][0] * float("nan")], "factors": saved["factors"][:1]}}
    for name, obj in cases.items():
        p = tmp_path / f"{name}.pt"
        torch.save(obj, p)
        with pytest.raises(FormatError):
            read_lvdd_synthetic(p)


def test_bad_quanto_folders_are_refused(lvdd, tmp_path):
    d, _, _, vae, _, _ = lvdd
    state, qmap = quanto_qint8_state(vae)

    def folder(name, st=state, qm=qmap, cfg=None):
        p = tmp_path / name
        p.mkdir()
        save_file(st, p / "quantized_vae.safetensors")
        (p / "quantization_map.json").write_text(json.dumps(qm))
        (p / "config.json").write_text(cfg or vae.to_json_string())
        return p

    first = next(iter(qmap))
    bad = {"qint4": dict(qm={**qmap, first: {"weights": "qint4", "activations": "none"}}),
           "act": dict(qm={**qmap, first: {"weights": "qint8", "activations": "qint8"}}),
           "missing": dict(st={k: v for k, v in state.items() if k != f"{first}.weight._scale"}),
           "extra": dict(st={**state, "ghost.weight": torch.zeros(2)}),
           "scale": dict(st={**state, f"{first}.weight._scale": state[f"{first}.weight._scale"][:1]}),
           "notmodule": dict(qm={**qmap, "encoder.nope": {"weights": "qint8", "activations": "none"}}),
           "config": dict(cfg="{not json")}
    for name, kw in bad.items():
        with pytest.raises((FormatError, InvalidInputError)):
            read_quanto_vae_dir(folder(name, **kw))
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "quantization_map.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="missing"):
        read_quanto_vae_dir(tmp_path / "none")
