"""Replay API for training code: (epoch, step) batches of (inputs, soft labels).

No patched PyTorch: a :class:`ReplayBatchSampler` yields lists of label rows, a
:class:`ReplayDataset` rebuilds each row's exact view (crop, flip, and its mix partner's view
for CutMix/Mixup, so every row is self-contained and any batch size works), and a
:class:`ReplayCollate` stacks the views and decodes the rows' soft labels.  All three hold
only a path and open the file lazily in each process, so they are safe in DataLoader workers.

* ``batch_size=None`` replays the stored batches exactly (step s of epoch e = stored batch
  (e, s)); any other batch size re-chunks each epoch's rows in stored order.
* ``start_epoch`` / ``start_step`` resume anywhere (steps counted in the training batch size).
* :class:`LPLDBatchSampler`: LPLD's pruned-pool replay (each epoch draws its batches with
  replacement from the stored prefix pool): ``draw="uniform"`` (default, seeded per epoch) or
  ``draw="lpld"`` (LPLD's own draw and "drop last" rule on one seeded stream); either way a
  resumed run draws the same batches.
* Views: ``crop="tensor"`` (default, ``F.interpolate``, any device) or ``crop="pil"``
  (SRe2L's PIL path, pixel-exact with the relabelling batch).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._args import int_arg
from ..errors import FormatError, InvalidInputError
from .archive import SoftLabelArchive
from .augment import AUG_META, MIX_TYPES


def _index_array(f, name: str, path: str) -> np.ndarray:
    a = np.asarray(f.get(name))
    if a.ndim != 1 or len(a) < 1 or not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise FormatError(f"{path}: {name} must be a non-empty 1-D integer array, got shape {a.shape} {a.dtype}", section=name)
    return a.astype(np.int64)


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "nearest-exact")
MAX_VIEW_SIZE = 4096
#: ... of which a file's ``crop.size`` may ask for at most this much (a 4096 x 4096 view is 200 MB of
#: float32: a tampered size must not make every item of a loader cost that; pass ``size=`` for more)
MAX_FILE_VIEW_SIZE = 1024


def file_view_size(meta: Any, path: str) -> int:
    """The view size an archive's ``augment.crop`` metadata stores (224 when absent), checked."""
    size = meta.get("size", 224) if isinstance(meta, dict) else 224
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_FILE_VIEW_SIZE:
        raise FormatError(f"{path}: metadata {AUG_META}.crop.size must be an integer in [1, {MAX_FILE_VIEW_SIZE}] "
                          f"(pass size= for a larger view), got {size!r}"[:300])
    return size


