"""The .ddz byte format: preamble, JSON header, aligned sections (spec/ddz.md). No ML here."""

from .header import Header, SectionInfo
from .layout import DEFAULT_ALIGNMENT, DTYPES, MAGIC, MAJOR, MINOR, PREAMBLE_SIZE
from .reader import DDZFile, open
from .writer import SectionWriter, Writer, save_file

__all__ = ["DDZFile", "Header", "SectionInfo", "SectionWriter", "Writer", "open", "save_file",
           "DEFAULT_ALIGNMENT", "DTYPES", "MAGIC", "MAJOR", "MINOR", "PREAMBLE_SIZE"]
