"""Device-agnostic torch implementation of the bit stream (plain tensor ops: CPU, CUDA, ...).

Same stream as :mod:`codec.bits._numpy` (spec/ddz.md, "bit-packed sections"): value i in
stream bits [i*bits, (i+1)*bits), stream bit j = bit j%8 of byte j//8.

It works on *groups of 64 values*, which are exactly ``bits`` little-endian 64-bit
words, so a group maps onto a ``(bits,)`` int64 row of the stream viewed as int64.
With ``off_k = k*bits`` the value k of a group lives at bit ``s_k = off_k % 64`` of
word ``w_k = off_k // 64`` and, when ``s_k + bits > 64``, its high part at bit 0 of
word ``w_k + 1``. Both directions then use only static per-column tables:

* pack: ``S = V << s`` (columns k); word w is the sum of the contiguous run of
  columns with ``w_k = w`` (the bit fields are disjoint, so sum == OR and never
  overflows), taken as a difference of a row-wise ``cumsum``; the high parts
  ``V[:, k] >> (64 - s_k)`` are added to word ``w_k + 1``.
* unpack: ``L = W[:, w_k] >> s_k & lomask_k`` where ``lomask_k`` keeps only the
  bits that belong to the value (int64 ``>>`` is arithmetic, so the sign-fill bits
  must go), plus ``(W[:, w_k + 1] << (64 - s_k)) & hmask_k`` for the straddlers.

Work is done in chunks of rows with reused scratch buffers, so that no large temporary
is allocated (first-touch page faults of fresh large tensors cost more than the
arithmetic). On accelerators the chunks are large (few launches). On CPU they are
small enough (< torch's 32768-element grain) that every op runs serially, in cache,
and the chunks are spread over ``torch.get_num_threads()`` Python threads (torch ops
release the GIL): this avoids thousands of short OpenMP parallel regions, whose
spin-waiting collapses throughput 5-10x when another process shares the cores.
Values are returned as int64 (so they can index an embedding directly).
"""

from __future__ import annotations

import functools

import torch

from ..errors import InvalidInputError

_UNSUPPORTED_OPS = {getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)}
_INT_DTYPES = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool} | _UNSUPPORTED_OPS


def _chunk_rows(device: torch.device) -> int:
    # CPU: 480 rows x 64 values = 30720 elements, under at::internal::GRAIN_SIZE (32768),
    # so each op runs serially on its calling thread; accelerators: few, large launches
    return 480 if device.type == "cpu" else 1 << 16


