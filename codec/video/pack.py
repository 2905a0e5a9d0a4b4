"""Building a latent-video .ddz: int8 VAE (Eq. 6) + Tucker/HOSVD latents + labels + metadata.

The archive (LVDD's distilled dataset, B.4, made self-describing):

* object ``vae``: the diffusers autoencoder, int8 per output channel (``int8-state``),
  with its diffusers config; full or decoder-only;
* object ``latents``: the ``[N, T, C, h, w]`` latents as a chunked Tucker decomposition
  (``tucker``: core rows per sample + per-chunk factors);
* section ``labels``: int64 ``[N]`` class ids;
* metadata ``ddz.video``: layout, frames, resolution, normalisation, scaling factor, how
  latents were made, class names, the pad rule, and which objects hold what.

Everything is encoded in memory first (an :class:`ArchivePlan`), so the exact file size is
known *before* anything is written. The plan does not re-implement the container: offsets
come from the format's :class:`codec.format.layout.Layout` (as the Writer's do), the header length
from :class:`codec.format.header.Header` ``.to_bytes()`` over :class:`SectionInfo` rows,
and a zstd section's stored length and CRC from the format's own :class:`codec.Writer`
(into a scratch file that is then discarded). :meth:`ArchivePlan.write` checks every
section the Writer produces against the plan and aborts (nothing published) on any
difference, so a change in the format can never silently desync the planned size.
A budget (``"115MB"``, ``"110MiB"``) is checked against it and an over-budget plan raises
:class:`codec.errors.BudgetError` listing the largest sections, with no file written. The
write itself goes through the atomic Writer: an exception or Ctrl-C leaves nothing at
the output path.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..budget.formulas import fmt_bytes
from ..codecs.base import Codec, Part
from ..codecs.tucker import TuckerCodec
from ..errors import BudgetError, FormatError, InvalidInputError
from ..format import Writer
from ..format.arrays import to_storage
from ..format.header import Header, SectionInfo
from ..format.layout import DEFAULT_ALIGNMENT, Layout, block_table, crc32
from .io import find_clips, parse_resolution, read_clip
from .vae import encode_frames, vae_codec, vae_parts

__all__ = ["parse_size", "ArchivePlan", "plan_latent_archive", "pack_latents",
           "encode_clips", "encode_frame_tensor", "pack_videos", "VIDEO_META_KEY"]

VIDEO_META_KEY = "ddz.video"

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: Any) -> int:
    """``"115MB"`` -> 115,000,000; ``"110MiB"`` -> 115,343,360; ints are bytes. MB is 10^6, MiB is 2^20."""
    if isinstance(text, bool):
        raise InvalidInputError(f"size must be a number of bytes or a string like 115MB, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise InvalidInputError(f"size {text!r} is not understood; write e.g. 115MB (10^6 B), 110MiB (2^20 B) or 5000000")
        value = int(round(float(m.group(1)) * _UNITS[m.group(2).lower()]))
    if value <= 0:
        raise InvalidInputError(f"size must be positive, got {text!r}")
    return value


def _progress(enabled: bool, iterable=None, **kw):
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=False, **kw)


@dataclass
class _Planned:
    name: str
    array: Any  # what the Writer gets
    zstd: int | None
    dtype: str
    shape: tuple[int, ...]
    length: int
    decoded_length: int
    crc: int
    encoding: tuple = ()
    blocks: tuple[int, str] = (0, "")  # the per-block CRCs the Writer will record


@dataclass
class ArchivePlan:
    """Sections, objects and metadata of a .ddz to be written, with its exact size."""

    metadata: dict[str, Any] = field(default_factory=dict)
    alignment: int = DEFAULT_ALIGNMENT
    sections: list[_Planned] = field(default_factory=list)
    objects: dict[str, dict] = field(default_factory=dict)

    def add(self, name: str, array: Any, *, zstd: int | None = None, bits: int | None = None) -> None:
        """Plan one section (raw or zstd; its stored bytes and CRC are computed now)."""
        if bits is not None:
            raise InvalidInputError("ArchivePlan does not plan bit-packed sections")
        if any(s.name == name for s in self.sections):
            raise InvalidInputError(f"duplicate section name {name!r}")
        arr, dtype = to_storage(array, f"section {name!r}")
        flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        enc: tuple[dict, ...]
        if zstd is None:  # a raw section stores its bytes as they are
            length, crc, enc, blocks = flat.nbytes, crc32(flat), (), block_table(flat)
        else:
            info = _writer_measure(name, array, zstd)
            length, crc, enc, blocks = info.length, info.crc32, info.encoding, (info.block_size, info.block_crc32)
        self.sections.append(_Planned(name, array, zstd, dtype, tuple(arr.shape), length, flat.nbytes, crc, enc, blocks))

    def add_object(self, name: str, codec: Codec, parts: Mapping[str, Part]) -> None:
        """Plan the sections ``name/part`` of an encoded object and its objects-table entry."""
        secs = {}
        for part, p in parts.items():
            p = p if isinstance(p, Part) else Part(p)
            self.add(f"{name}/{part}", p.array, zstd=p.zstd, bits=p.bits)
            secs[part] = f"{name}/{part}"
        self.objects[name] = {"codec": dict(codec.get_config()), "sections": secs, "must_understand": True}

    def _layout(self) -> tuple[list[SectionInfo], Layout]:
        layout, infos = Layout(self.alignment), []
        for s in self.sections:
            offset = layout.place(s.length)
            infos.append(SectionInfo(s.name, s.dtype, s.shape, offset, s.length, s.decoded_length, s.encoding, s.crc,
                                     *s.blocks))
        return infos, layout

    @property
    def size(self) -> int:
        """Exact size in bytes of the file :meth:`write` produces."""
        infos, layout = self._layout()
        return layout.file_length(len(Header(tuple(infos), self.objects, self.metadata).to_bytes()))

    def breakdown(self) -> list[tuple[str, int]]:
        """``(section, stored bytes)`` largest first, plus the container overhead as ``"(header+padding)"``."""
        rows = sorted(((s.name, s.length) for s in self.sections), key=lambda r: -r[1])
        rows.append(("(header+preamble+padding)", self.size - sum(s.length for s in self.sections)))
        return rows

    def by_object(self) -> dict[str, int]:
        out: dict[str, int] = {}
        owner = {sec: obj for obj, ent in self.objects.items() for sec in ent["sections"].values()}
        for s in self.sections:
            key = owner.get(s.name, s.name)
            out[key] = out.get(key, 0) + s.length
        out["(header+preamble+padding)"] = self.size - sum(s.length for s in self.sections)
        return out

    def report(self, budget: int | None = None) -> str:
        lines = [f"planned .ddz size: {fmt_bytes(self.size)}"]
        for name, n in self.by_object().items():
            lines.append(f"  {name:<28} {n:>14,} B  {n / 1e6:9.3f} MB  {n / 2**20:9.3f} MiB")
        if budget is not None:
            ok = self.size <= budget
            lines.append(f"budget {fmt_bytes(budget)}: {'fits' if ok else 'OVER'} "
                         f"({'headroom' if ok else 'excess'} {abs(budget - self.size):,} B)")
        return "\n".join(lines)

    def check_budget(self, budget: Any) -> int:
        """Raise :class:`BudgetError` (largest sections listed) if the plan exceeds ``budget``."""
        limit = parse_size(budget)
        size = self.size
        if size > limit:
            top = ", ".join(f"{n} {b / 1e6:.2f} MB" for n, b in self.breakdown()[:4])
            raise BudgetError(f"planned archive is {fmt_bytes(size)}, over the budget of {fmt_bytes(limit)} "
                              f"by {size - limit:,} B; largest sections: {top}. Nothing was written. "
                              "Lower --hosvd-rate, store with --storage f16/bf16, use --decoder-only, or keep fewer samples.")
        return size

    def write(self, path: str | os.PathLike, *, progress: bool = True) -> str:
        """Write the planned file atomically (nothing at ``path`` on any failure or Ctrl-C).

        Every section the Writer emits is compared with the plan (offset, length, CRC); a
        difference raises :class:`FormatError` before the file is published.
        """
        total = sum(s.decoded_length for s in self.sections)
        planned, _ = self._layout()
        with Writer(path, metadata=self.metadata, alignment=self.alignment) as w:
            with _progress(progress and total > 32 << 20, total=total, unit="B", unit_scale=True, desc="writing") as bar:
                for s, want in zip(self.sections, planned):
                    got = w.add(s.name, s.array, zstd=s.zstd)
                    if (got.offset, got.length, got.crc32, got.encoding, got.block_crc32) != \
                            (want.offset, want.length, want.crc32, want.encoding, want.block_crc32):
                        raise FormatError(f"internal error: the Writer stored section {s.name!r} as (offset {got.offset}, "
                                          f"length {got.length}, crc {got.crc32:#x}), the plan expected ({want.offset}, "
                                          f"{want.length}, {want.crc32:#x}); nothing was written")
                    bar.update(s.decoded_length)
            for name, ent in self.objects.items():
                w.add_object(name, ent["codec"], ent["sections"], must_understand=ent["must_understand"])
        return os.fspath(path)


def _writer_measure(name: str, array: Any, zstd: int) -> SectionInfo:
    """The section-table row (stored length, CRC, encoding) of a zstd section, from the format's own Writer."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ddz-plan-") as d:
        w = Writer(os.path.join(d, "scratch.ddz"))
        try:
            info = w.add(name, array, zstd=zstd)
        finally:
            w.abort()
    return info


