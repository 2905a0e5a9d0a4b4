"""Exact nearest-code assignment for small ``dc`` through a cell index (Eq. 4 of the soft-label paper).

Brute force scores every row against all ``k`` codes: ``dc * k`` multiply-adds, as many as the
projection itself when ``k ~ C``.  In low dimension most codes cannot be nearest to a given
row, and which ones can is decided once per codebook:

* **Cells.**  The codes' range, widened by an eighth on each side, is cut in each dimension at
  the codes' quantiles into ``g_d = 2**b_d`` slabs, so every cell of the grid holds about as many
  codes; a row finds its cell through a per-dimension table of ``nf`` fine bins (one multiply and
  one lookup per dimension).  Rows outside the grid (rare: beyond the outermost codes) are scored
  against all codes.
* **Candidate lists.**  Code ``j`` is dropped from a cell when another code ``i`` is nearer to every
  point of it: ``|x - mu_i|^2 - |x - mu_j|^2 = 2 x.(mu_j - mu_i) + |mu_i|^2 - |mu_j|^2`` is linear in
  ``x``, so its maximum over the cell is at a corner, computed in float64 and required to be below
  ``-1e-9`` of its magnitude; the cell is widened by one fine bin on every side, which covers the
  float32 rounding of the row's bin.  The lists are built by halving the grid recursively, each
  half filtering its parent's list (a distance bound against the code with the smallest worst-case
  distance, then the four strongest codes as dominators; at single cells every surviving pair), so
  building costs about ``cells x list length``, not ``cells x k``.  Dropping only codes that lose
  everywhere in exact arithmetic keeps the float64 nearest code of every row of the cell.
* **Query.**  A tile of rows is counting-sorted by cell; each cell's rows are then scored against
  the cell's list with the brute-force kernel's arithmetic (``x.mu - |mu|^2 / 2`` in float32, the
  same fused multiply-adds in the same order, strict ``>`` over the list in code order), so a row
  gets the code brute force gives it unless brute force's float32 winner was dropped as a loser in
  exact arithmetic (a float32 near-tie).  Ties go to the lower index; a row with a NaN or infinity
  gets ``-1``.  Lists are padded to a multiple of ``Q`` with a sentinel code of bias ``-inf``.

Whether the index beats brute force depends on ``dc`` and on how long the lists come out
(:func:`worth_it`); :mod:`codec.codecs.vq` decides, caches built indices per codebook, and keeps
the brute-force kernel where it wins.

Public interface: :data:`GRID_MAX_DC`, :class:`CellIndex`, :func:`build_index`,
:func:`worth_it` and :func:`assign`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from ._vqkernels import _nb, _prefer_512_bit_vectors

GRID_MAX_DC = 8  # past 8 dimensions the lists stay long (every cell borders many codes)
_Q = 4  # codes per pass of the scoring loop (lists are padded to a multiple)
_GB = 256  # rows of one cell scored per pass (the work array stays in L1)
_PIVOTS = 4  # dominators tried at a box that is split further
_LEAF_PIVOTS = 32  # dominators tried at a single cell
_REL = 1e-9  # margin of the exclusion tests, relative to the magnitudes involved

_KERNELS: dict[int, Callable] = {}


class CellIndex(NamedTuple):
    """A codebook's cell index (arrays the query kernel reads)."""

    dc: int
    k: int
    lo: np.ndarray  # (dc,) float32: the first fine bin's lower edge
    inv_w: np.ndarray  # (dc,) float32: fine bins per unit
    nf: int  # fine bins per dimension
    table: np.ndarray  # (dc, nf) int32: fine bin -> slab * stride (a cell is the sum over dimensions)
    offs: np.ndarray  # (G + 2,) int64: cell c's list is cand[offs[c]:offs[c + 1]]; "cell" G: all codes
    cand: np.ndarray  # int32 code indices, ascending within a list, padded to a multiple of Q with k
    cb: np.ndarray  # (k + 1, dc) float32: the codes and a zero sentinel
    bias: np.ndarray  # (k + 1,) float32: -|mu|^2 / 2 (float64, rounded), -inf for the sentinel

    @property
    def cells(self) -> int:
        return len(self.offs) - 2

    @property
    def mean_list(self) -> float:
        """Padded list length averaged over cells (the codes scored per row, roughly)."""
        return float(self.offs[-2]) / max(1, self.cells)