class ReplayArchive(SoftLabelArchive):
    """A soft-label archive with augmentation records (see :mod:`codec.softlabels.augment`)."""

    def _load(self) -> None:
        super()._load()
        f = self._f()
        meta = f.metadata.get(AUG_META)
        if not isinstance(meta, dict):
            raise FormatError(f"{self.path}: no augmentation records (metadata {AUG_META!r})")
        self.aug_meta: dict = meta
        self.epoch_batches = _index_array(f, "aug/epoch_batches", self.path)
        self.batch_rows = _index_array(f, "aug/batch_rows", self.path)
        nb = len(self.batch_rows) - 1
        if (nb < 0 or self.epoch_batches[0] != 0 or self.epoch_batches[-1] != nb or self.batch_rows[0] != 0
                or self.batch_rows[-1] != self.rows or np.any(np.diff(self.batch_rows) < 0)
                or np.any(np.diff(self.epoch_batches) < 0)):
            raise FormatError(f"{self.path}: inconsistent (epoch, step) index ({nb} batches, {self.rows} label rows)")
        self.mix_type = np.array(f.get("aug/mix_type"), np.int64)
        self.mix_lam = np.array(f.get("aug/mix_lam"), np.float64)  # f64 (f32 in older files)
        self.mix_bbox = np.array(f.get("aug/mix_bbox"), np.int64)
        if (self.mix_type.shape != (nb,) or self.mix_lam.shape != (nb,) or self.mix_bbox.shape != (nb, 4)):
            raise FormatError(f"{self.path}: per-batch mix records do not have {nb} entries")
        if nb and (self.mix_type.min() < 0 or self.mix_type.max() >= len(MIX_TYPES)):
            raise FormatError(f"{self.path}: aug/mix_type holds values outside 0..{len(MIX_TYPES) - 1} ({MIX_TYPES})",
                              section="aug/mix_type")
        mixed = self.mix_type != 0
        lam = self.mix_lam[mixed]
        if not (np.isfinite(lam).all() and (lam >= 0).all() and (lam <= 1).all()):
            raise FormatError(f"{self.path}: aug/mix_lam of a mixed batch is not a finite number in [0, 1]", section="aug/mix_lam")
        bb = self.mix_bbox[self.mix_type == 1]
        if bb.size and ((bb < 0).any() or (bb[:, 2] < bb[:, 0]).any() or (bb[:, 3] < bb[:, 1]).any()):
            raise FormatError(f"{self.path}: aug/mix_bbox of a cutmix batch is not [bbx1, bby1, bbx2, bby2] with 0 <= x1 <= x2",
                              section="aug/mix_bbox")
        ns = self.aug_meta.get("num_samples")
        if ns is not None and (isinstance(ns, bool) or not isinstance(ns, int) or ns <= 0):
            raise FormatError(f"{self.path}: metadata {AUG_META}.num_samples must be a positive integer, got {ns!r}")
        self.num_samples = ns
        self.has_sample_ids = "aug/sample" in f
        self._row_cache: dict[str, np.ndarray] = {}

    def __getstate__(self):
        st = super().__getstate__()
        st["_row_cache"] = {}
        st["_row_cache_pid"] = None
        return st

    @property
    def epochs(self) -> int:
        return len(self.epoch_batches) - 1

    def steps(self, epoch: int) -> int:
        """Stored batches in ``epoch``."""
        self._check_epoch(epoch)
        return int(self.epoch_batches[epoch + 1] - self.epoch_batches[epoch])

    def _check_epoch(self, epoch):
        if not isinstance(epoch, (int, np.integer)) or not 0 <= epoch < self.epochs:
            raise InvalidInputError(f"epoch {epoch!r} outside 0..{self.epochs - 1}")

    def batch_id(self, epoch: int, step: int) -> int:
        self._check_epoch(epoch)
        if not isinstance(step, (int, np.integer)) or not 0 <= step < self.steps(epoch):
            raise InvalidInputError(f"step {step!r} outside 0..{self.steps(epoch) - 1} of epoch {epoch}")
        return int(self.epoch_batches[epoch] + step)

    def rows_of(self, epoch: int, step: int) -> tuple[int, int]:
        g = self.batch_id(epoch, step)
        return int(self.batch_rows[g]), int(self.batch_rows[g + 1])

    def epoch_rows(self, epoch: int) -> tuple[int, int]:
        self._check_epoch(epoch)
        return int(self.batch_rows[self.epoch_batches[epoch]]), int(self.batch_rows[self.epoch_batches[epoch + 1]])

    def _rowdata(self, name: str) -> np.ndarray:
        f = self._f()
        if getattr(self, "_row_cache_pid", None) != os.getpid():
            self._row_cache, self._row_cache_pid = {}, os.getpid()
        a = self._row_cache.get(name)
        if a is None:
            a = np.array(f.get(f"aug/{name}"))
            sec = f"aug/{name}"
            if a.ndim == 0 or len(a) != self.rows:
                raise FormatError(f"{self.path}: {sec} has {len(a) if a.ndim else 0} rows, labels have {self.rows}", section=sec)
            if name == "crop":
                if a.shape != (self.rows, 4) or not np.issubdtype(a.dtype, np.floating):
                    raise FormatError(f"{self.path}: {sec} must be ({self.rows}, 4) floats, got {a.shape} {a.dtype}", section=sec)
                if not (np.isfinite(a).all() and (a >= 0).all() and (a <= 1).all()):
                    raise FormatError(f"{self.path}: {sec} holds boxes outside [0, 1] (or non-finite)", section=sec)
            elif a.ndim != 1:
                raise FormatError(f"{self.path}: {sec} must be 1-D, got shape {a.shape}", section=sec)
            elif name in ("sample", "mix_index") and a.size:
                if not np.issubdtype(a.dtype, np.integer) or a.min() < 0:
                    raise FormatError(f"{self.path}: {sec} must hold non-negative integers", section=sec)
                if name == "sample" and self.num_samples is not None and a.max() >= self.num_samples:
                    raise FormatError(f"{self.path}: sample id {int(a.max())} >= num_samples {self.num_samples}", section=sec)
            self._row_cache[name] = a
        return a

    def sample_ids(self, epoch: int, step: int) -> np.ndarray:
        """Distilled-sample ids of stored batch (epoch, step), in order."""
        if not self.has_sample_ids:
            raise InvalidInputError(f"{self.path} stores no sample ids")
        s, e = self.rows_of(epoch, step)
        return self._rowdata("sample")[s:e].astype(np.int64)

    def labels_for(self, epoch: int, step: int, **kw) -> torch.Tensor:
        s, e = self.rows_of(epoch, step)
        return self.labels(s, e, **kw)

    def record(self, epoch: int, step: int) -> dict:
        """The stored batch's augmentation record (what SRe2L's .tar held, minus the labels)."""
        g = self.batch_id(epoch, step)
        s, e = int(self.batch_rows[g]), int(self.batch_rows[g + 1])
        mt = MIX_TYPES[int(self.mix_type[g])]
        return {"epoch": epoch, "step": step, "rows": (s, e),
                "sample_ids": self._rowdata("sample")[s:e].astype(np.int64) if self.has_sample_ids else None,
                "coords": self._rowdata("crop")[s:e].astype(np.float32),
                "flip": self._rowdata("flip")[s:e].astype(bool), "mix_type": mt,
                "mix_index": self._rowdata("mix_index")[s:e].astype(np.int64) if mt != "none" else None,
                "mix_lam": None if mt == "none" else float(self.mix_lam[g]),
                "mix_bbox": self.mix_bbox[g].tolist() if mt == "cutmix" else None}

    def batch_of_row(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.batch_rows, rows, side="right") - 1

    def view_params(self, row: int) -> dict:
        """Everything needed to rebuild label row ``row``'s input: its own view and, when the
        batch was mixed, its partner's view plus the mix parameters."""
        if not 0 <= row < self.rows:
            raise InvalidInputError(f"row {row} outside 0:{self.rows}")
        g = int(self.batch_of_row(np.asarray([row]))[0])
        mt = MIX_TYPES[int(self.mix_type[g])]
        own = self._view(row)
        out = {"row": row, "batch": g, "view": own, "mix_type": mt}
        if mt != "none":
            partner = int(self.batch_rows[g]) + int(self._rowdata("mix_index")[row])
            if partner >= int(self.batch_rows[g + 1]):
                raise FormatError(f"{self.path}: mix partner of row {row} lies outside its batch")
            out["partner"] = self._view(partner)
            out["lam"] = float(self.mix_lam[g])
            out["bbox"] = [int(v) for v in self.mix_bbox[g]]
        return out

    def _view(self, row: int) -> dict:
        return {"sample": int(self._rowdata("sample")[row]) if self.has_sample_ids else None,
                "coords": self._rowdata("crop")[row].astype(np.float32), "flip": bool(self._rowdata("flip")[row])}


