"""Codecs (numcodecs-style): each has an id, encode/decode and a JSON config; see :mod:`codec.codecs.base`."""

from .base import BudgetTerm, Codec, Part, PartSpec, codec_from_config, register_codec, registered_codecs
from .objects import object_codec, read_object, write_object

# every built-in codec registers its id on import, so any stored config can be rebuilt
from . import int8, lpld, pca, quant, topk, tucker, vq  # noqa: F401 - importing registers each id

__all__ = ["Codec", "Part", "PartSpec", "BudgetTerm", "codec_from_config", "register_codec", "registered_codecs",
           "object_codec", "read_object", "write_object"]
