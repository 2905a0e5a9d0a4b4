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

import math
from typing import Any, Mapping, Sequence

import torch

from .._args import int_arg
from ..errors import InvalidInputError
from ._tensors import as_tensor
from .base import BudgetTerm, Codec, Part, PartSpec, register_codec

__all__ = ["Int8Codec", "Int8StateDictCodec", "quantize_int8", "dequantize_int8"]

_SCHEMES = ("asymmetric", "symmetric")
_MIN_SCALE = torch.finfo(torch.float32).tiny  # 2**-126, the smallest normal fp32: the floor of a scale


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
    x = as_tensor(x)
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
        scale = (amax / 127.0).clamp(min=_MIN_SCALE)  # a subnormal s would lose precision or round to 0
        scale = torch.where(amax > 0, scale, torch.ones_like(scale))
        q = torch.round(xf / scale.reshape(bshape)).clamp_(-127, 127).to(torch.int8)
        return q, scale, None
    lo = rows.amin(dim=1)
    hi = rows.amax(dim=1)
    _check_finite(lo)
    _check_finite(hi)
    # the range in float64: hi - lo overflows fp32 for weights near +-3.4e38
    lo, hi = lo.clamp(max=0.0).double(), hi.clamp(min=0.0).double()
    scale64 = (hi - lo) / 255.0
    scale64 = torch.where(scale64 > 0, scale64.clamp(min=_MIN_SCALE), torch.ones_like(scale64))
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
        if axis is not None:
            axis = int_arg("int8 axis", axis, -16, 15)
        if dtype not in _OUT_DTYPES:
            raise InvalidInputError(f"int8 output dtype must be one of {sorted(_OUT_DTYPES)}, got {dtype!r}")
        self.scheme = scheme
        self.axis = axis
        self.dtype = dtype

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "scheme": self.scheme, "axis": self.axis, "dtype": self.dtype}

    def encoded_parts(self, shape: Any) -> dict[str, PartSpec]:
        shape = tuple(int(d) for d in shape)
        if self.axis is not None and not -len(shape) <= self.axis < len(shape):
            raise InvalidInputError(f"axis {self.axis} out of range for a tensor of shape {shape}")
        c = 1 if self.axis is None else shape[self.axis]
        out = {"q": PartSpec("i8", shape), "scale": PartSpec("f32", (c,))}
        if self.scheme == "asymmetric":
            out["zero_point"] = PartSpec("i8", (c,))
        return out

    def budget_terms(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, BudgetTerm]:
        return _eq6_terms(shapes)

    def encode(self, x: Any) -> dict[str, Part]:
        t = as_tensor(x, "Int8Codec.encode")
        q, scale, zp = quantize_int8(t, scheme=self.scheme, axis=self.axis)
        parts = {"q": Part(q), "scale": Part(scale.contiguous())}
        if zp is not None:
            parts["zero_point"] = Part(zp.contiguous())
        return parts

    def decode(self, parts: Mapping[str, Any]) -> torch.Tensor:
        for need in ("q", "scale") + (("zero_point",) if self.scheme == "asymmetric" else ()):
            if need not in parts:
                raise InvalidInputError(f"int8 object is missing its {need!r} part")
        q = as_tensor(parts["q"], "int8 part 'q'")
        scale = as_tensor(parts["scale"], "int8 part 'scale'")
        zp = as_tensor(parts["zero_point"], "int8 part 'zero_point'") if self.scheme == "asymmetric" else None
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


def _eq6_terms(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, BudgetTerm]:
    """Int8 parts at the paper's widths: 1 B per int8 weight and zero point, 4 B per scale and float value."""
    labels = {"q": ("int8 weights, Eq. 6: 1 B per weight", 1, None),
              "scale": ("Eq. 6 scales s: 4 B per output channel", 4, "f32"),
              "zero_point": ("Eq. 6 zero points z: 1 B per output channel", 1, None),
              "float": ("biases and norms kept float: 4 B each (fp32)", 4, "f32")}
    return {p: BudgetTerm(labels[p][0], float(labels[p][1] * math.prod(shape)), formula_dtype=labels[p][2])
            for p, shape in shapes.items() if p in labels}


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
        if not isinstance(shape, (list, tuple)) or len(shape) > 16:
            raise InvalidInputError(f"{bad}: shape must be a list of at most 16 ints >= 0")
        shape = [int_arg(f"{bad}: shape", d) for d in shape]
        if kind == "q" and len(ent) == 4 and shape:
            out.append([name, shape, "q", int_arg(f"{bad}: axis", ent[3], 0, len(shape) - 1)])
        elif kind == "f" and len(ent) == 3:
            out.append([name, shape, "f"])
        else:
            raise InvalidInputError(f"{bad}: kind must be 'q' (with an axis, for a tensor of at least 1 dimension) or 'f'")
    return out


