"""The codec contract (after numcodecs' ``Codec`` and zarr's codec ABC) and the id -> class registry.

A codec turns one logical object (a VAE, a latent tensor, a soft-label set) into named
*parts*; each part becomes one section ``"{object}/{part}"`` of a .ddz file, and the
codec's JSON config is stored in the header's ``objects`` table so a reader can rebuild
the codec with :func:`codec_from_config` and decode.

The contract every registered codec keeps (``tests/test_codec_conformance.py`` checks it
for each id, and ``tests/golden/codecs/`` holds one file per id that must keep reading
and re-encoding byte for byte):

* ``get_config()`` is JSON and holds everything ``encode`` and ``decode`` need, except a
  fitted codec's learned parameters, which are stored parts (``params()``);
  ``codec_from_config(json.loads(json.dumps(c.get_config()))).with_params(c.params())``
  equals ``c`` and encodes the same input to the same bytes.
* ``encode`` and ``decode`` never change the codec.
* ``encoded_parts(shape)``: what ``encode`` stores for an input of that shape, as
  :class:`PartSpec` rows (dtype, shape, bit width, zstd, per-row or shared): the one size
  hook (zarr's ``compute_encoded_size``) used for budgets, streaming writes and checks of
  stored parts.
* ``budget_terms(shapes)``: for stored parts of those shapes, the paper's formula term each
  is counted under (:class:`BudgetTerm`): the one hook the accountant asks.
"""

from __future__ import annotations

import abc
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from ..errors import DDZError, InvalidInputError, UnknownCodecError
from ..format.layout import DTYPES
from ._tensors import as_tensor

_REGISTRY: dict[str, type["Codec"]] = {}


@dataclass(frozen=True)
class Part:
    """One array a codec stores, with how the container should store it."""

    array: Any
    bits: int | None = None  # bit-pack an integer array at this width
    zstd: int | None = None  # zstd level, or None for raw


@dataclass(frozen=True)
class PartSpec:
    """How ``encode`` stores one part: .ddz dtype name, full shape, bit width and zstd level.

    ``per_row`` parts have one entry per input row along axis 0 (soft-label indices, Tucker
    core rows): a reader can slice them by rows and a writer can stream them; the other
    parts (codebooks, factors, scales) are shared by all rows.
    """

    dtype: str
    shape: tuple[int, ...]
    bits: int | None = None
    zstd: int | None = None
    per_row: bool = False

    @property
    def count(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def nbytes(self) -> int:
        """Stored bytes before any zstd: ``ceil(count * bits / 8)`` bit-packed, else count x itemsize."""
        if self.bits is not None:
            return -(-self.count * self.bits // 8)
        return self.count * DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class BudgetTerm:
    """How the accountant counts one stored part (spec/budget.md).

    ``label``: the formula term (``"S12 codebook: k*dc*4"``) or why the part is in none;
    ``formula_bytes``: that term's value in bytes for the stored shape, or None;
    ``covers``: further parts whose bytes the same value covers (an entropy-coded index
    stream split in two planes); ``log2_of``: the formula counts ``log2(log2_of)`` bits per
    value where storage uses whole bits; ``formula_dtype``: the dtype the formula assumes
    when storage may differ (fp32 in S12 vs an fp16 codebook).
    """

    label: str
    formula_bytes: float | None = None
    covers: tuple[str, ...] = ()
    log2_of: int | None = None
    formula_dtype: str | None = None


class Codec(abc.ABC):
    """Base class; see the module docstring for the contract. Subclasses set ``codec_id``."""

    codec_id: ClassVar[str]

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """``{"id": codec_id, ...}``: JSON, and with :meth:`params` all that encode/decode need."""

    @abc.abstractmethod
    def encode(self, x: Any) -> dict[str, Part]:
        """``x`` -> named parts. Leaves the codec unchanged."""

    @abc.abstractmethod
    def decode(self, parts: Mapping[str, Any]) -> Any:
        """Named parts (as read from a file) -> the object. Leaves the codec unchanged."""

    @abc.abstractmethod
    def encoded_parts(self, shape: Any) -> dict[str, PartSpec]:
        """What :meth:`encode` stores for an input of ``shape``: ``{part: PartSpec}``, in the order encoded."""

    def budget_terms(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, BudgetTerm]:
        """``{part: BudgetTerm}`` for stored parts of ``shapes``; parts left out are in no formula."""
        return {}

    def params(self) -> dict[str, Part]:
        """Learned parameters as the parts that store them (empty for a codec that learns nothing)."""
        return {}

    def with_params(self, parts: Mapping[str, Any]) -> "Codec":
        """A codec equal to this one with the learned parameters of ``parts`` (self is unchanged)."""
        return self

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Codec":
        cfg = dict(config)
        cfg.pop("id", None)
        try:
            return cls(**cfg)
        except (TypeError, ValueError, AttributeError) as exc:  # wrong keys or wrongly typed values
            if isinstance(exc, DDZError):
                raise
            raise InvalidInputError(f"bad config for codec {cls.codec_id!r}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other) or not isinstance(other, Codec) or self.get_config() != other.get_config():
            return False
        mine, theirs = self.params(), other.params()
        return mine.keys() == theirs.keys() and all(_same(mine[k].array, theirs[k].array) for k in mine)

    def __repr__(self) -> str:
        cfg = self.get_config()
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k != "id")
        return f"{type(self).__name__}({args})"


def _same(a: Any, b: Any) -> bool:
    """Same dtype, shape and values (learned parameters are compared exactly)."""
    ta, tb = as_tensor(a).detach().cpu(), as_tensor(b).detach().cpu()
    return ta.dtype == tb.dtype and ta.shape == tb.shape and torch.equal(ta, tb)


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make ``cls`` reachable from its ``codec_id``."""
    if cls.codec_id in _REGISTRY and _REGISTRY[cls.codec_id] is not cls:
        raise ValueError(f"codec id {cls.codec_id!r} registered twice")
    _REGISTRY[cls.codec_id] = cls
    return cls


def codec_from_config(config: Mapping[str, Any]) -> Codec:
    """Rebuild a codec from ``get_config()`` output (its ``"id"`` picks the class)."""
    if not isinstance(config, Mapping) or not isinstance(config.get("id"), str):
        raise InvalidInputError(f"codec config must be an object with a string 'id', got {json.dumps(config, default=str)[:80]}")
    cls = _REGISTRY.get(config["id"])
    if cls is None:
        raise UnknownCodecError(f"unknown codec id {config['id']!r}; known: {sorted(_REGISTRY)}")
    return cls.from_config(config)


def registered_codecs(kind: type | None = None) -> list[str]:
    """Registered codec ids (only those whose class is a subclass of ``kind``, if given)."""
    return sorted(cid for cid, cls in _REGISTRY.items() if kind is None or issubclass(cls, kind))
