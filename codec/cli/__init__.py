"""The ``ddz`` command line: a thin layer over the library API."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import DDZError

# Each module has register(subparsers); its parsers set_defaults(func=handler(args) -> exit code).
# Modules keep heavy imports (torch, diffusers) inside their handlers so `ddz info` starts fast.
_COMMAND_MODULES = ("inspect", "budget", "pack", "labels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddz", description="Inspect, verify, plan and pack .ddz files.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DDZError as exc:
        print(f"ddz: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddz: interrupted; no file was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (``ddz budget FILE | head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 1


if __name__ == "__main__":
    sys.exit(main())
