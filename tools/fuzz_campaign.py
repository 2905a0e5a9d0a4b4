"""A seeded fuzz campaign over every archive kind the library writes and every reader entry point.

    python tools/fuzz_campaign.py --cases 100000 --seed 0 --workers 2 --out campaign.json
    python tools/fuzz_campaign.py --cases 300 --seed 1 --workers 1          # the CI slice (tests/test_fuzz_campaign.py)
    python tools/fuzz_campaign.py --replay KIND:SEED                         # rerun one case here, with its traceback
    python tools/fuzz_campaign.py --disk-full                                # root only: a real tmpfs, every free size

Base archives (built once, deterministically): ``container`` (every dtype, 0-d and empty arrays,
bit-packed, zstd and bit-packed+zstd sections, an opaque object), ``vq`` (a trained VQ codec,
bit-packed indices), ``vq-entropy`` (zstd index planes, 9-bit codes), ``replay`` (top-k labels with
CutMix/Mixup augmentation records), ``fkd`` (an FKD label tree imported: crop pools, keys, targets),
``softlabels`` (PCA / quant / LPLD in turn), ``llm`` (token-level top-k labels), ``video``
(``pack_latents``: int8 VAE + Tucker latents + labels + soft labels), ``video-cli`` (``ddz pack
--vae-zstd 3 --storage f16 --decoder-only``) and ``video-lvdd`` (``ddz pack`` of LVDD's own Tucker
``synthetic_data.pt`` and quanto VAE folder). The producers' files come from tests/producers.py.

Case ``i`` takes kind ``kinds[i % len(kinds)]`` and its own seed; its mutation (bit flips anywhere
or in the payload, byte sets, truncation, extension, payload values re-sealed under correct CRCs,
header JSON edits re-sealed, layout-consistent section edits, bombs) is drawn from that seed, so a
case replays exactly. Every case runs every entry point: ``open/keys/info/get/get_rows/verify``,
``open(verify=True)``, ``codec.load(...)`` and what it returns (``len``, ``[i]``, ``decode_batch``,
``latents``, ``labels``, ``rows_at``, replay records/views/loader, FKD crops/loader, LLM sequences), ``open_archive``,
and ``ddz info/info --json/verify/budget/budget --json/unpack`` through the CLI's ``main`` with
output captured. Each entry point is one of: ok, a DDZError, or an escape (any other exception).

Workers are subprocesses (``RLIMIT_AS`` = their start-up size + ``--mem-cap``, one torch thread)
that run many cases each; the parent gives a case ``--hard-timeout`` seconds before killing the
worker (outcome ``timeout``) and restarts a worker that died (``signal``). Per case a worker
reports CPU and wall seconds and its peak RSS above its baseline (``/proc/self/clear_refs``).
A case is *slow* above 5 s of CPU time and *over-memory* above 2 GiB peak.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

KINDS = ("container", "vq", "vq-entropy", "replay", "fkd", "softlabels", "llm", "video", "video-cli", "video-lvdd")
MUTATIONS = ("bitflip", "payload_flip", "byteset", "truncate", "extend", "payload_resealed", "header_edit",
             "header_edit", "section_edit", "bomb", "combo")
SLOW_S = 5.0
OVER_MEM = 2 << 30


def tests_helper(name: str):
    """A helper module of tests/ (``producers``, ``ddzutil``), imported without leaving tests/ on sys.path."""
    import importlib

    sys.path.insert(0, os.path.join(_ROOT, "tests"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


# ------------------------------------------------------------------------------------------------
# base archives
# ------------------------------------------------------------------------------------------------
def build_bases(folder: str) -> dict[str, str]:
    """Write one archive per kind into ``folder`` (deterministic); returns {kind: path}."""
    import numpy as np
    import torch

    import codec
    from codec.softlabels import fit, save_softlabels, train_vq
    from codec.softlabels.augment import write_replay_archive
    from codec.softlabels.llm import write_llm_archive
    from codec.codecs.lpld import LPLDCodec
    from codec.codecs.pca import PCACodec
    from codec.codecs.quant import QuantCodec
    from codec.codecs.topk import TopKCodec
    from codec.video import pack_latents, save_vae_dir, tiny_vae_config, vae_from_config

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    out = {}
    p = os.path.join(folder, "container.ddz")
    with codec.Writer(p, {"note": "mixed", "nested": {"a": [1, 2, {"b": None}]}, "labels": ["x", "y"]}, alignment=128) as w:
        w.add("f32", rng.standard_normal((6, 4)).astype(np.float32))
        w.add("f16", rng.standard_normal(7).astype(np.float16))
        w.add("bf16", torch.randn(3, 2, dtype=torch.bfloat16))
        w.add("f64", rng.standard_normal((2, 2)))
        w.add("bool", rng.random(9) > 0.5)
        w.add("i8", rng.integers(-128, 127, 5).astype(np.int8))
        w.add("u16", rng.integers(0, 60000, (3, 3)).astype(np.uint16))
        w.add("i32", rng.integers(-9, 9, 4).astype(np.int32))
        w.add("u64", rng.integers(0, 2**40, 3).astype(np.uint64))
        w.add("scalar", np.array(7, np.int64))
        w.add("empty", np.zeros((0, 3), np.float32))
        w.add("packed", rng.integers(0, 1000, (25, 2)).astype(np.uint16), bits=10)
        w.add("packed1", (rng.random(70) > 0.5).astype(np.uint8), bits=1)
        w.add("zstd", np.repeat(np.arange(40, dtype=np.float32), 5), zstd=3)
        with w.section("packed_zstd", "u32", (3,), bits=17, zstd=5) as s:
            s.append(rng.integers(0, 2**17, (8, 3)).astype(np.uint32))
            s.append(rng.integers(0, 2**17, (6, 3)).astype(np.uint32))
        w.add_object("thing", {"id": "future-codec", "k": 3}, {"a": "f32", "b": "packed"}, must_understand=False)
    out["container"] = p

    C = 10
    y = torch.softmax(torch.randn(400, C, generator=torch.Generator().manual_seed(1)) * 2, 1)
    vq = train_vq(y, dh=10, dc=5, k=16, epochs=2, batch_size=100, init_sample=400, progress=False)
    out["vq"] = save_softlabels(os.path.join(folder, "vq.ddz"), vq, y[:60])
    vqe = train_vq(y, dh=10, dc=5, k=300, epochs=1, batch_size=100, init_sample=400, entropy=True, progress=False)
    out["vq-entropy"] = save_softlabels(os.path.join(folder, "vq-entropy.ddz"), vqe, y[:60])

    out["replay"] = write_replay_archive(os.path.join(folder, "replay.ddz"), TopKCodec(C, 3, input="logits"),
                                         tests_helper("ddzutil").replay_records(C, 4, seed=2),
                                         classes=C, num_samples=10, crop={"size": 16, "interpolation": "bilinear"})
    for name, cod in (("pca", fit(PCACodec(C, 4), y)), ("quant", fit(QuantCodec(C, 4), y)),
                      ("lpld", LPLDCodec(C, 2.0, batch_size=5, batches_per_epoch=4, epochs=6))):
        out[f"softlabels-{name}"] = save_softlabels(os.path.join(folder, f"softlabels-{name}.ddz"), cod, y[:120])

    g = torch.Generator().manual_seed(3)
    V, K = 300, 5
    seqs = []
    for _ in range(6):
        L = int(torch.randint(4, 12, (1,), generator=g))
        seqs.append({"tokens": torch.randint(V, (L,), generator=g), "loss_mask": torch.arange(L) >= 1, "prompt_len": 1,
                     "topk_ids": torch.randint(V, (L, K), generator=g), "topk_logits": torch.randn(L, K, generator=g)})
    out["llm"] = write_llm_archive(os.path.join(folder, "llm.ddz"), lambda: seqs, vocab=V, k=K,
                                   vq={"dh": 5, "dc": 5, "k": 8, "epochs": 1, "batch_size": 16, "progress": False})["path"]

    vae = vae_from_config(tiny_vae_config(blocks=(16, 32), groups=4), seed=0)
    x, lab = torch.randn(5, 2, 4, 8, 8, generator=g), torch.tensor([0, 1, 2, 1, 0])
    soft = torch.softmax(torch.randn(5, 3, generator=g), 1)
    pack_latents(os.path.join(folder, "video.ddz"), vae, x, lab, class_names=["a", "b", "c"], chunk_size=3,
                 soft_labels=soft, progress=False)
    out["video"] = os.path.join(folder, "video.ddz")
    from safetensors.torch import save_file

    from codec.cli import main

    save_vae_dir(vae, os.path.join(folder, "vae"))
    save_file({"latents": x, "labels": lab}, os.path.join(folder, "lat.safetensors"))
    rc = main(["pack", "--vae", os.path.join(folder, "vae"), "--latents", os.path.join(folder, "lat.safetensors"),
               "-o", os.path.join(folder, "video-cli.ddz"), "--vae-zstd", "3", "--storage", "f16", "--decoder-only",
               "--chunk-size", "2", "-q"])
    assert rc == 0, "ddz pack failed"
    out["video-cli"] = os.path.join(folder, "video-cli.ddz")

    # the producers' own files (tests/producers.py writes them as SRe2L/FKD/LVDD do), imported
    producers = tests_helper("producers")
    from codec.softlabels.fkd import import_fkd_labels

    named = [(f"train/n0{k % 2}/n0{k % 2}_{k}.png", im) for k, im in enumerate(producers.images_pil(4, side=20, seed=3))]
    producers.write_fkd_tree(os.path.join(folder, "fkd_tree"), named, num_crops=4, num_seg=2, classes=C, input_size=8)
    out["fkd"] = import_fkd_labels(os.path.join(folder, "fkd_tree"), os.path.join(folder, "fkd.ddz"), "topk", classes=C, size=8)
    producers.write_lvdd_synthetic(os.path.join(folder, "synthetic_data.pt"), torch.randn(4, 4, 4, 8, 8, generator=g),
                                   batch_size=3)
    producers.write_quanto_vae_dir(os.path.join(folder, "quantized_vae"), vae)
    rc = main(["pack", "--vae", os.path.join(folder, "quantized_vae"), "--latents", os.path.join(folder, "synthetic_data.pt"),
               "--ipc", "2", "-o", os.path.join(folder, "video-lvdd.ddz"), "-q"])
    assert rc == 0, "ddz pack of LVDD's files failed"
    out["video-lvdd"] = os.path.join(folder, "video-lvdd.ddz")
    for path in out.values():
        with codec.open(path) as f:
            f.verify()
    return out


# ------------------------------------------------------------------------------------------------
# mutations
# ------------------------------------------------------------------------------------------------
class Base:
    """A base archive taken apart: preamble fields, header dict, stored bytes per section."""

    def __init__(self, raw: bytes):
        from codec.format.layout import PREAMBLE_SIZE, Preamble

        self.raw = raw
        pre = Preamble.from_bytes(raw[:PREAMBLE_SIZE], len(raw))
        self.alignment = pre.alignment
        self.header_offset = pre.header_offset
        self.header = json.loads(raw[pre.header_offset:])
        self.stored = [raw[s["offset"]: s["offset"] + s["length"]] for s in self.header["sections"]]

    def copy_header(self) -> dict:
        return json.loads(json.dumps(self.header))


def assemble(header: dict, stored: list[bytes], alignment: int = 64, crc: bool = True) -> bytes:
    """Lay out sections and header as the spec says (offsets, CRCs, preamble), whatever the entries claim
    about dtypes, shapes and encodings; ``crc=False`` keeps the entries' CRCs as they are."""
    from codec.format.layout import Preamble, align_up, crc32

    from codec.format.layout import block_table

    body = bytearray(64)
    for entry, data in zip(header["sections"], stored):
        if isinstance(entry, dict):
            off = align_up(len(body), alignment)
            body += bytes(off - len(body))
            entry["offset"], entry["length"] = off, len(data)
            if crc:
                entry["crc32"] = crc32(data)
                blocks = entry.get("blocks")
                size = blocks.get("size") if isinstance(blocks, dict) else None
                if type(size) is int and size > 0:  # per-block CRCs (format 1.1) of the new bytes
                    kept, table = block_table(data, size)
                    if kept:
                        entry["blocks"] = {"size": kept, "crc32": table}
                    else:
                        entry.pop("blocks")
            body += data
    blob = json.dumps(header, separators=(",", ":")).encode()  # ensure_ascii: lone surrogates travel as escapes
    pre = Preamble(alignment, len(body), len(blob), crc32(blob), len(body) + len(blob))
    return pre.to_bytes() + bytes(body[64:]) + blob


