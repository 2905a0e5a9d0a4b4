"""What a reader may allocate.

A file can declare far more decoded data than it stores (zstd up to 32768x, spec/ddz.md 4.2), and
codecs build outputs whose size follows from stored shapes. Before such an allocation a reader calls
:func:`reserve`, which compares the request with the memory this process can still get (the
address-space limit ``RLIMIT_AS``, the cgroup's memory limit, and the kernel's ``MemAvailable``),
so a request the machine cannot honour is a :class:`~codec.errors.MemoryLimitError` naming what
asked for it, instead of a raw ``MemoryError`` or an OOM kill half-way through. Whatever still
fails to allocate (numpy's ``MemoryError``, torch's allocator ``RuntimeError``) is converted to the
same error at the reader's public methods by :func:`allocation_guard`.
"""

from __future__ import annotations

import contextlib
import functools
import os

from ..errors import MemoryLimitError

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

#: Requests below this size are not checked (reading /proc costs more than they do).
CHECK_FROM = 64 << 20
_ALLOC_MESSAGES = ("DefaultCPUAllocator", "out of memory", "Out of memory", "can't allocate memory",
                   "not enough memory", "Cannot allocate memory")


def _read_int(path: str) -> int | None:
    try:
        with open(path, "rb") as fh:
            text = fh.read(64).strip()
        return int(text)
    except (OSError, ValueError):
        return None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as fh:
            fields = dict(line.split(b":", 1) for line in fh.read().splitlines() if b":" in line)
        kb = int(fields[b"MemAvailable"].split()[0]) + int(fields.get(b"SwapFree", b"0 kB").split()[0])
        return kb * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _address_space_left() -> int | None:
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return soft - pages * os.sysconf("SC_PAGE_SIZE")


def _cgroup_left() -> int | None:
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim = _read_int(limit)
        if lim is not None and lim < 1 << 60:
            use = _read_int(usage)
            return None if use is None else lim - use
    return None


def memory_headroom() -> int | None:
    """Bytes this process can still allocate, as far as the OS says (None: no known limit)."""
    known = [v for v in (_address_space_left(), _cgroup_left(), _meminfo_available()) if v is not None]
    return max(0, min(known)) if known else None


def _fmt(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def reserve(nbytes: int, what: str, *, section: str | None = None) -> None:
    """Raise :class:`MemoryLimitError` when ``nbytes`` cannot be allocated by this process."""
    if nbytes < CHECK_FROM:
        return
    room = memory_headroom()
    if room is not None and nbytes > room:
        raise MemoryLimitError(f"{what} needs {_fmt(nbytes)} ({nbytes:,} bytes), more than the {_fmt(room)} "
                               "this process can still allocate", section=section)


def is_allocation_failure(exc: BaseException) -> bool:
    """True for numpy's/Python's MemoryError and torch's allocator RuntimeError (CPU or CUDA)."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _ALLOC_MESSAGES)


@contextlib.contextmanager
def allocation_guard(what: str):
    """Turn an allocation failure inside the block into a :class:`MemoryLimitError` about ``what``."""
    try:
        yield
    except MemoryLimitError:
        raise
    except (MemoryError, RuntimeError) as exc:
        if not is_allocation_failure(exc):
            raise
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise MemoryLimitError(f"{what}: out of memory ({first})") from None


def guarded(what: str):
    """Decorator form of :func:`allocation_guard` for a reader's public methods."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with allocation_guard(f"{what}.{fn.__name__}"):
                return fn(*args, **kwargs)

        return wrapper

    return deco
