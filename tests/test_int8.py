"""Int8Codec / Int8StateDictCodec (Eq. 6): round trips through a .ddz, error bounds, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import codec
from codec.codecs.base import codec_from_config
from codec.codecs.int8 import Int8Codec, Int8StateDictCodec, dequantize_int8, quantize_int8
from codec.codecs.objects import read_object, write_object
from codec.errors import InvalidInputError

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=40, deadline=None)
@given(x=arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 4)), elements=finite),
       scheme=st.sampled_from(["asymmetric", "symmetric"]), axis=st.sampled_from([0, 1, None]))
def test_roundtrip_through_ddz_within_half_step(tmp_path_factory, x, scheme, axis):
    path = tmp_path_factory.mktemp("i8") / "a.ddz"
    c = Int8Codec(scheme=scheme, axis=axis)
    with codec.Writer(path) as w:
        write_object(w, "w", c, x)
    with codec.open(path) as f:
        assert codec_from_config(f.objects["w"]["codec"]) == c
        y = read_object(f, "w").numpy()
        scale = f.get("w/scale")
        zp = f.get("w/zero_point") if scheme == "asymmetric" else None
        q = f.get("w/q")
    assert q.dtype == np.int8 and q.shape == x.shape
    assert scale.dtype == np.float32 and (zp is None or zp.dtype == np.int8)
    # |x - dequant(x)| <= s/2 per channel (Eq. 6 rounds to nearest), plus float slack
    bshape = [1] * x.ndim
    if axis is not None:
        bshape[axis] = -1
    s = scale.reshape(bshape)
    assert np.all(np.abs(x - y) <= 0.5 * s * (1 + 1e-5) + 1e-6 * np.abs(x))


@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("v", [1e-45, 3e-39, -2e-40, 1e-36])
def test_subnormal_ranges_keep_the_half_step_bound(scheme, v):
    """A range of subnormals gave a scale that underflowed to 0 in f32 (found by hypothesis: 1e-45)."""
    x = torch.tensor([[0.0, v]], dtype=torch.float32)
    q, s, z = quantize_int8(x, scheme=scheme, axis=0)
    assert float(s) >= torch.finfo(torch.float32).tiny
    y = dequantize_int8(q, s, z, axis=0)
    assert float((x - y).abs().max()) <= 0.5 * float(s)


def test_asymmetric_uses_full_int8_range_and_zero_is_exact():
    x = torch.tensor([[0.0, 1.0, 3.0], [-2.0, 0.0, 0.5]])
    q, s, z = quantize_int8(x, scheme="asymmetric", axis=0)
    assert int(q[0].min()) == -128 and int(q[0].max()) == 127
    y = dequantize_int8(q, s, z, axis=0)
    assert float(y[0, 0]) == 0.0 and float(y[1, 1]) == 0.0  # zero maps exactly (z is an integer)


def test_constant_zero_channel_and_symmetric_has_no_zero_point():
    x = torch.zeros(3, 4)
    parts = Int8Codec("symmetric").encode(x)
    assert set(parts) == {"q", "scale"}
    assert torch.equal(Int8Codec("symmetric").decode({k: v.array for k, v in parts.items()}), x)


@pytest.mark.parametrize("bad", [torch.tensor([1.0, float("nan")]), torch.arange(4), torch.empty(0)])
def test_bad_tensors_raise_codec_errors(bad):
    with pytest.raises(InvalidInputError):
        Int8Codec().encode(bad)


def test_bad_configs_and_parts():
    with pytest.raises(InvalidInputError):
        Int8Codec(scheme="nope")
    with pytest.raises(InvalidInputError):
        Int8Codec(dtype="i4")
    parts = {k: v.array for k, v in Int8Codec().encode(torch.randn(3, 2)).items()}
    with pytest.raises(InvalidInputError):
        Int8Codec().decode({"q": parts["q"], "scale": parts["scale"]})
    with pytest.raises(InvalidInputError):
        Int8Codec().decode({**parts, "scale": parts["scale"][:2]})


def test_state_dict_codec_roundtrip_and_manifest(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {"conv.weight": torch.randn(8, 3, 3, 3, generator=g), "conv.bias": torch.randn(8, generator=g),
          "lin.weight": torch.randn(5, 8, generator=g), "norm.weight": torch.ones(8)}
    c = Int8StateDictCodec.for_state_dict({k: v.shape for k, v in sd.items()}, {"conv.weight": 0, "lin.weight": 0},
                                          model={"note": "opaque"})
    with codec.Writer(tmp_path / "s.ddz") as w:
        write_object(w, "m", c, sd)
    with codec.open(tmp_path / "s.ddz") as f:
        assert sorted(f.objects["m"]["sections"]) == ["float", "q", "scale", "zero_point"]
        assert f.info("m/q").shape == (8 * 27 + 5 * 8,)
        out = read_object(f, "m")
        assert f.objects["m"]["codec"]["model"] == {"note": "opaque"}
    for k in ("conv.bias", "norm.weight"):
        assert torch.equal(out[k], sd[k])  # biases and norms stay float
    for k in ("conv.weight", "lin.weight"):
        s = sd[k].flatten(1).amax(1).clamp(min=0) - sd[k].flatten(1).amin(1).clamp(max=0)
        assert bool(((out[k] - sd[k]).abs().flatten(1) <= (s / 255 * 0.5001)[:, None]).all())


def test_state_dict_codec_rejects_corrupt_manifest(tmp_path):
    sd = {"w": torch.randn(4, 4), "b": torch.randn(4)}
    with codec.Writer(tmp_path / "s.ddz") as w:
        write_object(w, "m", Int8StateDictCodec.for_state_dict({k: v.shape for k, v in sd.items()}, {"w": 0}), sd)
    with codec.open(tmp_path / "s.ddz") as f:
        cfg = dict(f.objects["m"]["codec"])
        parts = {p: f.get(s, framework="torch") for p, s in f.objects["m"]["sections"].items()}
    cfg["tensors"] = [["w", [5, 4], "q", 0], ["b", [4], "f"]]
    with pytest.raises(InvalidInputError):
        codec_from_config(cfg).decode(parts)
    with pytest.raises(InvalidInputError):
        Int8StateDictCodec.for_state_dict({k: v.shape for k, v in sd.items()}, {"missing": 0})
    with pytest.raises(InvalidInputError, match="shape"):  # the manifest fixes what encode accepts
        codec_from_config({**cfg, "tensors": [["w", [4, 4], "q", 0], ["b", [4], "f"]]}).encode({**sd, "b": torch.ones(5)})
    with pytest.raises(InvalidInputError, match="manifest"):
        codec_from_config({**cfg, "tensors": [["w", [4, 4], "q", 0], ["b", [4], "f"]]}).encode({"w": sd["w"]})


def _stored_state_parts():
    sd = {"w": torch.randn(4, 4, generator=torch.Generator().manual_seed(1)), "b": torch.randn(4)}
    c = Int8StateDictCodec.for_state_dict({k: v.shape for k, v in sd.items()}, {"w": 0})
    parts = {k: v.array for k, v in c.encode(sd).items()}
    return c.get_config(), parts


@pytest.mark.parametrize("tensors", [3, [["w", [4.0, 4], "q", 0], ["b", [4], "f"]], [["w", [4, 4], "q", 5], ["b", [4], "f"]],
                                     [["w", [4, 4], "q", "0"], ["b", [4], "f"]], [["w", [4, 4], "x"], ["b", [4], "f"]],
                                     [["w", [4, 4], "q", 0], ["w", [4], "f"]], [[5, [4, 4], "q", 0]], [["w", "ab", "f"]],
                                     [["w", [-4, 4], "q", 0]]])
def test_malformed_manifest_entries_are_invalid_input(tensors):
    cfg, parts = _stored_state_parts()
    with pytest.raises(InvalidInputError):
        codec_from_config({**cfg, "tensors": tensors}).decode(parts)


def test_quantize_map_must_map_names_to_ints():
    for q in ({"a": "x"}, [1], {"a": 1.5}, {"a": 2}):
        with pytest.raises(InvalidInputError):
            Int8StateDictCodec.for_state_dict({"a": (3, 4)}, q)


def test_parts_the_config_does_not_use_are_refused():
    cfg, parts = _stored_state_parts()  # asymmetric: has a zero_point part
    with pytest.raises(InvalidInputError, match="zero_point"):
        codec_from_config({**cfg, "scheme": "symmetric"}).decode(parts)  # would silently ignore the zero points
    with pytest.raises(InvalidInputError):
        codec_from_config(cfg).decode({**parts, "extra": torch.zeros(1)})
    with pytest.raises(InvalidInputError):
        codec_from_config(cfg).decode({**parts, "q": parts["q"].to(torch.int16)})


def test_huge_weights_do_not_overflow_the_scale():
    x = torch.tensor([[3.0e38, -3.0e38, 1.0], [2.0, -1.0, 0.5]])
    q, s, z = quantize_int8(x, axis=0)
    assert bool(torch.isfinite(s).all())
    y = dequantize_int8(q, s, z, axis=0)
    assert bool(torch.isfinite(y).all())
    assert float((y[0] - x[0]).abs().max()) <= 0.5001 * float(s[0])


def test_raw_bf16_numpy_is_refused_with_advice():
    parts = {k: v.array.numpy() for k, v in Int8Codec().encode(torch.randn(3, 2)).items()}
    parts["scale"] = parts["scale"].astype(np.float16).view("V2")
    with pytest.raises(InvalidInputError, match="bf16"):
        Int8Codec().decode(parts)
