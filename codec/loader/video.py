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
  (DataLoader worker, DDP rank) opens its own file handle and rebuilds the VAE lazily, and
  pickling drops all of that, so nothing large travels to workers. ``DistributedSampler``
  works as with any map-style dataset. With ``device="cuda"`` and ``num_workers > 0`` the
  workers must be started with ``DataLoader(..., multiprocessing_context="spawn")``: CUDA
  cannot be used in a forked child once the parent has initialised it (a forked worker
  raises :class:`InvalidInputError` saying so). The usual alternative is ``device="cpu"``
  workers and moving batches to the GPU in the training loop, or ``num_workers=0`` with
  GPU decode in the main process.
* Hostile or damaged archives: everything ``__init__`` reads (metadata, objects table,
  codec configs, section shapes and dtypes) is checked before use, and the latents' shape
  implied by the stored core and factors must equal the metadata's ``latent_shape`` and the
  VAE's ``latent_channels``; every failure is a :class:`codec.errors.DDZError`.
* Cache: ``cache="latents"`` rebuilds all latents once (small: N x T x C x h x w fp32);
  ``cache="frames"`` (or True) keeps each decoded video (on CPU) after first access.
"""

from __future__ import annotations

import operator
import os
import threading
from typing import Any, Iterator, Sequence

import torch

from .._args import int_arg
from ..codecs.objects import object_codec
from ..codecs.tucker import TuckerCodec, reconstruct_rows
from ..errors import FormatError, InvalidInputError
from ..format import open as ddz_open
from ..format.resources import guarded
from ..video.io import parse_device
from ..video.pack import VIDEO_META_KEY
from ..video.vae import decode_latents, read_vae

__all__ = ["VideoDataset", "VIDEO_META_KEY"]

_FLOAT_SECTIONS = ("f32", "f16", "bf16")
_INT_SECTIONS = ("u8", "i8", "u16", "i16", "u32", "i32", "i64")
_DTYPES = {"fp32": torch.float32, "f32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "f16": torch.float16}


class VideoDataset(torch.utils.data.Dataset):
    """See the module docstring. Build with :func:`codec.load`."""

    def __init__(self, path: str | os.PathLike, *, device: Any = "cpu", cache: Any = None, decode_batch: int = 32,
                 autocast: str | None = None, vae_dtype: Any = "fp32", transform: Any = None, verify: bool = False):
        self.path = os.fspath(path)
        self.device = parse_device(device)
        if cache not in (None, False, True, "latents", "frames"):
            raise InvalidInputError(f"cache must be None, 'latents' or 'frames', got {cache!r}")
        self.cache = "frames" if cache is True else (cache or None)
        self.decode_batch_size = int_arg("decode_batch", decode_batch, 1)
        if autocast not in (None, "bf16", "fp16"):
            raise InvalidInputError(f"autocast must be None, 'bf16' or 'fp16', got {autocast!r}")
        self.autocast = autocast
        if isinstance(vae_dtype, str):
            if vae_dtype not in _DTYPES:
                raise InvalidInputError(f"vae_dtype must be one of {sorted(_DTYPES)}, got {vae_dtype!r}")
            vae_dtype = _DTYPES[vae_dtype]
        self.vae_dtype = vae_dtype
        self.transform = transform
        with ddz_open(self.path, verify=verify) as f:  # verify: every checksum, once, before anything is used
            meta, labels = self._validate(f)
        self.labels = labels.to(torch.int64)
        self.meta = meta
        self.class_names = list(meta["class_names"])  # one per class id: labels are checked against it
        self.object_names = dict(self._names)  # role ("vae", "latents", "labels") -> object / section name
        self._local: dict[str, Any] | None = None
        self._pid: int | None = None
        self._frames: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    def _fail(self, msg: str, section: str | None = None) -> FormatError:
        return FormatError(f"{self.path}: {msg}", section=section)

    def _validate(self, f: Any) -> tuple[dict, torch.Tensor]:
        """Check everything the Dataset will rely on (header only, plus the labels); returns (meta, labels)."""
        meta = f.metadata.get(VIDEO_META_KEY)
        if not isinstance(meta, dict) or meta.get("kind") != "latent-video":
            raise self._fail(f"not a latent-video archive (no {VIDEO_META_KEY!r} metadata)")
        names = meta.get("objects", {})
        if not isinstance(names, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
            raise self._fail(f"metadata {VIDEO_META_KEY}.objects must map roles to object names (strings), got {str(names)[:60]}")
        self._names = {k: names.get(k, k) for k in ("vae", "latents", "labels")}
        for key in ("vae", "latents"):
            if self._names[key] not in f.objects:
                raise self._fail(f"object {self._names[key]!r} ({key}) is missing")
        cn, nc = meta.get("class_names"), meta.get("num_classes")
        if not (isinstance(cn, list) and all(isinstance(c, str) for c in cn)):
            raise self._fail(f"metadata class_names must be a list of strings, got {str(cn)[:60]}")
        if type(nc) is not int or nc != len(cn) or nc < 1:
            raise self._fail(f"metadata num_classes must be the number of class names ({len(cn)}), got {str(nc)[:40]}")
        secs = f.objects[self._names["latents"]]["sections"]
        if "core" not in secs:
            raise self._fail(f"latents object {self._names['latents']!r} has no 'core' part (parts: {sorted(secs)})")
        codec = object_codec(f, self._names["latents"])
        if not isinstance(codec, TuckerCodec):
            raise self._fail(f"latents object uses codec {codec.codec_id!r}, expected tucker")
        core = f.info(secs["core"])
        if core.dtype not in _FLOAT_SECTIONS or len(core.shape) != 5:
            raise self._fail(f"Tucker core must be a float [N, T, C, h, w] section, got {core.dtype} {core.shape}", secs["core"])
        shapes = {}
        for part, sec in secs.items():
            if part == "core":
                continue
            info = f.info(sec)
            if info.dtype not in _FLOAT_SECTIONS:
                raise self._fail(f"Tucker part {part!r} must be floating point, got {info.dtype}", sec)
            shapes[part] = torch.empty(info.shape, device="meta")  # shapes only: nothing is allocated
        if set(shapes) - {f"factor_{k}" for k in range(1, 5)}:
            raise self._fail(f"latents object has unknown parts {sorted(set(shapes) - {f'factor_{k}' for k in range(1, 5)})}")
        factors = TuckerCodec.factor_parts(shapes)
        codec.check_parts(core.shape, factors)  # InvalidInputError / LimitError (amplification cap)
        out = codec.output_shape(core.shape, factors)
        self._n = int(out[0])
        ls = meta.get("latent_shape")
        if not (isinstance(ls, list) and len(ls) == 4 and all(type(d) is int and d > 0 for d in ls)):
            raise self._fail(f"metadata latent_shape must be 4 positive ints [T, C, h, w], got {str(ls)[:60]}")
        if list(out[1:]) != ls:
            raise self._fail(f"stored Tucker parts rebuild latents of shape {list(out[1:])}, metadata latent_shape is {ls}",
                             secs["core"])
        model = f.objects[self._names["vae"]]["codec"].get("model")
        cfg = model.get("config") if isinstance(model, dict) else None
        lc = cfg.get("latent_channels") if isinstance(cfg, dict) else None
        if type(lc) is int and lc != ls[1]:
            raise self._fail(f"latents have C = {ls[1]} channels but the stored VAE's latent_channels is {lc}")
        linfo = f.info(self._names["labels"])
        if linfo.dtype not in _INT_SECTIONS or linfo.shape != (self._n,):
            raise self._fail(f"labels must be an integer [{self._n}] section, got {linfo.dtype} {linfo.shape}",
                             self._names["labels"])
        labels = f.get(self._names["labels"], framework="torch").to(torch.int64)
        if self._n and not 0 <= int(labels.min()) <= int(labels.max()) < nc:
            raise self._fail(f"labels hold class ids outside 0..{nc - 1} (min {int(labels.min())}, max {int(labels.max())})",
                             self._names["labels"])
        self._soft = names.get("soft_labels")  # dense section written by ddz pack
        if self._soft is not None:
            info = f.info(self._soft)
            if len(info.shape) != 2 or info.shape[0] != self._n or info.dtype not in _FLOAT_SECTIONS:
                raise self._fail(f"soft labels must be a float [{self._n}, K] section, got {info.dtype} {info.shape}", self._soft)
        sl = f.metadata.get("softlabels")  # a codec.softlabels object in the same archive (one row per sample)
        self._soft_object = sl.get("object") if isinstance(sl, dict) and self._soft is None else None
        return meta, labels

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """``(T, C, h, w)`` of one sample's latents (checked against the stored parts)."""
        return tuple(self.meta["latent_shape"])

    # -- lazy per-process state ---------------------------------------------------------------------
    @guarded("VideoDataset")
    def _state(self) -> dict[str, Any]:
        if self._local is not None and self._pid == os.getpid():
            return self._local
        with self._lock:
            if self._local is not None and self._pid == os.getpid():
                return self._local
            if self.device.type == "cuda" and torch.cuda._is_in_bad_fork():
                raise InvalidInputError(
                    "VideoDataset(device='cuda') cannot decode in a forked DataLoader worker (CUDA does not survive "
                    "fork); use DataLoader(..., multiprocessing_context='spawn'), num_workers=0, or device='cpu'")
            f = ddz_open(self.path)
            try:
                st = self._open_state(f)
                if self.cache == "latents":
                    st["latents"] = self._rebuild(st, torch.arange(self._n))
            except BaseException:
                f.close()  # a failed build must not leak the open file
                raise
            self._local, self._pid = st, os.getpid()
            self._frames = {}
            return st

    def _open_state(self, f: Any) -> dict[str, Any]:
        secs = f.objects[self._names["latents"]]["sections"]
        codec = object_codec(f, self._names["latents"])
        if not isinstance(codec, TuckerCodec):
            raise self._fail(f"latents object uses codec {codec.codec_id!r}, expected tucker")
        core = f.get(secs["core"], framework="torch")  # read into memory: another process rewriting the file cannot crash training
        factors = {k: v.to(self.device, torch.float32) for k, v in
                   TuckerCodec.factor_parts({p: f.get(s, framework="torch") for p, s in secs.items() if p != "core"}).items()}
        codec.check_parts(core.shape, factors)
        vae = read_vae(f, self._names["vae"], device=self.device, dtype=self.vae_dtype)
        lc = getattr(getattr(vae, "config", None), "latent_channels", None)
        if isinstance(lc, int) and lc != self.latent_shape[1]:
            raise self._fail(f"latents have C = {self.latent_shape[1]} channels but the stored VAE takes {lc}")
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
        """Release the open file and the VAE of this process (they reopen on next access)."""
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

    @guarded("VideoDataset")
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

    @guarded("VideoDataset")
    def soft_labels(self, indices: Any) -> torch.Tensor:
        """Soft labels ``[B, K]`` (fp32, on ``device``) of ``indices``."""
        st = self._state()
        if st["soft"] is None:
            raise InvalidInputError(f"{self.path} has no soft labels")
        ids = self._check_ids(indices)
        if isinstance(st["soft"], torch.Tensor):
            return st["soft"][ids].to(self.device, torch.float32)
        return st["soft"].rows_at(ids.tolist()).to(self.device, torch.float32)

    @guarded("VideoDataset")
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
        videos = torch.stack([v.to(self.device) for v in out if v is not None]) if out else torch.empty(0)
        if self.has_soft_labels:
            return videos, self.labels[ids], self.soft_labels(ids)
        return videos, self.labels[ids]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        if isinstance(i, torch.Tensor) and i.dim() == 0 and not i.is_floating_point():
            i = int(i)
        try:
            i = operator.index(i)  # ints, numpy integers
        except TypeError:
            raise TypeError(f"index must be an int, got {type(i).__name__}") from None
        ids = self._check_ids([i])  # the only IndexError: out of range
        try:
            item = tuple(t[0] for t in self.decode_batch(ids))
        except IndexError as exc:  # would silently end `for x in ds` / list(ds): report it as a damaged archive
            raise FormatError(f"{self.path}: decoding sample {i} failed ({type(exc).__name__}: {exc})") from None
        return self.transform(item) if self.transform is not None else item

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for i in range(self._n):
            yield self[i]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, ...]]:
        """Batch fetch used by ``DataLoader``: one batched decode for the whole batch."""
        batch = self.decode_batch(list(indices))
        items = [tuple(t[k] for t in batch) for k in range(len(indices))]
        return [self.transform(it) for it in items] if self.transform is not None else items

    def __repr__(self) -> str:
        m = self.meta
        return (f"VideoDataset({self.path!r}, samples={self._n}, classes={m.get('num_classes')}, "
                f"frames={m.get('frames')}, resolution={m.get('resolution')}, device={str(self.device)!r})")
