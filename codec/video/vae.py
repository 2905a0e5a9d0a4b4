"""Int8 post-training quantisation of a diffusers autoencoder, stored in a .ddz (paper A.1, Eq. 6).

Every Conv/Linear weight of the model is quantised per output channel with Eq. 6
(``x_q = round(x / s) + z``; fp32 scale and int8 zero point per channel, or symmetric with
no zero point); biases and normalisation parameters stay float. The quantised state dict
is one :class:`~codec.codecs.int8.Int8StateDictCodec` object whose config carries the
diffusers class name and config (JSON), so :func:`read_vae` rebuilds a working diffusers
model offline: ``cls.from_config(config)`` on the meta device, then the dequantised
weights are assigned (no random init, no network).

``decoder_only=True`` keeps only what decoding needs (everything except ``encoder.*`` and
``quant_conv.*``); the rebuilt model's encoder then raises a clear error when called,
instead of silently running random weights.

Weights are dequantised once, at load, to fp32 (or the ``dtype`` asked for), so decoding
runs the same diffusers kernels as the fp32 model: it is as fast as fp32, and
``decode_latents(..., autocast="bf16")`` is the fast path on CPUs with AMX and on GPUs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from typing import Any, Mapping, cast

import torch
from torch import nn

from ..codecs.int8 import Int8StateDictCodec, dequantize_int8, quantize_int8
from ..codecs.objects import object_codec, write_object
from .._args import int_arg
from ..errors import DDZError, FormatError, InvalidInputError
from .io import parse_device

__all__ = [
    "SD_VAE_FT_MSE_CONFIG",
    "tiny_vae_config",
    "vae_from_config",
    "load_vae_dir",
    "save_vae_dir",
    "quantizable_weights",
    "vae_codec",
    "vae_parts",
    "write_vae",
    "read_vae",
    "build_vae",
    "stored_state",
    "fake_quantize",
    "decode_latents",
    "encode_frames",
    "decode_error",
]

#: The diffusers config of stabilityai/sd-vae-ft-mse (the paper's 2D VAE), as in its config.json.
SD_VAE_FT_MSE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

ENCODER_PREFIXES = ("encoder.", "quant_conv.")
_QUANT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_QUANT_TYPES_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_AUTOCAST = {None: None, "none": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def tiny_vae_config(latent_channels: int = 4, blocks: tuple[int, ...] = (32, 64), groups: int = 8) -> dict[str, Any]:
    """A small AutoencoderKL config (for tests and the quickstart): ``2**(len(blocks)-1)`` x downsampling."""
    n = len(blocks)
    return {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": list(blocks),
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": latent_channels,
        "layers_per_block": 1,
        "norm_num_groups": groups,
        "sample_size": 64,
    }


@contextlib.contextmanager
def _quiet_diffusers():
    try:
        from diffusers.utils import logging as dlog
    except ImportError:  # pragma: no cover
        yield
        return
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(level)


def _diffusers_class(name: Any):
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - diffusers is a dependency
        raise InvalidInputError(f"diffusers is needed for VAE models: {exc}") from None
    if not isinstance(name, str) or not name.isidentifier():
        raise InvalidInputError(f"diffusers config has no valid '_class_name' (got {name!r})")
    cls = getattr(diffusers, name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffusers.ModelMixin):
        raise InvalidInputError(f"{name!r} is not a diffusers model class")
    return cls


def vae_from_config(config: Mapping[str, Any] | str | os.PathLike, seed: int | None = 0) -> nn.Module:
    """A randomly initialised diffusers model from a config dict or a config.json path (no download)."""
    if not isinstance(config, Mapping):
        config = _read_json(os.fspath(config))
    cls = _diffusers_class(config.get("_class_name", "AutoencoderKL"))
    ctx = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with ctx:
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = cls.from_config(dict(config))
        except Exception as exc:  # noqa: BLE001 - diffusers raises anything (IndexError, ZeroDivisionError, ...)
            raise InvalidInputError(f"cannot build {cls.__name__} from its config: {_short(exc)}") from None
    return model.eval().requires_grad_(False)


def _short(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` of ``exc``, first line only, at most ``limit`` characters (torch and
    diffusers messages can run to thousands of lines)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_json(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidInputError(f"{path}: expected a JSON object")
    return doc


def load_vae_dir(path: str | os.PathLike, device: Any = None) -> nn.Module:
    """Load a diffusers model folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), offline.

    Every problem (missing folder or files, bad JSON, unknown class, missing or
    mismatched weights) raises :class:`InvalidInputError` naming the path.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise InvalidInputError(f"VAE folder {path!r} does not exist or is not a folder")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise InvalidInputError(f"VAE folder {path!r} has no config.json (expected a diffusers model folder)")
    config = _read_json(cfg_path)
    cls = _diffusers_class(config.get("_class_name"))
    weights = os.path.join(path, "diffusion_pytorch_model.safetensors")
    if not os.path.isfile(weights):
        found = sorted(os.listdir(path))
        raise InvalidInputError(f"VAE folder {path!r} has no diffusion_pytorch_model.safetensors (found {found[:8]}); "
                                "only safetensors weights are read (never pickles)")
    try:
        from safetensors.torch import load_file

        state = load_file(weights)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise InvalidInputError(f"{weights}: not a readable safetensors file ({exc})") from None
    decoder_only = bool(config.pop("_ddz_decoder_only", False))
    desc = {"library": "diffusers", "class": cls.__name__, "config": config, "decoder_only": decoder_only}
    device = parse_device(device)
    try:
        return build_vae(desc, state, device=device, where=weights)
    except FormatError as exc:
        raise InvalidInputError(f"{path}: {exc}") from None


