"""Tucker / HOSVD compression of latent videos (LVDD's latent compression).

The paper (LVDD, B.4) compresses the selected latents ``[N, T, C, H, W]`` with HOSVD at a
"compression rate" 0.75: in its code the ranks are ``[n, int(0.75 T), C, int(0.75 H),
int(0.75 W)]`` on chunks of ``n <= 400`` samples (``[n, 12, 4, 10, 10]`` for MiniUCF), and
the chunk (sample) axis keeps full rank.

What this module computes, per chunk ``X`` (``n`` samples):

* HOSVD (default): for every mode ``k`` with ``r_k < d_k`` the factor ``U_k`` holds the
  top-``r_k`` eigenvectors of the unfolding's Gram matrix ``X_(k) X_(k)^T`` (the left
  singular vectors of ``X_(k)``, i.e. a true truncated HOSVD computed with one small
  ``eigh`` per mode), and the core is ``G = X x_k U_k^T`` over those modes.
* HOOI (``method="hooi"``): HOSVD start, then alternating updates of each ``U_k`` from
  ``X`` projected on the other factors, stopping like tensorly (change of the relative
  reconstruction error below ``tol``, at most ``n_iter`` sweeps).

A full-rank mode (the chunk axis, and ``C`` by default) has an orthogonal ``d x d``
factor; projecting on it and back is the identity, so such factors are not computed or
stored: the reconstruction is the same as the paper's code (which stores an ``n x n``
``U_N`` per chunk) without its ``n^2`` floats, and each sample's core row stands alone,
so one sample is rebuilt without touching its chunk mates.

Stored parts: ``core`` ``[N, r_1, ..., r_m]`` (rows = samples, so a reader can fetch
single samples) and ``factor_{k}`` ``[n_chunks, d_k, r_k]`` for every truncated mode
``k``; all at fp32 (paper), fp16 or bf16. Reconstruction is torch code that runs unchanged
on CPU or CUDA, per sample, per chunk or whole.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from .._args import float_arg, int_arg
from ..errors import InvalidInputError, LimitError
from ._tensors import as_tensor
from .base import BudgetTerm, Codec, Part, PartSpec, register_codec

__all__ = [
    "TuckerCodec",
    "tucker_ranks",
    "hosvd",
    "reconstruct",
    "reconstruct_rows",
]

_STORE = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
_METHODS = ("hosvd", "hooi")

#: Decode refuses factors that expand one sample's core more than this many times (a rank-1
#: Tucker of a 32x32x32 latent is 32768x; LVDD's rate 0.75 is about 2.4x), the same bound the
#: format puts on zstd, so a small hostile file cannot make a reader allocate gigabytes.
MAX_EXPANSION = 32768
#: ... nor rebuild a single sample of more than this many elements (1 GiB of fp32).
MAX_SAMPLE_ELEMENTS = 1 << 28


def _check_rate(rate: Any) -> float:
    return float_arg("Tucker compression rate", rate, 0, 1, lo_open=True)


def tucker_ranks(shape: Sequence[int], rate: float = 0.75, keep: Sequence[int] | None = None,
                 ranks: Sequence[int] | None = None) -> list[int]:
    """Ranks of the non-sample axes ``shape[1:]`` of a ``[N, ...]`` tensor.

    ``rank_k = max(1, int(rate * d_k))`` as the LVDD code computes it (``int(0.75 * 14) = 10``),
    except for axes in ``keep`` (absolute axis numbers; default: axis 2 = C of a 5-D
    ``[N, T, C, H, W]`` tensor, none otherwise), which keep full rank. Explicit ``ranks``
    (one per non-sample axis, ``None``/``-1`` = full) override ``rate``.
    """
    shape = [int(s) for s in shape]
    if len(shape) < 2:
        raise InvalidInputError(f"Tucker needs a tensor with a sample axis and at least one more axis, got shape {shape}")
    dims = shape[1:]
    if ranks is not None:
        ranks = list(ranks)
        if len(ranks) != len(dims):
            raise InvalidInputError(f"Tucker ranks {ranks} must give one rank per non-sample axis of shape {shape}")
        out = []
        for d, r in zip(dims, ranks):
            r = d if r is None or int(r) < 0 else int(r)
            if not 1 <= r <= d:
                raise InvalidInputError(f"Tucker rank {r} out of range 1..{d} for shape {shape}")
            out.append(r)
        return out
    _check_rate(rate)
    if keep is None:
        keep = (2,) if len(shape) == 5 else ()
    kept = {int(k) for k in keep}
    for k in kept:
        if not 1 <= k < len(shape):
            raise InvalidInputError(f"Tucker keep axis {k} is not a non-sample axis of shape {shape}")
    # the small epsilon keeps int(0.75 * 16) == 12 exact even with float noise
    return [d if (i + 1) in kept else max(1, min(d, int(float(rate) * d + 1e-9))) for i, d in enumerate(dims)]


def _mode_apply(x: torch.Tensor, axis: int, mat: torch.Tensor) -> torch.Tensor:
    """``x`` with axis ``axis`` (size a) replaced by ``mat``'s rows: ``y[.., i, ..] = sum_j mat[i, j] x[.., j, ..]``.

    ``mat`` is ``[b, a]`` (shared) or ``[B, b, a]`` (one per row of axis 0 of ``x``).
    """
    y = x.movedim(axis, -1)
    if mat.dim() == 2:
        y = y @ mat.transpose(0, 1)
    else:
        lead = y.shape[:-1]
        y = torch.bmm(y.reshape(y.shape[0], -1, y.shape[-1]), mat.transpose(1, 2))
        y = y.reshape(*lead, mat.shape[1])
    return y.movedim(-1, axis)


def _top_eigvecs(gram: torch.Tensor, r: int) -> torch.Tensor:
    """Top-``r`` eigenvectors (columns, descending eigenvalue) of a symmetric PSD matrix, sign-fixed."""
    g = gram.to(torch.float64)
    g = 0.5 * (g + g.T)
    _, vecs = torch.linalg.eigh(g)
    u = vecs[:, -r:].flip(1)
    # deterministic signs: the largest-magnitude entry of each column is positive
    idx = u.abs().argmax(dim=0)
    signs = torch.sign(u[idx, torch.arange(u.shape[1], device=u.device)])
    signs[signs == 0] = 1
    return u * signs


def _gram(x: torch.Tensor, axis: int) -> torch.Tensor:
    xk = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return xk @ xk.T


def hosvd(
    x: torch.Tensor,
    ranks: Sequence[int],
    *,
    method: str = "hosvd",
    n_iter: int = 100,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Tucker decomposition of one chunk ``x`` ``[n, d_1, ..., d_m]`` with ``ranks`` for ``d_1..d_m``.

    The chunk axis 0 keeps full rank (identity factor). Returns ``(core, factors)`` where
    ``factors`` maps each truncated axis ``k`` to ``U_k`` ``[d_k, r_k]`` (orthonormal columns)
    and ``core = x x_k U_k^T`` (fp32, on ``x``'s device). Full-rank axes are left out of
    ``factors`` (identity).

    ``method="hosvd"``: truncated HOSVD (De Lathauwer et al. 2000): ``U_k`` = the top-``r_k``
    left singular vectors of the mode-``k`` unfolding ``X_(k)`` (eigenvectors of
    ``X_(k) X_(k)^T``), which gives ``||X - X_hat||^2 <= sum_k sum_{i > r_k} sigma_{k,i}^2``.
    ``method="hooi"``: HOSVD followed by up to ``n_iter`` alternating (HOOI) sweeps, stopping
    when the relative error changes by less than ``tol``; ``n_iter=0`` is plain HOSVD (as
    tensorly's ``n_iter_max=0``).
    """
    if method not in _METHODS:
        raise InvalidInputError(f"Tucker method must be one of {_METHODS}, got {method!r}")
    n_iter = int_arg("Tucker n_iter", n_iter)
    if x.dim() != len(ranks) + 1:
        raise InvalidInputError(f"Tucker ranks {list(ranks)} do not match a chunk of shape {tuple(x.shape)}")
    ranks = [int_arg(f"Tucker rank for axis {k} (chunk shape {tuple(x.shape)})", r, 1, x.shape[k])
             for k, r in enumerate(ranks, start=1)]
    x = x.to(torch.float32)
    axes = [k for k in range(1, x.dim()) if ranks[k - 1] < x.shape[k]]
    factors: dict[int, torch.Tensor] = {}
    for k in axes:
        factors[k] = _top_eigvecs(_gram(x, k), ranks[k - 1]).to(torch.float32)

    def project(t: torch.Tensor, skip: int | None = None) -> torch.Tensor:
        # apply the most size-reducing factors first
        order = sorted((k for k in axes if k != skip), key=lambda k: factors[k].shape[1] / factors[k].shape[0])
        for k in order:
            t = _mode_apply(t, k, factors[k].T)
        return t

    if method == "hooi" and axes and n_iter > 0:
        norm_x = float(torch.linalg.vector_norm(x))
        prev = None
        for _ in range(n_iter):
            for k in axes:
                y = project(x, skip=k)
                factors[k] = _top_eigvecs(_gram(y, k), ranks[k - 1]).to(torch.float32)
            core = project(x)
            norm_c = float(torch.linalg.vector_norm(core))
            err = math.sqrt(abs(norm_x**2 - norm_c**2)) / norm_x if norm_x > 0 else 0.0
            if prev is not None and abs(prev - err) < tol:
                break
            prev = err
        return core, factors
    return project(x), factors


