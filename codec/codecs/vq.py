"""VQ autoencoder codec for soft labels (Eq. 2-9 of the soft-label paper).

Encoding (parameters must have been trained, see :mod:`codec.softlabels`):

* Eq. 2  ``h = y P``                      (P: C x dh, the *encoder*)
* Eq. 3  ``h = [h(1), ..., h(m)]``         (m = dh / dc segments)
* Eq. 4  ``q(i) = argmin_j ||h(i) - mu_j||^2``  (one shared codebook of k codes of dim dc)

Stored parts: ``indices`` (n, m) bit-packed at ``ceil(log2 k)`` bits (or, with
``entropy=True``, byte planes compressed by zstd, whose Huffman stage entropy-codes the
skewed index distribution), ``codebook`` (k, dc) and ``decoder`` D (dh, C) in fp32 or fp16,
and optionally ``encoder`` P (C, dh) so more labels can be appended later.

Decoding: Eq. 5-6 ``yhat = [mu_q(1), ..., mu_q(m)] D`` then Eq. 9
``y~ = max(yhat, eps) / sum max(yhat, eps)``.  The input declaration (``input`` =
"probs" or "logits", with ``temperature``) says how ``y`` is formed: logits are turned into
``softmax(z / temperature)`` before Eq. 2.

``space`` says what the autoencoder reconstructs: ``"probs"`` (the paper: ``y`` itself) or
``"logits"`` (the row-centred tempered logits ``u = z/T - mean(z/T)``, for probability input
``log y - mean(log y)``; decoding is then ``softmax(yhat)`` followed by Eq. 9).  At a high
temperature (SRe2L / LPLD replay T = 20) probabilities are nearly linear in the logits, so the
two agree up to scale, but the squared error on probabilities weighs every class alike while the
logit space keeps the relative sizes that the student's KL loss sees.  ``encode_dtype="bf16"``
runs the projection (Eq. 2) in bfloat16 (the codes it picks can differ from the float32 encode's).
"""

from __future__ import annotations

from typing import Any, Mapping, Self, Sequence

import math
import threading

import numpy as np
import torch

from .._args import int_arg
from ..errors import InvalidInputError
from ._tensors import as_tensor
from . import _vqgrid
from ._vqkernels import NUMBA_MAX_DC, NUMBA_MAX_K, nearest_kernel as _nearest_kernel, prep_codebook as _prep_codebook
from .base import BudgetTerm, Part, PartSpec, register_codec
from .formulas import s12_row_terms
from .softlabel import (SoftLabelCodec, check_common, finite, index_bits, index_dtype, index_dtype_name, need, param,
                        renorm_, to_probs)

# ----------------------------------------------------------------------------------------------
# Nearest-code assignment (Eq. 4) and index -> probability decoding (Eq. 5, 6, 9)
# ----------------------------------------------------------------------------------------------


#: Rows per code, by dc, that ``method="auto"`` assigns to a codebook by brute force before it builds
#: the codebook's cell index: about where the build has cost what it saves (measured at k = 256 and
#: 1024 on a 2-core AVX2 host: break-even at ~25 rows per code for dc = 1, ~1,000 for dc = 3,
#: ~2,000-4,400 for dc = 4, ~7,600 for dc = 5, ~10,600 for dc = 6), so a long or streamed encode
#: pays at most about twice the better method's cost, and a short one never pays for a build.
GRID_MIN_ROWS_PER_CODE = {1: 64, 2: 128, 3: 1024, 4: 4096, 5: 8192, 6: 16384, 7: 32768, 8: 65536}
_GRID_CACHE: dict[tuple, Any] = {}  # (shape, codebook bytes) -> CellIndex, or None where brute force wins
_GRID_SEEN: dict[tuple, int] = {}  # (shape, codebook bytes) -> rows assigned so far without an index
_GRID_CACHE_SIZE = 4
_GRID_LOCK = threading.Lock()  # guards the two tables; never held while an index is built
_GRID_BUILDING: dict[tuple, threading.Event] = {}  # codebooks whose index a thread is building now


