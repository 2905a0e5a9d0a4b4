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

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._args import int_arg
from ..errors import InvalidInputError, LimitError
from ._tensors import as_tensor
from .base import BudgetTerm, PartSpec, register_codec
from .formulas import s15_row_terms
from .softlabel import SoftLabelCodec, check_common, finite, index_bits, index_dtype, index_dtype_name, need, renorm_, to_probs

MISSING = ("renorm", "uniform", "bucket")


#: Largest dense (rows x classes) float32 block one top-k decode call may allocate; decode
#: a smaller row range for more.
MAX_DECODE_BYTES = 1 << 32


@register_codec
class TopKCodec(SoftLabelCodec):
    codec_id = "topk"

    def __init__(self, classes: int, k: int, *, missing: str = "renorm", eps: float = 1e-8, input: str = "probs",
                 temperature: float = 1.0):
        self.classes, self.input, self.temperature, self.eps = check_common(classes, input, temperature, eps, "topk")
        self.k = int_arg(f"topk: k (classes={classes})", k, 1, self.classes)
        if missing not in MISSING:
            raise InvalidInputError(f"topk: missing must be one of {MISSING}, got {missing!r}")
        self.missing = missing
        self.bits = index_bits(self.classes)

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "classes": self.classes, "k": self.k, "missing": self.missing,
                "eps": self.eps, "input": self.input, "temperature": self.temperature}

    def encoded_parts(self, shape: Any) -> dict[str, PartSpec]:
        n = self._rows(shape)
        specs = {"values": PartSpec("f16", (n, self.k), per_row=True),
                 "indices": PartSpec(index_dtype_name(self.bits), (n, self.k), self.bits, per_row=True)}
        if self.missing == "bucket":
            specs["rest"] = PartSpec("f16", (n,), per_row=True)
        return specs

    def budget_terms(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, BudgetTerm]:
        n = int(shapes["values"][0]) if shapes.get("values") else 0
        t = s15_row_terms(n, self.classes, self.k).terms if n else {"values": 0.0, "indices": 0.0}
        return {"values": BudgetTerm("S15 class prob.: n*2k", t["values"]),
                "indices": BudgetTerm("S15 top-k indices: n*log2(C)/8*k", t["indices"], log2_of=self.classes),
                "rest": BudgetTerm("missing-mass bucket (not in S15): n*2")}

    def encode_rows(self, x: Any) -> dict[str, np.ndarray]:
        y = to_probs(x, self.input, self.temperature, classes=self.classes)
        v, i = torch.topk(y, self.k, dim=1)
        out = {"values": v.to(torch.float16).cpu().numpy(),
               "indices": i.cpu().numpy().astype(index_dtype(self.bits))}
        if self.missing == "bucket":
            out["rest"] = (1.0 - v.double().sum(1)).clamp_min(0).to(torch.float16).cpu().numpy()
        return out

    def buckets(self, parts: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values (n,k) float32, indices (n,k) int64, rest (n,) float32) for a (k+1)-bucket loss."""
        v = as_tensor(need(parts, "values", "topk"), "topk values").float()
        i = as_tensor(need(parts, "indices", "topk"), "topk indices").long()
        rest = as_tensor(parts["rest"], "topk rest").float() if "rest" in parts else (1 - v.sum(1)).clamp_min(0)
        return v, i, rest

    def decode_rows(self, parts: Mapping[str, Any], *, rows: Sequence[int] | None = None, device: Any = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        v = as_tensor(need(parts, "values", "topk"), "topk values")
        i = as_tensor(need(parts, "indices", "topk"), "topk indices")
        if v.ndim != 2 or v.shape[1] != self.k or i.shape != v.shape:
            raise InvalidInputError(f"topk: values {tuple(v.shape)} / indices {tuple(i.shape)} must both be (n, {self.k})")
        self._check_rows(v.shape[0], rows)
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
            rest = (finite(as_tensor(need(parts, "rest", "topk"), "topk rest").to(dev, torch.float32), "topk rest") if self.missing == "bucket"
                    else (1 - v.sum(1)).clamp_min(0))
            out += (rest / (self.classes - self.k)).unsqueeze(1)
        out.scatter_(1, i, v)
        return renorm_(out, self.eps)
