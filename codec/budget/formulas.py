"""The storage formulas of the soft-label paper's supplement (Eq. S11-S17), in bytes.

Every function returns **bytes** (a float when the formula as printed yields a fractional
byte count, because it uses the real-valued ``log2``).  The paper divides by ``1024**2``
and calls the result "MB" (its Table S6 prints the same numbers as "GB" after a further
``/1024``); :data:`MiB` and :data:`GiB` convert.  Functions named ``*_stored_terms`` /
``*_stored_row_terms`` give what a real ``.ddz`` stores for the same terms: whole bits per
index (``ceil(log2 k)``) and whole bytes per bit-packed section (last byte padded).  See
``spec/budget.md``.
"""

from __future__ import annotations

import math

from .._args import float_arg, int_arg
from ..codecs.formulas import FP16, FP32, Terms, _pos_int, _vq_check
from ..codecs.formulas import bits_for as bits_for, s11_rows as s11_rows  # re-exported: the per-row formulas live with the codecs
from ..codecs.formulas import (s12_row_terms, s12_stored_row_terms, s15_row_terms, s15_stored_row_terms, s16_row_terms,
                               s16_stored_row_terms, s17_row_terms, s17_stored_row_terms)
from ..errors import InvalidInputError

MiB = 1024**2
GiB = 1024**3

def n_labels(ipc: int, classes: int, epochs: int) -> int:
    """Soft labels stored: one per distilled sample per epoch, ``IPC x C x EPOCHS``."""
    return _pos_int("ipc", ipc) * _pos_int("classes", classes) * _pos_int("epochs", epochs)


# --------------------------------------------------------------------------------------
# S11: dense fp16 soft labels
# --------------------------------------------------------------------------------------
def s11(ipc: int, classes: int, epochs: int) -> int:
    """Eq. S11: ``IPC x C x C x EPOCHS x 2`` bytes (dense fp16 soft labels, one per epoch)."""
    return n_labels(ipc, classes, epochs) * classes * FP16


# --------------------------------------------------------------------------------------
# S12: VQ autoencoder
# --------------------------------------------------------------------------------------
def s12_terms(ipc: int, classes: int, epochs: int, dh: int, dc: int, k: int) -> Terms:
    """Eq. S12 as printed: batch data ``IPC*C*EPOCHS*(dh/dc)*log2(k)/8`` (real log2),
    decoder ``C*dh*4`` and codebook ``k*dc*4`` bytes (fp32)."""
    return s12_row_terms(n_labels(ipc, classes, epochs), classes, dh, dc, k)


def s12(ipc: int, classes: int, epochs: int, dh: int, dc: int, k: int) -> float:
    """Eq. S12 total in bytes (real-valued log2, as printed)."""
    return s12_terms(ipc, classes, epochs, dh, dc, k).total


def s12_stored_terms(ipc, classes, epochs, dh, dc, k, param_bytes: int = FP32) -> Terms:
    """What a .ddz stores for S12's terms: ``ceil(n*m*ceil(log2 k)/8)`` index bytes
    (one bit-packed stream), decoder and codebook at ``param_bytes`` per value."""
    return s12_stored_row_terms(n_labels(ipc, classes, epochs), classes, dh, dc, k, param_bytes)


def s13(ipc: int, classes: int, epochs: int, dh: int, dc: int, k: int) -> float:
    """Eq. S13: compression ratio S11 / S12 (dimensionless)."""
    return s11(ipc, classes, epochs) / s12(ipc, classes, epochs, dh, dc, k)


def s14(dc: int, k: int) -> float:
    """Eq. S14 as printed: ``dc / log2(k)``.  Only a *proportionality*: the limit of S13 as
    EPOCHS -> infinity is ``16*C*dc / (dh*log2 k)`` (see :func:`s13_limit`)."""
    dc, k = _pos_int("dc", dc), _pos_int("k", k)
    if k < 2:
        raise InvalidInputError(f"k must be at least 2 (log2 k > 0), got {k}")
    return dc / math.log2(k)


def s13_limit(classes: int, dh: int, dc: int, k: int) -> float:
    """lim_{EPOCHS->inf} of Eq. S13 = ``2*C / ((dh/dc)*log2(k)/8) = 16*C*dc/(dh*log2 k)``."""
    dh, dc, k = _vq_check(dh, dc, k)
    return 16 * _pos_int("classes", classes) * dc / (dh * math.log2(k))


