"""``codec.load(path, ...)``: a .ddz as something training code can iterate.

* Latent-video archives (``ddz pack``): a map-style :class:`VideoDataset` giving
  ``(video float [T, 3, H, W] in [0, 1], label)``; see :mod:`codec.loader.video`.
* Soft-label archives: handed to :mod:`codec.softlabels`' replay API.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..codecs.base import registered_codecs
from ..codecs.softlabel import SoftLabelCodec
from ..errors import FormatError, InvalidInputError
from ..format import open as ddz_open
from .video import VIDEO_META_KEY, VideoDataset

__all__ = ["load", "VideoDataset", "archive_kind", "unpack_archive"]

# The metadata keys codec.softlabels writes (soft labels, augmentation records, LLM token labels).
SOFTLABEL_META_KEYS = ("softlabels", "augment", "llm")


def unpack_archive(*args: Any, **kwargs: Any) -> list[str]:
    """:func:`codec.loader.unpack.unpack_archive` (imported on first use: it pulls in safetensors/tqdm)."""
    from .unpack import unpack_archive as impl

    return impl(*args, **kwargs)


def archive_kind(path: str | os.PathLike) -> str:
    """``"latent-video"``, ``"soft-labels"`` or ``"unknown"``, from the archive's metadata and objects."""
    with ddz_open(path) as f:
        meta = f.metadata
        if isinstance(meta.get(VIDEO_META_KEY), dict) and meta[VIDEO_META_KEY].get("kind") == "latent-video":
            return "latent-video"
        if any(k in meta for k in SOFTLABEL_META_KEYS):
            return "soft-labels"
        ids = {str(o.get("codec", {}).get("id", "")) for o in f.objects.values()}
        if ids & set(registered_codecs(SoftLabelCodec)):
            return "soft-labels"
    return "unknown"


def load(path: str | os.PathLike, device: Any = "cpu", *, verify: bool = False, **kwargs: Any) -> Any:
    """Open ``path`` for training: a .ddz, the index of a sharded set (spec/sets.md), or either
    at an fsspec URL (read with range requests).

    For a latent-video archive returns :class:`VideoDataset` (keyword options: ``cache``
    (None / "latents" / "frames"), ``decode_batch``, ``autocast`` ("bf16"/"fp16"),
    ``vae_dtype``, ``transform``). For a soft-label archive, returns
    ``codec.softlabels.open_archive(path, device=device, **kwargs)`` (a ``ReplayArchive``
    when augmentation records are stored, an ``LLMArchive`` for token-level labels, else a
    ``SoftLabelArchive``); use ``codec.softlabels.replay.replay_loader`` to iterate
    (epoch, step) batches.

    ``verify=True`` checks every checksum of the file once, before returning (one read of the
    whole file); by default only the structure is checked and a flipped payload bit can decode
    to wrong values (never to a crash or a non-codec exception).
    """
    from ..format.source import is_url

    path = os.fspath(path)
    if not is_url(path) and not os.path.isfile(path):
        raise InvalidInputError(f"{path}: no such file")
    kind = archive_kind(path)
    if kind == "latent-video":
        return VideoDataset(path, device=device, verify=verify, **kwargs)
    if kind == "soft-labels":
        try:
            sl = importlib.import_module("codec.softlabels")
        except ImportError as exc:
            raise InvalidInputError(f"{path} holds soft labels but codec.softlabels cannot be imported: {exc}") from None
        opener = getattr(sl, "open_archive", None)
        if not callable(opener):
            raise InvalidInputError(f"{path} holds soft labels, but this installation's codec.softlabels has no "
                                    "open_archive replay entry point")
        return opener(path, device=device, verify=verify, **kwargs)
    with ddz_open(path) as f:
        keys = sorted(f.metadata)[:6]
    raise FormatError(f"{path}: neither a latent-video nor a soft-label archive (metadata keys: {keys})")