@register_codec
class Int8StateDictCodec(Codec):
    """A dict of named tensors (a model's state dict) with chosen tensors int8-quantised (Eq. 6).

    The manifest ``tensors`` (in storage order: ``[name, shape, "q", axis]`` for a tensor
    quantised per channel along ``axis``, ``[name, shape, "f"]`` for one kept float at
    ``float_dtype``) fixes what ``encode`` accepts and what ``decode`` rebuilds; build it
    from a state dict with :meth:`for_state_dict`. All int8 values are concatenated into one
    part ``q``, all per-channel scales into ``scale`` (fp32), zero points into ``zero_point``
    (int8, asymmetric scheme) and the float tensors into ``float``, so a reader maps four
    sections and slices them without copying. ``model`` is an opaque JSON description of
    what the state dict belongs to (e.g. a diffusers config), carried along and not
    interpreted here.
    """

    codec_id = "int8-state"

    def __init__(self, tensors: Sequence[Any], scheme: str = "asymmetric", float_dtype: str = "f32",
                 zstd: int | None = None, model: Any = None):
        _check_scheme(scheme)
        if float_dtype not in _FLOAT_STORE:
            raise InvalidInputError(f"float_dtype must be one of {sorted(_FLOAT_STORE)}, got {float_dtype!r}")
        self.scheme = scheme
        self.float_dtype = float_dtype
        self.zstd = None if zstd is None else int_arg("int8-state zstd level", zstd, 1, 22)
        self.tensors = _check_manifest(tensors)
        self.model = model

    @classmethod
    def for_state_dict(cls, shapes: Mapping[str, Sequence[int]], quantize: Mapping[str, int], **options: Any
                       ) -> "Int8StateDictCodec":
        """The codec for a state dict with these tensor ``shapes`` (name -> shape, in state-dict order),
        quantising the tensors of ``quantize`` (name -> channel axis, e.g. 0 for Conv/Linear weights)
        and keeping the others float; ``options`` are the other constructor arguments."""
        if not isinstance(quantize, Mapping) or not all(isinstance(k, str) for k in quantize):
            raise InvalidInputError(f"int8-state quantize must map tensor names to axis ints, got {quantize!r:.80}")
        unknown = set(quantize) - set(shapes)
        if unknown:
            raise InvalidInputError(f"tensors to quantise are not in the state dict: {sorted(unknown)[:5]}")
        manifest: list[list[Any]] = []
        for name, shape in shapes.items():
            dims = [int(d) for d in shape]
            if name in quantize:
                axis = int_arg(f"int8-state quantize axis of {name!r}", quantize[name], -len(dims), len(dims) - 1)
                if not dims:
                    raise InvalidInputError(f"cannot quantise the 0-d tensor {name!r} per channel")
                manifest.append([name, dims, "q", axis % len(dims)])
            else:
                manifest.append([name, dims, "f"])
        return cls(manifest, **options)

    def get_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"id": self.codec_id, "scheme": self.scheme, "float_dtype": self.float_dtype}
        if self.zstd is not None:
            cfg["zstd"] = self.zstd
        cfg["tensors"] = self.tensors
        cfg["model"] = self.model
        return cfg

    def encoded_parts(self, shape: Any = None) -> dict[str, PartSpec]:
        """The parts of the manifest's state dict (``shape``, a name -> shape mapping, must match it if given)."""
        if shape is not None:
            self._check_shapes({k: tuple(int(d) for d in v) for k, v in shape.items()})
        nq = nc = nf = 0
        for ent in self.tensors:
            n = math.prod(ent[1])
            if ent[2] == "q":
                nq += n
                nc += ent[1][ent[3]]
            else:
                nf += n
        out = {}
        if nq:
            out["q"] = PartSpec("i8", (nq,), zstd=self.zstd)
            out["scale"] = PartSpec("f32", (nc,))
            if self.scheme == "asymmetric":
                out["zero_point"] = PartSpec("i8", (nc,))
        if nf:
            out["float"] = PartSpec(self.float_dtype, (nf,))
        return out

    def budget_terms(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, BudgetTerm]:
        return _eq6_terms(shapes)

    def _check_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        want = {ent[0]: tuple(ent[1]) for ent in self.tensors}
        if set(shapes) != set(want):
            raise InvalidInputError(f"state dict tensors {sorted(set(shapes) ^ set(want))[:5]} are not both in the input "
                                    f"and in the codec's manifest")
        for name, shape in shapes.items():
            if shape != want[name]:
                raise InvalidInputError(f"state dict entry {name!r} has shape {list(shape)}, the manifest says {list(want[name])}")

    def encode(self, x: Mapping[str, Any]) -> dict[str, Part]:
        if not isinstance(x, Mapping) or not x:
            raise InvalidInputError("Int8StateDictCodec.encode needs a non-empty mapping name -> tensor")
        tensors = {str(k): as_tensor(v, f"state dict entry {k!r}") for k, v in x.items()}
        self._check_shapes({k: tuple(t.shape) for k, t in tensors.items()})
        for k, t in tensors.items():
            if not t.is_floating_point():
                raise InvalidInputError(f"state dict entry {k!r} has non-float dtype {t.dtype}")
        qs, scales, zps, floats = [], [], [], []
        fdt = _FLOAT_STORE[self.float_dtype]
        for ent in self.tensors:
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
        get = {k: as_tensor(v, f"int8 state part {k!r}") for k, v in parts.items()}
        need = {p: spec.count for p, spec in self.encoded_parts().items()}
        unexpected = sorted(set(get) - set(need))
        if unexpected:  # e.g. a zero point stored but the config says symmetric: decoding would be wrong
            raise InvalidInputError(f"int8 state dict object has parts {unexpected} that its config "
                                    f"(scheme {self.scheme!r}, manifest) does not use; expected {sorted(need)}")
        for name, count in need.items():
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
            n = math.prod(shape)
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
