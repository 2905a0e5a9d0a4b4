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
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import InvalidInputError
from ..format import DTYPES
from ._vqkernels import NUMBA_MAX_DC, NUMBA_MAX_K, nearest_kernel as _nearest_kernel, prep_codebook as _prep_codebook
from .base import Codec, Part, register_codec

# ----------------------------------------------------------------------------------------------
# Nearest-code assignment (Eq. 4) and index -> probability decoding (Eq. 5, 6, 9)
# ----------------------------------------------------------------------------------------------


def nearest_code(x, codebook, *, chunk: int = 4096, method: str = "auto", out=None):
    """Eq. 4: index of the nearest code (squared L2) for each row of ``x`` (n, dc).

    ``x`` and ``codebook`` are torch tensors (any device) or numpy arrays; returns int64 of
    the input's kind.  Ties go to the lower index (as ``argmin``).  ``method``: "auto",
    "numba" (CPU, small dc) or "torch".
    """
    is_np = isinstance(x, np.ndarray)
    xt = torch.from_numpy(np.ascontiguousarray(x)) if is_np else x
    cb = torch.from_numpy(np.ascontiguousarray(codebook)) if isinstance(codebook, np.ndarray) else codebook
    if xt.ndim != 2 or cb.ndim != 2 or xt.shape[1] != cb.shape[1]:
        raise InvalidInputError(f"nearest_code: x {tuple(xt.shape)} and codebook {tuple(cb.shape)} must be (n, dc) and (k, dc)")
    n, dc = xt.shape
    k = cb.shape[0]
    if method == "auto":
        method = "numba" if (xt.device.type == "cpu" and dc <= NUMBA_MAX_DC and k <= NUMBA_MAX_K) else "torch"
    elif method not in ("numba", "torch"):
        raise InvalidInputError(f"nearest_code: method must be 'auto', 'numba' or 'torch', got {method!r}")
    if method == "numba":
        if k > NUMBA_MAX_K:
            raise InvalidInputError(f"nearest_code: method 'numba' takes at most {NUMBA_MAX_K} codes, got {k}")
        if not torch.isfinite(cb).all():
            raise InvalidInputError("nearest_code: non-finite values in the codebook")
        xn = np.ascontiguousarray(xt.detach().to(torch.float32).numpy())
        cbn, bias = _prep_codebook(cb.detach().to(torch.float32).cpu().numpy())
        res = np.empty(n, np.int32)
        if n and k:
            _nearest_kernel(dc)(xn, cbn, bias, res)  # -1 marks a row with a NaN or infinity
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
    bias = (-0.5 * (cbf * cbf).sum(1)).unsqueeze(0)
    result = out if out is not None else torch.empty(n, dtype=torch.int64, device=xt.device)
    c = max(1, min(chunk, n))
    buf = torch.empty((c, k), dtype=dtype, device=xt.device)
    vals = torch.empty(c, dtype=dtype, device=xt.device)
    for s in range(0, n, c):
        e = min(n, s + c)
        b = buf[: e - s]
        torch.addmm(bias, xt[s:e], cbT, out=b)
        torch.max(b, 1, out=(vals[: e - s], result[s:e]))
    return result.numpy() if is_np else result


