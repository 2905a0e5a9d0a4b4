"""Shared bench helpers: a per-run table of results printed at the end of the session.

A bench records rows with the ``bench_table`` fixture (``bench_table.add(table, row_dict)``,
optionally ``bench_table.set_finalizer(table, fn)`` to post-process the rows, e.g. add ratio
columns); ``pytest_terminal_summary`` prints every table, so ratios to references measured in
the same run are visible without digging through pytest-benchmark's JSON.
"""

from __future__ import annotations

import pytest

_TABLES: dict[str, list[dict]] = {}
_FINALIZERS: dict[str, object] = {}


class _Registry:
    @staticmethod
    def add(table: str, row: dict) -> None:
        _TABLES.setdefault(table, []).append(row)

    @staticmethod
    def set_finalizer(table: str, fn) -> None:
        """fn(rows) -> rows, called once before printing."""
        _FINALIZERS[table] = fn


@pytest.fixture(scope="session")
def bench_table():
    return _Registry()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def pytest_terminal_summary(terminalreporter):
    for table, rows in _TABLES.items():
        fin = _FINALIZERS.get(table)
        if fin is not None:
            rows = fin(rows)
        if not rows:
            continue
        cols = list(dict.fromkeys(k for r in rows for k in r))
        cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
        widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
        tr = terminalreporter
        tr.write_sep("=", table)
        tr.write_line("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
        tr.write_line("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for x in cells:
            tr.write_line("| " + " | ".join(v.rjust(w) for v, w in zip(x, widths)) + " |")