def reconstruct(core: torch.Tensor, factors: Mapping[int, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``core x_k U_k`` over the given factors (``[d, r]`` shared or ``[B, d, r]`` per row)."""
    y = core.to(dtype)
    for k, u in sorted(factors.items(), key=lambda kv: -kv[1].shape[-1] / kv[1].shape[-2]):
        y = _mode_apply(y, k, u.to(device=y.device, dtype=dtype))
    return y


def reconstruct_rows(
    core_rows: torch.Tensor,
    factor_parts: Mapping[int, torch.Tensor],
    sample_ids: Sequence[int] | torch.Tensor,
    chunk_size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Rebuild the samples ``sample_ids`` from their core rows ``core_rows`` ``[B, r...]``.

    ``factor_parts[k]`` is the stored ``[n_chunks, d_k, r_k]`` factor stack; each sample
    uses its chunk's factor (``sample_id // chunk_size``). Samples of one chunk share a
    matmul; mixed chunks go through a batched matmul. Runs on the device of ``core_rows``.
    """
    ids = torch.as_tensor(sample_ids, dtype=torch.long).reshape(-1)
    if ids.numel() != core_rows.shape[0]:
        raise InvalidInputError(f"{ids.numel()} sample ids for {core_rows.shape[0]} core rows")
    chunks = ids // int(chunk_size)
    n_chunks = min((int(f.shape[0]) for f in factor_parts.values()), default=None)
    if ids.numel() and (int(ids.min()) < 0 or (n_chunks is not None and int(chunks.max()) >= n_chunks)):
        raise InvalidInputError(f"sample ids {int(ids.min())}..{int(ids.max())} fall outside the {n_chunks} stored chunks "
                                f"of {chunk_size} samples")
    dev = core_rows.device
    if chunks.numel() and bool((chunks == chunks[0]).all()):
        c = int(chunks[0])
        facs = {k: f[c] for k, f in factor_parts.items()}
    else:
        cidx = chunks.to(dev)
        facs = {k: f.to(dev)[cidx] for k, f in factor_parts.items()}
    return reconstruct(core_rows.to(dev), facs, dtype)


@register_codec
class TuckerCodec(Codec):
    """Chunked HOSVD/HOOI of ``[N, ...]`` latents (LVDD's Tucker compression).

    Args:
        rate: compression rate for the truncated axes (paper: 0.75).
        ranks: explicit ranks for the non-sample axes (overrides ``rate``).
        keep: axes kept at full rank (default: C of ``[N, T, C, H, W]``).
        chunk_size: samples per chunk; factors are fitted per chunk (paper: 400).
        method: ``"hosvd"`` (default, true HOSVD) or ``"hooi"``.
        n_iter, tol: HOOI stopping rule (tensorly's defaults 100 / 1e-4).
        dtype: storage precision of core and factors, ``"f32"`` (paper), ``"f16"``, ``"bf16"``.
    """

    codec_id = "tucker"

    def __init__(self, rate: float = 0.75, ranks: Sequence[int] | None = None, keep: Sequence[int] | None = None,
                 chunk_size: int = 400, method: str = "hosvd", n_iter: int = 100, tol: float = 1e-4,
                 dtype: str = "f32"):
        if method not in _METHODS:
            raise InvalidInputError(f"Tucker method must be one of {_METHODS}, got {method!r}")
        if dtype not in _STORE:
            raise InvalidInputError(f"Tucker storage dtype must be one of {sorted(_STORE)}, got {dtype!r}")
        for name, seq in (("ranks", ranks), ("keep", keep)):
            if seq is not None and not isinstance(seq, (list, tuple)):
                raise InvalidInputError(f"Tucker {name} must be a list, got {seq!r:.80}")
        self.rate = _check_rate(rate)
        self.ranks = None if ranks is None else [None if r is None else int_arg("Tucker rank", r, -1) for r in ranks]
        self.keep = None if keep is None else [int_arg("Tucker keep axis", k) for k in keep]
        self.chunk_size = int_arg("Tucker chunk_size", chunk_size, 1)
        self.method = method
        self.n_iter = int_arg("Tucker n_iter (0: plain HOSVD)", n_iter)
        self.tol = float_arg("Tucker tol", tol, 0)
        self.dtype = dtype

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "rate": self.rate, "ranks": self.ranks, "keep": self.keep,
                "chunk_size": self.chunk_size, "method": self.method, "n_iter": self.n_iter,
                "tol": self.tol, "dtype": self.dtype}

    def ranks_for(self, shape: Sequence[int]) -> list[int]:
        """Ranks of the non-sample axes for a tensor of ``shape``."""
        return tucker_ranks(shape, self.rate, self.keep, self.ranks)

    def encoded_parts(self, shape: Any) -> dict[str, PartSpec]:
        """``core`` ``[N, r...]`` (per row: one core row per sample) and ``factor_K`` ``[n_chunks, d_K, r_K]``."""
        ranks = self.ranks_for(shape)
        n = int(shape[0])
        n_chunks = -(-n // self.chunk_size)
        out = {"core": PartSpec(self.dtype, (n, *ranks), per_row=True)}
        for k, (d, r) in enumerate(zip(shape[1:], ranks), start=1):
            if r < d:
                out[f"factor_{k}"] = PartSpec(self.dtype, (n_chunks, int(d), r))
        return out

    def budget_terms(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, BudgetTerm]:
        """The paper stores core and factors in fp32: 4 B per element (B.4)."""
        out = {}
        for part, shape in shapes.items():
            elems = 4.0 * math.prod(shape)
            if part == "core":
                out[part] = BudgetTerm("HOSVD core (video paper B.4): N*prod(ranks) floats x 4 B (fp32, as the paper "
                                       "stores)", elems, formula_dtype="f32")
            elif part.startswith("factor_"):
                out[part] = BudgetTerm("HOSVD factor U_k per chunk: n_chunks*d*r floats x 4 B (the sample-axis factor, "
                                       "n x n per chunk in the paper's code, is the identity and not stored)", elems,
                                       formula_dtype="f32")
        return out

    def encode(self, x: Any, progress: Any = None) -> dict[str, Part]:
        t = as_tensor(x, "TuckerCodec.encode")
        if not t.is_floating_point():
            raise InvalidInputError(f"Tucker needs floating-point latents, got {t.dtype}")
        if t.dim() < 2 or t.shape[0] == 0 or t.numel() == 0:
            raise InvalidInputError(f"Tucker needs a non-empty [N, ...] tensor, got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise InvalidInputError("Tucker: latents hold NaN or infinity")
        ranks = self.ranks_for(t.shape)
        sd = _STORE[self.dtype]
        n = t.shape[0]
        cores: list[torch.Tensor] = []
        facs: dict[int, list[torch.Tensor]] = {}
        starts = range(0, n, self.chunk_size)
        for s in (progress(starts) if progress is not None else starts):
            core, factors = hosvd(t[s:s + self.chunk_size], ranks, method=self.method, n_iter=self.n_iter, tol=self.tol)
            cores.append(core.to(sd))
            for k, u in factors.items():
                facs.setdefault(k, []).append(u.to(sd))
        core = torch.cat(cores, 0)
        if not bool(torch.isfinite(core.float()).all()):
            raise InvalidInputError(f"Tucker core overflows storage dtype {self.dtype}; use dtype='f32' or 'bf16'")
        parts = {"core": Part(core.contiguous())}
        for k, lst in sorted(facs.items()):
            parts[f"factor_{k}"] = Part(torch.stack(lst, 0).contiguous())
        return parts

    @staticmethod
    def factor_parts(parts: Mapping[str, Any]) -> dict[int, torch.Tensor]:
        """The ``factor_{k}`` parts as ``{k: [n_chunks, d_k, r_k] tensor}``."""
        out = {}
        for name, arr in parts.items():
            if name.startswith("factor_"):
                try:
                    k = int(name[len("factor_"):])
                except ValueError:
                    raise InvalidInputError(f"Tucker part name {name!r} is not factor_<axis>") from None
                f = as_tensor(arr, f"Tucker part {name!r}")
                if f.dim() != 3:
                    raise InvalidInputError(f"Tucker part {name!r} must be [n_chunks, d, r], got shape {tuple(f.shape)}")
                out[k] = f
        return out

    def check_parts(self, core_shape: Sequence[int], factors: Mapping[int, torch.Tensor]) -> None:
        """Check that stored parts fit together, before anything is allocated.

        Raises :class:`InvalidInputError` when the factors do not match the core and
        :class:`LimitError` when they would expand a sample more than :data:`MAX_EXPANSION`
        times or beyond :data:`MAX_SAMPLE_ELEMENTS` elements.
        """
        if len(core_shape) < 2:
            raise InvalidInputError(f"Tucker core must be [N, ...] with at least 2 axes, got shape {tuple(core_shape)}")
        n = int(core_shape[0])
        n_chunks = -(-n // self.chunk_size)
        for k, f in factors.items():
            if not 1 <= k < len(core_shape):
                raise InvalidInputError(f"Tucker factor_{k} names no axis of a core of shape {tuple(core_shape)}")
            if f.dim() != 3 or f.shape[0] != n_chunks or f.shape[2] != core_shape[k] or f.shape[1] < 1:
                raise InvalidInputError(
                    f"Tucker factor_{k} shape {tuple(f.shape)} does not fit core {tuple(core_shape)} "
                    f"with chunk_size {self.chunk_size} ({n_chunks} chunks)")
        row = math.prod(int(d) for d in core_shape[1:])
        out_row = math.prod(self.output_shape(core_shape, factors)[1:])
        if out_row > MAX_SAMPLE_ELEMENTS:
            raise LimitError(f"Tucker parts rebuild {out_row:,} elements per sample, over the limit of {MAX_SAMPLE_ELEMENTS:,}")
        if row and out_row > MAX_EXPANSION * row:
            raise LimitError(f"Tucker factors expand a core row of {row:,} elements to {out_row:,} "
                             f"(over {MAX_EXPANSION}x): refusing to decode")

    def output_shape(self, core_shape: Sequence[int], factors: Mapping[int, torch.Tensor]) -> tuple[int, ...]:
        shape = list(core_shape)
        for k, f in factors.items():
            shape[k] = int(f.shape[1])
        return tuple(shape)

    def decode(self, parts: Mapping[str, Any]) -> torch.Tensor:
        if "core" not in parts:
            raise InvalidInputError("Tucker object is missing its 'core' part")
        core = as_tensor(parts["core"], "Tucker part 'core'")
        if not core.is_floating_point():
            raise InvalidInputError(f"Tucker part 'core' must be floating point, got {core.dtype}")
        factors = self.factor_parts(parts)
        self.check_parts(core.shape, factors)
        out = torch.empty(self.output_shape(core.shape, factors), dtype=torch.float32, device=core.device)
        for c, s in enumerate(range(0, core.shape[0], self.chunk_size)):
            out[s:s + self.chunk_size] = reconstruct(core[s:s + self.chunk_size], {k: f[c] for k, f in factors.items()})
        return out

    def decode_rows(self, parts: Mapping[str, Any], *, rows: Sequence[int] | torch.Tensor | None = None,
                    device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rebuild the samples ``rows`` (default ``0..n-1``) from ``parts``: their ``core`` rows, in
        that order, and the whole ``factor_K`` stacks (see :func:`reconstruct_rows`)."""
        core = as_tensor(need_part(parts, "core"), "Tucker part 'core'")
        if not core.is_floating_point() or core.dim() < 2:
            raise InvalidInputError(f"Tucker core rows must be a floating-point [n, ...] tensor, got {core.dtype} "
                                    f"{tuple(core.shape)}")
        if device is not None:
            core = core.to(device)
        ids = torch.arange(core.shape[0]) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        return reconstruct_rows(core, self.factor_parts(parts), ids, self.chunk_size, dtype)


def need_part(parts: Mapping[str, Any], name: str) -> Any:
    if name not in parts:
        raise InvalidInputError(f"Tucker object is missing its {name!r} part")
    return parts[name]
