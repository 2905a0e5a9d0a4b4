"""Scalar quantisation of probabilities to k learned levels (paper Sec. 5.1 "Vanilla
Quantization", storage Eq. S17).

Every probability is replaced by the index of its nearest level, bit-packed at
``ceil(log2 k)`` bits (``indices``, (n, C)); the k levels are stored in fp16 (``levels``,
2k bytes).  Levels are learned by Lloyd-Max (1-D k-means) on a sample of probability
values, initialised at quantiles.  Decoding: ``levels[idx]`` then Eq. 9.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..errors import InvalidInputError
from .base import Part, register_codec
from .vq import (RowSpec, SoftLabelCodec, as_tensor, check_common, finite, index_bits, index_dtype,
                  index_dtype_name, renorm_, to_probs)


@register_codec
class QuantCodec(SoftLabelCodec):
    codec_id = "quant"

    def __init__(self, classes: int, k: int, *, eps: float = 1e-8, input: str = "probs", temperature: float = 1.0,
                 iters: int = 30):
        check_common(classes, input, temperature, eps, "quant")
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 65536:
            raise InvalidInputError(f"quant: k (levels) must be an integer in [2, 65536], got {k!r}")
        if isinstance(iters, bool) or not isinstance(iters, int) or not 0 <= iters <= 100_000:
            raise InvalidInputError(f"quant: iters must be an integer in [0, 100000], got {iters!r}")
        self.classes, self.k, self.iters = classes, k, iters
        self.eps, self.input, self.temperature = float(eps), input, float(temperature)
        self.bits = index_bits(k)
        self.levels: torch.Tensor | None = None

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "classes": self.classes, "k": self.k, "eps": self.eps,
                "input": self.input, "temperature": self.temperature, "iters": self.iters}

    def fit(self, x: Any, sample: int = 1_000_000, seed: int = 0) -> "QuantCodec":
        y = to_probs(x, self.input, self.temperature, classes=self.classes).reshape(-1).double().cpu()
        if y.numel() > sample:
            g = torch.Generator().manual_seed(seed)
            y = y[torch.randperm(y.numel(), generator=g)[:sample]]
        v = torch.sort(y).values
        lv = torch.quantile(v, torch.linspace(0, 1, self.k + 2, dtype=torch.float64)[1:-1]) if v.numel() <= 16_000_000 else v[
            (torch.linspace(0, 1, self.k + 2)[1:-1] * (v.numel() - 1)).long()]
        for _ in range(self.iters):
            edges = (lv[1:] + lv[:-1]) / 2
            q = torch.bucketize(v, edges)
            sums = torch.zeros(self.k, dtype=torch.float64).index_add_(0, q, v)
            cnt = torch.bincount(q, minlength=self.k).double()
            nz = cnt > 0
            lv = lv.clone()
            lv[nz] = sums[nz] / cnt[nz]
            lv = torch.sort(lv).values
        self.levels = lv.to(torch.float16).float()
        return self

    def row_specs(self):
        return {"indices": RowSpec(index_dtype_name(self.bits), (self.classes,), self.bits)}

    def encode_rows(self, x: Any) -> dict[str, np.ndarray]:
        if self.levels is None:
            raise InvalidInputError("quant: levels not fitted (call fit first)")
        y = to_probs(x, self.input, self.temperature, classes=self.classes)
        lv = self.levels.to(y.device)
        edges = (lv[1:] + lv[:-1]) / 2
        q = torch.bucketize(y, edges)
        return {"indices": q.cpu().numpy().astype(index_dtype(self.bits))}

    def encode(self, x: Any) -> dict[str, Part]:
        if self.levels is None:
            self.fit(x)
        return super().encode(x)

    def param_parts(self):
        return {"levels": Part(self.levels.to(torch.float16).cpu())}

    def load_parts(self, parts: Mapping[str, Any]) -> "QuantCodec":
        lv = as_tensor(parts["levels"], "quant levels")
        if tuple(lv.shape) != (self.k,):
            raise InvalidInputError(f"quant: levels must have shape ({self.k},), got {tuple(lv.shape)}")
        self.levels = finite(lv.float(), "quant levels")
        return self

    def to(self, device):
        if self.levels is not None:
            self.levels = self.levels.to(device)
        return self

    def decode_rows(self, parts: Mapping[str, Any], *, device=None, dtype=torch.float32) -> torch.Tensor:
        idx = as_tensor(parts["indices"], "quant indices")
        if idx.ndim != 2 or idx.shape[1] != self.classes:
            raise InvalidInputError(f"quant: indices must be (n, {self.classes}), got {tuple(idx.shape)}")
        dev = torch.device(device) if device is not None else self.levels.device
        idx = idx.to(dev, torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.k):
            raise InvalidInputError(f"quant: level index outside [0, {self.k})")
        return renorm_(self.levels.to(dev)[idx], self.eps)