# --------------------------------------------------------------------------------------------
# applying a view
# --------------------------------------------------------------------------------------------
def apply_crop_flip(img: torch.Tensor, coords, flip: bool, size: int = 224, interpolation: str = "bilinear") -> torch.Tensor:
    """RandomResizedCrop from normalised ``(i/H, j/W, h/H, w/W)`` + optional horizontal flip.

    The box is ``img[:, round(i), round(j)]`` of size ``round(h) x round(w)`` (at least 1),
    resized to ``size x size`` with ``F.interpolate`` (antialiased for bilinear/bicubic).
    Tensor ops, so any device; pixel values may differ slightly from a PIL-based pipeline.
    """
    if img.ndim != 3:
        raise InvalidInputError(f"image must be (C, H, W), got shape {tuple(img.shape)}")
    H, W = img.shape[-2:]
    c = [float(v) for v in coords]
    i, j = int(round(c[0] * H)), int(round(c[1] * W))
    h, w = max(1, int(round(c[2] * H))), max(1, int(round(c[3] * W)))
    i, j = min(max(i, 0), H - 1), min(max(j, 0), W - 1)
    crop = img[:, i:i + h, j:j + w].float()
    kw = {"antialias": True} if interpolation in ("bilinear", "bicubic") else {}
    if interpolation in ("bilinear", "bicubic"):
        kw["align_corners"] = False
    out = F.interpolate(crop[None], size=(size, size), mode=interpolation, **kw)[0]
    return torch.flip(out, dims=[-1]) if flip else out