def reseal(base: Base, header: dict, splice: dict[str, str] | None = None) -> bytes:
    """The base's bytes with a new header (every offset and CRC as it was; the preamble re-sealed);
    ``splice`` replaces pieces of the JSON text (for nesting ``json.dumps`` cannot write)."""
    from codec.format.layout import Preamble, crc32

    text = json.dumps(header, separators=(",", ":"))
    for old, new in (splice or {}).items():
        text = text.replace(old, new)
    blob = text.encode()
    pre = Preamble(base.alignment, base.header_offset, len(blob), crc32(blob), base.header_offset + len(blob))
    return pre.to_bytes() + base.raw[64: base.header_offset] + blob


def _nasty(r: random.Random):
    return r.choice([0, 1, -1, 2, 3, 7, 255, 256, 2**16, 2**24, 2**31, 2**32 + 1, 2**40, 2**53 + 1, 2**63, 2**64, 10**30,
                     -2**63, 0.5, -0.0, 1e308, 3.0, "", "x", "\ud800", "a\udfffb", "../../x", "f32", "u8", "zstd",
                     "bitpack", "vq", "latent-video", None, True, False, [], {}, [1, 2, 3], [-1], [0], [2**40, 2],
                     {"id": "zstd"}, {"id": "vq"}, [[[[[[[[1]]]]]]]], "x" * 300, list(range(40)), [None], [[]]])