def eq8(a: int, n: int, c: int, m: int, k: int, dc: int, dh: int) -> float:
    """Eq. 8 (counts of numbers, not bytes): ``a*n*c / (a*n*m + k*dc + c*dh)``."""
    a, n, c, m, k, dc, dh = (_pos_int(nm, v) for nm, v in zip(("a", "n", "c", "m", "k", "dc", "dh"), (a, n, c, m, k, dc, dh)))
    return a * n * c / (a * n * m + k * dc + c * dh)


# --------------------------------------------------------------------------------------
# S15-S17: baselines
# --------------------------------------------------------------------------------------
def s15_terms(ipc: int, classes: int, epochs: int, k: int) -> Terms:
    """Eq. S15 (top-k): ``IPC*C*EPOCHS*(2k + log2(C)/8*k)`` bytes: fp16 class
    probabilities and real-valued log2(C) bits per index."""
    return s15_row_terms(n_labels(ipc, classes, epochs), classes, k)


def s15(ipc, classes, epochs, k) -> float:
    """Eq. S15 total in bytes."""
    return s15_terms(ipc, classes, epochs, k).total


def s15_stored_terms(ipc, classes, epochs, k) -> Terms:
    """Eq. S15's terms as a .ddz stores them: ``ceil(n*k*ceil(log2 C)/8)`` index bytes
    (one bit-packed stream) and ``n*k*2`` fp16 value bytes."""
    return s15_stored_row_terms(n_labels(ipc, classes, epochs), classes, k)


def s16_terms(ipc: int, classes: int, epochs: int, k: int) -> Terms:
    """Eq. S16 (PCA / R-PCA): projections ``IPC*C*EPOCHS*2k`` + PC vectors ``k*C*2`` bytes.
    (The mean vector a centred PCA also needs is not in the printed formula.)"""
    return s16_row_terms(n_labels(ipc, classes, epochs), classes, k)


def s16(ipc, classes, epochs, k) -> float:
    """Eq. S16 total in bytes."""
    return s16_terms(ipc, classes, epochs, k).total


def s16_stored_terms(ipc, classes, epochs, k) -> Terms:
    """Eq. S16's terms plus the ``C*2`` byte fp16 mean a .ddz also stores."""
    return s16_stored_row_terms(n_labels(ipc, classes, epochs), classes, k)


def s17_terms(ipc: int, classes: int, epochs: int, k: int) -> Terms:
    """Eq. S17 (scalar quantisation to k levels): level indices
    ``IPC*C*EPOCHS*C*log2(k)/8`` + levels ``2k`` bytes."""
    return s17_row_terms(n_labels(ipc, classes, epochs), classes, k)


def s17(ipc, classes, epochs, k) -> float:
    """Eq. S17 total in bytes."""
    return s17_terms(ipc, classes, epochs, k).total


def s17_stored_terms(ipc, classes, epochs, k) -> Terms:
    """Eq. S17's terms as stored: ``ceil(n*C*ceil(log2 k)/8)`` index bytes and ``2k`` level bytes."""
    return s17_stored_row_terms(n_labels(ipc, classes, epochs), classes, k)


# --------------------------------------------------------------------------------------
# LPLD random batch pruning
# --------------------------------------------------------------------------------------
def lpld_pool(ipc: int, classes: int, epochs: int, ratio: float | None = None, batch_size: int = 128, *,
              prune_ratio: float | None = None) -> int:
    """Batches LPLD keeps, a prefix pool of global batch ids (generation with ``drop_last=True``:
    ``nb = floor(N/B)`` batches per epoch, N = IPC*C samples, B = batch size).

    ``prune_ratio=p`` (LPLD's ``--prune_ratio``): ``int(E * nb * (1 - p))``, LPLD's own rule, the
    same function the ``lpld`` codec and the LPLD importer use
    (:func:`codec.codecs.lpld.lpld_pool_batches`): IN-1K IPC 10 at p = 0.97 keeps 702 batches.
    ``ratio=r`` (a nominal ratio): ``max(1, floor(E * nb / r))``, 780 there for r = 30.
    Give exactly one."""
    from ..codecs.lpld import lpld_pool_batches

    if (ratio is None) == (prune_ratio is None):
        raise InvalidInputError("LPLD pool: give ratio or prune_ratio (LPLD's --prune_ratio), exactly one")
    N = _pos_int("ipc", ipc) * _pos_int("classes", classes)
    B = _pos_int("batch_size", batch_size)
    per_epoch = N // B
    if per_epoch == 0:
        raise InvalidInputError(f"batch_size {B} exceeds the {N} samples per epoch")
    if prune_ratio is not None:
        return lpld_pool_batches(_pos_int("epochs", epochs) * per_epoch, float_arg("LPLD prune_ratio", prune_ratio, 0, 1))
    ratio = float_arg("LPLD ratio", ratio, 1)
    return max(1, math.floor(_pos_int("epochs", epochs) * per_epoch / ratio))