def renorm_(y: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 9 in place: ``y <- max(y, eps) / sum_l max(y_l, eps)`` row-wise."""
    y.clamp_min_(eps)
    y.div_(y.sum(1, keepdim=True))
    return y


def decode_probs(indices, codebook: torch.Tensor, decoder: torch.Tensor, eps: float, *,
                 dtype: torch.dtype = torch.float32, chunk: int = 4096, out: torch.Tensor | None = None,
                 renorm: bool = True) -> torch.Tensor:
    """Eq. 6 + Eq. 9: indices (n, m) -> renormalised probabilities (n, C) float32.

    ``hhat = [mu_q1, ..., mu_qm]`` (Eq. 5), ``yhat = hhat D`` (Eq. 6), then Eq. 9.  The
    matmul runs in ``dtype`` (float32, or bfloat16/float16 for speed); the renormalisation
    always in float32.  Runs on the device of ``codebook``.
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
        if renorm:
            renorm_(res[s:e], eps)  # Eq. 9
    return res


# ----------------------------------------------------------------------------------------------

_PARAM_DTYPES = {"f32": torch.float32, "f16": torch.float16}
INPUT_KINDS = ("probs", "logits")
#: Largest class count a soft-label codec accepts (a config read from a file cannot ask a
#: decoder to allocate rows x 2**40 floats).
MAX_CLASSES = 1 << 24


def check_common(classes, input, temperature, eps, who: str = "soft labels") -> None:
    """Validate the arguments every soft-label codec shares (InvalidInputError otherwise)."""
    if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= MAX_CLASSES:
        raise InvalidInputError(f"{who}: classes must be an integer in [2, 2**24], got {classes!r}")
    if input not in INPUT_KINDS:
        raise InvalidInputError(f"{who}: input must be one of {INPUT_KINDS}, got {input!r}")
    if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
        raise InvalidInputError(f"{who}: temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(eps, bool) or not (isinstance(eps, (int, float)) and 0 < eps < 1):
        raise InvalidInputError(f"{who}: eps must be in (0, 1), got {eps!r}")


def index_bits(k: int) -> int:
    """``ceil(log2 k)`` (at least 1): bits per stored index."""
    return max(1, (int(k) - 1).bit_length())


def index_dtype_name(bits: int) -> str:
    """The smallest unsigned .ddz dtype holding ``bits``-bit indices: "u8", "u16" or "u32"."""
    return "u8" if bits <= 8 else "u16" if bits <= 16 else "u32"


def index_dtype(bits: int) -> np.dtype:
    return DTYPES[index_dtype_name(bits)]


def as_tensor(x: Any, name: str = "input") -> torch.Tensor:
    """numpy / memmap / torch -> torch tensor (no copy for numpy when possible)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype == np.float16 or x.dtype == np.float32 or x.dtype == np.float64:
            return torch.from_numpy(np.ascontiguousarray(x))
        if np.issubdtype(x.dtype, np.integer):
            return torch.from_numpy(np.ascontiguousarray(x).astype(np.int64))
        raise InvalidInputError(f"{name}: expected a float or integer array, got dtype {x.dtype}")
    raise InvalidInputError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")


def finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` unchanged, or InvalidInputError (naming the first bad row of a 2-D ``t``) when it
    holds a NaN or an infinity, e.g. a stored part that would decode to NaN probabilities."""
    if t.is_floating_point() and not torch.isfinite(t).all():
        row = f" (row {int((~torch.isfinite(t)).any(1).nonzero()[0, 0])})" if t.ndim == 2 else ""
        raise InvalidInputError(f"{what} holds NaN or infinite values{row}")
    return t


def to_probs(x: Any, input: str = "probs", temperature: float = 1.0, *, classes: int | None = None,
             device=None) -> torch.Tensor:
    """Soft labels as float32 probabilities: ``softmax(z / temperature)`` for logits
    (paper Sec. 3.1, ``y = softmax(z / tau)``), unchanged for probabilities."""
    t = as_tensor(x)
    if device is not None:
        t = t.to(device)
    if t.ndim != 2:
        raise InvalidInputError(f"soft labels must be 2-D (n, C), got shape {tuple(t.shape)}")
    if classes is not None and t.shape[1] != classes:
        raise InvalidInputError(f"soft labels have {t.shape[1]} classes, the codec expects {classes}")
    if not t.is_floating_point():
        raise InvalidInputError(f"soft labels must be floating point, got {t.dtype}")
    if input not in INPUT_KINDS:
        raise InvalidInputError(f"input must be one of {INPUT_KINDS}, got {input!r}")
    t = t.to(torch.float32)
    if input == "logits":
        t = torch.softmax(t / float(temperature), dim=1)
    # NaN/inf probabilities, or logits with NaN or +inf (their softmax is NaN)
    return finite(t, f"this batch of soft labels ({input})")


class RowSpec(tuple):
    """How a per-row part is stored: (dtype name, row shape, bits or None, zstd level or None)."""

    def __new__(cls, dtype: str, row_shape: tuple, bits: int | None = None, zstd: int | None = None):
        return super().__new__(cls, (dtype, tuple(row_shape), bits, zstd))

    dtype = property(lambda s: s[0])
    row_shape = property(lambda s: s[1])
    bits = property(lambda s: s[2])
    zstd = property(lambda s: s[3])


class SoftLabelCodec(Codec):
    """A codec for soft labels (rows of class probabilities).

    Parts split into *row parts* (one row per soft label, streamed and sliceable by row
    range: ``row_specs``/``encode_rows``) and *shared parts* (codebook, decoder, levels,
    components: ``param_parts``).  ``decode_rows`` turns a row range's parts plus the shared
    parts into renormalised probabilities (float32 torch, on the requested device).
    """

    classes: int

    def row_specs(self) -> dict[str, RowSpec]:
        raise NotImplementedError

    def encode_rows(self, x: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def param_parts(self) -> dict[str, Part]:
        return {}

    def load_parts(self, parts: Mapping[str, Any]) -> "SoftLabelCodec":
        return self

    def decode_rows(self, parts: Mapping[str, Any], *, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: Any) -> dict[str, Part]:
        rows = self.encode_rows(x)
        specs = self.row_specs()
        parts = {n: Part(a, bits=specs[n].bits, zstd=specs[n].zstd) for n, a in rows.items()}
        parts.update(self.param_parts())
        return parts

    def decode(self, parts: Mapping[str, Any], *, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        self.load_parts(parts)
        return self.decode_rows(parts, device=device, dtype=dtype)


@register_codec
class VQCodec(SoftLabelCodec):
    """Linear VQ autoencoder (paper Eq. 2-9). Parameters live on the instance after
    training (:func:`codec.softlabels.train_vq`) or after :meth:`decode`/:meth:`load_parts`."""

    codec_id = "vq"

    def __init__(self, classes: int, dh: int, dc: int, k: int, *, eps: float = 1e-8, input: str = "probs",
                 temperature: float = 1.0, param_dtype: str = "f32", entropy: bool = False,
                 store_encoder: bool = False, zstd_level: int = 19):
        check_common(classes, input, temperature, eps, "vq")
        for nm, v in (("dh", dh), ("dc", dc), ("k", k)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InvalidInputError(f"vq: {nm} must be a positive integer, got {v!r}")
        if dh % dc:
            raise InvalidInputError(f"vq: dh={dh} must be divisible by dc={dc} (Eq. 3)")
        if not 2 <= k <= 1 << 24:
            raise InvalidInputError(f"vq: k must be in [2, 2**24], got {k}")
        if param_dtype not in _PARAM_DTYPES:
            raise InvalidInputError(f"vq: param_dtype must be one of {sorted(_PARAM_DTYPES)}, got {param_dtype!r}")
        if isinstance(zstd_level, bool) or not isinstance(zstd_level, int) or not -7 <= zstd_level <= 22:
            raise InvalidInputError(f"vq: zstd_level must be an integer in [-7, 22], got {zstd_level!r}")
        self.classes, self.dh, self.dc, self.k = classes, dh, dc, k
        self.m = dh // dc
        self.bits = index_bits(k)
        self.eps = float(eps)
        self.input = input
        self.temperature = float(temperature)
        self.param_dtype = param_dtype
        self.entropy = bool(entropy)
        self.store_encoder = bool(store_encoder)
        self.zstd_level = int(zstd_level)
        self.encoder: torch.Tensor | None = None  # (C, dh)
        self.decoder: torch.Tensor | None = None  # (dh, C)
        self.codebook: torch.Tensor | None = None  # (k, dc)

    # -- config --------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "classes": self.classes, "dh": self.dh, "dc": self.dc, "k": self.k,
                "eps": self.eps, "input": self.input, "temperature": self.temperature,
                "param_dtype": self.param_dtype, "entropy": self.entropy, "store_encoder": self.store_encoder,
                "zstd_level": self.zstd_level}

    # -- parameters ------------------------------------------------------------------------------
    def set_params(self, encoder=None, decoder=None, codebook=None) -> "VQCodec":
        """Install parameters (validated shapes), stored as float32 tensors."""
        if encoder is not None:
            self.encoder = self._param(encoder, (self.classes, self.dh), "encoder")
        if decoder is not None:
            self.decoder = self._param(decoder, (self.dh, self.classes), "decoder")
        if codebook is not None:
            self.codebook = self._param(codebook, (self.k, self.dc), "codebook")
        return self

    def _param(self, a, shape, name) -> torch.Tensor:
        t = as_tensor(a, name)
        if tuple(t.shape) != shape:
            raise InvalidInputError(f"vq {name} must have shape {shape}, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise InvalidInputError(f"vq {name} must be floating point, got {t.dtype}")
        return finite(t.detach().to(torch.float32), f"vq {name}")

    @property
    def trained(self) -> bool:
        return self.encoder is not None and self.decoder is not None and self.codebook is not None

    def to(self, device) -> "VQCodec":
        for a in ("encoder", "decoder", "codebook"):
            t = getattr(self, a)
            if t is not None:
                setattr(self, a, t.to(device))
        return self

    def stored_param(self, name: str) -> torch.Tensor:
        """A parameter as it is stored (param_dtype), on CPU."""
        t = getattr(self, name)
        return t.detach().to("cpu", _PARAM_DTYPES[self.param_dtype]).contiguous()

    def rounded(self) -> "VQCodec":
        """Parameters rounded to the storage dtype (so encoding sees what decoding will)."""
        for a in ("encoder", "decoder", "codebook"):
            t = getattr(self, a)
            if t is not None:
                setattr(self, a, t.to(_PARAM_DTYPES[self.param_dtype]).to(torch.float32))
        return self

    # -- encode ----------------------------------------------------------------------------------
    def encode_indices(self, x: Any, *, chunk: int = 65536) -> np.ndarray:
        """Eq. 2-4: soft labels (n, C) -> indices (n, m) of dtype u8/u16/u32."""
        if not self.trained:
            raise InvalidInputError("vq: codec has no trained parameters (train it with codec.softlabels.train_vq)")
        t = as_tensor(x)
        n = t.shape[0] if t.ndim else 0
        out = np.empty((n, self.m), index_dtype(self.bits))
        P = self.encoder.to(t.device) if t.device.type != "cpu" else self.encoder
        cb = self.codebook.to(P.device)
        for s in range(0, n, chunk):
            y = to_probs(t[s:s + chunk], self.input, self.temperature, classes=self.classes)
            h = (y.to(P.device) @ P).reshape(-1, self.dc)
            q = nearest_code(h, cb)
            out[s:s + chunk] = q.reshape(-1, self.m).cpu().numpy()
        return out

    def row_specs(self) -> dict[str, RowSpec]:
        if self.entropy:
            specs = {"indices_lo": RowSpec("u8", (self.m,), None, self.zstd_level)}
            if self.bits > 8:
                specs["indices_hi"] = RowSpec("u8" if self.bits <= 16 else "u16", (self.m,), None, self.zstd_level)
            return specs
        return {"indices": RowSpec(index_dtype_name(self.bits), (self.m,), self.bits, None)}

    def encode_rows(self, x: Any) -> dict[str, np.ndarray]:
        idx = self.encode_indices(x)
        if self.entropy:
            return {n: p.array for n, p in entropy_index_parts(idx, self.bits, self.zstd_level).items()}
        return {"indices": idx}

    def index_parts(self, idx: np.ndarray) -> dict[str, Part]:
        if self.entropy:
            return entropy_index_parts(idx, self.bits, self.zstd_level)
        return {"indices": Part(idx, bits=self.bits)}

    def param_parts(self) -> dict[str, Part]:
        parts = {"codebook": Part(self.stored_param("codebook")), "decoder": Part(self.stored_param("decoder"))}
        if self.store_encoder:
            parts["encoder"] = Part(self.stored_param("encoder"))
        return parts

    # -- decode ----------------------------------------------------------------------------------
    def load_parts(self, parts: Mapping[str, Any]) -> "VQCodec":
        """Install codebook/decoder (and encoder if stored) from decoded parts."""
        self.set_params(codebook=parts["codebook"], decoder=parts["decoder"], encoder=parts.get("encoder"))
        return self

    def decode_rows(self, parts: Mapping[str, Any], *, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Eq. 5, 6, 9: the given rows' indices -> renormalised probabilities (n, C) float32."""
        idx = join_index_parts(parts, self.bits) if self.entropy else parts["indices"]
        return self.decode_indices(idx, device=device, dtype=dtype)

    def decode_indices(self, idx: Any, *, device=None, dtype: torch.dtype = torch.float32,
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
        return decode_probs(t, cb, D, self.eps, dtype=dtype, out=out)

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


def join_index_parts(parts: Mapping[str, Any], bits: int):
    lo = parts["indices_lo"]
    if isinstance(lo, torch.Tensor):
        out = lo.to(torch.int64)
        if bits > 8:
            out = out | (parts["indices_hi"].to(torch.int64) << 8)
        return out
    out = np.asarray(lo).astype(np.int64)
    if bits > 8:
        out |= np.asarray(parts["indices_hi"]).astype(np.int64) << 8
    return out


def empirical_entropy_bits(idx: np.ndarray, k: int) -> float:
    """Order-0 entropy of the index stream in bits per index (a lower bound for any
    order-0 coder)."""
    counts = np.bincount(np.asarray(idx).reshape(-1).astype(np.int64), minlength=k).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) if p.size else 0.0