#: How a stored view is cut and resized: ``"tensor"`` (:func:`apply_crop_flip`, the default) or
#: ``"pil"`` (:func:`apply_crop_flip_pil`, SRe2L's and FKD's own PIL path, pixel-exact).
CROP_BACKENDS = ("tensor", "pil")
PIL_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def _pil_image(img: Any):
    """A PIL image from a PIL image, a uint8 (C, H, W) tensor or a uint8 (H, W, C) array."""
    from PIL import Image

    if isinstance(img, Image.Image):
        return img
    if isinstance(img, torch.Tensor):
        if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] not in (1, 3, 4):
            raise InvalidInputError(f"crop='pil' needs uint8 (C, H, W) images or PIL images, got {img.dtype} "
                                    f"shape {tuple(img.shape)}")
        arr = img.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    elif isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3, 4):
            raise InvalidInputError(f"crop='pil' needs uint8 (H, W, C) arrays or PIL images, got {img.dtype} shape {img.shape}")
        arr = img
    else:
        raise InvalidInputError(f"crop='pil' needs PIL images or uint8 arrays, got {type(img).__name__}")
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def apply_crop_flip_pil(img: Any, coords, flip: bool, size: int = 224, interpolation: str = "bilinear") -> torch.Tensor:
    """The view SRe2L / LPLD / FKD themselves compute, pixel for pixel, as a float (C, size, size) tensor in [0, 1].

    Their ``RandomResizedCropWithCoords`` / ``RandomResizedCrop_FKD`` scale the stored
    ``(i/H, j/W, h/H, w/W)`` back by the PIL image's size (Python floats) and call torchvision's
    ``resized_crop`` on the PIL image: ``img.crop((j, i, j + w, i + h))`` (PIL rounds each
    edge), then ``resize((size, size), BILINEAR)`` (PIL's own antialiased filter on uint8),
    then ``hflip`` and ``ToTensor`` (``uint8 / 255`` as float32).  This does the same with PIL
    (CPU only).  ``img``: a PIL image, or a uint8 (C, H, W) tensor / (H, W, C) array.
    """
    from PIL import Image

    if interpolation not in PIL_INTERPOLATIONS:
        raise InvalidInputError(f"crop='pil' supports interpolation {PIL_INTERPOLATIONS}, got {interpolation!r}")
    im = _pil_image(img)
    W, H = im.size
    c = [float(v) for v in coords]
    i, j, h, w = c[0] * H, c[1] * W, c[2] * H, c[3] * W
    out = im.crop((j, i, j + w, i + h))
    if out.size != (size, size):  # torchvision returns the crop itself when it already has the size
        out = out.resize((size, size), {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                                        "bicubic": Image.Resampling.BICUBIC}[interpolation])
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    t = torch.from_numpy(np.array(out, np.uint8, copy=True))
    t = t.view(out.size[1], out.size[0], len(out.getbands())).permute(2, 0, 1).contiguous()
    return t.to(torch.float32).div(255)


