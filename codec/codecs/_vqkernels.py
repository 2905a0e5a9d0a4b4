"""CPU nearest-code kernel for the VQ codec (Eq. 4 of the soft-label paper).

``q(i) = argmin_j ||h(i) - mu_j||^2 = argmax_j (h(i).mu_j - ||mu_j||^2 / 2)``: the score form
drops ``||h(i)||^2``, which is the same for every code.

The kernel is numba code generated for one ``dc``: a register-blocked score microkernel with the
argmax fused in, so no (n, k) score matrix is ever written.

* Rows are taken in tiles of ``T = H * S`` held transposed in one float32 work array ``w``
  (``w[c, r] = x[r0 + r, c]``), with three more rows of ``w``: the running best score, the
  running best index (as float32, exact since k <= 2**24) and a non-finite marker.  One array
  with constant offsets lets LLVM prove the loads and stores of the inner loop independent, so
  it vectorises without run-time alias checks (with separate arrays the checks exceed LLVM's
  limit from about 100 accesses, and the loop silently stays scalar).
* The inner loop runs over ``S`` rows and is vectorised by LLVM (16 fp32 lanes with AVX-512).
  The tile function carries LLVM's ``"prefer-vector-width"="512"``: LLVM's tuning for Intel
  server cores (Skylake-SP to Emerald Rapids) otherwise prefers 256-bit vectors, which on an
  Emerald Rapids host ran 1.2-1.8x slower (medians of 9 at 1M rows, 2 threads: 112 -> 77 ms
  at (5, 1024), 294 -> 237 ms at (25, 512), 257 -> 143 ms at (100, 64)).  Without AVX-512
  LLVM caps the width at the widest legal vector, so the attribute is harmless there.
  Each iteration updates ``H`` row streams (``r``, ``r + S``, ...) against ``Q`` codes: ``H x Q``
  accumulators stay in registers while ``c`` runs over ``dc`` (every loop over ``dc`` unrolled,
  statements in c-major order), so each row vector loaded feeds ``Q`` FMAs and each code value
  ``H``: about 0.4 loads per FMA.  The ``Q`` codes' values and biases are loop invariants.
* The codebook is padded to a multiple of ``Q`` with zero codes of bias ``-inf``, which never win.
* Strict ``>`` in code order, so ties keep the lower index, as ``argmin`` does.
* A row with a NaN or infinity gets index ``-1`` (``v - v`` is 0 only for finite ``v``, summed
  while the tile is filled), so callers need not scan ``x`` for finiteness first: that scan
  (``torch.isfinite(x).all()``) alone took 27-107 ms per 1M rows at dc = 25-50.
* Every generated name is assigned once (numba's SSA repair is quadratic in reassignments: it
  was 5.4 s of a 21 s profiled compile at dc = 100).  The per-tile function is a plain ``njit``
  and only a small driver is ``parallel`` (with the body inside the ``prange``, numba's parfor
  passes made the compile 23 s instead of 10 s at dc = 100).

Row tiles run in parallel (``prange``, numba's threads).  Compilation takes 1.3 s (dc <= 5) to
11 s (dc = 128) per ``dc``, once per process; kernels are not cached on disk (numba's cache unpickles its files).

Public interface (what :mod:`codec.codecs.vq` calls): :data:`NUMBA_MAX_DC`, :data:`NUMBA_MAX_K`,
``prep_codebook(codebook) -> (cb, bias)`` and ``nearest_kernel(dc)(x, cb, bias, out)``, which
writes the int32 index of the nearest code of each row of the C-contiguous float32 ``x`` into
``out``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

try:  # numba is a hard dependency of the package, but keep the module importable alone
    import numba as _nb
    from numba.core import types as _nbtypes
    from numba.core.extending import intrinsic as _intrinsic
except Exception:  # noqa: BLE001  # pragma: no cover - without numba the torch path serves
    _nb = None  # type: ignore[assignment]

NUMBA_MAX_DC = 128  # larger dc goes to the BLAS path in vq.py (compile time grows with dc)
NUMBA_MAX_K = 1 << 24  # indices are carried as float32 in the work array: exact up to 2**24

_KERNELS: dict[tuple, Callable] = {}


def _wide_vectors() -> bool:
    """True where numba compiles for AVX-512 (32 vector registers): the features numba targets,
    ``NUMBA_CPU_FEATURES`` when set, else the host's."""
    feats = _nb.config.CPU_FEATURES  # type: ignore[attr-defined]  # numba sets its config at import
    if feats is not None:
        return "+avx512f" in feats.split(",")
    import llvmlite.binding as llvm

    return bool(llvm.get_host_cpu_features().get("avx512f", False))


