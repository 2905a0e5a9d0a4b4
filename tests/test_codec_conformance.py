"""The codec contract (codec/codecs/base.py), checked for every registered codec id, as numcodecs'
``check_config`` / ``check_encode_decode`` do: a JSON config that rebuilds an equal codec, which
encodes the same input to identical parts and decodes them to identical values; ``encode`` and
``decode`` leave the codec unchanged; the size hook predicts every part; the budget-terms hook
labels every part. Codecs with learned parameters are checked twice: with the golden example's
parameters and fitted by ``codec.softlabels.fit``."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import codec
from codec.codecs import Codec, codec_from_config, read_object, registered_codecs, write_object
from codec.codecs.base import _REGISTRY
from codec.errors import InvalidInputError
from codec.softlabels import fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_golden import codec_examples

EXAMPLES = codec_examples()
FITTED = ("vq", "pca", "quant")


def test_every_registered_codec_has_an_example():
    assert sorted(EXAMPLES) == registered_codecs()


def _example(codec_id: str, variant: str) -> tuple[Codec, Any]:
    c, x = EXAMPLES[codec_id]
    if variant == "fitted":
        fresh = codec_from_config(c.get_config())
        opts = {"epochs": 2, "batch_size": 8, "init_sample": 24, "progress": False} if codec_id == "vq" else {}
        c = fit(fresh, x, **opts)
        assert fresh.params() == {}, "fit must not change the codec it is given"
    return c, x


def _shape(x: Any) -> Any:
    return {k: tuple(v.shape) for k, v in x.items()} if isinstance(x, dict) else tuple(x.shape)


def _snapshot(c: Codec) -> dict[str, Any]:
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in vars(c).items()}


def _same_state(a: Any, b: Any) -> bool:
    """Deep equality that compares tensors by value (attributes, lists, dataclasses such as a TrainLog)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_state(u, v) for u, v in zip(a, b))
    if hasattr(a, "__dict__") and type(a) is type(b):
        return _same_state(vars(a), vars(b))
    return a == b


def _bytes(a: Any) -> tuple:
    t = torch.as_tensor(a).contiguous()
    return str(t.dtype), tuple(t.shape), t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _equal_values(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


CASES = [(cid, "example") for cid in sorted(EXAMPLES)] + [(cid, "fitted") for cid in FITTED]


@pytest.mark.parametrize("codec_id,variant", CASES)
def test_contract(codec_id, variant, tmp_path):
    c, x = _example(codec_id, variant)
    assert type(c) is _REGISTRY[codec_id] and c.codec_id == codec_id

    # config: JSON, with the id, and rebuilding an equal codec
    cfg = c.get_config()
    text = json.dumps(cfg, allow_nan=False)
    assert json.loads(text) == cfg and cfg["id"] == codec_id
    rebuilt = codec_from_config(json.loads(text)).with_params(c.params())
    assert rebuilt == c and rebuilt.get_config() == cfg

    # encode leaves the codec unchanged; the rebuilt codec encodes the same bytes
    before = _snapshot(c)
    parts = c.encode(x)
    assert _same_state(before, _snapshot(c)), "encode changed the codec"
    again = rebuilt.encode(x)
    assert sorted(again) == sorted(parts)
    for p in parts:
        assert _bytes(again[p].array) == _bytes(parts[p].array), p
        assert (again[p].bits, again[p].zstd) == (parts[p].bits, parts[p].zstd), p

    # the size hook predicts every part: name, order, dtype, shape, bit width, zstd
    specs = c.encoded_parts(_shape(x))
    assert list(specs) == list(parts)
    for p, spec in specs.items():
        arr = codec.format.arrays.to_storage(parts[p].array, p)
        assert (spec.dtype, spec.shape, spec.bits, spec.zstd) == (arr[1], tuple(arr[0].shape), parts[p].bits, parts[p].zstd), p

    # the budget-terms hook labels every stored part
    terms = c.budget_terms({p: s.shape for p, s in specs.items()})
    assert set(parts) <= set(terms) and all(t.label for t in terms.values())

    # decode leaves the codec unchanged; a codec rebuilt from the config alone decodes the same
    arrays = {p: v.array for p, v in parts.items()}
    before = _snapshot(c)
    out = c.decode(arrays)
    assert _same_state(before, _snapshot(c)), "decode changed the codec"
    bare = codec_from_config(cfg)
    assert _equal_values(bare.decode(arrays), out)
    assert bare.params() == {}, "decode installed parameters on the codec"

    # and through a real file
    with codec.Writer(tmp_path / "c.ddz") as w:
        write_object(w, "obj", c, x)
    with codec.open(tmp_path / "c.ddz") as f:
        assert f.objects["obj"]["codec"] == cfg
        assert _equal_values(read_object(f, "obj"), out)


def test_vq_without_stored_encoder_decodes_but_cannot_encode():
    c, x = EXAMPLES["vq"]
    trained = codec_from_config({**c.get_config(), "store_encoder": False})
    trained.set_params(encoder=c.encoder, decoder=c.decoder, codebook=c.codebook)
    parts = {p: v.array for p, v in trained.encode(x).items()}
    assert "encoder" not in parts
    rebuilt = codec_from_config(trained.get_config()).with_params(parts)
    assert rebuilt == trained and torch.equal(rebuilt.decode(parts), trained.decode(parts))
    with pytest.raises(InvalidInputError, match="fit"):
        rebuilt.encode(x)


@pytest.mark.parametrize("codec_id", FITTED)
def test_unfitted_codec_refuses_to_encode(codec_id):
    c, x = EXAMPLES[codec_id]
    bare = codec_from_config(c.get_config())
    assert not bare.fitted
    with pytest.raises(InvalidInputError, match="fit"):
        bare.encode(x)


def test_int8_state_config_reproduces_the_encoding():
    """The bug the contract fixes: a rebuilt int8-state codec encoded only ['float']."""
    c, x = EXAMPLES["int8-state"]
    rebuilt = codec_from_config(json.loads(json.dumps(c.get_config())))
    assert list(rebuilt.encode(x)) == ["q", "scale", "zero_point", "float"]


def test_codec_is_an_abc():
    with pytest.raises(TypeError):
        Codec()  # type: ignore[abstract]
    assert np.all([issubclass(cls, Codec) for cls in _REGISTRY.values()])
