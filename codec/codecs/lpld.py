"""LPLD random batch pruning (Xiao & He [34]) as a soft-label codec.

LPLD keeps the soft labels of a *prefix pool* of global batches (generated with
``drop_last=True``) and, at training time, draws each epoch's batches **with replacement**
from that pool (see :class:`codec.softlabels.replay.LPLDBatchSampler`).  The pool size has
two rules:

* ``prune_ratio=p`` (LPLD's own ``--prune_ratio``): ``int(E * nb * (1 - p))`` batches, as
  LPLD's code computes it (:func:`lpld_pool_batches`); this is the rule to use for LPLD's
  settings, whose "10x / 20x / 30x / 40x" labels are p = 0.9 / 0.95 / 0.97 / 0.975;
* ``ratio=r`` (a nominal compression ratio, the rule of files written before
  ``prune_ratio``): ``floor(E * nb / r)`` batches.  LPLD's "30x" (p = 0.97) keeps 702 of
  IN-1K IPC 10's 23,400 batches; ``ratio=30`` keeps 780.

Stored: the kept rows as fp16 (``labels``), as raw logits (``input="logits"``, LPLD/SRe2L's
choice, with the temperature declared) or probabilities.  With neither (``ratio=1``) every row
is kept: the uncompressed fp16 baseline of Eq. S11.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._args import float_arg, int_arg
from ..errors import InvalidInputError
from ._tensors import as_tensor
from .base import BudgetTerm, PartSpec, register_codec
from .formulas import s11_rows
from .softlabel import SoftLabelCodec, check_common, need, renorm_, to_probs


def lpld_pool_batches(total_batches: int, prune_ratio: float) -> int:
    """LPLD's pool: the first ``int(total_batches * (1 - prune_ratio))`` global batch ids.

    Computed in Python floats exactly as LPLD does (``generate_soft_label_pruning.py``:
    ``int(args.epochs * args.num_batches * (1 - args.prune_ratio))``; the trainer's
    ``int((1 - prune_ratio) * total_steps)`` is the same product), so for IN-1K IPC 10
    (300 epochs x 78 batches) ``prune_ratio=0.97`` gives 702 batches, not ``23400 / 30``.
    """
    if isinstance(total_batches, bool) or not isinstance(total_batches, (int, np.integer)) or total_batches < 1:
        raise InvalidInputError(f"lpld: the number of batches must be a positive integer, got {total_batches!r}")
    if isinstance(prune_ratio, bool) or not (isinstance(prune_ratio, (int, float, np.floating)) and 0 <= prune_ratio < 1):
        raise InvalidInputError(f"lpld: prune_ratio must be a number in [0, 1) (LPLD's --prune_ratio), got {prune_ratio!r}")
    pool = int(int(total_batches) * (1 - float(prune_ratio)))
    if pool < 1:
        raise InvalidInputError(f"lpld: prune_ratio {prune_ratio} keeps no batch of {total_batches}")
    return pool


@register_codec
class LPLDCodec(SoftLabelCodec):
    codec_id = "lpld"

    def __init__(self, classes: int, ratio: float = 1.0, *, prune_ratio: float | None = None,
                 batch_size: int | None = None, batches_per_epoch: int | None = None, epochs: int | None = None,
                 eps: float = 1e-8, input: str = "probs", temperature: float = 1.0):
        self.classes, self.input, self.temperature, self.eps = check_common(classes, input, temperature, eps, "lpld")
        self.ratio = float_arg("lpld: ratio", ratio, 1)
        self.prune_ratio = None if prune_ratio is None else float_arg("lpld: prune_ratio", prune_ratio, 0, 1)
        if self.prune_ratio is not None and (self.prune_ratio >= 1 or self.ratio != 1):
            raise InvalidInputError(f"lpld: prune_ratio must be in [0, 1) and replaces ratio (got prune_ratio={prune_ratio!r}, "
                                    f"ratio={ratio!r})")
        self.batch_size, self.batches_per_epoch, self.epochs = (
            None if v is None else int_arg(f"lpld: {nm}", v, 1)
            for nm, v in (("batch_size", batch_size), ("batches_per_epoch", batches_per_epoch), ("epochs", epochs)))
        if (ratio != 1 or self.prune_ratio is not None) and None in (batch_size, batches_per_epoch, epochs):
            # without the batch geometry the pool size is unknown and every row would be kept
            raise InvalidInputError(f"lpld: {'prune_ratio' if self.prune_ratio is not None else 'ratio'} needs batch_size, "
                                    "batches_per_epoch and epochs (the pool is a number of whole batches)")

    def get_config(self) -> dict[str, Any]:
        cfg = {"id": self.codec_id, "classes": self.classes, "ratio": self.ratio}
        if self.prune_ratio is not None:  # absent from configs of the nominal-ratio rule (and older files)
            cfg["prune_ratio"] = self.prune_ratio
        cfg.update({"batch_size": self.batch_size, "batches_per_epoch": self.batches_per_epoch, "epochs": self.epochs,
                    "eps": self.eps, "input": self.input, "temperature": self.temperature})
        return cfg

    @property
    def pool_batches(self) -> int:
        """LPLD's ``int(E * batches_per_epoch * (1 - prune_ratio))`` with ``prune_ratio``, else
        ``floor(E * batches_per_epoch / ratio)`` (at least 1)."""
        if self.epochs is None or self.batches_per_epoch is None:
            raise InvalidInputError("lpld: pool size needs epochs and batches_per_epoch")
        if self.prune_ratio is not None:
            return lpld_pool_batches(self.epochs * self.batches_per_epoch, self.prune_ratio)
        return max(1, math.floor(self.epochs * self.batches_per_epoch / self.ratio))

    @property
    def max_rows(self) -> int | None:
        """Rows kept (pool batches x batch size), or None when the batch geometry is not set."""
        if self.batch_size is None or self.epochs is None or self.batches_per_epoch is None:
            return None
        return self.pool_batches * self.batch_size

    def encoded_parts(self, shape: Any) -> dict[str, PartSpec]:
        n = self._rows(shape)
        kept = n if self.max_rows is None else min(n, self.max_rows)
        return {"labels": PartSpec("f16", (kept, self.classes), per_row=True)}

    def budget_terms(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, BudgetTerm]:
        n = int(shapes["labels"][0]) if shapes.get("labels") else 0
        return {"labels": BudgetTerm("S11 rows kept by LPLD: n_kept*C*2", float(s11_rows(n, self.classes)) if n else 0.0)}

    def encode_rows(self, x: Any) -> dict[str, np.ndarray]:
        t = as_tensor(x, "soft labels")
        if t.ndim != 2 or t.shape[1] != self.classes:
            raise InvalidInputError(f"lpld: soft labels must be (n, {self.classes}), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise InvalidInputError(f"lpld: soft labels must be floating point, got {t.dtype}")
        return {"labels": t.to(torch.float16).cpu().numpy()}

    def decode_rows(self, parts: Mapping[str, Any], *, rows: Sequence[int] | None = None, device: Any = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        t = as_tensor(need(parts, "labels", "lpld"), "lpld labels")
        if t.ndim != 2 or t.shape[1] != self.classes:
            raise InvalidInputError(f"lpld: labels must be (n, {self.classes}), got {tuple(t.shape)}")
        self._check_rows(t.shape[0], rows)
        dev = torch.device(device) if device is not None else t.device
        return renorm_(to_probs(t.to(dev), self.input, self.temperature), self.eps)
