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