def block_shape(dc: int) -> tuple[int, int, int]:
    """(H, Q, S): row streams, codes per pass, rows per stream.

    H x Q accumulators plus H row vectors must fit the register file.  Measured at 1M rows,
    2 threads (``H x Q``: ms at (5, 1024), (25, 512), (50, 128), (100, 64)):

    * AVX-512 (32 registers): 4 x 6: 34, 79, 60, 55 ms (FAISS IndexFlatL2: 54, 112, 154, 135);
    * AVX2 (16 registers, numba told ``NUMBA_CPU_NAME=haswell`` on the same host): 4 x 3:
      75, 139, 83, 113 ms; 2 x 6 was 82, 180, 108, 152 and 3 x 4 145 ms at (25, 512).

    ``Q`` shrinks for dc > 50 to bound the unrolled body (compile time ~ dc x H x Q).  ``S`` is a
    multiple of 16 (whole vectors) with the ``dc x T`` tile within ~32 KiB of L1.
    """
    H = 4
    Q = min(6 if _wide_vectors() else 3, max(2, 300 // dc))
    S = max(16, (8192 // dc) // H // 16 * 16)
    return H, Q, S


if _nb is not None:

    @_intrinsic
    def _prefer_512_bit_vectors(typingctx):
        """Marks the LLVM function it is called from with ``"prefer-vector-width"="512"``.
        llvmlite's attribute set only admits LLVM's keyword attributes, so the string attribute
        is added with ``set.add`` (the set is printed verbatim into the function's IR)."""

        def codegen(context, builder, signature, args):
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
            return context.get_dummy_value()

        return _nbtypes.void(), codegen


def _tile_source(dc: int, shape: tuple[int, int, int]) -> str:
    H, Q, S = shape
    T = H * S
    best, idx, bad = dc, dc + 1, dc + 2
    L = [
        "def tile(x, r0, m, cb, bias, out):",
        "    prefer_512_bit_vectors()",
        f"    w = np.empty(({dc + 3}, {T}), np.float32)",
        f"    for r in range({T}):",
        "        rr = r0 + r if r < m else r0",
        *[f"        w[{c}, r] = x[rr, {c}]" for c in range(dc)],
        f"        w[{bad}, r] = {' + '.join(f'(w[{c}, r] - w[{c}, r])' for c in range(dc))}",
        f"        w[{best}, r] = -np.inf",
        f"        w[{idx}, r] = 0.0",
        f"    for j in range(0, cb.shape[0], {Q}):",
    ]
    for q in range(Q):
        L.append(f"        b{q} = bias[j + {q}]")
        L.append(f"        j{q} = np.float32(j + {q})")
        L += [f"        c{q}_{c} = cb[j + {q}, {c}]" for c in range(dc)]
    L.append(f"        for r in range({S}):")
    acc = {(q, h): f"b{q}" for q in range(Q) for h in range(H)}  # current name of each accumulator
    for c in range(dc):
        for h in range(H):
            L.append(f"            x{h}_{c} = w[{c}, r + {h * S}]")
        for q in range(Q):
            for h in range(H):
                name = f"a{q}_{h}_{c}"
                L.append(f"            {name} = {acc[q, h]} + x{h}_{c} * c{q}_{c}")
                acc[q, h] = name
    for h in range(H):
        L += [f"            s{h}_0 = w[{best}, r + {h * S}]", f"            i{h}_0 = w[{idx}, r + {h * S}]"]
    for q in range(Q):  # code order: strict > keeps the lower index on ties
        for h in range(H):
            L.append(f"            i{h}_{q + 1} = j{q} if {acc[q, h]} > s{h}_{q} else i{h}_{q}")
            L.append(f"            s{h}_{q + 1} = max({acc[q, h]}, s{h}_{q})")
    for h in range(H):
        L += [f"            w[{best}, r + {h * S}] = s{h}_{Q}", f"            w[{idx}, r + {h * S}] = i{h}_{Q}"]
    L += ["    for r in range(m):",
          f"        out[r0 + r] = np.int32(w[{idx}, r]) if w[{bad}, r] == 0 else -1",
          ""]
    return "\n".join(L)


def _compile(dc: int, shape: tuple[int, int, int]) -> Callable:
    ns: dict[str, Any] = {"np": np, "prefer_512_bit_vectors": _prefer_512_bit_vectors}
    exec(compile(_tile_source(dc, shape), f"<ddz nearest-code tile dc={dc}>", "exec"), ns)  # noqa: S102 - generated from integers only
    tile = _nb.njit(boundscheck=False, fastmath={"contract"})(ns["tile"])
    T = shape[0] * shape[2]

    def kern(x, cb, bias, out):
        n = x.shape[0]
        for t in _nb.prange((n + T - 1) // T):
            r0 = t * T
            tile(x, r0, min(n, r0 + T) - r0, cb, bias, out)

    return _nb.njit(parallel=True)(kern)


def prep_codebook(codebook: np.ndarray, shape: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(k, dc) codebook -> (cb, bias): float32 codes padded with zero rows to a multiple of Q
    (of ``shape``, default :func:`block_shape`) and ``bias_j = -||mu_j||^2 / 2`` (computed in
    float64), ``-inf`` for padding."""
    cb = np.asarray(codebook)
    k, dc = cb.shape
    Q = (shape or block_shape(dc))[1]
    kp = -(-k // Q) * Q
    out = np.zeros((kp, dc), np.float32)
    out[:k] = cb
    c64 = out[:k].astype(np.float64)
    bias = np.full(kp, -np.inf, np.float32)
    bias[:k] = -0.5 * np.einsum("kd,kd->k", c64, c64)
    return out, bias


def nearest_kernel(dc: int, shape: tuple[int, int, int] | None = None) -> Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]:
    """``kern(x, cb, bias, out)``: ``out[i] = argmax_j (x[i].cb[j] + bias[j])`` (int32; -1 where
    ``x[i]`` is not all finite), for float32 C-contiguous ``x`` (n, dc), ``(cb, bias)`` from
    :func:`prep_codebook` (with the same ``shape``) with at most :data:`NUMBA_MAX_K` codes; row
    tiles in parallel over numba's threads (``numba.set_num_threads``).  ``shape`` (H, Q, S)
    defaults to :func:`block_shape`; tests pass others to cover every code path on one host."""
    h, q, s = shape or block_shape(dc)
    shape = (h, q, s)
    kern = _KERNELS.get((dc, shape))
    if kern is None:
        kern = _KERNELS[dc, shape] = _compile(dc, shape)
    return kern