def cell_index(codebook: np.ndarray) -> "_vqgrid.CellIndex | None":
    """The cell index of a float32 (k, dc) codebook, built once per codebook (a few are kept); None
    where it would not beat brute force (:func:`codec.codecs._vqgrid.worth_it`).  One thread builds
    a codebook's index while others asking for the same one wait; lookups of other codebooks do not."""
    key = (codebook.shape, codebook.tobytes())
    while True:
        with _GRID_LOCK:
            if key in _GRID_CACHE:
                _GRID_CACHE[key] = _GRID_CACHE.pop(key)  # most recently used last
                return _GRID_CACHE[key]
            building = _GRID_BUILDING.get(key)
            if building is None:
                building = _GRID_BUILDING[key] = threading.Event()
                break
        building.wait()  # then found in the cache, or built here if that build failed
    try:
        built = _vqgrid.build_index(codebook)
        index = built if _vqgrid.worth_it(built) else None
        with _GRID_LOCK:
            _GRID_CACHE[key] = index
            _GRID_SEEN.pop(key, None)
            while len(_GRID_CACHE) > _GRID_CACHE_SIZE:
                del _GRID_CACHE[next(iter(_GRID_CACHE))]
        return index
    finally:
        with _GRID_LOCK:
            del _GRID_BUILDING[key]
        building.set()


def _auto_method(cbn: np.ndarray | None, n: int) -> str:
    """``method="auto"``'s choice for ``n`` rows against the float32 (k, dc) codebook ``cbn`` on
    CPU (None: the data is on another device): the codebook's cell index where one is built, or
    once this codebook has been asked about ``GRID_MIN_ROWS_PER_CODE[dc] * k`` rows in all (so a
    stream of chunks builds it too) and it beats brute force; else brute force."""
    if cbn is None:
        return "torch"
    k, dc = cbn.shape
    if dc <= _vqgrid.GRID_MAX_DC and k > 4:
        key = (cbn.shape, cbn.tobytes())
        with _GRID_LOCK:
            seen = _GRID_SEEN.pop(key, 0) + n
            indexed = key in _GRID_CACHE or seen >= GRID_MIN_ROWS_PER_CODE[dc] * k
            if not indexed:
                _GRID_SEEN[key] = seen
                while len(_GRID_SEEN) > _GRID_CACHE_SIZE:
                    del _GRID_SEEN[next(iter(_GRID_SEEN))]
        if indexed and cell_index(cbn) is not None:
            return "grid"
    return "numba" if dc <= NUMBA_MAX_DC and k <= NUMBA_MAX_K else "torch"


def _grid_index(cb: np.ndarray) -> "_vqgrid.CellIndex":
    """The cell index for ``method="grid"``, asked for explicitly: built even where it does not pay."""
    return cell_index(cb) or _vqgrid.build_index(cb)


def _assign(x: np.ndarray, cb: np.ndarray, index: "_vqgrid.CellIndex | None", out: np.ndarray) -> np.ndarray:
    """Eq. 4 on CPU into int32 ``out`` (returned): float32 C-contiguous rows ``x`` (n, dc), finite
    float32 codebook ``cb``, by its cell ``index`` (None: brute force); -1 marks a row with a NaN
    or infinity."""
    if len(x) and len(cb):
        if index is not None:
            _vqgrid.assign(x, index, out)
        else:
            _nearest_kernel(cb.shape[1])(x, *_prep_codebook(cb), out)
    return out


_SCRATCH = threading.local()  # the CPU encode's buffers from the last call, per thread
#: Bytes of fp32 rows the CPU encode copies and projects at a time: a block that stays in cache
#: between the copy and the ``torch.mm`` (16,384 x 1,000 fp16 logits projected to dh = 76 in
#: 512-row blocks, copy included, took 31 ms where one mm of the fp32 rows alone took 42 ms).
PROJECTION_BLOCK_BYTES = 1 << 21


def _encode_buffers(dev: torch.device, b: int, c: int, C: int, dh: int, edt: torch.dtype, prep: bool) -> tuple:
    """(ybuf, yebuf, hbuf, h32): the encode's buffers: ``b`` rows in (fp32 where they are prepared,
    else ``edt``; 0 where the input is read in place) and their ``edt`` copy, and a chunk's ``c`` rows of projection and their fp32
    copy (the second and fourth may be None / aliases).  On CPU the set of the last call is kept
    for the next with the same shapes (per thread): a streamed encode calls once per chunk, and
    fresh buffers cost their page faults each time (copying 16,384 x 1,000 fp16 rows into a fresh
    fp32 buffer took 56 ms, into a reused one 8 ms)."""
    key = (b, c, C, dh, edt, prep)
    if dev.type == "cpu":
        kept = getattr(_SCRATCH, "encode", None)
        if kept is not None and kept[0] == key:
            return kept[1]
    ybuf = torch.empty((b, C), dtype=torch.float32 if prep else edt, device=dev)
    yebuf = torch.empty((b, C), dtype=edt, device=dev) if prep and edt != torch.float32 else None
    hbuf = torch.empty((c, dh), dtype=edt, device=dev)
    h32 = torch.empty((c, dh), dtype=torch.float32, device=dev) if edt != torch.float32 else hbuf
    bufs = (ybuf, yebuf, hbuf, h32)
    if dev.type == "cpu":
        _SCRATCH.encode = (key, bufs)
    return bufs


