"""Argument checks shared by the layers above the byte format.

Each returns the value in canonical form or raises :class:`~codec.errors.InvalidInputError`
naming the argument, so that a bad argument never surfaces as torch's or Python's own
``TypeError`` / ``RuntimeError`` deep inside a computation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import InvalidInputError


def int_arg(name: str, v: Any, lo: int = 0, hi: int | None = None) -> int:
    """An integer (Python or numpy, not bool) in ``[lo, hi]``."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise InvalidInputError(f"{name} must be an integer {rng}, got {v!r}")
    return int(v)


def float_arg(name: str, v: Any, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False) -> float:
    """A finite real number (not bool) in ``[lo, hi]``, or ``(lo, hi]`` with ``lo_open``."""
    ok = not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
    if not ok or v > hi or v < lo or (lo_open and v == lo):
        rng = f"{'(' if lo_open or lo == -math.inf else '['}{lo:g}, {hi:g}{')' if hi == math.inf else ']'}"
        raise InvalidInputError(f"{name} must be a finite number in {rng}, got {v!r}")
    return float(v)


def parse_device(device: Any):
    """``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` / a ``torch.device`` (None: CPU) -> ``torch.device``, checked usable here.

    Raises :class:`InvalidInputError` for a name torch does not know, for CUDA (or MPS/XPU)
    when this torch build or machine has none, and for a device index that does not exist
    (instead of torch's RuntimeError / AssertionError deep inside a model call).
    """
    import torch

    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidInputError(f"unknown device {device!r}; use cpu, cuda, cuda:N, ...") from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None)
    is_available = getattr(backend, "is_available", None)
    if dev.type not in ("cuda", "mps", "xpu") or not callable(is_available):
        raise InvalidInputError(f"device {device!r} is not supported here; use cpu or cuda")
    if not is_available():
        raise InvalidInputError(f"device {device!r} was asked for, but this torch build or machine has no {dev.type.upper()} device")
    count = getattr(backend, "device_count", lambda: 1)()
    if dev.index is not None and dev.index >= count:
        raise InvalidInputError(f"device {device!r} does not exist ({count} {dev.type} device(s) visible)")
    return dev
