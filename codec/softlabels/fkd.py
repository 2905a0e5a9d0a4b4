"""FKD's per-image soft labels (szq0214/FKD ``FKD_SLG/generate_soft_label.py``): import and replay.

FKD's generator writes one ``.tar`` per training image, at ``<split>/<class>/<stem>.tar``
(the image's path with its extension dropped), holding ``[coords, flip, labels]`` as numpy
arrays, read here only through :func:`codec._torchfile.read_torch_file` (numeric numpy
arrays and nothing else):

* ``coords`` ``[crops, 4]``: RandomResizedCrop boxes ``(i/H, j/W, h/H, w/W)``, float32 (or
  float16 with ``--use_fp16``);
* ``flip`` ``[crops]``: bool;
* ``labels``: ``softmax(teacher / temp)`` quantised by ``--label_type``: ``hard``
  ``[crops]`` (argmax), ``smoothing`` ``[crops, 2]`` (top-1 index, its value),
  ``marginal_smoothing_k5`` / ``marginal_smoothing_k10`` / ``marginal_renorm_k5``
  ``[crops, 2, k]`` (top-k indices stored as floats, then their values).

:func:`import_fkd_labels` turns such a tree into one .ddz:

* every crop's soft label is one row of a soft-label object (top-k, VQ or any fitted codec),
  recovered first as FKD's ``Recover_soft_label`` does: the k values at their classes and the
  rest of the mass, ``1 - sum(values)``, spread evenly over the other classes
  (``marginal_smoothing``, ``smoothing``; "marginal smoothing"), or dropped and the values
  renormalised (``marginal_renorm``); ``hard`` is one-hot;
* the crop pool is stored as augmentation records (:mod:`codec.softlabels.augment`): one
  stored "batch" per image in epoch 0, so image ``i``'s crops are the rows of batch
  ``(0, i)`` in the file's order;
* sections ``fkd/keys`` (the images' keys, ``<split>/<class>/<stem>``, UTF-8, one per line)
  and ``fkd/targets`` (the ImageFolder class index of each image: sorted class folders).

:class:`FKDCropDataset` replays it as FKD's ``ImageFolder_FKD`` does: each time an image is
drawn it picks ``num_crops`` crops of its pool without replacement (``torch.randperm``; FKD's
is unseeded, here it is seeded by ``(seed, epoch, image)`` so a run can be repeated and
resumed), builds each view from its stored box and flip, and :class:`FKDCollate` lays a batch
out as FKD's training loop does after ``torch.cat``: crop-major (crop 0 of every image, then
crop 1, ...), with the class targets and the decoded soft labels in the same order.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .._args import int_arg
from .._files import open_regular
from .._torchfile import read_torch_file
from ..codecs.base import Part
from ..codecs.topk import TopKCodec
from ..codecs.softlabel import SoftLabelCodec, index_bits
from ..errors import FormatError, InvalidInputError
from .augment import BatchRecord, fit_codec, write_replay_archive
from .replay import (CROP_BACKENDS, INTERPOLATIONS, MAX_VIEW_SIZE, PIL_INTERPOLATIONS, ReplayArchive, _Lazy, file_view_size,
                     apply_crop_flip, apply_crop_flip_pil)

__all__ = ["LABEL_TYPES", "scan_fkd_label_tree", "read_fkd_label_file", "fkd_probs", "import_fkd_labels",
           "FKDCropDataset", "FKDCollate", "fkd_loader", "FKD_META"]

FKD_META = "fkd"
#: ``--label_type`` values of FKD's generator, by how the rest of the mass is treated.
LABEL_TYPES = {"hard": ("hard", 1), "smoothing": ("uniform", 1), "marginal_smoothing_k5": ("uniform", 5),
               "marginal_smoothing_k10": ("uniform", 10), "marginal_renorm_k5": ("renorm", 5),
               "marginal_smoothing": ("uniform", None), "marginal_renorm": ("renorm", None)}
#: torchvision ImageFolder's image extensions (FKD's training set is an ImageFolder).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_MAX_FP16_INT = 2048  # float16 holds every integer up to 2048 exactly, not beyond


def scan_fkd_label_tree(src: str | os.PathLike) -> list[tuple[str, str]]:
    """``[(key, path)]`` for every ``*.tar`` below ``src`` (key: relative path without
    ``.tar``, ``/``-separated), in ImageFolder order (sorted folder, then sorted name).
    Directory symlinks are not followed; a ``.tar`` that is not a regular file is refused
    when it is read."""
    src = os.fspath(src)
    if not os.path.isdir(src):
        raise InvalidInputError(f"{src!r} is not a directory")
    out = []
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(src, rel)))
        except OSError as exc:
            raise FormatError(f"{os.path.join(src, rel)}: cannot list: {exc.strerror or exc}") from None
        for ent in entries:
            r = f"{rel}/{ent.name}" if rel else ent.name
            if ent.is_dir(follow_symlinks=False):
                stack.append(r)
            elif ent.name.endswith(".tar"):
                out.append((r[: -len(".tar")], ent.path))
    if not out:
        raise FormatError(f"{src}: no <class>/<image>.tar label files")
    out.sort(key=lambda kp: (os.path.dirname(kp[0]), os.path.basename(kp[0])))
    return out


def _label_kind(label_type: str) -> tuple[str, int | None]:
    if label_type not in LABEL_TYPES:
        raise InvalidInputError(f"label_type must be one of {sorted(LABEL_TYPES)} (FKD's --label_type), got {label_type!r}")
    return LABEL_TYPES[label_type]


def _indices(a: np.ndarray, classes: int, where: str) -> np.ndarray:
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise FormatError(f"{where}: class indices must be numbers, got dtype {a.dtype}")
    if a.dtype == np.float16 and classes > _MAX_FP16_INT:
        raise FormatError(f"{where}: class indices stored as float16 (FKD's --use_fp16) are exact only up to "
                          f"{_MAX_FP16_INT}; with {classes} classes they cannot be trusted")
    f = a.astype(np.float64)
    if not np.isfinite(f).all() or (f != np.round(f)).any() or (f.size and (f.min() < 0 or f.max() >= classes)):
        raise FormatError(f"{where}: class indices must be integers in [0, {classes})")
    return f.astype(np.int64)


def fkd_probs(labels: Any, classes: int, label_type: str, where: str = "labels") -> torch.Tensor:
    """FKD's stored labels ``[crops, ...]`` -> probabilities ``(crops, classes)`` float32, as
    FKD's ``Recover_soft_label`` recovers them (see the module docstring)."""
    rest_rule, k_named = _label_kind(label_type)
    a = np.asarray(labels)
    n = a.shape[0] if a.ndim else 0
    if rest_rule == "hard":
        if a.ndim != 1:
            raise FormatError(f"{where}: label_type 'hard' stores [crops] class indices, got shape {a.shape}")
        idx, val = _indices(a, classes, where)[:, None], np.ones((n, 1), np.float32)
    elif k_named == 1:
        if a.ndim != 2 or a.shape[1] != 2:
            raise FormatError(f"{where}: label_type {label_type!r} stores [crops, 2] (index, value), got shape {a.shape}")
        idx, val = _indices(a[:, :1], classes, where), a[:, 1:].astype(np.float32)
    else:
        if a.ndim != 3 or a.shape[1] != 2 or (k_named is not None and a.shape[2] != k_named):
            raise FormatError(f"{where}: label_type {label_type!r} stores [crops, 2, {k_named or 'k'}] "
                              f"(indices, values), got shape {a.shape}")
        idx, val = _indices(a[:, 0, :], classes, where), a[:, 1, :].astype(np.float32)
    k = idx.shape[1]
    if k > classes:
        raise FormatError(f"{where}: {k} top classes of {classes}")
    if not (np.isfinite(val).all() and (val >= 0).all() and (val <= 1).all()):
        raise FormatError(f"{where}: label values must be probabilities in [0, 1]")
    if k > 1 and (np.diff(np.sort(idx, 1), axis=1) == 0).any():
        raise FormatError(f"{where}: a crop lists the same class twice")
    ti, tv = torch.from_numpy(idx), torch.from_numpy(np.ascontiguousarray(val))
    out = torch.zeros((n, classes), dtype=torch.float32)
    if rest_rule == "uniform" and classes > k:
        out += ((1 - tv.sum(1)).clamp_min(0) / (classes - k)).unsqueeze(1)
    out.scatter_(1, ti, tv)
    if rest_rule == "renorm":
        s = out.sum(1, keepdim=True)
        if (s <= 0).any():
            raise FormatError(f"{where}: a crop's top-k values sum to 0; they cannot be renormalised")
        out /= s
    return out


