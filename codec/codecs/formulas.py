"""The per-row storage formulas of the soft-label paper's supplement (Eq. S11, S12, S15-S17), in bytes.

Each soft-label codec counts its stored parts with these (its ``budget_terms`` hook), and
:mod:`codec.budget.formulas` builds the printed ``IPC x C x EPOCHS`` forms on them.
Functions return **bytes** (a float where the printed formula uses the real-valued
``log2``); ``*_stored_row_terms`` give what a real ``.ddz`` stores for the same terms:
whole bits per index (``ceil(log2 k)``) and whole bytes per bit-packed section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._args import int_arg
from ..errors import InvalidInputError

FP16 = 2
FP32 = 4


def _pos_int(name: str, v) -> int:
    """A positive integer; an integral float (``10.0``, as JSON configs carry) counts as one."""
    return int_arg(name, int(v) if isinstance(v, float) and v.is_integer() else v, 1)


def index_bits(k: int) -> int:
    """``ceil(log2 k)`` (at least 1): bits per stored index into ``range(k)``."""
    return max(1, (int(k) - 1).bit_length())


def bits_for(n: int) -> int:
    """Whole bits needed to store an index in ``range(n)``: ``ceil(log2 n)`` (at least 1)."""
    return index_bits(_pos_int("count", n))


@dataclass(frozen=True)
class Terms:
    """A formula split into its named terms (bytes each)."""

    terms: dict

    @property
    def total(self) -> float:
        return sum(self.terms.values())


def s11_rows(n: int, classes: int) -> int:
    """Eq. S11 for ``n`` stored dense fp16 soft labels: ``n*C*2`` bytes."""
    return _pos_int("rows", n) * _pos_int("classes", classes) * FP16


def _vq_check(dh: int, dc: int, k: int) -> tuple[int, int, int]:
    dh, dc, k = _pos_int("dh", dh), _pos_int("dc", dc), _pos_int("k", k)
    if dh % dc:
        raise InvalidInputError(f"dh={dh} must be divisible by dc={dc} (m = dh/dc segments, Eq. 3)")
    if k < 2:
        raise InvalidInputError(f"k must be at least 2, got {k}")
    return dh, dc, k


def s12_row_terms(n: int, classes: int, dh: int, dc: int, k: int) -> Terms:
    """Eq. S12's terms for ``n`` stored soft labels (``n = IPC*C*EPOCHS`` in the paper):
    batch data ``n*(dh/dc)*log2(k)/8`` (real log2), decoder ``C*dh*4``, codebook ``k*dc*4`` bytes."""
    dh, dc, k = _vq_check(dh, dc, k)
    n, classes = _pos_int("rows", n), _pos_int("classes", classes)
    return Terms({
        "indices": n * (dh // dc) * math.log2(k) / 8,
        "decoder": classes * dh * FP32,
        "codebook": k * dc * FP32,
    })


def s12_stored_row_terms(n, classes, dh, dc, k, param_bytes: int = FP32) -> Terms:
    """:func:`s12_stored_terms` for ``n`` stored soft labels."""
    dh, dc, k = _vq_check(dh, dc, k)
    n, classes = _pos_int("rows", n), _pos_int("classes", classes)
    return Terms({
        "indices": math.ceil(n * (dh // dc) * bits_for(k) / 8),
        "decoder": classes * dh * param_bytes,
        "codebook": k * dc * param_bytes,
    })


def s15_row_terms(n: int, classes: int, k: int) -> Terms:
    """Eq. S15's terms for ``n`` stored soft labels: values ``n*2k`` and indices
    ``n*log2(C)/8*k`` bytes (real log2)."""
    n, classes, k = _pos_int("rows", n), _pos_int("classes", classes), _pos_int("k", k)
    if classes < 2:
        raise InvalidInputError(f"top-k needs at least 2 classes, got {classes}")
    if k > classes:
        raise InvalidInputError(f"top-k k={k} exceeds classes={classes}")
    return Terms({"values": n * 2 * k, "indices": n * math.log2(classes) / 8 * k})


def s15_stored_row_terms(n, classes, k) -> Terms:
    """:func:`s15_stored_terms` for ``n`` stored soft labels."""
    s15_row_terms(n, classes, k)  # same validation as the formula
    return Terms({"values": n * k * FP16, "indices": math.ceil(n * k * bits_for(classes) / 8)})


def s16_row_terms(n: int, classes: int, k: int) -> Terms:
    """Eq. S16's terms for ``n`` stored soft labels: projections ``n*2k``, PC vectors ``k*C*2`` bytes."""
    n, classes, k = _pos_int("rows", n), _pos_int("classes", classes), _pos_int("k", k)
    if k > classes:
        raise InvalidInputError(f"PCA k={k} exceeds classes={classes}")
    return Terms({"projections": n * 2 * k, "components": k * classes * FP16})


def s16_stored_row_terms(n, classes, k) -> Terms:
    """:func:`s16_stored_terms` for ``n`` stored soft labels."""
    t = dict(s16_row_terms(n, classes, k).terms)
    t["mean"] = classes * FP16
    return Terms(t)


def s17_row_terms(n: int, classes: int, k: int) -> Terms:
    """Eq. S17's terms for ``n`` stored soft labels: level indices ``n*C*log2(k)/8`` + levels ``2k`` bytes."""
    n, classes, k = _pos_int("rows", n), _pos_int("classes", classes), _pos_int("k", k)
    if k < 2:
        raise InvalidInputError(f"quantisation needs at least 2 levels, got {k}")
    return Terms({"indices": n * classes * math.log2(k) / 8, "levels": 2 * k})


def s17_stored_row_terms(n, classes, k) -> Terms:
    """:func:`s17_stored_terms` for ``n`` stored soft labels."""
    s17_row_terms(n, classes, k)
    return Terms({"indices": math.ceil(n * classes * bits_for(k) / 8), "levels": 2 * k})
