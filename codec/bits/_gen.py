"""Generator of :mod:`codec.bits._kernels` (run ``python -m codec.bits._gen``).

Every kernel works on *groups of 8 values*, because 8 values of ``b`` bits are exactly
``b`` whole bytes of the stream (spec/ddz.md, "bit-packed sections": value i occupies
stream bits [i*b, (i+1)*b), stream bit j is bit j%8 of byte j//8). Group g is bytes
[g*b, (g+1)*b). All shifts, masks and offsets are constants of the generated code.

For every width ``b`` in 1..32:

* ``unpack_b(src, out, g0, g1, o)`` (any integer ``out``): value k of group g is
  ``(load_u64(src, g*b + (k*b >> 3)) >> (k*b & 7)) & (2**b - 1)``: one unaligned 64-bit
  load, one shift, one mask.
* ``pack_b(vals, dst, g0, g1, i)`` (any integer ``vals``): ORs the 8 values into
  ceil(b/8) 64-bit words with constant shifts and stores exactly ``b`` bytes (u64/u32/
  u16/u8 stores), so groups written by different threads never share a byte.

and, for BMI2 hosts (:data:`codec.bits._intrinsics.HAVE_FAST_PDEP`), variants for
``vals``/``out`` whose element width L (8, 16 or 32 bits) is at least ``b``: a 64-bit
word holds P = 64/L elements, and one ``pdep`` spreads P consecutive ``b``-bit fields
of the stream into the P lanes (unpack), one ``pext`` gathers them back (pack):

* ``unpack_b_xL``: unit u (values u*P .. u*P+P-1) is
  ``pdep(load_u64(src, p + (u*P*b >> 3)) >> (u*P*b & 7), LANES)`` stored as one u64.
* ``pack_b_xL``: unit u is ``pext(load_u64(vals, i + u*P), LANES)``, a field of P*b
  bits; the 8/P fields are combined into words like the values of ``pack_b``. A value
  >= 2**b shows up as a bit outside LANES.

Every pack kernel returns a uint64 that is non-zero iff some value read was >= 2**b.
Unpack kernels read at most ``(7*b >> 3) + 8`` bytes from the first byte of a group;
the caller guarantees this stays inside ``src``.

All arithmetic is on uint64 with uint64 constants: numba types a mix of uint64 and
int64 as float64, which would be both slow and wrong. A test (tests/test_bits.py)
checks that the checked-in file equals :func:`render`.
"""

from __future__ import annotations

from pathlib import Path

MAX_BITS = 32
LANE_WIDTHS = (8, 16, 32)
TARGET = Path(__file__).with_name("_kernels.py")


