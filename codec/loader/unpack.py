"""``ddz unpack``: a latent-video .ddz back to standard files (loader layer: reads through
:class:`codec.loader.video.VideoDataset`, writes with :mod:`codec.video.unpack`).

Writes into ``out_dir``:

* ``latents.safetensors``: ``latents`` (rebuilt ``[N, T, C, h, w]`` fp32) and ``labels``;
* ``tucker.safetensors``: the stored core and factors exactly as stored (fp32/fp16/bf16);
* ``vae/``: a diffusers model folder (``config.json`` + ``diffusion_pytorch_model.safetensors``,
  dequantised fp32 weights); for a decoder-only archive it holds the decoder weights
  only (``"_ddz_decoder_only": true`` in config.json);
* ``labels.csv`` (``index,label,class_name``) and ``labels.json``;
* ``metadata.json``: the archive's metadata;
* ``frames="mp4"``: ``videos/<class>/<index>.mp4`` (H.264 via PyAV); ``frames="png"``:
  ``frames/<class>/<index>/<t>.png``;
* ``preview=True``: ``preview/<class>.png``, a contact sheet (rows: samples, columns: frames).

Class folders are the class names made filesystem-safe; two names that would map to the
same folder get the class id appended, so classes never merge.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from typing import Any

import torch
from av.error import FFmpegError as _AV_ERROR  # PyAV's errors (writing mp4s) need not be OSErrors
from safetensors import SafetensorError

from .._args import int_arg
from ..errors import FileAccessError, InvalidInputError
from ..format import open as ddz_open
from ..format.files import make_temp, umask
from ..video.unpack import contact_sheet, to_uint8, write_mp4
from .video import VideoDataset

__all__ = ["unpack_archive"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "class"


def class_folders(names: list[str]) -> list[str]:
    """Filesystem-safe, distinct folder names for the classes (``"a b"`` and ``"a_b"`` do not merge)."""
    safe = [_safe(n) for n in names]
    seen: dict[str, int] = {}
    for s in safe:
        seen[s.lower()] = seen.get(s.lower(), 0) + 1
    return [f"{s}_{i}" if seen[s.lower()] > 1 else s for i, s in enumerate(safe)]


def unpack_archive(path: str | os.PathLike, out_dir: str | os.PathLike, *, frames: str | None = None,
                   preview: bool = False, preview_samples: int = 8, fps: int = 8, device: Any = "cpu",
                   autocast: str | None = None, progress: bool = True, verify: bool = True) -> list[str]:
    """Unpack a latent-video archive into standard files (see the module docstring); returns the paths written.

    ``out_dir`` must not exist or be an empty folder (not a symlink). Everything is written into a
    private temporary folder beside it, which is renamed to ``out_dir`` only once complete: on any
    failure (a damaged archive, a full disk, Ctrl-C) nothing is left, and no link inside an
    existing folder can redirect a write. ``verify`` (default True) checks every checksum of the
    archive first (one read of the file), so a damaged archive is refused before anything is written.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if frames not in (None, "mp4", "png"):
        raise InvalidInputError(f"frames must be 'mp4' or 'png', got {frames!r}")
    fps = int_arg("fps", fps, 1)
    path, out_dir = os.fspath(path), os.fspath(out_dir)
    _check_output(out_dir)
    ds = VideoDataset(path, device=device, autocast=autocast, verify=verify)
    try:
        parent = os.path.dirname(os.path.abspath(out_dir))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise FileAccessError(f"cannot create {parent!r}: {exc.strerror}") from None
        fd, tmp = make_temp(out_dir, "dir")
        try:
            written = _unpack(ds, path, tmp, frames, preview, preview_samples, fps, progress, save_file, tqdm)
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp made it 0700; publish like mkdir would
            os.rename(tmp, out_dir)  # atomic; replaces an empty folder, fails on a non-empty one
        except (OSError, SafetensorError, _AV_ERROR) as exc:
            raise FileAccessError(f"unpacking into {out_dir!r} failed, nothing was written: {_one_line(exc)}") from None
        finally:
            os.close(fd)
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        ds.close()
    return [os.path.join(out_dir, os.path.relpath(p, tmp)) for p in written]


