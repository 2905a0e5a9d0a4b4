"""Soft labels as a sharded set (spec/sets.md): one shard per rank under torchrun, or N shards
written by one process; both give the same files for the same codec and data.

Shard ``i`` of N holds rows ``i*n//N .. (i+1)*n//N`` of every row part (``NAME/indices`` ...);
shard 0 also holds the shared parts (codebook, decoder ...), once.  The index holds the objects
table and the ``"softlabels"`` metadata, so :func:`codec.softlabels.open_archive` reads a set
exactly as it reads one file.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from .._args import int_arg
from ..codecs.softlabel import SoftLabelCodec
from ..errors import DDZError, InvalidInputError
from ..format import Writer, new_set_id, shard_metadata, shard_name, write_set_index
from ..format.layout import DEFAULT_BLOCK_SIZE
from .archive import META_KEY, softlabel_meta, write_row_parts, write_shared_parts
from .sources import Source, opened_source

INDEX_SUFFIX = ".ddzset.json"


def set_paths(index_path: str | os.PathLike, shards: int) -> list[str]:
    """The shard paths of a set whose index is ``index_path`` (``STEM.ddzset.json`` -> ``STEM-0000i-of-0000N.ddz``)."""
    path = os.fspath(index_path)
    folder, base = os.path.split(os.path.abspath(path))
    stem = base[: -len(INDEX_SUFFIX)] if base.endswith(INDEX_SUFFIX) else os.path.splitext(base)[0]
    return [os.path.join(folder, shard_name(stem, i, shards)) for i in range(shards)]


def shard_rows(rows: int, shards: int, shard: int) -> tuple[int, int]:
    return rows * shard // shards, rows * (shard + 1) // shards


def write_softlabel_shard(path: str, codec: SoftLabelCodec, src: Source, *, shard: int, shards: int, set_id: str,
                          name: str = "labels", chunk: int = 65536, progress: bool = False,
                          block_size: int | None = DEFAULT_BLOCK_SIZE) -> int:
    """Encode this shard's rows of ``src`` into the shard file ``path``; returns the rows written."""
    if src.rows is None:
        raise InvalidInputError("sharded encoding needs a source with known rows (an array, memmap or .ddz section)")
    a, b = shard_rows(src.rows, shards, shard)
    with Writer(path, shard_metadata(set_id, shard, shards), block_size=block_size) as w:
        _, rows = write_row_parts(w, name, codec, src.row_range(a, b), chunk, progress)
        if shard == 0:
            write_shared_parts(w, name, codec)
    return rows


def write_softlabel_index(index_path: str | os.PathLike, codec: SoftLabelCodec, shard_paths: list[str], *, set_id: str,
                          rows: int, name: str = "labels", metadata: Mapping[str, Any] | None = None) -> str:
    parts = list(codec.row_parts()) + list(codec.params())
    objects = {name: {"codec": codec.get_config(), "sections": {p: f"{name}/{p}" for p in parts}, "must_understand": True}}
    meta = dict(metadata or {})
    meta[META_KEY] = softlabel_meta(name, codec, rows)
    return write_set_index(index_path, shard_paths, set_id=set_id, objects=objects, metadata=meta)


def save_softlabel_set(index_path: str | os.PathLike, codec: SoftLabelCodec, data: Any, *, shards: int,
                       name: str = "labels", section: str | None = None, metadata: Mapping[str, Any] | None = None,
                       chunk: int = 65536, progress: bool = False, block_size: int | None = DEFAULT_BLOCK_SIZE,
                       set_id: str | None = None) -> str:
    """Encode soft labels into ``shards`` shards plus an index at ``index_path``, in this process."""
    shards = int_arg("shards", shards, 1)
    sid = set_id or new_set_id()
    paths = set_paths(index_path, shards)
    written: list[str] = []
    try:
        with opened_source(data, section) as src:
            for i, p in enumerate(paths):
                write_softlabel_shard(p, codec, src, shard=i, shards=shards, set_id=sid, name=name, chunk=chunk,
                                      progress=progress, block_size=block_size)
                written.append(p)
            rows = src.rows or 0
        return write_softlabel_index(index_path, codec, paths, set_id=sid, rows=rows, name=name, metadata=metadata)
    except BaseException:
        _remove(written)
        raise


def save_softlabels_distributed(index_path: str | os.PathLike, codec: SoftLabelCodec, data: Any, *,
                                name: str = "labels", section: str | None = None,
                                metadata: Mapping[str, Any] | None = None, chunk: int = 65536,
                                progress: bool = False, block_size: int | None = DEFAULT_BLOCK_SIZE,
                                set_id: str | None = None) -> str:
    """Call on every rank of an initialised ``torch.distributed`` group, with the same codec and
    data: rank r encodes its share into shard r; after a barrier rank 0 writes the index.  If any
    rank fails, every rank raises and no index is written (the shards written are removed)."""
    import torch.distributed as dist

    from .train import comm_device

    if not (dist.is_available() and dist.is_initialized()):
        raise InvalidInputError("save_softlabels_distributed needs an initialised torch.distributed process group (torchrun)")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = comm_device()
    sid_t = torch.zeros(16, dtype=torch.uint8, device=dev)
    if rank == 0:
        sid_t.copy_(torch.tensor(list(bytes.fromhex(set_id or new_set_id())), dtype=torch.uint8))
    dist.broadcast(sid_t, src=0)
    sid = bytes(sid_t.cpu().tolist()).hex()
    paths = set_paths(index_path, world)
    error: BaseException | None = None
    rows = 0
    try:
        with opened_source(data, section) as src:
            write_softlabel_shard(paths[rank], codec, src, shard=rank, shards=world, set_id=sid, name=name,
                                  chunk=chunk, progress=progress and rank == 0, block_size=block_size)
            rows = src.rows or 0
    except Exception as exc:  # noqa: BLE001 - every rank must learn of any failure, or the others wait forever
        error = exc
    try:
        _agree(error, dev, "encoding a shard")
        try:
            if rank == 0:
                write_softlabel_index(index_path, codec, paths, set_id=sid, rows=rows, name=name, metadata=metadata)
        except Exception as exc:  # noqa: BLE001 - re-raised on this rank by _agree, after the others learn of it
            error = exc
        _agree(error, dev, "writing the index")
    except BaseException:
        _remove([paths[rank]])
        raise
    return os.fspath(index_path)


def _agree(error: BaseException | None, dev, what: str) -> None:
    """All ranks learn whether any failed; a failing rank re-raises its error, the others a DDZError."""
    import torch.distributed as dist

    flag = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=dev)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if error is not None:
        raise error
    if int(flag.item()):
        raise DDZError(f"another rank failed while {what}; no set was written")


def _remove(paths: list[str]) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
