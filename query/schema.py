"""Column types of a collection, derived from every document, and the names they get in SQL.

A field's type is a tree in the notation of DuckDB's ``json_structure`` and
``json_transform``: a scalar type name, ``[element]`` for a list, or
``{"key": type}`` for a map. The type of a field over many documents is the
merge of their types (:func:`merge`):

- the same type stays; ``NULL`` (a null, or an empty list's element) gives
  way to any other;
- integers are ``BIGINT`` (crdtdb integers fit in 64 bits); integers and
  floats together are ``DOUBLE``;
- lists merge their elements, maps their keys (a map's column is a STRUCT
  with every key seen, NULL where a document lacks it);
- anything else that disagrees (a number in some documents and a string in
  others, a map and a list, a STRUCT of more than ``MAX_STRUCT_FIELDS``
  keys) becomes ``JSON``: the column then holds each document's value as
  JSON text, so no value is lost or coerced (``31`` stays a number,
  ``"31"`` a string).

Types only widen: a refresh merges the types of the documents that changed
into the collection's types. A field no live document holds any more keeps
its column (NULL everywhere) until the materialisation is rebuilt
(``refresh(full=True)``).
"""

from __future__ import annotations

import json
from typing import TypeAlias

from crdtdb.shape import Shape, merge

__all__ = [
    "FieldType",
    "column_names",
    "columns",
    "merge",
    "merge_structure",
    "quote",
    "sql_type",
    "structure",
]

FieldType: TypeAlias = Shape

MAX_COLUMNS = 1000
"""A collection's view shows at most this many top-level fields (the first seen); the
others stay in the ``docs`` table's body."""
RESERVED = ("id", "key", "hlc", "updated_at", "origin", "collection", "deleted", "_seg", "_body")
"""The view's own columns and those its files keep beside the fields: a document field
of one of these names is shown as ``name_``."""


def columns(fields: dict[str, FieldType]) -> dict[str, FieldType]:
    """The fields that are columns: the first ``MAX_COLUMNS`` seen."""
    if len(fields) <= MAX_COLUMNS:
        return fields
    return dict(list(fields.items())[:MAX_COLUMNS])


def merge_structure(fields: dict[str, FieldType], structure: str) -> dict[str, FieldType]:
    """``fields`` widened by one document structure (``json_structure`` of its body)."""
    parsed = json.loads(structure)
    if not isinstance(parsed, dict):
        return fields
    merged = dict(fields)
    for key, kind in parsed.items():
        merged[key] = merge(merged.get(key, "NULL"), kind)
    return merged


def structure(fields: dict[str, FieldType]) -> str:
    """The ``json_transform`` structure of a collection's row (NULL-only fields as JSON)."""
    return json.dumps({key: _concrete(kind) for key, kind in fields.items()})


def _concrete(kind: FieldType) -> FieldType:
    if isinstance(kind, str):
        return "JSON" if kind == "NULL" else kind
    if isinstance(kind, list):
        return [_concrete(kind[0])]
    return {key: _concrete(value) for key, value in kind.items()}


def sql_type(kind: FieldType) -> str:
    """The DuckDB type of a column of this field type."""
    kind = _concrete(kind)
    if isinstance(kind, str):
        return kind
    if isinstance(kind, list):
        return f"{sql_type(kind[0])}[]"
    inner = ", ".join(f"{quote(key)} {sql_type(value)}" for key, value in kind.items())
    return f"STRUCT({inner})"


def quote(name: str) -> str:
    """An SQL identifier for any name: double quotes, inner ones doubled."""
    return '"' + name.replace('"', '""') + '"'


def column_names(fields: list[str]) -> dict[str, str]:
    """Field -> column name: unique regardless of case (DuckDB's rule) and clear of ``RESERVED``.

    A field named like a view column gets a trailing ``_``; a field whose name
    differs from an earlier one only by case gets ``_2``, ``_3``...
    """
    taken = {name.lower() for name in RESERVED}
    names = {}
    for field in fields:
        name = f"{field}_" if field.lower() in RESERVED else field
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{name}_{n}"
        taken.add(candidate.lower())
        names[field] = candidate
    return names
