"""Tests for the live views of crdtdb.values: DocMap and DocArray (edits, merges, guards)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, Text

from crdtdb.errors import InvalidValueError, TransactionError
from crdtdb.values import DocArray, DocMap, from_crdt, normalize, to_crdt

PROPERTY = settings(max_examples=100, deadline=None)


class FakeTransaction:
    """Hands out views whose guard raises once the transaction has ended."""

    def __init__(self) -> None:
        self.ended = False
        self.doc: Doc[Any] = Doc()
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
    assert 1 not in view  # type: ignore[comparison-overlap]
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
    replica: Doc[Any] = Doc()
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
    replica: Doc[Any] = Doc()
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
    model: list[Any]
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
    doc: Doc[Any] = Doc()
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
