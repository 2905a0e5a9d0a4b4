"""Top-k soft-label codec (paper Sec. 5.1 baseline "Topk", storage Eq. S15).

Per soft label: the k largest probabilities as fp16 (``values``) and their class indices
bit-packed at ``ceil(log2 C)`` bits (``indices``).  The probability mass outside the top k
is handled by a declared rule (``missing``):

* ``"renorm"``  -- drop it: y~ = values / sum(values) on the top-k classes (others -> eps);
* ``"uniform"`` -- spread ``1 - sum(values)`` uniformly over the other C-k classes
  (FKD's "marginal smoothing");
* ``"bucket"``  -- store the missing mass explicitly as one more fp16 value per row
  (``rest``, DistillKit's "symmetric_uniform" (k+1)-th bucket); decoding spreads it
  uniformly like "uniform", and :meth:`TopKCodec.buckets` returns (values, indices, rest)
  for a (k+1)-bucket KD loss.

Decoding ends with Eq. 9's ``max(., eps)`` renormalisation so KL(y || y~) stays finite.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..errors import InvalidInputError, LimitError
from .base import register_codec
from .vq import (RowSpec, SoftLabelCodec, as_tensor, check_common, finite, index_bits, index_dtype,
                  index_dtype_name, renorm_, to_probs)

MISSING = ("renorm", "uniform", "bucket")


#: Largest dense (rows x classes) float32 block one top-k decode call may allocate; decode
#: a smaller row range for more.
MAX_DECODE_BYTES = 1 << 32


@register_codec
class TopKCodec(SoftLabelCodec):
    codec_id = "topk"

    def __init__(self, classes: int, k: int, *, missing: str = "renorm", eps: float = 1e-8, input: str = "probs",
                 temperature: float = 1.0):
        check_common(classes, input, temperature, eps, "topk")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= classes:
            raise InvalidInputError(f"topk: k must be an integer in [1, classes={classes}], got {k!r}")
        if missing not in MISSING:
            raise InvalidInputError(f"topk: missing must be one of {MISSING}, got {missing!r}")
        self.classes, self.k, self.missing = classes, k, missing
        self.eps, self.input, self.temperature = float(eps), input, float(temperature)
        self.bits = index_bits(classes)

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "classes": self.classes, "k": self.k, "missing": self.missing,
                "eps": self.eps, "input": self.input, "temperature": self.temperature}

    def row_specs(self):
        specs = {"values": RowSpec("f16", (self.k,)),
                 "indices": RowSpec(index_dtype_name(self.bits), (self.k,), self.bits)}
        if self.missing == "bucket":
            specs["rest"] = RowSpec("f16", ())
        return specs

    def encode_rows(self, x: Any) -> dict[str, np.ndarray]:
        y = to_probs(x, self.input, self.temperature, classes=self.classes)
        v, i = torch.topk(y, self.k, dim=1)
        out = {"values": v.to(torch.float16).cpu().numpy(),
               "indices": i.cpu().numpy().astype(index_dtype(self.bits))}
        if self.missing == "bucket":
            out["rest"] = (1.0 - v.double().sum(1)).clamp_min(0).to(torch.float16).cpu().numpy()
        return out

    def buckets(self, parts: Mapping[str, Any]):
        """(values (n,k) float32, indices (n,k) int64, rest (n,) float32) for a (k+1)-bucket loss."""
        v = as_tensor(parts["values"]).float()
        i = as_tensor(parts["indices"]).long()
        rest = as_tensor(parts["rest"]).float() if "rest" in parts else (1 - v.sum(1)).clamp_min(0)
        return v, i, rest

    def decode_rows(self, parts: Mapping[str, Any], *, device=None, dtype=torch.float32) -> torch.Tensor:
        v = as_tensor(parts["values"], "topk values")
        i = as_tensor(parts["indices"], "topk indices")
        if v.ndim != 2 or v.shape[1] != self.k or i.shape != v.shape:
            raise InvalidInputError(f"topk: values {tuple(v.shape)} / indices {tuple(i.shape)} must both be (n, {self.k})")
        dev = torch.device(device) if device is not None else v.device
        v = finite(v.to(dev, torch.float32), "topk values")
        i = i.to(dev, torch.int64)
        if i.numel() and (int(i.min()) < 0 or int(i.max()) >= self.classes):
            raise InvalidInputError(f"topk: class index outside [0, {self.classes})")
        n = v.shape[0]
        if n * self.classes * 4 > MAX_DECODE_BYTES:
            raise LimitError(f"topk: decoding {n} rows x {self.classes} classes needs {n * self.classes * 4:,} B "
                             f"(limit {MAX_DECODE_BYTES:,} B); decode a smaller row range")
        out = torch.zeros((n, self.classes), dtype=torch.float32, device=dev)
        if self.missing != "renorm" and self.classes > self.k:
            rest = (finite(as_tensor(parts["rest"], "topk rest").to(dev, torch.float32), "topk rest") if self.missing == "bucket"
                    else (1 - v.sum(1)).clamp_min(0))
            out += (rest / (self.classes - self.k)).unsqueeze(1)
        out.scatter_(1, i, v)
        return renorm_(out, self.eps)