def read_fkd_label_file(path: str, classes: int, label_type: str) -> tuple[np.ndarray, np.ndarray, torch.Tensor, int]:
    """One FKD label file -> ``(coords float32 [crops, 4], flip bool [crops], probabilities
    [crops, classes], k)`` (k: classes stored per crop)."""
    obj = read_torch_file(path, numpy=True)
    if not isinstance(obj, (list, tuple)) or len(obj) != 3:
        raise FormatError(f"{path}: expected FKD's [coords, flip, labels], got {type(obj).__name__}"
                          + (f" of length {len(obj)}" if isinstance(obj, (list, tuple)) else ""))
    coords, flip, labels = (np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x) for x in obj)
    if coords.ndim != 2 or coords.shape[1] != 4 or not np.issubdtype(coords.dtype, np.floating) or coords.shape[0] < 1:
        raise FormatError(f"{path}: coords must be a non-empty float [crops, 4] array, got {coords.dtype} {coords.shape}")
    n = coords.shape[0]
    if flip.shape != (n,) or not (flip.dtype == np.bool_ or np.issubdtype(flip.dtype, np.integer)):
        raise FormatError(f"{path}: flip must be {n} bools, got {flip.dtype} {flip.shape}")
    if labels.ndim == 0 or labels.shape[0] != n:
        raise FormatError(f"{path}: labels must have one entry per crop ({n}), got shape {labels.shape}")
    k = 1 if labels.ndim < 3 else int(labels.shape[2])
    return coords.astype(np.float32), flip.astype(bool), fkd_probs(labels, classes, label_type, path), k


