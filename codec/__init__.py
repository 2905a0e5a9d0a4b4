"""ddz: compression codecs and the .ddz container for distilled datasets."""

from .bits import pack_bits, unpack_bits
from .errors import (BudgetError, ChecksumError, DDZError, FileAccessError, FormatError, InvalidInputError,
                     LimitError, MemoryLimitError, SectionNotFoundError, ShardError, TruncatedError, UnknownCodecError,
                     UnsupportedVersionError)
from .format import DDZFile, DDZSet, SectionInfo, Writer, open, save_file

__version__ = "0.1.0"


def __getattr__(name: str):
    # codec.load pulls in torch and diffusers; import it on first use so `import codec` stays light.
    if name == "load":
        from .loader import load

        return load
    raise AttributeError(f"module 'codec' has no attribute {name!r}")

__all__ = [
    "load", "pack_bits", "unpack_bits", "open", "save_file", "Writer", "DDZFile", "DDZSet", "SectionInfo", "ShardError",
    "DDZError", "FormatError", "TruncatedError", "ChecksumError", "UnsupportedVersionError", "LimitError",
    "UnknownCodecError", "InvalidInputError", "SectionNotFoundError", "BudgetError", "FileAccessError",
    "MemoryLimitError",
]
