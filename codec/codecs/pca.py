"""PCA soft-label codec (paper Sec. 5.1 baseline, storage Eq. S16).

Per soft label the ``k`` principal-component projections in fp16 (``proj``); shared: the
``k x C`` components and the C-vector mean, fp16.  Eq. S16 counts projections and
components; the mean (2C bytes) is an extra the printed formula omits.  The components and
mean are learned by :func:`codec.softlabels.fit` (a streaming eigendecomposition).
Decoding: ``yhat = proj @ components + mean`` then Eq. 9.
"""

from __future__ import annotations

from typing import Any, Mapping, Self, Sequence

import numpy as np
import torch

from .._args import int_arg
from ..errors import InvalidInputError
from ._tensors import as_tensor
from .base import BudgetTerm, Part, PartSpec, register_codec
from .formulas import s16_row_terms
from .softlabel import SoftLabelCodec, check_common, finite, need, param, renorm_, to_probs


@register_codec
class PCACodec(SoftLabelCodec):
    codec_id = "pca"

    def __init__(self, classes: int, k: int, *, eps: float = 1e-8, input: str = "probs", temperature: float = 1.0):
        self.classes, self.input, self.temperature, self.eps = check_common(classes, input, temperature, eps, "pca")
        self.k = int_arg(f"pca: k (classes={classes})", k, 1, self.classes)
        self.components: torch.Tensor | None = None  # (k, C), fp16 values held as float32
        self.mean: torch.Tensor | None = None  # (C,)

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "classes": self.classes, "k": self.k, "eps": self.eps,
                "input": self.input, "temperature": self.temperature}

    def encoded_parts(self, shape: Any) -> dict[str, PartSpec]:
        n = self._rows(shape)
        return {"proj": PartSpec("f16", (n, self.k), per_row=True), "components": PartSpec("f16", (self.k, self.classes)),
                "mean": PartSpec("f16", (self.classes,))}

    def budget_terms(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, BudgetTerm]:
        n = int(shapes["proj"][0]) if shapes.get("proj") else 0
        t = s16_row_terms(max(n, 1), self.classes, self.k).terms
        return {"proj": BudgetTerm("S16 PC projections: n*2k", t["projections"] if n else 0.0),
                "components": BudgetTerm("S16 PC vectors: k*C*2", t["components"]),
                "mean": BudgetTerm("PCA mean (not in S16): C*2")}

    @property
    def fitted(self) -> bool:
        return self.components is not None and self.mean is not None

    def params(self) -> dict[str, Part]:
        if self.components is None or self.mean is None:
            return {}
        return {"components": Part(self.components.to("cpu", torch.float16)), "mean": Part(self.mean.to("cpu", torch.float16))}

    def with_params(self, parts: Mapping[str, Any]) -> Self:
        super().with_params(parts)
        comps = param(need(parts, "components", "pca"), (self.k, self.classes), "pca components")
        mean = param(need(parts, "mean", "pca"), (self.classes,), "pca mean")
        return self._copy_with(components=comps.half().float(), mean=mean.half().float())

    def to(self, device: Any) -> "PCACodec":
        """Move the parameters to ``device`` (in place; returns self)."""
        if self.components is not None and self.mean is not None:
            self.components, self.mean = self.components.to(device), self.mean.to(device)
        return self

    def encode_rows(self, x: Any) -> dict[str, np.ndarray]:
        if self.components is None or self.mean is None:
            raise InvalidInputError("pca: not fitted (fit it with codec.softlabels.fit)")
        y = to_probs(x, self.input, self.temperature, classes=self.classes)
        comps = self.components.to(y.device)
        proj = (y - self.mean.to(y.device)) @ comps.T
        return {"proj": proj.to(torch.float16).cpu().numpy()}

    def decode_rows(self, parts: Mapping[str, Any], *, rows: Sequence[int] | None = None, device: Any = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.components is None or self.mean is None:
            raise InvalidInputError("pca: no components/mean loaded")
        proj = as_tensor(need(parts, "proj", "pca"), "pca projections")
        if proj.ndim != 2 or proj.shape[1] != self.k:
            raise InvalidInputError(f"pca: projections must be (n, {self.k}), got {tuple(proj.shape)}")
        self._check_rows(proj.shape[0], rows)
        dev = torch.device(device) if device is not None else self.components.device
        y = finite(proj.to(dev, torch.float32), "pca projections") @ self.components.to(dev) + self.mean.to(dev)
        return renorm_(y, self.eps)
