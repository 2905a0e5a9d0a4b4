"""Budget planning, (k, dc, dh) solving and byte attribution of real .ddz files."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from .._args import float_arg
from ..codecs.base import BudgetTerm
from ..errors import BudgetError, DDZError, InvalidInputError
from ..format.layout import DTYPES, regions
from . import formulas as F

# ------------------------------------------------------------------------------------------------
# codec specs: "vq:dh=795,dc=5,k=1024", "topk:k=15", "pca:k=24", "quant:k=4", "lpld:prune_ratio=0.975",
# "lpld:ratio=40", "raw"
# ------------------------------------------------------------------------------------------------
_SPEC_KEYS: dict[str, dict[str, type]] = {
    "raw": {},
    "vq": {"dh": int, "dc": int, "k": int, "param_bytes": int},
    "topk": {"k": int},
    "pca": {"k": int},
    "quant": {"k": int},
    "lpld": {"prune_ratio": float, "ratio": float, "batch": int},
}
_REQUIRED = {"vq": ("dh", "dc", "k"), "topk": ("k",), "pca": ("k",), "quant": ("k",)}


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"vq:dh=795,dc=5,k=1024"`` -> ``("vq", {"dh": 795, "dc": 5, "k": 1024})``."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInputError(f"codec spec must be a non-empty string like 'vq:dh=795,dc=5,k=1024', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in _SPEC_KEYS:
        raise InvalidInputError(f"unknown codec {name!r} in spec {spec!r}; known: {sorted(_SPEC_KEYS)}")
    params: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq or key not in _SPEC_KEYS[name]:
            raise InvalidInputError(f"bad parameter {item!r} in spec {spec!r}; {name} takes {sorted(_SPEC_KEYS[name]) or 'none'}")
        if key in params:
            raise InvalidInputError(f"parameter {key} given twice in spec {spec!r}")
        try:
            params[key] = _SPEC_KEYS[name][key](val)
        except ValueError:
            raise InvalidInputError(f"parameter {key} in spec {spec!r} must be a number, got {val!r}") from None
        if isinstance(params[key], float) and not math.isfinite(params[key]):
            raise InvalidInputError(f"parameter {key} in spec {spec!r} must be finite, got {val!r}")
    if "param_bytes" in params and params["param_bytes"] not in (2, 4):
        raise InvalidInputError(f"param_bytes in spec {spec!r} must be 2 (fp16) or 4 (fp32), got {params['param_bytes']}")
    if name == "lpld" and ("ratio" in params) == ("prune_ratio" in params):
        raise InvalidInputError(f"spec {spec!r} needs prune_ratio (LPLD's --prune_ratio p: int(E*nb*(1-p)) batches) "
                                "or ratio (a nominal ratio r: floor(E*nb/r)), exactly one")
    missing = [k for k in _REQUIRED.get(name, ()) if k not in params]
    if missing:
        raise InvalidInputError(f"spec {spec!r} lacks {', '.join(missing)}")
    return name, params


@dataclass
class PlanRow:
    codec: str
    bytes: float  # the paper's formula, as printed (real-valued log2)
    stored_bytes: int  # what a .ddz stores for those terms (ceil(log2), whole bytes)
    ratio: float  # S11 / bytes
    stored_ratio: float
    terms: dict
    stored_terms: dict
    formula: str

    def to_json(self) -> dict:
        d = asdict(self)
        d["MiB"] = self.bytes / F.MiB
        d["GiB"] = self.bytes / F.GiB
        d["stored_MiB"] = self.stored_bytes / F.MiB
        d["unit"] = "bytes (MiB = 1024**2 B, GiB = 1024**3 B)"
        return d


def _check_with_codec(name: str, classes: int, p: dict, spec: str) -> None:
    """Refuse a spec that the codec itself would refuse, by building its config (the codecs'
    own checks are the one source; LPLD's ratio and batch are checked by its pool formula)."""
    from ..codecs import codec_from_config

    cfg: dict[str, Any] = {"id": name, "classes": classes}
    if name == "vq":
        cfg.update(dh=p["dh"], dc=p["dc"], k=p["k"], param_dtype="f16" if p.get("param_bytes") == 2 else "f32")
    elif name != "lpld":
        cfg["k"] = p["k"]
    try:
        codec_from_config(cfg)
    except InvalidInputError as exc:
        raise InvalidInputError(f"spec {spec!r} for {classes} classes: {exc}") from None


def plan(ipc: int, classes: int, epochs: int, spec: str) -> PlanRow:
    """Bytes of one codec spec for IPC x C x EPOCHS soft labels, with the ratio to S11."""
    name, p = parse_spec(spec)
    s11 = F.s11(ipc, classes, epochs)
    if name != "raw":
        _check_with_codec(name, classes, p, spec)
    if name == "raw":
        t = F.Terms({"labels": s11})
        st, formula = t, "S11"
    elif name == "vq":
        pb = p.get("param_bytes", 4)
        t = F.s12_terms(ipc, classes, epochs, p["dh"], p["dc"], p["k"])
        st, formula = F.s12_stored_terms(ipc, classes, epochs, p["dh"], p["dc"], p["k"], pb), "S12"
    elif name == "topk":
        t, st, formula = F.s15_terms(ipc, classes, epochs, p["k"]), F.s15_stored_terms(ipc, classes, epochs, p["k"]), "S15"
    elif name == "pca":
        t, st, formula = F.s16_terms(ipc, classes, epochs, p["k"]), F.s16_stored_terms(ipc, classes, epochs, p["k"]), "S16"
    elif name == "quant":
        t, st, formula = F.s17_terms(ipc, classes, epochs, p["k"]), F.s17_stored_terms(ipc, classes, epochs, p["k"]), "S17"
    else:  # lpld
        t = F.lpld_terms(ipc, classes, epochs, p.get("ratio"), p.get("batch", 128), prune_ratio=p.get("prune_ratio"))
        st, formula = t, "LPLD"
    return PlanRow(spec.strip(), t.total, math.ceil(st.total), s11 / t.total, s11 / math.ceil(st.total),
                   dict(t.terms), {k: int(math.ceil(v)) for k, v in st.terms.items()}, formula)


# ------------------------------------------------------------------------------------------------
# solve: (k, dc, dh) meeting a ratio, larger dc first (Table S8 / Sec. 5.3)
# ------------------------------------------------------------------------------------------------
@dataclass
class Proposal:
    dc: int
    k: int
    dh: int
    ratio: float
    bytes: float
    bits_per_label: int

    @property
    def spec(self) -> str:
        return f"vq:dh={self.dh},dc={self.dc},k={self.k}"


DEFAULT_DCS = (100, 50, 40, 25, 20, 15, 10, 5)
DEFAULT_KS = tuple(2**b for b in range(1, 13))  # 2 .. 4096


def solve(ipc: int, classes: int, epochs: int, ratio: float, *, dcs: Iterable[int] = DEFAULT_DCS,
          ks: Iterable[int] = DEFAULT_KS, dh_max: int | None = None, slack: float = 0.10,
          all_candidates: bool = False, param_bytes: int = F.FP32) -> list[Proposal]:
    """Propose (k, dc, dh), dh divisible by dc and <= dh_max (default C), whose Eq. S13 ratio
    is >= ``ratio`` and at most ``ratio * (1 + slack)`` (so the budget is used, not wasted).
    ``param_bytes``: 4 counts decoder and codebook in fp32 as S12 prints them, 2 for a codec
    stored with ``param_dtype="f16"``.
    For each dc (largest first) the proposal maximises the index bits per label
    ``m*log2 k`` (the information each label keeps), ties to the larger dh, then the larger
    k.  ``all_candidates`` returns every feasible (dc, k) with its largest dh."""
    ratio = float_arg("ratio", ratio, 1)
    dh_max = classes if dh_max is None else F._pos_int("dh_max", dh_max)
    if param_bytes not in (F.FP16, F.FP32):
        raise InvalidInputError(f"param_bytes must be 2 (fp16) or 4 (fp32), got {param_bytes!r}")
    pscale = param_bytes / F.FP32
    dcs = [F._pos_int("dc", d) for d in dcs]
    ks = [F._pos_int("k", x) for x in ks]
    if any(x < 2 for x in ks):
        raise InvalidInputError(f"every k must be at least 2 (log2 k > 0), got {sorted(ks)}")
    target = F.s11(ipc, classes, epochs) / ratio
    out: list[Proposal] = []
    n = F.n_labels(ipc, classes, epochs)
    least_compressed = None  # the lowest ratio among candidates refused for exceeding ratio * (1 + slack)
    for dc in sorted(set(int(d) for d in dcs), reverse=True):
        if dc > dh_max:
            continue
        best = None
        for k in sorted(set(int(x) for x in ks)):
            # S12 is linear in m: indices and decoder grow with m, the codebook does not.  Largest
            # m (dh = m*dc) with m * (indices + decoder at m = 1) + codebook <= target:
            one = F.s12_row_terms(n, classes, dc, dc, k).terms
            m_real = (target - pscale * one["codebook"]) / (one["indices"] + pscale * one["decoder"])
            m = min(math.floor(min(m_real, dh_max // dc)), dh_max // dc)  # cap before floor: no inf/overflow
            if m < 1:
                continue
            dh = m * dc
            t = F.s12_terms(ipc, classes, epochs, dh, dc, k).terms
            b = t["indices"] + pscale * (t["decoder"] + t["codebook"])
            if b > target * (1 + 1e-12):
                continue
            prop = Proposal(dc, k, dh, F.s11(ipc, classes, epochs) / b, b, m * F.bits_for(k))
            if prop.ratio > ratio * (1 + slack):
                least_compressed = min(prop.ratio, least_compressed or math.inf)
                continue
            if all_candidates:
                out.append(prop)
            else:
                key = (round(m * math.log2(k), 6), dh, k)
                if best is None or key > best[0]:
                    best = (key, prop)
        if best is not None and not all_candidates:
            out.append(best[1])
    if not out:
        where = f"for IPC {ipc}, {classes} classes, {epochs} epochs"
        if least_compressed is not None:
            raise BudgetError(f"no (k, dc, dh) with dh <= {dh_max} lands in [{ratio:g}x, {ratio * (1 + slack):g}x] {where}: "
                              f"every candidate compresses more (the least {least_compressed:.2f}x), so any of them fits "
                              "the budget; LPLD pruning of fp16 labels reaches ratios this low exactly")
        raise BudgetError(f"no (k, dc, dh) with dh <= {dh_max} reaches a {ratio:g}x ratio {where}")
    return out


# ------------------------------------------------------------------------------------------------
# attribute: every byte of a real .ddz
# ------------------------------------------------------------------------------------------------
@dataclass
class Row:
    kind: str  # preamble | section | padding | header
    name: str
    bytes: int
    term: str = ""
    formula_bytes: float | None = None
    note: str = ""
    offset: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def _explain(info: Any, term: BudgetTerm | None, actual: int, parts: list[str]) -> str:
    """Notes on one section's bytes against its formula term; ``actual`` is the bytes of all
    the term's stored ``parts`` (this one and those it ``covers``: both planes of an
    entropy-coded index stream)."""
    notes = []
    count = math.prod(info.shape) if info.shape else 1
    formula = term.formula_bytes if term is not None else None
    if info.bits is not None:
        packed = math.ceil(count * info.bits / 8)
        notes.append(f"bit-packed {count:,} values x {info.bits} bits = {count * info.bits:,} bits -> {packed:,} B"
                     + (f" ({packed * 8 - count * info.bits} padding bits in the last byte)" if packed * 8 != count * info.bits else ""))
        if formula is not None and term is not None and term.log2_of is not None:
            exact = math.log2(term.log2_of)
            if info.bits != exact:
                notes.append(f"formula uses log2({term.log2_of}) = {exact:.4f} bits, storage ceil = {info.bits} bits "
                             f"(+{count * (info.bits - exact) / 8:,.1f} B)")
    if info.zstd:
        pre = math.ceil(count * info.bits / 8) if info.bits is not None else info.decoded_length
        notes.append(f"zstd: {pre:,} B -> {info.length:,} B ({8 * info.length / max(1, count):.3f} bits/value; "
                     f"saved {pre - info.length:,} B)")
    if formula is not None and term is not None and term.formula_dtype is not None and info.dtype != term.formula_dtype:
        width = DTYPES[term.formula_dtype].itemsize
        notes.append(f"stored {info.dtype} (formula counts {term.formula_dtype}, {width} B/value)")
    covered = term is not None and bool(term.covers)
    if covered and term is not None:
        k = term.log2_of
        notes.append(f"term total ({' + '.join(parts)}): {actual:,} B = {8 * actual / max(1, count):.3f} bits per value"
                     + (f" (bit-packed: {max(1, (k - 1).bit_length())}, formula log2({k}) = {math.log2(k):.3f})" if k else ""))
    if formula is not None:
        notes.append(f"actual - formula = {actual - formula:+,.1f} B" + (" (term total)" if covered else ""))
    return "; ".join(notes)


def _object_terms(f: Any, oname: str, obj: Any) -> tuple[dict[str, Any], dict[str, BudgetTerm], str]:
    """``(sections by part, budget terms by part, label of a part with no term)`` of one
    objects-table entry, from its codec's ``budget_terms`` hook."""
    from ..codecs import codec_from_config

    secs = obj.get("sections", {}) if isinstance(obj, dict) else {}
    cfg = obj.get("codec", {}) if isinstance(obj, dict) else {}
    try:
        codec = codec_from_config(cfg)
    except DDZError as exc:
        return secs, {}, f"object {oname!r}: invalid codec config ({exc})"
    other = f"object {oname!r} ({codec.codec_id}) part"
    try:
        shapes = {p: f.info(sec).shape for p, sec in secs.items() if isinstance(sec, str) and sec in f}
        return secs, codec.budget_terms(shapes), other
    except DDZError as exc:
        return secs, {}, f"object {oname!r}: no formula value ({exc})"


def attribute(path: str | os.PathLike) -> list[Row]:
    """Attribute every byte of a .ddz: preamble, each section (with its formula term and
    value, from the owning object's codec: ``Codec.budget_terms``), zero padding between
    sections (``codec.format.layout.regions``), and the header.  Rows sum to the file size.
    For a sharded set (spec/sets.md) the rows cover the index file, then every byte of every
    shard (names prefixed ``SHARD:``, terms from the set's objects table and each shard's
    rows), and sum to the index plus every shard's size."""
    from ..format import DDZSet, open as ddz_open

    with ddz_open(path) as f:
        if not isinstance(f, DDZSet):
            return _attribute_file(f, f.objects)
        rows = [Row("index", "set index", f.index_length,
                    f"container overhead: the set's JSON index ({len(f.shards)} shards, row ranges, objects, metadata)")]
        size = f.index_length
        for i, rec in enumerate(f.shards):
            for r in _attribute_file(f.shard(i), f.objects):
                r.name = f"{rec.name}:{r.name}"
                rows.append(r)
            size += rec.file_length
    total = sum(r.bytes for r in rows)
    if total != size:
        raise DDZError(f"attribution sums to {total} B but the set has {size} B")
    return rows


def _attribute_file(f: Any, objects: dict) -> list[Row]:
    """Rows of one open .ddz file, its sections' terms taken from ``objects`` (its own, or its set's)."""
    rows: list[Row] = []
    owner: dict[str, tuple[str, BudgetTerm | None, str, dict[str, Any]]] = {}
    for oname, obj in objects.items():
        secs, terms, other = _object_terms(f, oname, obj)
        for part, sec in secs.items():
            owner[sec] = (part, terms.get(part), other, secs)
    by_name = {info.name: info for info in f.sections}
    spans = [(info.name, info.offset, info.length) for info in f.sections]
    for reg in regions(spans, f.header_offset, f.header_length, f.file_size):
        if reg.kind == "preamble":
            rows.append(Row("preamble", "preamble", reg.length, "container overhead (magic, version, offsets, 2 CRC-32s)"))
        elif reg.kind == "header":
            rows.append(Row("header", "header", reg.length, "container overhead: JSON header (section table with "
                            "offsets, shapes, encodings, CRC-32s; objects; metadata)", offset=reg.offset))
        elif reg.kind == "padding":
            why = {"trailing bytes": "bytes after the header", "padding before header": "container overhead"}.get(
                reg.name, f"container overhead: zero bytes aligning to {f.alignment} B")
            rows.append(Row("padding", reg.name, reg.length, why, offset=reg.offset))
        else:
            info = by_name[reg.name]
            term, actual, parts = None, info.length, []
            if info.name in owner:
                part, term, other, secs = owner[info.name]
                label = term.label if term is not None else (f"{other} {part!r}" if other.endswith("part") else other)
                if term is not None:
                    parts = [part, *(p for p in term.covers if isinstance(secs.get(p), str) and secs[p] in f)]
                    actual = sum(f.info(secs[p]).length for p in parts)
            else:
                group = info.name.partition("/")[0] if "/" in info.name else None
                label = f"plain section of group {group!r} (in no formula)" if group else "plain section (in no formula)"
            rows.append(Row("section", info.name, info.length, label, term.formula_bytes if term is not None else None,
                            _explain(info, term, actual, parts), info.offset))
    total = sum(r.bytes for r in rows)
    if total != f.file_size:
        raise DDZError(f"attribution sums to {total} B but the file has {f.file_size} B")
    return rows


def summarize(rows: list[Row]) -> dict:
    """Totals by kind, plus data vs container overhead, in bytes."""
    by: dict[str, int] = {}
    for r in rows:
        by[r.kind] = by.get(r.kind, 0) + r.bytes
    total = sum(by.values())
    return {"total": total, "by_kind": by, "overhead": total - by.get("section", 0)}
