"""Rendering query results for the console: a table that fits the terminal, CSV,
JSON, Markdown, or one field a line. Pure functions of a fetched :class:`Result`."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from prompt_toolkit.utils import get_cwidth

__all__ = ["FORMATS", "MIN_WIDTH", "Result", "cell", "jsonable", "render"]

FORMATS = ("table", "csv", "json", "markdown", "line")
MIN_WIDTH = 6
"""Narrowest a column of a table gets when squeezed into the terminal."""

# --------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Result:
    """One statement's result as fetched."""

    columns: list[str]
    """Column names, in order."""
    types: list[str]
    """DuckDB's type of each column (``"JSON"``, ``"BIGINT"``...)."""
    rows: list[tuple[Any, ...]]
    """The rows fetched (maybe the first few only)."""
    total: int
    """How many rows the statement returned."""


def cell(value: Any, null: str = "NULL") -> str:
    """A value as text: ``null`` for NULL, true/false, lists and structs as JSON."""
    if value is None:
        return null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return _blob(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(jsonable(value), ensure_ascii=False)
    return str(value)


def _blob(value: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02X}" for b in value)


def jsonable(value: Any) -> Any:
    """``value`` as what ``json.dumps`` takes (and yields valid JSON from)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return _blob(value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)  # UUID, timedelta


def _flat(text: str) -> str:
    """Text kept on one line of a table."""
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")


def _numeric(rows: list[tuple[Any, ...]], column: int) -> bool:
    values = [row[column] for row in rows if row[column] is not None]
    return bool(values) and all(
        isinstance(v, int | float | Decimal) and not isinstance(v, bool) for v in values
    )


def render_table(result: Result, width: int | None) -> str:
    """A box-drawn table, cut to ``width`` columns of text (None: as wide as it is)."""
    header = [_flat(c) for c in result.columns]
    body = [[_flat(cell(v)) for v in row] for row in result.rows]
    natural = [max(get_cwidth(t) for t in column) for column in zip(header, *body, strict=True)]
    widths = natural if width is None else _fit(natural, width)
    right = [_numeric(result.rows, i) for i in range(len(widths))]
    lines = [_rule("┌┬┐", widths), _line(header, widths, [False] * len(widths))]
    lines.append(_rule("├┼┤", widths))
    lines += [_line(row, widths, right) for row in body]
    lines.append(_rule("└┴┘", widths))
    lines += _footer(result, len(header) - len(widths))
    return "\n".join(lines) + "\n"


def _span(widths: list[int]) -> int:
    return sum(widths) + 3 * len(widths) + 1


def _fit(widths: list[int], limit: int) -> list[int]:
    """Widths narrowed (widest first), then columns dropped from the right, to fit ``limit``."""
    fitted = list(widths)
    while _span(fitted) > limit and max(fitted) > MIN_WIDTH:
        widest = fitted.index(max(fitted))
        fitted[widest] = max(MIN_WIDTH, fitted[widest] - (_span(fitted) - limit))
    while len(fitted) > 1 and _span(fitted) > limit:
        fitted.pop()
    return fitted


def _rule(corners: str, widths: list[int]) -> str:
    return corners[0] + corners[1].join("─" * (w + 2) for w in widths) + corners[2]


def _line(cells: list[str], widths: list[int], right: list[bool]) -> str:
    padded = (_pad(t, w, r) for t, w, r in zip(cells, widths, right, strict=False))
    return "│" + "│".join(f" {text} " for text in padded) + "│"


def _pad(text: str, width: int, right: bool) -> str:
    text = _clip(text, width)
    gap = " " * (width - get_cwidth(text))
    return gap + text if right else text + gap


def _clip(text: str, width: int) -> str:
    if get_cwidth(text) <= width:
        return text
    kept, used = [], 0
    for char in text:
        used += get_cwidth(char)
        if used > width - 1:
            break
        kept.append(char)
    return "".join(kept) + "…"


def _footer(result: Result, hidden: int) -> list[str]:
    notes = []
    if result.total > len(result.rows):
        notes.append(f"… {result.total:,} rows, {len(result.rows):,} shown")
    if hidden:
        notes.append(f"… {hidden} more column{'s' if hidden > 1 else ''} (.mode line shows all)")
    return notes


def render_csv(result: Result, width: int | None) -> str:
    """CSV with a header row; NULL is an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows([cell(v, "") for v in row] for row in result.rows)
    return buffer.getvalue()


def render_json(result: Result, width: int | None) -> str:
    """One JSON array of objects, an object a line (see the module docstring)."""
    nested = [t == "JSON" for t in result.types]
    objects = [
        json.dumps(
            {c: _json_value(v, n) for c, v, n in zip(result.columns, row, nested, strict=True)},
            ensure_ascii=False,
        )
        for row in result.rows
    ]
    return "[" + ",\n ".join(objects) + "]\n"


def _json_value(value: Any, nested: bool) -> Any:
    if nested and isinstance(value, str):
        with contextlib.suppress(ValueError):
            return jsonable(json.loads(value))
    return jsonable(value)


def render_markdown(result: Result, width: int | None) -> str:
    """A pipe table; numeric columns aligned right."""
    right = [_numeric(result.rows, i) for i in range(len(result.columns))]
    lines = [_md_row(result.columns), "|" + "|".join(" ---: " if r else " --- " for r in right)]
    lines[-1] += "|"
    lines += [_md_row([cell(v) for v in row]) for row in result.rows]
    return "\n".join(lines) + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(_flat(t).replace("|", "\\|") for t in cells) + " |"


def render_line(result: Result, width: int | None) -> str:
    """``column = value``, a line each, a blank line between rows."""
    pad = max((get_cwidth(c) for c in result.columns), default=0)
    blocks = [
        "\n".join(f"{c:>{pad}} = {cell(v)}" for c, v in zip(result.columns, row, strict=True))
        for row in result.rows
    ]
    return "\n\n".join(blocks) + "\n" if blocks else ""


RENDERERS: dict[str, Callable[[Result, int | None], str]] = {
    "table": render_table,
    "csv": render_csv,
    "json": render_json,
    "markdown": render_markdown,
    "line": render_line,
}


def render(result: Result, mode: str, width: int | None = None) -> str:
    """``result`` in format ``mode`` (one of :data:`FORMATS`)."""
    return RENDERERS[mode](result, width)
