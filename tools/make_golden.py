"""Regenerate the golden files (run from the repo root): ``python tools/make_golden.py``.

* ``tests/golden/tiny.ddz``: the worked example of spec/ddz.md.
* ``tests/golden/codecs/<id>.ddz``: one file per registered codec id (numcodecs'
  ``check_backwards_compatibility``): object ``obj`` encoded with that codec, the input as
  section(s) ``input`` / ``input/<key>`` and the decoded value as ``decoded`` /
  ``decoded/<key>``. ``tests/test_codec_golden.py`` reads them with today's code: the stored
  config must rebuild unchanged, decode to the stored value, and re-encode the stored input
  to the stored parts byte for byte. Tests never rewrite these files; regenerate them only
  for a deliberate format change (and say so in spec/codecs.md's change log).

The examples use exactly representable (dyadic) inputs and parameters, so encoding involves
no rounding that could differ between CPUs or BLAS builds: the bytes are the same everywhere.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

import codec

C = 8  # classes of the soft-label examples


def write_tiny(path: str) -> None:
    with codec.Writer(path, {"note": "tiny"}) as w:
        w.add("labels", np.array([0, 1, 2], np.uint8))
        w.add("idx", np.array([1, 2, 3, 4, 5], np.uint8), bits=3)


def _dyadic_labels(rows: int, seed: int) -> Any:
    """Soft labels whose probabilities are multiples of 1/32 (exact in every float format used)."""
    import torch

    rng = np.random.default_rng(seed)
    counts = np.stack([rng.multinomial(32, rng.dirichlet(np.ones(C) * 0.5)) for _ in range(rows)])
    return torch.from_numpy((counts / 32).astype(np.float32))


def _diagonal_latents() -> Any:
    """[N, T, C, H, W] latents nonzero only where t == h == w: every unfolding's Gram matrix is
    diagonal with distinct entries, so HOSVD's factors are exact unit vectors on any LAPACK."""
    import torch

    n, t, c = 5, 4, 2
    x = torch.zeros(n, t, c, t, t)
    for i in range(t):
        x[:, i, :, i, i] = (i + 1) * torch.arange(1, n * c + 1, dtype=torch.float32).reshape(n, c) / 8
    return x


def codec_examples() -> dict[str, tuple[Any, Any]]:
    """``{codec id: (codec, input)}``: one small example per registered codec, parameters included."""
    import torch

    from codec.codecs.int8 import Int8Codec, Int8StateDictCodec
    from codec.codecs.lpld import LPLDCodec
    from codec.codecs.pca import PCACodec
    from codec.codecs.quant import QuantCodec
    from codec.codecs.topk import TopKCodec
    from codec.codecs.tucker import TuckerCodec
    from codec.codecs.vq import VQCodec

    w = torch.arange(-10, 14, dtype=torch.float32).reshape(4, 6) / 4
    state = {"conv.weight": torch.arange(-36, 36, dtype=torch.float32).reshape(4, 2, 3, 3) / 16,
             "conv.bias": torch.tensor([0.5, -0.25, 1.0, 0.0]), "lin.weight": w[:3].T.contiguous(),
             "norm.weight": torch.ones(4)}
    sd = Int8StateDictCodec.for_state_dict({k: v.shape for k, v in state.items()}, {"conv.weight": 0, "lin.weight": 1},
                                           model={"note": "an opaque model description"})
    y = _dyadic_labels(24, 0)
    sign = torch.tensor([[1, 1, 1, 1, -1, -1, -1, -1], [1, -1, 1, -1, 1, -1, 1, -1], [1, 1, -1, -1, 1, 1, -1, -1]],
                        dtype=torch.float32)
    vq = VQCodec(C, 4, 2, 5, store_encoder=True, param_dtype="f16").set_params(
        encoder=torch.cat([sign.T, sign[:1].T], 1) / 2,
        codebook=torch.tensor([[0.0, 0.0], [0.25, 0.0], [0.0, 0.25], [-0.25, 0.125], [0.125, -0.25]]),
        decoder=torch.cat([sign, sign[1:2]], 0) / 4 + 1 / C)
    pca = PCACodec(C, 3).with_params({"components": sign / 4, "mean": torch.full((C,), 1 / C)})
    quant = QuantCodec(C, 5).with_params({"levels": torch.tensor([0.0, 0.0625, 0.125, 0.25, 0.5])})
    return {
        "int8": (Int8Codec("asymmetric", axis=1), w),
        "int8-state": (sd, state),
        "tucker": (TuckerCodec(rate=0.5, chunk_size=3), _diagonal_latents()),
        "vq": (vq, y),
        "topk": (TopKCodec(C, 3, missing="bucket"), y),
        "pca": (pca, y),
        "quant": (quant, y),
        "lpld": (LPLDCodec(C, 2.0, batch_size=4, batches_per_epoch=5, epochs=2), y),
    }


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {f"{prefix}/{k}": v for k, v in value.items()}
    return {prefix: value}


def write_codec_golden(path: str, codec_id: str) -> None:
    from codec.codecs import write_object

    c, x = codec_examples()[codec_id]
    parts = {p: v.array for p, v in c.encode(x).items()}
    decoded = c.decode(parts)
    with codec.Writer(path, {"golden": codec_id}) as w:
        write_object(w, "obj", c, x)
        for name, arr in {**_flat("input", x), **_flat("decoded", decoded)}.items():
            w.add(name, arr)


if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    write_tiny(os.path.join(root, "tests", "golden", "tiny.ddz"))
    print(open(os.path.join(root, "tests", "golden", "tiny.ddz"), "rb").read().hex())
    from codec.codecs import registered_codecs

    os.makedirs(os.path.join(root, "tests", "golden", "codecs"), exist_ok=True)
    missing = sorted(set(registered_codecs()) - set(codec_examples()))
    if missing:
        sys.exit(f"no example for codec ids {missing}: add one to codec_examples()")
    for cid in registered_codecs():
        out = os.path.join(root, "tests", "golden", "codecs", f"{cid}.ddz")
        write_codec_golden(out, cid)
        print(f"{out}: {os.path.getsize(out)} B")
