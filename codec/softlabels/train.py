"""Streaming training of the VQ autoencoder (paper Eq. 2-7).

Loss (Eq. 7), per mini-batch (mean over rows, sum over segments / classes)::

    L_cache = alpha * sum_i ( ||sg[h(i)] - mu_q(i)||^2 + beta * ||h(i) - sg[mu_q(i)]||^2 )   # L_VQ
              + ||yhat - y||^2                                                                # L_rec

The quantised latent passed to the decoder is ``h + sg[mu_q - h]`` (the straight-through
estimator of VQ-VAE [31]; its value is ``mu_q`` as in Eq. 4, and gradients of L_rec reach the
encoder P).  ``straight_through=False`` uses ``sg[mu_q]`` literally, so P learns only from
the commitment term.

Initialisation: P from the top-``dh`` right singular vectors of a data sample (uncentred,
matching the bias-free Eq. 2/6), optionally followed by a seeded random rotation that spreads
variance evenly over the m segments (``init="pca_rot"``, default; one shared codebook serves
all segments), D = P^T; the codebook by k-means++ on sample segments plus a few Lloyd steps.
Dead codes (unused for ``dead_window`` steps) are re-seeded from random segments of the
current batch.  All randomness comes from one seeded ``torch.Generator``: on CPU two runs
with the same seed and data produce identical parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._args import float_arg, int_arg, parse_device
from ..codecs.softlabel import to_probs
from ..codecs.vq import VQCodec, nearest_code
from ..errors import InvalidInputError
from .sources import opened_source


@dataclass
class TrainLog:
    steps: int = 0
    losses: list = field(default_factory=list)  # (step, L_cache, L_rec, L_VQ)
    reseeded: int = 0
    usage: Any = None


def kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) of k centres from rows of x
    (numpy float64 inner loop; the random stream is seeded from ``generator``)."""
    xs = x.detach().cpu().numpy().astype(np.float64)
    n = xs.shape[0]
    if n == 0:
        raise InvalidInputError("k-means++: no data")
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    idx = np.empty(k, np.int64)
    idx[0] = rng.integers(n)
    d2 = ((xs - xs[idx[0]]) ** 2).sum(1)
    for i in range(1, k):
        cs = np.cumsum(d2)
        tot = cs[-1]
        j = int(rng.integers(n)) if tot <= 0 else int(min(n - 1, np.searchsorted(cs, rng.random() * tot, side="right")))
        idx[i] = j
        np.minimum(d2, ((xs - xs[j]) ** 2).sum(1), out=d2)
    return torch.from_numpy(xs[idx].astype(np.float32))


def lloyd(x: torch.Tensor, centres: torch.Tensor, iters: int) -> torch.Tensor:
    c = centres.clone()
    for _ in range(iters):
        q = nearest_code(x, c)
        sums = torch.zeros_like(c).index_add_(0, q, x)
        cnt = torch.bincount(q, minlength=c.shape[0]).to(x.dtype)
        nz = cnt > 0
        c[nz] = sums[nz] / cnt[nz, None]
    return c


def _init_projection(y: torch.Tensor, dh: int, rotate: bool, gen: torch.Generator) -> torch.Tensor:
    """Top-dh eigenvectors of the (uncentred) second moment ``Y^T Y`` (the right singular
    vectors of Y, via a C x C eigh: cheaper than an SVD of the sample)."""
    C = y.shape[1]
    yd = y.double()
    evals, evecs = torch.linalg.eigh(yd.T @ yd)
    V = evecs[:, torch.argsort(evals, descending=True)]  # (C, C)
    if dh > C:  # more latent dims than classes: complete with random orthonormal directions
        extra = torch.randn(C, dh - C, generator=gen, dtype=torch.float64) / math.sqrt(C)
        V = torch.cat([V, extra], 1)
    P = V[:, :dh]
    if rotate:
        R, _ = torch.linalg.qr(torch.randn(dh, dh, generator=gen, dtype=torch.float64))
        P = P @ R
    return P.float().contiguous()


