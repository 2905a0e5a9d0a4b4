"""Budget planning, (k, dc, dh) solving and byte attribution of real .ddz files."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from ..errors import BudgetError, DDZError, InvalidInputError
from . import formulas as F

# ------------------------------------------------------------------------------------------------
# codec specs: "vq:dh=795,dc=5,k=1024", "topk:k=15", "pca:k=24", "quant:k=4", "lpld:ratio=40", "raw"
# ------------------------------------------------------------------------------------------------
_SPEC_KEYS = {
    "raw": {},
    "vq": {"dh": int, "dc": int, "k": int, "param_bytes": int},
    "topk": {"k": int},
    "pca": {"k": int},
    "quant": {"k": int},
    "lpld": {"ratio": float, "batch": int},
}
_REQUIRED = {"vq": ("dh", "dc", "k"), "topk": ("k",), "pca": ("k",), "quant": ("k",), "lpld": ("ratio",)}


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
        t = F.lpld_terms(ipc, classes, epochs, p["ratio"], p.get("batch", 128))
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
          all_candidates: bool = False) -> list[Proposal]:
    """Propose (k, dc, dh), dh divisible by dc and <= dh_max (default C), whose Eq. S13 ratio
    is >= ``ratio`` and at most ``ratio * (1 + slack)`` (so the budget is used, not wasted).
    For each dc (largest first) the proposal maximises the index bits per label
    ``m*log2 k`` (the information each label keeps), ties to the larger dh, then the larger
    k.  ``all_candidates`` returns every feasible (dc, k) with its largest dh."""
    if isinstance(ratio, bool) or not (isinstance(ratio, (int, float)) and 1 <= ratio < math.inf):
        raise InvalidInputError(f"ratio must be a finite number >= 1, got {ratio!r}")
    dh_max = classes if dh_max is None else F._pos_int("dh_max", dh_max)
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
            m_real = (target - one["codebook"]) / (one["indices"] + one["decoder"])
            m = min(math.floor(min(m_real, dh_max // dc)), dh_max // dc)  # cap before floor: no inf/overflow
            if m < 1:
                continue
            dh = m * dc
            b = F.s12(ipc, classes, epochs, dh, dc, k)
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


_TERMS = {
    "vq": {"indices": ("S12 batch data: n*(dh/dc)*log2(k)/8", "idx"),
           "indices_lo": ("S12 batch data, entropy-coded (low byte plane; the formula value and its difference "
                          "cover both planes)", "idx_lo"),
           "indices_hi": ("S12 batch data, entropy-coded (high bits plane; formula value on indices_lo)", None),
           "decoder": ("S12 decoder: C*dh*4", "dec"), "codebook": ("S12 codebook: k*dc*4", "cb"),
           "encoder": ("encoder P (not in S12; kept to encode more labels)", None)},
    "topk": {"values": ("S15 class prob.: n*2k", "val"), "indices": ("S15 top-k indices: n*log2(C)/8*k", "idx"),
             "rest": ("missing-mass bucket (not in S15): n*2", None)},
    "pca": {"proj": ("S16 PC projections: n*2k", "proj"), "components": ("S16 PC vectors: k*C*2", "comp"),
            "mean": ("PCA mean (not in S16): C*2", None)},
    "quant": {"indices": ("S17 level indices: n*C*log2(k)/8", "idx"), "levels": ("S17 levels: 2k", "lv")},
    "lpld": {"labels": ("S11 rows kept by LPLD: n_kept*C*2", "lab")},
    "tucker": {"core": ("HOSVD core (video paper B.4): N*prod(ranks) floats x 4 B (fp32, as the paper stores)", "elems"),
               "factor": ("HOSVD factor U_k per chunk: n_chunks*d*r floats x 4 B (the sample-axis factor, n x n per chunk "
                          "in the paper's code, is the identity and not stored)", "elems")},
    "int8-state": {"q": ("int8 VAE weights, Eq. 6: 1 B per weight", "elems"),
                   "scale": ("Eq. 6 scales s: 4 B per output channel", "elems"),
                   "zero_point": ("Eq. 6 zero points z: 1 B per output channel", "elems"),
                   "float": ("biases and norms kept float: 4 B each (fp32)", "elems")},
}
# bytes per stored element that the video formulas count (Eq. 6 int8 weights, fp32 everywhere else)
_VIDEO_ELEM_BYTES = {"q": 1, "zero_point": 1}


def _formula_for(codec, part: str, n: int, elems: int = 0) -> float | None:
    """The formula value (bytes) of one part of a validated ``codec``: soft-label parts holding
    ``n`` rows from the Eq. S11-S17 functions of :mod:`codec.budget.formulas`; video parts
    (``tucker``, ``int8-state``) from their ``elems`` stored elements at the paper's widths."""
    cid = codec.codec_id
    if cid in ("tucker", "int8-state"):
        return float(elems * _VIDEO_ELEM_BYTES.get(part, 4))
    C = codec.classes
    if n <= 0:
        return 0.0 if part in ("indices", "values", "proj", "labels") else None
    if cid == "vq":
        t = F.s12_row_terms(n, C, codec.dh, codec.dc, codec.k).terms
        return {"indices": t["indices"], "decoder": t["decoder"], "codebook": t["codebook"]}.get(part)
    if cid == "topk":
        t = F.s15_row_terms(n, C, codec.k).terms
        return {"values": t["values"], "indices": t["indices"]}.get(part)
    if cid == "pca":
        t = F.s16_row_terms(n, C, codec.k).terms
        return {"proj": t["projections"], "components": t["components"]}.get(part)
    if cid == "quant":
        t = F.s17_row_terms(n, C, codec.k).terms
        return {"indices": t["indices"], "levels": t["levels"]}.get(part)
    if cid == "lpld":
        return {"labels": F.s11_rows(n, C)}.get(part)
    return None