def _for_chunks(nrows: int, rows: int, device: torch.device, work) -> None:
    """work(r0, r1) over [0, nrows): CPU splits it across threads (see module docstring)."""
    if device.type != "cpu" or nrows <= 2 * rows:
        work(0, nrows)
        return
    from ._numpy import run_split

    run_split(nrows, min(torch.get_num_threads(), nrows // rows), work)


class _Tables:
    """Static per-(bits, device) column tables for groups of 64 values."""

    def __init__(self, bits: int, device: torch.device):
        b = bits
        k = list(range(64))
        w = [(i * b) >> 6 for i in k]
        s = [(i * b) & 63 for i in k]
        strad = [i for i in k if s[i] + b > 64]
        mask = (1 << b) - 1
        lomask = [((1 << (64 - s[i])) - 1 if s[i] + b > 64 else mask) for i in k]

        def t(x):
            # values >= 2**63 do not fit int64: reinterpret as two's complement
            return torch.tensor([v - (1 << 64) if v >= 1 << 63 else v for v in x], dtype=torch.int64, device=device)

        self.bits = b
        self.device = device
        self.w = t(w)
        self.s = t(s)
        self.lomask = t(lomask)
        self.strad = t(strad)
        self.hw = t([w[i] + 1 for i in strad])
        self.hs = t([64 - s[i] for i in strad])
        self.hmask = t([mask & ~lomask[i] for i in strad])
        self.ends = t([max(i for i in k if w[i] == j) for j in range(b)])  # last column of word j (b <= 32: never empty)
        # right shift that leaves the high part of value k (0 unless it straddles; shifts >= 64 give 0)
        self.hs_all = t([64 - s[i] for i in range(63)])
        self.rows = _chunk_rows(device)
        r = torch.arange(self.rows, dtype=torch.int64, device=device)[:, None]
        self.flat_w = (r * b + self.w[None, :]).reshape(-1)  # gather index into a (rows, b) block

    def flat(self, nrows: int) -> torch.Tensor:
        return self.flat_w[: nrows * 64]


@functools.lru_cache(maxsize=128)
def _tables(bits: int, device: torch.device) -> _Tables:
    return _Tables(bits, device)


def _words_view(data: torch.Tensor) -> torch.Tensor:
    """View a uint8 tensor (length a multiple of 8) as int64, copying if it is misaligned."""
    if data.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=data.device)
    if data.data_ptr() % 8:
        data = data.clone()
    return data.view(torch.int64)


def _pack_groups(tb: _Tables, V: torch.Tensor, W: torch.Tensor, S: torch.Tensor, H: torch.Tensor, E: torch.Tensor):
    """V: (r, 64) int64 values (overwritten); W: (r, bits) int64 output words.

    A straddling value k is the last value of its word, so its high part belongs to the
    word of value k+1: it is added to column k+1 (``H`` is zero for the other columns,
    whose values are shifted right by >= bits), then words are run sums of columns.
    """
    torch.bitwise_right_shift(V[:, :63], tb.hs_all, out=H)
    V <<= tb.s
    V[:, 1:] += H
    torch.cumsum(V, 1, out=S)
    torch.index_select(S, 1, tb.ends, out=W)
    if tb.bits > 1:
        torch.index_select(S, 1, tb.ends[:-1], out=E)  # run sum up to the previous word
        W[:, 1:] -= E


def pack_bits_torch(values: torch.Tensor, bits: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pack a torch integer tensor (any device) into a uint8 tensor on the same device.

    Implements the stream of spec/ddz.md with plain tensor ops; see the module docstring.
    """
    from ._numpy import check_bits, packed_nbytes, raise_bad_value

    bits = check_bits(bits)
    if values.dtype not in _INT_DTYPES:
        raise InvalidInputError(f"pack_bits needs an integer tensor, got dtype {values.dtype}")
    device = values.device
    flat = values.detach().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    elif flat.dtype in _UNSUPPORTED_OPS:  # few ops exist for these: check and compute in int64
        flat = flat.to(torch.int64)
    n = flat.numel()
    nbytes = packed_nbytes(n, bits)
    if n:
        lo, hi = torch.aminmax(flat)
        if int(lo) < 0 or int(hi) >= (1 << bits):
            bad = torch.nonzero((flat < 0) | (flat >= (1 << bits)))[0, 0]
            orig = values.detach().reshape(-1)
            raise_bad_value(tuple(values.shape), orig.cpu() if orig.dtype not in _UNSUPPORTED_OPS else flat.cpu(), int(bad), bits)
    if out is None:
        result = torch.empty(nbytes, dtype=torch.uint8, device=device)
    else:
        if not isinstance(out, torch.Tensor) or out.dtype != torch.uint8 or out.device != device:
            raise InvalidInputError(f"out must be a uint8 tensor on {device}")
        if out.numel() != nbytes:
            raise InvalidInputError(f"out has {out.numel()} bytes; {n} values at {bits} bits need exactly {nbytes}")
        if not out.is_contiguous():
            raise InvalidInputError("out must be contiguous")
        result = out
    dst = result.reshape(-1)
    if n == 0:
        return result
    tb = _tables(bits, device)
    m = n // 64
    if m:
        full = dst[: m * 8 * bits]
        direct = full.data_ptr() % 8 == 0
        words = full.view(torch.int64).view(m, bits) if direct else torch.empty(m, bits, dtype=torch.int64, device=device)
        src = flat[: m * 64].view(m, 64)

        def work(lo: int, hi: int) -> None:
            rows = min(tb.rows, hi - lo)
            Vb = torch.empty(rows, 64, dtype=torch.int64, device=device)
            Sb = torch.empty(rows, 64, dtype=torch.int64, device=device)
            Hb = torch.empty(rows, 63, dtype=torch.int64, device=device)
            Eb = torch.empty(rows, bits - 1, dtype=torch.int64, device=device)
            for r0 in range(lo, hi, rows):
                r1 = min(hi, r0 + rows)
                k = r1 - r0
                V = Vb[:k]
                V.copy_(src[r0:r1])
                _pack_groups(tb, V, words[r0:r1], Sb[:k], Hb[:k], Eb[:k])

        _for_chunks(m, tb.rows, device, work)
        if not direct:
            full.copy_(words.view(-1).view(torch.uint8))
    rem = n - 64 * m
    if rem:
        V = torch.zeros(1, 64, dtype=torch.int64, device=device)
        V[0, :rem] = flat[64 * m :]
        W = torch.empty(1, bits, dtype=torch.int64, device=device)
        _pack_groups(
            tb, V, W, torch.empty_like(V), torch.empty(1, 63, dtype=torch.int64, device=device),
            torch.empty(1, bits - 1, dtype=torch.int64, device=device),
        )
        dst[m * 8 * bits :].copy_(W.view(-1).view(torch.uint8)[: nbytes - m * 8 * bits])
    return result


def _unpack_rows(tb: _Tables, W: torch.Tensor, L: torch.Tensor, H: torch.Tensor) -> None:
    """W: (r, bits) int64 words -> L: (r, 64) int64 values."""
    r = W.shape[0]
    torch.index_select(W.reshape(-1), 0, tb.flat(r), out=L.view(-1))
    L >>= tb.s
    L &= tb.lomask
    if tb.strad.numel():
        torch.index_select(W, 1, tb.hw, out=H)
        H <<= tb.hs
        H &= tb.hmask
        L.index_add_(1, tb.strad, H)


def unpack_bits_torch(data: torch.Tensor, bits: int, count: int, start: int = 0, out: torch.Tensor | None = None) -> torch.Tensor:
    """Values ``start .. start+count-1`` of a stream held in a uint8 tensor, as int64 on its device.

    Implements the stream of spec/ddz.md with plain tensor ops; see the module docstring.
    ``out``, if given, is a contiguous integer tensor of ``count`` elements on the same device.
    """
    from ._numpy import check_bits, check_count, packed_nbytes

    bits = check_bits(bits)
    count = check_count(count, "count")
    start = check_count(start, "start")
    if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8:
        raise InvalidInputError("packed data must be a uint8 tensor")
    device = data.device
    src = data.detach().reshape(-1)
    need = packed_nbytes(start + count, bits)
    if src.numel() < need:
        raise InvalidInputError(
            f"packed data has {src.numel()} bytes; values [{start}, {start + count}) at {bits} bits need {need}"
        )
    if out is None:
        result = torch.empty(count, dtype=torch.int64, device=device)
    else:
        if not isinstance(out, torch.Tensor) or out.device != device or out.dtype not in _INT_DTYPES - {torch.bool}:
            raise InvalidInputError(f"out must be an integer tensor on {device}")
        if out.numel() != count or not out.is_contiguous():
            raise InvalidInputError(f"out must be a contiguous tensor of count={count} elements")
        if out.dtype != torch.int64:
            info = torch.iinfo(out.dtype)
            if info.max < (1 << bits) - 1:
                raise InvalidInputError(f"out dtype {out.dtype} cannot hold {bits}-bit values")
        result = out
    if count == 0:
        return result
    direct = result.dtype == torch.int64
    dst = result.reshape(-1) if direct else torch.empty(count, dtype=torch.int64, device=device)
    tb = _tables(bits, device)
    gb = 8 * bits  # bytes per group of 64 values
    end = start + count
    ga = -(-start // 64)  # first group entirely inside [start, end)
    gz = end // 64  # one past the last such group
    def one_group(g: int) -> torch.Tensor:
        raw = src[g * gb : min((g + 1) * gb, src.numel())]
        buf = torch.zeros(gb, dtype=torch.uint8, device=device)
        buf[: raw.numel()] = raw
        L = torch.empty(1, 64, dtype=torch.int64, device=device)
        H = torch.empty(1, tb.strad.numel(), dtype=torch.int64, device=device)
        _unpack_rows(tb, buf.view(torch.int64).view(1, bits), L, H)
        return L.view(-1)

    if gz > ga:
        words = _words_view(src[ga * gb : gz * gb]).view(gz - ga, bits)
        vals = dst[ga * 64 - start : gz * 64 - start].view(gz - ga, 64)

        def work(lo: int, hi: int) -> None:
            Hb = torch.empty(min(tb.rows, hi - lo), tb.strad.numel(), dtype=torch.int64, device=device)
            for r0 in range(lo, hi, tb.rows):
                r1 = min(hi, r0 + tb.rows)
                _unpack_rows(tb, words[r0:r1], vals[r0:r1], Hb[: r1 - r0])

        _for_chunks(gz - ga, tb.rows, device, work)
        if start % 64:
            dst[: ga * 64 - start] = one_group(ga - 1)[start % 64 :]
        if end % 64:
            dst[gz * 64 - start :] = one_group(gz)[: end % 64]
    else:  # inside one or two groups
        g = start // 64
        vals = one_group(g)
        if end > (g + 1) * 64:
            vals = torch.cat([vals, one_group(g + 1)])
        dst.copy_(vals[start - 64 * g : end - 64 * g])
    if not direct:
        result.reshape(-1).copy_(dst)
    return result