def save_vae_dir(model: nn.Module, path: str | os.PathLike) -> str:
    """Write ``model`` as a diffusers folder (config.json + diffusion_pytorch_model.safetensors)."""
    path = os.fspath(path)
    if getattr(model, "_ddz_decoder_only", False):
        raise InvalidInputError("a decoder-only VAE cannot be saved as a full diffusers folder; "
                                "use save_vae_dir on the full model or unpack with the decoder weights only")
    cast(Any, model).save_pretrained(path, safe_serialization=True)
    return path


def quantizable_weights(model: nn.Module) -> dict[str, int]:
    """``{state-dict name: output-channel axis}`` of every Conv/Linear weight of ``model``."""
    out: dict[str, int] = {}
    for mname, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() < 2:
            continue
        key = f"{mname}.weight" if mname else "weight"
        if isinstance(mod, _QUANT_TYPES_T):
            out[key] = 1
        elif isinstance(mod, _QUANT_TYPES):
            out[key] = 0
    return out


def _model_desc(model: nn.Module, decoder_only: bool) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "to_json_string"):
        raise InvalidInputError(f"{type(model).__name__} is not a diffusers model (no config)")
    config = json.loads(cast(Any, model).to_json_string())
    config.pop("_diffusers_version", None)
    config.pop("_name_or_path", None)
    import diffusers

    return {"library": "diffusers", "class": type(model).__name__, "config": config,
            "decoder_only": bool(decoder_only), "diffusers_version": diffusers.__version__}


def stored_state(model: nn.Module, decoder_only: bool = False) -> dict[str, torch.Tensor]:
    """The state dict an archive stores for ``model`` (without ``encoder.*`` / ``quant_conv.*`` when decoder-only)."""
    sd = model.state_dict()
    if decoder_only:
        sd = {k: v for k, v in sd.items() if not k.startswith(ENCODER_PREFIXES)}
        if not sd:
            raise InvalidInputError("decoder_only=True left no weights (is this an autoencoder with an encoder.* part?)")
    return sd