def mix_pair(x: torch.Tensor, partner: torch.Tensor, mix_type: str, lam: float | None, bbox) -> torch.Tensor:
    """One row of SRe2L's batch mix: CutMix pastes ``partner[:, bbx1:bbx2, bby1:bby2]``; Mixup
    blends ``lam * x + (1 - lam) * partner``."""
    if mix_type == "none":
        return x
    if mix_type == "mixup":
        if lam is None:
            raise InvalidInputError("mixup needs its lambda")
        return lam * x + (1 - lam) * partner
    if mix_type == "cutmix":
        bbx1, bby1, bbx2, bby2 = bbox
        out = x.clone()
        out[:, bbx1:bbx2, bby1:bby2] = partner[:, bbx1:bbx2, bby1:bby2]
        return out
    raise InvalidInputError(f"unknown mix type {mix_type!r}")


# --------------------------------------------------------------------------------------------
# torch.utils.data pieces
# --------------------------------------------------------------------------------------------
_ARCHIVES: dict[tuple, ReplayArchive] = {}


def _shared_archive(path: str) -> ReplayArchive:
    """One ReplayArchive per (file, process): the sampler, dataset and collate of a loader
    (and every DataLoader worker's copies of them) share an open file and its row caches."""
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), os.getpid(), st.st_mtime_ns, st.st_size)
    except OSError:
        return ReplayArchive(path)  # reports the missing file as the archive does
    arch = _ARCHIVES.get(key)
    if arch is None:
        for k in [k for k in _ARCHIVES if k[0] == key[0] or k[1] != key[1]]:
            _ARCHIVES.pop(k)  # a replaced file, or entries inherited from the parent process
        arch = _ARCHIVES[key] = ReplayArchive(path)
    return arch


