"""Temporaries the library creates beside a target, cleaned after a crash.

* :func:`make_temp` creates ``.{target name}.XXXXXXXX.tmp`` (a file) or ``....tmpdir`` (a
  folder) beside ``target`` and holds an exclusive ``flock`` on it for as long as it is open.
  A writer killed by ``kill -9`` leaves its temporary behind, but its lock dies with it, so
  :func:`clean_stale` (called by the next ``make_temp`` for the same target) removes exactly
  the temporaries of this naming whose lock it can take: never a live writer's, never another
  program's file.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from ..errors import FileAccessError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks, so no cleaning either
    fcntl = None  # type: ignore[assignment]

_SUFFIX = {"file": ".tmp", "dir": ".tmpdir"}
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def _parts(target: str) -> tuple[str, str]:
    full = os.path.abspath(target)
    return os.path.dirname(full), os.path.basename(full)


def _pattern(name: str, kind: str) -> re.Pattern:
    # tempfile's names: 8 characters of [a-z0-9_]
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}{re.escape(_SUFFIX[kind])}\Z")


def _lock(fd: int, block: bool) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        return True
    except OSError:
        return False


def make_temp(target: str, kind: str = "file") -> tuple[int, str]:
    """``(fd, path)`` of a new locked temporary beside ``target`` (an open file, or an open
    read-only descriptor of a new folder). Stale temporaries of ``target`` are removed first.
    The caller closes ``fd`` when done (which releases the lock)."""
    folder, name = _parts(target)
    clean_stale(target, kind)
    while True:
        try:
            if kind == "file":
                fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=_SUFFIX[kind], dir=folder)
            else:
                path = tempfile.mkdtemp(prefix=f".{name}.", suffix=_SUFFIX[kind], dir=folder)
                fd = os.open(path, os.O_RDONLY | _DIRECTORY)
        except OSError as exc:
            raise FileAccessError(f"cannot create a temporary in {folder!r}: {exc.strerror}") from None
        _lock(fd, block=True)
        if os.fstat(fd).st_nlink:  # a cleaner did not remove it between its creation and our lock
            return fd, path
        os.close(fd)


def clean_stale(target: str, kind: str = "file") -> list[str]:
    """Remove the temporaries of ``target`` (this module's naming) whose owner is gone; returns them."""
    if fcntl is None:
        return []
    folder, name = _parts(target)
    pattern = _pattern(name, kind)
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if pattern.match(e.name)]
    except OSError:
        return []
    for entry in entries:
        try:
            if not (entry.is_dir(follow_symlinks=False) if kind == "dir" else entry.is_file(follow_symlinks=False)):
                continue
            fd = os.open(entry.path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | (_DIRECTORY if kind == "dir" else 0))
        except OSError:
            continue
        try:
            if not _lock(fd, block=False):
                continue  # its writer is alive
            st, now = os.fstat(fd), os.lstat(entry.path)
            if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                continue
            if kind == "dir":
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed.append(entry.path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_quietly(path: str) -> None:
    """``os.unlink(path)``, ignoring every failure (used while already reporting one)."""
    try:
        os.unlink(path)
    except OSError:
        pass