def import_fkd_labels(src: str | os.PathLike, dst: str | os.PathLike, codec: SoftLabelCodec | Mapping[str, Any] | str,
                      *, classes: int, label_type: str = "marginal_smoothing_k5", size: int = 224,
                      interpolation: str = "bilinear", train: Mapping[str, Any] | None = None,
                      progress: bool = False) -> str:
    """Import an FKD label tree (one ``.tar`` per image) into one .ddz; see the module docstring.

    ``codec``: ``"topk"`` (a :class:`~codec.codecs.topk.TopKCodec` with FKD's own k and rest
    rule: the stored top-k kept as they are, fp16), a VQ config dict ``{"id": "vq", "dh":...,
    "dc":..., "k":...}`` (trained on the recovered probabilities first; ``train``: extra
    :func:`~codec.softlabels.train.train_vq` arguments), or any fitted soft-label codec for
    probabilities.  ``classes``: the teacher's class count (FKD's files do not say it).
    ``size``/``interpolation``: the training view (FKD: 224, bilinear).
    """
    src = os.fspath(src)
    classes = int_arg("classes", classes, 2)
    rest_rule, _ = _label_kind(label_type)
    files = scan_fkd_label_tree(src)
    keys = [k for k, _ in files]
    folders = sorted({os.path.dirname(k) for k in keys})
    folder_id = {d: i for i, d in enumerate(folders)}
    targets = np.asarray([folder_id[os.path.dirname(k)] for k in keys], np.uint32)
    k = int(read_fkd_label_file(files[0][1], classes, label_type)[3])

    def probs():
        for _, p in files:
            yield read_fkd_label_file(p, classes, label_type)[2]

    from .sources import IterSource

    if isinstance(codec, str):
        if codec != "topk":
            raise InvalidInputError(f"codec must be 'topk', a VQ config dict or a fitted codec, got {codec!r}")
        codec = TopKCodec(classes, k, missing="uniform" if rest_rule == "uniform" else "renorm")
    codec = fit_codec(codec, IterSource(probs, classes=classes), input="probs", temperature=1.0, train=train,
                      progress=progress, who="import_fkd_labels")
    if codec.classes != classes:
        raise InvalidInputError(f"classes={classes} but the codec expects {codec.classes}")

    def records():
        for i, (_, p) in enumerate(files):
            coords, flip, y, _ = read_fkd_label_file(p, classes, label_type)
            yield BatchRecord(0, i, y, coords, flip, np.full(len(coords), i, np.int64))

    blob = "\n".join(keys).encode("utf-8")
    meta = {"source": {"kind": "fkd_labels", "files": len(files), "label_type": label_type},
            FKD_META: {"version": 1, "label_type": label_type, "k": k, "images": len(keys), "class_folders": folders,
                       "keys": "fkd/keys", "targets": "fkd/targets",
                       "layout": "image i's crop pool = the rows of stored batch (0, i)"}}
    sections = {"fkd/keys": Part(np.frombuffer(blob, np.uint8).copy()),
                "fkd/targets": Part(targets, bits=index_bits(max(len(folders), 2)))}
    return write_replay_archive(dst, codec, records, classes=classes, num_samples=len(keys),
                                crop={"size": size, "interpolation": interpolation, "coords": "(i/H, j/W, h/H, w/W)",
                                      "source": "FKD RandomResizedCrop_FKD + RandomHorizontalFlip_FKD"},
                                metadata=meta, sections=sections, progress=progress)


