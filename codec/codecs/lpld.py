"""LPLD random batch pruning (Xiao & He [34]) as a soft-label codec.

LPLD keeps the soft labels of a *prefix pool* of ``floor(E * batches_per_epoch / ratio)``
global batches (generated with ``drop_last=True``) and, at training time, draws each epoch's
batches uniformly **with replacement** from that pool (see
:class:`codec.softlabels.replay.LPLDBatchSampler`).  Stored: the kept rows as fp16 (``labels``),
as raw logits (``input="logits"``, LPLD/SRe2L's choice, with the temperature declared) or
probabilities.  With ``ratio=1`` this is the uncompressed fp16 baseline of Eq. S11.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import InvalidInputError
from .base import register_codec
from .vq import RowSpec, SoftLabelCodec, as_tensor, check_common, renorm_, to_probs


@register_codec
class LPLDCodec(SoftLabelCodec):
    codec_id = "lpld"

    def __init__(self, classes: int, ratio: float = 1.0, *, batch_size: int | None = None,
                 batches_per_epoch: int | None = None, epochs: int | None = None, eps: float = 1e-8,
                 input: str = "probs", temperature: float = 1.0):
        check_common(classes, input, temperature, eps, "lpld")
        if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 1 <= ratio < math.inf):
            raise InvalidInputError(f"lpld: ratio must be a finite number >= 1, got {ratio!r}")
        for nm, v in (("batch_size", batch_size), ("batches_per_epoch", batches_per_epoch), ("epochs", epochs)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise InvalidInputError(f"lpld: {nm} must be a positive integer, got {v!r}")
        if ratio != 1 and None in (batch_size, batches_per_epoch, epochs):
            # without the batch geometry the pool size is unknown and every row would be kept
            raise InvalidInputError(f"lpld: ratio {ratio} needs batch_size, batches_per_epoch and epochs "
                                    "(the prefix pool is floor(epochs * batches_per_epoch / ratio) batches)")
        self.classes, self.ratio = classes, float(ratio)
        self.batch_size, self.batches_per_epoch, self.epochs = batch_size, batches_per_epoch, epochs
        self.eps, self.input, self.temperature = float(eps), input, float(temperature)

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "classes": self.classes, "ratio": self.ratio, "batch_size": self.batch_size,
                "batches_per_epoch": self.batches_per_epoch, "epochs": self.epochs, "eps": self.eps,
                "input": self.input, "temperature": self.temperature}

    @property
    def pool_batches(self) -> int:
        """``floor(E * batches_per_epoch / ratio)`` (at least 1)."""
        if self.epochs is None or self.batches_per_epoch is None:
            raise InvalidInputError("lpld: pool size needs epochs and batches_per_epoch")
        return max(1, math.floor(self.epochs * self.batches_per_epoch / self.ratio))

    @property
    def max_rows(self) -> int | None:
        """Rows kept (pool batches x batch size), or None when the batch geometry is not set."""
        if self.batch_size is None or self.epochs is None or self.batches_per_epoch is None:
            return None
        return self.pool_batches * self.batch_size

    def row_specs(self):
        return {"labels": RowSpec("f16", (self.classes,))}

    def encode_rows(self, x: Any) -> dict[str, np.ndarray]:
        t = as_tensor(x)
        if t.ndim != 2 or t.shape[1] != self.classes:
            raise InvalidInputError(f"lpld: soft labels must be (n, {self.classes}), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise InvalidInputError(f"lpld: soft labels must be floating point, got {t.dtype}")
        return {"labels": t.to(torch.float16).cpu().numpy()}

    def decode_rows(self, parts: Mapping[str, Any], *, device=None, dtype=torch.float32) -> torch.Tensor:
        t = as_tensor(parts["labels"], "lpld labels")
        if t.ndim != 2 or t.shape[1] != self.classes:
            raise InvalidInputError(f"lpld: labels must be (n, {self.classes}), got {tuple(t.shape)}")
        dev = torch.device(device) if device is not None else t.device
        return renorm_(to_probs(t.to(dev), self.input, self.temperature), self.eps)
