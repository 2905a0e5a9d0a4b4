"""A map-style torch Dataset over a latent-video .ddz (int8 VAE + Tucker latents + labels).

``ds[i]`` rebuilds sample ``i``'s latents from its Tucker core row and its chunk's factors
(:func:`codec.codecs.tucker.reconstruct_rows`), decodes its ``T`` frames with the stored
VAE and returns ``(video float32 [T, 3, H, W] in [0, 1], label int64)``.

* Batched decode: ``ds.decode_batch(indices)`` rebuilds and decodes many samples in one
  pass (``decode_batch`` frames per VAE call). The Dataset also implements
  ``__getitems__``, which ``torch.utils.data.DataLoader`` calls with a whole batch of
  indices, so a plain ``DataLoader(ds, batch_size=B)`` decodes batch-wise (on GPU when
  ``device="cuda"``).
* Workers: the Dataset holds only the path and options until first use; each process
  (DataLoader worker, DDP rank) opens its own memory map and rebuilds the VAE lazily, and
  pickling drops all of that, so nothing large travels to workers. ``DistributedSampler``
  works as with any map-style dataset.
* Cache: ``cache="latents"`` rebuilds all latents once (small: N x T x C x h x w fp32);
  ``cache="frames"`` (or True) keeps each decoded video (on CPU) after first access.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Sequence

import torch

from ..codecs.objects import object_codec
from ..codecs.tucker import TuckerCodec, reconstruct_rows
from ..errors import FormatError, InvalidInputError
from ..format import open as ddz_open
from ..video.vae import decode_latents, read_vae

__all__ = ["VideoDataset", "VIDEO_META_KEY"]

VIDEO_META_KEY = "ddz.video"
_DTYPES = {"fp32": torch.float32, "f32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "f16": torch.float16}


class VideoDataset(torch.utils.data.Dataset):
    """See the module docstring. Build with :func:`codec.load`."""

    def __init__(self, path: str | os.PathLike, *, device: Any = "cpu", cache: Any = None, decode_batch: int = 32,
                 autocast: str | None = None, vae_dtype: Any = "fp32", transform: Any = None):
        self.path = os.fspath(path)
        self.device = torch.device(device)
        if cache not in (None, False, True, "latents", "frames"):
            raise InvalidInputError(f"cache must be None, 'latents' or 'frames', got {cache!r}")
        self.cache = "frames" if cache is True else (cache or None)
        if not isinstance(decode_batch, int) or decode_batch < 1:
            raise InvalidInputError(f"decode_batch must be a positive int, got {decode_batch!r}")
        self.decode_batch_size = decode_batch
        if autocast not in (None, "bf16", "fp16"):
            raise InvalidInputError(f"autocast must be None, 'bf16' or 'fp16', got {autocast!r}")
        self.autocast = autocast
        if isinstance(vae_dtype, str):
            if vae_dtype not in _DTYPES:
                raise InvalidInputError(f"vae_dtype must be one of {sorted(_DTYPES)}, got {vae_dtype!r}")
            vae_dtype = _DTYPES[vae_dtype]
        self.vae_dtype = vae_dtype
        self.transform = transform
        with ddz_open(self.path) as f:
            meta = f.metadata.get(VIDEO_META_KEY)
            if not isinstance(meta, dict) or meta.get("kind") != "latent-video":
                raise FormatError(f"{self.path} is not a latent-video archive (no {VIDEO_META_KEY!r} metadata)")
            names = meta.get("objects", {})
            self._names = {k: names.get(k, k) for k in ("vae", "latents", "labels")}
            self._soft = names.get("soft_labels")  # dense section written by ddz pack
            if self._soft is not None:
                info = f.info(self._soft)
                if len(info.shape) != 2 or info.shape[0] != int(f.info(f.objects[self._names["latents"]]["sections"]["core"]).shape[0]):
                    raise FormatError(f"{self.path}: soft labels shape {info.shape} does not match the samples", section=self._soft)
            sl = f.metadata.get("softlabels")  # a codec.softlabels object in the same archive (one row per sample)
            self._soft_object = sl.get("object") if isinstance(sl, dict) and self._soft is None else None
            for key in ("vae", "latents"):
                if self._names[key] not in f.objects:
                    raise FormatError(f"{self.path}: object {self._names[key]!r} ({key}) is missing")
            codec = object_codec(f, self._names["latents"])
            if not isinstance(codec, TuckerCodec):
                raise FormatError(f"{self.path}: latents object uses codec {codec.codec_id!r}, expected tucker")
            core = f.info(f.objects[self._names["latents"]]["sections"]["core"])
            self._n = int(core.shape[0])
            labels = f.get(self._names["labels"], framework="torch").clone()
            if labels.shape != (self._n,):
                raise FormatError(f"{self.path}: labels shape {tuple(labels.shape)} does not match {self._n} samples",
                                  section=self._names["labels"])
        self.labels = labels.to(torch.int64)
        self.meta = meta
        self.class_names = list(meta.get("class_names") or [])
        self._local: dict[str, Any] | None = None
        self._pid: int | None = None
        self._frames: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    # -- lazy per-process state ---------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        if self._local is not None and self._pid == os.getpid():
            return self._local
        with self._lock:
            if self._local is not None and self._pid == os.getpid():
                return self._local
            f = ddz_open(self.path)
            secs = f.objects[self._names["latents"]]["sections"]
            codec = object_codec(f, self._names["latents"])
            core = f.get(secs["core"], framework="torch")  # zero-copy mmap view (raw sections)
            factors = {k: v.to(self.device, torch.float32) for k, v in
                       TuckerCodec.factor_parts({p: f.get(s, framework="torch") for p, s in secs.items() if p != "core"}).items()}
            codec.check_parts(core.shape, factors)
            vae = read_vae(f, self._names["vae"], device=self.device, dtype=self.vae_dtype)
            st = {"file": f, "codec": codec, "core": core, "factors": factors, "vae": vae, "latents": None, "soft": None}
            if self._soft is not None:
                st["soft"] = f.get(self._soft, framework="torch")
            elif self._soft_object is not None:
                from ..softlabels.archive import SoftLabelArchive

                arch = SoftLabelArchive(self.path, name=self._soft_object, device=self.device)
                if len(arch) != self._n:
                    raise FormatError(f"{self.path}: soft-label object {self._soft_object!r} has {len(arch)} rows "
                                      f"for {self._n} samples (per-epoch replay archives: use codec.softlabels)")
                st["soft"] = arch
            if self.cache == "latents":
                st["latents"] = self._rebuild(st, torch.arange(self._n))
            self._local, self._pid = st, os.getpid()
            self._frames = {}
            return st

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_local"] = None
        d["_pid"] = None
        d["_frames"] = {}
        d["_lock"] = None
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the memory map and the VAE of this process (they reopen on next access)."""
        if self._local is not None and self._pid == os.getpid():
            self._local["file"].close()
        self._local, self._pid, self._frames = None, None, {}

    # -- data ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def vae(self) -> torch.nn.Module:
        """The rebuilt (dequantised) diffusers VAE of this process."""
        return self._state()["vae"]

    def _rebuild(self, st: dict[str, Any], ids: torch.Tensor) -> torch.Tensor:
        rows = st["core"][ids]  # copies just these rows out of the mapping
        return reconstruct_rows(rows.to(self.device), st["factors"], ids, st["codec"].chunk_size)

    def _check_ids(self, indices: Any) -> torch.Tensor:
        ids = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if ids.numel() and (int(ids.min()) < -self._n or int(ids.max()) >= self._n):
            raise IndexError(f"index out of range for a dataset of {self._n} samples")
        return ids % self._n if self._n else ids

    def latents(self, indices: Any) -> torch.Tensor:
        """Rebuilt latents ``[B, T, C, h, w]`` (fp32, on ``device``) of ``indices``."""
        st = self._state()
        ids = self._check_ids(indices)
        if st["latents"] is not None:
            return st["latents"][ids.to(st["latents"].device)]
        return self._rebuild(st, ids)

    @property
    def has_soft_labels(self) -> bool:
        return self._soft is not None or self._soft_object is not None

    def soft_labels(self, indices: Any) -> torch.Tensor:
        """Soft labels ``[B, K]`` (fp32, on ``device``) of ``indices``."""
        st = self._state()
        if st["soft"] is None:
            raise InvalidInputError(f"{self.path} has no soft labels")
        ids = self._check_ids(indices)
        if isinstance(st["soft"], torch.Tensor):
            return st["soft"][ids].to(self.device, torch.float32)
        return st["soft"].rows_at(ids.tolist()).to(self.device, torch.float32)

    def decode_batch(self, indices: Any) -> tuple[torch.Tensor, ...]:
        """Videos ``[B, T, 3, H, W]`` in [0, 1] and labels ``[B]`` of ``indices``, decoded together
        (plus soft labels ``[B, K]`` when the archive has them)."""
        ids = self._check_ids(indices)
        st = self._state()
        todo = [j for j, i in enumerate(ids.tolist()) if i not in self._frames]
        out: list[torch.Tensor | None] = [self._frames.get(i) for i in ids.tolist()]
        if todo:
            sel = ids[todo]
            z = self.latents(sel)
            b, t = z.shape[:2]
            frames = decode_latents(st["vae"], z.reshape(b * t, *z.shape[2:]), batch_size=self.decode_batch_size,
                                    autocast=self.autocast)
            frames = frames.reshape(b, t, *frames.shape[1:])
            for k, j in enumerate(todo):
                out[j] = frames[k]
                if self.cache == "frames":
                    self._frames[int(sel[k])] = frames[k].cpu()
        videos = torch.stack([v.to(self.device) for v in out]) if out else torch.empty(0)
        if self.has_soft_labels:
            return videos, self.labels[ids], self.soft_labels(ids)
        return videos, self.labels[ids]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        if not isinstance(i, int) and not (isinstance(i, torch.Tensor) and i.dim() == 0):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        item = tuple(t[0] for t in self.decode_batch([int(i)]))
        return self.transform(item) if self.transform is not None else item

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batch fetch used by ``DataLoader``: one batched decode for the whole batch."""
        batch = self.decode_batch(list(indices))
        items = [tuple(t[k] for t in batch) for k in range(len(indices))]
        return [self.transform(it) for it in items] if self.transform is not None else items

    def __repr__(self) -> str:
        m = self.meta
        return (f"VideoDataset({self.path!r}, samples={self._n}, classes={m.get('num_classes')}, "
                f"frames={m.get('frames')}, resolution={m.get('resolution')}, device={str(self.device)!r})")