def worth_it(index: CellIndex) -> bool:
    """Whether rows scored against the cell lists cost less than against all ``k`` codes.

    Measured on a 2-core AVX2 host (1M rows, k = 256 and 1024, dc = 1-8): a row costs about
    20 ms/M plus 1.25 ms/M per listed code, brute force 0.2-0.4 ms/M per code (its register-blocked
    kernel), so a listed code costs about four of brute force's and the sort about 64
    (dc = 8, k = 1024: lists of 417 codes, 552 ms against brute force's 413; dc = 6: 120 codes,
    165 ms against 327)."""
    return 4 * index.mean_list + 64 < index.k


# ------------------------------------------------------------------------------------------------
# building
# ------------------------------------------------------------------------------------------------
def _tree_sum(terms: list[str]) -> str:
    """``((t0 + t1) + (t2 + t3)) + ...``: a sum with a short dependency chain."""
    while len(terms) > 1:
        terms = [f"({terms[i]} + {terms[i + 1]})" if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def _slab_bits(codes: np.ndarray, cells: int) -> np.ndarray:
    """Bits per dimension (``g_d = 2**b_d`` slabs) for about ``cells`` cells, spread evenly and
    never more slabs than a dimension has distinct code values."""
    k, dc = codes.shape
    distinct = np.array([len(np.unique(codes[:, d])) for d in range(dc)])
    bits = np.zeros(dc, np.int64)
    total = max(0, int(round(math.log2(max(1, cells)))))
    for _ in range(total):
        ok = [d for d in range(dc) if (1 << (bits[d] + 1)) <= max(1, distinct[d])]
        if not ok:
            break
        d = min(ok, key=lambda d: bits[d])
        bits[d] += 1
    return bits


def build_index(codebook: np.ndarray, *, cells_per_code: int = 8, max_cells: int = 1 << 18) -> CellIndex:
    """The cell index of a (k, dc) codebook (float32 values; 1 <= dc <= GRID_MAX_DC), with about
    ``cells_per_code * k`` cells (at most ``max_cells``)."""
    cb32 = np.ascontiguousarray(codebook, np.float32)
    k, dc = cb32.shape
    if not 1 <= dc <= GRID_MAX_DC or k < 1:
        raise ValueError(f"cell index: codebook must be (k >= 1, 1 <= dc <= {GRID_MAX_DC}), got {cb32.shape}")
    if not np.isfinite(cb32).all():
        raise ValueError("cell index: non-finite code values")
    cb64 = cb32.astype(np.float64)
    bits = _slab_bits(cb64, min(max_cells, cells_per_code * k))
    g = 1 << bits
    nf = int(min(1 << 20, max(256, 16 * g.max())))  # float32 bin arithmetic is then within one bin
    span = cb64.max(0) - cb64.min(0)
    span = np.where(span > 0, span, max(float(span.max()), 1e-3 * (1.0 + float(np.abs(cb64).max()))))  # a flat dimension
    lo = (cb64.min(0) - span / 8).astype(np.float32)
    inv_w = (nf / (cb64.max(0) + span / 8 - lo)).astype(np.float32)
    fine = 1.0 / inv_w.astype(np.float64)  # the fine-bin width the query computes with
    edges = np.zeros((dc, int(g.max()) + 1))  # slab c of dimension d is [edges[d, c], edges[d, c + 1]]
    table = np.zeros((dc, nf), np.int32)
    stride = 1
    for d in reversed(range(dc)):
        q = np.quantile(cb64[:, d], np.arange(1, g[d]) / g[d]) if g[d] > 1 else np.zeros(0)
        fe = np.clip(np.round((q - lo[d]) * inv_w[d]).astype(np.int64), 1, nf - 1)
        fe = np.concatenate([[0], np.maximum.accumulate(fe), [nf]])
        edges[d, : g[d] + 1] = lo[d] + fe * fine[d]
        for c in range(g[d]):
            table[d, fe[c]:fe[c + 1]] = c * stride
        stride *= int(g[d])
    cb8 = np.zeros((k, GRID_MAX_DC))
    cb8[:, :dc] = cb64
    offs, cand = _build_lists(cb8, (cb64 * cb64).sum(1), edges, fine, bits, _PIVOTS, _LEAF_PIVOTS, _Q)
    cbp = np.zeros((k + 1, dc), np.float32)
    cbp[:k] = cb32
    bias = np.full(k + 1, -np.inf, np.float32)
    bias[:k] = -0.5 * np.einsum("kd,kd->k", cb64, cb64)
    return CellIndex(dc, k, lo, inv_w, nf, table, offs, cand, cbp, bias)


if _nb is not None:

    def _losers_source() -> str:
        """``losers(cx, sql, pi, a, b, alive, L)``: clears ``alive[t]`` for every code t of the list
        that code ``pi`` beats everywhere on the box [a, b]: ``|x-mu_i|^2 - |x-mu_t|^2 =
        2 x.(mu_t - mu_i) + sq_i - sq_t`` is linear, so its maximum is at the corner picked by the
        signs; it must be below ``-_REL`` of the magnitude of its terms.  Unrolled over the
        GRID_MAX_DC dimensions (generated once; a loop over them ran 2.7x slower)."""
        D = GRID_MAX_DC
        L = ["def losers(cx, sql, pi, a, b, alive, L):", "    sqi = sql[pi]", "    keep = alive[pi]"]
        L += [f"    a{d} = a[{d}]; b{d} = b[{d}]; c{d} = cx[{d}, pi]" for d in range(D)]
        L.append("    for t in range(L):")
        for d in range(D):
            L += [f"        v{d} = 2.0 * (cx[{d}, t] - c{d})", f"        e{d} = v{d} * (b{d} if v{d} > 0.0 else a{d})"]
        es = [f"e{d}" for d in range(D)]
        L.append(f"        acc = (sqi - sql[t]) + {_tree_sum(es)}")
        L.append(f"        mag = (sqi + sql[t]) + {_tree_sum([f'abs({e})' for e in es])}")
        L += ["        if acc < -_REL * mag:", "            alive[t] = False", "    alive[pi] = keep", ""]
        return "\n".join(L)

    _ns: dict[str, Any] = {"_REL": _REL}
    exec(compile(_losers_source(), "<ddz cell-index losers>", "exec"), _ns)  # noqa: S102 - generated from integers only
    _losers = _nb.njit(boundscheck=False)(_ns["losers"])

    @_nb.njit(cache=False)
    def _filter(cb, sq, lst, L, a, b, npiv, kept):
        """Writes to ``kept`` the codes of lst[:L] (in their order) that neither lose everywhere on
        the box [a, b] to the code with the smallest worst-case distance over it (distance bound) nor
        to one of the ``npiv`` codes with the smallest worst-case distances (:func:`_losers`); returns
        how many.  ``cb`` and the box have GRID_MAX_DC columns (unused ones zero)."""
        cx = np.empty((GRID_MAX_DC, L))
        wd = np.empty(L)
        md = np.empty(L)
        for t in range(L):
            for d in range(GRID_MAX_DC):
                cx[d, t] = cb[lst[t], d]
        for t in range(L):
            w = 0.0
            m = 0.0
            for d in range(GRID_MAX_DC):
                q = max(abs(cx[d, t] - a[d]), abs(cx[d, t] - b[d]))
                w += q * q  # worst-case squared distance over the box
                p = max(a[d] - cx[d, t], cx[d, t] - b[d], 0.0)
                m += p * p  # nearest squared distance
            wd[t] = w
            md[t] = m
        lim = wd.min() * (1.0 + _REL) + 1e-300
        n = 0
        for t in range(L):
            if md[t] <= lim:
                lst[n] = lst[t]
                wd[n] = wd[t]
                for d in range(GRID_MAX_DC):
                    cx[d, n] = cx[d, t]
                n += 1
        L = n
        sql = np.empty(L)
        for t in range(L):
            sql[t] = sq[lst[t]]
        alive = np.ones(L, np.bool_)
        for pi in np.argsort(wd[:L])[: min(npiv, L)]:  # strongest first
            if alive[pi]:  # (a code that loses everywhere is no stronger a test than its winner)
                _losers(cx, sql, pi, a, b, alive, L)
        n = 0
        for t in range(L):
            if alive[t]:
                kept[n] = lst[t]
                n += 1
        return n

    @_nb.njit(cache=False)
    def _build_lists(cb, sq, edges, fine, bits, npiv, npiv_leaf, Q):
        k, dc = cb.shape[0], bits.shape[0]
        depth = 0
        G = 1
        for d in range(dc):
            depth += bits[d]
            G *= 1 << bits[d]
        c0 = np.zeros((depth + 1, dc), np.int64)
        c1 = np.zeros((depth + 1, dc), np.int64)
        off = np.zeros(depth + 1, np.int64)
        ln = np.zeros(depth + 1, np.int64)
        state = np.zeros(depth + 1, np.int64)
        split = np.zeros(depth + 1, np.int64)
        buf = np.empty(k * (depth + 2), np.int32)
        tmp = np.empty(k, np.int32)
        a = np.zeros(GRID_MAX_DC)
        b = np.zeros(GRID_MAX_DC)
        start = np.zeros(G, np.int64)
        count = np.zeros(G, np.int64)
        out = np.empty(max(16, 4 * G), np.int32)
        used = 0
        for j in range(k):
            buf[j] = j
        ln[0] = k
        for d in range(dc):
            c1[0, d] = 1 << bits[d]
        top = 0
        while top >= 0:
            if state[top] == 0:
                leaf = True
                for d in range(dc):
                    lo_c, hi_c = c0[top, d], c1[top, d]
                    a[d] = edges[d, lo_c] - fine[d] * (1.0 + _REL)
                    b[d] = edges[d, hi_c] + fine[d] * (1.0 + _REL)
                    if hi_c - lo_c > 1:
                        leaf = False
                o = off[top]
                L = ln[top]
                for t in range(L):
                    tmp[t] = buf[o + t]
                n = _filter(cb, sq, tmp, L, a, b, npiv_leaf if leaf else npiv, buf[o:o + L])
                ln[top] = n
                if leaf or n <= 1:
                    # every cell of the box gets the list, padded to a multiple of Q with the sentinel k
                    npad = (n + Q - 1) // Q * Q
                    idx = np.empty(dc, np.int64)
                    for d in range(dc):
                        idx[d] = c0[top, d]
                    while True:
                        cell = 0
                        for d in range(dc):
                            cell = cell * (1 << bits[d]) + idx[d]
                        if used + npad > out.shape[0]:
                            grown = np.empty(2 * out.shape[0] + npad, np.int32)
                            grown[:used] = out[:used]
                            out = grown
                        start[cell] = used
                        count[cell] = npad
                        for t in range(npad):
                            out[used + t] = buf[o + t] if t < n else k
                        used += npad
                        d = dc - 1
                        while d >= 0:
                            idx[d] += 1
                            if idx[d] < c1[top, d]:
                                break
                            idx[d] = c0[top, d]
                            d -= 1
                        if d < 0:
                            break
                    top -= 1
                    continue
                # halve the box along its widest dimension (in slabs; ties to the first)
                best_d = -1
                for d in range(dc):
                    if c1[top, d] - c0[top, d] > 1 and (best_d < 0 or c1[top, d] - c0[top, d] > c1[top, best_d] - c0[top, best_d]):
                        best_d = d
                split[top] = best_d
                state[top] = 1
            if state[top] == 3:
                top -= 1
                continue
            d = split[top]
            mid = (c0[top, d] + c1[top, d]) // 2
            for e in range(dc):
                c0[top + 1, e] = c0[top, e]
                c1[top + 1, e] = c1[top, e]
            if state[top] == 1:
                c1[top + 1, d] = mid
            else:
                c0[top + 1, d] = mid
            state[top] += 1
            o, L = off[top], ln[top]
            off[top + 1] = o + L
            ln[top + 1] = L
            state[top + 1] = 0
            for t in range(L):
                buf[o + L + t] = buf[o + t]
            top += 1
        kp = (k + Q - 1) // Q * Q
        offs = np.zeros(G + 2, np.int64)
        for c in range(G):
            offs[c + 1] = offs[c] + count[c]
        offs[G + 1] = offs[G] + kp
        cand = np.empty(offs[G + 1], np.int32)
        for c in range(G):
            cand[offs[c]:offs[c + 1]] = out[start[c]:start[c] + count[c]]
        for t in range(kp):  # rows outside the grid: every code
            cand[offs[G] + t] = t if t < k else k
        return offs, cand


# ------------------------------------------------------------------------------------------------
# querying
# ------------------------------------------------------------------------------------------------
def _scan_source(dc: int) -> str:
    """Scores rows w[:dc, :gs] (a cell's rows, transposed) against codes cand[c0:c1], Q at a time,
    keeping the best score in w[dc] and its code (as float32) in w[dc + 1]; the brute-force
    kernel's arithmetic: ``((bias + x0*m0) + x1*m1) + ...`` fused, strict ``>`` in list order."""
    best, idx = dc, dc + 1
    L = ["def scan(w, gs, cb, bias, cand, c0, c1):",
         "    prefer_512_bit_vectors()",
         f"    for u in range(c0, c1, {_Q}):"]
    for q in range(_Q):
        L += [f"        j{q} = cand[u + {q}]", f"        f{q} = np.float32(j{q})", f"        b{q} = bias[j{q}]"]
        L += [f"        m{q}_{c} = cb[j{q}, {c}]" for c in range(dc)]
    L.append("        for r in range(gs):")
    L += [f"            x{c} = w[{c}, r]" for c in range(dc)]
    L += [f"            s0 = w[{best}, r]", f"            i0 = w[{idx}, r]"]
    for q in range(_Q):
        acc = f"b{q}"
        for c in range(dc):
            L.append(f"            a{q}_{c} = {acc} + x{c} * m{q}_{c}")
            acc = f"a{q}_{c}"
        L.append(f"            i{q + 1} = f{q} if {acc} > s{q} else i{q}")
        L.append(f"            s{q + 1} = max({acc}, s{q})")
    L += [f"            w[{best}, r] = s{_Q}", f"            w[{idx}, r] = i{_Q}", ""]
    return "\n".join(L)


def _cell_source(dc: int) -> str:
    """cell[r] for rows r0..r1 of x: the sum of the table entries of the row's fine bins; G for a
    row outside the grid, -1 for a row with a NaN or infinity (``v - v`` is 0 only for finite ``v``)."""
    L = ["def cells(x, r0, r1, lo, inv_w, nf, table, G, cell):",
         "    for r in range(r0, r1):"]
    L += [f"        v{c} = x[r, {c}]" for c in range(dc)]
    L.append(f"        bad = {' + '.join(f'(v{c} - v{c})' for c in range(dc))}")
    L.append("        if bad != 0:")
    L.append("            cell[r - r0] = -1")
    L.append("            continue")
    L += [f"        t{c} = (v{c} - lo[{c}]) * inv_w[{c}]" for c in range(dc)]
    L.append(f"        if {' and '.join(f'(t{c} >= 0) and (t{c} < nf)' for c in range(dc))}:")
    L.append(f"            cell[r - r0] = {' + '.join(f'table[{c}, np.int64(t{c})]' for c in range(dc))}")
    L.append("        else:")
    L += ["            cell[r - r0] = G", ""]
    return "\n".join(L)


def _compile(dc: int) -> Callable:
    ns: dict[str, Any] = {"np": np, "prefer_512_bit_vectors": _prefer_512_bit_vectors}
    exec(compile(_scan_source(dc) + "\n" + _cell_source(dc), f"<ddz cell-index kernels dc={dc}>", "exec"), ns)  # noqa: S102 - generated from integers only
    scan = _nb.njit(boundscheck=False, fastmath={"contract"})(ns["scan"])
    cells = _nb.njit(boundscheck=False)(ns["cells"])
    W = dc + 2

    def task(x, r0, r1, lo, inv_w, nf, table, offs, cand, cb, bias, out):
        G = offs.shape[0] - 1  # the G - 1 grid cells and "cell" G - 1 (rows outside: all codes)
        m = r1 - r0
        cell = np.empty(m, np.int32)
        cells(x, r0, r1, lo, inv_w, nf, table, G - 1, cell)
        start = np.zeros(G + 2, np.int64)  # counting sort by cell; bucket 0: rows that are not finite
        for r in range(m):
            start[cell[r] + 2] += 1
        for c in range(2, G + 2):
            start[c] += start[c - 1]
        perm = np.empty(m, np.int32)
        for r in range(m):
            b = cell[r] + 1
            perm[start[b]] = r
            start[b] += 1
        for p in range(start[0]):  # after the scatter, start[c] is where bucket c ends
            out[r0 + perm[p]] = -1
        w = np.empty((W, _GB), np.float32)
        p0 = start[0]
        for c in range(G):
            p1 = start[c + 1]
            for q0 in range(p0, p1, _GB):
                gs = min(_GB, p1 - q0)
                gp = (gs + 15) // 16 * 16  # whole vectors: pad with copies of the first row
                for r in range(gp):
                    row = r0 + perm[q0 + r if r < gs else q0]
                    for d in range(dc):
                        w[d, r] = x[row, d]
                    w[dc, r] = -np.inf
                    w[dc + 1, r] = 0.0
                scan(w, gp, cb, bias, cand, offs[c], offs[c + 1])
                for r in range(gs):
                    out[r0 + perm[q0 + r]] = np.int32(w[dc + 1, r])
            p0 = p1

    task = _nb.njit(boundscheck=False)(task)

    def kern(x, lo, inv_w, nf, table, offs, cand, cb, bias, out, T):
        n = x.shape[0]
        for t in _nb.prange((n + T - 1) // T):
            task(x, t * T, min(n, t * T + T), lo, inv_w, nf, table, offs, cand, cb, bias, out)

    return _nb.njit(parallel=True)(kern)


def tile_rows(index: CellIndex, n: int, threads: int) -> int:
    """Rows per task: enough that a cell's rows fill vectors (about 16 rows per cell; 64 where the lists
    are long, so a list's codes, loaded once per pass, serve more rows), in a number of tasks that is a
    multiple of ``threads``.  Measured at dc = 5, k = 1024 (lists of 80; 2.6 M rows, 2 threads): 16
    rows per cell in 20 tasks took 199 ms, 64 in 6 tasks 165 ms; at dc = 2 (lists of 4) 16 rows was best."""
    per_cell = 64 if index.mean_list > 16 else 16
    tasks = max(1, -(-n // max(1 << 16, per_cell * index.cells)))
    tasks = -(-tasks // threads) * threads
    return int(max(1, -(-n // tasks)))


def assign(x: np.ndarray, index: CellIndex, out: np.ndarray) -> None:
    """``out[i]``: the nearest code of row ``x[i]`` (int32; -1 where the row is not all finite), for
    C-contiguous float32 ``x`` (n, dc); tiles in parallel over numba's threads."""
    kern = _KERNELS.get(index.dc)
    if kern is None:
        kern = _KERNELS[index.dc] = _compile(index.dc)
    n = x.shape[0]
    if n:
        kern(x, index.lo, index.inv_w, np.float32(index.nf), index.table, index.offs, index.cand, index.cb, index.bias,
             out, tile_rows(index, n, _nb.get_num_threads()))
