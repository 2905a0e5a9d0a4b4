"""Streaming training of the VQ autoencoder (paper Eq. 2-7).

Loss (Eq. 7), per mini-batch (mean over rows, sum over segments / classes)::

    L_cache = alpha * sum_i ( ||sg[h(i)] - mu_q(i)||^2 + beta * ||h(i) - sg[mu_q(i)]||^2 )   # L_VQ
              + ||yhat - y||^2                                                                # L_rec

``y`` are the rows in the codec's ``space`` (probabilities at the temperature, or row-centred
tempered logits, see :func:`codec.codecs.vq.to_space`).  ``loss="kl"`` replaces L_rec by
``KL(p || p~)`` between the label distribution and the decoded one (Eq. 9 renormalisation in
probability space, softmax in logit space).  Training runs in a rescaled space: the rows are
multiplied by ``s = 1 / std`` (their spread around the mean row, from the init sample) so that
Adam's step size fits the data whatever the temperature (at T = 20 probabilities differ from
uniform by ~1e-4); afterwards ``P <- s P`` and ``D <- D / s``, which encodes and decodes
exactly as the trained rescaled model.  ``refine=True`` ends with Lloyd steps on the codebook
and a least-squares decoder ``D = argmin ||hhat D - y||^2`` (small ridge) on the init sample.

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

With ``distributed=True`` under ``torch.distributed`` (torchrun; gloo on CPU, NCCL on GPUs) every rank draws the same
batches and computes the loss gradient, the code usage and the Lloyd statistics of a fixed
split of each batch into ``grad_chunks`` chunks (rank r takes chunks ``r*G//K .. (r+1)*G//K``);
the per-chunk results are summed in chunk order 0..G-1 by passing the running sum from rank to
rank (:func:`ordered_sum`) and broadcast.  The sum is the same floating-point sequence for any
number of ranks K <= G, so every rank holds the same codec and it is bitwise identical for any K
(given the same data, seed and per-chunk arithmetic, e.g. the same thread count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._args import float_arg, int_arg, parse_device
from ..codecs.vq import VQCodec, nearest_code, to_space
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


class ChunkPlan:
    """Which of ``chunks`` fixed chunks of a batch this rank computes, and their ordered sum."""

    def __init__(self, chunks: int):
        import torch.distributed as dist

        self.dist = dist
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.chunks = chunks
        self.mine = range(self.rank * chunks // self.world, (self.rank + 1) * chunks // self.world)
        self.device = comm_device()

    @staticmethod
    def bounds(n: int, chunks: int, j: int) -> tuple[int, int]:
        return n * j // chunks, n * (j + 1) // chunks

    def ordered_sum(self, parts: list[torch.Tensor], numel: int, device) -> torch.Tensor:
        """``((0 + c_0) + c_1) + ... + c_{G-1}`` over all ranks' chunk results, on every rank."""
        total = torch.zeros(numel, dtype=torch.float32, device=self.device)
        if self.rank > 0:
            self.dist.recv(total, src=self.rank - 1)
        for v in parts:
            total += v.to(self.device)
        if self.rank < self.world - 1:
            self.dist.send(total, dst=self.rank + 1)
        self.dist.broadcast(total, src=self.world - 1)
        return total.to(device)