def _explain(info, formula: float | None, actual: int, codec, part: str | None, planes: int | None = None) -> str:
    """Notes on one section's bytes.  ``planes``: for an entropy-coded VQ low plane, the bytes
    of both index planes, which its formula value is compared with."""
    cid = codec.codec_id if codec is not None else None
    notes = []
    count = math.prod(info.shape) if info.shape else 1
    raw = info.decoded_length
    if info.bits is not None:
        packed = math.ceil(count * info.bits / 8)
        notes.append(f"bit-packed {count:,} values x {info.bits} bits = {count * info.bits:,} bits -> {packed:,} B"
                     + (f" ({packed * 8 - count * info.bits} padding bits in the last byte)" if packed * 8 != count * info.bits else ""))
        if formula is not None and cid in ("vq", "quant", "topk"):
            kk = codec.k if cid in ("vq", "quant") else codec.classes
            exact = math.log2(kk)
            if info.bits != exact:
                notes.append(f"formula uses log2({kk}) = {exact:.4f} bits, storage ceil = {info.bits} bits "
                             f"(+{count * (info.bits - exact) / 8:,.1f} B)")
    if info.zstd:
        pre = math.ceil(count * info.bits / 8) if info.bits is not None else raw
        notes.append(f"zstd: {pre:,} B -> {actual:,} B ({8 * actual / max(1, count):.3f} bits/value; saved {pre - actual:,} B)")
    if formula is not None and codec is not None:
        if cid == "vq" and part in ("decoder", "codebook") and codec.param_dtype == "f16":
            notes.append("stored fp16 (formula counts fp32, 4 B/value)")
        if cid == "tucker" and codec.dtype != "f32":
            notes.append(f"stored {codec.dtype} (formula counts fp32, 4 B/value)")
    if planes is not None:
        notes.append(f"both planes: {planes:,} B = {8 * planes / max(1, count):.3f} bits per index "
                     f"(bit-packed: {codec.bits}, formula log2({codec.k}) = {math.log2(codec.k):.3f})")
        actual = planes
    if formula is not None:
        d = actual - formula
        notes.append(f"actual - formula = {d:+,.1f} B" + (" (both planes)" if planes is not None else ""))
    return "; ".join(notes)


