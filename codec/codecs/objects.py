"""Storing a codec-encoded object as sections of a .ddz, and reading it back."""

from __future__ import annotations

from typing import Any

from ..errors import FormatError, InvalidInputError, SectionNotFoundError, UnknownCodecError
from ..format import DDZFile, Writer
from .base import Codec, Part, codec_from_config


def write_object(writer: Writer, name: str, codec: Codec, x: Any) -> dict[str, str]:
    """Encode ``x`` with ``codec`` and write its parts as sections ``"{name}/{part}"``."""
    sections = {}
    for part, value in codec.encode(x).items():
        p = value if isinstance(value, Part) else Part(value)
        section = f"{name}/{part}"
        writer.add(section, p.array, bits=p.bits, zstd=p.zstd)
        sections[part] = section
    writer.add_object(name, codec.get_config(), sections)
    return sections


def object_codec(file: DDZFile, name: str) -> Codec:
    """The codec recorded for object ``name``."""
    obj = file.objects.get(name)
    if obj is None:
        raise SectionNotFoundError(f"no object {name!r} in {file.path}; objects: {sorted(file.objects)}")
    try:
        return codec_from_config(obj["codec"])
    except UnknownCodecError as exc:
        raise UnknownCodecError(f"object {name!r}: {exc}") from None
    except InvalidInputError as exc:  # the config came from the file
        raise FormatError(f"object {name!r} has an invalid codec config: {exc}") from None


def read_object(file: DDZFile, name: str, *, framework: str = "torch", device: Any = None) -> Any:
    """Rebuild object ``name``: its codec from the stored config, then ``decode`` of its parts."""
    codec = object_codec(file, name)
    parts = {part: file.get(sec, framework=framework, device=device) for part, sec in file.objects[name]["sections"].items()}
    try:
        return codec.decode(parts)
    except (KeyError, ValueError, RuntimeError, IndexError) as exc:
        raise FormatError(f"object {name!r} does not decode with codec {codec.codec_id!r}: {exc}") from None