def vae_codec(model: nn.Module, *, scheme: str = "asymmetric", decoder_only: bool = False,
              float_dtype: str = "f32", zstd: int | None = None) -> Int8StateDictCodec:
    """The codec that stores ``model``: every Conv/Linear weight int8 per output channel, the rest float."""
    shapes = {k: tuple(v.shape) for k, v in stored_state(model, decoder_only).items()}
    quant = {k: a for k, a in quantizable_weights(model).items() if k in shapes}
    return Int8StateDictCodec.for_state_dict(shapes, quant, scheme=scheme, float_dtype=float_dtype, zstd=zstd,
                                             model=_model_desc(model, decoder_only))


def vae_parts(model: nn.Module, **kw: Any):
    """``(codec, parts)``: the encoded parts of ``model`` (keyword options as :func:`vae_codec`)."""
    codec = vae_codec(model, **kw)
    with torch.no_grad():
        parts = codec.encode(stored_state(model, kw.get("decoder_only", False)))
    return codec, parts


def write_vae(writer: Any, name: str, model: nn.Module, **kw: Any) -> dict[str, str]:
    """Quantise ``model`` (Eq. 6) and write it as object ``name`` of an open :class:`codec.Writer`."""
    codec = vae_codec(model, **kw)
    with torch.no_grad():
        return write_object(writer, name, codec, stored_state(model, kw.get("decoder_only", False)))


