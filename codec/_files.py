"""Opening files found in folders or named by users: regular files only.

A path that comes from a directory listing (relabel batches, clips, frame images, FKD label
trees) or from a user may name a FIFO, a socket or a device, and opening one for reading blocks
or never ends. :func:`open_regular` opens with ``O_NONBLOCK`` (so a FIFO cannot block the open),
checks with ``fstat`` that what it opened is a regular file (so a path swapped after a check is
caught), then reads normally.
"""

from __future__ import annotations

import os
import stat

from .errors import FormatError, InvalidInputError

__all__ = ["open_regular", "is_regular"]


def open_regular(path: str | os.PathLike, what: str = "file"):
    """Open ``path`` for binary reading if it is a regular file (symlinks to one are followed);
    a missing or unreadable path is an :class:`InvalidInputError`, anything that is not a
    regular file a :class:`FormatError`. Never blocks."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot open {what}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FormatError(f"{path}: not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_regular(path: str | os.PathLike) -> bool:
    """True if ``path`` is (or links to) a regular file; never opens it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