class _Lazy:
    """Holds a path; opens the archive on first use in each process."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._arch = None
        self._pid = None

    @property
    def archive(self) -> ReplayArchive:
        if self._arch is None or self._pid != os.getpid():
            self._arch = _shared_archive(self.path)
            self._pid = os.getpid()
        return self._arch

    def __getstate__(self):
        st = self.__dict__.copy()
        st["_arch"] = None
        st["_pid"] = None
        return st


class ReplayBatchSampler(_Lazy, torch.utils.data.Sampler):
    """Yields lists of label-row ids, one list per training step, for epochs
    ``start_epoch .. epochs-1`` (resuming at ``start_step`` in ``start_epoch``).

    ``batch_size=None``: the stored batches (step s = stored batch (e, s)).  Otherwise each
    epoch's rows, in stored order, are cut into ``batch_size`` pieces (last one short unless
    ``drop_last``)."""

    def __init__(self, path, batch_size: int | None = None, *, start_epoch: int = 0, start_step: int = 0,
                 epochs: int | None = None, drop_last: bool = False):
        _Lazy.__init__(self, path)
        a = self.archive
        self.batch_size = None if batch_size is None else int_arg("batch_size", batch_size, 1)
        self.drop_last = bool(drop_last)
        self.epochs = a.epochs if epochs is None else int_arg("epochs", epochs, 0, a.epochs)
        self.start_epoch = int_arg("start_epoch", start_epoch, 0, self.epochs)
        self.start_step = int_arg("start_step", start_step, 0)
        if self.start_epoch < self.epochs and not 0 <= self.start_step <= self.steps(self.start_epoch):
            raise InvalidInputError(f"start_step {start_step} outside 0..{self.steps(self.start_epoch)} of epoch {start_epoch}")

    def steps(self, epoch: int) -> int:
        a = self.archive
        if self.batch_size is None:
            return a.steps(epoch)
        s, e = a.epoch_rows(epoch)
        return (e - s) // self.batch_size if self.drop_last else math.ceil((e - s) / self.batch_size)

    def batch(self, epoch: int, step: int) -> list[int]:
        """Row ids of training step ``step`` of ``epoch``."""
        a = self.archive
        if self.batch_size is None:
            s, e = a.rows_of(epoch, step)
            return list(range(s, e))
        if not 0 <= step < self.steps(epoch):
            raise InvalidInputError(f"step {step} outside 0..{self.steps(epoch) - 1} of epoch {epoch}")
        s0, e0 = a.epoch_rows(epoch)
        s = s0 + step * self.batch_size
        return list(range(s, min(e0, s + self.batch_size)))

    def sample_ids(self, epoch: int, step: int) -> np.ndarray:
        rows = np.asarray(self.batch(epoch, step), np.int64)
        return self.archive._rowdata("sample")[rows].astype(np.int64)

    def __iter__(self) -> Iterator[list[int]]:
        for e in range(self.start_epoch, self.epochs):
            for s in range(self.start_step if e == self.start_epoch else 0, self.steps(e)):
                yield self.batch(e, s)

    def __len__(self) -> int:
        return sum(self.steps(e) - (self.start_step if e == self.start_epoch else 0)
                   for e in range(self.start_epoch, self.epochs))


LPLD_DRAWS = ("uniform", "lpld")


class LPLDBatchSampler(_Lazy, torch.utils.data.Sampler):
    """LPLD replay: every training epoch draws stored batches with replacement from the stored
    pool (all stored batches: the prefix pool of LPLD's pruned relabelling).

    ``draw="uniform"`` (the default, as before): ``steps_per_epoch`` draws per epoch, uniform
    over the pool, from a generator seeded by ``(seed, epoch)`` (each epoch drawn on its own).

    ``draw="lpld"``: LPLD's own draw (``train_FKD_label_pruning_batch.py``, ``--prune_metric
    random --granularity batch_to_epoch``): each epoch makes ``nb`` draws (``nb``: stored
    batches per epoch, LPLD's ``batch_num_per_epoch``; ``steps_per_epoch`` must be left unset
    or equal it), each ``pool[torch.randint(0, len(pool), (1,))]`` from one generator seeded
    once with ``seed`` and shared by all epochs in order; then a drawn id in the last batch of
    an epoch (``(id + 1) % nb == 0``) is replaced by ``id - 1``, as LPLD's "drop last" does.
    LPLD itself draws from torch's unseeded global generator, which its DataLoaders also draw
    from once per epoch, so a past LPLD run's draws cannot be recovered; this is the same
    procedure on a seeded stream (``torch.manual_seed(seed)`` then LPLD's loop with nothing
    else drawing gives the same ids).  ``prune_ratio`` (LPLD's ``--prune_ratio``) sets the
    pool to ``int(epochs * nb * (1 - prune_ratio))`` batches as LPLD's trainer computes it from
    its training epochs; it must not exceed the stored batches.  Without it the pool is all
    stored batches.

    Both are seeded, so any (epoch, step) can be recomputed and a run resumed.
    """

    def __init__(self, path, *, epochs: int, steps_per_epoch: int | None = None, seed: int = 0, start_epoch: int = 0,
                 start_step: int = 0, draw: str = "uniform", prune_ratio: float | None = None):
        _Lazy.__init__(self, path)
        if draw not in LPLD_DRAWS:
            raise InvalidInputError(f"draw must be one of {LPLD_DRAWS}, got {draw!r}")
        self.draw = draw
        a = self.archive
        stored = len(a.batch_rows) - 1
        if stored <= 0:
            raise FormatError(f"{self.path}: no stored batches to draw from")
        self.epochs = int_arg("epochs", epochs, 0)
        self.seed = int_arg("seed", seed, 0)
        self.pool = stored
        if draw == "lpld":
            nb = a.steps(0)
            if steps_per_epoch is not None and int_arg("steps_per_epoch", steps_per_epoch, 1) != nb:
                raise InvalidInputError(f"draw='lpld' draws the {nb} batches per epoch stored in {self.path}; "
                                        f"steps_per_epoch={steps_per_epoch} differs")
            if nb < 2:
                raise InvalidInputError(f"draw='lpld' needs at least 2 batches per epoch (LPLD replaces a drawn last "
                                        f"batch by the one before it); {self.path} stores {nb}")
            uneven = [e for e in range(a.epochs - 1) if a.steps(e) != nb]
            if uneven or a.steps(a.epochs - 1) > nb:
                raise FormatError(f"{self.path}: LPLD's batch ids (epoch = id // nb) need {nb} stored batches in every "
                                  f"epoch but the last; epoch {(uneven or [a.epochs - 1])[0]} differs")
            steps_per_epoch = nb
            if prune_ratio is not None:
                from ..codecs.lpld import lpld_pool_batches

                self.pool = lpld_pool_batches(max(self.epochs, 1) * nb, prune_ratio)
                if self.pool > stored:
                    raise InvalidInputError(f"prune_ratio {prune_ratio} over {self.epochs} epochs x {nb} batches makes a "
                                            f"pool of {self.pool} batches; {self.path} stores {stored}")
        elif prune_ratio is not None:
            raise InvalidInputError("prune_ratio is LPLD's pool rule: use it with draw='lpld'")
        elif steps_per_epoch is None:
            raise InvalidInputError("draw='uniform' needs steps_per_epoch")
        self.steps_per_epoch = int_arg("steps_per_epoch", steps_per_epoch, 1)
        self.start_epoch = int_arg("start_epoch", start_epoch, 0, self.epochs)
        self.start_step = int_arg("start_step", start_step, 0, self.steps_per_epoch if self.start_epoch < self.epochs else 0)
        self._stream: np.ndarray | None = None

    def draws(self, epoch: int) -> np.ndarray:
        """Stored batch ids (global, in stored order) of training epoch ``epoch``'s steps."""
        epoch = int_arg("epoch", epoch, 0)
        if self.draw == "uniform":
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            return torch.randint(self.pool, (self.steps_per_epoch,), generator=g).numpy()
        nb = self.steps_per_epoch
        need = (epoch + 1) * nb
        if self._stream is None or len(self._stream) < need:  # one seeded stream, epochs in order
            n = max(need, self.epochs * nb)
            g = torch.Generator().manual_seed(self.seed)
            # one (n,) call draws what n calls of size (1,) draw (CPU random is generated serially)
            self._stream = torch.randint(0, self.pool, (n,), generator=g).numpy()
        ids = self._stream[epoch * nb:need].copy()
        last = (ids + 1) % nb == 0  # LPLD's "drop last batch": an epoch's last batch is replaced by the one before
        ids[last] -= 1
        return ids

    def batch(self, epoch: int, step: int) -> list[int]:
        a = self.archive
        int_arg("step", step, 0, self.steps_per_epoch - 1)
        gid = int(self.draws(epoch)[step])
        return list(range(int(a.batch_rows[gid]), int(a.batch_rows[gid + 1])))

    def __iter__(self):
        for e in range(self.start_epoch, self.epochs):
            d = self.draws(e)
            a = self.archive
            for s in range(self.start_step if e == self.start_epoch else 0, self.steps_per_epoch):
                yield list(range(int(a.batch_rows[d[s]]), int(a.batch_rows[d[s] + 1])))

    def __len__(self):
        return max(0, (self.epochs - self.start_epoch) * self.steps_per_epoch - (self.start_step if self.start_epoch < self.epochs else 0))

    def __getstate__(self):
        st = _Lazy.__getstate__(self)
        st["_stream"] = None
        return st


class ReplayDataset(_Lazy, torch.utils.data.Dataset):
    """Map-style dataset over label rows: item ``row`` -> (input view, row).

    ``images``: a tensor (N, C, H, W) indexed by sample id, or a callable ``sample_id ->
    image``.  ``size``/``interpolation`` default to the archive's crop metadata.
    ``transform`` (optional, e.g. normalisation) is applied to each view before the batch mix,
    as SRe2L normalises in its dataset and mixes the normalised batch.

    ``crop="tensor"`` (default): :func:`apply_crop_flip` on (C, H, W) tensors (any device;
    differs from PIL's resampling by up to about 1/255).  ``crop="pil"``:
    :func:`apply_crop_flip_pil`, the pixels SRe2L / LPLD compute from uint8 images (PIL images,
    uint8 tensors or arrays); with the same ``transform`` (torchvision's ``Normalize``) the
    replayed batch equals the producer's, CutMix and Mixup included.
    """

    def __init__(self, path, images: Any, *, size: int | None = None, interpolation: str | None = None,
                 transform: Callable | None = None, crop: str = "tensor"):
        _Lazy.__init__(self, path)
        if crop not in CROP_BACKENDS:
            raise InvalidInputError(f"crop must be one of {CROP_BACKENDS}, got {crop!r}")
        self.crop = crop
        a = self.archive
        if not a.has_sample_ids:
            raise InvalidInputError(f"{self.path} stores no sample ids; cannot rebuild views")
        meta = a.aug_meta.get("crop", {})
        if not isinstance(meta, dict):
            raise FormatError(f"{self.path}: metadata {AUG_META}.crop must be an object, got {type(meta).__name__}")
        self.size = int_arg("size", size, 1, MAX_VIEW_SIZE) if size is not None else file_view_size(meta, self.path)
        if interpolation is None:
            interpolation = meta.get("interpolation", "bilinear")
            if interpolation not in INTERPOLATIONS:
                raise FormatError(f"{self.path}: metadata {AUG_META}.crop.interpolation must be one of {INTERPOLATIONS}, "
                                  f"got {interpolation!r}")
        if interpolation not in (INTERPOLATIONS if crop == "tensor" else PIL_INTERPOLATIONS):
            raise InvalidInputError(f"interpolation must be one of {INTERPOLATIONS if crop == 'tensor' else PIL_INTERPOLATIONS} "
                                    f"with crop={crop!r}, got {interpolation!r}")
        self.interpolation = interpolation
        self.images, self.transform = images, transform
        if isinstance(images, torch.Tensor):
            if crop == "pil" and images.dtype != torch.uint8:
                raise InvalidInputError(f"crop='pil' needs uint8 images (what PIL crops), got {images.dtype}")
            if images.ndim != 4:
                raise InvalidInputError(f"images must be an (N, C, H, W) tensor, got shape {tuple(images.shape)}")
            sid = a._rowdata("sample")
            if sid.size and int(sid.max()) >= images.shape[0]:
                raise InvalidInputError(f"{self.path} refers to sample {int(sid.max())} but images holds {images.shape[0]}")
        elif not callable(images):
            raise InvalidInputError(f"images must be an (N, C, H, W) tensor or a callable, got {type(images).__name__}")
        self.rows = a.rows

    def _image(self, sid: int) -> torch.Tensor:
        return self.images(sid) if callable(self.images) else self.images[sid]

    def _build(self, v: dict) -> torch.Tensor:
        crop = apply_crop_flip if self.crop == "tensor" else apply_crop_flip_pil
        x = crop(self._image(v["sample"]), v["coords"], v["flip"], self.size, self.interpolation)
        return self.transform(x) if self.transform is not None else x

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, row: int):
        p = self.archive.view_params(int(row))
        x = self._build(p["view"])
        if p["mix_type"] != "none":
            x = mix_pair(x, self._build(p["partner"]), p["mix_type"], p.get("lam"), p.get("bbox"))
        return x, int(row)