def _paths(doc, prefix=()):
    """Every (path, value) in a JSON tree."""
    out = [(prefix, doc)]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def _edit_tree(r: random.Random, h: dict) -> str:
    area = r.random()
    pool = _paths(h)
    if area < 0.45:
        pool = [p for p in pool if p[0][:1] in (("objects",), ("metadata",))] or pool
    elif area < 0.75:
        pool = [p for p in pool if p[0][:1] == ("sections",)] or pool
    path, value = r.choice(pool)
    if not path:
        h[r.choice(["extra", "sections", "objects", "metadata"])] = _nasty(r)
        return "top"
    parent, key = _get(h, path[:-1]), path[-1]
    op = r.random()
    if op < 0.45:
        parent[key] = _nasty(r)
        return f"set {'/'.join(map(str, path))}"
    if op < 0.65 and isinstance(value, (int, float)) and not isinstance(value, bool):
        parent[key] = r.choice([value + 1, value - 1, value * 2, value // 2 if isinstance(value, int) else value / 2,
                                -value, value * 1000, 0])
        return f"tweak {'/'.join(map(str, path))}"
    if op < 0.75:
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
        return f"drop {'/'.join(map(str, path))}"
    if op < 0.85 and isinstance(value, (dict, list)):
        if isinstance(value, dict):
            value[r.choice(["extra", "id", "sections", "codec", "k", "classes", "shape"])] = _nasty(r)
        else:
            value.append(_nasty(r) if r.random() < 0.5 or not value else json.loads(json.dumps(r.choice(value))))
        return f"grow {'/'.join(map(str, path))}"
    if op < 0.93 and isinstance(parent, list) and len(parent) > 1:
        j = r.randrange(len(parent))
        parent[key], parent[j] = parent[j], parent[key]
        return f"swap {'/'.join(map(str, path))}"
    if isinstance(value, str):
        parent[key] = r.choice([value + "x", value[:-1], value.upper(), value + "\ud800", value * 3])
        return f"string {'/'.join(map(str, path))}"
    parent[key] = _nasty(r)
    return f"set {'/'.join(map(str, path))}"


_SPECIAL = {"f": [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e38, 65504.0, -1.0, 1e-45, 3.0],
            "i": [0, 1, -1, 2, 3, 127, -128, 2**15 - 1, -2**15, 2**31 - 1, -2**31, 2**40, 2**62, -2**63],
            "u": [0, 1, 2, 3, 255, 256, 2**16 - 1, 2**24, 2**32 - 1, 2**40, 2**63, 2**64 - 1],
            "b": [0, 1, 2, 255]}


def _encode_section(arr, dtype: str, bits, zstd) -> tuple[bytes, list]:
    """(stored bytes, encoding) of ``arr`` as the Writer stores it."""
    import codec

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "one.ddz")
        with codec.Writer(path, block_size=None) as w:
            info = w.add("x", arr if dtype != "bf16" else _as_bf16(arr), bits=bits, zstd=zstd)
        with open(path, "rb") as fh:
            fh.seek(info.offset)
            return fh.read(info.length), [dict(e) for e in info.encoding]


