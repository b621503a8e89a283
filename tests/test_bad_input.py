"""Bad input to the Python API: always a CrdtdbError subclass that says what to do, never a
Python exception from deep inside, and never an echo of more than ~100 characters of it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import crdtdb
from crdtdb.errors import UsageError

HUGE = "x" * 10_000


def refused(call: Callable[[], Any], error: type[crdtdb.CrdtdbError] = UsageError) -> str:
    """The message of the error ``call`` raises, which must be an ``error``."""
    with pytest.raises(error) as caught:
        call()
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
