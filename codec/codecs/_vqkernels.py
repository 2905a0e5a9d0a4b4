"""CPU nearest-code kernel for the VQ codec (Eq. 4 of the soft-label paper).

``q(i) = argmin_j ||h(i) - mu_j||^2 = argmax_j (h(i).mu_j - ||mu_j||^2 / 2)``: the score form
drops ``||h(i)||^2``, which is the same for every code.

The kernel is numba code generated for one ``dc`` (every loop over ``dc`` unrolled):

* rows are taken in tiles of ``T`` held transposed (``xt[c, r]``, one array so the loads share
  a base register), ``T * dc`` floats small enough for L1 and a multiple of 64 so the
  vectorised loop over rows (16 fp32 lanes, interleaved) has no scalar remainder;
* codes are taken ``J`` at a time (8 for 16 <= dc <= 32, else 4): their ``J * dc`` values and
  biases are loop invariants of the row loop, so one pass over the tile reads each row's running
  max and index once per J codes instead of once per code.  The codebook is padded to a
  multiple of ``J`` with zero codes of bias ``-inf``, which never win;
* for dc >= 16 (:func:`row_halves`) each pass updates rows ``r`` and ``r + T/2`` together, so
  each broadcast code value feeds two row vectors, and each dot product is one FMA chain (the
  2 x J dots are independent chains enough); for dc < 16 each dot product is two FMA chains
  (even and odd ``c``) added at the end: half the latency of one chain;
* strict ``>`` in code order, so ties keep the lower index, as ``argmin`` does;
* a row with a NaN or infinity gets index ``-1`` (``v - v`` is 0 only for finite ``v``, summed
  while the tile is filled), so callers need not scan ``x`` for finiteness first: that scan
  (``torch.isfinite(x).all()``) alone took 27-107 ms per 1M rows at dc = 25-50, up to 80 % of
  the assignment.

No (n, k) score matrix is written.  Row tiles run in parallel (``prange``, numba's threads).
Compilation takes 1-10 s per ``dc`` (more for larger ``dc``), once per process; kernels are not
cached on disk (numba's cache unpickles its files).

Public interface (what :mod:`codec.codecs.vq` calls): :data:`NUMBA_MAX_DC`,
``prep_codebook(codebook) -> (cb, bias)`` and ``nearest_kernel(dc)(x, cb, bias, out)``, which
writes the int32 index of the nearest code of each row of the C-contiguous float32 ``x`` into
``out``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

try:  # numba is a hard dependency of the package, but keep the module importable alone
    import numba as _nb
except Exception:  # pragma: no cover
    _nb = None

NUMBA_MAX_DC = 50  # measured: 1.5-1.9x FAISS at (50, 128); 0.6-0.7x at (100, 64), where BLAS in vq.py wins


def codes_per_pass(dc: int) -> int:
    """J: 8 for 16 <= dc <= 32 (about 15 % faster than 4 at dc = 25), else 4: with 8, dc = 5 is
    1.6x slower, and at dc = 50 4 already beats FAISS 1.5x and compiles in half the time."""
    return 8 if 16 <= dc <= 32 else 4

_KERNELS: dict[int, Callable] = {}


def _tile_rows(dc: int) -> int:
    """Rows per tile: ``xt`` (dc x T fp32) within ~32 KiB of L1, T a multiple of 64, 64..512."""
    return int(min(512, max(64, (8192 // dc) // 64 * 64)))


def _dot(bias: str, terms: list[str]) -> str:
    """``bias + sum(terms)`` as two left-folded chains (FMA-contractible) added at the end."""
    even = bias
    for t in terms[0::2]:
        even = f"({even} + {t})"
    odd_terms = terms[1::2]
    if not odd_terms:
        return even
    odd = odd_terms[0]
    for t in odd_terms[1:]:
        odd = f"({odd} + {t})"
    return f"({even} + {odd})"


def row_halves(dc: int) -> int:
    """H: 2 for dc >= 16 (each pass over the tile updates rows r and r + T/2 together, so every
    code value loaded is used by two 16-row vectors, with one FMA chain per dot product: 2 x J
    independent chains are enough), else 1 (two chains per dot).  Measured interleaved with FAISS
    (1M rows, 2 threads): 149 -> 133 ms at (25, 512), 136 -> 98 ms at (50, 128); at (5, 1024)
    H = 2 was slower (34 -> 42 ms), so small dc keeps H = 1."""
    return 2 if dc >= 16 else 1


def _source(dc: int) -> str:
    T, J, H = _tile_rows(dc), codes_per_pass(dc), row_halves(dc)
    S = T // H
    L = [
        "def kern(x, cb, bias, out):",
        "    n = x.shape[0]",
        "    kp = cb.shape[0]",
        f"    for t in nb.prange((n + {T - 1}) // {T}):",
        f"        r0 = t * {T}",
        f"        m = min(n, r0 + {T}) - r0",
        f"        xt = np.empty(({dc}, {T}), np.float32)",
        f"        bad = np.zeros({T}, np.float32)",
        f"        for r in range({T}):",
        "            rr = r0 + r if r < m else r0",
        *[f"            xt[{c}, r] = x[rr, {c}]" for c in range(dc)],
        f"            bad[r] = {' + '.join(f'(xt[{c}, r] - xt[{c}, r])' for c in range(dc))}",
        f"        best = np.full({T}, -np.inf, np.float32)",
        f"        bi = np.zeros({T}, np.int32)",
        f"        for j in range(0, kp, {J}):",
    ]
    for q in range(J):
        L.append(f"            b{q} = bias[j + {q}]")
        L.append(f"            j{q} = np.int32(j + {q})")
        L += [f"            c{q}_{c} = cb[j + {q}, {c}]" for c in range(dc)]
    L.append(f"            for r in range({S}):")
    for h in range(H):
        L += [f"                b_{h} = best[r + {h * S}]", f"                i_{h} = bi[r + {h * S}]"]
    for q in range(J):
        for h in range(H):
            terms = [f"xt[{c}, r + {h * S}] * c{q}_{c}" for c in range(dc)]
            dot = _dot(f"b{q}", terms) if H == 1 else "(" + " + ".join([f"b{q}", *terms]) + ")"
            L.append(f"                s{q}_{h} = {dot}")
    for q in range(J):  # code order: strict > keeps the lower index on ties
        for h in range(H):
            L.append(f"                i_{h} = j{q} if s{q}_{h} > b_{h} else i_{h}")
            L.append(f"                b_{h} = max(s{q}_{h}, b_{h})")
    for h in range(H):
        L += [f"                best[r + {h * S}] = b_{h}", f"                bi[r + {h * S}] = i_{h}"]
    L += ["        for r in range(m):",
          "            out[r0 + r] = bi[r] if bad[r] == 0 else -1",
          ""]
    return "\n".join(L)


def _compile(dc: int) -> Callable:
    ns: dict[str, Any] = {"nb": _nb, "np": np}
    exec(compile(_source(dc), f"<ddz nearest-code kernel dc={dc}>", "exec"), ns)  # noqa: S102 - generated from integers only
    return _nb.njit(parallel=True, boundscheck=False, fastmath={"contract"})(ns["kern"])


def prep_codebook(codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, dc) codebook -> (cb, bias): float32 codes padded with zero rows to a multiple of
    ``codes_per_pass(dc)`` and ``bias_j = -||mu_j||^2 / 2`` (computed in float64), ``-inf`` for padding."""
    cb = np.asarray(codebook)
    k, dc = cb.shape
    J = codes_per_pass(dc)
    kp = -(-k // J) * J
    out = np.zeros((kp, dc), np.float32)
    out[:k] = cb
    c64 = out[:k].astype(np.float64)
    bias = np.full(kp, -np.inf, np.float32)
    bias[:k] = -0.5 * np.einsum("kd,kd->k", c64, c64)
    return out, bias


def nearest_kernel(dc: int) -> Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]:
    """``kern(x, cb, bias, out)``: ``out[i] = argmax_j (x[i].cb[j] + bias[j])`` (int32; -1 where
    ``x[i]`` is not all finite), for
    float32 C-contiguous ``x`` (n, dc) and ``(cb, bias)`` from :func:`prep_codebook`; row tiles
    in parallel over numba's threads (``numba.set_num_threads``)."""
    kern = _KERNELS.get(dc)
    if kern is None:
        kern = _KERNELS[dc] = _compile(dc)
    return kern
