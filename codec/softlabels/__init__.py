"""Soft-label compression: VQ autoencoder training (Eq. 2-7), streaming encoding into a
.ddz, decoding any row range (Eq. 9), the KD loss (Eq. 10), LLM token-level labels,
augmentation records and the replay API for training code.

Entry points:

* :func:`fit` -- the one way a codec learns its parameters (VQ, PCA, quant): returns a fitted copy.
* :func:`train_vq` -- fit's VQ trainer, a :class:`~codec.codecs.vq.VQCodec` from its shape and a memmap / .ddz section / iterator.
* :func:`write_softlabels` / :func:`save_softlabels` -- stream labels into a Writer / new file.
* :func:`save_softlabel_set` / :func:`save_softlabels_distributed` -- a sharded set (spec/sets.md),
  from one process or one shard per torchrun rank.
* :func:`open_archive` -- open a soft-label .ddz, set index or URL: ``arch.labels(start, stop)`` -> probabilities.
* :func:`kd_loss` -- Eq. 10.
* :func:`~codec.softlabels.augment.import_fkd_dir` (SRe2L / CDA / LPLD relabel trees) and
  :func:`~codec.softlabels.fkd.import_fkd_labels` (FKD's per-image files): the producers' own
  files into one .ddz; :mod:`codec.softlabels.replay` and :mod:`codec.softlabels.fkd` replay them.
"""

from __future__ import annotations

from typing import Any

from ..codecs.lpld import LPLDCodec
from ..codecs.pca import PCACodec
from ..codecs.quant import QuantCodec
from ..codecs.softlabel import SoftLabelCodec, to_probs
from ..codecs.topk import TopKCodec
from ..codecs.vq import VQCodec
from .archive import SoftLabelArchive, save_softlabels, write_softlabels
from .fit import fit
from .kd import kd_loss, kl_div
from .sharded import save_softlabel_set, save_softlabels_distributed
from .sources import ArraySource, DDZSource, IterSource, as_source
from .train import TrainLog, train_vq


def open_archive(path, device: Any = None, *, name: str | None = None, dtype=None, storage_options=None,
                 verify: bool = False):
    """Open soft labels for reading: a .ddz, the index of a sharded set (spec/sets.md), or
    either at an fsspec URL (``https://``, ``s3://`` ...; ``storage_options`` go to fsspec).

    Returns a :class:`ReplayArchive` when the file holds augmentation records (so training
    code can replay (epoch, step) batches), an :class:`LLMArchive` for token-level labels,
    else a :class:`SoftLabelArchive`.  Decoding runs on ``device`` (CPU or CUDA).
    ``verify=True`` checks every checksum of the file first (one read of the whole file).
    """
    from ..format import open as ddz_open

    f = ddz_open(path, storage_options=storage_options, verify=verify)
    try:
        meta = f.metadata if isinstance(f.metadata, dict) else {}
        kw: dict[str, Any] = {"device": device}
        if dtype is not None:
            kw["dtype"] = dtype
        if "llm" in meta:
            from .llm import LLMArchive

            f.close()
            return LLMArchive(path, **kw)
        if "augment" in meta:
            from .replay import ReplayArchive

            return ReplayArchive(path, name=name, storage_options=storage_options, _file=f, **kw)
        return SoftLabelArchive(path, name=name, storage_options=storage_options, _file=f, **kw)
    except BaseException:
        f.close()
        raise


__all__ = ["SoftLabelCodec", "VQCodec", "TopKCodec", "PCACodec", "QuantCodec", "LPLDCodec", "to_probs", "fit", "train_vq",
           "TrainLog", "write_softlabels", "save_softlabels", "save_softlabel_set", "save_softlabels_distributed",
           "SoftLabelArchive", "open_archive", "kd_loss", "kl_div", "ArraySource", "DDZSource",
           "IterSource", "as_source"]
