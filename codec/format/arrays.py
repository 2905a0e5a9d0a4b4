"""Conversions between user arrays (numpy or torch, any device) and stored little-endian numpy."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .layout import DTYPES

_NUMPY_TO_NAME = {v: k for k, v in DTYPES.items() if k != "bf16"}


def as_path(path: Any) -> str:
    """``os.fspath(path)``, with a codec error for anything that is not a path."""
    try:
        return os.fspath(path)
    except TypeError:
        raise InvalidInputError(f"expected a file path (str or os.PathLike), got {type(path).__name__}") from None


def is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "device")


def to_storage(x: Any, what: str) -> tuple[np.ndarray, str]:
    """Return ``(contiguous little-endian numpy array, dtype name)`` for a numpy array or torch tensor."""
    if is_torch(x):
        import torch

        t = x.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16), "bf16"
        try:
            arr = t.numpy()
        except TypeError as exc:
            raise InvalidInputError(f"{what}: torch dtype {t.dtype} cannot be stored ({exc})") from None
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        raise InvalidInputError(f"{what}: expected a numpy array or torch tensor, got {type(x).__name__}")
    le = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    name = _NUMPY_TO_NAME.get(np.dtype(le))
    if name is None:
        raise InvalidInputError(f"{what}: dtype {arr.dtype} is not storable; use one of {', '.join(DTYPES)}")
    return np.asarray(arr, dtype=le, order="C"), name


def to_framework(arr: np.ndarray, dtype: str, framework: str, device: Any, what: str):
    """Hand a decoded array out as numpy or as a torch tensor on ``device``."""
    if framework == "numpy":
        if device not in (None, "cpu"):
            raise InvalidInputError(f"{what}: device={device!r} needs framework='torch'")
        if dtype == "bf16":
            raise InvalidInputError(f"{what}: bf16 has no numpy dtype; use framework='torch'")
        return arr
    if framework != "torch":
        raise InvalidInputError(f"{what}: framework must be 'numpy' or 'torch', got {framework!r}")
    import torch

    t = torch.from_numpy(arr)
    if dtype == "bf16":
        t = t.view(torch.int16).view(torch.bfloat16)
    return to_device(t, device, what)


def to_device(t, device: Any, what: str):
    """``t.to(device)``; an unknown or unavailable device is an InvalidInputError."""
    if device is None:
        return t
    try:
        return t.to(device)
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:  # torch's ways of refusing a device
        raise InvalidInputError(f"{what}: cannot use device {device!r}: {str(exc).splitlines()[0][:120]}") from None
