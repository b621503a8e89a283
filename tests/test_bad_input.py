"""Bad input to the Python API: always a CrdtdbError subclass that says what to do, never a
Python exception from deep inside, and never an echo of more than ~100 characters of it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Text

import crdtdb
from crdtdb.errors import InvalidHlcError, InvalidValueError, UsageError
from crdtdb.hlc import Hlc

HUGE = "x" * 10_000


def refused(
    call: Callable[..., Any], *args: Any, error: type[Exception] = UsageError, **kwargs: Any
) -> str:
    """The message of the error ``call(*args, **kwargs)`` raises, which must be an ``error``."""
    with pytest.raises(error) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def echoes_at_most_100(message: str) -> bool:
    return not re.search("x{110}", message)


def test_messages_quote_at_most_100_characters_of_the_input(
    db: crdtdb.Database, tmp_path: Path
) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: db.get("users/" + HUGE),
        lambda: db.put(HUGE, {}),
        lambda: db.list(HUGE),
        lambda: db.as_of(HUGE),
        lambda: list(db.changes(origin=HUGE)),
        lambda: db.put("users/a", {"a": {HUGE: {1: 2}}}),
        lambda: db.put("users/a", {HUGE: float("nan")}),
        lambda: crdtdb.open(tmp_path / "new", region=HUGE),
    ]
    for call in calls:
        message = refused(call)
        assert echoes_at_most_100(message) and "x" * 90 in message, message


# -- options, checked at open() before anything is created on disk ---------------------------

BAD_OPTIONS: list[dict[str, Any]] = [
    {"durability": "FULL"},  # once ran silently without fsync
    {"durability": "fast"},
    {"durability": None},
    {"durability": 3},
    {"cache_size": -1},  # once a KeyError at the first write
    {"cache_size": 0},
    {"cache_size": "5"},
    {"cache_size": True},
    {"history_retention_s": -1},
    {"history_retention_s": float("nan")},
    {"history_retention_s": float("inf")},
    {"history_retention_s": "7d"},
    {"max_clock_offset_ms": -1},
    {"max_clock_offset_ms": 1.5},
    {"max_clock_offset_ms": 2**70},
    {"snapshot_min_bytes": -5},
    {"wal_autocheckpoint": -1},
    {"wal_autocheckpoint": 2**40},
    {"clock": 5},
]


@pytest.mark.parametrize("options", BAD_OPTIONS, ids=repr)
def test_a_bad_option_is_refused_at_open_naming_what_is_allowed(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    [name] = options
    message = refused(lambda: crdtdb.open(tmp_path / "eu", region="eu", **options))
    assert message.startswith(f"option {name}=") and ": use " in message
    if name == "durability":
        assert "'normal' or 'full'" in message
    assert not (tmp_path / "eu").exists()
    with pytest.raises(UsageError):
        crdtdb.Options(**options)


def test_unknown_option_names_and_bad_arguments_are_refused_before_disk(tmp_path: Path) -> None:
    message = refused(lambda: crdtdb.open(tmp_path / "eu", region="eu", durabilty="full"))
    assert "unknown option 'durabilty'" in message
    assert "durability" in message and "history_retention_s" in message  # the valid names
    bad_options: Any = {"durability": "full"}
    refused(lambda: crdtdb.Database(tmp_path / "eu", "eu", bad_options))
    no_path: Any = None
    refused(lambda: crdtdb.open(no_path, region="eu"))
    assert not (tmp_path / "eu").exists()


def test_good_options_still_open(tmp_path: Path) -> None:
    options = crdtdb.Options(
        cache_size=1,
        durability="full",
        max_clock_offset_ms=0,
        history_retention_s=0,
        snapshot_min_bytes=0,
        wal_autocheckpoint=0,
        clock=lambda: 1_800_000_000_000,
    )
    with crdtdb.Database(tmp_path / "eu", "eu", options) as db:
        db.put("users/a", {"a": 1})
        assert db.get("users/a") == {"a": 1}
    with crdtdb.open(tmp_path / "eu", history_retention_s=1.5) as db:
        assert db.options.history_retention_s == 1.5


# -- the API's entry points -------------------------------------------------------------------


def test_cuts_beyond_the_largest_stored_hlc_are_refused(db: crdtdb.Database) -> None:
    """An HLC is 64 bits but SQLite stores at most 2**63-1: later cuts once overflowed, then
    were silently read as 2**63-1; a cut no store can reach is a mistake, refused in one line."""
    db.put("users/a", {"a": 1})
    assert db.as_of(2**63 - 1).get("users/a") == {"a": 1}
    assert db.as_of(2**63 - 1).list("users") == ["users/a"]
    for cut in (2**63, 2**64 - 1, str(2**63), Hlc(2**63)):
        message = refused(db.as_of, cut, error=InvalidHlcError)
        assert "2**63-1" in message and "\n" not in message, message
    for cut in (2**63, 2**64 - 1):
        assert list(db.changes(cut)) == []  # a floor: nothing is after it
    for cut in (2**64, -1, "-1", "garbage"):
        refused(db.as_of, cut, error=InvalidHlcError)


def test_limits_are_whole_numbers_and_never_negative(db: crdtdb.Database) -> None:
    db.put("users/a", {"a": 1})
    for bad in (-1, "x", 1.5, True):
        refused(db.list, "users", limit=bad)  # -1 once listed everything
        refused(db.changes, limit=bad)  # -1 once listed nothing
    assert "negative" in refused(lambda: db.list("users", limit=-1))
    assert db.list("users", limit=2**70) == ["users/a"] == db.list("users", limit=None)
    assert len(list(db.changes(limit=2**70))) == 1
    assert db.list("users", limit=0) == [] and list(db.changes(limit=0)) == []
    refused(lambda: db.list("users", after=5))  # type: ignore[arg-type]
    for since in (-1, "x", 2**70, 1.5):
        refused(db.changes, since)


def test_replication_surface_refuses_bad_arguments(db: crdtdb.Database) -> None:
    db.put("users/a", {"a": 1})
    assert len(db.records_from("eu", 0)) == 1 and db.records_from("eu", 2**70) == []
    for origin, after, limit in (("eu", "x", 10), ("eu", -1, 10), (5, 0, 10), ("eu", 0, -1)):
        refused(db.records_from, origin, after, limit)
    for node in (2**70, -1, "x", True):
        refused(db.merkle_node, node)
        refused(db.merkle_nodes, [0, node])
        refused(db.leaf_docs, node)
    refused(lambda: db.merkle_nodes("x"))  # type: ignore[arg-type]
    refused(lambda: db.leaf_docs(65536))
    assert db.merkle_node(0) == db.merkle_root()
    with pytest.raises(crdtdb.errors.InvalidRecordError):
        db.apply_remote("junk")  # type: ignore[arg-type]  # once an AttributeError
    with pytest.raises(crdtdb.errors.InvalidRecordError):
        db.apply_remote_many("junk")  # type: ignore[arg-type]
    with pytest.raises(crdtdb.errors.InvalidUpdateError):
        db.apply_diff("users/a", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(crdtdb.errors.InvalidUpdateError):
        db.diff("users/a", "not bytes")  # type: ignore[arg-type]
    assert db.get("users/a") == {"a": 1} and len(list(db.changes())) == 1


def test_subscribe_takes_a_function(db: crdtdb.Database) -> None:
    not_a_function: Any = 5
    refused(lambda: db.subscribe(not_a_function))  # once accepted, then failed every commit
    seen: list[str] = []
    with db.subscribe(lambda record: seen.append(record.doc_id)):
        db.put("users/a", {})
    assert seen == ["users/a"]


def test_compact_checks_its_retention_and_progress(db: crdtdb.Database) -> None:
    db.put("users/a", {"a": 1})
    for retention in (float("nan"), float("inf"), -1, "x"):
        message = refused(db.compact, retention_s=retention)
        assert "retention_s" in message
    not_a_function: Any = 5
    refused(lambda: db.compact(progress=not_a_function))
    assert db.compact(retention_s=0) == 0


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value} if levels % 2 else [value]
    return value


def test_values_nest_at_most_100_levels(db: crdtdb.Database) -> None:
    for levels in (100, 99):
        db.put("users/a", {"v": nested(levels)})
        assert db.get("users/a") == {"v": nested(levels)}
    for levels in (101, 102, 5000):  # 5000 once raised RecursionError
        message = refused(db.put, "users/b", {"v": nested(levels)}, error=InvalidValueError)
        assert "nests more than 100 levels" in message
    loop: dict[str, Any] = {}
    loop["self"] = loop
    refused(db.put, "users/b", loop, error=InvalidValueError)
    with db.transaction() as tx:
        refused(lambda: tx.put("users/b", {"v": nested(500)}))
        refused(lambda: tx.doc("users/a").__setitem__("w", nested(500)))
    assert db.get("users/b") is None


# -- live views inside a transaction: Python's sequence rules, never a Rust panic -----------


def test_live_views_check_positions_and_types(db: crdtdb.Database) -> None:
    db.put("users/a", {"arr": [1, 2, 3], "text": Text("hello"), "map": {"k": 1}})
    with db.transaction() as tx:
        doc = tx.doc("users/a")
        text, arr, mapping = doc["text"], doc["arr"], doc["map"]
        for index in (5, 100, -6, 2**70):  # 100 once panicked in yrs (a BaseException)
            with pytest.raises(IndexError):
                del text[index]
            with pytest.raises(IndexError):
                text[index] = "x"
        for index in (3, -4, 2**70, -(2**70)):
            with pytest.raises(IndexError):
                arr[index]
            with pytest.raises(IndexError):
                del arr[index]
            with pytest.raises(IndexError):
                arr[index] = 0
        for bad in ("x", 1.5, True, None):
            refused(text.insert, bad, "y", error=InvalidValueError)
            refused(text.__delitem__, bad, error=InvalidValueError)
            refused(arr.__getitem__, bad, error=InvalidValueError)
            refused(arr.__delitem__, bad, error=InvalidValueError)
            refused(arr.insert, bad, 0, error=InvalidValueError)
        refused(text.insert, 0, 5, error=InvalidValueError)
        refused(text.__iadd__, 5, error=InvalidValueError)
        refused(text.__setitem__, 0, "two", error=InvalidValueError)
        refused(text.__delitem__, slice(0, 3, 2), error=InvalidValueError)
        refused(arr.__getitem__, slice(None, None, 0), error=InvalidValueError)
        assert mapping.get(5) is None  # once a RuntimeError from pycrdt
        with pytest.raises(KeyError):
            del mapping[5]
        # In range, the usual Python meanings, slices clamped as lists clamp them.
        assert arr[0 : 2**70] == [1, 2, 3] and arr[::-1] == [3, 2, 1] and arr[::2] == [1, 3]
        del text[0:100]
        text.insert(2**70, "hi")
        text.insert(-(2**70), ">")
        del arr[::2]
        arr.insert(2**70, 4)
    assert db.get("users/a") == {"arr": [2, 4], "text": ">hi", "map": {"k": 1}}


def test_upkeep_and_frontier_calls_check_their_arguments(db: crdtdb.Database) -> None:
    for limit in ("x", -1, None):
        refused(db.refresh_digests, limit)
        refused(db.stale_digests, limit)
    refused(db.expect_regions, "us")  # once taken as the regions "u" and "s"
    for entries, clocks in (
        ("junk", []),
        ([("us", "x", 1)], []),
        ([("us", 1, 2**63)], []),  # once an OverflowError
        ([("us", 1)], []),
        ([], [("us", -1)]),
        ([], [(5, 1)]),
    ):
        refused(db.note_frontier, entries, clocks, error=crdtdb.CrdtdbError)
    db.note_frontier([("us", 0, 5)], [("us", 5)])
    for interval in (0, -1, float("nan"), "x"):
        refused(db.watch, poll_interval=interval)
