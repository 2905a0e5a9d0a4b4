"""Reading the inputs users have: video folders (PyAV), frame-image folders, CSV labels, tensor files.

Layout of a video folder (as torchvision's ``ImageFolder`` / UCF101-style datasets)::

    ROOT/<class name>/<clip>.mp4            (any container PyAV reads: mp4, avi, mkv, webm, mov, ...)
    ROOT/<class name>/<clip>/000001.png     (a clip given as a folder of frame images)

Class ids are the sorted class-folder names. A CSV (``path,label`` header; paths relative
to the CSV's folder, labels class names or integers) can list clips instead.

Frames come out as float32 ``[T, 3, H, W]`` in [0, 1]. Frame sampling is deterministic:
``sampling="gap"`` takes frames ``0, gap, 2*gap, ...`` (LVDD uses 16 frames with gap 4,
from a random start; we start at 0 so the same input always gives the same archive);
``sampling="uniform"`` spreads ``T`` frames evenly over the clip. Clips shorter than
needed are padded by repeating the clip's last frame (our rule; the LVDD code samples from
a random start inside long enough clips). Frames are resized
so the short side is the target size (bilinear, by libswscale inside PyAV) and then
centre-cropped to ``H x W``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .._args import parse_device
from .._files import is_regular, open_regular
from ..errors import DDZError, InvalidInputError

__all__ = ["parse_device", "VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS", "Clip", "find_clips", "read_clip", "read_video",
           "read_frame_folder", "load_tensors", "parse_resolution"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif", ".flv", ".wmv", ".3gp")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Clip:
    path: str
    label: int


def parse_resolution(res: Any) -> tuple[int, int]:
    """``112`` / ``"112"`` / ``"112x160"`` / ``(112, 160)`` -> ``(H, W)``."""
    if isinstance(res, str):
        parts = res.lower().replace(",", "x").split("x")
        try:
            vals = [int(p) for p in parts]
        except ValueError:
            raise InvalidInputError(f"resolution must look like 112 or 112x160, got {res!r}") from None
    elif isinstance(res, int):
        vals = [res]
    else:
        try:
            vals = [int(v) for v in res]
        except TypeError:
            raise InvalidInputError(f"resolution must be an int or (H, W), got {res!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1 or max(vals) > 8192:
        raise InvalidInputError(f"resolution must be one or two sizes in 1..8192, got {res!r}")
    return vals[0], vals[1]


def _is_clip(path: str) -> bool:
    if os.path.isdir(path):
        return any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(path))
    if not path.lower().endswith(VIDEO_EXTENSIONS):
        return False
    if not is_regular(path):  # a FIFO or device would block the decoder
        raise InvalidInputError(f"{path!r} is not a regular file")
    return True


def find_clips(root: str | os.PathLike, csv_path: str | os.PathLike | None = None) -> tuple[list[Clip], list[str]]:
    """The clips under ``root`` (one subfolder per class) or listed in ``csv_path``, and the class names."""
    if csv_path is not None:
        return _clips_from_csv(os.fspath(csv_path))
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise InvalidInputError(f"video folder {root!r} does not exist or is not a folder")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise InvalidInputError(f"video folder {root!r} has no class subfolders (expected ROOT/<class>/<clip>)")
    clips: list[Clip] = []
    for label, name in enumerate(classes):
        cdir = os.path.join(root, name)
        found = sorted(os.path.join(cdir, f) for f in os.listdir(cdir) if not f.startswith("."))
        found = [p for p in found if _is_clip(p)]
        if not found:
            raise InvalidInputError(f"class folder {cdir!r} holds no videos ({', '.join(VIDEO_EXTENSIONS[:5])}, ...) "
                                    "or frame-image folders")
        clips.extend(Clip(p, label) for p in found)
    return clips, classes


def _clips_from_csv(path: str) -> tuple[list[Clip], list[str]]:
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: tolerate a BOM (Excel's CSV)
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{path}: cannot read CSV ({exc})") from None
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise InvalidInputError(f"{path}: CSV needs a header with 'path' and 'label' columns and at least one row")
    for i, r in enumerate(rows):
        # DictReader fills missing fields of a short row with None
        if not isinstance(r.get("path"), str) or not isinstance(r.get("label"), str) or not r["path"].strip():
            raise InvalidInputError(f"{path}: row {i + 2} needs both a path and a label, got {list(r.values())[:2]}")
    labels = [r["label"].strip() for r in rows]
    if all(lb.strip().lstrip("-").isdigit() for lb in labels):
        ids = [int(lb) for lb in labels]
        if min(ids) < 0:
            raise InvalidInputError(f"{path}: negative class id")
        classes = [str(i) for i in range(max(ids) + 1)]
    else:
        classes = sorted(set(labels))
        ids = [classes.index(lb) for lb in labels]
    clips = []
    for i, (r, lb) in enumerate(zip(rows, ids)):
        p = r["path"] if os.path.isabs(r["path"]) else os.path.join(base, r["path"])
        if not os.path.exists(p):
            raise InvalidInputError(f"{path}: row {i + 2}: {r['path']!r} does not exist")
        clips.append(Clip(p, lb))
    return clips, classes


def _indices(n_avail: int | None, frames: int, sampling: str, gap: int) -> list[int]:
    if sampling == "gap":
        return [k * gap for k in range(frames)]
    if sampling == "uniform":
        if not n_avail:
            return list(range(frames))
        return [int(round(v)) for v in np.linspace(0, n_avail - 1, frames)] if frames > 1 else [0]
    raise InvalidInputError(f"frame sampling must be 'gap' or 'uniform', got {sampling!r}")


def _fit(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Centre-crop an ``[h, w, 3]`` image already scaled to cover ``hw``."""
    h, w = img.shape[:2]
    top, left = (h - hw[0]) // 2, (w - hw[1]) // 2
    return img[top:top + hw[0], left:left + hw[1]]


