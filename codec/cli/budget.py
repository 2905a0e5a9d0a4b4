"""``ddz budget``: plan codec budgets (Eq. S11-S17), solve VQ hyperparameters (Table S8),
and attribute every byte of a real .ddz file.  A thin layer over :mod:`codec.budget`.

    ddz budget plan --ipc 10 --classes 1000 --epochs 300 --codec vq:dh=795,dc=5,k=1024 --codec topk:k=15 [--json]
    ddz budget solve --ipc 10 --classes 1000 --epochs 300 --ratio 40 [--param-bytes 2] [--all] [--json]
    ddz budget FILE [--json]
"""

from __future__ import annotations

import argparse
import json
import os

from ..errors import InvalidInputError

_USAGE = """ddz budget plan --ipc N --classes C --epochs E --codec SPEC [--codec SPEC ...] [--json]
       ddz budget solve --ipc N --classes C --epochs E --ratio R [--param-bytes 2|4] [--all] [--json]
       ddz budget FILE [--json]"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "budget", usage=_USAGE, help="soft-label storage budgets (S11-S17), VQ solver, per-byte file attribution",
        description="Budgets in bytes (MiB = 1024**2 B, GiB = 1024**3 B). Codec specs: raw, "
                    "vq:dh=795,dc=5,k=1024[,param_bytes=4], topk:k=15, pca:k=24, quant:k=4, "
                    "lpld:prune_ratio=0.975[,batch=128] (LPLD's own rule: int(E*nb*(1-p)) batches) or lpld:ratio=40 "
                    "(a nominal ratio: floor(E*nb/r) batches).")
    p.add_argument("target", metavar="plan|solve|FILE", help="'plan', 'solve', or a .ddz file to attribute")
    p.add_argument("--ipc", type=int, help="images per class")
    p.add_argument("--classes", type=int, help="number of classes C")
    p.add_argument("--epochs", type=int, help="training epochs (one soft label per image per epoch)")
    p.add_argument("--codec", action="append", default=[], metavar="SPEC", help="codec spec (repeatable)")
    p.add_argument("--ratio", type=float, help="target compression ratio over S11 (solve)")
    p.add_argument("--all", action="store_true", help="solve: list every feasible (dc, k) instead of one per dc")
    p.add_argument("--param-bytes", type=int, choices=(2, 4), dest="param_bytes",
                   help="solve: bytes per decoder/codebook value, 4 (fp32, S12 as printed; the default) or 2 "
                        "(a codec stored with param_dtype f16)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _need(args, *names):
    missing = [n for n in names if getattr(args, n) in (None, [])]
    if missing:
        raise InvalidInputError(f"budget {args.target}: missing --{', --'.join(missing)}")


def _reject(args, *names):
    given = [n.replace("_", "-") for n in names if getattr(args, n) not in (None, [], False)]
    if given:
        raise InvalidInputError(f"budget {args.target} does not take --{', --'.join(given)}")


def _json(d: dict) -> int:
    print(json.dumps(d, indent=2))
    return 0


def _table(hdr: str, lines) -> None:
    print(hdr)
    print("-" * len(hdr))
    for line in lines:
        print(line)


def _mib(b: float) -> str:
    """A table cell in the MiB column (the unit is in the header)."""
    from ..budget import MiB

    return f"{b / MiB:,.3f}"


def _gib(b: float) -> str:
    """A table cell in the GiB column."""
    from ..budget import GiB

    return f"{b / GiB:,.4f}"


def run(args: argparse.Namespace) -> int:
    from .. import budget as B

    if args.target == "plan":
        _need(args, "ipc", "classes", "epochs", "codec")
        _reject(args, "ratio", "all", "param_bytes")
        rows = [B.plan(args.ipc, args.classes, args.epochs, spec) for spec in args.codec]
        s11 = B.s11(args.ipc, args.classes, args.epochs)
        if args.json:
            return _json({"ipc": args.ipc, "classes": args.classes, "epochs": args.epochs, "s11_bytes": s11,
                          "unit": "bytes", "codecs": [r.to_json() for r in rows]})
        print(f"IPC {args.ipc}, {args.classes} classes, {args.epochs} epochs: "
              f"S11 dense fp16 = {B.fmt_bytes(s11)}")
        _table(f"{'codec':<28} {'eq':<6} {'formula bytes':>18} {'MiB':>14} {'GiB':>10} {'ratio':>9} {'stored bytes':>16} {'stored ratio':>12}",
               (f"{r.codec:<28} {r.formula:<6} {r.bytes:>18,.1f} {_mib(r.bytes):>14} {_gib(r.bytes):>10} {r.ratio:>8.3f}x "
                f"{r.stored_bytes:>16,} {r.stored_ratio:>11.3f}x" for r in rows))
        print("formula bytes: the paper's equation as printed (real log2); stored bytes: ceil(log2) bits per index, "
              "whole bytes, fp16/fp32 as the equation states.")
        for r in rows:
            terms = ", ".join(f"{k} {v:,.1f} B" for k, v in r.terms.items())
            print(f"  {r.codec}: {terms}")
        return 0

    if args.target == "solve":
        _need(args, "ipc", "classes", "epochs", "ratio")
        _reject(args, "codec")
        pbytes = 4 if args.param_bytes is None else args.param_bytes
        props = B.solve(args.ipc, args.classes, args.epochs, args.ratio, all_candidates=args.all, param_bytes=pbytes)
        if args.json:
            return _json({"ipc": args.ipc, "classes": args.classes, "epochs": args.epochs, "target_ratio": args.ratio,
                          "param_bytes": pbytes, "unit": "bytes", "proposals": [
                              {"dc": p.dc, "k": p.k, "dh": p.dh, "m": p.dh // p.dc, "ratio": p.ratio, "bytes": p.bytes,
                               "codec": p.spec, "bits_per_label": p.bits_per_label} for p in props]})
        print(f"VQ settings reaching >= {args.ratio:g}x over S11 (IPC {args.ipc}, {args.classes} classes, "
              f"{args.epochs} epochs, decoder and codebook at {pbytes} bytes per value), larger dc first:")
        _table(f"{'dc':>5} {'k':>6} {'dh':>6} {'m':>5} {'bits/label':>10} {'ratio':>9} {'bytes':>16} {'MiB':>12}  spec",
               (f"{p.dc:>5} {p.k:>6} {p.dh:>6} {p.dh // p.dc:>5} {p.bits_per_label:>10} {p.ratio:>8.3f}x "
                f"{p.bytes:>16,.1f} {_mib(p.bytes):>12}  {p.spec}" for p in props))
        return 0

    # a file
    if args.codec or args.ratio is not None or args.all or any(getattr(args, n) is not None
                                                               for n in ("ipc", "classes", "epochs", "param_bytes")):
        raise InvalidInputError(f"budget FILE takes only --json (got options for plan/solve); is {args.target!r} a typo?")
    from ..format.source import is_url

    if not is_url(args.target) and not os.path.exists(args.target):
        raise InvalidInputError(f"budget: {args.target!r} is neither 'plan', 'solve' nor an existing file")
    attributed = B.attribute(args.target)
    summ = B.summarize(attributed)
    if args.json:
        return _json({"file": args.target, "unit": "bytes", "file_size": summ["total"],
                      "rows": [r.to_json() for r in attributed], "summary": summ})
    what = "the index plus every shard" if "index" in summ["by_kind"] else "the file size"
    print(f"{args.target}: {B.fmt_bytes(summ['total'])}; every byte attributed (rows sum to {what})")
    _table(f"{'offset':>12} {'bytes':>14} {'formula B':>16}  {'name':<28} term / notes", ())
    for row in attributed:
        fb = f"{row.formula_bytes:,.1f}" if row.formula_bytes is not None else "-"
        print(f"{row.offset:>12,} {row.bytes:>14,} {fb:>16}  {row.name:<28} {row.term}")
        if row.note:
            print(f"{'':>12} {'':>14} {'':>16}  {'':<28}   {row.note}")
    by = summ["by_kind"]
    index = f"set index {by['index']:,} B + " if "index" in by else ""
    print(f"total {summ['total']:,} B = {index}sections {by.get('section', 0):,} B + preamble {by.get('preamble', 0):,} B + "
          f"header {by.get('header', 0):,} B + padding {by.get('padding', 0):,} B (container overhead {summ['overhead']:,} B)")
    return 0