class ReplayCollate(_Lazy):
    """collate_fn: stacks the views and decodes the rows' soft labels -> (inputs, labels)."""

    def __init__(self, path, *, device: Any = None, dtype: torch.dtype = torch.float32):
        _Lazy.__init__(self, path)
        self.device, self.dtype = device, dtype

    def __call__(self, items: Sequence):
        xs, rows = zip(*items)
        labels = self.archive.rows_at(np.asarray(rows, np.int64), device=self.device, dtype=self.dtype)
        return torch.stack(xs), labels


def replay_loader(path, images: Any, *, batch_size: int | None = None, start_epoch: int = 0, start_step: int = 0,
                  epochs: int | None = None, num_workers: int = 0, transform: Callable | None = None,
                  size: int | None = None, crop: str = "tensor", **loader_kw) -> torch.utils.data.DataLoader:
    """A DataLoader yielding (inputs, soft labels) for each (epoch, step), resumable
    (``crop``: see :class:`ReplayDataset`)."""
    sampler = ReplayBatchSampler(path, batch_size, start_epoch=start_epoch, start_step=start_step, epochs=epochs)
    ds = ReplayDataset(path, images, transform=transform, size=size, crop=crop)
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=ReplayCollate(path),
                                       num_workers=num_workers, **loader_kw)
