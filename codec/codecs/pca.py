"""PCA soft-label codec (paper Sec. 5.1 baseline, storage Eq. S16).

Per soft label the ``k`` principal-component projections in fp16 (``proj``); shared: the
``k x C`` components and the C-vector mean, fp16.  Eq. S16 counts projections and
components; the mean (2C bytes) is an extra the printed formula omits.  Fitting streams:
it accumulates ``sum y`` and ``sum y^T y`` (float64, C x C) over mini-batches, so the data
never has to fit in memory.  Decoding: ``yhat = proj @ components + mean`` then Eq. 9.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..errors import InvalidInputError
from .base import Part, register_codec
from .vq import RowSpec, SoftLabelCodec, as_tensor, check_common, finite, renorm_, to_probs


@register_codec
class PCACodec(SoftLabelCodec):
    codec_id = "pca"

    def __init__(self, classes: int, k: int, *, eps: float = 1e-8, input: str = "probs", temperature: float = 1.0):
        check_common(classes, input, temperature, eps, "pca")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= classes:
            raise InvalidInputError(f"pca: k must be an integer in [1, classes={classes}], got {k!r}")
        self.classes, self.k = classes, k
        self.eps, self.input, self.temperature = float(eps), input, float(temperature)
        self.components: torch.Tensor | None = None  # (k, C)
        self.mean: torch.Tensor | None = None  # (C,)

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "classes": self.classes, "k": self.k, "eps": self.eps,
                "input": self.input, "temperature": self.temperature}

    def fit(self, batches: Iterable[Any] | Any) -> "PCACodec":
        """Streaming PCA: ``batches`` is an array (rows, C) or an iterable of such batches."""
        if isinstance(batches, (np.ndarray, torch.Tensor)):
            batches = [batches]
        C = self.classes
        s = torch.zeros(C, dtype=torch.float64)
        g = torch.zeros(C, C, dtype=torch.float64)
        n = 0
        for b in batches:
            y = to_probs(b, self.input, self.temperature, classes=C).double().cpu()
            s += y.sum(0)
            g += y.T @ y
            n += y.shape[0]
        if n == 0:
            raise InvalidInputError("pca: no rows to fit")
        mean = s / n
        cov = g / n - torch.outer(mean, mean)
        evals, evecs = torch.linalg.eigh(cov)
        comps = evecs[:, torch.argsort(evals, descending=True)[: self.k]].T
        self.components = comps.to(torch.float16).float()
        self.mean = mean.to(torch.float16).float()
        return self

    def row_specs(self):
        return {"proj": RowSpec("f16", (self.k,))}

    def encode_rows(self, x: Any) -> dict[str, np.ndarray]:
        if self.components is None:
            raise InvalidInputError("pca: not fitted (call fit first)")
        y = to_probs(x, self.input, self.temperature, classes=self.classes)
        comps = self.components.to(y.device)
        proj = (y - self.mean.to(y.device)) @ comps.T
        return {"proj": proj.to(torch.float16).cpu().numpy()}

    def encode(self, x: Any) -> dict[str, Part]:
        if self.components is None:
            self.fit(x)
        return super().encode(x)

    def param_parts(self):
        return {"components": Part(self.components.to(torch.float16).cpu()), "mean": Part(self.mean.to(torch.float16).cpu())}

    def load_parts(self, parts: Mapping[str, Any]) -> "PCACodec":
        comps = as_tensor(parts["components"], "pca components")
        mean = as_tensor(parts["mean"], "pca mean")
        if tuple(comps.shape) != (self.k, self.classes) or tuple(mean.shape) != (self.classes,):
            raise InvalidInputError(f"pca: components {tuple(comps.shape)} / mean {tuple(mean.shape)} must be "
                                    f"({self.k}, {self.classes}) / ({self.classes},)")
        self.components, self.mean = finite(comps.float(), "pca components"), finite(mean.float(), "pca mean")
        return self

    def to(self, device):
        if self.components is not None:
            self.components, self.mean = self.components.to(device), self.mean.to(device)
        return self

    def decode_rows(self, parts: Mapping[str, Any], *, device=None, dtype=torch.float32) -> torch.Tensor:
        proj = as_tensor(parts["proj"], "pca projections")
        if proj.ndim != 2 or proj.shape[1] != self.k:
            raise InvalidInputError(f"pca: projections must be (n, {self.k}), got {tuple(proj.shape)}")
        dev = torch.device(device) if device is not None else self.components.device
        y = finite(proj.to(dev, torch.float32), "pca projections") @ self.components.to(dev) + self.mean.to(dev)
        return renorm_(y, self.eps)
