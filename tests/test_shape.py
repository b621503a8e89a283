"""Shapes noted by commits agree with what DuckDB's json_structure makes of the same JSON.

The query layer merges the shapes that commits note (:mod:`crdtdb.shape`)
instead of parsing every body again; for any documents, the column types
must come out the same either way.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtdb.query.schema import merge_structure
from crdtdb.shape import MAX_STRUCT_FIELDS, merge, shape_of, shape_text

KEYS = st.sampled_from(["a", "b", "c", "d"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=8,
)
documents = st.lists(st.dictionaries(KEYS, values, max_size=4), min_size=1, max_size=6)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@settings(max_examples=150, deadline=None)
@given(documents)
def test_noted_shapes_give_the_types_json_structure_gives(docs: list[dict[str, Any]]) -> None:
    con = duckdb.connect()
    from_duckdb: dict[str, Any] = {}
    from_notes: dict[str, Any] = {}
    for doc in docs:
        (structure,) = con.execute("SELECT json_structure(?)", [canonical(doc)]).fetchone()  # type: ignore[misc]
        from_duckdb = merge_structure(from_duckdb, structure)
        from_notes = merge_structure(from_notes, shape_text(json.loads(canonical(doc))))
    assert from_notes == from_duckdb


def test_shapes_of_the_edge_cases() -> None:
    assert shape_of([]) == ["NULL"]
    assert json.loads(shape_text({"a": {}, "b": [{}, {"x": None}]})) == {
        "a": "JSON",  # as json_structure says of an empty map
        "b": [{"x": "NULL"}],
    }
    assert shape_of([1, 2.5]) == ["DOUBLE"]
    assert shape_of([1, "x"]) == ["JSON"]
    assert shape_of([{"a": 1}, {"b": "x"}]) == [{"a": "BIGINT", "b": "VARCHAR"}]
    wide = {f"k{i}": i for i in range(MAX_STRUCT_FIELDS + 1)}
    assert shape_of({"m": wide}) == {"m": "JSON"}
    assert json.loads(shape_text(wide))["k0"] == "BIGINT"  # a document's own fields stay
    assert merge("BIGINT", "VARCHAR") == "JSON" and merge("NULL", ["BIGINT"]) == ["BIGINT"]
