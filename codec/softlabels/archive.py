"""Writing soft labels into a .ddz and reading any row range back.

Layout of a soft-label object ``NAME`` (see ``spec/budget.md`` for the byte accounting):

* row parts, one row per soft label, e.g. ``NAME/indices`` (VQ, bit-packed at ceil(log2 k)
  bits), ``NAME/values`` + ``NAME/indices`` (top-k), ``NAME/proj`` (PCA) ...;
* shared parts: ``NAME/codebook``, ``NAME/decoder``, ``NAME/components`` ...;
* the objects-table entry ``{codec: config, sections: {part: section}}``;
* file metadata ``"softlabels": {"object": NAME, "rows": n, "classes": C, ...}``.

Rows are written in (epoch, step, position-in-batch) order when augmentation records are
present (:mod:`codec.softlabels.augment`), so a batch is a contiguous row range.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from .._args import int_arg, parse_device
from ..codecs.base import registered_codecs
from ..codecs.softlabel import SoftLabelCodec
from ..errors import DDZError, FileAccessError, FormatError, InvalidInputError, SectionNotFoundError
from ..format import DTYPES, DDZFile, DDZSet, Writer
from ..format.arrays import as_path
from ..format.resources import allocation_guard, reserve
from ..format import open as ddz_open
from .sources import Source, opened_source

META_KEY = "softlabels"
_GAP = 64  # rows_at: ids closer than this share one range decode
_SPAN_BYTES = 64 << 20  # ... of at most this much float32 output
_DECODE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def write_softlabels(writer: Writer, name: str, codec: SoftLabelCodec, data: Any, *, section: str | None = None,
                     chunk: int = 65536, progress: bool = False, register: bool = True,
                     extra_meta: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Encode soft labels with a (trained/fitted) codec and stream them into ``writer``.

    ``data`` is anything :func:`~codec.softlabels.sources.as_source` accepts (array, memmap,
    tensor, iterator factory, or a .ddz path with ``section=``); it is read ``chunk`` rows at
    a time (an iterator's larger batches are sliced), so peak memory is O(chunk x C).  The
    first row part streams straight into its section; any further row parts (e.g. top-k
    values next to indices) are spilled to a temporary file and copied in afterwards (the
    writer holds one open section at a time).  Returns ``{part: section}``.
    """
    if not isinstance(codec, SoftLabelCodec):
        raise InvalidInputError(f"write_softlabels needs a soft-label codec, got {type(codec).__name__}")
    if not codec.fitted:
        raise InvalidInputError(f"{codec.codec_id}: the codec has no learned parameters; fit it with codec.softlabels.fit")
    chunk = int_arg("chunk", chunk, 1)
    with opened_source(data, section) as src:
        sections, rows = write_row_parts(writer, name, codec, src, chunk, progress)
    sections.update(write_shared_parts(writer, name, codec))
    writer.add_object(name, codec.get_config(), sections)
    if register:
        writer.metadata[META_KEY] = softlabel_meta(name, codec, rows, extra_meta)
    return sections


def softlabel_meta(name: str, codec: SoftLabelCodec, rows: int, extra_meta: Mapping[str, Any] | None = None) -> dict:
    """The ``"softlabels"`` metadata entry that tells readers which object holds the labels."""
    meta = {"object": name, "rows": rows, "classes": codec.classes, "codec": codec.codec_id}
    meta.update(extra_meta or {})
    return meta


def write_shared_parts(writer: Writer, name: str, codec: SoftLabelCodec) -> dict[str, str]:
    """The codec's shared parts (codebook, decoder, ...) as sections ``NAME/part``; returns ``{part: section}``."""
    sections = {}
    for p, part in codec.params().items():
        writer.add(f"{name}/{p}", part.array, bits=part.bits, zstd=part.zstd)
        sections[p] = f"{name}/{p}"
    return sections