def lpld_terms(ipc, classes, epochs, ratio=None, batch_size: int = 128, *, prune_ratio=None) -> Terms:
    """LPLD storage: ``pool x B x C x 2`` bytes of fp16 labels (S11 per kept batch; pool as :func:`lpld_pool`)."""
    pool = lpld_pool(ipc, classes, epochs, ratio, batch_size, prune_ratio=prune_ratio)
    return Terms({"labels": pool * batch_size * classes * FP16})


# --------------------------------------------------------------------------------------
# Video budgets (latent video distillation paper)
# --------------------------------------------------------------------------------------
def video_pixel_budget(ipc: int, classes: int, frames: int, height: int, width: int, channels: int = 3,
                       bytes_per_value: int = FP32) -> int:
    """Pixel-space budget ``IPC x classes x frames x 3 x H x W x 4`` bytes (fp32 clips).
    MiniUCF (50 classes, 16 frames, 112x112) IPC 1: 120,422,400 B = 114.84 MiB ("115MB")."""
    return (_pos_int("ipc", ipc) * _pos_int("classes", classes) * _pos_int("frames", frames) * channels
            * _pos_int("height", height) * _pos_int("width", width) * bytes_per_value)


def tucker_chunk_floats(shape: tuple, ranks: tuple) -> int:
    """Floats in one Tucker chunk as the video paper's code saves it: core ``prod(ranks)`` +
    factors ``sum(dim_i x rank_i)``.  ``shape``/``ranks`` include the sample mode, whose
    ``n x n`` factor is counted here although :class:`~codec.codecs.tucker.TuckerCodec`
    does not store it (a mode kept at full rank is the identity)."""
    if not isinstance(shape, (tuple, list)) or not isinstance(ranks, (tuple, list)) or len(shape) != len(ranks):
        raise InvalidInputError(f"shape {shape!r} and ranks {ranks!r} must be sequences of the same length")
    dims = [_pos_int(f"shape[{i}]", d) for i, d in enumerate(shape)]
    rs = [_pos_int(f"ranks[{i}]", r) for i, r in enumerate(ranks)]
    if any(r > d for d, r in zip(dims, rs)):
        raise InvalidInputError(f"ranks {ranks} exceed the shape {shape}")
    return math.prod(rs) + sum(d * r for d, r in zip(dims, rs))


def video_total(data_bytes: int, vae_bytes: int) -> Terms:
    """Video paper Table 7 total: distilled tensors + the int8 VAE (bytes)."""
    return Terms({"data": int_arg("data_bytes", data_bytes), "vae": int_arg("vae_bytes", vae_bytes)})


#: int8 SD-VAE-FT-MSE computed exactly (perf-baselines notes section 6): 83,983,007 B = 80.09 MiB.
SD_VAE_INT8_BYTES = 83_983_007


def fmt_bytes(b: float) -> str:
    """``'83,999,186 B (84.00 MB, 80.11 MiB)'``: exact bytes, then decimal and binary units
    (the paper's "MB" is MiB, the video budgets' "115MB" is 10^6 B), so neither is ambiguous."""
    for dec, bin_, unit in ((10**9, GiB, "G"), (10**6, MiB, "M"), (10**3, 1024, "k")):
        if b >= min(dec, bin_):
            return f"{b:,.0f} B ({b / dec:.2f} {unit}B, {b / bin_:.3f} {unit.upper()}iB)"
    return f"{b:,.0f} B"
