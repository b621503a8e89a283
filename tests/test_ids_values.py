"""Tests for crdtdb.ids (document ids, collections, regions) and crdtdb.values
(JSON-like values in and out of pycrdt; the live DocMap/DocArray views are in
test_docviews.py)."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from crdtdb.errors import (
    InvalidDocIdError,
    InvalidRegionError,
    InvalidValueError,
    UsageError,
)
from crdtdb.ids import collection_of, validate_collection, validate_doc_id, validate_region
from crdtdb.values import DocMap, normalize, read_json, to_crdt

PROPERTY = settings(max_examples=100, deadline=None)

# --- document ids ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc_id",
    [
        "users/alice",
        "u/k",
        "_/k",
        "0/0",
        "Users_2.v-1/x",
        "a" * 64 + "/k",
        "files/a/b/c.txt",  # the key may contain slashes
        "users//",  # ...even be one
        "users/ leading and trailing space ",
        "users/ünïcødé ☃ 😀",
        "users/" + "k" * 512,
        "users/" + "é" * 256,  # 512 bytes of UTF-8
        "users/" + "😀" * 128,  # 512 bytes of UTF-8
        "users/\u2028",  # a separator, but not a control character
    ],
)
def test_valid_doc_ids(doc_id: str) -> None:
    assert validate_doc_id(doc_id) == doc_id
    assert validate_doc_id(doc_id) is doc_id
    assert collection_of(doc_id) == doc_id.partition("/")[0]


@pytest.mark.parametrize(
    "doc_id",
    [
        "",
        "users",  # missing slash
        "users/",  # empty key
        "/alice",  # empty collection
        "/",
        ".hidden/k",  # collection starts with '.'
        "-dash/k",
        "us ers/k",
        "us:ers/k",
        "usérs/k",  # non-ASCII collection
        "users\n/k",
        "a" * 65 + "/k",  # collection too long
        "users/a\x00b",
        "users/tab\there",
        "users/new\nline",
        "users/cr\r",
        "users/\x1b[31mred",
        "users/del\x7f",
        "users/nel\x85",  # C1 control (next line)
        "users/\x9f",
        "users/" + "k" * 513,
        "users/" + "é" * 256 + "a",  # 513 bytes
        "users/" + "😀" * 128 + "a",
        "users/\ud800",  # lone surrogate: not valid Unicode text
    ],
    ids=repr,
)
def test_invalid_doc_ids(doc_id: str) -> None:
    with pytest.raises(InvalidDocIdError) as info:
        validate_doc_id(doc_id)
    assert info.value.code == "invalid_doc_id"
    assert isinstance(info.value, UsageError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("doc_id", [None, 1, b"users/alice", ["users", "alice"], ("u", "k")])
def test_non_str_doc_ids(doc_id: object) -> None:
    with pytest.raises(InvalidDocIdError, match=type(doc_id).__name__):
        validate_doc_id(doc_id)


def test_doc_id_errors_say_what_to_write() -> None:
    with pytest.raises(InvalidDocIdError, match="collection/key"):
        validate_doc_id("alice")
    with pytest.raises(InvalidDocIdError, match="512 bytes"):
        validate_doc_id("users/" + "k" * 600)
    with pytest.raises(InvalidDocIdError, match="invalid collection"):
        validate_doc_id("b@d/k")


collections = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}", fullmatch=True)
# Printable keys: no C0/C1 controls (Cc) and no surrogates (Cs).
keys = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=100).filter(
    lambda k: len(k.encode("utf-8")) <= 512
)


@PROPERTY
@given(collections, keys)
def test_property_printable_keys_are_accepted(collection: str, key: str) -> None:
    doc_id = f"{collection}/{key}"
    assert validate_doc_id(doc_id) == doc_id
    assert collection_of(doc_id) == collection
    assert validate_collection(collection) == collection


@PROPERTY
@given(
    collections,
    keys,
    st.characters(min_codepoint=0, max_codepoint=0x9F).filter(
        lambda c: c < " " or "\x7f" <= c <= "\x9f"
    ),
    st.integers(0, 100),
)
def test_property_control_characters_are_refused(
    collection: str, key: str, control: str, position: int
) -> None:
    position %= len(key) + 1
    with pytest.raises(InvalidDocIdError):
        validate_doc_id(f"{collection}/{key[:position]}{control}{key[position:]}")


@pytest.mark.parametrize(
    "name", ["", ".a", "-a", "a b", "a/b", "a" * 65, "é", None, 3, b"users", "users\n"]
)
def test_invalid_collections(name: object) -> None:
    with pytest.raises(InvalidDocIdError, match="collection"):
        validate_collection(name)


# --- regions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "region", ["eu", "us-east", "us_west_2", "a", "0", "9zone", "a" * 32, "eu-"]
)
def test_valid_regions(region: str) -> None:
    assert validate_region(region) == region


@pytest.mark.parametrize(
    "region",
    [
        "",
        "EU",
        "Eu-west",
        "-eu",
        "_eu",
        "a" * 33,
        "eu.west",
        "eu west",
        "eu/west",
        "eu\n",
        "\neu",
        "ëu",
        None,
        5,
        b"eu",
        ["eu"],
    ],
    ids=repr,
)
def test_invalid_regions(region: object) -> None:
    with pytest.raises(InvalidRegionError, match="region") as info:
        validate_region(region)
    assert info.value.code == "invalid_region"
    assert isinstance(info.value, UsageError)


def test_region_error_gives_an_example() -> None:
    with pytest.raises(InvalidRegionError, match="us-east"):
        validate_region("US East")


# --- to_crdt: refusals ----------------------------------------------------------------


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (float("nan"), "$"),
        (float("inf"), "$"),
        ({"a": [1, float("nan")]}, "$.a[1]"),
        ({"a": [1, float("-inf")]}, "$.a[1]"),
        ({"a": {"b": {1: 2}}}, "$.a.b"),
        ({"x": 1 << 63}, "$.x"),
        ({"x": -(1 << 63) - 1}, "$.x"),
        ([0, [1, 10**30]], "$[1][1]"),
        ({"a": [0, {1, 2}]}, "$.a[1]"),
        ({"a": [b"bytes"]}, "$.a[0]"),
        ({"o": Opaque()}, "$.o"),
        ({"c": 1j}, "$.c"),
        ({"d": Decimal("1.5")}, "$.d"),
        ({"m": Map()}, "$.m"),  # a raw pycrdt Map is not how values are written
        ([{"k": [{}, {"z": frozenset()}]}], "$[0].k[1].z"),
    ],
)
def test_to_crdt_refuses_with_the_path(value: object, path: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        to_crdt(value)
    assert f" {path} " in f" {info.value} "  # the path is named as a whole word
    assert info.value.code == "invalid_value"
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, ValueError)


def test_to_crdt_messages_say_what_to_do() -> None:
    with pytest.raises(InvalidValueError, match="store it as a str"):
        to_crdt(1 << 64)
    with pytest.raises(InvalidValueError, match="use null or a str"):
        to_crdt(float("nan"))
    with pytest.raises(InvalidValueError, match="JSON keys are text"):
        to_crdt({None: 1})
    with pytest.raises(InvalidValueError, match="set at \\$ is not JSON-like"):
        to_crdt(set())


def test_to_crdt_uses_the_given_path() -> None:
    with pytest.raises(InvalidValueError, match=r"\$\.doc\.x\[2\]"):
        to_crdt([1, 2, b""], "$.doc.x")


# --- to_crdt: conversions -------------------------------------------------------------


def test_to_crdt_scalars_pass_through() -> None:
    for value in [None, True, False, 0, -7, (1 << 63) - 1, -(1 << 63), 2.5, -0.0, "", "text"]:
        out = to_crdt(value)
        assert out is value or (out == value and type(out) is type(value))


def test_to_crdt_containers_become_crdt_types() -> None:
    converted = to_crdt({"a": [1, {"b": None}], "t": (1, 2)})
    assert isinstance(converted, Map)
    doc: Doc[Any] = Doc()
    doc["root"] = converted
    assert isinstance(converted["a"], Array)
    assert isinstance(converted["a"][1], Map)
    assert isinstance(converted["t"], Array)  # tuples become arrays
    assert normalize(converted.to_py()) == {"a": [1, {"b": None}], "t": [1, 2]}


def test_to_crdt_keeps_a_fresh_text_and_copies_an_integrated_one() -> None:
    fresh = Text("hello")
    assert to_crdt(fresh) is fresh
    doc: Doc[Any] = Doc()
    root = doc.get("root", type=Map)
    root["t"] = fresh
    integrated = root["t"]
    copy = to_crdt(integrated)
    assert copy is not integrated
    assert isinstance(copy, Text)
    root["u"] = copy
    copy += " world"
    assert str(root["t"]) == "hello"
    assert str(root["u"]) == "hello world"


@pytest.mark.parametrize("value", [(1 << 63) - 1, -(1 << 63), (1 << 53) + 1, -(1 << 53) - 1])
def test_64_bit_integers_survive_a_round_trip(value: int) -> None:
    doc: Doc[Any] = Doc()
    root = doc.get("root", type=Map)
    root["n"] = to_crdt(value)
    back = normalize(root.to_py())["n"]
    assert back == value
    assert type(back) is int


# --- normalize ------------------------------------------------------------------------


def test_normalize_turns_integral_floats_into_ints() -> None:
    assert normalize(1.0) == 1
    assert type(normalize(1.0)) is int
    assert type(normalize(-0.0)) is int
    assert type(normalize(float(1 << 53))) is int
    assert normalize(float(1 << 54)) == 1 << 54
    assert type(normalize(float(1 << 54))) is int
    assert normalize(-float(1 << 63)) == -(1 << 63)  # the smallest signed 64-bit integer
    assert type(normalize(-float(1 << 63))) is int
    assert normalize(2.5) == 2.5
    assert type(normalize(2.5)) is float
    # outside the signed 64-bit range an integral float stays a float (as Yrs' JSON does)
    assert type(normalize(float(1 << 63))) is float
    assert type(normalize(1e300)) is float
    assert type(normalize(-1e300)) is float


def test_normalize_keeps_bools_none_and_strings() -> None:
    assert normalize(True) is True
    assert normalize(False) is False
    assert normalize(None) is None
    assert normalize("1.0") == "1.0"
    assert math.isnan(normalize(float("nan")))


def test_normalize_recurses() -> None:
    out = normalize({"a": [1.0, 2.5, {"b": 3.0, "c": True}], "d": {"e": [[4.0]]}})
    assert out == {"a": [1, 2.5, {"b": 3, "c": True}], "d": {"e": [[4]]}}
    assert json.dumps(out, sort_keys=True) == (
        '{"a": [1, 2.5, {"b": 3, "c": true}], "d": {"e": [[4]]}}'
    )


# --- round trip through pycrdt --------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 53), 1 << 53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
    ),
    max_leaves=25,
)


def expected_reading(value: Any) -> Any:
    """What a value written through to_crdt reads back as: integral floats that fit
    in a signed 64-bit integer become ints, everything else is unchanged."""
    if isinstance(value, float) and value.is_integer() and -(2.0**63) <= value < 2.0**63:
        return int(value)
    if isinstance(value, dict):
        return {key: expected_reading(item) for key, item in value.items()}
    if isinstance(value, list):
        return [expected_reading(item) for item in value]
    return value


def as_json(value: Any) -> str:
    """Type-strict comparison: 1, 1.0 and True are equal in Python but not in JSON."""
    return json.dumps(value, sort_keys=True)


@PROPERTY
@given(json_values)
def test_property_json_values_round_trip_through_a_crdt_map(value: Any) -> None:
    doc: Doc[Any] = Doc()
    root = doc.get("root", type=Map)
    root["v"] = to_crdt(value)
    back = normalize(root.to_py())["v"]
    assert as_json(back) == as_json(expected_reading(value))
    assert back == expected_reading(value)
    # and a replica that receives the update reads the same
    replica: Doc[Any] = Doc()
    replica.apply_update(doc.get_update())
    assert as_json(normalize(replica.get("root", type=Map).to_py())["v"]) == as_json(back)
    # and the view, and Yrs' own JSON encoder, read the same
    assert as_json(DocMap(root, lambda: None).to_py()["v"]) == as_json(back)
    assert as_json(read_json(root)["v"]) == as_json(back)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_property_dicts_become_the_root_map(value: dict[str, Any]) -> None:
    doc: Doc[Any] = Doc()
    doc["root"] = crdt = to_crdt(value)
    assert as_json(normalize(crdt.to_py())) == as_json(expected_reading(value))
