"""Shared fixtures: region stores in temporary directories, with a controllable clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import crdtdb


class FakeClock:
    """Wall-clock milliseconds that only move when a test says so."""

    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[crdtdb.Database]:
    with crdtdb.open(tmp_path / "eu", region="eu") as database:
        yield database


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[crdtdb.Database, crdtdb.Database]]:
    """Two regions, eu and us, in separate directories."""
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "us", region="us") as us,
    ):
        yield eu, us


def clock_past(db: crdtdb.Database) -> None:
    """Wait until the wall clock has left the millisecond of ``db``'s last HLC.

    ``compact(retention_s=0)`` folds the records below ``(now, 0)``: those of
    the current millisecond stay, and a fast machine commits many in one.
    """
    deadline = time.monotonic() + 5.0
    while db.options.clock() <= db.hlc.wall_ms:
        assert time.monotonic() < deadline, "the store's clock does not move (a frozen clock?)"
        time.sleep(0.001)


def ship(source: crdtdb.Database, target: crdtdb.Database) -> int:
    """Deliver every record of ``source`` to ``target``; return how many were new."""
    return sum(target.apply_remote(record) for record in source.changes())


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """A cluster CA in ``tmp_path/certs`` with certificates for eu, us and ap."""
    from crdtdb.sync.certs import init_ca, issue

    directory = tmp_path / "certs"
    init_ca(directory)
    for region in ("eu", "us", "ap"):
        issue(directory, region)
    return directory