def cache_loss(y: torch.Tensor, h: torch.Tensor, muq: torch.Tensor, decoder: torch.Tensor, *, alpha: float = 1.0,
               beta: float = 0.25, straight_through: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 7, ``L_cache = alpha * L_VQ + L_rec`` for one mini-batch of ``n`` labels.

    ``y`` (n, C) target probabilities; ``h`` (n*m, dc) encoder segments (Eq. 2-3); ``muq``
    (n*m, dc) their nearest codes (Eq. 4); ``decoder`` D (dh, C) (Eq. 6).
    ``L_VQ = (1/n) sum_i ||sg[h(i)] - mu_q(i)||^2 + beta ||h(i) - sg[mu_q(i)]||^2`` (sum over the
    n*m segments) and ``L_rec = (1/n) sum_rows ||yhat - y||^2`` with ``yhat = [mu_q] D``; the
    decoder sees ``h + sg[mu_q - h]`` (straight-through) or ``sg[mu_q]``.
    Returns ``(L_cache, L_VQ, L_rec)``."""
    n = y.shape[0]
    l_vq = (((h.detach() - muq) ** 2).sum() + beta * ((h - muq.detach()) ** 2).sum()) / n
    hq = h + (muq - h).detach() if straight_through else muq.detach()
    yhat = hq.reshape(n, -1) @ decoder
    l_rec = ((yhat - y) ** 2).sum(1).mean()
    return alpha * l_vq + l_rec, l_vq, l_rec


def train_vq(data: Any, *, dh: int, dc: int, k: int, section: str | None = None, input: str = "probs",
             temperature: float = 1.0, eps: float = 1e-8, epochs: int = 1, max_steps: int | None = None,
             batch_size: int = 1024, lr: float = 1e-3, alpha: float = 1.0, beta: float = 0.25,
             seed: int = 0, init_sample: int = 16384, kmeans_iters: int = 10, init: str = "pca_rot",
             dead_window: int = 50, straight_through: bool = True, param_dtype: str = "f32",
             entropy: bool = False, store_encoder: bool = False, device: Any = None,
             progress: bool = True, log: TrainLog | None = None) -> VQCodec:
    """Train a :class:`~codec.codecs.vq.VQCodec` on soft labels (Eq. 7) and return it.

    ``data``: an array / memmap / tensor (rows, C), a .ddz path or DDZFile with
    ``section=``, a callable returning an iterable of batches, or a Source.  ``input`` /
    ``temperature`` declare what the rows are (probabilities, or logits to which
    ``softmax(z / temperature)`` is applied).  Deterministic for a given ``seed`` on CPU.
    """
    with opened_source(data, section) as src:
        C = src.classes
        codec = VQCodec(C, dh, dc, k, eps=eps, input=input, temperature=temperature, param_dtype=param_dtype,
                        entropy=entropy, store_encoder=store_encoder)
        if init not in ("pca", "pca_rot", "random"):
            raise InvalidInputError(f"train_vq: init must be 'pca', 'pca_rot' or 'random', got {init!r}")
        epochs, batch_size = int_arg("train_vq: epochs", epochs, 0), int_arg("train_vq: batch_size", batch_size, 1)
        max_steps = None if max_steps is None else int_arg("train_vq: max_steps", max_steps, 0)
        init_sample = int_arg("train_vq: init_sample", init_sample, 1)
        kmeans_iters = int_arg("train_vq: kmeans_iters", kmeans_iters, 0)
        dead_window = int_arg("train_vq: dead_window", dead_window, 0)
        seed = int_arg("train_vq: seed", seed, 0, 2**64 - 1)
        lr = float_arg("train_vq: lr", lr, 0, lo_open=True)
        alpha, beta = float_arg("train_vq: alpha", alpha, 0), float_arg("train_vq: beta", beta, 0)
        if not isinstance(straight_through, bool):
            raise InvalidInputError(f"train_vq: straight_through must be True or False, got {straight_through!r}")
        dev = parse_device(device)
        gen = torch.Generator().manual_seed(seed)
        log = log if log is not None else TrainLog()

        # -- initialisation --------------------------------------------------------------------------
        ys = to_probs(src.sample(init_sample, gen), input, temperature, classes=C)
        if init == "random":
            P = torch.randn(C, dh, generator=gen) / math.sqrt(C)
        else:
            P = _init_projection(ys, dh, init == "pca_rot", gen)
        D = P.T.contiguous().clone()
        segs = (ys @ P).reshape(-1, dc)
        if segs.shape[0] > 65536:
            segs = segs[torch.randperm(segs.shape[0], generator=gen)[:65536]]
        cb = lloyd(segs, kmeans_pp(segs, k, gen), kmeans_iters)

        P = torch.nn.Parameter(P.to(dev))
        D = torch.nn.Parameter(D.to(dev))
        mu = torch.nn.Parameter(cb.to(dev))
        opt = torch.optim.Adam([P, D, mu], lr=lr)
        usage = torch.zeros(k, dtype=torch.int64, device=dev)
        total = None
        if src.rows is not None:
            total = epochs * ((src.rows + batch_size - 1) // batch_size)
            if max_steps is not None:
                total = min(total, max_steps)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="train vq", unit="batch", leave=False)
        step = 0
        try:
            for _ in range(epochs):
                for batch in src.batches(batch_size, gen):
                    if max_steps is not None and step >= max_steps:
                        break
                    y = to_probs(batch, input, temperature, classes=C).to(dev)
                    h = (y @ P).reshape(-1, dc)
                    with torch.no_grad():
                        q = nearest_code(h.detach(), mu.detach())
                        usage += torch.bincount(q, minlength=k)
                    muq = torch.nn.functional.embedding(q, mu)  # deterministic backward on CPU (mu[q] is not)
                    loss, l_vq, l_rec = cache_loss(y, h, muq, D, alpha=alpha, beta=beta, straight_through=straight_through)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    if dead_window and step % dead_window == 0:
                        with torch.no_grad():
                            dead = (usage == 0).nonzero().flatten()
                            if dead.numel():
                                pick = torch.randint(h.shape[0], (dead.numel(),), generator=gen).to(dev)
                                mu.data[dead] = h.detach()[pick]
                                log.reseeded += int(dead.numel())
                            usage.zero_()
                    if step % 10 == 0 or step == 1:
                        log.losses.append((step, float(loss.detach()), float(l_rec.detach()), float(l_vq.detach())))
                    if bar is not None:
                        bar.update(1)
                        if step % 10 == 0:
                            bar.set_postfix(rec=f"{float(l_rec.detach()):.3g}", vq=f"{float(l_vq.detach()):.3g}")
                if max_steps is not None and step >= max_steps:
                    break
        finally:
            if bar is not None:
                bar.close()
        log.steps = step
        # order codes by how often the init sample uses them (most used first): the decoded labels
        # do not change, but small indices become frequent, which the entropy-coded index stream
        # (zstd over byte planes) turns into fewer bits per index.
        with torch.no_grad():
            Pc, muc = P.detach().cpu(), mu.detach().cpu()
            q = nearest_code((ys @ Pc).reshape(-1, dc), muc)
            cnt = torch.bincount(q, minlength=k)
            order = torch.sort(-cnt, stable=True).indices
            muc = muc[order].contiguous()
            log.usage = cnt[order]
        codec.set_params(encoder=Pc, decoder=D.detach().cpu(), codebook=muc)
        codec.rounded()
        codec.train_log = log
        return codec