def write_row_parts(writer: Writer, name: str, codec: SoftLabelCodec, src: Source, chunk: int,
                    progress: bool) -> tuple[dict[str, str], int]:
    """Encode every row of ``src`` into the row-part sections ``NAME/part``; returns
    ``({part: section}, rows written)``."""
    if src.classes != codec.classes:
        raise InvalidInputError(f"soft labels have {src.classes} classes, codec {codec.codec_id!r} expects {codec.classes}")
    specs = codec.row_parts()
    names = list(specs)
    sections = {p: f"{name}/{p}" for p in names}
    # row parts after the first wait in unnamed temporary files beside the output (same disk;
    # nothing to clean up even after kill -9); a codec with one row part (VQ) spills nothing
    spills: dict[str, Any] = {}
    folder = os.path.dirname(os.path.abspath(writer.path)) if hasattr(writer, "path") else None
    rows = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=src.rows, desc=f"encode {name}", unit="row", leave=False)
    try:
        first = names[0]
        s0 = specs[first]
        with writer.section(sections[first], s0.dtype, s0.row_shape, bits=s0.bits, zstd=s0.zstd) as sec:
            limit = codec.max_rows
            for x in src.sequential(chunk):
                if limit is not None:
                    if rows >= limit:
                        break
                    x = x[: limit - rows]
                enc = codec.encode_rows(x)
                sec.append(np.ascontiguousarray(enc[first]))
                for p in names[1:]:
                    f = spills.get(p)
                    if f is None:
                        f = spills[p] = tempfile.TemporaryFile(prefix="ddz-spill-", dir=folder)
                    a = np.ascontiguousarray(enc[p], dtype=DTYPES[specs[p].dtype])
                    f.write(a.tobytes())
                rows += int(x.shape[0])
                if bar is not None:
                    bar.update(int(x.shape[0]))
        for p in names[1:]:
            sp = specs[p]
            per_row = int(np.prod(sp.row_shape)) if sp.row_shape else 1
            with writer.section(sections[p], sp.dtype, sp.row_shape, bits=sp.bits, zstd=sp.zstd) as sec:
                f = spills.pop(p, None)
                if f is None:
                    sec.append(np.zeros((0, *sp.row_shape), DTYPES[sp.dtype]))
                    continue
                with f:
                    f.seek(0)
                    for s in range(0, rows, chunk):
                        e = min(rows, s + chunk)
                        part = np.fromfile(f, DTYPES[sp.dtype], (e - s) * per_row)
                        if part.size != (e - s) * per_row:
                            raise FileAccessError(f"spill file of part {p!r} came back short")
                        sec.append(part.reshape(e - s, *sp.row_shape))
    except OSError as exc:
        if isinstance(exc, DDZError):
            raise
        raise FileAccessError(f"spilling soft-label row parts in {folder!r} failed: {exc.strerror or exc}") from None
    finally:
        if bar is not None:
            bar.close()
        for f in spills.values():
            f.close()
    return sections, rows


def save_softlabels(path: str | os.PathLike, codec: SoftLabelCodec, data: Any, *, name: str = "labels",
                    section: str | None = None, metadata: Mapping[str, Any] | None = None, **kw) -> str:
    """Write a new .ddz holding one soft-label object (see :func:`write_softlabels`)."""
    with Writer(path, metadata=dict(metadata or {})) as w:
        write_softlabels(w, name, codec, data, section=section, **kw)
    return os.fspath(path)


def _decode_dtype(dtype: Any) -> torch.dtype:
    if dtype not in _DECODE_DTYPES:
        raise InvalidInputError(f"decode dtype must be one of {_DECODE_DTYPES}, got {dtype!r}")
    return dtype


def _check_row_part(info, spec, what: str) -> None:
    """A stored row part must match its codec's PartSpec: rows x row_shape, the dtype, and the
    bit width of a bit-packed part (so e.g. an (n, 1) high plane cannot broadcast against an
    (n, m) low plane, and a top-k index stream is stored at ceil(log2 C) bits)."""
    shape = tuple(info.shape)
    if len(shape) != 1 + len(spec.row_shape) or shape[1:] != tuple(spec.row_shape):
        raise FormatError(f"{what}: shape {shape} is not (rows, {', '.join(map(str, spec.row_shape))})"
                          if spec.row_shape else f"{what}: shape {shape} is not (rows,)", section=info.name)
    if info.dtype != spec.dtype:
        raise FormatError(f"{what}: dtype {info.dtype} where the codec stores {spec.dtype}", section=info.name)
    if spec.bits is not None and getattr(info, "bits", None) != spec.bits:
        raise FormatError(f"{what}: bit-packed at {info.bits} bits where the codec uses {spec.bits}", section=info.name)


