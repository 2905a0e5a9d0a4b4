"""Fitting soft-label codecs: the one way a codec gets its learned parameters.

``fit(codec, data, **options)`` returns a *new* codec, equal in config to ``codec`` (a VQ codec adds its ``train`` record) and
holding parameters learned from ``data`` (``codec`` itself is unchanged; codecs never fit
themselves inside ``encode``):

* ``vq``: the VQ autoencoder of Eq. 2-7, trained by :func:`~codec.softlabels.train.train_vq`
  (``options``: its training arguments, e.g. ``epochs``, ``lr``, ``seed``);
* ``pca``: a streaming principal-component fit (mean and top-``k`` components of the
  probabilities' covariance, accumulated in float64);
* ``quant``: Lloyd-Max levels (1-D k-means, ``iters`` of the config) on at most ``sample``
  probability values (``options``: ``sample``, ``seed``);
* codecs that learn nothing (``topk``, ``lpld``) are returned as they are.

``data`` is a ``(rows, C)`` array, memmap or tensor, an iterable of such batches, or (for
VQ) anything :func:`~codec.softlabels.sources.as_source` accepts.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from .._args import int_arg
from ..codecs.pca import PCACodec
from ..codecs.quant import QuantCodec
from ..codecs.softlabel import SoftLabelCodec, to_probs
from ..codecs.vq import VQCodec
from ..errors import InvalidInputError

__all__ = ["fit"]


def fit(codec: SoftLabelCodec, data: Any, **options: Any) -> SoftLabelCodec:
    """A copy of ``codec`` with parameters learned from ``data`` (see the module docstring)."""
    if isinstance(codec, VQCodec):
        from .train import train_vq

        shape = getattr(data, "shape", None)
        if shape is not None and len(shape) == 2 and shape[1] != codec.classes:
            raise InvalidInputError(f"fit vq: soft labels have {shape[1]} classes, the codec expects {codec.classes}")
        cfg = codec.get_config()
        for key in ("id", "classes", "zstd_level", "train"):  # storage choice / provenance, not training inputs
            cfg.pop(key, None)
        trained = train_vq(data, **cfg, **options)
        if trained.classes != codec.classes:
            raise InvalidInputError(f"fit vq: soft labels have {trained.classes} classes, the codec expects {codec.classes}")
        trained.zstd_level = codec.zstd_level
        return trained
    if isinstance(codec, PCACodec):
        _no_options("pca", options)
        return _fit_pca(codec, data)
    if isinstance(codec, QuantCodec):
        unknown = set(options) - {"sample", "seed"}
        if unknown:
            raise InvalidInputError(f"fit quant: unknown options {sorted(unknown)}; it takes sample and seed")
        return _fit_quant(codec, data, **options)
    if not isinstance(codec, SoftLabelCodec):
        raise InvalidInputError(f"fit needs a soft-label codec, got {type(codec).__name__}")
    _no_options(codec.codec_id, options)
    return codec


def _no_options(who: str, options: dict) -> None:
    if options:
        raise InvalidInputError(f"fit {who}: takes no options, got {sorted(options)}")


def _batches(data: Any) -> Iterable[Any]:
    return [data] if isinstance(data, (np.ndarray, torch.Tensor)) else data


def _fit_pca(codec: PCACodec, data: Any) -> PCACodec:
    """Mean and top-``k`` eigenvectors of the covariance of the probabilities, streamed over batches."""
    C = codec.classes
    s = torch.zeros(C, dtype=torch.float64)
    g = torch.zeros(C, C, dtype=torch.float64)
    n = 0
    for b in _batches(data):
        y = to_probs(b, codec.input, codec.temperature, classes=C).double().cpu()
        s += y.sum(0)
        g += y.T @ y
        n += y.shape[0]
    if n == 0:
        raise InvalidInputError("pca: no rows to fit")
    mean = s / n
    cov = g / n - torch.outer(mean, mean)
    evals, evecs = torch.linalg.eigh(cov)
    comps = evecs[:, torch.argsort(evals, descending=True)[: codec.k]].T
    return codec.with_params({"components": comps.to(torch.float16), "mean": mean.to(torch.float16)})


def _fit_quant(codec: QuantCodec, data: Any, sample: int = 1_000_000, seed: int = 0) -> QuantCodec:
    """Lloyd-Max levels: quantile initialisation, then ``codec.iters`` 1-D k-means steps."""
    sample = int_arg("fit quant: sample", sample, 1)
    seed = int_arg("fit quant: seed", seed, 0, 2**63 - 1)
    parts = [to_probs(b, codec.input, codec.temperature, classes=codec.classes).reshape(-1).double().cpu()
             for b in _batches(data)]
    y = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)
    if y.numel() == 0:
        raise InvalidInputError("quant: no values to fit")
    if y.numel() > sample:
        g = torch.Generator().manual_seed(seed)
        y = y[torch.randperm(y.numel(), generator=g)[:sample]]
    v = torch.sort(y).values
    k = codec.k
    if v.numel() <= 16_000_000:
        lv = torch.quantile(v, torch.linspace(0, 1, k + 2, dtype=torch.float64)[1:-1])
    else:
        lv = v[(torch.linspace(0, 1, k + 2)[1:-1] * (v.numel() - 1)).long()]
    for _ in range(codec.iters):
        edges = (lv[1:] + lv[:-1]) / 2
        q = torch.bucketize(v, edges)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, q, v)
        cnt = torch.bincount(q, minlength=k).double()
        nz = cnt > 0
        lv = lv.clone()
        lv[nz] = sums[nz] / cnt[nz]
        lv = torch.sort(lv).values
    return codec.with_params({"levels": lv.to(torch.float16)})
