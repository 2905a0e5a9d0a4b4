"""The .ddz byte format: preamble, JSON header, aligned sections (spec/ddz.md), read from a local file or an
fsspec URL through one byte-source layer (:mod:`.source`), and sharded sets of files (spec/sets.md). No ML here."""

from .header import Header, SectionInfo
from .layout import DEFAULT_ALIGNMENT, DTYPES, MAGIC, MAJOR, MINOR, PREAMBLE_SIZE
from .reader import DDZFile, open
from .sets import DDZSet, new_set_id, shard_metadata, shard_name, write_set_index
from .writer import SectionWriter, Writer, save_file

__all__ = ["DDZFile", "DDZSet", "Header", "SectionInfo", "SectionWriter", "Writer", "open", "save_file",
           "new_set_id", "shard_metadata", "shard_name", "write_set_index",
           "DEFAULT_ALIGNMENT", "DTYPES", "MAGIC", "MAJOR", "MINOR", "PREAMBLE_SIZE"]
