"""``ddz unpack``: a latent-video .ddz back to standard files.

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
"""

from __future__ import annotations

import csv
import json
import os
import re
from typing import Any

import numpy as np
import torch

from ..errors import FileAccessError, InvalidInputError
from ..format import open as ddz_open

__all__ = ["unpack_archive", "write_mp4", "contact_sheet"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "class"


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """``[T, 3, H, W]`` in [0, 1] -> ``[T, H, W, 3]`` uint8."""
    return (video.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def write_mp4(path: str, video: torch.Tensor, fps: int = 8) -> None:
    """Write ``[T, 3, H, W]`` frames in [0, 1] as an H.264 mp4 (yuv420p; odd sizes padded by 1 px)."""
    import av

    arr = _to_uint8(video)
    h, w = arr.shape[1:3]
    ph, pw = h + (h % 2), w + (w % 2)
    if (ph, pw) != (h, w):
        arr = np.pad(arr, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    with av.open(path, mode="w") as c:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = pw, ph, "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "18", "preset": "fast"}
        for fr in arr:
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def contact_sheet(videos: torch.Tensor, max_frames: int = 8, pad: int = 2) -> np.ndarray:
    """``[B, T, 3, H, W]`` -> one uint8 image, a row per sample, ``max_frames`` evenly spaced columns."""
    b, t = videos.shape[:2]
    cols = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))
    h, w = videos.shape[-2:]
    sheet = np.full((b * (h + pad) + pad, len(cols) * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(b):
        frames = _to_uint8(videos[i, cols])
        for j, fr in enumerate(frames):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            sheet[y:y + h, x:x + w] = fr
    return sheet


def unpack_archive(path: str | os.PathLike, out_dir: str | os.PathLike, *, frames: str | None = None,
                   preview: bool = False, preview_samples: int = 8, fps: int = 8, device: Any = "cpu",
                   autocast: str | None = None, progress: bool = True) -> list[str]:
    """Unpack a latent-video archive into standard files; returns the paths written."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from ..loader.video import VideoDataset

    if frames not in (None, "mp4", "png"):
        raise InvalidInputError(f"frames must be 'mp4' or 'png', got {frames!r}")
    path, out_dir = os.fspath(path), os.fspath(out_dir)
    ds = VideoDataset(path, device=device, autocast=autocast)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise FileAccessError(f"cannot create {out_dir!r}: {exc.strerror}") from None
    written: list[str] = []
    names = ds.class_names or [str(i) for i in range(int(ds.labels.max()) + 1)]

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
        secs = f.objects[ds._names["latents"]]["sections"]
        save_file({p: f.get(s, framework="torch").clone().contiguous() for p, s in secs.items()}, out("tucker.safetensors"))
        meta = f.metadata
        vdesc = f.objects[ds._names["vae"]]["codec"].get("model") or {}
    vae = ds.vae
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
            wr.writerow([i, y, names[y] if y < len(names) else ""])
    with open(out("labels.json"), "w", encoding="utf-8") as fh:
        json.dump({"class_names": names, "labels": ds.labels.tolist()}, fh)
    with open(out("metadata.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)

    if frames is not None:
        step = max(1, ds.decode_batch_size // max(1, int(ds.meta.get("frames") or 1)))
        bar = tqdm(total=len(ds), disable=not progress, desc=f"decoding to {frames}", unit="clip", leave=False)
        for s in range(0, len(ds), step):
            idx = list(range(s, min(len(ds), s + step)))
            videos, labels = ds.decode_batch(idx)[:2]
            for i, v, y in zip(idx, videos, labels.tolist()):
                cname = _safe(names[y] if y < len(names) else y)
                if frames == "mp4":
                    write_mp4(out("videos", cname, f"{i:06d}.mp4"), v, fps=fps)
                else:
                    from PIL import Image

                    for t, fr in enumerate(_to_uint8(v)):
                        Image.fromarray(fr).save(out("frames", cname, f"{i:06d}", f"{t:03d}.png"))
            bar.update(len(idx))
        bar.close()
    if preview:
        from PIL import Image

        for c in range(len(names)):
            idx = (ds.labels == c).nonzero().reshape(-1)[:preview_samples].tolist()
            if not idx:
                continue
            videos = ds.decode_batch(idx)[0]
            Image.fromarray(contact_sheet(videos)).save(out("preview", f"{_safe(names[c])}.png"))
    ds.close()
    return written