class _Absent(nn.Module):
    """Stands in for a part of the model that was not stored (decoder-only archives)."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise InvalidInputError(f"this VAE was stored decoder-only: its {self.what} is not in the archive")


def _assign(model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool, where: str,
            dtype: torch.dtype = torch.float32) -> None:
    """Put ``state`` into ``model`` (built on the meta device); float weights become ``dtype``."""
    own = model.state_dict(keep_vars=True)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if unexpected or (strict and missing):
        raise InvalidInputError(f"{where}: weights do not match the model config "
                                f"(missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
                                f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''})")
    cast = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise InvalidInputError(f"{where}: weight {k!r} is not a tensor")
        if tuple(own[k].shape) != tuple(v.shape):
            raise InvalidInputError(f"{where}: weight {k!r} has shape {tuple(v.shape)}, the config needs {tuple(own[k].shape)}")
        if own[k].is_floating_point():
            if not v.is_floating_point():
                raise InvalidInputError(f"{where}: weight {k!r} has dtype {v.dtype}; the model needs floating-point weights")
            v = v.to(dtype)
        elif v.dtype != own[k].dtype:
            raise InvalidInputError(f"{where}: tensor {k!r} has dtype {v.dtype}, the model needs {own[k].dtype}")
        cast[k] = v
    try:
        model.load_state_dict(cast, strict=False, assign=True)
    except RuntimeError as exc:
        raise InvalidInputError(f"{where}: cannot load weights ({_short(exc)})") from None


class _OverBudget(Exception):
    pass


class _BuildBudget:
    """While a model is built from a stored config (on the meta device), count the parameters
    and buffers it registers and stop the build as soon as they exceed what the stored state
    dict could fill (4x its tensors and elements: room for a decoder-only archive's absent
    encoder). A config cannot make a reader spend time or memory on a model the file does
    not hold: ``layers_per_block = 5000`` stops after a few hundred tensors, not minutes."""

    def __init__(self, state: Mapping[str, Any]):
        tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
        self.max_tensors = 4 * len(tensors) + 64
        self.max_elements = 4 * sum(t.numel() for t in tensors) + (1 << 20)
        self.tensors = self.elements = 0
        self._handles: list[Any] = []
        self._thread: int | None = None

    def _count(self, module, name, tensor):
        if tensor is not None and threading.get_ident() == self._thread:  # the hooks are process-wide
            self.tensors += 1
            self.elements += tensor.numel()
            if self.tensors > self.max_tensors or self.elements > self.max_elements:
                raise _OverBudget(f"over {self.tensors:,} tensors / {self.elements:,} elements where the archive "
                                  f"stores at most {self.max_tensors:,} / {self.max_elements:,}")
        return None

    def __enter__(self):
        from torch.nn.modules import module as m

        self._thread = threading.get_ident()
        self._handles = [m.register_module_parameter_registration_hook(self._count),
                         m.register_module_buffer_registration_hook(self._count)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []


def build_vae(desc: Mapping[str, Any], state: Mapping[str, torch.Tensor], device: Any = None,
              where: str = "stored VAE", dtype: torch.dtype = torch.float32) -> nn.Module:
    """A diffusers model from a stored description (class, config, decoder_only) and its weights
    (float weights cast to ``dtype``). A config diffusers cannot build raises :class:`FormatError`."""
    if not isinstance(desc, Mapping) or desc.get("library") != "diffusers" or not isinstance(desc.get("config"), Mapping):
        raise FormatError(f"VAE object has no diffusers description (got {str(desc)[:80]})")
    cls = _diffusers_class(desc.get("class"))
    decoder_only = bool(desc.get("decoder_only"))
    budget = _BuildBudget(state)
    try:
        with torch.device("meta"), _quiet_diffusers(), budget:
            model = cls.from_config(dict(desc["config"]))
    except _OverBudget as exc:
        raise FormatError(f"stored diffusers config asks for a bigger {cls.__name__} than its weights: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - diffusers raises anything (IndexError, ZeroDivisionError, ...)
        raise FormatError(f"stored diffusers config does not build a {cls.__name__}: {_short(exc)}") from None
    if decoder_only:
        for prefix in ENCODER_PREFIXES:
            attr = prefix[:-1]
            if isinstance(getattr(model, attr, None), nn.Module):
                setattr(model, attr, _Absent(attr))
        model._ddz_decoder_only = True
    _assign(model, state, strict=True, where=where, dtype=dtype)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise FormatError(f"stored VAE leaves tensors uninitialised: {leftovers[:4]}")
    model = model.eval().requires_grad_(False)
    return model if device is None else model.to(parse_device(device))


def read_vae(file: Any, name: str = "vae", device: Any = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild the diffusers model stored as object ``name`` of an open .ddz (weights dequantised to ``dtype``)."""
    device = parse_device(device) if device is not None else None
    codec = object_codec(file, name)
    if not isinstance(codec, Int8StateDictCodec):
        raise FormatError(f"object {name!r} is a {codec.codec_id!r}, not an int8 VAE", section=name)
    parts = {p: file.get(sec, framework="torch") for p, sec in file.objects[name]["sections"].items()}
    try:
        state = codec.decode(parts, dtype=dtype, device=device)
    except DDZError:
        raise
    except (KeyError, ValueError, RuntimeError, IndexError) as exc:
        raise FormatError(f"object {name!r} does not decode: {exc}", section=name) from None
    return build_vae(codec.model, state, device=device, dtype=dtype)


def fake_quantize(model: nn.Module, scheme: str = "asymmetric") -> nn.Module:
    """A copy of ``model`` whose Conv/Linear weights went through Eq. 6 and back (for error studies)."""
    import copy

    q = copy.deepcopy(model)
    sd = q.state_dict()
    with torch.no_grad():
        for k, axis in quantizable_weights(q).items():
            w = sd[k]
            qq, s, z = quantize_int8(w, scheme=scheme, axis=axis)
            w.copy_(dequantize_int8(qq, s, z, axis=axis, dtype=w.dtype))
    return q


def _autocast(device: torch.device, autocast: str | None):
    if autocast not in _AUTOCAST:
        raise InvalidInputError(f"autocast must be one of None, 'bf16', 'fp16', got {autocast!r}")
    dt = _AUTOCAST[autocast]
    if dt is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dt)


def _check_batch_size(batch_size: Any) -> None:
    int_arg("batch size", batch_size, 1)