def comm_device() -> torch.device:
    """Where collectives of the default process group run: the current GPU for NCCL, else the CPU."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def lloyd_chunked(x: torch.Tensor, centres: torch.Tensor, iters: int, plan: ChunkPlan) -> torch.Tensor:
    """:func:`lloyd` with each step's sums and counts computed chunk by chunk across ranks."""
    c = centres.clone()
    k, dc = c.shape
    for _ in range(iters):
        parts = []
        for j in plan.mine:
            a, b = plan.bounds(x.shape[0], plan.chunks, j)
            q = nearest_code(x[a:b], c)
            sums = torch.zeros_like(c).index_add_(0, q, x[a:b])
            parts.append(torch.cat([sums.reshape(-1), torch.bincount(q, minlength=k).to(torch.float32)]))
        tot = plan.ordered_sum(parts, k * dc + k, "cpu")
        sums, cnt = tot[: k * dc].reshape(k, dc), tot[k * dc:]
        nz = cnt > 0
        c[nz] = sums[nz] / cnt[nz, None]
    return c


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
               beta: float = 0.25, straight_through: bool = True, recon=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 7, ``L_cache = alpha * L_VQ + L_rec`` for one mini-batch of ``n`` labels.

    ``y`` (n, C) target probabilities; ``h`` (n*m, dc) encoder segments (Eq. 2-3); ``muq``
    (n*m, dc) their nearest codes (Eq. 4); ``decoder`` D (dh, C) (Eq. 6).
    ``L_VQ = (1/n) sum_i ||sg[h(i)] - mu_q(i)||^2 + beta ||h(i) - sg[mu_q(i)]||^2`` (sum over the
    n*m segments) and ``L_rec = (1/n) sum_rows ||yhat - y||^2`` with ``yhat = [mu_q] D``; the
    decoder sees ``h + sg[mu_q - h]`` (straight-through) or ``sg[mu_q]``.  ``recon(yhat, y)``,
    when given, replaces the squared error (a per-batch scalar, e.g. a KL divergence).
    Returns ``(L_cache, L_VQ, L_rec)``."""
    n = y.shape[0]
    l_vq = (((h.detach() - muq) ** 2).sum() + beta * ((h - muq.detach()) ** 2).sum()) / n
    hq = h + (muq - h).detach() if straight_through else muq.detach()
    yhat = hq.reshape(n, -1) @ decoder
    l_rec = ((yhat - y) ** 2).sum(1).mean() if recon is None else recon(yhat, y)
    return alpha * l_vq + l_rec, l_vq, l_rec


def _chunked_step(y, P, D, mu, usage, plan: ChunkPlan, dc: int, alpha, beta, straight_through, recon=None):
    """One batch's gradients, usage and losses, chunk by chunk over the ranks, summed in chunk order;
    sets ``.grad`` of P, D, mu and adds to ``usage`` (identical on every rank)."""
    n, k = y.shape[0], mu.shape[0]
    params = (P, D, mu)
    sizes = [p.numel() for p in params]
    numel = sum(sizes) + 3 + k
    parts = []
    for j in plan.mine:
        a, b = plan.bounds(n, plan.chunks, j)
        if a == b:
            continue
        yj = y[a:b]
        h = (yj @ P).reshape(-1, dc)
        with torch.no_grad():
            q = nearest_code(h.detach(), mu.detach())
        muq = torch.nn.functional.embedding(q, mu)
        loss, l_vq, l_rec = cache_loss(yj, h, muq, D, alpha=alpha, beta=beta, straight_through=straight_through, recon=recon)
        w = (b - a) / n  # the batch loss is the row-weighted mean of the chunk losses
        grads = torch.autograd.grad(loss * w, params)
        stats = torch.stack([loss.detach(), l_vq.detach(), l_rec.detach()]) * w
        parts.append(torch.cat([*(g.reshape(-1) for g in grads), stats, torch.bincount(q, minlength=k).to(torch.float32)]))
    tot = plan.ordered_sum(parts, numel, y.device)
    at = 0
    for p, size in zip(params, sizes):
        p.grad = tot[at: at + size].reshape(p.shape).clone()
        at += size
    loss, l_vq, l_rec = tot[at], tot[at + 1], tot[at + 2]
    usage += tot[at + 3:].round().to(torch.int64)
    return loss, l_vq, l_rec


LOSSES = ("mse", "kl")


def _recon_loss(loss: str, space: str, scale: float, eps: float):
    """The L_rec of ``loss`` on rescaled rows (``yhat`` and ``y`` are ``scale`` x the codec's
    space); None for Eq. 7's squared error."""
    if loss == "mse":
        return None

    def kl(yhat, y):
        if space == "logits":
            p = torch.softmax(y / scale, 1)
            return (p * (torch.log_softmax(y / scale, 1) - torch.log_softmax(yhat / scale, 1))).sum(1).mean()
        p = y / scale
        q = (yhat / scale).clamp_min(eps)  # Eq. 9
        q = q / q.sum(1, keepdim=True)
        return torch.where(p > 0, p * (torch.log(p.clamp_min(1e-45)) - torch.log(q)), torch.zeros_like(p)).sum(1).mean()

    return kl


