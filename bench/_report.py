"""Plain-text report pieces shared by the benchmark scripts of this folder, and their log.

The scripts run as ``python bench/<script>.py``, so this folder is first on
``sys.path`` and they import this module as ``_report``.
"""

from __future__ import annotations

import sys

__all__ = ["log", "table", "verdict"]


def log(message: str) -> None:
    """Progress, on stderr (the report goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the rest right-aligned."""
    widths = [max(len(row[c]) for row in [headers, *rows]) for c in range(len(headers))]
    lines = [
        "  ".join(
            cell.ljust(widths[0]) if c == 0 else cell.rjust(widths[c]) for c, cell in enumerate(row)
        )
        for row in [headers, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(met: bool) -> str:
    """How a report shows whether a target was met."""
    return "MET" if met else "MISSED"
