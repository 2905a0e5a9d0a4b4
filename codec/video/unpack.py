"""Writing decoded videos as standard files: H.264 mp4 (PyAV) and PNG contact sheets.

The archive-level ``ddz unpack`` (:func:`codec.loader.unpack.unpack_archive`) lives in the
loader layer, above :mod:`codec.video`, because it reads an archive through
:class:`codec.loader.VideoDataset`. It writes into ``out_dir``:

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

from typing import Any

import numpy as np
import torch

from .._args import int_arg

__all__ = ["write_mp4", "contact_sheet", "to_uint8"]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``[T, 3, H, W]`` in [0, 1] -> ``[T, H, W, 3]`` uint8."""
    return (video.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def write_mp4(path: str, video: torch.Tensor, fps: int = 8) -> None:
    """Write ``[T, 3, H, W]`` frames in [0, 1] as an H.264 mp4 (yuv420p; odd sizes padded by 1 px)."""
    import av

    fps = int_arg("fps", fps, 1)
    arr = to_uint8(video)
    h, w = arr.shape[1:3]
    ph, pw = h + (h % 2), w + (w % 2)
    if (ph, pw) != (h, w):
        arr = np.pad(arr, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    with av.open(path, mode="w") as c:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        s: Any = c.add_stream(codec, rate=fps)  # a VideoStream
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
        frames = to_uint8(videos[i, cols])
        for j, fr in enumerate(frames):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            sheet[y:y + h, x:x + w] = fr
    return sheet