class SoftLabelArchive:
    """Read-side view of the soft labels in a .ddz: decode any row range to probabilities.

    The file is opened lazily on first use (and re-opened in each process after a fork), so
    an instance can be handed to DataLoader workers.  ``device`` picks where decoding runs
    (the same torch code on CPU and CUDA); ``dtype=torch.bfloat16`` runs VQ's matmul in bf16.
    Bit-packed and raw row parts decode only the rows asked for; a zstd (entropy-coded) row
    part is one stream, decoded whole on first use and kept.
    """

    def __init__(self, path: str | os.PathLike, name: str | None = None, *, device: Any = None,
                 dtype: torch.dtype = torch.float32, storage_options: Mapping[str, Any] | None = None,
                 _file: DDZFile | DDZSet | None = None):
        self.path = as_path(path)
        self.storage_options = dict(storage_options) if storage_options else None
        self.device = parse_device(device)
        self.dtype = _decode_dtype(dtype)
        self._name = name
        self._file: DDZFile | DDZSet | None = _file  # already open (open_archive): a remote header is read once
        self._pid: int | None = os.getpid() if _file is not None else None
        self._codec: SoftLabelCodec | None = None
        self._cache: dict[str, Any] = {}
        self._load()

    # -- lazy, fork-safe open --------------------------------------------------------------------
    def _f(self) -> DDZFile | DDZSet:
        if self._file is None or self._pid != os.getpid():
            self._file = ddz_open(self.path, storage_options=self.storage_options)
            self._pid = os.getpid()
            self._cache = {}
            self._codec = None
        return self._file

    def _load(self) -> None:
        f = self._f()
        meta = f.metadata.get(META_KEY) if isinstance(f.metadata, dict) else None
        if meta is not None and not isinstance(meta, dict):
            raise FormatError(f"{self.path}: metadata {META_KEY!r} must be an object, got {type(meta).__name__}")
        name = self._name or (meta or {}).get("object")
        if name is not None and not isinstance(name, str):
            raise FormatError(f"{self.path}: metadata {META_KEY}.object must be a string, got {name!r}")
        if name is None:
            ids = registered_codecs(SoftLabelCodec)
            cands = [n for n, o in f.objects.items() if isinstance(o, dict) and isinstance(o.get("codec"), dict)
                     and o["codec"].get("id") in ids]
            if len(cands) != 1:
                raise SectionNotFoundError(f"{self.path}: cannot tell which object holds soft labels (candidates {cands}); pass name=")
            name = cands[0]
        if name not in f.objects:
            raise SectionNotFoundError(f"{self.path}: no object {name!r}; objects: {sorted(f.objects)}")
        self.name = name
        self.meta = dict(meta or {})
        self._codec_obj()

    def _codec_obj(self) -> SoftLabelCodec:
        if self._codec is not None and self._pid == os.getpid():
            return self._codec
        from ..codecs import codec_from_config

        f = self._f()
        obj = f.objects[self.name]
        try:
            codec = codec_from_config(obj["codec"])
        except InvalidInputError as exc:  # the config came from the file
            raise FormatError(f"{self.path}: object {self.name!r} has an invalid codec config: {exc}") from None
        if not isinstance(codec, SoftLabelCodec):
            raise FormatError(f"object {self.name!r} uses codec {codec.codec_id!r}, which is not a soft-label codec")
        self.sections = dict(obj["sections"])
        specs = codec.row_parts()
        missing = [p for p in specs if p not in self.sections]
        if missing:
            raise FormatError(f"object {self.name!r} lacks row parts {missing}")
        with allocation_guard(f"{self.path}: loading the shared parts of {self.name!r}"):
            shared = {p: f.get(s) for p, s in self.sections.items() if p not in specs}
            try:
                codec = codec.with_params(shared)
            except InvalidInputError as exc:  # the parts came from the file
                raise FormatError(f"{self.path}: object {self.name!r}: bad shared parts: {exc}") from None
            if hasattr(codec, "to"):
                codec.to(self.device)
        self.row_parts = list(specs)
        for p, spec in specs.items():
            _check_row_part(f.info(self.sections[p]), spec, f"object {self.name!r} part {p!r}")
        rows = {f.info(self.sections[p]).shape[0] for p in self.row_parts}
        if len(rows) != 1:
            raise FormatError(f"object {self.name!r}: row parts disagree on the row count {sorted(rows)}")
        self.rows = rows.pop()
        self.classes = codec.classes
        self._codec = codec
        return codec

    @property
    def codec(self) -> SoftLabelCodec:
        return self._codec_obj()

    def __len__(self) -> int:
        return self.rows

    def shard_ranges(self) -> list[tuple[int, int]]:
        """Row ranges ``[(start, stop), ...]`` held by each shard of a sharded set (one range for a
        single file): a rank that samples within its own ranges opens only its shards."""
        f = self._f()
        if not isinstance(f, DDZSet):
            return [(0, self.rows)]
        return [(a, b) for _, a, b in f.info(self.sections[self.row_parts[0]]).pieces]

    def _row_part(self, p: str, start: int, stop: int):
        f = self._f()
        sec = self.sections[p]
        info = f.info(sec)
        if info.zstd and not isinstance(f, DDZSet):  # compressed: decode once, then slice (a set caches per shard)
            full = self._cache.get(sec)
            if full is None:
                full = self._cache[sec] = f.get(sec)
            return full[start:stop]
        return f.get_rows(sec, start, stop)

    def labels(self, start: int = 0, stop: int | None = None, *, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows ``start:stop`` as renormalised probabilities (float32, shape (n, C))."""
        stop = self.rows if stop is None else stop
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer)) and 0 <= start <= stop <= self.rows):
            raise InvalidInputError(f"rows {start}:{stop} outside 0:{self.rows}")
        codec = self._codec_obj()
        dev = parse_device(device) if device is not None else self.device
        dtype = _decode_dtype(dtype) if dtype is not None else self.dtype
        # every soft-label codec decodes to (rows, classes) float32: refuse before decoding what the host cannot
        # hold (an accelerator's allocator raises its own out-of-memory error, converted by the guard below)
        if torch.device(dev).type == "cpu":
            reserve((int(stop) - int(start)) * self.classes * 4, f"{self.path}: soft labels {start}:{stop} "
                    f"({int(stop) - int(start):,} rows x {self.classes:,} classes, float32)")
        with allocation_guard(f"{self.path}: decoding soft labels {start}:{stop}"):
            parts = {p: self._row_part(p, int(start), int(stop)) for p in self.row_parts}
            try:
                return codec.decode_rows(parts, rows=range(int(start), int(stop)), device=dev, dtype=dtype)
            except InvalidInputError as exc:  # the parts came from the file
                raise FormatError(f"{self.path}: object {self.name!r} rows {start}:{stop}: {exc}") from None

    def rows_at(self, ids: Iterable[int], **kw) -> torch.Tensor:
        """Arbitrary rows (any order, repeats allowed). Sorted ids less than ``_GAP`` rows apart are
        decoded as one range (at most ``_SPAN_BYTES`` of output each), so a strided or scattered
        selection costs a few range decodes, not one per row."""
        ids = np.asarray(list(ids) if not isinstance(ids, (np.ndarray, torch.Tensor)) else ids)
        if ids.size and not (np.issubdtype(ids.dtype, np.integer) and ids.dtype != np.bool_):
            raise InvalidInputError(f"row ids must be integers, got {ids.dtype} values")
        ids = ids.astype(np.int64).reshape(-1)
        if ids.size == 0:
            return torch.empty((0, self.classes), dtype=torch.float32, device=kw.get("device") or self.device)
        if ids.min() < 0 or ids.max() >= self.rows:
            raise InvalidInputError(f"row ids outside 0:{self.rows}")
        order = np.argsort(ids, kind="stable")
        srt = ids[order]
        span = max(1, _SPAN_BYTES // (4 * self.classes))
        outs = []
        for run in np.split(srt, np.flatnonzero(np.diff(srt) > _GAP) + 1):
            pieces = np.split(run, np.flatnonzero(np.diff((run - run[0]) // span)) + 1) if run[-1] - run[0] >= span else [run]
            for piece in pieces:
                lab = self.labels(int(piece[0]), int(piece[-1]) + 1, **kw)
                outs.append(lab[torch.from_numpy(piece - piece[0]).to(lab.device)])
        res = torch.cat(outs)
        inv = np.empty_like(order)
        inv[order] = np.arange(order.size)
        return res[torch.from_numpy(inv).to(res.device)]

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.rows)
            if step == 1:
                return self.labels(start, max(start, stop))
            return self.rows_at(range(start, stop, step))
        if isinstance(key, (int, np.integer)):
            k = int(key) + (self.rows if key < 0 else 0)
            return self.labels(k, k + 1)[0]
        return self.rows_at(key)

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self):
        st = self.__dict__.copy()
        st["_file"] = None
        st["_codec"] = None
        st["_cache"] = {}
        return st

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