def nearest_code(x, codebook, *, chunk: int = 4096, method: str = "auto", out=None):
    """Eq. 4: index of the nearest code (squared L2) for each row of ``x`` (n, dc).

    ``x`` and ``codebook`` are torch tensors (any device) or numpy arrays; returns int64 of
    the input's kind.  Ties go to the lower index (as ``argmin``).  ``method``: "auto",
    "grid" (CPU, dc <= 8: the exact cell index of :mod:`codec.codecs._vqgrid`, scoring each row
    against the few codes that can be nearest in its cell), "numba" (CPU, brute force over all
    codes) or "torch".  "auto" takes the cell index for a codebook already indexed, or when
    there are enough rows per code to pay for building it (:data:`GRID_MIN_ROWS_PER_CODE`) and it
    beats brute force; else brute force.  The CPU methods compute the same float32 scores, so they
    differ only where two codes are within float32 rounding of each other.
    """
    is_np = isinstance(x, np.ndarray)
    xt = torch.from_numpy(np.ascontiguousarray(x)) if is_np else x
    cb = torch.from_numpy(np.ascontiguousarray(codebook)) if isinstance(codebook, np.ndarray) else codebook
    if xt.ndim != 2 or cb.ndim != 2 or xt.shape[1] != cb.shape[1]:
        raise InvalidInputError(f"nearest_code: x {tuple(xt.shape)} and codebook {tuple(cb.shape)} must be (n, dc) and (k, dc)")
    n, dc = xt.shape
    k = cb.shape[0]
    if method not in ("auto", "grid", "numba", "torch"):
        raise InvalidInputError(f"nearest_code: method must be 'auto', 'grid', 'numba' or 'torch', got {method!r}")
    cbn = None
    if xt.device.type == "cpu" and method != "torch":
        if not torch.isfinite(cb).all():
            raise InvalidInputError("nearest_code: non-finite values in the codebook")
        cbn = np.ascontiguousarray(cb.detach().to(torch.float32).cpu().numpy())
    if method == "auto":
        method = _auto_method(cbn, n)
    if method == "grid" and (cbn is None or dc > _vqgrid.GRID_MAX_DC):
        raise InvalidInputError(f"nearest_code: method 'grid' takes CPU tensors with dc <= {_vqgrid.GRID_MAX_DC}, got dc={dc}")
    if method == "numba" and (cbn is None or k > NUMBA_MAX_K):
        raise InvalidInputError(f"nearest_code: method 'numba' takes CPU tensors and at most {NUMBA_MAX_K} codes, got {k}")
    if method in ("grid", "numba"):
        assert cbn is not None
        index = _grid_index(cbn) if method == "grid" and n and k else None
        res = _assign(np.ascontiguousarray(xt.detach().to(torch.float32).numpy()), cbn, index, np.empty(n, np.int32))
        if (res < 0).any():
            raise InvalidInputError(f"nearest_code: non-finite values in the latents (row {int(np.argmax(res < 0))})")
        res = res.astype(np.int64)
        if out is not None:
            out[:] = torch.from_numpy(res) if isinstance(out, torch.Tensor) else res
            return out
        return res if is_np else torch.from_numpy(res)
    # torch path: scores = h.mu - |mu|^2/2, then max
    dtype = torch.float32 if xt.dtype not in (torch.float64,) else torch.float64
    xt = xt.to(dtype)
    cbf = cb.to(device=xt.device, dtype=dtype)
    cbT = cbf.t().contiguous()
    half_norms = (-0.5 * (cbf * cbf).sum(1)).unsqueeze(0)
    result = out if out is not None else torch.empty(n, dtype=torch.int64, device=xt.device)
    c = max(1, min(chunk, n))
    buf = torch.empty((c, k), dtype=dtype, device=xt.device)
    vals = torch.empty(c, dtype=dtype, device=xt.device)
    for s in range(0, n, c):
        e = min(n, s + c)
        b = buf[: e - s]
        torch.addmm(half_norms, xt[s:e], cbT, out=b)
        torch.max(b, 1, out=(vals[: e - s], result[s:e]))
    return result.numpy() if is_np else result


