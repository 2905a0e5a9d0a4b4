"""The layers of README's "Layout of the code" depend only downward: every import in every module of
``codec`` (function-level ones included) is checked against the layer table below."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "codec"

# lower number = lower layer; a module may import its own layer's package and anything below
LAYERS = {"errors": 0, "_files": 1, "_args": 2, "_torchfile": 2, "bits": 3, "format": 4, "codecs": 5, "budget": 6,
          "softlabels": 7, "video": 7, "loader": 8, "cli": 9}


def _package(module: str) -> str:
    """``codec.codecs.vq`` -> ``codecs``; ``codec.errors`` -> ``errors``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[str, int]]:
    """Absolute module names imported by ``path`` (a file under codec/), with line numbers."""
    rel = path.relative_to(ROOT.parent).with_suffix("")
    here = list(rel.parts[:-1])  # the package a relative import starts from (for __init__ too)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("codec")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import a, b
                    out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]
                    continue
                out.append((mod, node.lineno))
            elif node.module and node.module.startswith("codec"):
                out.append((node.module, node.lineno))
    return out


def test_every_package_has_a_layer():
    packages = {p.stem if p.is_file() else p.name for p in ROOT.iterdir() if p.name != "__init__.py" and not p.name.startswith("__")}
    assert packages == set(LAYERS)


def test_imports_only_go_down():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent)
        if rel.parts == ("codec", "__init__.py"):
            continue  # the package facade re-exports from every layer
        own = LAYERS[rel.parts[1].removesuffix(".py")]
        for module, line in _imports(path):
            pkg = _package(module)
            if pkg in LAYERS and LAYERS[pkg] > own or (LAYERS.get(pkg) == own and pkg != rel.parts[1].removesuffix(".py")):
                bad.append(f"{rel}:{line} imports {module}")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)
