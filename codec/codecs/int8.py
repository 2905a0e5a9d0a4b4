"""Per-output-channel int8 linear quantisation (the paper's Eq. 6).

Eq. 6 of the LVDD paper (appendix A.1) quantises a weight as::

    x_q = round(x / s) + z            (s: fp32 scale, z: zero point)

and we dequantise with ``x ~= (x_q - z) * s``. One ``(s, z)`` pair is kept per output
channel (axis 0 of a Conv/Linear weight; ``axis=None`` for one pair per tensor).

* ``scheme="asymmetric"`` (default, as the paper writes Eq. 6): the channel's range
  ``[min(x, 0), max(x, 0)]`` is mapped onto ``[-128, 127]``; ``s = (hi - lo) / 255`` and
  ``z = round(-128 - lo / s)``, an int8 (``lo <= 0 <= hi`` keeps ``z`` inside int8).
* ``scheme="symmetric"``: ``s = max|x| / 127``, ``z = 0`` (what optimum-quanto's qint8
  weight quantisation, used by the LVDD code, actually does); no zero point is stored.

The worst-case error per element is ``s / 2`` (round to nearest), plus float rounding.
All arithmetic is device-agnostic torch: CUDA tensors are quantised on the GPU.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError
from .base import Codec, Part, register_codec

__all__ = ["Int8Codec", "Int8StateDictCodec", "quantize_int8", "dequantize_int8"]

_SCHEMES = ("asymmetric", "symmetric")


def _as_tensor(x: Any, what: str = "input") -> torch.Tensor:
    """``x`` as a torch tensor (numpy arrays zero-copy; lists/scalars converted); the one copy
    shared by the int8 and Tucker codecs. Raw bf16 numpy arrays (dtype ``V2``/uint16 bits from a
    .ddz read with ``framework="numpy"``) are refused: read bf16 sections as torch tensors."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "V":
            raise InvalidInputError(f"{what}: cannot read raw bf16 numpy arrays; ask for torch tensors")
        if x.dtype.kind not in "biuf":
            raise InvalidInputError(f"{what}: unsupported numpy dtype {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x))
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - report any conversion failure as bad input
        raise InvalidInputError(f"{what}: cannot convert {type(x).__name__} to a tensor: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(f"{what}: cannot convert {type(x).__name__} to a numeric tensor (got dtype {arr.dtype})")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _check_scheme(scheme: str) -> None:
    if scheme not in _SCHEMES:
        raise InvalidInputError(f"int8 scheme must be one of {_SCHEMES}, got {scheme!r}")


def _check_finite(t: torch.Tensor) -> None:
    # NaN and +-inf propagate through amin/amax, so checking the per-channel extrema suffices
    if not bool(torch.isfinite(t).all()):
        raise InvalidInputError("int8 quantisation: input holds NaN or infinity")


def quantize_int8(
    x: torch.Tensor, *, scheme: str = "asymmetric", axis: int | None = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantise ``x`` with Eq. 6, ``x_q = round(x / s) + z``, one ``(s, z)`` per slice of ``axis``.

    Returns ``(q int8 with x's shape, scale fp32 [C], zero_point int8 [C] or None)`` where
    ``C = x.shape[axis]`` (``C = 1`` for ``axis=None``). ``zero_point`` is None for the
    symmetric scheme. Raises :class:`InvalidInputError` on non-float or non-finite input.
    """
    _check_scheme(scheme)
    if not isinstance(x, torch.Tensor):
        x = _as_tensor(x)
    if not (x.is_floating_point()):
        raise InvalidInputError(f"int8 quantisation needs a floating-point tensor, got {x.dtype}")
    if x.numel() == 0:
        raise InvalidInputError("int8 quantisation of an empty tensor")
    if axis is not None:
        if x.dim() == 0:
            raise InvalidInputError("per-channel int8 quantisation needs at least 1 dimension; use axis=None")
        if not -x.dim() <= axis < x.dim():
            raise InvalidInputError(f"axis {axis} out of range for a tensor of shape {tuple(x.shape)}")
        axis = axis % x.dim()
    xf = x.detach().to(torch.float32)
    if axis is None:
        rows = xf.reshape(1, -1)
    else:
        rows = xf.movedim(axis, 0).reshape(xf.shape[axis], -1)
    bshape = [1] * xf.dim()
    if axis is not None:
        bshape[axis] = -1
    if scheme == "symmetric":
        amax = rows.abs().amax(dim=1)
        _check_finite(amax)
        scale = amax / 127.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(xf / scale.reshape(bshape)).clamp_(-127, 127).to(torch.int8)
        return q, scale, None
    lo = rows.amin(dim=1)
    hi = rows.amax(dim=1)
    _check_finite(lo)
    _check_finite(hi)
    # the range in float64: hi - lo overflows fp32 for weights near +-3.4e38
    lo, hi = lo.clamp(max=0.0).double(), hi.clamp(min=0.0).double()
    scale64 = (hi - lo) / 255.0
    scale64 = torch.where(scale64 > 0, scale64, torch.ones_like(scale64))
    zp = torch.round(-128.0 - lo / scale64).clamp_(-128, 127).float()
    scale = scale64.float()
    q = (torch.round(xf / scale.reshape(bshape)) + zp.reshape(bshape)).clamp_(-128, 127).to(torch.int8)
    return q, scale, zp.to(torch.int8)


def dequantize_int8(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    *,
    axis: int | None = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Invert Eq. 6: ``x = (x_q - z) * s`` broadcast along ``axis``; result in ``dtype``."""
    bshape = [1] * q.dim()
    if axis is not None:
        bshape[axis % q.dim()] = -1
    x = q.to(torch.float32)
    if zero_point is not None:
        x = x - zero_point.to(device=q.device, dtype=torch.float32).reshape(bshape)
    x = x * scale.to(device=q.device, dtype=torch.float32).reshape(bshape)
    return x.to(dtype)


@register_codec
class Int8Codec(Codec):
    """One float tensor as int8 with per-channel fp32 scales (Eq. 6).

    Parts: ``q`` (int8, the tensor's shape), ``scale`` (fp32 ``[C]``) and, for the
    asymmetric scheme, ``zero_point`` (int8 ``[C]``). ``decode`` returns an fp32 torch
    tensor on the device of the parts (or ``dtype`` given at construction).
    """

    codec_id = "int8"

    def __init__(self, scheme: str = "asymmetric", axis: int | None = 0, dtype: str = "f32"):
        _check_scheme(scheme)
        if axis is not None and not isinstance(axis, int):
            raise InvalidInputError(f"int8 axis must be an int or None, got {axis!r}")
        if dtype not in _OUT_DTYPES:
            raise InvalidInputError(f"int8 output dtype must be one of {sorted(_OUT_DTYPES)}, got {dtype!r}")
        self.scheme = scheme
        self.axis = axis
        self.dtype = dtype

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "scheme": self.scheme, "axis": self.axis, "dtype": self.dtype}

    def encode(self, x: Any) -> dict[str, Part]:
        t = _as_tensor(x, "Int8Codec.encode")
        q, scale, zp = quantize_int8(t, scheme=self.scheme, axis=self.axis)
        parts = {"q": Part(q), "scale": Part(scale.contiguous())}
        if zp is not None:
            parts["zero_point"] = Part(zp.contiguous())
        return parts

    def decode(self, parts: Mapping[str, Any]) -> torch.Tensor:
        for need in ("q", "scale") + (("zero_point",) if self.scheme == "asymmetric" else ()):
            if need not in parts:
                raise InvalidInputError(f"int8 object is missing its {need!r} part")
        q = _as_tensor(parts["q"], "int8 part 'q'")
        scale = _as_tensor(parts["scale"], "int8 part 'scale'")
        zp = _as_tensor(parts["zero_point"], "int8 part 'zero_point'") if self.scheme == "asymmetric" else None
        if q.dtype != torch.int8:
            raise InvalidInputError(f"int8 part 'q' has dtype {q.dtype}, expected int8")
        n = 1 if self.axis is None else (q.shape[self.axis % q.dim()] if q.dim() else -1)
        if scale.numel() != n or (zp is not None and zp.numel() != n):
            raise InvalidInputError(
                f"int8 parts disagree: q shape {tuple(q.shape)} on axis {self.axis} needs {n} scales/zero points, "
                f"got {scale.numel()} / {None if zp is None else zp.numel()}"
            )
        return dequantize_int8(q, scale, zp, axis=self.axis, dtype=_OUT_DTYPES[self.dtype])


_OUT_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64}


_FLOAT_STORE = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_manifest(tensors: Any) -> list[list[Any]]:
    """Validate a state-dict manifest: entries ``[name, shape, "q", axis]`` or ``[name, shape, "f"]``
    with a unique str name, a list of ints >= 0 as shape and ``0 <= axis < len(shape)``."""
    if not isinstance(tensors, (list, tuple)):
        raise InvalidInputError(f"int8 state dict manifest must be a list, got {type(tensors).__name__}")
    out, seen = [], set()
    for i, ent in enumerate(tensors):
        bad = f"int8 state dict manifest entry {i} ({str(ent)[:60]})"
        if not isinstance(ent, (list, tuple)) or len(ent) not in (3, 4):
            raise InvalidInputError(f"{bad}: expected [name, shape, 'q', axis] or [name, shape, 'f']")
        name, shape, kind = ent[0], ent[1], ent[2]
        if not isinstance(name, str) or not name or name in seen:
            raise InvalidInputError(f"{bad}: name must be a unique non-empty string")
        seen.add(name)
        if not isinstance(shape, (list, tuple)) or len(shape) > 16 or not all(_is_int(d) and d >= 0 for d in shape):
            raise InvalidInputError(f"{bad}: shape must be a list of at most 16 ints >= 0")
        if kind == "q":
            if len(ent) != 4 or not _is_int(ent[3]) or not 0 <= ent[3] < len(shape):
                raise InvalidInputError(f"{bad}: a 'q' entry needs an axis int in 0..{len(shape) - 1}")
            out.append([name, [int(d) for d in shape], "q", int(ent[3])])
        elif kind == "f" and len(ent) == 3:
            out.append([name, [int(d) for d in shape], "f"])
        else:
            raise InvalidInputError(f"{bad}: kind must be 'q' (with an axis) or 'f'")
    return out


@register_codec
class Int8StateDictCodec(Codec):
    """A dict of named tensors (a model's state dict) with chosen tensors int8-quantised (Eq. 6).

    ``quantize`` maps each tensor name to quantise to its channel axis (0 for Conv/Linear
    weights); every other tensor is stored as float (``float_dtype``). All int8 values
    are concatenated into one part ``q``, all per-channel scales into ``scale`` (fp32),
    zero points into ``zero_point`` (int8, asymmetric scheme) and the float tensors into
    ``float``, so a reader maps four sections and slices them without copying. The
    manifest (names, shapes, axes, in state-dict order) lives in the codec config, with
    ``model``: an opaque JSON description of what the state dict belongs to (e.g. a
    diffusers config), carried along and not interpreted here.
    """

    codec_id = "int8-state"

    def __init__(self, scheme: str = "asymmetric", quantize: Mapping[str, int] | None = None,
                 float_dtype: str = "f32", zstd: int | None = None, tensors: Sequence[Any] | None = None,
                 model: Any = None):
        _check_scheme(scheme)
        if float_dtype not in _FLOAT_STORE:
            raise InvalidInputError(f"float_dtype must be one of {sorted(_FLOAT_STORE)}, got {float_dtype!r}")
        if zstd is not None and not (isinstance(zstd, int) and 1 <= zstd <= 22):
            raise InvalidInputError(f"zstd level must be 1..22 or None, got {zstd!r}")
        if quantize is not None and not (isinstance(quantize, Mapping)
                                         and all(isinstance(k, str) and _is_int(v) for k, v in quantize.items())):
            raise InvalidInputError(f"int8-state quantize must map tensor names to axis ints, got {quantize!r:.80}")
        self.scheme = scheme
        self.quantize = {str(k): int(v) for k, v in (quantize or {}).items()}
        self.float_dtype = float_dtype
        self.zstd = zstd
        self.tensors = None if tensors is None else _check_manifest(tensors)
        self.model = model

    def get_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"id": self.codec_id, "scheme": self.scheme, "float_dtype": self.float_dtype}
        if self.zstd is not None:
            cfg["zstd"] = self.zstd
        cfg["tensors"] = self.tensors
        cfg["model"] = self.model
        return cfg

    def plan(self, shapes: Mapping[str, Sequence[int]]) -> list[list[Any]]:
        """Manifest entries ``[name, shape, "q", axis]`` / ``[name, shape, "f"]`` for tensors of ``shapes``."""
        unknown = set(self.quantize) - set(shapes)
        if unknown:
            raise InvalidInputError(f"tensors to quantise are not in the state dict: {sorted(unknown)[:5]}")
        out = []
        for name, shape in shapes.items():
            shape = [int(s) for s in shape]
            if name in self.quantize:
                axis = self.quantize[name]
                if not shape or not -len(shape) <= axis < len(shape):
                    raise InvalidInputError(f"cannot quantise {name!r} of shape {shape} along axis {axis}")
                out.append([name, shape, "q", axis % len(shape)])
            else:
                out.append([name, shape, "f"])
        return out

    def part_sizes(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, str]]:
        """``{part: (element count, dtype name)}`` that ``encode`` would store for these shapes."""
        return self._sizes(self.plan(shapes))

    def _sizes(self, manifest: Sequence[Any]) -> dict[str, tuple[int, str]]:
        nq = nc = nf = 0
        for ent in manifest:
            n = int(np.prod(ent[1])) if ent[1] else 1
            if ent[2] == "q":
                nq += n
                nc += ent[1][ent[3]]
            else:
                nf += n
        out = {}
        if nq:
            out["q"] = (nq, "i8")
            out["scale"] = (nc, "f32")
            if self.scheme == "asymmetric":
                out["zero_point"] = (nc, "i8")
        if nf:
            out["float"] = (nf, self.float_dtype)
        return out

    def encode(self, x: Mapping[str, Any]) -> dict[str, Part]:
        if not isinstance(x, Mapping) or not x:
            raise InvalidInputError("Int8StateDictCodec.encode needs a non-empty mapping name -> tensor")
        tensors = {str(k): _as_tensor(v, f"state dict entry {k!r}") for k, v in x.items()}
        for k, t in tensors.items():
            if not t.is_floating_point():
                raise InvalidInputError(f"state dict entry {k!r} has non-float dtype {t.dtype}")
        manifest = self.plan({k: t.shape for k, t in tensors.items()})
        qs, scales, zps, floats = [], [], [], []
        fdt = _FLOAT_STORE[self.float_dtype]
        for ent in manifest:
            t = tensors[ent[0]]
            if ent[2] == "q":
                q, s, z = quantize_int8(t, scheme=self.scheme, axis=ent[3])
                qs.append(q.reshape(-1))
                scales.append(s)
                if z is not None:
                    zps.append(z)
            else:
                if not bool(torch.isfinite(t).all()):
                    raise InvalidInputError(f"state dict entry {ent[0]!r} holds NaN or infinity")
                floats.append(t.detach().reshape(-1).to(fdt))
        self.tensors = manifest
        parts: dict[str, Part] = {}
        if qs:
            parts["q"] = Part(torch.cat([q.cpu() for q in qs]), zstd=self.zstd)
            parts["scale"] = Part(torch.cat([s.cpu() for s in scales]))
            if zps:
                parts["zero_point"] = Part(torch.cat([z.cpu() for z in zps]))
        if floats:
            parts["float"] = Part(torch.cat([f.cpu() for f in floats]))
        return parts

    def decode(self, parts: Mapping[str, Any], dtype: torch.dtype = torch.float32,
               device: Any = None) -> dict[str, torch.Tensor]:
        if self.tensors is None:
            raise InvalidInputError("int8 state dict config has no tensor manifest")
        get = {k: _as_tensor(v, f"int8 state part {k!r}") for k, v in parts.items()}
        need = self._sizes(self.tensors)
        unexpected = sorted(set(get) - set(need))
        if unexpected:  # e.g. a zero point stored but the config says symmetric: decoding would be wrong
            raise InvalidInputError(f"int8 state dict object has parts {unexpected} that its config "
                                    f"(scheme {self.scheme!r}, manifest) does not use; expected {sorted(need)}")
        for name, (count, _) in need.items():
            if name not in get:
                raise InvalidInputError(f"int8 state dict object is missing its {name!r} part")
            if get[name].numel() != count:
                raise InvalidInputError(f"int8 state part {name!r} has {get[name].numel()} elements, manifest needs {count}")
        for name, want in (("q", (torch.int8,)), ("zero_point", (torch.int8,)), ("scale", (torch.float32,)),
                           ("float", tuple(_FLOAT_STORE.values()))):
            if name in get and get[name].dtype not in want:
                raise InvalidInputError(f"int8 state part {name!r} has dtype {get[name].dtype}, expected {want[0]}")
        if device is not None:
            get = {k: v.to(device) for k, v in get.items()}
        out: dict[str, torch.Tensor] = {}
        oq = oc = of = 0
        for ent in self.tensors:
            name, shape = ent[0], ent[1]
            n = int(np.prod(shape)) if shape else 1
            if ent[2] == "q":
                axis = ent[3]
                c = shape[axis]
                q = get["q"][oq:oq + n].reshape(shape)
                s = get["scale"][oc:oc + c]
                z = get["zero_point"][oc:oc + c] if self.scheme == "asymmetric" else None
                out[name] = dequantize_int8(q, s, z, axis=axis, dtype=dtype)
                oq += n
                oc += c
            else:
                out[name] = get["float"][of:of + n].reshape(shape).to(dtype, copy=True)  # never a view of a file mapping
                of += n
        return out
