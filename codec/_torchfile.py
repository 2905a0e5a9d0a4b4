"""Reading the ``torch.save`` files research code writes, without unpickling arbitrary objects.

SRe2L / CDA / LPLD relabel files, FKD's per-image label files and LVDD's
``synthetic_data.pt`` are pickles inside torch's zip container.  They are read only with
``torch.load(weights_only=True)`` (torch's restricted unpickler: tensors, containers and
plain Python values).  Two of them also hold numpy objects, which that unpickler refuses:

* SRe2L/LPLD CutMix trees: ``rand_bbox`` returns ``numpy.int64`` values (``np.clip`` of Python
  ints), pickled as ``numpy._core.multiarray.scalar(dtype, bytes)``;
* FKD label files: numpy arrays (``coords.numpy()``, ``np.float16(...)``), pickled as
  ``numpy._core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')`` + ``__setstate__``.

``numpy=True`` lets exactly these through, with torch's own allow-list mechanism
(``torch.serialization.safe_globals``) and narrow stand-ins instead of the numpy callables:

* ``numpy.dtype`` -> :func:`_dtype`: only bool, (u)int8..64 and float16/32/64 dtypes;
* the numeric dtype classes (``numpy.dtypes.Float16DType`` ...), which ``BUILD`` needs;
* ``numpy._core.multiarray.scalar`` (and NumPy 1.x's ``numpy.core.multiarray.scalar``) ->
  :func:`_scalar`: a scalar of one of those dtypes from its exact bytes;
* ``numpy._core.multiarray._reconstruct`` (and ``numpy.core...``) -> :func:`_reconstruct`:
  only the empty placeholder ``ndarray.__reduce__`` writes (``(numpy.ndarray, (0,), b'b')``);
  the data then comes from ``__setstate__`` and is as long as the file's bytes;
* ``numpy.ndarray`` -> :class:`_PickledArray`, a subclass that cannot be constructed from the
  file (so a pickled ``ndarray(shape)`` call cannot allocate memory the file does not hold).

Everything else (object arrays, structured dtypes, any other global) is refused, and the
result is checked again after loading: every array and numpy scalar must have one of the
numeric dtypes.  Every failure is a :class:`~codec.errors.FormatError` naming the file.
Only regular files are opened (a FIFO or device would block or never end).  torch's
allow-list is process-wide, so while a read with ``numpy=True`` runs, a ``torch.load`` in
another thread also accepts these stand-ins (and nothing more); the entries a caller had
allowed before are left in place afterwards.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import torch

from ._files import open_regular
from .errors import FormatError

__all__ = ["read_torch_file", "NUMPY_DTYPES"]

try:  # NumPy >= 2 (and 1.26, which ships the alias)
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - NumPy 1.x without numpy._core
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

#: dtype codes (``np.dtype.__reduce__``'s first argument) a file may use: bool, ints, floats.
NUMPY_DTYPES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")
_ALLOWED = frozenset(np.dtype(c) for c in NUMPY_DTYPES) | frozenset(np.dtype(c).newbyteorder(">") for c in NUMPY_DTYPES)
_MAX_DEPTH = 64


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """Stand-in for ``numpy.dtype`` in the unpickler: numeric dtypes only."""
    if not isinstance(spec, str) or spec not in NUMPY_DTYPES:
        raise FormatError(f"numpy dtype {spec!r} is not one of the numeric dtypes these files use {NUMPY_DTYPES}"[:200])
    return np.dtype(spec, bool(align), bool(copy))


def _numeric(dt: Any) -> bool:
    return isinstance(dt, np.dtype) and dt in _ALLOWED and dt.fields is None and dt.subdtype is None


def _scalar(dt: Any, data: Any = None) -> Any:
    """Stand-in for ``numpy._core.multiarray.scalar``: a numeric scalar from its exact bytes."""
    if not _numeric(dt) or not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise FormatError(f"numpy scalar of dtype {dt!r} from {type(data).__name__} is not a plain numeric scalar"[:200])
    return _multiarray.scalar(dt, data)


class _PickledArray(np.ndarray):
    """An ndarray read from a file; only :func:`_reconstruct` creates one (empty)."""

    def __new__(cls, *args: Any, **kwargs: Any):
        raise FormatError("a pickled numpy.ndarray(...) constructor call is refused")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """Stand-in for ``numpy._core.multiarray._reconstruct``: the empty placeholder array that
    ``ndarray.__reduce__`` writes before its ``__setstate__`` (nothing else)."""
    if subtype is not _PickledArray or shape != (0,) or dtype not in (b"b", "b"):
        raise FormatError(f"numpy _reconstruct{(getattr(subtype, '__name__', subtype), shape, dtype)!r} is not "
                          "the ndarray placeholder numpy pickles"[:200])
    return np.ndarray.__new__(_PickledArray, (0,), "b")


def _numpy_globals() -> list:
    out: list = [(_dtype, "numpy.dtype"), (_PickledArray, "numpy.ndarray")]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):  # NumPy 2 / NumPy 1.x writers
        out += [(_scalar, f"{mod}.scalar"), (_reconstruct, f"{mod}._reconstruct")]
    for code in NUMPY_DTYPES:  # BUILD (dtype.__setstate__) needs the instance's class allowed
        cls = type(np.dtype(code))
        out.append((cls, f"numpy.dtypes.{cls.__name__}"))
    return out


_LOCK = threading.Lock()


def _plain(obj: Any, depth: int = 0) -> Any:
    """``obj`` with every :class:`_PickledArray` turned into a plain ndarray, dtypes checked."""
    if depth > _MAX_DEPTH:
        raise FormatError(f"nested more than {_MAX_DEPTH} levels deep")
    if isinstance(obj, np.ndarray):
        if not _numeric(obj.dtype):
            raise FormatError(f"numpy array of dtype {obj.dtype} (only {NUMPY_DTYPES} are read)")
        return obj.view(np.ndarray) if type(obj) is not np.ndarray else obj
    if isinstance(obj, np.generic):
        if not _numeric(obj.dtype):
            raise FormatError(f"numpy scalar of dtype {obj.dtype} (only {NUMPY_DTYPES} are read)")
        return obj
    if isinstance(obj, list):
        return [_plain(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v, depth + 1) for v in obj)
    if isinstance(obj, dict):
        return {k: _plain(v, depth + 1) for k, v in obj.items()}
    return obj


def read_torch_file(path: str | os.PathLike, *, numpy: bool = False, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")`` of a regular file, with the
    numpy allow-list above when ``numpy=True``; any refusal or corruption is a FormatError."""
    path = os.fspath(path)
    with open_regular(path, what) as fh:
        try:
            if numpy:
                with _LOCK:
                    have = set(torch.serialization.get_safe_globals())
                    extra = [g for g in _numpy_globals() if g not in have]
                    with torch.serialization.safe_globals(extra):
                        obj = torch.load(fh, map_location="cpu", weights_only=True)
            else:
                obj = torch.load(fh, map_location="cpu", weights_only=True)
            return _plain(obj)
        except FormatError as exc:
            raise FormatError(f"{path}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any refusal or corruption of a foreign file is a format error
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            why = [ln for ln in lines if "WeightsUnpickler error" in ln]  # torch's reason, after its advice text
            msg = (why or lines or [""])[0].replace("WeightsUnpickler error: ", "").split(". Please use")[0]
            raise FormatError(f"{path}: cannot be read with torch.load(weights_only=True): {type(exc).__name__}: {msg}"[:400]) from None