def _refine(x: torch.Tensor, P: torch.Tensor, mu: torch.Tensor, dc: int, iters: int, ridge: float = 1e-6):
    """Lloyd steps on the codebook for the encoder's segments of ``x``, then the least-squares
    decoder ``D = argmin ||hhat D - x||^2 + ridge * tr(hhat^T hhat) / dh * ||D||^2``."""
    n = x.shape[0]
    segs = (x @ P).reshape(-1, dc)
    mu = lloyd(segs, mu, iters)
    hq = mu[nearest_code(segs, mu)].reshape(n, -1).double()
    G = hq.T @ hq
    G += ridge * G.diagonal().mean() * torch.eye(G.shape[0], dtype=G.dtype)
    D = torch.linalg.solve(G, hq.T @ x.double())
    return mu, D.float()


def train_vq(data: Any, *, dh: int, dc: int, k: int, section: str | None = None, input: str = "probs",
             temperature: float = 1.0, eps: float = 1e-8, epochs: int = 1, max_steps: int | None = None,
             batch_size: int = 1024, lr: float = 1e-3, alpha: float = 1.0, beta: float = 0.25,
             seed: int = 0, init_sample: int = 16384, kmeans_iters: int = 10, init: str = "pca_rot",
             dead_window: int = 50, straight_through: bool = True, param_dtype: str = "f32",
             entropy: bool = False, store_encoder: bool = False, space: str = "probs", loss: str = "mse",
             refine: bool = False, encode_dtype: str = "f32", device: Any = None,
             progress: bool = True, log: TrainLog | None = None, distributed: bool = False,
             grad_chunks: int = 8) -> VQCodec:
    """Train a :class:`~codec.codecs.vq.VQCodec` on soft labels (Eq. 7) and return it.

    ``data``: an array / memmap / tensor (rows, C), a .ddz path or DDZFile with
    ``section=``, a callable returning an iterable of batches, or a Source.  ``input`` /
    ``temperature`` declare what the rows are (probabilities, or logits to which
    ``softmax(z / temperature)`` is applied); ``space`` what the autoencoder reconstructs,
    ``loss`` its reconstruction term ("mse": Eq. 7, "kl"), ``refine`` the closing Lloyd +
    least-squares step (see the module docstring).  The training options are kept in the
    codec's config (``train``).  Deterministic for a given ``seed`` on CPU.
    ``distributed=True`` (an initialised ``torch.distributed`` process group) splits the work of
    each batch over the ranks in ``grad_chunks`` fixed chunks (see the module docstring): call it
    on every rank with the same data; each returns the same codec, identical for any world size.
    Without it no collective runs, so one rank of a job may train alone.
    """
    with opened_source(data, section) as src:
        C = src.classes
        codec = VQCodec(C, dh, dc, k, eps=eps, input=input, temperature=temperature, param_dtype=param_dtype,
                        entropy=entropy, store_encoder=store_encoder, space=space, encode_dtype=encode_dtype)
        if init not in ("pca", "pca_rot", "random"):
            raise InvalidInputError(f"train_vq: init must be 'pca', 'pca_rot' or 'random', got {init!r}")
        if loss not in LOSSES:
            raise InvalidInputError(f"train_vq: loss must be one of {LOSSES}, got {loss!r}")
        if not isinstance(refine, bool):
            raise InvalidInputError(f"train_vq: refine must be True or False, got {refine!r}")
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
        grad_chunks = int_arg("train_vq: grad_chunks", grad_chunks, 1)
        dev = parse_device(device)
        if not isinstance(distributed, bool):
            raise InvalidInputError(f"train_vq: distributed must be True or False, got {distributed!r}")
        if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise InvalidInputError("train_vq: distributed=True needs an initialised torch.distributed process group (torchrun)")
        plan = ChunkPlan(grad_chunks) if distributed else None
        progress = progress and (plan is None or plan.rank == 0)
        gen = torch.Generator().manual_seed(seed)
        log = log if log is not None else TrainLog()
        m = dh // dc
        to_rows = lambda b: to_space(b, space, input, temperature, classes=C)  # noqa: E731

        # -- initialisation (in the rescaled space, see the module docstring) -----------------------
        ys = to_rows(src.sample(init_sample, gen))
        spread = float((ys - ys.mean(0)).square().mean().sqrt())
        scale = 1.0 / spread if spread > 0 and math.isfinite(1.0 / spread) else 1.0
        ys = ys * scale
        if init == "random":
            P = torch.randn(C, dh, generator=gen) / math.sqrt(C)
        else:
            P = _init_projection(ys, dh, init == "pca_rot", gen)
        D = P.T.contiguous().clone()
        segs = (ys @ P).reshape(-1, dc)
        if segs.shape[0] > 65536:
            segs = segs[torch.randperm(segs.shape[0], generator=gen)[:65536]]
        seeds = kmeans_pp(segs, k, gen)
        cb = lloyd(segs, seeds, kmeans_iters) if plan is None else lloyd_chunked(segs, seeds, kmeans_iters, plan)

        P = torch.nn.Parameter(P.to(dev))
        D = torch.nn.Parameter(D.to(dev))
        mu = torch.nn.Parameter(cb.to(dev))
        opt = torch.optim.Adam([P, D, mu], lr=lr)
        recon = _recon_loss(loss, space, scale, eps)
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
                    y = to_rows(batch).to(dev) * scale
                    opt.zero_grad(set_to_none=True)
                    if plan is None:
                        h = (y @ P).reshape(-1, dc)
                        with torch.no_grad():
                            q = nearest_code(h.detach(), mu.detach())
                            usage += torch.bincount(q, minlength=k)
                        muq = torch.nn.functional.embedding(q, mu)  # deterministic backward on CPU (mu[q] is not)
                        lc, l_vq, l_rec = cache_loss(y, h, muq, D, alpha=alpha, beta=beta, straight_through=straight_through,
                                                     recon=recon)
                        lc.backward()
                    else:
                        lc, l_vq, l_rec = _chunked_step(y, P, D, mu, usage, plan, dc, alpha, beta, straight_through, recon)
                    opt.step()
                    step += 1
                    if dead_window and step % dead_window == 0:
                        with torch.no_grad():
                            dead = (usage == 0).nonzero().flatten()
                            if dead.numel():
                                pick = torch.randint(y.shape[0] * m, (dead.numel(),), generator=gen).to(dev)
                                if plan is None:
                                    mu.data[dead] = h.detach()[pick]
                                else:  # the picked segments h(i), computed on every rank
                                    rows = (y[pick // m] @ P.detach()).reshape(-1, m, dc)
                                    mu.data[dead] = rows[torch.arange(len(pick), device=dev), pick % m]
                                log.reseeded += int(dead.numel())
                            usage.zero_()
                    if step % 10 == 0 or step == 1:
                        log.losses.append((step, float(lc.detach()), float(l_rec.detach()), float(l_vq.detach())))
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
            Pc, muc, Dc = P.detach().cpu(), mu.detach().cpu(), D.detach().cpu()
            if refine:  # on the init sample, the same on every rank
                muc, Dc = _refine(ys, Pc, muc, dc, max(kmeans_iters, 1))
            q = nearest_code((ys @ Pc).reshape(-1, dc), muc)
            cnt = torch.bincount(q, minlength=k)
            order = torch.sort(-cnt, stable=True).indices
            muc = muc[order].contiguous()
            log.usage = cnt[order]
        codec.set_params(encoder=Pc * scale, decoder=Dc / scale, codebook=muc)
        codec.rounded()
        codec.train = {"loss": loss, "refine": refine, "init": init, "epochs": epochs, "steps": step,
                       "batch_size": batch_size, "lr": lr, "alpha": alpha, "beta": beta, "seed": seed,
                       "init_sample": init_sample, "kmeans_iters": kmeans_iters, "dead_window": dead_window,
                       "straight_through": straight_through, "scale": scale}
        codec.train_log = log
        return codec
