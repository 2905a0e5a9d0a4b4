"""Codecs (numcodecs-style): each has an id, encode/decode and a JSON config."""

from .base import Codec, Part, codec_from_config, register_codec, registered_codecs
from .objects import object_codec, read_object, write_object

__all__ = ["Codec", "Part", "codec_from_config", "register_codec", "registered_codecs",
           "object_codec", "read_object", "write_object"]
