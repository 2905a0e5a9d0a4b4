"""What every soft-label codec shares: :class:`SoftLabelCodec` and the soft-label helpers.

A soft label is one row of ``C`` class probabilities (or logits, declared by ``input`` and
``temperature``). A soft-label codec stores *per-row parts* (one row per label, streamed
on write and sliced on read) and, when it learns parameters (``vq``, ``pca``, ``quant``),
*shared parts* holding them. Decoders end with Eq. 9 of the soft-label paper,
``y~ = max(y, eps) / sum max(y, eps)``, and return float32 torch tensors ``[rows, C]``.

Fitting (the one way): :func:`codec.softlabels.fit` returns a new, fitted codec; a codec
never fits itself, and ``encode`` of a codec that needs parameters and has none raises.
"""

from __future__ import annotations

import abc
import copy
from typing import Any, Mapping, Self, Sequence

import numpy as np
import torch

from .._args import float_arg, int_arg
from ..errors import InvalidInputError
from ..format.layout import DTYPES
from ._tensors import as_tensor
from .base import Codec, Part, PartSpec
from .formulas import index_bits

__all__ = ["SoftLabelCodec", "INPUT_KINDS", "MAX_CLASSES", "check_common", "index_bits", "index_dtype_name",
           "index_dtype", "finite", "to_probs", "renorm_"]

INPUT_KINDS = ("probs", "logits")
#: Largest class count a soft-label codec accepts (a config read from a file cannot ask a
#: decoder to allocate rows x 2**40 floats).
MAX_CLASSES = 1 << 24


def check_common(classes: Any, input: Any, temperature: Any, eps: Any, who: str = "soft labels") -> tuple[int, str, float, float]:
    """The arguments every soft-label codec shares, validated: ``(classes, input, temperature, eps)``."""
    classes = int_arg(f"{who}: classes", classes, 2, MAX_CLASSES)
    if input not in INPUT_KINDS:
        raise InvalidInputError(f"{who}: input must be one of {INPUT_KINDS}, got {input!r}")
    temperature = float_arg(f"{who}: temperature", temperature, 0, lo_open=True)
    eps = float_arg(f"{who}: eps", eps, 0, 1, lo_open=True)
    if eps == 1:
        raise InvalidInputError(f"{who}: eps must be in (0, 1), got {eps!r}")
    return classes, input, temperature, eps


def index_dtype_name(bits: int) -> str:
    """The smallest unsigned .ddz dtype holding ``bits``-bit indices: "u8", "u16" or "u32"."""
    return "u8" if bits <= 8 else "u16" if bits <= 16 else "u32"


def index_dtype(bits: int) -> np.dtype:
    return DTYPES[index_dtype_name(bits)]


def finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` unchanged, or InvalidInputError (naming the first bad row of a 2-D ``t``) when it
    holds a NaN or an infinity, e.g. a stored part that would decode to NaN probabilities."""
    if t.is_floating_point() and not torch.isfinite(t).all():
        row = f" (row {int((~torch.isfinite(t)).any(1).nonzero()[0, 0])})" if t.ndim == 2 else ""
        raise InvalidInputError(f"{what} holds NaN or infinite values{row}")
    return t


def to_probs(x: Any, input: str = "probs", temperature: float = 1.0, *, classes: int | None = None,
             device: Any = None) -> torch.Tensor:
    """Soft labels as float32 probabilities: ``softmax(z / temperature)`` for logits
    (paper Sec. 3.1, ``y = softmax(z / tau)``), unchanged for probabilities."""
    t = as_tensor(x, "soft labels")
    if device is not None:
        t = t.to(device)
    if t.ndim != 2:
        raise InvalidInputError(f"soft labels must be 2-D (n, C), got shape {tuple(t.shape)}")
    if classes is not None and t.shape[1] != classes:
        raise InvalidInputError(f"soft labels have {t.shape[1]} classes, the codec expects {classes}")
    if not t.is_floating_point():
        raise InvalidInputError(f"soft labels must be floating point, got {t.dtype}")
    if input not in INPUT_KINDS:
        raise InvalidInputError(f"input must be one of {INPUT_KINDS}, got {input!r}")
    t = t.to(torch.float32)
    if input == "logits":
        t = torch.softmax(t / float(temperature), dim=1)
    # NaN/inf probabilities, or logits with NaN or +inf (their softmax is NaN)
    return finite(t, f"this batch of soft labels ({input})")


def renorm_(y: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 9 in place: ``y <- max(y, eps) / sum_l max(y_l, eps)`` row-wise."""
    y.clamp_min_(eps)
    y.div_(y.sum(1, keepdim=True))
    return y


class SoftLabelCodec(Codec):
    """A codec for soft labels (rows of class probabilities); see the module docstring.

    Subclasses implement ``encoded_parts`` (marking per-row parts), ``encode_rows`` (the
    per-row parts of a batch of labels) and ``decode_rows``; codecs with learned parameters
    also ``params``/``with_params`` and ``fitted``.
    """

    classes: int
    eps: float
    input: str
    temperature: float

    @property
    def fitted(self) -> bool:
        """Whether the codec holds what ``encode`` needs (codecs that learn nothing always do)."""
        return True

    @property
    def max_rows(self) -> int | None:
        """Rows the codec keeps of a longer stream (LPLD's pool), or None for all of them."""
        return None

    def row_parts(self) -> dict[str, PartSpec]:
        """The per-row parts (their ``shape[0]`` is 0 here: only dtype, row shape, bits and zstd count)."""
        return {p: s for p, s in self.encoded_parts((0, self.classes)).items() if s.per_row}

    def _rows(self, shape: Any) -> int:
        """Rows of an input ``shape`` ``(rows, classes)``, checked against the codec."""
        if not (isinstance(shape, (tuple, list)) and len(shape) == 2):
            raise InvalidInputError(f"{self.codec_id}: soft labels have shape (rows, classes), got {shape!r}")
        rows = int_arg(f"{self.codec_id}: rows", shape[0])
        if shape[1] != self.classes:
            raise InvalidInputError(f"{self.codec_id}: soft labels have {shape[1]} classes, the codec expects {self.classes}")
        return rows

    @abc.abstractmethod
    def encode_rows(self, x: Any) -> dict[str, np.ndarray]:
        """The per-row parts of the labels ``x`` ``(rows, C)``, as numpy arrays of the part dtypes."""

    @abc.abstractmethod
    def decode_rows(self, parts: Mapping[str, Any], *, rows: Sequence[int] | None = None, device: Any = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Renormalised probabilities ``[n, C]`` (float32) of the per-row ``parts`` of ``n`` rows.

        ``rows`` (the row ids those parts hold; default ``0..n-1``) is checked for length only:
        soft labels decode row by row. Learned parameters come from the codec (``with_params``).
        ``dtype`` is the matmul precision where there is one (VQ); output is float32.
        """

    def _check_rows(self, n: int, rows: Sequence[int] | None) -> None:
        if rows is not None and len(rows) != n:
            raise InvalidInputError(f"{self.codec_id}: parts hold {n} rows, {len(rows)} row ids given")

    def encode(self, x: Any) -> dict[str, Part]:
        if self.max_rows is not None:
            x = as_tensor(x, "soft labels")[: self.max_rows]
        rows = self.encode_rows(x)
        specs = self.encoded_parts((next(iter(rows.values())).shape[0] if rows else 0, self.classes))
        parts = {n: Part(a, bits=specs[n].bits, zstd=specs[n].zstd) for n, a in rows.items()}
        parts.update(self.params())
        return parts

    def decode(self, parts: Mapping[str, Any], *, device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        row = self.row_parts()
        missing = [p for p in row if p not in parts]
        if missing:
            raise InvalidInputError(f"{self.codec_id}: object lacks its row parts {missing}")
        codec = self.with_params({p: a for p, a in parts.items() if p not in row})
        return codec.decode_rows({p: parts[p] for p in row}, device=device, dtype=dtype)

    def with_params(self, parts: Mapping[str, Any]) -> Self:
        unknown = sorted(set(parts) - set(self.encoded_parts((0, self.classes))))
        if unknown:
            raise InvalidInputError(f"{self.codec_id}: parts {unknown} are not parts of this codec")
        return self

    def _copy_with(self, **params: torch.Tensor) -> Self:
        """A shallow copy with these parameter attributes replaced (the original is untouched)."""
        new = copy.copy(self)
        for name, value in params.items():
            setattr(new, name, value)
        return new


def param(x: Any, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """A stored or given learned parameter as a finite float32 tensor of ``shape`` (InvalidInputError otherwise)."""
    t = as_tensor(x, what)
    if tuple(t.shape) != tuple(shape):
        raise InvalidInputError(f"{what} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise InvalidInputError(f"{what} must be floating point, got {t.dtype}")
    return finite(t.detach().to(torch.float32), what)


def need(parts: Mapping[str, Any], name: str, who: str) -> Any:
    """The array of ``parts[name]`` (a :class:`Part` or an array), or InvalidInputError naming the missing part."""
    if name not in parts:
        raise InvalidInputError(f"{who}: missing part {name!r}")
    v = parts[name]
    return v.array if isinstance(v, Part) else v

