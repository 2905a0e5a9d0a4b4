"""``ddz info`` and ``ddz verify``."""

from __future__ import annotations

import json
import sys

from ..format import PREAMBLE_SIZE, DDZSet, open as open_ddz


def register(sub) -> None:
    p = sub.add_parser("info", help="list sections, objects, metadata and overhead of a .ddz file or set")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("verify", help="check structure and every checksum (of a set: the index and every shard); exit 0 when sound")
    p.add_argument("file")
    p.set_defaults(func=cmd_verify)


def describe(path: str) -> dict:
    """Everything ``ddz info`` shows, as a JSON-able dict (a file, a set index, or a URL of either)."""
    with open_ddz(path) as f:
        if isinstance(f, DDZSet):
            return _describe_set(path, f)
        sections = [s.to_json() for s in f.sections]
        payload = sum(s.length for s in f.sections)
        padding = f.header_offset - PREAMBLE_SIZE - payload
        return {
            "file": path, "file_bytes": f.file_size, "version": list(f.version), "alignment": f.alignment,
            "sections": sections, "objects": f.objects, "metadata": f.metadata,
            "overhead_bytes": {"preamble": PREAMBLE_SIZE, "padding": padding, "header": f.header_length,
                               "total": PREAMBLE_SIZE + padding + f.header_length},
        }


def _describe_set(path: str, f: DDZSet) -> dict:
    shards: list[dict] = []
    stored: dict[str, int] = {}
    for i, rec in enumerate(f.shards):
        sf = f.shard(i)
        for info in sf.sections:
            stored[info.name] = stored.get(info.name, 0) + info.length
        overhead = sf.header_offset + sf.header_length - sum(s.length for s in sf.sections)
        shards.append({"name": rec.name, "file_bytes": rec.file_length, "version": list(sf.version),
                       "sections": len(sf.sections), "overhead_bytes": overhead})
    sections = [{**s.to_json(), "length": stored.get(s.name, 0), "decoded_length": s.decoded_length} for s in f.sections]
    total = f.index_length + sum(s["file_bytes"] for s in shards)
    return {"file": path, "set_id": f.set_id, "set_bytes": total, "index_bytes": f.index_length, "shards": shards,
            "sections": sections, "objects": f.objects, "metadata": f.metadata,
            "overhead_bytes": {"index": f.index_length, "shards": sum(s["overhead_bytes"] for s in shards),
                               "total": f.index_length + sum(s["overhead_bytes"] for s in shards)}}


def _encoding(s: dict) -> str:
    return "+".join(f"{e['id']}:{e['bits']}" if e["id"] == "bitpack" else e["id"] for e in s["encoding"]) or "raw"


def cmd_info(args) -> int:
    d = describe(args.file)
    if args.json:
        json.dump(d, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    is_set = "set_id" in d
    if is_set:
        print(f"{d['file']}: set {d['set_id']} of {len(d['shards'])} shards, {d['set_bytes']:,} bytes in all "
              f"(index {d['index_bytes']:,} B)")
        rows = [("name", "dtype", "shape", "encoding", "pieces", "stored B", "decoded B")]
        rows += [(s["name"], s["dtype"], "x".join(map(str, s["shape"])) or "()", _encoding(s), str(len(s["pieces"])),
                  f"{s['length']:,}", f"{s['decoded_length']:,}") for s in d["sections"]]
    else:
        print(f"{d['file']}: {d['file_bytes']:,} bytes, format {d['version'][0]}.{d['version'][1]}, alignment {d['alignment']}")
        rows = [("name", "dtype", "shape", "encoding", "offset", "stored B", "decoded B")]
        rows += [(s["name"], s["dtype"], "x".join(map(str, s["shape"])) or "()", _encoding(s), f"{s['offset']:,}",
                  f"{s['length']:,}", f"{s['decoded_length']:,}") for s in d["sections"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"sections ({len(d['sections'])}):")
    for r in rows:
        print("  " + "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if d["objects"]:
        print(f"objects ({len(d['objects'])}):")
        for name, obj in d["objects"].items():
            print(f"  {name}: codec {obj['codec']['id']!r}, parts {', '.join(obj['sections'])}")
    if d["metadata"]:
        print("metadata: " + json.dumps(d["metadata"], sort_keys=True)[:2000])
    o = d["overhead_bytes"]
    if is_set:
        print(f"shards ({len(d['shards'])}):")
        for sh in d["shards"]:
            print(f"  {sh['name']}: {sh['file_bytes']:,} bytes, format {sh['version'][0]}.{sh['version'][1]}, "
                  f"{sh['sections']} sections, overhead {sh['overhead_bytes']:,} B")
        print(f"overhead: {o['total']:,} bytes (index {o['index']:,}, shard preambles, padding and headers {o['shards']:,})")
        return 0
    print(f"overhead: {o['total']:,} bytes (preamble {o['preamble']}, padding {o['padding']:,}, header {o['header']:,})")
    return 0


def cmd_verify(args) -> int:
    with open_ddz(args.file) as f:
        problems = list(f.problems())
    for p in problems:
        print(f"{args.file}: {p}")
    if problems:
        return 1
    print(f"{args.file}: OK")
    return 0