def _cover(h: int, w: int, hw: tuple[int, int]) -> tuple[int, int]:
    s = max(hw[0] / h, hw[1] / w)
    return max(hw[0], int(round(h * s))), max(hw[1], int(round(w * s)))


def _rgb(fr: Any, hw: tuple[int, int]) -> np.ndarray:
    ch, cw = _cover(fr.height, fr.width, hw)
    return _fit(fr.to_ndarray(format="rgb24", width=cw, height=ch), hw)


def read_video(path: str, frames: int = 16, resolution: Any = 112, *, sampling: str = "gap",
               frame_gap: int = 4) -> torch.Tensor:
    """Decode ``frames`` frames of a video file with PyAV -> float32 ``[T, 3, H, W]`` in [0, 1]."""
    import av

    hw = parse_resolution(resolution)
    try:
        fh = open_regular(path, "video")  # a FIFO in its place fails here instead of blocking
    except DDZError as exc:
        raise InvalidInputError(str(exc)) from None
    try:
        container = av.open(fh)
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types
        fh.close()
        raise InvalidInputError(f"{path}: cannot open video ({exc})") from None
    try:
        if not container.streams.video:
            raise InvalidInputError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n_avail = stream.frames or None
        if sampling == "uniform" and not n_avail:
            n_avail = sum(1 for _ in container.decode(video=0))
            container.seek(0)
        want = _indices(n_avail, frames, sampling, frame_gap)
        wanted = set(want)
        last = max(want)
        got: dict[int, np.ndarray] = {}
        tail = None  # the clip's last decoded frame, for padding
        try:
            for i, fr in enumerate(container.decode(video=0)):
                tail = fr
                if i in wanted:
                    got[i] = _rgb(fr, hw)
                if i >= last:
                    break
            pad = _rgb(tail, hw) if tail is not None and len(got) < len(wanted) else None
        except InvalidInputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InvalidInputError(f"{path}: video decoding failed ({exc})") from None
    finally:
        container.close()
        fh.close()
    if not got and pad is None:
        raise InvalidInputError(f"{path}: no frames could be decoded")
    out = [got[i] if i in got else pad for i in want]  # indices past the clip's end: its last frame
    arr = np.stack(out)  # type: ignore[arg-type]  # pad is set whenever an index is missing
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def read_frame_folder(path: str, frames: int = 16, resolution: Any = 112, *, sampling: str = "gap",
                      frame_gap: int = 4) -> torch.Tensor:
    """A clip stored as a folder of frame images (sorted by name) -> float32 ``[T, 3, H, W]`` in [0, 1]."""
    from PIL import Image

    hw = parse_resolution(resolution)
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))  # opened regular-only below
    if not files:
        raise InvalidInputError(f"{path}: no frame images")
    want = [min(i, len(files) - 1) for i in _indices(len(files), frames, sampling, frame_gap)]
    out = []
    cache: dict[int, np.ndarray] = {}
    for i in want:
        if i not in cache:
            try:
                with open_regular(os.path.join(path, files[i]), "frame image") as fh, Image.open(fh) as src:
                    im = src.convert("RGB")
                    ch, cw = _cover(im.height, im.width, hw)
                    cache[i] = _fit(np.asarray(im.resize((cw, ch), Image.Resampling.BILINEAR)), hw)
            except (OSError, Image.DecompressionBombError, DDZError) as exc:
                raise InvalidInputError(f"{os.path.join(path, files[i])}: cannot read image ({exc})") from None
        out.append(cache[i])
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div_(255.0)


def read_clip(path: str, frames: int = 16, resolution: Any = 112, *, sampling: str = "gap", frame_gap: int = 4) -> torch.Tensor:
    """A video file or a frame folder -> float32 ``[T, 3, H, W]`` in [0, 1]."""
    if frames < 1 or frame_gap < 1:
        raise InvalidInputError(f"frames and frame_gap must be >= 1, got {frames}, {frame_gap}")
    if os.path.isdir(path):
        return read_frame_folder(path, frames, resolution, sampling=sampling, frame_gap=frame_gap)
    return read_video(path, frames, resolution, sampling=sampling, frame_gap=frame_gap)


def load_tensors(path: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` (all of them), ``.npy`` (as ``"latents"``) or ``.npz`` (no pickles)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidInputError(f"tensor file {path!r} does not exist")
    low = path.lower()
    try:
        if low.endswith(".safetensors"):
            from safetensors.torch import load_file

            out = load_file(path)
        elif low.endswith(".npy"):
            out = {"latents": torch.from_numpy(np.load(path, allow_pickle=False))}
        elif low.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                out = {k: torch.from_numpy(z[k]) for k in z.files}
        else:
            raise InvalidInputError(f"{path}: tensor files must be .safetensors, .npy or .npz")
    except InvalidInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors / numpy raise several types
        raise InvalidInputError(f"{path}: cannot read tensors ({type(exc).__name__}: {exc})") from None
    if names is not None:
        missing = [n for n in names if n not in out]
        if missing:
            raise InvalidInputError(f"{path}: missing tensor(s) {missing}; found {sorted(out)}")
    return out
