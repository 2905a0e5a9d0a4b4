"""Exception types. Every failure the library reports is a :class:`DDZError`."""

from __future__ import annotations


class DDZError(Exception):
    """Base class of every error raised by ``codec``.

    ``section`` and ``offset`` name where in a file the problem is, when known.
    """

    def __init__(self, message: str, *, section: str | None = None, offset: int | None = None):
        self.section = section
        self.offset = offset
        where = []
        if section is not None:
            where.append(f"section {section!r}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class FormatError(DDZError):
    """The bytes do not follow spec/ddz.md (bad magic, bad header, bad layout)."""


class TruncatedError(FormatError):
    """The file ends before a structure it declares."""


class ChecksumError(FormatError):
    """A stored CRC-32 does not match the bytes it covers."""


class UnsupportedVersionError(FormatError):
    """The file's major version is not one this reader implements."""


class LimitError(FormatError):
    """A declared size or count exceeds a hard limit of the format."""


class ShardError(FormatError):
    """A sharded set's index and one of its shards disagree (truncated, replaced, or from another set)."""


class UnknownCodecError(DDZError):
    """A codec id that this installation does not implement."""


class InvalidInputError(DDZError, ValueError):
    """An argument given to a writer, encoder or command is not acceptable."""


class SectionNotFoundError(DDZError, KeyError):
    """No section (or object) of that name in the file."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return Exception.__str__(self)


class BudgetError(DDZError):
    """A planned file does not fit its storage budget."""


class FileAccessError(DDZError, OSError):
    """The file cannot be opened, read or written (missing, permissions, disk full)."""


class MemoryLimitError(DDZError, MemoryError):
    """Decoding needs more memory than this process can get (the file may be sound: a smaller
    read, e.g. ``get_rows``, or a machine with more memory can still read it)."""