def decode_probs(indices, codebook: torch.Tensor, decoder: torch.Tensor, eps: float, *,
                 dtype: torch.dtype = torch.float32, chunk: int = 4096, out: torch.Tensor | None = None,
                 renorm: bool = True, space: str = "probs") -> torch.Tensor:
    """Eq. 6 + Eq. 9: indices (n, m) -> renormalised probabilities (n, C) float32.

    ``hhat = [mu_q1, ..., mu_qm]`` (Eq. 5), ``yhat = hhat D`` (Eq. 6), then Eq. 9 (for
    ``space="logits"``: ``softmax(yhat)`` first).  The matmul runs in ``dtype`` (float32, or
    bfloat16/float16 for speed); the renormalisation always in float32.  Runs on the device of
    ``codebook``.
    """
    dev = codebook.device
    idx = indices if isinstance(indices, torch.Tensor) else torch.from_numpy(np.asarray(indices).astype(np.int64))
    idx = idx.to(device=dev, dtype=torch.int64)
    if idx.ndim != 2:
        raise InvalidInputError(f"indices must be (n, m), got shape {tuple(idx.shape)}")
    n, m = idx.shape
    k, dc = codebook.shape
    dh, C = decoder.shape
    if m * dc != dh:
        raise InvalidInputError(f"indices have m={m} segments but decoder expects dh={dh} = m*dc with dc={dc}")
    cb = codebook.to(dtype)
    D = decoder.to(dtype)
    res = out if out is not None else torch.empty((n, C), dtype=torch.float32, device=dev)
    if n == 0:
        return res
    c = max(1, min(chunk, n))
    tmp = torch.empty((c, C), dtype=dtype, device=dev) if dtype != torch.float32 else None
    zbuf = torch.empty((c * m, dc), dtype=dtype, device=dev)
    flat = idx.reshape(-1)
    for s in range(0, n, c):
        e = min(n, s + c)
        r = e - s
        z = torch.index_select(cb, 0, flat[s * m:e * m], out=zbuf[: r * m]).view(r, dh)  # Eq. 5
        if tmp is None:
            torch.mm(z, D, out=res[s:e])  # Eq. 6
        else:
            torch.mm(z, D, out=tmp[:r])
            res[s:e].copy_(tmp[:r])
        if space == "logits":
            res[s:e] = torch.softmax(res[s:e], 1)
        if renorm:
            renorm_(res[s:e], eps)  # Eq. 9
    return res


# ----------------------------------------------------------------------------------------------

_PARAM_DTYPES = {"f32": torch.float32, "f16": torch.float16}
_ENCODE_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
_PARAMS = ("encoder", "decoder", "codebook")
#: What a VQ autoencoder reconstructs (``VQCodec.space``).
SPACES = ("probs", "logits")
#: Smallest probability whose log the logit space takes (``log 0`` is ``-inf``).
LOG_FLOOR = 1e-30
#: Most entries a VQ config's ``train`` record may hold.
MAX_PROVENANCE = 64


def to_space(x: Any, space: str, input: str = "probs", temperature: float = 1.0, *, classes: int | None = None,
             device: Any = None) -> torch.Tensor:
    """Rows in the space a VQ autoencoder works in (float32): probabilities
    ``softmax(z / T)`` for ``"probs"``; for ``"logits"`` the row-centred tempered logits
    ``z/T - mean(z/T)`` (probability input: ``log max(y, 1e-30)`` centred), whose softmax is
    the same distribution."""
    if space == "probs":
        return to_probs(x, input, temperature, classes=classes, device=device)
    if input == "probs":
        u = torch.log(to_probs(x, "probs", classes=classes, device=device).clamp_min(LOG_FLOOR))
    else:
        t = as_tensor(x, "soft labels")
        if device is not None:
            t = t.to(device)
        to_probs(t[:0] if t.ndim == 2 else t, input, temperature, classes=classes)  # shape / dtype checks
        u = finite(t.to(torch.float32) / float(temperature), "this batch of soft labels (logits)")
    return u - u.mean(1, keepdim=True)


def check_provenance(train: Any) -> dict | None:
    """A ``train`` record (how the parameters were trained: loss, init, epochs, ...), kept in
    the config as provenance; decoding never reads it.  None, or an object of at most 64
    entries whose values are JSON scalars (strings at most 256 characters)."""
    if train is None:
        return None
    if not isinstance(train, Mapping) or len(train) > MAX_PROVENANCE:
        raise InvalidInputError(f"vq: train must be an object of at most {MAX_PROVENANCE} entries or null, got {str(train)[:80]}")
    for key, v in train.items():
        if not isinstance(key, str) or not (v is None or isinstance(v, (bool, int, str)) or
                                            (isinstance(v, float) and math.isfinite(v))):
            raise InvalidInputError(f"vq: train entry {str(key)[:40]!r} must map a string to a JSON scalar, got {str(v)[:40]!r}")
        if isinstance(v, str) and len(v) > 256:
            raise InvalidInputError(f"vq: train entry {key!r} is a string longer than 256 characters")
    return dict(train)


