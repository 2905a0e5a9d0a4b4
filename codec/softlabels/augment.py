"""Augmentation records: the exact view each soft label was computed on.

In SRe2L / CDA / LPLD every soft label belongs to one augmented view of one distilled sample,
indexed by (epoch, step): per sample a RandomResizedCrop box and a flip flag, per batch a mix
type (none / CutMix / Mixup), a permutation index, a lambda and a bbox.  They are stored next
to the labels, row-aligned (label row r <-> record row r; rows in (epoch, step, position)
order), with an explicit (epoch, step) -> rows -> sample ids index:

==========================  ======================  ===================================================
section                     shape / dtype           meaning
==========================  ======================  ===================================================
``aug/epoch_batches``       (E+1,) u64              batches of epoch e are ``[eb[e], eb[e+1])`` (cumulative)
``aug/batch_rows``          (nb+1,) u64             rows of global batch g are ``[br[g], br[g+1])``
``aug/sample``              (n,) u32, bit-packed    distilled-sample id of each row, ceil(log2 N) bits
``aug/crop``                (n, 4) f32              RandomResizedCrop ``(i/H, j/W, h/H, w/W)``
``aug/flip``                (n,) u8, 1 bit          horizontal flip
``aug/mix_index``           (n,) u32, bit-packed    partner position within the batch (the ``randperm``)
``aug/mix_type``            (nb,) u8                0 none, 1 cutmix, 2 mixup
``aug/mix_lam``             (nb,) f64               lambda (NaN when none), the producer's Python float exactly
                                                    (files written before this change hold f32)
``aug/mix_bbox``            (nb, 4) i32             ``[bbx1, bby1, bbx2, bby2]`` (-1 when none)
==========================  ======================  ===================================================

CutMix follows SRe2L's ``images[:, :, bbx1:bbx2, bby1:bby2] = images[perm, :, bbx1:bbx2, bby1:bby2]``
(bbx indexes height, bby width); Mixup is ``lam * x + (1 - lam) * x[perm]``.

:func:`import_fkd_dir` imports a directory of ``epoch_{e}/batch_{b}.tar`` files holding
``[coords, flip, mix_index, mix_lam, mix_bbox, output]`` (read only with
``torch.load(weights_only=True)``) into one .ddz: labels through any soft-label codec, plus
these records.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from .._files import is_regular, open_regular
from .._torchfile import read_torch_file
from ..codecs.base import Part
from ..codecs.softlabel import SoftLabelCodec, index_bits
from ..codecs.vq import VQCodec
from ..errors import FormatError, InvalidInputError
from ..format import Writer

AUG_META = "augment"
MIX_TYPES = ("none", "cutmix", "mixup")


@dataclass
class BatchRecord:
    """One stored batch: its (epoch, step), per-row view parameters and the labels."""

    epoch: int
    step: int
    labels: Any  # (B, C) logits or probabilities
    coords: Any  # (B, 4) float
    flip: Any  # (B,) bool
    sample_ids: Any = None  # (B,) int, or None if unknown
    mix_type: str = "none"
    mix_index: Any = None  # (B,) int permutation, or None
    mix_lam: float | None = None
    mix_bbox: Any = None  # 4 ints or None


def _np(a, dtype, name, where):
    try:
        arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        return arr.astype(dtype, copy=False)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{where}: field {name!r} is not numeric: {exc}") from None


def _scalar(v, name, where) -> float:
    """One finite number from a float, a 0-d/1-element tensor or array (else FormatError)."""
    if isinstance(v, bool):
        raise FormatError(f"{where}: field {name!r} must be a number, got {v!r}")
    if isinstance(v, (torch.Tensor, np.ndarray)):
        if v.numel() if isinstance(v, torch.Tensor) else v.size != 1:
            raise FormatError(f"{where}: field {name!r} must be one number, got shape {tuple(v.shape)}")
        v = v.reshape(-1)[0].item()
    if not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(float(v)):
        raise FormatError(f"{where}: field {name!r} must be a finite number, got {v!r}"[:200])
    return float(v)


class AugmentRecorder:
    """Collects per-batch records (in memory: ~25 B per row) and writes the ``aug/`` sections."""

    def __init__(self, num_samples: int | None = None):
        self.num_samples = num_samples
        self._rows = [0]
        self._epoch_batches: list[int] = []  # epoch of each batch
        self._steps: list[int] = []
        self.sample: list[np.ndarray] = []
        self.crop: list[np.ndarray] = []
        self.flip: list[np.ndarray] = []
        self.mix_index: list[np.ndarray] = []
        self.mix_type: list[int] = []
        self.mix_lam: list[float] = []
        self.mix_bbox: list[list[int]] = []
        self.has_samples: bool | None = None

    def add(self, rec: BatchRecord, where: str = "batch") -> None:
        B = None
        coords = _np(rec.coords, np.float32, "coords", where)
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise FormatError(f"{where}: coords must be (B, 4), got {coords.shape}")
        B = coords.shape[0]
        if not (np.isfinite(coords).all() and (coords >= 0).all() and (coords <= 1).all()):
            raise FormatError(f"{where}: field 'coords' must hold finite (i/H, j/W, h/H, w/W) values in [0, 1]")
        flip_a = rec.flip.detach().cpu().numpy() if isinstance(rec.flip, torch.Tensor) else np.asarray(rec.flip)
        if not (flip_a.dtype == np.bool_ or np.issubdtype(flip_a.dtype, np.integer)) or (flip_a.size and (flip_a.min() < 0 or flip_a.max() > 1)):
            raise FormatError(f"{where}: field 'flip' must hold bools (or 0/1 integers), got dtype {flip_a.dtype}")
        flip = flip_a.astype(np.uint8).reshape(-1)
        if flip.shape != (B,):
            raise FormatError(f"{where}: flip must have {B} entries, got {flip.shape}")
        if self._epoch_batches and (rec.epoch, rec.step) <= (self._epoch_batches[-1], self._steps[-1]):
            raise InvalidInputError(f"{where}: batches must come in increasing (epoch, step) order")
        if self._epoch_batches and rec.epoch == self._epoch_batches[-1] and rec.step != self._steps[-1] + 1:
            raise InvalidInputError(f"{where}: steps of epoch {rec.epoch} must be consecutive from 0")
        if (not self._epoch_batches or rec.epoch != self._epoch_batches[-1]) and rec.step != 0:
            raise InvalidInputError(f"{where}: epoch {rec.epoch} must start at step 0")
        has = rec.sample_ids is not None
        if self.has_samples is None:
            self.has_samples = has
        elif self.has_samples != has:
            raise InvalidInputError(f"{where}: sample ids given for some batches but not others")
        if has:
            s = _np(rec.sample_ids, np.int64, "sample_ids", where).reshape(-1)
            if s.shape != (B,) or (B and s.min() < 0):
                raise FormatError(f"{where}: sample ids must be {B} non-negative integers")
            self.sample.append(s)
        mt = rec.mix_type or "none"
        if mt not in MIX_TYPES:
            raise FormatError(f"{where}: mix type must be one of {MIX_TYPES}, got {mt!r}")
        if mt == "none":
            mi = np.arange(B, dtype=np.int64)
            lam, bbox = float("nan"), [-1, -1, -1, -1]
        else:
            mi_a = rec.mix_index.detach().cpu().numpy() if isinstance(rec.mix_index, torch.Tensor) else np.asarray(rec.mix_index)
            if not np.issubdtype(mi_a.dtype, np.integer):
                raise FormatError(f"{where}: field 'mix_index' must hold integers, got dtype {mi_a.dtype}")
            mi = mi_a.astype(np.int64).reshape(-1)
            if mi.shape != (B,) or (B and (mi.min() < 0 or mi.max() >= B)):
                raise FormatError(f"{where}: mix_index must be {B} positions in [0, {B})")
            if rec.mix_lam is None:
                raise FormatError(f"{where}: {mt} needs a lambda")
            lam = _scalar(rec.mix_lam, "mix_lam", where)
            if not 0 <= lam <= 1:
                raise FormatError(f"{where}: field 'mix_lam' must be a finite number in [0, 1], got {lam}")
            if mt == "cutmix":
                if rec.mix_bbox is None:
                    raise FormatError(f"{where}: cutmix needs a bbox")
                bb = rec.mix_bbox.detach().cpu().numpy() if isinstance(rec.mix_bbox, torch.Tensor) else rec.mix_bbox
                try:
                    bb = np.asarray(bb)
                    ok = bb.ndim == 1 and bb.shape[0] == 4 and (np.issubdtype(bb.dtype, np.integer)
                                                                 or (np.issubdtype(bb.dtype, np.floating) and np.all(bb == np.round(bb))))
                except (TypeError, ValueError):
                    ok = False
                if not ok:
                    raise FormatError(f"{where}: field 'mix_bbox' must have 4 integers, got {rec.mix_bbox!r}"[:200])
                bbox = [int(v) for v in bb]
                if not (0 <= bbox[0] <= bbox[2] < 2**31 and 0 <= bbox[1] <= bbox[3] < 2**31):
                    raise FormatError(f"{where}: field 'mix_bbox' must be [bbx1, bby1, bbx2, bby2] with 0 <= x1 <= x2, got {bbox}")
            else:
                bbox = [-1, -1, -1, -1]
        self.crop.append(coords)
        self.flip.append(flip)
        self.mix_index.append(mi)
        self.mix_type.append(MIX_TYPES.index(mt))
        self.mix_lam.append(lam)
        self.mix_bbox.append(bbox)
        self._epoch_batches.append(int(rec.epoch))
        self._steps.append(int(rec.step))
        self._rows.append(self._rows[-1] + B)

    @property
    def rows(self) -> int:
        return self._rows[-1]

    def write(self, writer: Writer, *, labels_object: str, crop: Mapping[str, Any] | None = None) -> dict:
        """Write the ``aug/`` sections and the ``augment`` metadata entry."""
        nb = len(self._steps)
        epochs = (self._epoch_batches[-1] + 1) if nb else 0
        counts = np.bincount(np.asarray(self._epoch_batches, np.int64), minlength=epochs) if nb else np.zeros(0, np.int64)
        if nb and (counts == 0).any():
            raise InvalidInputError(f"epochs {np.flatnonzero(counts == 0).tolist()} have no batches")
        epoch_batches = np.concatenate([[0], np.cumsum(counts)]).astype(np.uint64)
        writer.add("aug/epoch_batches", epoch_batches)
        writer.add("aug/batch_rows", np.asarray(self._rows, np.uint64))
        cat = lambda xs, dt, shape=(): np.concatenate(xs).astype(dt) if xs else np.zeros((0, *shape), dt)  # noqa: E731
        n = self.rows
        N = self.num_samples
        if self.has_samples:
            s = cat(self.sample, np.uint32)
            if N is None:
                N = int(s.max()) + 1 if n else 1
            elif n and int(s.max()) >= N:
                raise InvalidInputError(f"sample id {int(s.max())} >= num_samples {N}")
            writer.add("aug/sample", s, bits=index_bits(max(N, 1)))
        writer.add("aug/crop", cat(self.crop, np.float32, (4,)))
        writer.add("aug/flip", cat(self.flip, np.uint8), bits=1)
        maxb = int(np.max(np.diff(self._rows))) if nb else 1
        writer.add("aug/mix_index", cat(self.mix_index, np.uint32), bits=index_bits(max(maxb, 1)))
        writer.add("aug/mix_type", np.asarray(self.mix_type, np.uint8))
        writer.add("aug/mix_lam", np.asarray(self.mix_lam, np.float64))  # SRe2L mixes with the Python float itself
        writer.add("aug/mix_bbox", np.asarray(self.mix_bbox, np.int32).reshape(nb, 4))
        meta = {"version": 1, "labels_object": labels_object, "epochs": epochs, "batches": nb, "rows": n,
                "num_samples": N, "has_sample_ids": bool(self.has_samples),
                "crop": dict(crop or {"size": 224, "scale": [0.08, 1.0], "interpolation": "bilinear",
                                      "coords": "(i/H, j/W, h/H, w/W)"}),
                "mix_types": list(MIX_TYPES),
                "cutmix": "x[:, bbx1:bbx2, bby1:bby2] = x[perm][:, bbx1:bbx2, bby1:bby2] (bbx: height, bby: width)",
                "mixup": "lam * x + (1 - lam) * x[perm]"}
        writer.metadata[AUG_META] = meta
        return meta


def write_replay_archive(path: str | os.PathLike, codec: SoftLabelCodec, batches: Callable[[], Iterable[BatchRecord]],
                         *, classes: int, name: str = "labels", num_samples: int | None = None,
                         crop: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None,
                         sections: Mapping[str, Part] | None = None, progress: bool = False) -> str:
    """Write labels (through ``codec``, streamed) and their augmentation records.

    ``batches`` is a callable returning an iterable of :class:`BatchRecord` in (epoch, step)
    order; it is iterated once.  The codec must already be trained/fitted.  A codec that keeps
    only a prefix of the rows (LPLD's pool, ``max_rows``) keeps the records of the same
    batches; the prefix must end at a batch boundary.  ``sections``: more sections to store
    (name -> :class:`~codec.codecs.base.Part`), e.g. FKD's image keys.
    """
    from .archive import write_softlabels
    from .sources import IterSource

    rec = AugmentRecorder(num_samples)
    limit = codec.max_rows

    def label_batches():
        for i, b in enumerate(batches()):
            if limit is not None and rec.rows >= limit:
                return
            rec.add(b, where=f"batch {i} (epoch {b.epoch}, step {b.step})")
            yield b.labels

    with Writer(path, metadata=dict(metadata or {})) as w:
        write_softlabels(w, name, codec, IterSource(label_batches, classes=classes), progress=progress,
                         extra_meta={"augment": True})
        rows = w.metadata["softlabels"]["rows"]
        if rec.rows != rows:
            raise InvalidInputError(
                f"{codec.codec_id}: keeps {rows} rows, which ends inside a batch ({rec.rows} rows recorded up to that batch's end); "
                "the batch size of the codec and of the records must agree" if limit is not None and rec.rows > rows else
                f"labels ({rows} rows) and records ({rec.rows}) disagree")
        rec.write(w, labels_object=name, crop=crop)
        for sec, part in (sections or {}).items():
            w.add(sec, part.array, bits=part.bits, zstd=part.zstd)
    return os.fspath(path)


# --------------------------------------------------------------------------------------------
# Importer for SRe2L / CDA / LPLD relabel directories
# --------------------------------------------------------------------------------------------
_EPOCH = re.compile(r"^epoch_(\d+)$")
_BATCH = re.compile(r"^batch_(\d+)\.tar$")


def scan_fkd_dir(src: str | os.PathLike) -> list[tuple[int, int, str]]:
    """``[(epoch, step, path)]`` for ``epoch_{e}/batch_{b}.tar`` files, epochs and steps
    consecutive from 0 (a gap raises FormatError)."""
    src = os.fspath(src)
    if not os.path.isdir(src):
        raise InvalidInputError(f"{src!r} is not a directory")
    epochs = sorted((int(m.group(1)), d) for d in os.listdir(src) if (m := _EPOCH.match(d)))
    if not epochs:
        raise FormatError(f"{src}: no epoch_<e> directories")
    out = []
    for i, (e, d) in enumerate(epochs):
        if e != i:
            raise FormatError(f"{src}: epochs must be 0..E-1 without gaps; found epoch_{e} where epoch_{i} was expected")
        if not os.path.isdir(os.path.join(src, d)):
            raise FormatError(f"{src}/{d}: not a directory")
        files = sorted((int(m.group(1)), f) for f in os.listdir(os.path.join(src, d)) if (m := _BATCH.match(f)))
        if not files:
            raise FormatError(f"{src}/{d}: no batch_<b>.tar files")
        for j, (b, f) in enumerate(files):
            if b != j:
                raise FormatError(f"{src}/{d}: batches must be 0..B-1 without gaps; found batch_{b} where batch_{j} was expected")
            if not is_regular(os.path.join(src, d, f)):  # a FIFO would block torch.load forever
                raise FormatError(f"{src}/{d}/{f}: not a regular file")
            out.append((e, b, os.path.join(src, d, f)))
    return out


def load_fkd_batch(path: str) -> list:
    """Read one relabel file with ``torch.load(weights_only=True)`` and validate its fields.

    The numpy scalars CutMix's ``rand_bbox`` leaves in ``mix_bbox`` are let through by the
    narrow allow-list of :func:`codec._torchfile.read_torch_file` (nothing else is)."""
    obj = read_torch_file(path, numpy=True)
    if not isinstance(obj, (list, tuple)) or len(obj) != 6:
        raise FormatError(f"{path}: expected a list [coords, flip, mix_index, mix_lam, mix_bbox, output], "
                          f"got {type(obj).__name__}" + (f" of length {len(obj)}" if hasattr(obj, "__len__") else ""))
    coords, flip, mix_index, lam, bbox, out = obj
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or not out.is_floating_point():
        raise FormatError(f"{path}: output must be a (B, C) float tensor")
    if not isinstance(coords, torch.Tensor) or tuple(coords.shape) != (out.shape[0], 4):
        raise FormatError(f"{path}: coords must be a ({out.shape[0]}, 4) tensor")
    return [coords, flip, mix_index, lam, bbox, out]


def _sampler_ids(epochs: int, *, sampler_seed: int | None, sample_ids, src: str, num_samples: int | None):
    """Per-epoch ordered sample ids for ``epochs`` epochs, or None when unknown."""
    if sample_ids is not None:
        if callable(sample_ids):
            return [np.asarray(sample_ids(e), np.int64) for e in range(epochs)]
        return [np.asarray(x, np.int64) for x in sample_ids]
    js = os.path.join(src, "sampler_indices_epoch.json")
    if os.path.exists(js):  # LPLD writes the image order of every epoch
        return _read_sampler_json(js)
    if sampler_seed is not None:  # SRe2L: RandomSampler(generator seeded once), one randperm per epoch
        if num_samples is None:
            raise InvalidInputError("simulating the sampler needs num_samples")
        g = torch.Generator().manual_seed(int(sampler_seed))
        sampler = torch.utils.data.RandomSampler(range(num_samples), generator=g)
        return [np.asarray(list(iter(sampler)), np.int64) for _ in range(epochs)]
    return None


def _read_sampler_json(js: str) -> list[np.ndarray]:
    """LPLD's ``sampler_indices_epoch.json``: a list (or {epoch: list}) of per-epoch sample-id lists."""
    try:
        with open_regular(js, "sampler file") as f:
            data = json.loads(f.read().decode("utf-8"))
    except InvalidInputError as exc:  # the importer found it in its folder: unreadable is a format problem
        raise FormatError(str(exc)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{js}: cannot be read as JSON: {exc}") from None
    if isinstance(data, dict):
        epoch = {}
        for key in data:
            m = re.fullmatch(r"(?:epoch_?)?(\d+)", key)
            if m is None:
                raise FormatError(f"{js}: epoch key {key!r} is not an epoch number (0, 1, ... or epoch_0, ...)")
            epoch[key] = int(m.group(1))
        order = sorted(data, key=lambda k: epoch[k])
        if [epoch[k] for k in order] != list(range(len(order))):
            raise FormatError(f"{js}: epoch keys must be 0..E-1, each once; got {sorted(data)[:8]}")
        data = [data[k] for k in order]
    if not isinstance(data, list):
        raise FormatError(f"{js}: expected a list of per-epoch sample-id lists, got {type(data).__name__}")
    out = []
    for e, x in enumerate(data):
        if not isinstance(x, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in x):
            raise FormatError(f"{js}: epoch {e} must be a list of non-negative integers")
        out.append(np.asarray(x, np.int64))
    return out


def lpld_pool_files(files: list[tuple[int, int, str]], lpld: Mapping[str, Any], src: str) -> tuple[list, dict]:
    """The files of LPLD's pool in a directory its generator wrote, and the pool's description.

    ``lpld = {"prune_ratio": p, "epochs": E}`` as given to ``generate_soft_label_pruning.py``.
    The pool is the first ``int(E * nb * (1 - p))`` batches (nb: batch files per epoch, see
    :func:`codec.codecs.lpld.lpld_pool_batches`).  LPLD's generator stops after the pool's
    last batch, except when the pool ends on an epoch boundary: its counter then passes the
    stop value and it writes one more whole epoch, which is not part of the pool and is left
    out here.  A directory with any other number of batches is refused (wrong ``p`` or ``E``).
    """
    from ..codecs.lpld import lpld_pool_batches

    if not isinstance(lpld, Mapping) or set(lpld) != {"prune_ratio", "epochs"}:
        raise InvalidInputError(f"lpld must be {{'prune_ratio': p, 'epochs': E}} (LPLD's --prune_ratio and --epochs), got {lpld!r}"[:200])
    epochs = lpld["epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise InvalidInputError(f"lpld epochs must be a positive integer, got {epochs!r}")
    counts: dict[int, int] = {}
    for e, _, _ in files:
        counts[e] = counts.get(e, 0) + 1
    nb = counts[0]
    short = [e for e, c in counts.items() if c != nb and e != len(counts) - 1]
    if short or counts[len(counts) - 1] > nb:
        raise FormatError(f"{src}: LPLD's batch ids need {nb} batch files in every epoch but the last; "
                          f"epochs {short or [len(counts) - 1]} have {[counts[e] for e in (short or [len(counts) - 1])]}")
    pool = lpld_pool_batches(epochs * nb, lpld["prune_ratio"])
    written = pool + (nb if pool % nb == 0 else 0)
    if len(files) != written:
        raise FormatError(f"{src}: LPLD with prune_ratio={lpld['prune_ratio']} and epochs={epochs} keeps the first "
                          f"{pool} of {epochs * nb} batches ({nb} per epoch) and its generator writes {written}; "
                          f"this directory has {len(files)} (check --prune_ratio and --epochs)")
    return files[:pool], {"prune_ratio": float(lpld["prune_ratio"]), "epochs": epochs, "batches_per_epoch": nb,
                          "pool": pool, "written": len(files)}


def fit_codec(codec: SoftLabelCodec | Mapping[str, Any], source: Any, *, input: str, temperature: float,
              train: Mapping[str, Any] | None, progress: bool, who: str) -> SoftLabelCodec:
    """``codec`` itself when it is a fitted soft-label codec declaring ``input``/``temperature``,
    or a VQ codec fitted on ``source`` (:func:`~codec.softlabels.fit.fit`) from a config dict
    ``{"id": "vq", "dh":..., "dc":..., "k":...}`` (``train``: extra training arguments of
    :func:`~codec.softlabels.train.train_vq`; other config keys are VQ's own)."""
    from .fit import fit
    from .train import train_vq

    if isinstance(codec, Mapping):
        cfg = dict(codec)
        if cfg.pop("id", "vq") != "vq":
            raise InvalidInputError(f"{who} can train only a VQ codec; pass other codecs already fitted")
        import inspect

        arch_keys = set(inspect.signature(VQCodec).parameters) - {"classes", "input", "temperature"}
        train_keys = set(inspect.signature(train_vq).parameters) - arch_keys - {"data", "input", "temperature", "section"}
        arch = {k: cfg.pop(k) for k in list(cfg) if k in arch_keys}
        # the architecture is checked as a VQ config first (missing k, bad values -> InvalidInputError)
        vq = VQCodec.from_config({"id": "vq", "classes": source.classes, "input": input, "temperature": temperature, **arch})
        assert isinstance(vq, VQCodec)
        tr = {"progress": progress, **cfg, **dict(train or {})}
        bad = sorted(set(tr) - train_keys)
        if bad:
            raise InvalidInputError(f"{who}: unknown VQ/training options {bad}; VQ takes {sorted(arch_keys)}, "
                                    f"training takes {sorted(train_keys)}")
        codec = fit(vq, source, **tr)
    if not isinstance(codec, SoftLabelCodec):
        raise InvalidInputError(f"codec must be a soft-label codec or a VQ config dict, got {type(codec).__name__}")
    if getattr(codec, "input", input) != input or getattr(codec, "temperature", temperature) != temperature:
        raise InvalidInputError(f"codec declares input={codec.input!r}, T={codec.temperature}; the import says "
                                f"input={input!r}, T={temperature}")
    return codec


def import_fkd_dir(src: str | os.PathLike, dst: str | os.PathLike, codec: SoftLabelCodec | Mapping[str, Any], *,
                   input: str = "logits", temperature: float = 1.0, num_samples: int | None = None,
                   sampler_seed: int | None = None, sample_ids=None, train: Mapping[str, Any] | None = None,
                   crop: Mapping[str, Any] | None = None, lpld: Mapping[str, Any] | None = None,
                   progress: bool = False) -> str:
    """Import an SRe2L/CDA/LPLD ``epoch_{e}/batch_{b}.tar`` directory into one .ddz.

    ``codec``: a trained/fitted soft-label codec, or a dict ``{"id": "vq", "dh":..., "dc":...,
    "k":...}`` to train a VQ codec on the directory's outputs first (``train`` = extra
    :func:`train_vq` arguments).  ``input``/``temperature`` declare what ``output`` holds
    (SRe2L/LPLD: raw logits, used at T). Sample ids come from ``sample_ids`` (per-epoch
    lists or a callable), else ``sampler_indices_epoch.json`` in ``src`` (LPLD), else a
    simulation of SRe2L's ``RandomSampler`` seeded with ``sampler_seed`` (needs
    ``num_samples``), else they are left out.  ``lpld={"prune_ratio": p, "epochs": E}``: the
    directory is the output of LPLD's pruning generator; only its pool's batches are imported
    (:func:`lpld_pool_files`), ready for :class:`~codec.softlabels.replay.LPLDBatchSampler`.
    """
    from .sources import IterSource

    src = os.fspath(src)
    files = scan_fkd_dir(src)
    pool_meta = None
    if lpld is not None:
        files, pool_meta = lpld_pool_files(files, lpld, src)
    first = load_fkd_batch(files[0][2])
    classes = int(first[5].shape[1])

    def outputs():
        for _, _, p in files:
            yield load_fkd_batch(p)[5]

    codec = fit_codec(codec, IterSource(outputs, classes=classes), input=input, temperature=temperature, train=train,
                      progress=progress, who="import_fkd_dir")
    if codec.classes != classes:
        raise InvalidInputError(f"{src}: outputs have {classes} classes, codec expects {codec.classes}")
    ids = _sampler_ids(files[-1][0] + 1, sampler_seed=sampler_seed, sample_ids=sample_ids, src=src, num_samples=num_samples)
    if ids is not None and num_samples is None:
        num_samples = max((int(x.max()) for x in ids if x.size), default=-1) + 1
        if num_samples == 0:
            raise FormatError(f"{src}: the sampler order lists no sample ids")

    def records():
        pos = {}
        for e, b, p in files:
            coords, flip, mix_index, lam, bbox, out = load_fkd_batch(p)
            B = out.shape[0]
            sids = None
            if ids is not None:
                s0 = pos.get(e, 0)
                if e >= len(ids) or s0 + B > len(ids[e]):
                    raise FormatError(f"{p}: sampler order of epoch {e} has fewer than {s0 + B} entries")
                sids = ids[e][s0:s0 + B]
                pos[e] = s0 + B
            if mix_index is None:
                mt = "none"
            elif bbox is not None:
                mt = "cutmix"
            else:
                mt = "mixup"
            if lam is not None:
                lam = _scalar(lam, "mix_lam", p)
            yield BatchRecord(e, b, out, coords, flip if flip is not None else torch.zeros(B, dtype=torch.bool), sids,
                              mt, mix_index, lam, bbox)

    meta = {"source": {"kind": "fkd_dir", "files": len(files), "input": input, "temperature": temperature,
                       **({"lpld": pool_meta} if pool_meta else {})}}
    return write_replay_archive(dst, codec, records, classes=classes, num_samples=num_samples, crop=crop,
                                metadata=meta, progress=progress)