def _vae_desc_meta(vae: torch.nn.Module) -> dict[str, Any]:
    cfg = dict(getattr(vae, "config", {}) or {})
    factor = getattr(vae, "spatial_compression_ratio", None)
    if not isinstance(factor, int):
        boc = cfg.get("block_out_channels")
        factor = 2 ** (len(boc) - 1) if isinstance(boc, (list, tuple)) and boc else None
    return {"class": type(vae).__name__, "spatial_factor": factor, "scaling_factor": cfg.get("scaling_factor"),
            "latent_channels": cfg.get("latent_channels")}


def _check_labels(labels: Any, n: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(np.asarray(labels))
    if labels.dim() != 1 or labels.shape[0] != n:
        raise InvalidInputError(f"labels must be [N] with N = {n} (latents' first axis), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise InvalidInputError(f"labels must be integers, got {labels.dtype}")
    if int(labels.min()) < 0:
        raise InvalidInputError("labels must be non-negative class ids")
    return labels.to(torch.int64)


def _check_channels(channels: int, vae: torch.nn.Module | None) -> None:
    c = getattr(getattr(vae, "config", None), "latent_channels", None)
    if c is not None and channels != c:
        raise InvalidInputError(f"latents have C = {channels} channels but the VAE's latent_channels is {c}")


def _check_latents(latents: Any, labels: Any, vae: torch.nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(latents, torch.Tensor):
        if isinstance(latents, np.ndarray):
            latents = torch.from_numpy(latents)
        else:
            raise InvalidInputError(f"latents must be a tensor, got {type(latents).__name__}")
    if latents.dim() != 5 or not latents.is_floating_point():
        raise InvalidInputError(f"latents must be a float [N, T, C, H, W] tensor, got {latents.dtype} shape {tuple(latents.shape)}")
    if min(latents.shape) < 1:
        raise InvalidInputError(f"latents shape {tuple(latents.shape)} has an empty axis")
    if not bool(torch.isfinite(latents).all()):
        raise InvalidInputError("latents hold NaN or infinity")
    labels = _check_labels(labels, latents.shape[0])
    _check_channels(latents.shape[2], vae)
    return latents.float(), labels


def plan_latent_archive(
    vae: torch.nn.Module,
    latents: Any,
    labels: Any,
    *,
    class_names: Sequence[str] | None = None,
    hosvd_rate: float = 0.75,
    ranks: Sequence[int] | None = None,
    chunk_size: int = 400,
    method: str = "hosvd",
    storage: str = "f32",
    scheme: str = "asymmetric",
    decoder_only: bool = False,
    vae_float: str = "f32",
    zstd: int | None = None,
    video: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    soft_labels: Any = None,
    soft_labels_kind: str = "probs",
    tucker_parts: tuple[TuckerCodec, Mapping[str, Part], Sequence[int]] | None = None,
    vae_stored: tuple[Codec, Mapping[str, Part]] | None = None,
    progress: bool = True,
) -> ArchivePlan:
    """Encode everything for a latent-video archive in memory; see the module docstring.

    ``video``: extra facts for the ``ddz.video`` metadata (frames sampling, source, how
    latents were made). ``zstd``: level for the int8 VAE weights (default raw).
    ``soft_labels``: optional ``[N, K]`` per-sample soft labels (``soft_labels_kind``:
    ``"probs"`` or ``"logits"``), stored dense fp16 as section ``soft_labels``; the
    Dataset then yields ``(video, label, soft_label)``.
    ``tucker_parts``: ``(codec, parts, latent shape)`` of latents already decomposed (LVDD's
    ``synthetic_data.pt``, :func:`codec.video.lvdd.read_lvdd_synthetic`), stored as they
    are; ``latents`` is then None and the Tucker options are not used.
    ``vae_stored``: ``(codec, parts)`` of a VAE already quantised (an optimum-quanto qint8
    folder, :func:`codec.video.lvdd.read_quanto_vae_dir`), stored as they are; ``vae`` is
    then the model they dequantise to (for its description) and ``scheme``,
    ``decoder_only``, ``vae_float`` and ``zstd`` come from that codec.
    """
    if tucker_parts is not None:
        if latents is not None:
            raise InvalidInputError("give latents or tucker_parts, not both")
        tucker, tparts, shape = tucker_parts
        shape = tuple(int(d) for d in shape)
        if len(shape) != 5:
            raise InvalidInputError(f"Tucker latents must be [N, T, C, H, W], got shape {shape}")
        labels = _check_labels(labels, shape[0])
        _check_channels(shape[2], vae)
    else:
        latents, labels = _check_latents(latents, labels, vae)
        shape = tuple(latents.shape)
    soft = None
    if soft_labels is not None:
        soft = soft_labels if isinstance(soft_labels, torch.Tensor) else torch.as_tensor(np.asarray(soft_labels))
        if soft.dim() != 2 or soft.shape[0] != shape[0] or not soft.is_floating_point():
            raise InvalidInputError(f"soft labels must be float [N, K] with N = {shape[0]}, "
                                    f"got {soft.dtype} shape {tuple(soft.shape)}")
        if soft_labels_kind not in ("probs", "logits"):
            raise InvalidInputError(f"soft_labels_kind must be 'probs' or 'logits', got {soft_labels_kind!r}")
        soft = soft.to(torch.float16)
        if not bool(torch.isfinite(soft).all()):
            raise InvalidInputError("soft labels hold NaN/inf or overflow fp16")
    n_classes = int(labels.max()) + 1
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) < n_classes:
            raise InvalidInputError(f"{len(class_names)} class names for labels up to {n_classes - 1}")
        n_classes = len(class_names)
    plan = ArchivePlan()
    if vae_stored is not None:
        vcodec, vparts = vae_stored
        scheme = getattr(vcodec, "scheme", scheme)
        decoder_only = bool((getattr(vcodec, "model", None) or {}).get("decoder_only", False))
    else:
        vcodec, vparts = vae_parts(vae, scheme=scheme, decoder_only=decoder_only, float_dtype=vae_float, zstd=zstd)
    plan.add_object("vae", vcodec, vparts)
    if tucker_parts is None:
        tucker = TuckerCodec(rate=hosvd_rate, ranks=ranks, chunk_size=chunk_size, method=method, dtype=storage)
        n_chunks = -(-shape[0] // chunk_size)

        def bar(it: Any) -> Any:
            return _progress(progress and n_chunks > 2, it, total=n_chunks, desc="HOSVD chunks")

        tparts = tucker.encode(latents, progress=bar)
    ranks_used = tucker.ranks_for(shape)
    plan.add_object("latents", tucker, tparts)
    plan.add("labels", labels.contiguous())
    if soft is not None:
        plan.add("soft_labels", soft.contiguous())
    vmeta = _vae_desc_meta(vae)
    n, t, c, h, w = shape
    f = vmeta["spatial_factor"]
    tcfg = tucker.get_config()
    vsource = (getattr(vcodec, "model", None) or {}).get("source")
    meta = {
        "kind": "latent-video",
        "version": 1,
        "objects": {"vae": "vae", "latents": "latents", "labels": "labels",
                    **({"soft_labels": "soft_labels"} if soft is not None else {})},
        "soft_labels": {"kind": soft_labels_kind, "dtype": "f16", "classes": int(soft.shape[1])} if soft is not None else None,
        "num_samples": n,
        "num_classes": n_classes,
        "class_names": class_names if class_names is not None else [str(i) for i in range(n_classes)],
        "latent_layout": "NTCHW",
        "latent_shape": [t, c, h, w],
        "frames": t,
        "resolution": [h * f, w * f] if f else None,
        "channels": 3,
        "pixel_range": [0.0, 1.0],
        "vae_input": "2*x-1 (frames in [0,1] mapped to [-1,1])",
        "vae": {**vmeta, "quantization": {"scheme": scheme, "granularity": "per-output-channel", "bits": 8,
                                          "scale_dtype": "f32", "zero_point_dtype": "i8" if scheme == "asymmetric" else None,
                                          "activations": "float (weights dequantised at load)",
                                          "equation": ("optimum-quanto qint8: x_q = round(x / s), s = max|x| / 127" if vsource
                                                       else "LVDD Eq. 6: x_q = round(x/s) + z"),
                                          **({"source": vsource} if vsource else {})},
                "decoder_only": bool(decoder_only)},
        "latent_scaling_applied": False,
        "tucker": {"method": tcfg["method"], "rate": tcfg["rate"] if tcfg["ranks"] is None else None,
                   "ranks": [min(n, tcfg["chunk_size"])] + ranks_used, "chunk_size": tcfg["chunk_size"],
                   "chunk_axis_rank": ("full: LVDD's n x n factor folded into the core rows" if tucker_parts is not None
                                       else "full (identity, not stored)"),
                   "storage": tcfg["dtype"]},
    }
    if video:
        meta.update(dict(video))
    plan.metadata = {VIDEO_META_KEY: meta, **(dict(metadata) if metadata else {})}
    return plan


def pack_latents(out: str | os.PathLike, vae: torch.nn.Module, latents: Any, labels: Any, *,
                 budget: Any = None, progress: bool = True, **kw: Any) -> ArchivePlan:
    """Plan, check ``budget`` (before writing) and write a latent-video .ddz. Returns the plan."""
    plan = plan_latent_archive(vae, latents, labels, progress=progress, **kw)
    if budget is not None:
        plan.check_budget(budget)
    plan.write(out, progress=progress)
    return plan


def encode_clips(vae: torch.nn.Module, paths: Sequence[str], *, frames: int = 16, resolution: Any = 112,
                 sampling: str = "gap", frame_gap: int = 4, batch_size: int = 32, mode: str = "mean",
                 seed: int = 0, autocast: str | None = None, progress: bool = True) -> torch.Tensor:
    """Read each clip (PyAV / images) and VAE-encode its frames -> latents ``[N, T, C, h, w]`` (no grad)."""
    out = None
    for i, p in enumerate(_progress(progress and len(paths) > 1, paths, desc="encoding clips", unit="clip")):
        x = read_clip(p, frames, resolution, sampling=sampling, frame_gap=frame_gap)
        z = encode_frames(vae, x, batch_size=batch_size, mode=mode, seed=seed + i, autocast=autocast)
        if out is None:
            out = torch.empty((len(paths), *z.shape), dtype=torch.float32)
        out[i] = z
    if out is None:
        raise InvalidInputError("no clips to encode")
    return out


def encode_frame_tensor(vae: torch.nn.Module, frames: Any, *, batch_size: int = 32, mode: str = "mean",
                        seed: int = 0, autocast: str | None = None, progress: bool = True) -> torch.Tensor:
    """Frames ``[N, T, 3, H, W]`` (float in [0, 1], or uint8 0..255) -> latents ``[N, T, C, h, w]`` (no grad)."""
    if not isinstance(frames, torch.Tensor):
        frames = torch.as_tensor(np.asarray(frames))
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise InvalidInputError(f"frames must be [N, T, 3, H, W], got shape {tuple(frames.shape)}")
    if frames.dtype == torch.uint8:
        scale = 1.0 / 255.0
    elif frames.is_floating_point():
        scale = 1.0
        lo, hi = float(frames.min()), float(frames.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise InvalidInputError(f"float frames must lie in [0, 1] (got [{lo:.3g}, {hi:.3g}]); uint8 frames are also accepted")
    else:
        raise InvalidInputError(f"frames must be float in [0, 1] or uint8, got {frames.dtype}")
    out = None
    for i in _progress(progress and frames.shape[0] > 1, range(frames.shape[0]), desc="encoding clips", unit="clip"):
        z = encode_frames(vae, frames[i].float() * scale, batch_size=batch_size, mode=mode, seed=seed + i, autocast=autocast)
        if out is None:
            out = torch.empty((frames.shape[0], *z.shape), dtype=torch.float32)
        out[i] = z.cpu()
    if out is None:
        raise InvalidInputError("no clips to encode (frames has N = 0)")
    return out


def _lower_bound(vae: torch.nn.Module, n: int, latent_shape: Sequence[int], kw: Mapping[str, Any]) -> int:
    """Stored bytes of the data alone (no header), from the codecs' size hooks: a cheap early budget check
    (a zstd part counts 0: its compressed size is known only once compressed)."""
    if kw.get("vae_stored") is not None:  # already quantised (an optimum-quanto folder): its own codec
        vc = kw["vae_stored"][0]
    else:
        vc = vae_codec(vae, scheme=kw.get("scheme", "asymmetric"), decoder_only=kw.get("decoder_only", False),
                       float_dtype=kw.get("vae_float", "f32"), zstd=kw.get("zstd"))
    tc = TuckerCodec(rate=kw.get("hosvd_rate", 0.75), ranks=kw.get("ranks"), chunk_size=kw.get("chunk_size", 400),
                     dtype=kw.get("storage", "f32"))
    specs = [*vc.encoded_parts().values(), *tc.encoded_parts((n, *latent_shape)).values()]
    return sum(s.nbytes for s in specs if s.zstd is None) + 8 * n


def pack_videos(out: str | os.PathLike, vae: torch.nn.Module, video_dir: str | os.PathLike | None = None, *,
                csv: str | os.PathLike | None = None, frames: int = 16, resolution: Any = 112,
                sampling: str = "gap", frame_gap: int = 4, encode_mode: str = "mean", seed: int = 0,
                batch_size: int = 32, autocast: str | None = None, budget: Any = None,
                progress: bool = True, **kw: Any) -> ArchivePlan:
    """Videos (``ROOT/<class>/<clip>`` or a CSV) -> VAE latents -> Tucker -> .ddz, budget-checked first."""
    if video_dir is None and csv is None:
        raise InvalidInputError("give a video folder or a CSV of clips")
    clips, classes = find_clips(video_dir if video_dir is not None else ".", csv)
    hw = parse_resolution(resolution)
    meta = _vae_desc_meta(vae)
    f = meta["spatial_factor"] or 1
    if hw[0] % f or hw[1] % f:
        raise InvalidInputError(f"resolution {hw} is not a multiple of the VAE's downsampling factor {f}")
    if budget is not None:
        lb = _lower_bound(vae, len(clips), (frames, meta["latent_channels"] or 4, hw[0] // f, hw[1] // f), kw)
        if lb > parse_size(budget):
            raise BudgetError(f"{len(clips)} clips need at least {fmt_bytes(lb)}, over the budget of "
                              f"{fmt_bytes(parse_size(budget))}; nothing was encoded or written")
    latents = encode_clips(vae, [c.path for c in clips], frames=frames, resolution=hw, sampling=sampling,
                           frame_gap=frame_gap, batch_size=batch_size, mode=encode_mode, seed=seed,
                           autocast=autocast, progress=progress)
    labels = torch.tensor([c.label for c in clips], dtype=torch.int64)
    root = os.fspath(video_dir) if video_dir is not None else os.fspath(csv or ".")
    video = {"frame_sampling": {"method": sampling, "frame_gap": frame_gap if sampling == "gap" else None,
                                "start": 0, "resize": "short side, bilinear (libswscale), centre crop"},
             "pad_rule": "clips with fewer frames than needed repeat the clip's last frame",
             "encode": {"mode": encode_mode, "seed": seed if encode_mode == "sample" else None,
                        "distribution": "latent_dist.mean" if encode_mode == "mean" else "latent_dist.sample(seeded)"},
             "source": {"root": os.path.basename(os.path.normpath(root)),
                        "clips": [os.path.relpath(c.path, os.path.dirname(os.path.abspath(root))) for c in clips]}}
    return pack_latents(out, vae, latents, labels, class_names=classes, video=video, budget=budget,
                        progress=progress, **kw)