# --------------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------------
def _fkd_index(arch: ReplayArchive) -> tuple[list[str], np.ndarray]:
    """(keys, targets) of an FKD archive, validated against its records."""
    f = arch._f()
    meta = f.metadata.get(FKD_META)
    if not isinstance(meta, dict):
        raise FormatError(f"{arch.path}: not an FKD label archive (no metadata {FKD_META!r})")
    try:
        keys = bytes(np.asarray(f.get("fkd/keys"), np.uint8)).decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise FormatError(f"{arch.path}: fkd/keys is not UTF-8", section="fkd/keys") from None
    for key in keys:  # relative paths below an image root, nothing that could leave it
        parts = key.split("/")
        if not key or key.startswith("/") or "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts):
            raise FormatError(f"{arch.path}: image key {key[:80]!r} is not a relative path below the image root",
                              section="fkd/keys")
    targets = np.asarray(f.get("fkd/targets")).astype(np.int64)
    n = len(arch.batch_rows) - 1
    if arch.epochs != 1 or len(keys) != n or targets.shape != (n,):
        raise FormatError(f"{arch.path}: {len(keys)} keys and {targets.shape} targets for {n} images in {arch.epochs} epoch(s)")
    return keys, targets


class _ImageFiles:
    """``image id -> PIL image`` for an ImageFolder root: the file whose FKD key
    (``<dir>/<name up to its first '.'>``) is the stored key, read as torchvision's
    ``pil_loader`` does (``convert("RGB")``)."""

    def __init__(self, root: str | os.PathLike, keys: Sequence[str]):
        self.root, self.keys = os.fspath(root), list(keys)
        if not os.path.isdir(self.root):
            raise InvalidInputError(f"image root {self.root!r} is not a directory")
        self._dirs: dict[str, dict[str, str]] = {}

    def _listing(self, d: str) -> dict[str, str]:
        got = self._dirs.get(d)
        if got is None:
            full = os.path.join(self.root, d)
            try:
                names = sorted(os.listdir(full))
            except OSError as exc:
                raise InvalidInputError(f"{full}: cannot list images: {exc.strerror or exc}") from None
            got = {}
            for nm in names:
                if nm.lower().endswith(IMG_EXTENSIONS):
                    stem = nm.split(".")[0]
                    if stem in got:
                        raise InvalidInputError(f"{full}: images {got[stem]!r} and {nm!r} have the same FKD key {stem!r}")
                    got[stem] = nm
            self._dirs[d] = got
        return got

    def path(self, i: int) -> str:
        key = self.keys[i]
        d, stem = os.path.dirname(key), os.path.basename(key)
        nm = self._listing(d).get(stem)
        if nm is None:
            raise InvalidInputError(f"no image for label {key!r} under {self.root!r}")
        return os.path.join(self.root, d, nm)

    def __call__(self, i: int):
        from PIL import Image

        p = self.path(i)
        with open_regular(p, "image") as fh:
            try:
                return Image.open(fh).convert("RGB")
            except (OSError, ValueError) as exc:
                raise InvalidInputError(f"{p}: not a readable image ({exc})") from None


