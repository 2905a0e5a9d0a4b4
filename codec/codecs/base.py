"""The codec interface (after numcodecs' ``Codec``) and the id -> class registry.

A codec turns one logical object (a VAE, a latent tensor, a soft-label set) into named
*parts*; each part becomes one section ``"{object}/{part}"`` of a .ddz file, and the
codec's JSON config is stored in the header's ``objects`` table so a reader can rebuild
the codec with :func:`codec_from_config` and decode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ..errors import DDZError, InvalidInputError, UnknownCodecError

_REGISTRY: dict[str, type["Codec"]] = {}


@dataclass(frozen=True)
class Part:
    """One array a codec stores, with how the container should store it."""

    array: Any
    bits: int | None = None  # bit-pack an integer array at this width
    zstd: int | None = None  # zstd level, or None for raw


class Codec:
    """Base class. Subclasses set ``codec_id`` and implement encode/decode/get_config."""

    codec_id: ClassVar[str]

    def encode(self, x: Any) -> dict[str, Part]:
        raise NotImplementedError

    def decode(self, parts: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

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
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self) -> str:
        cfg = self.get_config()
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k != "id")
        return f"{type(self).__name__}({args})"


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
