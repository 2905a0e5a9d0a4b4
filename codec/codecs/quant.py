"""Scalar quantisation of probabilities to k learned levels (paper Sec. 5.1 "Vanilla
Quantization", storage Eq. S17).

Every probability is replaced by the index of its nearest level, bit-packed at
``ceil(log2 k)`` bits (``indices``, (n, C)); the k levels are stored in fp16 (``levels``,
2k bytes).  Levels are learned by :func:`codec.softlabels.fit` (Lloyd-Max, 1-D k-means
with ``iters`` iterations, on a sample of probability values, initialised at quantiles).
Decoding: ``levels[idx]`` then Eq. 9.
"""

from __future__ import annotations

from typing import Any, Mapping, Self, Sequence

import numpy as np
import torch

from .._args import int_arg
from ..errors import InvalidInputError
from ._tensors import as_tensor
from .base import BudgetTerm, Part, PartSpec, register_codec
from .formulas import s17_row_terms
from .softlabel import (SoftLabelCodec, check_common, index_bits, index_dtype, index_dtype_name, need, param, renorm_,
                        to_probs)


@register_codec
class QuantCodec(SoftLabelCodec):
    codec_id = "quant"

    def __init__(self, classes: int, k: int, *, eps: float = 1e-8, input: str = "probs", temperature: float = 1.0,
                 iters: int = 30):
        self.classes, self.input, self.temperature, self.eps = check_common(classes, input, temperature, eps, "quant")
        self.k = int_arg("quant: k (levels)", k, 2, 65536)
        self.iters = int_arg("quant: iters", iters, 0, 100_000)
        self.bits = index_bits(self.k)
        self.levels: torch.Tensor | None = None  # (k,), fp16 values held as float32

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "classes": self.classes, "k": self.k, "eps": self.eps,
                "input": self.input, "temperature": self.temperature, "iters": self.iters}

    def encoded_parts(self, shape: Any) -> dict[str, PartSpec]:
        n = self._rows(shape)
        return {"indices": PartSpec(index_dtype_name(self.bits), (n, self.classes), self.bits, per_row=True),
                "levels": PartSpec("f16", (self.k,))}

    def budget_terms(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, BudgetTerm]:
        n = int(shapes["indices"][0]) if shapes.get("indices") else 0
        t = s17_row_terms(max(n, 1), self.classes, self.k).terms
        return {"indices": BudgetTerm("S17 level indices: n*C*log2(k)/8", t["indices"] if n else 0.0, log2_of=self.k),
                "levels": BudgetTerm("S17 levels: 2k", t["levels"])}

    @property
    def fitted(self) -> bool:
        return self.levels is not None

    def params(self) -> dict[str, Part]:
        return {} if self.levels is None else {"levels": Part(self.levels.to("cpu", torch.float16))}

    def with_params(self, parts: Mapping[str, Any]) -> Self:
        super().with_params(parts)
        levels = param(need(parts, "levels", "quant"), (self.k,), "quant levels")
        return self._copy_with(levels=levels.half().float())

    def to(self, device: Any) -> "QuantCodec":
        """Move the levels to ``device`` (in place; returns self)."""
        if self.levels is not None:
            self.levels = self.levels.to(device)
        return self

    def encode_rows(self, x: Any) -> dict[str, np.ndarray]:
        if self.levels is None:
            raise InvalidInputError("quant: levels not fitted (fit it with codec.softlabels.fit)")
        y = to_probs(x, self.input, self.temperature, classes=self.classes)
        lv = self.levels.to(y.device)
        edges = (lv[1:] + lv[:-1]) / 2
        q = torch.bucketize(y, edges)
        return {"indices": q.cpu().numpy().astype(index_dtype(self.bits))}

    def decode_rows(self, parts: Mapping[str, Any], *, rows: Sequence[int] | None = None, device: Any = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.levels is None:
            raise InvalidInputError("quant: no levels loaded")
        idx = as_tensor(need(parts, "indices", "quant"), "quant indices")
        if idx.ndim != 2 or idx.shape[1] != self.classes:
            raise InvalidInputError(f"quant: indices must be (n, {self.classes}), got {tuple(idx.shape)}")
        self._check_rows(idx.shape[0], rows)
        dev = torch.device(device) if device is not None else self.levels.device
        idx = idx.to(dev, torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.k):
            raise InvalidInputError(f"quant: level index outside [0, {self.k})")
        return renorm_(self.levels.to(dev)[idx], self.eps)
