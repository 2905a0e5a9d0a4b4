"""LLM token-level soft labels: top-k teacher logits per position (paper Sec. 4.2).

Per sequence the archive keeps the token ids, the loss mask (positions that carry a KD
target, e.g. response tokens, MiniLLM's ``label != -100``), and the prompt length.  For every
masked position it keeps the teacher's top-k (default 20) token ids, bit-packed at
``ceil(log2 vocab)`` bits (16 for GPT-2's 50,257), and the top-k probabilities
``softmax(z_topk / T)`` (renormalised over the k kept tokens, sorted descending), compressed
by the VQ codec (an object ``llm_values`` of k "classes").  Alignment is teacher-forced: the
target at position t is the teacher's distribution for token t+1, as produced.

==========================  =======================  ==========================================
section                     shape / dtype            meaning
==========================  =======================  ==========================================
``llm/seq_tokens``          (S+1,) u64               token offsets: sequence i = ``[o[i], o[i+1])``
``llm/seq_labels``          (S+1,) u64               label-row offsets (masked positions only)
``llm/prompt_len``          (S,) u32                 prompt length per sequence
``llm/tokens``              (T,) bit-packed          token ids, ceil(log2 V) bits
``llm/loss_mask``           (T,) u8, 1 bit           1 where a KD target is stored
``llm/topk_ids``            (n, k) bit-packed        teacher top-k token ids, ceil(log2 V) bits
``llm_values/*``            VQ object                top-k probabilities (n rows of k values)
==========================  =======================  ==========================================
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from .._args import float_arg, int_arg, parse_device
from ..codecs.softlabel import index_bits, index_dtype, index_dtype_name
from ..codecs.vq import VQCodec
from ..errors import FileAccessError, FormatError, InvalidInputError
from ..format import DTYPES, Writer
from .archive import SoftLabelArchive, write_softlabels
from .sources import IterSource

LLM_META = "llm"


def _prep(seq: Mapping[str, Any], k: int, vocab: int, temperature: float, where: str):
    """Validate one sequence; return tokens, mask, prompt_len, ids (n,k) and probs (n,k)."""
    try:
        tokens = np.asarray(seq["tokens"].cpu() if isinstance(seq["tokens"], torch.Tensor) else seq["tokens"]).astype(np.int64).reshape(-1)
        L = tokens.size
        mask = seq.get("loss_mask")
        mask = np.ones(L, bool) if mask is None else np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool).reshape(-1)
        prompt = int(seq.get("prompt_len", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"{where}: needs 'tokens' (and optional 'loss_mask', 'prompt_len'): {exc}") from None
    if mask.size != L:
        raise InvalidInputError(f"{where}: loss_mask has {mask.size} entries for {L} tokens")
    if L and (tokens.min() < 0 or tokens.max() >= vocab):
        raise InvalidInputError(f"{where}: token id outside [0, {vocab})")
    if not 0 <= prompt <= L:
        raise InvalidInputError(f"{where}: prompt_len {prompt} outside 0..{L}")
    n = int(mask.sum())
    if "logits" in seq:  # dense (L, V) teacher logits
        z = torch.as_tensor(seq["logits"]).float()
        if z.shape != (L, vocab):
            raise InvalidInputError(f"{where}: logits must be ({L}, {vocab}), got {tuple(z.shape)}")
        z = z[torch.from_numpy(mask)]
        vals, ids = torch.topk(z, k, dim=1)
    else:
        try:
            ids = torch.as_tensor(seq["topk_ids"]).long()
            vals = torch.as_tensor(seq["topk_logits"]).float()
        except KeyError:
            raise InvalidInputError(f"{where}: give 'logits' (L, V) or 'topk_ids' + 'topk_logits'") from None
        if ids.shape[0] == L and n != L:
            ids, vals = ids[torch.from_numpy(mask)], vals[torch.from_numpy(mask)]
        if ids.shape != (n, k) or vals.shape != (n, k):
            raise InvalidInputError(f"{where}: top-k ids/logits must be ({n}, {k}) (masked positions) or ({L}, {k})")
        vals, order = torch.sort(vals, dim=1, descending=True)
        ids = torch.gather(ids, 1, order)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise InvalidInputError(f"{where}: top-k id outside [0, {vocab})")
    probs = torch.softmax(vals / temperature, dim=1)
    return tokens, mask, prompt, ids.numpy(), probs


def write_llm_archive(path: str | os.PathLike, sequences: Callable[[], Iterable[Mapping[str, Any]]], *, vocab: int,
                      k: int = 20, temperature: float = 1.0, vq: VQCodec | Mapping[str, Any] | None = None,
                      train: Mapping[str, Any] | None = None, ids_zstd: int | None = None,
                      metadata: Mapping[str, Any] | None = None, progress: bool = False) -> dict:
    """Write token-level labels.  ``sequences`` is a callable returning an iterable of dicts with
    ``tokens`` (L,), optional ``loss_mask`` (L,) and ``prompt_len``, and either dense
    ``logits`` (L, V) or ``topk_ids`` + ``topk_logits`` ((L, k) or (masked, k)).

    ``vq``: a trained VQCodec over k classes, or a dict (dh, dc, k) to train one first on the
    top-k probabilities (one extra pass; ``train`` = more :func:`train_vq` args).
    ``ids_zstd``: store the top-k ids byte-aligned + zstd instead of bit-packed.
    Returns a summary with bytes per labelled token.
    """
    from .train import train_vq

    vocab = int_arg("vocab", vocab, 2)
    k = int_arg(f"k (vocab={vocab})", k, 1, vocab)
    temperature = float_arg("temperature", temperature, 0, lo_open=True)

    def probs_only():
        for i, s in enumerate(sequences()):
            yield _prep(s, k, vocab, temperature, f"sequence {i}")[4]

    if vq is None:
        vq = {"dh": k, "dc": min(k, 5) if k % 5 == 0 else 1, "k": 1024}
    if isinstance(vq, Mapping):
        kw = {"progress": progress, **dict(vq), **dict(train or {})}
        vq = train_vq(IterSource(probs_only, classes=k), input="probs", **kw)
    if vq.classes != k or vq.input != "probs":
        raise InvalidInputError(f"the values codec must take {k} probability classes, has {vq.classes} ({vq.input})")
    vbits = index_bits(vocab)
    # unnamed temporary files beside the output: nothing is left behind, even after kill -9
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    names = ("tokens", "loss_mask", "topk_ids")
    spills = {n: tempfile.TemporaryFile(prefix="ddz-llm-", dir=folder) for n in names}
    seq_tokens, seq_labels, prompts = [0], [0], []
    try:
        def values():
            for i, s in enumerate(sequences()):
                tokens, mask, prompt, ids, probs = _prep(s, k, vocab, temperature, f"sequence {i}")
                spills["tokens"].write(tokens.astype(index_dtype(vbits).type).tobytes())
                spills["loss_mask"].write(mask.astype(np.uint8).tobytes())
                spills["topk_ids"].write(ids.astype(index_dtype(vbits).type).tobytes())
                seq_tokens.append(seq_tokens[-1] + tokens.size)
                seq_labels.append(seq_labels[-1] + ids.shape[0])
                prompts.append(prompt)
                yield probs

        with Writer(path, metadata=dict(metadata or {})) as w:
            write_softlabels(w, "llm_values", vq, IterSource(values, classes=k), register=False, progress=progress)
            w.add("llm/seq_tokens", np.asarray(seq_tokens, np.uint64))
            w.add("llm/seq_labels", np.asarray(seq_labels, np.uint64))
            w.add("llm/prompt_len", np.asarray(prompts, np.uint32))
            T, n = seq_tokens[-1], seq_labels[-1]
            for name, shape, bits, dname in (("tokens", (T,), vbits, index_dtype_name(vbits)), ("loss_mask", (T,), 1, "u8"),
                                             ("topk_ids", (n, k), vbits, index_dtype_name(vbits))):
                dt = DTYPES[dname]
                z = ids_zstd if name == "topk_ids" else None
                b = None if z is not None else bits
                spill = spills[name]
                spill.flush()
                spill.seek(0)
                per_row = shape[1] if len(shape) > 1 else 1
                with w.section(f"llm/{name}", dname, shape[1:], bits=b, zstd=z) as sec:
                    step = 1 << 20
                    for s0 in range(0, shape[0], step):
                        rows = min(step, shape[0] - s0)
                        part = np.fromfile(spill, dt, rows * per_row)
                        if part.size != rows * per_row:
                            raise FileAccessError(f"spill file of llm/{name} came back short")
                        sec.append(part.reshape(rows, *shape[1:]))
                    if shape[0] == 0:
                        sec.append(np.zeros(shape, dt))
            w.metadata[LLM_META] = {"version": 1, "vocab": vocab, "k": k, "temperature": temperature,
                                    "sequences": len(prompts), "tokens": T, "label_rows": n,
                                    "values_object": "llm_values", "values": "softmax(top-k logits / T), sorted descending",
                                    "alignment": "teacher-forced: target at position t is the distribution of token t+1"}
            w.metadata["softlabels"] = {"object": "llm_values", "rows": n, "classes": k, "codec": "vq"}
    finally:
        for f in spills.values():
            f.close()
    size = os.path.getsize(path)
    n = seq_labels[-1]
    return {"path": os.fspath(path), "file_bytes": size, "label_rows": n, "tokens": seq_tokens[-1],
            "bytes_per_label_token": size / n if n else float("nan"),
            "fp16_topk_bytes_per_token": k * 2 + k * 2, "dense_fp16_bytes_per_token": vocab * 2}


class LLMArchive(SoftLabelArchive):
    """Reader: per sequence the tokens, loss mask, prompt length and the top-k targets."""

    def __init__(self, path, *, device: Any = None, dtype: torch.dtype = torch.float32):
        super().__init__(path, "llm_values", device=device, dtype=dtype)
        f = self._f()
        self.llm_meta = f.metadata.get(LLM_META)
        if not isinstance(self.llm_meta, dict):
            raise FormatError(f"{self.path}: no {LLM_META!r} metadata")
        for key, lo, hi in (("vocab", 2, 1 << 32), ("k", 1, 1 << 24)):
            v = self.llm_meta.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise FormatError(f"{self.path}: metadata {LLM_META}.{key} must be an integer in [{lo}, {hi}], got {v!r}")
        self.vocab, self.k = self.llm_meta["vocab"], self.llm_meta["k"]
        if self.k > self.vocab or self.classes != self.k:
            raise FormatError(f"{self.path}: top-k k={self.k} disagrees with vocab {self.vocab} or the values' {self.classes} columns")
        arrs = {}
        for name in ("seq_tokens", "seq_labels", "prompt_len"):
            a = np.asarray(f.get(f"llm/{name}"))
            if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
                raise FormatError(f"{self.path}: llm/{name} must be a 1-D integer array, got {a.shape} {a.dtype}",
                                  section=f"llm/{name}")
            arrs[name] = a.astype(np.int64)
        self.seq_tokens, self.seq_labels, self.prompt_len = arrs["seq_tokens"], arrs["seq_labels"], arrs["prompt_len"]
        S = len(self.prompt_len)
        tok, ids = f.info("llm/tokens"), f.info("llm/topk_ids")
        if (len(self.seq_tokens) != S + 1 or len(self.seq_labels) != S + 1 or self.seq_labels[0] != 0
                or self.seq_tokens[0] != 0 or self.seq_labels[-1] != self.rows or tuple(tok.shape) != (self.seq_tokens[-1],)
                or tuple(ids.shape) != (self.rows, self.k)
                or np.any(np.diff(self.seq_tokens) < 0) or np.any(np.diff(self.seq_labels) < 0)
                or np.any(self.prompt_len < 0) or np.any(self.prompt_len > np.diff(self.seq_tokens))):
            raise FormatError(f"{self.path}: inconsistent sequence offsets")

    @property
    def num_sequences(self) -> int:
        return len(self.prompt_len)

    def sequence(self, i: int, *, device: Any = None) -> dict:
        if not isinstance(i, (int, np.integer)) or not 0 <= i < self.num_sequences:
            raise InvalidInputError(f"sequence {i!r} outside 0..{self.num_sequences - 1}")
        f = self._f()
        t0, t1 = int(self.seq_tokens[i]), int(self.seq_tokens[i + 1])
        l0, l1 = int(self.seq_labels[i]), int(self.seq_labels[i + 1])
        tokens = torch.from_numpy(np.asarray(f.get_rows("llm/tokens", t0, t1)).astype(np.int64))
        mask = torch.from_numpy(np.asarray(f.get_rows("llm/loss_mask", t0, t1)).astype(bool))
        if int(mask.sum()) != l1 - l0:
            raise FormatError(f"{self.path}: sequence {i} has {int(mask.sum())} masked positions but {l1 - l0} label rows")
        info = f.info("llm/topk_ids")
        ids = f.get("llm/topk_ids")[l0:l1] if info.zstd else f.get_rows("llm/topk_ids", l0, l1)
        ids = np.asarray(ids)
        for nm, a in (("topk_ids", ids), ("tokens", tokens)):
            if a.size and int(a.max()) >= self.vocab:
                raise FormatError(f"{self.path}: sequence {i}: llm/{nm} holds id {int(a.max())} >= vocab {self.vocab}",
                                  section=f"llm/{nm}")
        dev = parse_device(device) if device is not None else self.device
        return {"tokens": tokens, "loss_mask": mask, "prompt_len": int(self.prompt_len[i]),
                "positions": torch.nonzero(mask).flatten(),
                "topk_ids": torch.from_numpy(np.asarray(ids).astype(np.int64)).to(dev),
                "topk_probs": self.labels(l0, l1, device=dev)}


def topk_kd_loss(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_probs: torch.Tensor,
                 tau: float = 1.0) -> torch.Tensor:
    """Eq. 10 restricted to the stored support: mean over positions of
    ``sum_j p_j (log p_j - log softmax(S / tau)[id_j])`` (the full-vocabulary student softmax)."""
    if student_logits.shape[0] != topk_ids.shape[0] or topk_ids.shape != topk_probs.shape:
        raise InvalidInputError("student logits (n, V), top-k ids (n, k) and probs (n, k) must agree")
    if topk_ids.numel() and (int(topk_ids.min()) < 0 or int(topk_ids.max()) >= student_logits.shape[-1]):
        raise InvalidInputError(f"top-k ids outside the student's vocabulary [0, {student_logits.shape[-1]})")
    tau = float_arg("topk_kd_loss: tau", tau, 0, lo_open=True)
    logq = torch.log_softmax(student_logits.float() / tau, dim=-1).gather(1, topk_ids.long())
    p = topk_probs.float()
    return (p * (torch.log(p.clamp_min(1e-45)) - logq)).sum(1).mean()