def _codec_for(cfg):
    """(validated codec, None) or (None, reason) for an objects-table codec config."""
    from ..codecs import codec_from_config

    try:
        return codec_from_config(cfg), None
    except DDZError as exc:
        return None, str(exc)


def attribute(path: str | os.PathLike) -> list[Row]:
    """Attribute every byte of a .ddz: preamble, each section (with its formula term and
    value), zero padding between sections, and the header.  Rows sum to the file size."""
    from ..format import open as ddz_open

    rows: list[Row] = []
    with ddz_open(path) as f:
        size = f.file_size
        owner: dict[str, tuple[str, str, dict]] = {}
        for oname, obj in f.objects.items():
            cfg = obj.get("codec", {}) if isinstance(obj, dict) else {}
            for part, sec in obj.get("sections", {}).items():
                owner[sec] = (oname, part, cfg, obj["sections"])
        meta = f.metadata if isinstance(f.metadata, dict) else {}
        from ..format.layout import PREAMBLE_SIZE

        rows.append(Row("preamble", "preamble", PREAMBLE_SIZE, "container overhead (magic, version, offsets, 2 CRC-32s)"))
        pos = PREAMBLE_SIZE
        for info in sorted(f.sections, key=lambda s: s.offset):
            if info.offset > pos:
                rows.append(Row("padding", f"padding before {info.name}", info.offset - pos,
                                f"container overhead: zero bytes aligning to {f.alignment} B", offset=pos))
            elif info.offset < pos:
                raise DDZError(f"section {info.name!r} overlaps the previous one", section=info.name, offset=info.offset)
            term, formula, codec, part, planes = "", None, None, None, None
            if info.name in owner:
                oname, part, cfg, secs = owner[info.name]
                codec, err = _codec_for(cfg)
                cid = cfg.get("id") if isinstance(cfg, dict) else None
                key = "factor" if cid == "tucker" and str(part).startswith("factor_") else part
                t = _TERMS.get(cid, {}).get(key) if isinstance(cid, str) else None
                n = info.shape[0] if info.shape else 1
                if codec is None:
                    term = f"object {oname!r}: invalid codec config ({err})"
                elif t is not None:
                    term = t[0]
                    if t[1] is not None:
                        try:
                            formula = _formula_for(codec, "indices" if part == "indices_lo" else part, n,
                                                   math.prod(info.shape))
                        except DDZError as exc:
                            term = f"object {oname!r}: no formula value ({exc})"
                    if part == "indices_lo" and codec.codec_id == "vq":
                        hi = secs.get("indices_hi")
                        planes = info.length + (f.info(hi).length if isinstance(hi, str) and hi in f else 0)
                else:
                    term = f"object {oname!r} ({cid}) part {part!r}"
            elif info.name.startswith(("aug/", "augment/")):
                term = "augmentation records (not in S11-S17)"
            elif info.name.startswith("llm/"):
                term = "LLM per-sequence data (not in S11-S17)"
            else:
                term = "plain section (no formula term)"
            rows.append(Row("section", info.name, info.length, term, formula,
                            _explain(info, formula, info.length, codec, part, planes), info.offset))
            pos = info.offset + info.length
        if f.header_offset > pos:
            rows.append(Row("padding", "padding before header", f.header_offset - pos, "container overhead", offset=pos))
        rows.append(Row("header", "header", f.header_length,
                        "container overhead: JSON header (section table with offsets, shapes, encodings, CRC-32s; objects; metadata)",
                        offset=f.header_offset))
        end = f.header_offset + f.header_length
        if size > end:
            rows.append(Row("padding", "trailing bytes", size - end, "bytes after the header", offset=end))
    total = sum(r.bytes for r in rows)
    if total != size:
        raise DDZError(f"attribution sums to {total} B but the file has {size} B")
    return rows


def summarize(rows: list[Row]) -> dict:
    """Totals by kind, plus data vs container overhead, in bytes."""
    by = {}
    for r in rows:
        by[r.kind] = by.get(r.kind, 0) + r.bytes
    total = sum(by.values())
    return {"total": total, "by_kind": by, "overhead": total - by.get("section", 0)}
