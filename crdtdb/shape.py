"""The shape of a JSON value: the type tree a column of it needs, and how shapes merge.

A shape is written in the notation of DuckDB's ``json_structure``: a scalar
type name (``BIGINT``, ``DOUBLE``, ``VARCHAR``, ``BOOLEAN``, ``NULL``, or
``JSON`` for a value that is sometimes one thing, sometimes another),
``[element]`` for a list, ``{"key": shape}`` for a map. Commits note the
shape of each document they write (``bodies.shape``), so that a reader
deriving column types from every document merges a few distinct shapes
instead of parsing every document again (:mod:`crdtdb.query.schema`).

:func:`merge` gives the narrowest shape that holds the values of both: the
same shape stays; ``NULL`` gives way; integers and floats make ``DOUBLE``;
lists merge their elements and maps their keys; anything else that disagrees,
or a map of more than ``MAX_STRUCT_FIELDS`` keys, is ``JSON``.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, TypeAlias

__all__ = [
    "MAX_STRUCT_FIELDS",
    "Shape",
    "ShapeIds",
    "merge",
    "normal",
    "shape_of",
    "shape_text",
]

Shape: TypeAlias = str | list[Any] | dict[str, Any]

MAX_STRUCT_FIELDS = 100
"""A map with more keys than this has the shape ``JSON`` (a column of it would be a huge
STRUCT), except at the top level of a document (its fields become columns)."""

_INTEGERS = {"UBIGINT", "BIGINT", "INTEGER", "UINTEGER", "SMALLINT", "TINYINT", "HUGEINT"}


def normal(kind: Shape) -> Shape:
    """``kind`` with DuckDB's integer names as ``BIGINT`` and oversized maps as ``JSON``."""
    if isinstance(kind, str):
        return "BIGINT" if kind in _INTEGERS else kind
    if isinstance(kind, list):
        return [normal(kind[0])] if kind else ["NULL"]
    if len(kind) > MAX_STRUCT_FIELDS:
        return "JSON"
    return {key: normal(value) for key, value in kind.items()}


def merge(a: Shape, b: Shape) -> Shape:
    """The narrowest shape that holds every value of both (see the module docstring)."""
    a, b = normal(a), normal(b)
    if a == b:
        return a
    if a == "NULL":
        return b
    if b == "NULL":
        return a
    if isinstance(a, str) and isinstance(b, str) and {a, b} == {"BIGINT", "DOUBLE"}:
        return "DOUBLE"
    if isinstance(a, list) and isinstance(b, list):
        return [merge(a[0], b[0])]
    if isinstance(a, dict) and isinstance(b, dict):
        keys = {**a, **b}
        if len(keys) > MAX_STRUCT_FIELDS:
            return "JSON"
        return {k: merge(a.get(k, "NULL"), b.get(k, "NULL")) for k in keys}
    return "JSON"


def shape_of(value: Any) -> Shape:
    """The shape of one JSON value (as ``json.loads`` gives it)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "BIGINT"
    if isinstance(value, float):
        return "DOUBLE"
    if isinstance(value, str):
        return "VARCHAR"
    if isinstance(value, list):
        element: Shape = "NULL"
        for item in value:
            element = merge(element, shape_of(item))
        return [element]
    if len(value) > MAX_STRUCT_FIELDS:
        return "JSON"
    return {key: shape_of(item) for key, item in value.items()}


def _settled(kind: Shape) -> Shape:
    """A document's shape as ``json_structure`` reports it: a map that ended up with no
    keys is ``JSON`` (inside a list, ``{}`` first merges with its siblings as a map)."""
    if isinstance(kind, list):
        return [_settled(kind[0])]
    if isinstance(kind, dict):
        return {key: _settled(value) for key, value in kind.items()} if kind else "JSON"
    return kind


def shape_text(document: dict[str, Any]) -> str:
    """A document's shape as canonical text (top-level fields all kept, keys sorted)."""
    return json.dumps(
        {key: _settled(shape_of(item)) for key, item in document.items()},
        sort_keys=True,
        separators=(",", ":"),
    )


class ShapeIds:
    """The ``shapes`` table of a store: each distinct document shape once, by number.

    Numbers never change once given, so the ones seen are kept in memory; a
    write transaction that rolls back forgets them (some may not be stored).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._known: dict[str, int] = {}

    def id_of(self, shape: str) -> int:
        """The number of ``shape``, given now if new; call inside a write transaction."""
        known = self._known.get(shape)
        if known is not None:
            return known
        self._conn.execute("INSERT INTO shapes (shape) VALUES (?) ON CONFLICT DO NOTHING", (shape,))
        row = self._conn.execute("SELECT id FROM shapes WHERE shape = ?", (shape,)).fetchone()
        self._known[shape] = int(row[0])
        return self._known[shape]

    def rolled_back(self) -> None:
        self._known.clear()