def decode_latents(vae: nn.Module, latents: torch.Tensor, *, batch_size: int = 32, autocast: str | None = None,
                   scaling_factor: float | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode latents ``[B, C, h, w]`` to frames ``[B, 3, H, W]`` in [0, 1] (fp32), ``batch_size`` at a time.

    ``scaling_factor``: if the latents were multiplied by it at encode time, they are
    divided by it here (LVDD stores unscaled latents: leave it None). ``autocast``:
    ``"bf16"`` / ``"fp16"`` run the decoder under torch.autocast on the model's device.
    """
    if latents.dim() != 4:
        raise InvalidInputError(f"decode_latents needs [B, C, h, w] latents, got shape {tuple(latents.shape)}")
    _check_batch_size(batch_size)
    p = next(vae.parameters())
    dev, wdt = p.device, p.dtype
    res = []
    with torch.inference_mode(), _autocast(dev, autocast):
        for s in range(0, latents.shape[0], batch_size):
            z = latents[s:s + batch_size].to(device=dev, dtype=wdt)
            if scaling_factor:
                z = z / scaling_factor
            x = cast(Any, vae).decode(z).sample
            x = ((x.float() + 1.0) * 0.5).clamp_(0.0, 1.0)
            if out is not None:
                out[s:s + x.shape[0]].copy_(x)
            else:
                res.append(x)
    return out if out is not None else torch.cat(res, 0)


def encode_frames(vae: nn.Module, frames: torch.Tensor, *, batch_size: int = 32, mode: str = "mean",
                  seed: int = 0, autocast: str | None = None, scaling_factor: float | None = None) -> torch.Tensor:
    """Encode frames ``[B, 3, H, W]`` in [0, 1] to latents ``[B, C, h, w]`` (fp32), deterministically.

    Frames are mapped to [-1, 1] (as diffusers VAEs expect). ``mode="mean"`` (default)
    takes ``latent_dist.mean`` (the mode of the Gaussian; deterministic);
    ``mode="sample"`` draws ``latent_dist.sample(generator)`` with a generator seeded by
    ``seed`` (reproducible, unlike the LVDD code's unseeded ``.sample()``).
    """
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise InvalidInputError(f"encode_frames needs [B, 3, H, W] frames, got shape {tuple(frames.shape)}")
    if mode not in ("mean", "sample"):
        raise InvalidInputError(f"encode mode must be 'mean' or 'sample', got {mode!r}")
    _check_batch_size(batch_size)
    if getattr(vae, "_ddz_decoder_only", False):
        raise InvalidInputError("this VAE was stored decoder-only: it cannot encode")
    p = next(vae.parameters())
    dev, wdt = p.device, p.dtype
    gen = torch.Generator(device=dev).manual_seed(seed) if mode == "sample" else None
    res = []
    with torch.inference_mode(), _autocast(dev, autocast):
        for s in range(0, frames.shape[0], batch_size):
            x = frames[s:s + batch_size].to(device=dev, dtype=wdt) * 2.0 - 1.0
            enc = cast(Any, vae).encode(x)
            dist = getattr(enc, "latent_dist", None)
            if dist is not None:
                z = dist.mean if mode == "mean" else dist.sample(generator=gen)
            elif getattr(enc, "latents", None) is not None:  # deterministic encoders (e.g. AutoencoderTiny)
                z = enc.latents
            else:
                raise InvalidInputError(f"{type(vae).__name__}.encode returned neither latent_dist nor latents")
            z = z.float()
            if scaling_factor:
                z = z * scaling_factor
            res.append(z)
    return torch.cat(res, 0)


def decode_error(reference: torch.Tensor, approx: torch.Tensor, peak: float = 1.0) -> dict[str, float]:
    """Max abs error, relative L2 and PSNR (``peak`` = signal range) of ``approx`` against ``reference``."""
    ref, app = reference.double(), approx.double()
    diff = app - ref
    mse = float(diff.pow(2).mean())
    return {
        "max_abs": float(diff.abs().max()),
        "rel_l2": float(diff.norm() / ref.norm().clamp_min(1e-30)),
        "psnr_db": float("inf") if mse == 0 else 10.0 * math.log10(peak * peak / mse),
    }
