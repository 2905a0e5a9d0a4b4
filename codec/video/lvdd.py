"""What the LVDD code (Ning9319/Latent_Video_Dataset_Distillation) writes, read as it is.

**``synthetic_data.pt``** (``main_method.py``, ``--method Tucker``): ``torch.save({"cores":
[...], "factors": [[U_N, U_T, U_C, U_H, U_W], ...]})``, one entry per chunk of up to 400
selected latents ``[n, T, C, H, W]``, from tensorly's ``tucker`` (HOOI) with ranks ``[n,
int(0.75 T), C, int(0.75 H), int(0.75 W)]``; fp32.  It is read with
``torch.load(weights_only=True)`` (:func:`codec._torchfile.read_torch_file`) and stored as a
``tucker`` object without decomposing anything again:

* the sample-mode factor ``U_N`` (``n x n``, orthogonal, not the identity) is multiplied into
  the core, ``G' = G x_0 U_N``, so each sample keeps its own core row (the n x n factor is
  not stored; the reconstruction ``G' x_1 U_T x_2 U_C x_3 U_H x_4 U_W`` is the same tensor up to
  float rounding of that one product);
* every other factor is stored as it is, including the full-rank ``U_C`` (HOOI's is an
  orthogonal ``C x C`` matrix, not the identity).

LVDD saves no labels.  Its selection (DAPS, k-means, random init) takes IPC samples per class
in class order, so sample ``i`` has class ``i // IPC`` when every class had at least IPC clips
(:func:`class_order_labels`); a class with fewer clips contributes all it has, and then the
labels must be given explicitly.

**The optimum-quanto qint8 VAE folder** (``quantize_vae.py``: ``quantize(vae, weights=qint8,
activations=None)``, ``freeze``, ``save_file(vae.state_dict(), "quantized_vae.safetensors")``,
``quantization_map.json``, plus the ``config.json`` its loader reads): every quantised
Linear/Conv2d weight ``W`` is stored as ``W._data`` (int8, ``round(W / s)`` clamped to
[-128, 127]) and ``W._scale`` (``s = max|W| / 127`` per output channel, shape ``[out, 1, ...]``,
in the weight's dtype), with two scalar buffers ``input_scale`` / ``output_scale`` per quantised
module (ones without activation quantisation).  That is symmetric per-axis int8 with no zero
point, i.e. the ``int8-state`` codec's ``scheme="symmetric"``: :func:`read_quanto_vae_dir`
takes the int8 values and scales over exactly (scales widened to fp32, which is exact), so
dequantising gives quanto's weights bit for bit for an fp32 model (``q * s`` in fp32 both ways).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import torch

from .._torchfile import read_torch_file
from ..codecs.base import Part
from ..codecs.int8 import Int8StateDictCodec
from ..codecs.tucker import TuckerCodec
from ..errors import FormatError, InvalidInputError

__all__ = ["read_lvdd_synthetic", "class_order_labels", "is_quanto_dir", "read_quanto_vae_dir", "LVDD_NUM_CLASSES"]

#: Classes of LVDD's default dataset, miniUCF101 (``main_method.py --dataset miniUCF101``).
LVDD_NUM_CLASSES = 50
QUANTO_FILES = ("config.json", "quantization_map.json", "quantized_vae.safetensors")


def _tensor(x: Any, what: str, path: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.is_complex():
        raise FormatError(f"{path}: {what} must be a real float tensor, got {type(x).__name__}"
                          + (f" {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if not bool(torch.isfinite(x).all()):
        raise FormatError(f"{path}: {what} holds NaN or infinity")
    return x.detach().to(torch.float32)


def read_lvdd_synthetic(path: str | os.PathLike, *, dtype: str = "f32") -> tuple[TuckerCodec, dict[str, Part], tuple[int, ...]]:
    """LVDD's Tucker ``synthetic_data.pt`` -> ``(TuckerCodec, parts, latent shape [N, T, C, H, W])``.

    The chunks must be LVDD's: equal sizes but the last, one shape and one rank tuple for all,
    and a square sample-mode factor (rank = chunk size).  ``dtype``: storage of the core and
    factors ("f32" as LVDD, or "f16"/"bf16").
    """
    path = os.fspath(path)
    obj = read_torch_file(path, what="LVDD synthetic_data.pt")
    if isinstance(obj, dict) and set(obj) == {"basis", "coeffs"}:
        raise FormatError(f"{path}: this is LVDD's PCA output ({{'basis', 'coeffs'}}); only its Tucker output is read")
    if not isinstance(obj, dict) or not {"cores", "factors"} <= set(obj):
        raise FormatError(f"{path}: expected LVDD's {{'cores': [...], 'factors': [...]}}, got "
                          + (f"keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else type(obj).__name__))
    cores, factors = obj["cores"], obj["factors"]
    if not isinstance(cores, list) or not isinstance(factors, list) or not cores or len(cores) != len(factors):
        raise FormatError(f"{path}: 'cores' and 'factors' must be non-empty lists of the same length (one per chunk)")
    chunk = int(cores[0].shape[0]) if isinstance(cores[0], torch.Tensor) and cores[0].dim() else 0
    shape = ranks = None
    rows, facs = [], []
    for c, (core, fs) in enumerate(zip(cores, factors)):
        where = f"chunk {c}"
        core = _tensor(core, f"{where} core", path)
        if not isinstance(fs, (list, tuple)) or len(fs) != core.dim() or core.dim() < 2:
            raise FormatError(f"{path}: {where} needs one factor per axis of its core ({core.dim()}), got "
                              f"{len(fs) if isinstance(fs, (list, tuple)) else type(fs).__name__}")
        fs = [_tensor(f, f"{where} factor {k}", path) for k, f in enumerate(fs)]
        n = core.shape[0]
        if any(f.dim() != 2 or f.shape[1] != core.shape[k] for k, f in enumerate(fs)):
            raise FormatError(f"{path}: {where} factors {[tuple(f.shape) for f in fs]} do not fit its core {tuple(core.shape)}")
        if tuple(fs[0].shape) != (n, n):
            raise FormatError(f"{path}: {where} sample-mode factor is {tuple(fs[0].shape)}, LVDD's is square "
                              f"({n} x {n}: rank = chunk size)")
        dims = tuple(int(f.shape[0]) for f in fs[1:])
        rk = tuple(int(r) for r in core.shape[1:])
        if shape is None:
            shape, ranks = dims, rk
        elif dims != shape or rk != ranks:
            raise FormatError(f"{path}: {where} has shape {dims} / ranks {rk}; chunk 0 has {shape} / {ranks}")
        if n > chunk or (c < len(cores) - 1 and n != chunk):
            raise FormatError(f"{path}: chunk sizes must be equal but the last one's ({chunk}); {where} has {n}")
        rows.append((fs[0] @ core.reshape(n, -1)).reshape(core.shape))  # G x_0 U_N: each sample its own core row
        facs.append(fs[1:])
    assert shape is not None and ranks is not None
    codec = TuckerCodec(ranks=list(ranks), chunk_size=chunk, method="hooi", n_iter=100, tol=1e-4, dtype=dtype)
    store = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    core = torch.cat(rows, 0).to(store)
    if not bool(torch.isfinite(core.float()).all()):
        raise InvalidInputError(f"{path}: the core overflows storage dtype {dtype}")
    parts = {"core": Part(core.contiguous())}
    for k in range(len(shape)):
        parts[f"factor_{k + 1}"] = Part(torch.stack([f[k] for f in facs], 0).to(store).contiguous())
    n_total = core.shape[0]
    codec.check_parts(core.shape, TuckerCodec.factor_parts({p: v.array for p, v in parts.items()}))
    return codec, parts, (n_total, *shape)


def class_order_labels(n: int, *, ipc: int | None = None, num_classes: int | None = None) -> torch.Tensor:
    """LVDD's labels implied by class order: sample ``i`` has class ``i // ipc``.

    ``ipc`` (samples per class), or ``num_classes`` (then ``ipc = n / num_classes``, which must
    divide); with neither, LVDD's default dataset's ``num_classes`` (miniUCF101, 50)."""
    if ipc is not None and num_classes is not None:
        raise InvalidInputError("give ipc or num_classes, not both")
    if ipc is None:
        num_classes = LVDD_NUM_CLASSES if num_classes is None else num_classes
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1 or n % num_classes:
            raise InvalidInputError(f"{n} samples do not split into {num_classes!r} classes of IPC samples each; "
                                    "pass the IPC, the class count, or the labels themselves")
        ipc = n // num_classes
    if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1 or n % ipc:
        raise InvalidInputError(f"{n} samples are not whole classes of ipc={ipc!r}; pass the labels themselves")
    return torch.arange(n, dtype=torch.int64) // ipc


# --------------------------------------------------------------------------------------------
# optimum-quanto qint8 folders
# --------------------------------------------------------------------------------------------
def is_quanto_dir(path: str | os.PathLike) -> bool:
    """True for a folder holding ``quantization_map.json`` (an optimum-quanto save)."""
    return os.path.isfile(os.path.join(os.fspath(path), "quantization_map.json"))


def _read_json(path: str) -> Any:
    from .._files import open_regular

    with open_regular(path, "JSON file") as fh:
        try:
            return json.loads(fh.read(16 << 20).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise FormatError(f"{path}: not a JSON file ({exc})") from None


def read_quanto_vae_dir(path: str | os.PathLike, *, decoder_only: bool = False, zstd: int | None = None
                        ) -> tuple[Int8StateDictCodec, dict[str, Part]]:
    """An optimum-quanto qint8 diffusers VAE folder -> the ``int8-state`` codec (symmetric) and its
    parts, the int8 values and scales taken over as they are (see the module docstring).

    Only weight quantisation to ``qint8`` is read (``{"weights": "qint8", "activations":
    "none"}``, what LVDD uses); other quanto types (qint4 / qint2 group-wise affine, float8,
    quantised activations) are refused.  ``decoder_only`` keeps what decoding needs."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .vae import ENCODER_PREFIXES, _diffusers_class, _quiet_diffusers

    path = os.fspath(path)
    for fn in QUANTO_FILES:
        if not os.path.isfile(os.path.join(path, fn)):
            raise InvalidInputError(f"{path}: an optimum-quanto VAE folder needs {list(QUANTO_FILES)}; {fn} is missing")
    config = _read_json(os.path.join(path, "config.json"))
    qmap = _read_json(os.path.join(path, "quantization_map.json"))
    if not isinstance(config, dict) or not isinstance(qmap, dict):
        raise FormatError(f"{path}: config.json and quantization_map.json must hold JSON objects")
    wfile = os.path.join(path, "quantized_vae.safetensors")
    try:
        state = load_file(wfile)
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"{wfile}: not a readable safetensors file ({exc})") from None
    cls = _diffusers_class(config.get("_class_name", "AutoencoderKL"))
    cfg = {k: v for k, v in config.items() if k not in ("_diffusers_version", "_name_or_path")}
    try:
        with torch.device("meta"), _quiet_diffusers():
            model = cls.from_config(dict(cfg))
    except Exception as exc:  # noqa: BLE001 - diffusers raises anything for a bad config
        raise FormatError(f"{path}/config.json does not build a {cls.__name__}: {type(exc).__name__}: {exc}"[:300]) from None
    modules = dict(model.named_modules())
    for name, q in qmap.items():
        if q != {"weights": "qint8", "activations": "none"}:
            raise FormatError(f"{path}: module {name!r} is quantised as {q!r}; only optimum-quanto qint8 weights "
                              "without activation quantisation (LVDD's quantize(vae, weights=qint8)) are read"[:300])
        if not isinstance(modules.get(name), (torch.nn.Linear, torch.nn.Conv2d)):
            raise FormatError(f"{path}: quantization_map names {name!r}, which is not a Linear/Conv2d of {cls.__name__}")
    quantized = {f"{name}.weight" for name in qmap}
    used = set()
    manifest, qs, scales, floats = [], [], [], []
    float_dtypes = set()
    for key, ref in model.state_dict().items():
        if decoder_only and key.startswith(ENCODER_PREFIXES):
            continue
        shape = list(ref.shape)
        if key in quantized:
            dk, sk = f"{key}._data", f"{key}._scale"
            data, scale = state.get(dk), state.get(sk)
            if data is None or scale is None:
                raise FormatError(f"{wfile}: quantised weight {key!r} needs {dk!r} and {sk!r}")
            if data.dtype != torch.int8 or list(data.shape) != shape:
                raise FormatError(f"{wfile}: {dk} must be int8 of shape {shape}, got {data.dtype} {list(data.shape)}")
            if (not scale.is_floating_point() or scale.dim() != len(shape) or scale.shape[0] != shape[0]
                    or scale.numel() != shape[0]):
                raise FormatError(f"{wfile}: {sk} must be one float per output channel, shape [{shape[0]}, 1, ...], "
                                  f"got {scale.dtype} {list(scale.shape)}")
            s = scale.reshape(-1).to(torch.float32)
            if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
                raise FormatError(f"{wfile}: {sk} holds negative, NaN or infinite scales")
            manifest.append([key, shape, "q", 0])
            qs.append(data.reshape(-1))
            scales.append(s)
            used |= {dk, sk}
        else:
            t = state.get(key)
            if t is None:
                raise FormatError(f"{wfile}: tensor {key!r} of the {cls.__name__} config is missing")
            if list(t.shape) != shape or not t.is_floating_point():
                raise FormatError(f"{wfile}: {key!r} must be float of shape {shape}, got {t.dtype} {list(t.shape)}")
            if not bool(torch.isfinite(t).all()):
                raise FormatError(f"{wfile}: {key!r} holds NaN or infinity")
            manifest.append([key, shape, "f"])
            floats.append(t.reshape(-1))
            float_dtypes.add(t.dtype)
            used.add(key)
    for name in qmap:  # quanto's activation scales: ones without activation quantisation
        for buf in ("input_scale", "output_scale"):
            t = state.get(f"{name}.{buf}")
            if t is not None:
                if t.numel() != 1 or float(t.reshape(-1)[0]) != 1.0:
                    raise FormatError(f"{wfile}: {name}.{buf} is {t.reshape(-1)[:2].tolist()}, not quanto's 1 for "
                                      "weight-only quantisation")
                used.add(f"{name}.{buf}")
    extra = sorted(set(state) - used - ({k for k in state if k.startswith(ENCODER_PREFIXES)} if decoder_only else set()))
    if extra:
        raise FormatError(f"{wfile}: tensors {extra[:4]} are not part of the {cls.__name__} config or its quantisation")
    if len(float_dtypes) > 1:
        raise FormatError(f"{wfile}: float tensors of several dtypes {sorted(map(str, float_dtypes))}")
    fdt = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}.get(next(iter(float_dtypes), torch.float32))
    if fdt is None:
        raise FormatError(f"{wfile}: float tensors of dtype {next(iter(float_dtypes))} (f32/f16/bf16 are stored)")
    import diffusers

    desc = {"library": "diffusers", "class": cls.__name__, "config": cfg, "decoder_only": bool(decoder_only),
            "diffusers_version": diffusers.__version__,
            "source": {"format": "optimum-quanto qint8", "files": list(QUANTO_FILES)}}
    codec = Int8StateDictCodec(manifest, scheme="symmetric", float_dtype=fdt, zstd=zstd, model=desc)
    parts: dict[str, Part] = {}
    if qs:
        parts["q"] = Part(torch.cat(qs), zstd=zstd)
        parts["scale"] = Part(torch.cat(scales))
    if floats:
        parts["float"] = Part(torch.cat(floats))
    return codec, parts


def quanto_dequantized(codec: Int8StateDictCodec, parts: Mapping[str, Part]) -> dict[str, torch.Tensor]:
    """The float state dict quanto's ``dequantize()`` gives (``scale * data``), from the stored parts."""
    return codec.decode({k: p.array for k, p in parts.items()})