def _check_output(out_dir: str) -> None:
    if os.path.islink(out_dir):
        raise InvalidInputError(f"output folder {out_dir!r} is a symlink; give the real path")
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir):
            raise InvalidInputError(f"{out_dir!r} exists and is not a folder")
        if os.listdir(out_dir):
            raise InvalidInputError(f"output folder {out_dir!r} exists and is not empty; unpack writes a new folder")


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).strip().splitlines()[0][:200] if str(text).strip() else type(exc).__name__


def _unpack(ds: VideoDataset, path: str, out_dir: str, frames, preview, preview_samples, fps, progress,
            save_file, tqdm) -> list[str]:
    written: list[str] = []
    names = list(ds.class_names)  # every label is a class id into these (checked at load)
    folders = class_folders(names)

    def out(*p: str) -> str:
        full = os.path.join(out_dir, *p)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        written.append(full)
        return full

    lat = ds.latents(torch.arange(len(ds))).cpu().contiguous()
    tensors = {"latents": lat, "labels": ds.labels.contiguous()}
    if ds.has_soft_labels:
        tensors["soft_labels"] = ds.soft_labels(torch.arange(len(ds))).cpu().contiguous()
    save_file(tensors, out("latents.safetensors"))
    with ddz_open(path) as f:
        secs = f.objects[ds.object_names["latents"]]["sections"]
        save_file({p: f.get(s, framework="torch").clone().contiguous() for p, s in secs.items()}, out("tucker.safetensors"))
        meta = f.metadata
        vdesc = f.objects[ds.object_names["vae"]]["codec"].get("model") or {}
    vae = ds.vae  # built and checked by the Dataset, so vdesc is a valid diffusers description
    cfg = dict(vdesc.get("config") or {})
    cfg["_class_name"] = vdesc.get("class", cfg.get("_class_name"))
    if vdesc.get("decoder_only"):
        cfg["_ddz_decoder_only"] = True
    state = {k: v.detach().float().cpu().contiguous() for k, v in vae.state_dict().items()}
    save_file(state, out("vae", "diffusion_pytorch_model.safetensors"))
    with open(out("vae", "config.json"), "w", encoding="utf-8") as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)
    with open(out("labels.csv"), "w", newline="", encoding="utf-8") as fh:
        wr = csv.writer(fh)
        wr.writerow(["index", "label", "class_name"])
        for i, y in enumerate(ds.labels.tolist()):
            wr.writerow([i, y, names[y]])
    with open(out("labels.json"), "w", encoding="utf-8") as fh:
        json.dump({"class_names": names, "labels": ds.labels.tolist()}, fh)
    with open(out("metadata.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)

    if frames is not None:
        step = max(1, ds.decode_batch_size // ds.latent_shape[0])
        bar = tqdm(total=len(ds), disable=not progress, desc=f"decoding to {frames}", unit="clip", leave=False)
        for s in range(0, len(ds), step):
            idx = list(range(s, min(len(ds), s + step)))
            videos, labels = ds.decode_batch(idx)[:2]
            for i, v, y in zip(idx, videos, labels.tolist()):
                if frames == "mp4":
                    write_mp4(out("videos", folders[y], f"{i:06d}.mp4"), v, fps=fps)
                else:
                    from PIL import Image

                    for t, fr in enumerate(to_uint8(v)):
                        Image.fromarray(fr).save(out("frames", folders[y], f"{i:06d}", f"{t:03d}.png"))
            bar.update(len(idx))
        bar.close()
    if preview:
        from PIL import Image

        for c in range(len(names)):
            idx = (ds.labels == c).nonzero().reshape(-1)[:preview_samples].tolist()
            if not idx:
                continue
            videos = ds.decode_batch(idx)[0]
            Image.fromarray(contact_sheet(videos)).save(out("preview", f"{folders[c]}.png"))
    return written