def _lanes(L: int, b: int) -> int:
    return sum(((1 << b) - 1) << (L * j) for j in range(64 // L))


def _stores(b: int, nwords: int) -> list[str]:
    """Exactly b bytes from words w0.. at dst[p:]."""
    lines, pos, rem, wi = [], 0, b, 0
    while rem >= 8:
        lines.append(f"        store_u64(dst, p + {pos}, w{wi})")
        pos, rem, wi = pos + 8, rem - 8, wi + 1
    shift = 0
    for size in (4, 2, 1):
        if rem >= size:
            val = f"w{wi} >> U{shift}" if shift else f"w{wi}"
            lines.append(f"        store_u{8 * size}(dst, p + {pos}, {val})")
            pos, rem, shift = pos + size, rem - size, shift + 8 * size
    assert pos == b and rem == 0 and wi < nwords + (rem == 0)
    return lines


def _combine(fields: list[str], width: int, b: int) -> list[str]:
    """OR fields of `width` bits, field k at bit k*width, into the 64-bit words of a b-byte group."""
    nwords = (8 * b + 63) // 64
    words: list[list[str]] = [[] for _ in range(nwords)]
    for k, f in enumerate(fields):
        off = k * width
        w, s = off >> 6, off & 63
        words[w].append(f"({f} << U{s})" if s else f)
        if s + width > 64:
            words[w + 1].append(f"({f} >> U{64 - s})")
    return [f"        w{w} = " + " | ".join(parts) for w, parts in enumerate(words)] + _stores(b, nwords)


def _unpack(b: int) -> str:
    lines = [
        "@njit(nogil=True)",
        f"def unpack_{b}(src, out, g0, g1, o):",
        "    for g in range(g0, g1):",
        f"        p = g * {b}",
    ]
    for k in range(8):
        off = k * b
        load = f"load_u64(src, p + {off >> 3})"
        expr = f"({load} >> U{off & 7}) & M{b}" if off & 7 else f"{load} & M{b}"
        lines.append(f"        out[o + {k}] = {expr}")
    lines.append("        o += 8")
    return "\n".join(lines)


def _pack(b: int) -> str:
    lines = [
        "@njit(nogil=True)",
        f"def pack_{b}(vals, dst, g0, g1, i):",
        "    bad = U0",
        "    for g in range(g0, g1):",
        f"        p = g * {b}",
    ]
    for k in range(8):
        lines.append(f"        v{k} = np.uint64(vals[i + {k}])")
    lines.append("        bad |= " + " | ".join(f"v{k}" for k in range(8)))
    lines += _combine([f"v{k}" for k in range(8)], b, b)
    lines += ["        i += 8", f"    return bad >> U{b}"]
    return "\n".join(lines)


def _unpack_pdep_ok(L: int, b: int) -> bool:
    P = 64 // L
    return b <= L and all(((u * P * b) & 7) + P * b <= 64 for u in range(8 // P))


def _unpack_pdep(L: int, b: int) -> str:
    P = 64 // L
    lines = [
        "@njit(nogil=True)",
        f"def unpack_{b}_x{L}(src, out, g0, g1, o):",
        "    for g in range(g0, g1):",
        f"        p = g * {b}",
    ]
    for u in range(8 // P):
        off = u * P * b
        load = f"load_u64(src, p + {off >> 3})"
        if off & 7:
            load = f"({load} >> U{off & 7})"
        lines.append(f"        store_u64(out, o + {u * P}, pdep({load}, X{L}_{b}))")
    lines.append("        o += 8")
    return "\n".join(lines)


def _pack_pext(L: int, b: int) -> str:
    P = 64 // L
    U = 8 // P
    lines = [
        "@njit(nogil=True)",
        f"def pack_{b}_x{L}(vals, dst, g0, g1, i):",
        "    bad = U0",
        "    for g in range(g0, g1):",
        f"        p = g * {b}",
    ]
    for u in range(U):
        lines.append(f"        a{u} = load_u64(vals, i + {u * P})")
    lines.append("        bad |= " + " | ".join(f"a{u}" for u in range(U)))
    for u in range(U):
        lines.append(f"        f{u} = pext(a{u}, X{L}_{b})")
    lines += _combine([f"f{u}" for u in range(U)], P * b, b)
    lines += ["        i += 8", f"    return bad & NX{L}_{b}"]
    return "\n".join(lines)


def render() -> str:
    head = [
        '"""GENERATED by ``python -m codec.bits._gen`` -- do not edit by hand.\n\n'
        "Per-width pack/unpack kernels over groups of 8 values; see codec/bits/_gen.py.\n"
        '"""',
        "# ruff: noqa",
        "import numpy as np\nfrom numba import njit\n\n"
        "from ._intrinsics import load_u64, pdep, pext, store_u8, store_u16, store_u32, store_u64",
        "\n".join(f"U{s} = np.uint64({s})" for s in range(64)),
        "\n".join(f"M{b} = np.uint64({(1 << b) - 1})" for b in range(1, MAX_BITS + 1)),
        "\n".join(
            f"X{L}_{b} = np.uint64({_lanes(L, b):#x})\nNX{L}_{b} = np.uint64({(~_lanes(L, b)) & (2**64 - 1):#x})"
            for L in LANE_WIDTHS
            for b in range(1, L + 1)
        ),
    ]
    body = []
    for b in range(1, MAX_BITS + 1):
        body.append(_unpack(b))
        body.append(_pack(b))
        for L in LANE_WIDTHS:
            if b <= L:
                if _unpack_pdep_ok(L, b):
                    body.append(_unpack_pdep(L, b))
                body.append(_pack_pext(L, b))
    tail = [
        "UNPACK = (None, " + ", ".join(f"unpack_{b}" for b in range(1, MAX_BITS + 1)) + ")",
        "PACK = (None, " + ", ".join(f"pack_{b}" for b in range(1, MAX_BITS + 1)) + ")",
        "# by lane width L (bits of the array element): BMI2 kernels, None where not applicable",
        "UNPACK_PDEP = {"
        + ", ".join(
            f"{L}: (None, "
            + ", ".join(f"unpack_{b}_x{L}" if b <= L and _unpack_pdep_ok(L, b) else "None" for b in range(1, MAX_BITS + 1))
            + ")"
            for L in LANE_WIDTHS
        )
        + "}",
        "PACK_PEXT = {"
        + ", ".join(
            f"{L}: (None, " + ", ".join(f"pack_{b}_x{L}" if b <= L else "None" for b in range(1, MAX_BITS + 1)) + ")"
            for L in LANE_WIDTHS
        )
        + "}",
    ]
    return "\n\n".join(head) + "\n\n\n" + "\n\n\n".join(body) + "\n\n\n" + "\n".join(tail) + "\n"


def main() -> None:
    TARGET.write_text(render())
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