def _as_bf16(bits16):
    """uint16 bit patterns as a bf16 tensor (the Writer stores bf16 from torch)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(bits16).view(np.int16)).view(torch.bfloat16)


def _payload_resealed(r: random.Random, base: Base) -> tuple[bytes, str]:
    """Put special values into one section and re-seal its CRC: passes verify, tests meaning checks."""
    import numpy as np

    import codec
    from codec.format import DTYPES

    h = base.copy_header()
    stored = list(base.stored)
    cands = [i for i, s in enumerate(h["sections"]) if s["shape"] and math.prod(s["shape"])]
    if not cands:
        return base.raw, "payload_resealed (nothing)"
    i = r.choice(cands)
    s = h["sections"][i]
    with tempfile.NamedTemporaryFile(suffix=".ddz") as tmp:
        tmp.write(base.raw)
        tmp.flush()
        with codec.open(tmp.name) as f:
            if s["dtype"] == "bf16":
                import torch

                arr = np.array(f.get(s["name"], framework="torch").view(torch.int16).numpy().view(np.uint16))
            else:
                arr = np.array(f.get(s["name"]))
    kind = "b" if s["dtype"] == "bool" else DTYPES[s["dtype"]].kind
    bits = next((e.get("bits") for e in s["encoding"] if e.get("id") == "bitpack"), None)
    flat = arr.reshape(-1)
    for _ in range(r.randint(1, 4)):
        j = r.randrange(flat.size)
        v = r.choice(_SPECIAL[kind])
        if s["dtype"] in ("f16", "bf16"):
            v = r.choice([0x7C00, 0xFC00, 0x7E00, 0x7BFF, 0, 1]) if s["dtype"] == "f16" else r.choice([0x7F80, 0x7FC0, 0, 1])
        if bits:
            v = r.choice([0, (1 << bits) - 1, r.randrange(1 << bits)])
        with np.errstate(all="ignore"):
            try:
                flat[j] = np.array(v).astype(flat.dtype) if kind != "b" else bool(v)
            except (OverflowError, ValueError):
                flat[j] = np.iinfo(flat.dtype).max if kind in "iu" else 0
    if s["dtype"] == "bf16":
        flat = flat.view(np.uint16)
    zstd = next((e.get("level", 3) for e in s["encoding"] if e.get("id") == "zstd"), None)
    data, enc = _encode_section(flat.reshape(s["shape"]), s["dtype"], bits, zstd)
    stored[i] = data
    s["encoding"] = enc
    return assemble(h, stored, base.alignment), f"payload_resealed {s['name']}"


def _section_edit(r: random.Random, base: Base) -> tuple[bytes, str]:
    """Layout-consistent edits of the section table: the file parses, the meaning is wrong."""
    from codec.format import DTYPES

    h = base.copy_header()
    stored = list(base.stored)
    secs = h["sections"]
    i = r.randrange(len(secs))
    s = secs[i]
    op = r.choice(["reshape", "dtype", "resize", "swap", "retarget", "drop", "dup"])
    itemsize = {k: v.itemsize for k, v in DTYPES.items()}
    if op == "reshape" and s["shape"]:
        n = math.prod(s["shape"])
        shapes = [[n], [1, n], [n, 1]] + ([[s["shape"][0] * s["shape"][1], *s["shape"][2:]]] if len(s["shape"]) > 1 else [])
        if n and n % 2 == 0:
            shapes += [[2, n // 2], [n // 2, 2]]
        s["shape"] = r.choice(shapes)
    elif op == "dtype" and not s["encoding"]:
        same = [d for d in DTYPES if itemsize[d] == itemsize[s["dtype"]]]
        s["dtype"] = r.choice(same)
    elif op == "resize" and not s["encoding"] and s["shape"]:
        rows = r.choice([0, 1, s["shape"][0] + 1, s["shape"][0] * 2, max(0, s["shape"][0] - 1), s["shape"][0] + 7])
        s["shape"][0] = rows
        need = math.prod(s["shape"]) * itemsize[s["dtype"]]
        fill = bytes(r.getrandbits(8) for _ in range(min(need, 4096)))
        stored[i] = (stored[i] + fill * (need // max(1, len(fill)) + 1))[:need] if need > len(stored[i]) else stored[i][:need]
        s["decoded_length"] = need
    elif op == "swap" and len(secs) > 1:
        j = r.randrange(len(secs))
        secs[i], secs[j] = secs[j], secs[i]
        stored[i], stored[j] = stored[j], stored[i]
    elif op == "retarget" and h.get("objects"):
        obj = r.choice(list(h["objects"].values()))
        if isinstance(obj, dict) and isinstance(obj.get("sections"), dict) and obj["sections"]:
            part = r.choice(list(obj["sections"]))
            obj["sections"][part] = r.choice(secs)["name"]
    elif op == "drop" and len(secs) > 1:
        name = secs[i]["name"]
        del secs[i], stored[i]
        for obj in (h.get("objects") or {}).values():
            if isinstance(obj, dict) and isinstance(obj.get("sections"), dict):
                for part in [p for p, v in obj["sections"].items() if v == name]:
                    if r.random() < 0.5:
                        del obj["sections"][part]
                    else:
                        obj["sections"][part] = secs[0]["name"]
    elif op == "dup":
        new = json.loads(json.dumps(s))
        new["name"] = s["name"] + "_copy"
        secs.insert(i + 1, new)
        stored.insert(i + 1, stored[i])
    s = secs[min(i, len(secs) - 1)]
    s["decoded_length"] = math.prod(s["shape"]) * itemsize.get(s["dtype"], 1) if isinstance(s.get("shape"), list) else 0
    return assemble(h, stored, base.alignment), f"section_edit {op}"


def _rle_frame(n: int) -> bytes:
    import zstandard

    c = zstandard.ZstdCompressor(level=1).compressobj()
    parts = [c.compress(bytes(min(n - k, 1 << 22))) for k in range(0, n, 1 << 22)]
    return b"".join(parts) + c.flush()


def _bomb(r: random.Random, base: Base, kind: str) -> tuple[bytes, str]:
    from codec.format.header import zstd_bound

    h = base.copy_header()
    stored = list(base.stored)
    fam = r.choice(["zstd", "zstd", "bitpack_zstd", "deep", "deep", "sections", "config", "config", "config", "rows"])
    if fam in ("zstd", "bitpack_zstd"):
        i = r.randrange(len(h["sections"]))
        s = h["sections"][i]
        real = r.choice([1 << 10, 1 << 16, 1 << 20, 1 << 24, 1 << 27])
        frame = _rle_frame(real)
        if fam == "zstd":
            s["dtype"], s["encoding"] = r.choice(["u8", "f32", "u16", s["dtype"]]), [{"id": "zstd", "level": 1}]
            item = {"u8": 1, "f32": 4, "u16": 2}.get(s["dtype"], 1)
            if s["dtype"] not in ("u8", "f32", "u16"):
                s["dtype"], item = "u8", 1
            declared = r.choice([real, real + 1, real - 1, zstd_bound(len(frame)), zstd_bound(len(frame)) + 1, real * 7])
            n = max(0, declared // item)
        else:
            bits = r.choice([1, 2, 3])
            s["dtype"], s["encoding"] = r.choice(["u64", "u8", "u32"]), [{"id": "bitpack", "bits": bits}, {"id": "zstd", "level": 1}]
            n = r.choice([real * 8 // bits, real * 8 // bits + 1, zstd_bound(len(frame)) // 8])
            item = {"u64": 8, "u8": 1, "u32": 4}[s["dtype"]]
        keep_rows = r.random() < 0.5 and len(s["shape"]) > 1
        if keep_rows and n >= math.prod(s["shape"][1:]) > 0:
            s["shape"] = [n // math.prod(s["shape"][1:]), *s["shape"][1:]]
        else:
            s["shape"] = [n]
        s["decoded_length"] = math.prod(s["shape"]) * item
        stored[i] = frame
        return assemble(h, stored, base.alignment), f"bomb {fam} {s['name']} real={real} declared={s['decoded_length']}"
    if fam == "deep":
        depth = r.choice([30, 31, 32, 33, 40, 200, 5000, 100000])
        opens = "".join(r.choice(['[', '{"a":']) for _ in range(depth))
        deep = opens + "1" + "".join("]" if c == "[" else "}" for c in reversed(opens.replace('{"a":', "{")))
        where = r.choice(["metadata", "extra", "section", "object"])
        sentinel = "__deep__"
        if where == "metadata":
            h["metadata"]["deep"] = sentinel
        elif where == "extra":
            h["extra"] = sentinel
        elif where == "section":
            h["sections"][0]["extra"] = sentinel
        elif h.get("objects"):
            next(iter(h["objects"].values()))["codec"]["deep"] = sentinel
        return reseal(base, h, {f'"{sentinel}"': deep}), f"bomb deep {where} {depth}"
    if fam == "sections":
        n = r.choice([300, 3000, 65536, 65537])
        for j in range(n):
            h["sections"].append({"name": f"s{j}", "dtype": "u8", "shape": [0], "offset": 0, "length": 0,
                                  "decoded_length": 0, "encoding": [], "crc32": 0})
            stored.append(b"")
        return assemble(h, stored, base.alignment), f"bomb sections {n}"
    if fam == "rows":  # one soft-label row part claims many rows through zstd
        i = r.randrange(len(h["sections"]))
        s = h["sections"][i]
        if len(s["shape"]) >= 1 and s["dtype"] in ("u8", "u16", "u32", "f32", "f16", "i32", "u64", "i64"):
            per = math.prod(s["shape"][1:]) or 1
            item = {"u8": 1, "u16": 2, "f16": 2, "u32": 4, "f32": 4, "i32": 4, "u64": 8, "i64": 8}[s["dtype"]]
            rows = r.choice([1 << 16, 1 << 20, 1 << 22])
            frame = _rle_frame(min(rows * per * item, 1 << 26))
            s["shape"] = [rows, *s["shape"][1:]]
            s["decoded_length"] = rows * per * item
            s["encoding"] = [{"id": "zstd", "level": 1}]
            stored[i] = frame
            return assemble(h, stored, base.alignment), f"bomb rows {s['name']} {rows}"
    return _config_bomb(r, base, h, stored, kind)


def _config_bomb(r: random.Random, base: Base, h: dict, stored: list, kind: str) -> tuple[bytes, str]:
    objs = h.get("objects") or {}
    meta = h.get("metadata") or {}
    big = r.choice([2**20, 2**24, 2**24 + 1, 2**30, 2**40, 5000, 200])
    done = []
    for name, obj in objs.items():
        cfg = obj.get("codec") if isinstance(obj, dict) else None
        if not isinstance(cfg, dict):
            continue
        for key in ("classes", "k", "dh", "dc", "chunk_size", "ratio", "batch_size", "epochs", "batches_per_epoch"):
            if key in cfg and r.random() < 0.4:
                cfg[key] = big
                done.append(f"{name}.{key}")
        model = cfg.get("model")
        if isinstance(model, dict) and isinstance(model.get("config"), dict):
            c = model["config"]
            choice = r.choice(["layers", "blocks", "channels", "latent", "sample"])
            if choice == "layers":
                c["layers_per_block"] = r.choice([200, 5000, 10**6])
            elif choice == "blocks":
                n = r.choice([50, 2000])
                c["block_out_channels"] = [16] * n
                c["down_block_types"] = ["DownEncoderBlock2D"] * n
                c["up_block_types"] = ["UpDecoderBlock2D"] * n
            elif choice == "channels":
                c["block_out_channels"] = [r.choice([2**16, 2**20, 2**30])] * len(c.get("block_out_channels", [1, 1]))
            elif choice == "latent":
                c["latent_channels"] = big
            else:
                c["sample_size"] = big
            done.append(f"{name}.model.{choice}")
    for key in ("softlabels", "augment", "llm", "ddz.video"):
        m = meta.get(key)
        if isinstance(m, dict):
            for sub in ("rows", "classes", "num_samples", "vocab", "k", "num_classes", "epochs", "batches", "tokens"):
                if sub in m and r.random() < 0.5:
                    m[sub] = big
                    done.append(f"{key}.{sub}")
            if key == "ddz.video" and r.random() < 0.5:
                m["latent_shape"] = r.choice([[2, 4, 2**12, 2**12], [2**20, 4, 8, 8], [2, 4, 8, 8]])
                done.append("latent_shape")
            if key == "augment" and isinstance(m.get("crop"), dict):
                m["crop"]["size"] = r.choice([4096, 4097, 2**20])
                done.append("crop.size")
    return reseal(base, h), "bomb config " + ",".join(done)


def mutate(kind: str, seed: int, base: Base) -> tuple[bytes, str]:
    r = random.Random(seed)
    raw = bytearray(base.raw)
    m = r.choice(MUTATIONS)
    if m == "bitflip":
        for _ in range(r.randint(1, 8)):
            b = r.randrange(len(raw) * 8)
            raw[b // 8] ^= 1 << (b % 8)
        return bytes(raw), m
    if m == "payload_flip":
        spans = [(s["offset"], s["length"]) for s in base.header["sections"] if s["length"]]
        for _ in range(r.randint(1, 8)):
            off, n = r.choice(spans)
            j = off + r.randrange(n)
            raw[j] ^= 1 << r.randrange(8)
        return bytes(raw), m
    if m == "byteset":
        for _ in range(r.randint(1, 6)):
            raw[r.randrange(len(raw))] = r.choice([0, 0xFF, 0x7F, 0x80, r.randrange(256)])
        return bytes(raw), m
    if m == "truncate":
        return bytes(raw[: r.randrange(len(raw))]), m
    if m == "extend":
        return bytes(raw) + bytes(r.getrandbits(8) for _ in range(r.choice([1, 7, 64, 4096]))), m
    if m == "payload_resealed":
        return _payload_resealed(r, base)
    if m == "header_edit":
        h = base.copy_header()
        what = [_edit_tree(r, h) for _ in range(r.randint(1, 3))]
        return reseal(base, h), "header_edit " + "; ".join(what)
    if m == "section_edit":
        return _section_edit(r, base)
    if m == "combo":  # new values or a new table, then header edits on top
        data, first = (_payload_resealed if r.random() < 0.5 else _section_edit)(r, base)
        try:
            inner = Base(data)
        except Exception:  # noqa: BLE001 - the first step made a file this tool cannot take apart
            return data, f"combo {first}"
        h = inner.copy_header()
        what = [_edit_tree(r, h) for _ in range(r.randint(1, 2))]
        return reseal(inner, h), f"combo {first}; " + "; ".join(what)
    return _bomb(r, base, kind)


# ------------------------------------------------------------------------------------------------
# entry points
# ------------------------------------------------------------------------------------------------
class CaseTimeout(BaseException):
    """Raised by the per-case alarm; a BaseException so library code cannot swallow it."""


def _cli(args: list[str]):
    from codec.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    text = err.getvalue().strip()
    if rc == 2 and (len(text.splitlines()) != 1 or not text.startswith("ddz: error: ")):
        raise AssertionError(f"ddz {args[0]} exit 2 without a one-line error: {text[:300]!r}")
    if rc not in (0, 1, 2):
        raise AssertionError(f"ddz {args[0]} exit status {rc}")
    if rc:
        import codec

        raise codec.DDZError(f"ddz {args[0]} refused the file (exit {rc})")  # a clean refusal, counted as such


def entry_points(path: str, scratch: str, r: random.Random):
    """(name, callable) pairs; each callable uses the file through one public entry point."""
    import torch

    import codec
    from codec.loader import VideoDataset
    from codec.softlabels import SoftLabelArchive, open_archive

    def container():
        with codec.open(path) as f:
            for name in f.keys():
                info = f.info(name)
                for fw in ("numpy", "torch"):
                    try:
                        f.get(name, framework=fw)
                    except codec.InvalidInputError:
                        pass  # bf16 as numpy
                    if info.shape:
                        n = info.shape[0]
                        try:
                            f.get_rows(name, 0, min(2, n), framework=fw)
                            f.get_rows(name, n // 2, n, framework=fw)
                        except codec.InvalidInputError:
                            pass

    def verify():
        with codec.open(path) as f:
            list(f.problems())
            f.verify()

    def open_verified():
        codec.open(path, verify=True).close()

    def dataset(obj):
        n = len(obj)
        if n:
            obj[0]
            obj[n - 1]
            obj.decode_batch([0, n - 1, 0])
            obj.latents([n - 1])
            if obj.has_soft_labels:
                obj.soft_labels([0, n - 1])
            for k, _ in enumerate(obj):
                if k >= 2:
                    break
        obj.close()

    def soft(obj):
        n = len(obj)
        obj.labels(0, min(3, n))
        obj.labels()
        if n:
            obj[0]
            obj[-1]
            obj.rows_at([n - 1, 0, 0])
            obj[0:n:2]
        if hasattr(obj, "epochs"):  # ReplayArchive
            from codec.softlabels.replay import ReplayDataset, replay_loader

            for e in range(min(2, obj.epochs)):
                if obj.steps(e):
                    obj.record(e, 0)
                    obj.labels_for(e, 0)
                    if obj.has_sample_ids:
                        obj.sample_ids(e, 0)
            if obj.rows:
                obj.view_params(0)
                obj.view_params(obj.rows - 1)
            if obj.has_sample_ids:
                images = lambda sid: torch.rand(3, 12, 12)  # noqa: E731
                ds = ReplayDataset(path, images)
                if len(ds):
                    ds[len(ds) - 1]
                for k, _ in enumerate(replay_loader(path, images, batch_size=3, size=8)):
                    if k >= 2:
                        break
        if obj.name and "fkd/keys" in obj._f():  # an FKD crop-pool archive
            from codec.softlabels.fkd import FKDCropDataset, fkd_loader

            image = lambda i: pil_image  # noqa: E731
            ds = FKDCropDataset(path, image, num_crops=2, seed=1)
            for i in {0, len(ds) - 1}:
                ds[i]
            for k, _ in enumerate(fkd_loader(path, image, batch_size=2, num_crops=2, seed=1)):
                if k >= 1:
                    break
        if hasattr(obj, "num_sequences"):  # LLMArchive
            for i in {0, obj.num_sequences - 1}:
                if i >= 0:
                    obj.sequence(i)
        obj.close()

    from PIL import Image

    pil_image = Image.new("RGB", (20, 16), (90, 30, 200))

    def load():
        obj = codec.load(path)
        try:
            if isinstance(obj, VideoDataset):
                dataset(obj)
            elif isinstance(obj, SoftLabelArchive):
                soft(obj)
        finally:
            obj.close()

    def archive():
        a = open_archive(path)
        try:
            a.labels(0, min(1, len(a)))
        finally:
            a.close()

    out_dir = os.path.join(scratch, "unpacked")
    extra = ["--frames", "png", "--preview"] if r.random() < 0.25 else []
    return [("open/get/get_rows", container), ("verify", verify), ("open(verify=True)", open_verified),
            ("load", load), ("open_archive", archive),
            ("ddz info", lambda: _cli(["info", path])), ("ddz info --json", lambda: _cli(["info", path, "--json"])),
            ("ddz verify", lambda: _cli(["verify", path])), ("ddz budget", lambda: _cli(["budget", path])),
            ("ddz budget --json", lambda: _cli(["budget", path, "--json"])),
            ("ddz unpack", lambda: _cli(["unpack", path, "-o", out_dir, "-q", *extra]))]


# ------------------------------------------------------------------------------------------------
# worker
# ------------------------------------------------------------------------------------------------
def _rss_status() -> dict[str, int]:
    with open("/proc/self/status") as fh:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in fh) if k in ("VmRSS", "VmHWM", "VmSize")}


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def run_case(kind: str, seed: int, bases: dict[str, "Base"], scratch: str, budget_s: float) -> dict:
    import codec

    base_key = kind
    if kind == "softlabels":
        base_key = ("softlabels-pca", "softlabels-quant", "softlabels-lpld")[seed % 3]
    try:
        data, desc = mutate(kind, seed, bases[base_key])
    except Exception:  # noqa: BLE001 - a bug of this tool, reported as such
        return {"kind": kind, "seed": seed, "mutation": "?", "outcome": "harness_error", "entries": {}, "escapes": [],
                "trace": traceback.format_exc()[-1500:], "cpu_s": None, "wall_s": None, "peak_bytes": None}
    case_dir = tempfile.mkdtemp(dir=scratch)
    path = os.path.join(case_dir, "case.ddz")
    with open(path, "wb") as fh:
        fh.write(data)
    r = random.Random(seed ^ 0x5A5A)
    result = {"kind": kind, "seed": seed, "mutation": desc.split(" ")[0], "detail": desc[:200], "entries": {},
              "escapes": [], "max_entry_cpu_s": 0.0, "slowest_entry": None}
    rss0 = _rss_status()["VmRSS"]
    peak_ok = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    signal.setitimer(signal.ITIMER_REAL, budget_s)
    try:
        for name, fn in entry_points(path, case_dir, r):
            e0 = time.process_time()
            try:
                fn()
                result["entries"][name] = "ok"
            except codec.DDZError:
                result["entries"][name] = "ddz"
            except CaseTimeout:
                result["entries"][name] = "timeout"
                raise
            except Exception as exc:  # noqa: BLE001 - an escape: what the campaign is looking for
                result["entries"][name] = "escape"
                result["escapes"].append({"entry": name, "type": type(exc).__name__, "message": str(exc)[:300],
                                          "trace": traceback.format_exc()[-1500:]})
            finally:
                spent = time.process_time() - e0
                if spent > result["max_entry_cpu_s"]:
                    result["max_entry_cpu_s"], result["slowest_entry"] = round(spent, 4), name
    except CaseTimeout:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            import codec.softlabels.replay as rp

            for arch in rp._ARCHIVES.values():
                arch.close()
            rp._ARCHIVES.clear()
        except ImportError:
            pass
    result["cpu_s"] = round(time.process_time() - c0, 4)
    result["wall_s"] = round(time.perf_counter() - t0, 4)
    st = _rss_status()
    result["peak_bytes"] = (st["VmHWM"] if peak_ok else st["VmRSS"]) - rss0
    outcomes = set(result["entries"].values())
    result["outcome"] = ("timeout" if "timeout" in outcomes else "escape" if "escape" in outcomes
                         else "refused" if result["entries"].get("open/get/get_rows") == "ddz" else "accepted")
    shutil.rmtree(case_dir, ignore_errors=True)
    return result


def worker(bases_dir: str, mem_cap: int, budget_s: float, prewarm: bool) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import resource

    import torch

    import codec
    import codec.cli
    import codec.loader
    import codec.softlabels
    import codec.softlabels.replay  # noqa: F401

    torch.set_num_threads(1)
    with open(os.path.join(bases_dir, "bases.json")) as fh:
        paths = json.load(fh)
    bases = {k: Base(open(p, "rb").read()) for k, p in paths.items()}
    scratch = tempfile.mkdtemp(prefix="fuzz-worker-", dir=bases_dir)
    # one-off costs of a process (first torch/diffusers calls, numba JIT per bit width) are not a file's:
    # every entry point reads every base once, and (unless --no-prewarm) every bit width is compiled
    for path in paths.values():
        for _, fn in entry_points(path, scratch, random.Random(0)):
            with contextlib.suppress(Exception):
                fn()
        shutil.rmtree(os.path.join(scratch, "unpacked"), ignore_errors=True)
    if prewarm:
        import numpy as np

        from codec.bits import unpack_bits

        for bits in range(1, 33):
            unpack_bits(np.zeros(8, np.uint8), bits, 1)
    resource.setrlimit(resource.RLIMIT_AS, (_rss_status()["VmSize"] + mem_cap, resource.RLIM_INFINITY))

    def alarm(*_):
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, alarm)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        job = json.loads(line)
        res = run_case(job["kind"], job["seed"], bases, scratch, budget_s)
        res["i"] = job["i"]
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


# ------------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------------
def case_seed(seed: int, i: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:6], "little")


class Worker:
    def __init__(self, args, bases_dir: str):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONHASHSEED="0")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", bases_dir,
                                      "--mem-cap", str(args.mem_cap), "--hard-timeout", str(args.hard_timeout)]
                                     + (["--no-prewarm"] if args.no_prewarm else []),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log(bases_dir),
                                     text=True, bufsize=1, env=env, cwd=_ROOT)
        self.job = None
        self.sent = 0.0
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"worker did not start (exit {self.proc.poll()})")

    def _log(self, folder: str):
        self.log_path = os.path.join(folder, f"worker-{os.getpid()}-{time.monotonic_ns()}.log")
        return open(self.log_path, "w")

    def log_tail(self) -> str:
        try:
            with open(self.log_path) as fh:
                return fh.read()[-1500:]
        except OSError:
            return ""

    def send(self, job):
        self.job = job
        self.sent = time.monotonic()
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def kill(self):
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()


def run_campaign(args) -> dict:
    t_start = time.monotonic()
    work = tempfile.mkdtemp(prefix="ddz-fuzz-", dir=args.workdir)
    try:
        bases = build_bases(work)
        with open(os.path.join(work, "bases.json"), "w") as fh:
            json.dump(bases, fh)
        build_s = time.monotonic() - t_start
        kinds = [k for k in (args.kinds.split(",") if args.kinds else KINDS)]
        jobs = [{"i": i, "kind": kinds[i % len(kinds)], "seed": case_seed(args.seed, i)}
                for i in range(args.start, args.start + args.cases)]
        pending = list(reversed(jobs))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below still runs
        workers = []
        for _ in range(args.workers):
            workers.append(Worker(args, work))
        results = []
        restarts = 0
        last_report = time.monotonic()
        while pending or any(w.job for w in workers):
            for w in workers:
                if w.job is None and pending:
                    w.send(pending.pop())
            busy = [w for w in workers if w.job]
            ready, _, _ = select.select([w.proc.stdout for w in busy], [], [], 1.0)
            now = time.monotonic()
            for w in busy:
                if w.proc.stdout in ready:
                    line = w.proc.stdout.readline()
                    if line:
                        results.append(json.loads(line))
                        w.job = None
                        continue
                    code = w.proc.wait()
                    res = dict(w.job, outcome="signal" if code < 0 else "died", signal=-code if code < 0 else None,
                               exit=code, mutation="?", entries={}, escapes=[], cpu_s=None, wall_s=now - w.sent,
                               peak_bytes=None, log=w.log_tail())
                elif now - w.sent > args.hard_timeout + 15:
                    w.kill()
                    res = dict(w.job, outcome="timeout", mutation="?", entries={}, escapes=[], cpu_s=None,
                               wall_s=now - w.sent, peak_bytes=None, killed=True)
                else:
                    continue
                results.append(res)
                workers[workers.index(w)] = Worker(args, work)
                restarts += 1
            if args.progress and now - last_report > 30:
                last_report = now
                print(f"{len(results)}/{len(jobs)} cases, {now - t_start:.0f} s", file=sys.stderr, flush=True)
        for w in workers:
            w.proc.stdin.close()
            w.proc.wait()
        if args.cases_out:  # one JSON line per case, for --combine
            with open(args.cases_out, "w") as fh:
                for res in results:
                    fh.write(json.dumps({k: v for k, v in res.items() if k != "trace"} | {"build_s": build_s}) + "\n")
        return summarize(results, args, time.monotonic() - t_start, build_s, restarts)
    finally:
        for w in locals().get("workers", []):
            if w.proc.poll() is None:
                w.kill()
        shutil.rmtree(work, ignore_errors=True)


def summarize(results: list[dict], args, total_s: float, build_s: float, restarts: int) -> dict:
    by_kind: dict[str, dict[str, int]] = {}
    by_mutation: dict[str, dict[str, int]] = {}
    entries: dict[str, dict[str, int]] = {}
    for res in results:
        for table, key in ((by_kind, res["kind"]), (by_mutation, res.get("mutation", "?"))):
            row = table.setdefault(key, {})
            row[res["outcome"]] = row.get(res["outcome"], 0) + 1
        for e, o in res.get("entries", {}).items():
            entries.setdefault(e, {})
            entries[e][o] = entries[e].get(o, 0) + 1
    cpu = sorted(r["cpu_s"] for r in results if r.get("cpu_s") is not None)
    wall = sorted(r["wall_s"] for r in results if r.get("wall_s") is not None)
    peak = sorted(r["peak_bytes"] for r in results if r.get("peak_bytes") is not None)
    pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None  # noqa: E731
    bad = [r for r in results if r["outcome"] in ("escape", "timeout", "signal", "died", "harness_error")
           or (r.get("cpu_s") or 0) > SLOW_S or (r.get("peak_bytes") or 0) > OVER_MEM]
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    return {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "seed": args.seed, "start": args.start, "cases": len(results), "workers": args.workers,
        "kinds": sorted(by_kind), "outcomes": outcomes, "by_kind": by_kind, "by_mutation": by_mutation, "entries": entries,
        "escapes": sum(1 for r in results if r["outcome"] == "escape"),
        "timeouts": sum(1 for r in results if r["outcome"] == "timeout"),
        "signals": sum(1 for r in results if r["outcome"] in ("signal", "died")),
        "slow_cases": sum(1 for r in results if (r.get("cpu_s") or 0) > SLOW_S),
        "slow_wall_cases": sum(1 for r in results if (r.get("wall_s") or 0) > SLOW_S),
        "slow_entry_calls": sum(1 for r in results if (r.get("max_entry_cpu_s") or 0) > SLOW_S),
        "max_entry_cpu_s": max((r.get("max_entry_cpu_s") or 0 for r in results), default=None),
        "over_memory_cases": sum(1 for r in results if (r.get("peak_bytes") or 0) > OVER_MEM),
        "cpu_s": {"p50": pct(cpu, .5), "p99": pct(cpu, .99), "max": cpu[-1] if cpu else None, "total": round(sum(cpu), 1)},
        "wall_s": {"p50": pct(wall, .5), "p99": pct(wall, .99), "max": wall[-1] if wall else None},
        "peak_mib": {"p50": pct(peak, .5) / 2**20 if peak else None, "p99": pct(peak, .99) / 2**20 if peak else None,
                     "max": peak[-1] / 2**20 if peak else None},
        "worker_restarts": restarts, "build_s": round(build_s, 1), "total_s": round(total_s, 1),
        "slowest": sorted(({k: r.get(k) for k in ("kind", "seed", "detail", "cpu_s", "wall_s", "slowest_entry", "max_entry_cpu_s")}
                           for r in results if r.get("cpu_s") is not None), key=lambda r: -r["cpu_s"])[:10],
        "biggest": sorted(({k: r.get(k) for k in ("kind", "seed", "detail", "peak_bytes", "cpu_s")}
                           for r in results if r.get("peak_bytes") is not None), key=lambda r: -r["peak_bytes"])[:10],
        "bad": bad[:200],
    }


def replay_one(spec: str, args) -> int:
    """Rerun one case (KIND:SEED) in this process and print every entry point's outcome."""
    import codec

    kind, seed = spec.split(":")
    work = tempfile.mkdtemp(prefix="ddz-fuzz-replay-", dir=args.workdir)
    try:
        bases = {k: Base(open(p, "rb").read()) for k, p in build_bases(work).items()}
        base_key = kind if kind != "softlabels" else ("softlabels-pca", "softlabels-quant", "softlabels-lpld")[int(seed) % 3]
        data, desc = mutate(kind, int(seed), bases[base_key])
        print(desc)
        path = os.path.join(work, "case.ddz")
        with open(path, "wb") as fh:
            fh.write(data)
        if args.keep:
            shutil.copy(path, args.keep)
        for name, fn in entry_points(path, work, random.Random(int(seed) ^ 0x5A5A)):
            t = time.perf_counter()
            try:
                fn()
                print(f"{name}: ok ({time.perf_counter() - t:.3f} s)")
            except codec.DDZError as exc:
                print(f"{name}: {type(exc).__name__}: {str(exc)[:200]} ({time.perf_counter() - t:.3f} s)")
            except Exception:  # noqa: BLE001
                print(f"{name}: ESCAPE\n{traceback.format_exc()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


# ------------------------------------------------------------------------------------------------
# disk full (root: a real tmpfs)
# ------------------------------------------------------------------------------------------------
def disk_full(args) -> dict:
    """Fill a small tmpfs to leave every free size around each writer's output size; each write must
    either complete (a verified file) or raise a DDZError, leaving neither target nor temporary."""
    import numpy as np
    import torch

    import codec
    from codec.cli import main
    from codec.codecs.topk import TopKCodec
    from codec.softlabels import save_softlabels
    from codec.video import pack_latents, save_vae_dir, tiny_vae_config, vae_from_config

    mnt = tempfile.mkdtemp(prefix="ddz-tmpfs-")
    src = tempfile.mkdtemp(prefix="ddz-diskfull-src-", dir=args.workdir)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt], check=True)
    rows = []
    try:
        g = torch.Generator().manual_seed(0)
        vae = vae_from_config(tiny_vae_config(blocks=(16, 32), groups=4), seed=0)
        x, lab = torch.randn(5, 2, 4, 8, 8, generator=g), torch.tensor([0, 1, 0, 1, 0])
        video = os.path.join(src, "video.ddz")
        pack_latents(video, vae, x, lab, class_names=["a", "b"], chunk_size=3, progress=False)
        save_vae_dir(vae, os.path.join(src, "vae"))
        from safetensors.torch import save_file

        save_file({"latents": x, "labels": lab}, os.path.join(src, "lat.safetensors"))
        labels = np.random.default_rng(0).random((3000, 10)).astype(np.float32)
        target = os.path.join(mnt, "out")

        def writer():
            with codec.Writer(target + ".ddz") as w:
                w.add("a", np.random.default_rng(1).standard_normal((200, 100)).astype(np.float32))
                w.add("b", np.arange(20000, dtype=np.uint16) % 1000, bits=10, zstd=3)

        jobs = {
            "Writer": (writer, target + ".ddz"),
            "save_softlabels(topk)": (lambda: save_softlabels(target + ".ddz", TopKCodec(10, 3), labels), target + ".ddz"),
            "pack_latents": (lambda: pack_latents(target + ".ddz", vae, x, lab, chunk_size=3, progress=False), target + ".ddz"),
            "ddz pack --vae-zstd": (lambda: _cli_rc(main, ["pack", "--vae", os.path.join(src, "vae"), "--latents",
                                                           os.path.join(src, "lat.safetensors"), "-o", target + ".ddz",
                                                           "--vae-zstd", "3", "-q"]), target + ".ddz"),
            "ddz unpack": (lambda: _cli_rc(main, ["unpack", video, "-o", target, "-q", "--frames", "png"]), target),
        }
        for name, (fn, out) in jobs.items():
            free0 = _free(mnt)
            fn()  # the space it takes on an empty disk (whole pages and folders, not just file bytes)
            need = free0 - _free(mnt)
            _rm(out)
            step = max(4096, need // 48 // 4096 * 4096)
            frees = sorted(set(range(0, need + 8 * 4096, step)) | set(range(max(0, need - 8 * 4096), need + 8 * 4096, 4096)))
            for free in frees:
                _fill(mnt, free)
                try:
                    fn()
                    ok, err = True, None
                except codec.DDZError as exc:
                    ok, err = False, f"{type(exc).__name__}: {str(exc)[:160]}"
                except Exception as exc:  # noqa: BLE001
                    ok, err = False, f"ESCAPE {type(exc).__name__}: {str(exc)[:160]}"
                left = sorted(f for f in os.listdir(mnt) if f != "filler")
                clean = (left == [] and not ok) or (ok and left == [os.path.basename(out)])
                if ok and out.endswith(".ddz"):
                    with codec.open(out, verify=True):
                        pass
                rows.append({"writer": name, "free": free, "need": need, "completed": ok, "error": err, "left": left,
                             "clean": clean and not (err or "").startswith("ESCAPE")})
                _rm(out)
                _rm(os.path.join(mnt, "filler"))
    finally:
        subprocess.run(["umount", mnt], check=False)
        os.rmdir(mnt)
        shutil.rmtree(src, ignore_errors=True)
    bad = [r for r in rows if not r["clean"]]
    per = {}
    for name in dict.fromkeys(r["writer"] for r in rows):
        mine = [r for r in rows if r["writer"] == name]
        per[name] = {"bytes_needed": mine[0]["need"], "free_sizes": len(mine), "free_min": mine[0]["free"],
                     "free_max": mine[-1]["free"], "completed": sum(r["completed"] for r in mine),
                     "clean_errors": sum(1 for r in mine if not r["completed"] and r["clean"]),
                     "an_error": next((r["error"] for r in mine if r["error"]), None)}
    return {"disk_full_runs": len(rows), "completed": sum(r["completed"] for r in rows),
            "clean_errors": sum(1 for r in rows if not r["completed"] and r["clean"]), "bad": bad,
            "writers": per}


def _cli_rc(main, argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    if rc != 0:
        import codec

        lines = err.getvalue().strip().splitlines()
        if rc == 2 and len(lines) == 1 and lines[0].startswith("ddz: error: "):
            raise codec.FileAccessError(lines[0])
        raise RuntimeError(f"exit {rc}: {err.getvalue()[:300]}")


def _free(mnt: str) -> int:
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize


def _rm(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _fill(mnt: str, free: int) -> None:
    with open(os.path.join(mnt, "filler"), "wb") as fh:
        fh.write(bytes(max(0, _free(mnt) - free)))


# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case index (run a long campaign in pieces)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kinds", default=None, help=f"comma-separated subset of {','.join(KINDS)}")
    ap.add_argument("--mem-cap", type=int, default=3 << 30, help="RLIMIT_AS headroom of a worker, bytes (default 3 GiB)")
    ap.add_argument("--hard-timeout", type=float, default=30.0, help="seconds before a case is abandoned")
    ap.add_argument("--out", default=None, help="write the JSON summary here")
    ap.add_argument("--cases-out", default=None, help="write one JSON line per case here (for --combine)")
    ap.add_argument("--combine", nargs="+", metavar="CASES_JSONL", help="summarize the --cases-out files of several pieces")
    ap.add_argument("--piece-seconds", nargs="+", default=None, help="with --combine: the pieces' total_s, summed")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--replay", metavar="KIND:SEED")
    ap.add_argument("--keep", metavar="PATH", help="with --replay: copy the mutant here")
    ap.add_argument("--disk-full", action="store_true", help="root only: real tmpfs sweep of every free size")
    ap.add_argument("--no-prewarm", action="store_true",
                    help="skip compiling every bit width's numba kernel when a worker starts (the bases' own are compiled)")
    ap.add_argument("--worker", metavar="BASES_DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.mem_cap, args.hard_timeout, not args.no_prewarm)
        return 0
    if args.replay:
        return replay_one(args.replay, args)
    if args.combine:  # pieces of one campaign run by --start ranges: one summary
        results = []
        for piece in args.combine:
            with open(piece) as fh:
                results += [json.loads(line) for line in fh]
        wall = sum(float(p) for p in args.piece_seconds) if args.piece_seconds else 0.0
        summary = summarize(results, args, wall, 0.0, 0)
        summary["pieces"] = args.combine
    else:
        summary = disk_full(args) if args.disk_full else run_campaign(args)
    text = json.dumps(summary, indent=1)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    brief = {k: v for k, v in summary.items() if k not in ("bad", "by_mutation", "entries")}
    print(json.dumps(brief, indent=1))
    bad = summary.get("bad") or []
    for b in bad[:10]:
        print(json.dumps(b)[:1500], file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
