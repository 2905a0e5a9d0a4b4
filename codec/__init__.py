"""ddz: compression codecs and the .ddz container for distilled datasets."""

from .bits import pack_bits, unpack_bits
from .errors import (BudgetError, ChecksumError, DDZError, FileAccessError, FormatError, InvalidInputError,
                     LimitError, SectionNotFoundError, TruncatedError, UnknownCodecError, UnsupportedVersionError)
from .format import DDZFile, SectionInfo, Writer, open, save_file

__version__ = "0.1.0"

__all__ = [
    "pack_bits", "unpack_bits", "open", "save_file", "Writer", "DDZFile", "SectionInfo",
    "DDZError", "FormatError", "TruncatedError", "ChecksumError", "UnsupportedVersionError", "LimitError",
    "UnknownCodecError", "InvalidInputError", "SectionNotFoundError", "BudgetError", "FileAccessError",
]