@register_codec
class VQCodec(SoftLabelCodec):
    """Linear VQ autoencoder (paper Eq. 2-9). Its learned parameters (encoder P, decoder D,
    codebook) come from :func:`codec.softlabels.fit` / :func:`~codec.softlabels.train_vq`,
    or from stored parts through :meth:`with_params`."""

    codec_id = "vq"
    train_log: Any  # set by train_vq: the TrainLog of the run that fitted the codec

    def __init__(self, classes: int, dh: int, dc: int, k: int, *, eps: float = 1e-8, input: str = "probs",
                 temperature: float = 1.0, param_dtype: str = "f32", entropy: bool = False,
                 store_encoder: bool = False, zstd_level: int = 19, space: str = "probs", encode_dtype: str = "f32",
                 train: Mapping[str, Any] | None = None):
        self.classes, self.input, self.temperature, self.eps = check_common(classes, input, temperature, eps, "vq")
        if space not in SPACES:
            raise InvalidInputError(f"vq: space must be one of {SPACES}, got {space!r}")
        if encode_dtype not in _ENCODE_DTYPES:
            raise InvalidInputError(f"vq: encode_dtype must be one of {sorted(_ENCODE_DTYPES)}, got {encode_dtype!r}")
        self.space, self.encode_dtype = space, encode_dtype
        self.train = check_provenance(train)
        self.dh, self.dc = int_arg("vq: dh", dh, 1), int_arg("vq: dc", dc, 1)
        self.k = int_arg("vq: k", k, 2, 1 << 24)
        if self.dh % self.dc:
            raise InvalidInputError(f"vq: dh={dh} must be divisible by dc={dc} (Eq. 3)")
        if param_dtype not in _PARAM_DTYPES:
            raise InvalidInputError(f"vq: param_dtype must be one of {sorted(_PARAM_DTYPES)}, got {param_dtype!r}")
        for nm, v in (("entropy", entropy), ("store_encoder", store_encoder)):
            if not isinstance(v, bool):
                raise InvalidInputError(f"vq: {nm} must be true or false, got {v!r}")
        self.m = self.dh // self.dc
        self.bits = index_bits(self.k)
        self.param_dtype = param_dtype
        self.entropy = entropy
        self.store_encoder = store_encoder
        self.zstd_level = int_arg("vq: zstd_level", zstd_level, -7, 22)
        self.encoder: torch.Tensor | None = None  # (C, dh)
        self.decoder: torch.Tensor | None = None  # (dh, C)
        self.codebook: torch.Tensor | None = None  # (k, dc)

    # -- config and parts ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """The config; ``space``, ``encode_dtype`` and ``train`` appear only when they differ from
        their defaults ("probs", "f32", none), so a config written before they existed reads back
        unchanged."""
        cfg = {"id": self.codec_id, "classes": self.classes, "dh": self.dh, "dc": self.dc, "k": self.k,
               "eps": self.eps, "input": self.input, "temperature": self.temperature,
               "param_dtype": self.param_dtype, "entropy": self.entropy, "store_encoder": self.store_encoder,
               "zstd_level": self.zstd_level}
        if self.space != "probs":
            cfg["space"] = self.space
        if self.encode_dtype != "f32":
            cfg["encode_dtype"] = self.encode_dtype
        if self.train is not None:
            cfg["train"] = dict(self.train)
        return cfg

    def encoded_parts(self, shape: Any) -> dict[str, PartSpec]:
        n = self._rows(shape)
        if self.entropy:
            specs = {"indices_lo": PartSpec("u8", (n, self.m), None, self.zstd_level, per_row=True)}
            if self.bits > 8:
                specs["indices_hi"] = PartSpec("u8" if self.bits <= 16 else "u16", (n, self.m), None, self.zstd_level,
                                               per_row=True)
        else:
            specs = {"indices": PartSpec(index_dtype_name(self.bits), (n, self.m), self.bits, per_row=True)}
        specs["codebook"] = PartSpec(self.param_dtype, (self.k, self.dc))
        specs["decoder"] = PartSpec(self.param_dtype, (self.dh, self.classes))
        if self.store_encoder:
            specs["encoder"] = PartSpec(self.param_dtype, (self.classes, self.dh))
        return specs

    def budget_terms(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, BudgetTerm]:
        row = "indices_lo" if self.entropy else "indices"
        n = int(shapes[row][0]) if shapes.get(row) else 0
        t = s12_row_terms(max(n, 1), self.classes, self.dh, self.dc, self.k).terms
        idx = t["indices"] if n else 0.0
        out = {"codebook": BudgetTerm("S12 codebook: k*dc*4", t["codebook"], formula_dtype="f32"),
               "decoder": BudgetTerm("S12 decoder: C*dh*4", t["decoder"], formula_dtype="f32"),
               "encoder": BudgetTerm("encoder P (not in S12; kept to encode more labels)")}
        if self.entropy:
            out["indices_lo"] = BudgetTerm("S12 batch data, entropy-coded (low byte plane; the formula value and its "
                                           "difference cover both planes)", idx, covers=("indices_hi",), log2_of=self.k)
            out["indices_hi"] = BudgetTerm("S12 batch data, entropy-coded (high bits plane; formula value on indices_lo)")
        else:
            out["indices"] = BudgetTerm("S12 batch data: n*(dh/dc)*log2(k)/8", idx, log2_of=self.k)
        return out

    # -- parameters ------------------------------------------------------------------------------
    def set_params(self, encoder: Any = None, decoder: Any = None, codebook: Any = None) -> Self:
        """Install parameters (validated shapes, finite), as float32 tensors; for building a codec (training)."""
        if encoder is not None:
            self.encoder = param(encoder, (self.classes, self.dh), "vq encoder")
        if decoder is not None:
            self.decoder = param(decoder, (self.dh, self.classes), "vq decoder")
        if codebook is not None:
            self.codebook = param(codebook, (self.k, self.dc), "vq codebook")
        return self

    @property
    def fitted(self) -> bool:
        return self.encoder is not None and self.decoder is not None and self.codebook is not None

    def to(self, device: Any) -> "VQCodec":
        """Move the parameters to ``device`` (in place; returns self)."""
        for a in _PARAMS:
            t = getattr(self, a)
            if t is not None:
                setattr(self, a, t.to(device))
        return self

    def stored_param(self, name: str) -> torch.Tensor:
        """A parameter as it is stored (param_dtype), on CPU."""
        t = getattr(self, name)
        if t is None:
            raise InvalidInputError(f"vq: no {name} (fit the codec first)")
        return t.detach().to("cpu", _PARAM_DTYPES[self.param_dtype]).contiguous()

    def rounded(self) -> "VQCodec":
        """Parameters rounded to the storage dtype (so encoding sees what decoding will)."""
        for a in _PARAMS:
            t = getattr(self, a)
            if t is not None:
                setattr(self, a, t.to(_PARAM_DTYPES[self.param_dtype]).to(torch.float32))
        return self

    def params(self) -> dict[str, Part]:
        names = ("codebook", "decoder", "encoder") if self.store_encoder else ("codebook", "decoder")
        return {n: Part(self.stored_param(n)) for n in names if getattr(self, n) is not None}

    def with_params(self, parts: Mapping[str, Any]) -> Self:
        """This codec with the stored codebook and decoder (and encoder, if stored) of ``parts``."""
        super().with_params(parts)
        return self._copy_with().set_params(codebook=need(parts, "codebook", "vq"), decoder=need(parts, "decoder", "vq"),
                              encoder=need(parts, "encoder", "vq") if "encoder" in parts else None)

    # -- encode ----------------------------------------------------------------------------------
    def encode_indices(self, x: Any, *, chunk: int = 16384, method: str = "auto") -> np.ndarray:
        """Eq. 2-4: soft labels (n, C) -> indices (n, m) of dtype u8/u16/u32.

        Streams ``chunk`` rows at a time through preallocated buffers: each chunk is copied into
        an fp32 buffer (on CPU a block of :data:`PROJECTION_BLOCK_BYTES` at a time; rows already in
        ``encode_dtype`` that need no preparing are read in place), turned into the codec's space in
        place where that is not linear (an in-place softmax; the log of probabilities), projected by
        ``torch.mm`` (Eq. 2, in ``encode_dtype``) and assigned (Eq. 4, on CPU by
        :func:`nearest_code`'s cell index or brute force, chosen once for the whole call).  The
        logit space's temperature and row centring are linear and folded into the encoder
        (:meth:`_projection`).  A NaN or infinity in the input
        reaches the latents, where the assignment catches it.  ``method``: :func:`nearest_code`'s
        (all give the same indices up to float32 near-ties; nothing of it is stored)."""
        if self.encoder is None or self.codebook is None:
            raise InvalidInputError("vq: codec has no trained encoder and codebook (fit it with codec.softlabels.fit)")
        t = as_tensor(x, "soft labels")
        if t.ndim != 2:
            raise InvalidInputError(f"soft labels must be 2-D (n, C), got shape {tuple(t.shape)}")
        if t.shape[1] != self.classes:
            raise InvalidInputError(f"soft labels have {t.shape[1]} classes, the codec expects {self.classes}")
        if not t.is_floating_point():
            raise InvalidInputError(f"soft labels must be floating point, got {t.dtype}")
        if method not in ("auto", "grid", "numba", "torch"):
            raise InvalidInputError(f"vq: method must be 'auto', 'grid', 'numba' or 'torch', got {method!r}")
        n, m, dc = t.shape[0], self.m, self.dc
        out = np.empty((n, m), index_dtype(self.bits))
        if n == 0:
            return out
        edt = _ENCODE_DTYPES[self.encode_dtype]
        dev = t.device
        P = self._projection(dev, edt)
        c = max(1, min(int(chunk), n))
        # the elementwise step runs in fp32; the logit space of logits has none in fp32 (folded into P).
        # Before a bf16 projection the rows are centred in fp32 (as the fold would round uncentred values)
        centre = self.space == "logits" and edt != torch.float32
        prep = centre or not (self.space == "logits" and self.input == "logits")
        if not bool(torch.isfinite(self.codebook).all()):  # e.g. set by hand, or rounded to f16 past its range
            raise InvalidInputError("vq: the codebook holds NaN or infinite values")
        # on CPU the rows are copied, prepared and projected a cache-sized block at a time
        b = c if dev.type != "cpu" else max(1, min(c, PROJECTION_BLOCK_BYTES // (4 * self.classes)))
        direct = not prep and t.dtype == edt and t.device == dev  # rows the mm can read where they are
        ybuf, yebuf, hbuf, h32 = _encode_buffers(dev, 0 if direct else b, c, self.classes, self.dh, edt, prep)
        if dev.type != "cpu" or method == "torch":
            method = "torch"
        else:
            cbn = np.ascontiguousarray(self.codebook.detach().to("cpu", torch.float32).numpy())
            if method == "auto":
                method = _auto_method(cbn, n * m)
            elif method == "grid" and dc > _vqgrid.GRID_MAX_DC:
                raise InvalidInputError(f"vq: method 'grid' takes dc <= {_vqgrid.GRID_MAX_DC}, got dc={dc}")
        cpu = method in ("grid", "numba")
        if cpu:
            index = _grid_index(cbn) if method == "grid" else None
            qbuf = np.empty(c * m, np.int32)
        else:
            cb = self.codebook.to(dev)
            qt = torch.empty(c * m, dtype=torch.int64, device=dev)
        inv_t = 1.0 / self.temperature
        for s in range(0, n, c):
            r = min(n, s + c) - s
            for u in range(0, r, b):
                v = min(r, u + b) - u
                if direct:
                    y = t[s + u:s + u + v]
                else:
                    y = ybuf[:v]
                    y.copy_(t[s + u:s + u + v])
                if prep:
                    self._prepare_(y, inv_t, centre)
                    if yebuf is not None:
                        yebuf[:v].copy_(y)
                        y = yebuf[:v]
                torch.mm(y, P, out=hbuf[u:u + v])  # Eq. 2
            h = h32[:r]
            if h.data_ptr() != hbuf.data_ptr():
                h.copy_(hbuf[:r])
            if cpu:
                q = _assign(h.view(-1, dc).numpy(), cbn, index, qbuf[: r * m])  # Eq. 3-4; -1: not finite
                if (q < 0).any():
                    raise InvalidInputError(f"soft labels hold NaN or infinite values (row {s + int(np.argmax(q < 0)) // m})")
                out[s:s + r] = q.reshape(r, m)
            else:
                bad = ~torch.isfinite(h.sum(1))
                if bool(bad.any()):
                    raise InvalidInputError(f"soft labels hold NaN or infinite values (row {s + int(bad.nonzero()[0, 0])})")
                out[s:s + r] = nearest_code(h.view(-1, dc), cb, method="torch", out=qt[: r * m]).view(r, m).cpu().numpy()
        return out

    def _projection(self, device: Any, dtype: torch.dtype) -> torch.Tensor:
        """The encoder P as the encode applies it.  In the logit space the row centring and the
        temperature are linear, so they move into P: ``(z/T - mean(z/T)) P = z (P - 1 mean_c(P)) / T``
        (probability input: ``log y`` times ``P - 1 mean_c(P)``)."""
        assert self.encoder is not None
        P = self.encoder.to(device=device, dtype=torch.float32)
        if self.space == "logits":
            P = P - P.mean(0, keepdim=True)
            if self.input == "logits":
                P = P / self.temperature
        return P.to(dtype).t().contiguous().t()  # column-major: 3x faster than row-major in a CPU bf16 mm, the same in fp32

    def _prepare_(self, y: torch.Tensor, inv_t: float, centre: bool) -> None:
        """The part of the map into the codec's space that is not folded into the projection, in
        place on float32 rows: ``softmax(z / T)`` (probability space of logits) or ``log y``
        (logit space of probabilities, floored at LOG_FLOOR); with ``centre`` (logit space) the
        rows are also centred (the folded centring is then a no-op)."""
        if self.space == "probs":
            if self.input == "logits":
                if inv_t != 1.0:
                    y.mul_(inv_t)
                torch.ops.aten._softmax.out(y, 1, False, out=y)
        else:
            if self.input == "probs":
                y.clamp_(min=LOG_FLOOR).log_()
            if centre:
                y.sub_(y.mean(1, keepdim=True))

    def encode_rows(self, x: Any) -> dict[str, np.ndarray]:
        idx = self.encode_indices(x)
        if self.entropy:
            return {n: p.array for n, p in entropy_index_parts(idx, self.bits, self.zstd_level).items()}
        return {"indices": idx}

    # -- decode ----------------------------------------------------------------------------------
    def decode_rows(self, parts: Mapping[str, Any], *, rows: Sequence[int] | None = None, device: Any = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Eq. 5, 6, 9: the given rows' indices -> renormalised probabilities (n, C) float32."""
        idx = join_index_parts(parts, self.bits) if self.entropy else need(parts, "indices", "vq")
        self._check_rows(len(idx), rows)
        return self.decode_indices(idx, device=device, dtype=dtype)

    def decode_indices(self, idx: Any, *, device: Any = None, dtype: torch.dtype = torch.float32,
                       out: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 5, 6, 9 for given indices (n, m); ``dtype=torch.bfloat16`` runs the matmul in bf16."""
        if self.codebook is None or self.decoder is None:
            raise InvalidInputError("vq: no codebook/decoder loaded")
        t = as_tensor(idx, "indices")
        if t.ndim != 2 or t.shape[1] != self.m:
            raise InvalidInputError(f"vq: indices must have shape (n, {self.m}), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.k):
            raise InvalidInputError(f"vq: index out of range [0, {self.k}): min {int(t.min())}, max {int(t.max())}")
        dev = torch.device(device) if device is not None else t.device
        cb = self.codebook.to(dev)
        D = self.decoder.to(dev)
        return decode_probs(t, cb, D, self.eps, dtype=dtype, out=out, space=self.space)

    def reconstruct(self, x: Any) -> torch.Tensor:
        """Encode then decode (no storage): the labels a student would see."""
        return self.decode_indices(self.encode_indices(x))


# -- entropy-coded index stream ------------------------------------------------------------------
def entropy_index_parts(idx: np.ndarray, bits: int, level: int = 19) -> dict[str, Part]:
    """Indices as byte planes compressed by zstd: ``indices_lo`` (low 8 bits) and, for
    bits > 8, ``indices_hi`` (the remaining bits).  zstd's Huffman literals exploit the skewed
    code usage and its matches repeated index patterns, so a plane can go below its order-0
    entropy (README: 7.2 bits per 9-bit index where the order-0 entropy is 8.2)."""
    idx = np.ascontiguousarray(idx)
    lo = (idx & 0xFF).astype(np.uint8)
    parts = {"indices_lo": Part(lo, zstd=level)}
    if bits > 8:
        hi = (idx >> 8).astype(np.uint8 if bits <= 16 else np.uint16)
        parts["indices_hi"] = Part(hi, zstd=level)
    return parts


def join_index_parts(parts: Mapping[str, Any], bits: int) -> torch.Tensor:
    """The indices (int64) from their ``indices_lo`` / ``indices_hi`` byte planes."""
    lo = as_tensor(need(parts, "indices_lo", "vq"), "vq indices_lo").to(torch.int64)
    if bits <= 8:
        return lo
    hi = as_tensor(need(parts, "indices_hi", "vq"), "vq indices_hi").to(device=lo.device, dtype=torch.int64)
    if hi.shape != lo.shape:
        raise InvalidInputError(f"vq: index planes disagree in shape: {tuple(lo.shape)} / {tuple(hi.shape)}")
    return lo | (hi << 8)


def empirical_entropy_bits(idx: np.ndarray, k: int) -> float:
    """Order-0 entropy of the index stream in bits per index (a lower bound for any
    order-0 coder)."""
    counts = np.bincount(np.asarray(idx).reshape(-1).astype(np.int64), minlength=k).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) if p.size else 0.0
