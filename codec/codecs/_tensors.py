"""``as_tensor``: the one array -> torch tensor conversion the codecs share."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError


def as_tensor(x: Any, what: str = "input") -> torch.Tensor:
    """``x`` (torch tensor, numpy array or memmap, list or scalar) as a torch tensor.

    Tensors pass through; numpy arrays are wrapped without a copy where torch supports the
    dtype; unsigned integers wider than 8 bits (stored indices) become int64, which every
    torch op accepts. Raw bf16 arrays (dtype ``V2``, from a .ddz read with
    ``framework="numpy"``) and non-numeric dtypes raise :class:`InvalidInputError` naming ``what``.
    """
    if isinstance(x, torch.Tensor):
        return x
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInputError(f"{what}: cannot convert {type(x).__name__} to a tensor: {exc}") from None
    if x.dtype.kind == "V":
        raise InvalidInputError(f"{what}: cannot read raw bf16 numpy arrays; ask for torch tensors")
    if x.dtype.kind not in "biuf":
        raise InvalidInputError(f"{what}: expected a numeric array, got dtype {x.dtype}")
    if x.dtype.kind == "u" and x.dtype.itemsize > 1:
        return torch.from_numpy(x.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(x))