def _seed(*parts: int) -> int:
    """One 64-bit generator seed from non-negative integers (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0])


class FKDCropDataset(_Lazy, torch.utils.data.Dataset):
    """FKD's ``ImageFolder_FKD`` over an imported archive: item ``i`` -> ``(views [num_crops,
    C, size, size], target, rows [num_crops])``.

    ``images``: an ImageFolder root (the folder the keys are relative to, e.g. the ImageNet
    root holding ``train/``), or a callable ``image id -> image`` (a PIL image or uint8 array /
    tensor for ``crop="pil"``, a float (C, H, W) tensor for ``crop="tensor"``).  ``crop="pil"``
    (the default here: FKD's views are PIL crops of image files) is pixel-exact with FKD's
    ``RandomResizedCrop_FKD`` + ``RandomHorizontalFlip_FKD`` + ``ToTensor``; ``transform`` (e.g.
    ``Normalize``) is applied to each view.  Crops: ``num_crops`` of the image's pool without
    replacement, ``torch.randperm`` seeded by ``(seed, epoch, i)``; call :meth:`set_epoch`
    before each epoch (``persistent_workers=False``), or use :func:`fkd_loader`.
    """

    def __init__(self, path, images: Any, *, num_crops: int = 4, seed: int = 0, epoch: int = 0,
                 size: int | None = None, interpolation: str | None = None, crop: str = "pil",
                 transform: Callable | None = None):
        _Lazy.__init__(self, path)
        a = self.archive
        keys, self.targets = _fkd_index(a)
        if crop not in CROP_BACKENDS:
            raise InvalidInputError(f"crop must be one of {CROP_BACKENDS}, got {crop!r}")
        aug = a.aug_meta if isinstance(a.aug_meta, dict) else {}
        meta = aug["crop"] if isinstance(aug.get("crop"), dict) else {}
        self.size = int_arg("size", size, 1, MAX_VIEW_SIZE) if size is not None else file_view_size(meta, self.path)
        interpolation = interpolation if interpolation is not None else meta.get("interpolation", "bilinear")
        allowed = INTERPOLATIONS if crop == "tensor" else PIL_INTERPOLATIONS
        if interpolation not in allowed:
            raise InvalidInputError(f"interpolation must be one of {allowed} with crop={crop!r}, got {interpolation!r}")
        self.crop, self.interpolation, self.transform = crop, interpolation, transform
        self.num_crops = int_arg("num_crops", num_crops, 1)
        smallest = int(np.diff(a.batch_rows).min())
        if self.num_crops > smallest:
            raise InvalidInputError(f"num_crops={num_crops} but an image of {self.path} has only {smallest} stored crops")
        self.seed = int_arg("seed", seed, 0)
        self.epoch = int_arg("epoch", epoch, 0)
        if isinstance(images, (str, os.PathLike)):
            images = _ImageFiles(images, keys)
        elif not callable(images):
            raise InvalidInputError(f"images must be an image root folder or a callable, got {type(images).__name__}")
        self.images = images
        self.n = len(keys)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int_arg("epoch", epoch, 0)

    def __len__(self) -> int:
        return self.n

    def crops(self, index: int, epoch: int | None = None) -> np.ndarray:
        """Label rows of the crops image ``index`` uses in ``epoch`` (default: the current one)."""
        index = int_arg("index", index, 0, self.n - 1)
        e = self.epoch if epoch is None else int_arg("epoch", epoch, 0)
        s, t = self.archive.rows_of(0, index)
        g = torch.Generator().manual_seed(_seed(self.seed, e, index))
        return s + torch.randperm(t - s, generator=g)[: self.num_crops].numpy()

    def __getitem__(self, index: int):
        rows = self.crops(index)
        a = self.archive
        img = self.images(int(index))
        cut = apply_crop_flip if self.crop == "tensor" else apply_crop_flip_pil
        views = []
        for r in rows:
            v = cut(img, a._rowdata("crop")[r], bool(a._rowdata("flip")[r]), self.size, self.interpolation)
            views.append(self.transform(v) if self.transform is not None else v)
        return torch.stack(views), int(self.targets[index]), torch.from_numpy(rows.astype(np.int64))


class FKDCollate(_Lazy):
    """collate_fn: a batch of images' crops laid out crop-major as FKD's loop does after
    ``torch.cat`` -> ``(images [num_crops * B, C, S, S], targets [num_crops * B], soft labels
    [num_crops * B, classes])``."""

    def __init__(self, path, *, device: Any = None, dtype: torch.dtype = torch.float32):
        _Lazy.__init__(self, path)
        self.device, self.dtype = device, dtype

    def __call__(self, items: Sequence):
        views, targets, rows = zip(*items)
        x = torch.stack(views, 1)  # [num_crops, B, C, S, S]
        rows_cm = torch.stack(rows, 1).reshape(-1)
        t = torch.tensor(targets, dtype=torch.int64).repeat(x.shape[0])
        labels = self.archive.rows_at(rows_cm.numpy(), device=self.device, dtype=self.dtype)
        return x.reshape(-1, *x.shape[2:]), t, labels


def fkd_loader(path, images: Any, *, batch_size: int, num_crops: int = 4, seed: int = 0, epoch: int = 0,
               shuffle: bool = True, num_workers: int = 0, **kw) -> torch.utils.data.DataLoader:
    """A DataLoader for one epoch of FKD training: images in a seeded random order (``seed``,
    ``epoch``), each with ``num_crops`` crops (see :class:`FKDCropDataset`; ``kw``: its
    ``size``, ``interpolation``, ``crop``, ``transform``, else DataLoader arguments)."""
    ds_kw = {k: kw.pop(k) for k in ("size", "interpolation", "crop", "transform") if k in kw}
    ds = FKDCropDataset(path, images, num_crops=num_crops, seed=seed, epoch=epoch, **ds_kw)
    sampler = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(_seed(seed, epoch))) if shuffle else None
    return torch.utils.data.DataLoader(ds, batch_size=int_arg("batch_size", batch_size, 1), sampler=sampler,
                                       collate_fn=FKDCollate(path), num_workers=num_workers, **kw)
