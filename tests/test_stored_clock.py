"""The stored clock since schema 6: a local commit writes its HLC only to its origin's row.

A local commit used to write ``meta.last_hlc`` as well, one statement and one
page more per commit. The clock a store keeps is now the larger of the two
(``crdtdb.storage.STORED_HLC``); these tests hold the HLC's promise across
what reads it: a reopen, another handle on the same directory, a schema 5
store, a snapshot taken over by a joining region.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import crdtdb
from crdtdb.hlc import Hlc
from crdtdb.storage import SCHEMA_VERSION, STORE_FILE
from crdtdb.sync.bootstrap import _take_over

NOW_MS = 1_800_000_000_000


def frozen() -> int:
    """A wall clock that never moves: every HLC past the first comes from the stored one."""
    return NOW_MS


def meta_clock(store: Path) -> int:
    with sqlite3.connect(store / STORE_FILE) as conn:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'last_hlc'").fetchone()[0])


def test_local_commits_leave_the_meta_alone_and_the_clock_survives_a_reopen(
    tmp_path: Path,
) -> None:
    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu", clock=frozen) as db:
        hlcs = [db.put(f"users/u{i}", {"n": i}) for i in range(50)]
    assert hlcs == sorted(set(hlcs))
    assert meta_clock(store) < int(hlcs[-1])  # the commits did not write it
    with crdtdb.open(store, clock=frozen) as db:
        assert db.hlc >= hlcs[-1]
        after = db.put("users/next", {"n": 50})
    assert after > hlcs[-1]
    assert after.wall_ms == NOW_MS  # the logical counter carried on from the stored clock


def test_a_second_handle_on_the_directory_issues_later_hlcs(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu", clock=frozen) as first:
        first.put("users/a", {"n": 0})
        with crdtdb.open(store, clock=frozen) as second:
            for i in range(20):
                mine = first.put("users/a", {"n": i})
                theirs = second.put("users/b", {"n": i})
                assert theirs > mine
                assert first.put("users/c", {"n": i}) > theirs


def test_remote_records_still_raise_the_stored_clock(tmp_path: Path) -> None:
    eu = crdtdb.open(tmp_path / "eu", region="eu", clock=lambda: NOW_MS + 400)
    us = crdtdb.open(tmp_path / "us", region="us", clock=frozen)
    try:
        newest = eu.put("users/a", {"n": 1})  # 400 ms ahead of us's wall clock: within the offset
        us.replica.apply_remote_many(list(eu.changes()))
        us.close()
        with crdtdb.open(tmp_path / "us", clock=frozen) as again:
            assert again.hlc >= newest
            assert again.put("users/b", {"n": 2}) > newest
    finally:
        eu.close()
        us.close()


def test_a_schema_5_store_opens_as_6_with_its_clock(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu", clock=frozen) as db:
        last = db.put("users/a", {"n": 1})
    with sqlite3.connect(store / STORE_FILE) as conn:  # as schema 5 kept it
        conn.execute("UPDATE meta SET value = ? WHERE key = 'last_hlc'", (int(last),))
        conn.execute("PRAGMA user_version = 5")
    with crdtdb.open(store, clock=frozen) as db:
        assert db.info()["schema_version"] == SCHEMA_VERSION == 6
        assert db.put("users/b", {"n": 2}) > last


def test_a_snapshot_taken_over_starts_its_clock_above_every_record(tmp_path: Path) -> None:
    with crdtdb.open(tmp_path / "eu", region="eu", clock=frozen) as db:
        newest = max(db.put(f"users/u{i}", {"n": i}) for i in range(30))
    part = tmp_path / "ap.part"
    shutil.copyfile(tmp_path / "eu" / STORE_FILE, part)
    _take_over(part, "ap")
    (tmp_path / "ap").mkdir()
    part.rename(tmp_path / "ap" / STORE_FILE)
    with crdtdb.open(tmp_path / "ap", clock=frozen) as ap:
        assert ap.info()["region"] == "ap"
        assert ap.hlc >= newest
        mine = ap.put("users/ap", {"n": 1})
    assert mine > newest
    assert Hlc(int(mine)).wall_ms == NOW_MS
