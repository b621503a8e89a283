"""Tests for crdtdb.ids (document ids, collections, regions) and crdtdb.values
(JSON-like values in and out of pycrdt, and the live DocMap/DocArray views)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
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
    TransactionError,
    UsageError,
)
from crdtdb.ids import collection_of, validate_collection, validate_doc_id, validate_region
from crdtdb.values import DocArray, DocMap, from_crdt, normalize, read_json, to_crdt

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
    doc = Doc()
    doc["root"] = converted
    assert isinstance(converted["a"], Array)
    assert isinstance(converted["a"][1], Map)
    assert isinstance(converted["t"], Array)  # tuples become arrays
    assert normalize(converted.to_py()) == {"a": [1, {"b": None}], "t": [1, 2]}


def test_to_crdt_keeps_a_fresh_text_and_copies_an_integrated_one() -> None:
    fresh = Text("hello")
    assert to_crdt(fresh) is fresh
    doc = Doc()
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
    doc = Doc()
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
    doc = Doc()
    root = doc.get("root", type=Map)
    root["v"] = to_crdt(value)
    back = normalize(root.to_py())["v"]
    assert as_json(back) == as_json(expected_reading(value))
    assert back == expected_reading(value)
    # and a replica that receives the update reads the same
    replica = Doc()
    replica.apply_update(doc.get_update())
    assert as_json(normalize(replica.get("root", type=Map).to_py())["v"]) == as_json(back)
    # and the view, and Yrs' own JSON encoder, read the same
    assert as_json(DocMap(root, lambda: None).to_py()["v"]) == as_json(back)
    assert as_json(read_json(root)["v"]) == as_json(back)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_property_dicts_become_the_root_map(value: dict[str, Any]) -> None:
    doc = Doc()
    doc["root"] = crdt = to_crdt(value)
    assert as_json(normalize(crdt.to_py())) == as_json(expected_reading(value))


# --- DocMap / DocArray ----------------------------------------------------------------


class FakeTransaction:
    """Hands out views whose guard raises once the transaction has ended."""

    def __init__(self) -> None:
        self.ended = False
        self.doc = Doc()
        self.root = self.doc.get("root", type=Map)

    def guard(self) -> None:
        if self.ended:
            raise TransactionError("the transaction has ended: open a new one to edit")

    def view(self) -> DocMap:
        return DocMap(self.root, self.guard)


@pytest.fixture
def tx() -> FakeTransaction:
    return FakeTransaction()


def test_docmap_basic_mapping(tx: FakeTransaction) -> None:
    view = tx.view()
    view["name"] = "alice"
    view["age"] = 31
    view["score"] = 2.5
    view["admin"] = False
    view["none"] = None
    assert view["age"] == 31
    assert type(view["age"]) is int  # not the 31.0 pycrdt hands back
    assert view["score"] == 2.5
    assert view["admin"] is False
    assert view["none"] is None
    assert len(view) == 5
    assert set(view) == {"name", "age", "score", "admin", "none"}
    assert "name" in view
    assert "nope" not in view
    assert 1 not in view
    with pytest.raises(KeyError):
        view["nope"]
    assert view.get("nope", "default") == "default"
    del view["none"]
    assert "none" not in view
    with pytest.raises(KeyError):
        del view["none"]
    assert view.pop("admin") is False
    assert view.setdefault("city", "Paris") == "Paris"
    view.update({"age": 32}, extra=[1])
    assert view.to_py() == {"name": "alice", "age": 32, "score": 2.5, "city": "Paris", "extra": [1]}
    assert normalize(tx.root.to_py()) == view.to_py()  # the edits went into the CRDT
    assert dict(view.items())["extra"].to_py() == [1]


def test_docmap_iteration_is_a_snapshot(tx: FakeTransaction) -> None:
    view = tx.view()
    view.update(a=1, b=2, c=3)
    for key in view:  # deleting while iterating is safe: iteration is over a copy
        del view[key]
    assert len(view) == 0
    assert view.to_py() == {}


def test_docmap_refuses_bad_keys_and_values_without_changing_anything(
    tx: FakeTransaction,
) -> None:
    view = tx.view()
    view["keep"] = 1
    with pytest.raises(InvalidValueError, match="JSON keys are text"):
        view[1] = "x"  # type: ignore[index]
    with pytest.raises(InvalidValueError, match=r"\$\.k\.a\[1\]"):
        view["k"] = {"a": [1, float("nan")]}
    with pytest.raises(InvalidValueError, match=r"\$\.k"):
        view["k"] = object()
    assert normalize(tx.root.to_py()) == {"keep": 1}


def test_nested_edits(tx: FakeTransaction) -> None:
    view = tx.view()
    view["profile"] = {"name": "alice", "tags": ["a"], "address": {"city": "Paris"}}
    profile = view["profile"]
    assert isinstance(profile, DocMap)
    assert isinstance(profile["tags"], DocArray)
    profile["age"] = 31
    profile["address"]["zip"] = "75001"
    profile["tags"].append("b")
    profile["tags"].append({"deep": [1]})
    profile["tags"][2]["deep"].extend([2, 3])
    del profile["address"]["city"]
    expected = {
        "profile": {
            "name": "alice",
            "tags": ["a", "b", {"deep": [1, 2, 3]}],
            "address": {"zip": "75001"},
            "age": 31,
        }
    }
    assert view.to_py() == expected
    assert normalize(tx.root.to_py()) == expected
    assert repr(view["profile"]["address"]) == "DocMap({'zip': '75001'})"
    assert repr(view["profile"]["tags"][2]["deep"]) == "DocArray([1, 2, 3])"


def test_nested_edits_merge_key_by_key_across_replicas(tx: FakeTransaction) -> None:
    view = tx.view()
    view["profile"] = {"name": "alice", "tags": ["a"]}
    replica = Doc()
    replica.apply_update(tx.doc.get_update())
    other = DocMap(replica.get("root", type=Map), lambda: None)
    # concurrent edits to different keys and elements of the same nested value
    view["profile"]["age"] = 31
    view["profile"]["tags"].append("from-first")
    other["profile"]["city"] = "Paris"
    other["profile"]["tags"].insert(0, "from-second")
    first_state, second_state = tx.doc.get_state(), replica.get_state()
    tx.doc.apply_update(replica.get_update(first_state))
    replica.apply_update(tx.doc.get_update(second_state))
    merged = view.to_py()
    assert merged == other.to_py()
    assert merged["profile"]["age"] == 31
    assert merged["profile"]["city"] == "Paris"
    assert merged["profile"]["name"] == "alice"
    assert sorted(merged["profile"]["tags"]) == ["a", "from-first", "from-second"]


def test_assigning_a_view_copies_it(tx: FakeTransaction) -> None:
    view = tx.view()
    view["a"] = {"x": 1, "l": [1]}
    view["b"] = view["a"]
    view["b"]["x"] = 2
    view["b"]["l"].append(2)
    view["c"] = view["a"]["l"]
    view["c"].append(3)
    assert view.to_py() == {"a": {"x": 1, "l": [1]}, "b": {"x": 2, "l": [1, 2]}, "c": [1, 3]}


def test_text_values(tx: FakeTransaction) -> None:
    view = tx.view()
    view["t"] = Text("hello")
    assert not isinstance(view["t"], str)  # a live collaborative text, not a snapshot
    assert str(view["t"]) == "hello"
    view["t"] += " world"
    assert str(view["t"]) == "hello world"
    assert str(tx.root["t"]) == "hello world"
    view["u"] = view["t"]  # an integrated text is copied, not moved
    view["u"] += "!"
    assert str(view["t"]) == "hello world"
    assert str(view["u"]) == "hello world!"
    view["l"] = [Text("in a list")]
    view["l"][0] += "!"
    assert str(view["l"][0]) == "in a list!"


def test_text_edits_merge_character_by_character(tx: FakeTransaction) -> None:
    view = tx.view()
    view["t"] = Text("middle")
    replica = Doc()
    replica.apply_update(tx.doc.get_update())
    other = DocMap(replica.get("root", type=Map), lambda: None)
    view["t"] += " end"  # concurrent edits of the same text on two replicas
    other["t"].insert(0, "start ")
    first_state, second_state = tx.doc.get_state(), replica.get_state()
    tx.doc.apply_update(replica.get_update(first_state))
    replica.apply_update(tx.doc.get_update(second_state))
    assert str(view["t"]) == str(other["t"]) == "start middle end"


def test_docarray_edits(tx: FakeTransaction) -> None:
    view = tx.view()
    view["l"] = [1, 2, 3]
    items = view["l"]
    assert isinstance(items, DocArray)
    items.append(4)
    items.insert(0, 0)
    items.extend([5, 6])
    items.extend(x for x in (7,))  # any iterable
    assert items.to_py() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert items[0] == 0
    assert type(items[1]) is int
    assert items[-1] == 7
    assert items[2:4] == [2, 3]
    assert len(items) == 8
    items[0] = "zero"
    items[-1] = "seven"
    del items[1]
    del items[-2]
    assert items.to_py() == ["zero", 2, 3, 4, 5, "seven"]
    assert items.pop() == "seven"
    assert items.pop(0) == "zero"
    items.remove(4)
    assert 3 in items
    assert items.index(5) == 2
    assert items.count(2) == 1
    items.reverse()
    assert items.to_py() == [5, 3, 2]
    assert normalize(tx.root.to_py()) == {"l": [5, 3, 2]}
    with pytest.raises(IndexError):
        items[3]
    with pytest.raises(IndexError):
        items[-4]
    with pytest.raises(IndexError):
        items[10] = 1
    with pytest.raises(IndexError):
        del items[10]


def test_docarray_slices(tx: FakeTransaction) -> None:
    view = tx.view()
    view["l"] = [0, 1, 2, 3, [4]]
    items = view["l"]
    assert items[1:3] == [1, 2]
    whole = items[:]
    assert whole[:4] == [0, 1, 2, 3]
    assert isinstance(whole[4], DocArray)  # nested values in a slice are live views
    whole[4].append(5)
    assert items.to_py() == [0, 1, 2, 3, [4, 5]]
    with pytest.raises(InvalidValueError, match="slice assignment"):
        items[0:2] = [9]
    del items[0:2]
    assert items.to_py() == [2, 3, [4, 5]]


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (0, ["x", "a", "b", "c"]),
        (1, ["a", "x", "b", "c"]),
        (3, ["a", "b", "c", "x"]),
        (100, ["a", "b", "c", "x"]),
        (-1, ["a", "b", "x", "c"]),
        (-3, ["x", "a", "b", "c"]),
        (-100, ["x", "a", "b", "c"]),
    ],
)
def test_docarray_insert_follows_list_semantics(
    tx: FakeTransaction, index: int, expected: list[str]
) -> None:
    view = tx.view()
    view["l"] = ["a", "b", "c"]
    view["l"].insert(index, "x")
    model = ["a", "b", "c"]
    model.insert(index, "x")
    assert model == expected
    assert view["l"].to_py() == expected


def test_docarray_refusals_name_the_index_and_change_nothing(tx: FakeTransaction) -> None:
    view = tx.view()
    view["l"] = [1, 2, 3]
    items = view["l"]
    with pytest.raises(InvalidValueError, match=r"\$\[3\]"):
        items.append(b"bytes")
    with pytest.raises(InvalidValueError, match=r"\$\[1\]"):
        items.insert(1, {"bad": float("inf")})
    with pytest.raises(InvalidValueError, match=r"\$\[0\]"):
        items[0] = {1, 2}
    with pytest.raises(InvalidValueError):
        items.extend([4, 5, object()])  # all or nothing
    assert items.to_py() == [1, 2, 3]


array_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 99)),
        st.tuples(st.just("insert"), st.integers(-8, 8), st.integers(0, 99)),
        st.tuples(st.just("extend"), st.lists(st.integers(0, 99), max_size=3)),
        st.tuples(st.just("delete"), st.integers(-8, 8)),
        st.tuples(st.just("set"), st.integers(-8, 8), st.integers(0, 99)),
        st.tuples(st.just("pop")),
    ),
    max_size=25,
)


@PROPERTY
@given(array_ops)
def test_property_docarray_behaves_like_a_list(ops: list[tuple[Any, ...]]) -> None:
    tx = FakeTransaction()
    view = tx.view()
    view["l"] = []
    items, model = view["l"], []
    for name, *args in ops:
        if name in ("delete", "set", "pop") and not model:
            continue
        if name in ("delete", "set"):
            args[0] %= len(model) if args[0] >= 0 else -len(model)  # keep it in range
        if name == "append":
            items.append(args[0])
            model.append(args[0])
        elif name == "insert":
            items.insert(args[0], args[1])
            model.insert(args[0], args[1])
        elif name == "extend":
            items.extend(args[0])
            model.extend(args[0])
        elif name == "delete":
            del items[args[0]]
            del model[args[0]]
        elif name == "set":
            items[args[0]] = args[1]
            model[args[0]] = args[1]
        else:
            assert items.pop() == model.pop()
        assert items.to_py() == model
    assert len(items) == len(model)
    assert list(items) == model
    assert normalize(tx.root.to_py()) == {"l": model}


def test_guard_stops_every_operation_after_the_transaction(tx: FakeTransaction) -> None:
    view = tx.view()
    view["m"] = {"a": 1}
    view["l"] = [1, 2]
    view["t"] = Text("text")
    inner_map, inner_list, inner_text = view["m"], view["l"], view["t"]
    before = normalize(tx.root.to_py())
    tx.ended = True
    attempts: list[Callable[[], object]] = [
        lambda: view["m"],
        lambda: view.__setitem__("x", 1),
        lambda: view.__delitem__("m"),
        lambda: iter(view),
        lambda: len(view),
        lambda: "m" in view,
        lambda: view.to_py(),
        lambda: view.get("m"),
        lambda: inner_map["a"],
        lambda: inner_map.__setitem__("b", 2),
        lambda: inner_list[0],
        lambda: inner_list[0:1],
        lambda: inner_list.__setitem__(0, 5),
        lambda: inner_list.__delitem__(0),
        lambda: len(inner_list),
        lambda: inner_list.append(3),
        lambda: inner_list.insert(0, 3),
        lambda: inner_list.extend([3]),
        lambda: inner_list.to_py(),
        lambda: inner_list.pop(),
        lambda: str(inner_text),
        lambda: inner_text.insert(0, "x"),
        lambda: inner_text.__iadd__("x"),
    ]
    for attempt in attempts:
        with pytest.raises(TransactionError):
            attempt()
    assert normalize(tx.root.to_py()) == before
    assert repr(view) == "DocMap(<transaction ended>)"
    assert repr(inner_list) == "DocArray(<transaction ended>)"


def test_from_crdt_wraps_live_values() -> None:
    doc = Doc()
    root = doc.get("root", type=Map)
    root["m"] = to_crdt({"a": 1})
    root["l"] = to_crdt([1])
    root["t"] = Text("x")
    guard = lambda: None  # noqa: E731
    assert isinstance(from_crdt(root["m"], guard), DocMap)
    assert isinstance(from_crdt(root["l"], guard), DocArray)
    text = from_crdt(root["t"], guard)
    assert not isinstance(text, (str, DocMap, DocArray))
    assert str(text) == "x"
    assert type(from_crdt(3.0, guard)) is int
    assert from_crdt(2.5, guard) == 2.5
