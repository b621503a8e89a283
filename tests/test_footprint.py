"""A store that stays small: schema 5's slimmer log indexes, and compaction's space returned."""

from __future__ import annotations

import gzip
import json
import logging
import sqlite3
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Text

import crdtdb
from crdtdb.storage import SCHEMA_VERSION, STORE_FILE, release_free_pages

from .conftest import clock_past
from .test_storage import read_back

DATA = Path(__file__).resolve().parent / "data"
NEW_INDEXES = {
    "log_doc": "CREATE INDEX log_doc ON log (doc_id)",
    "log_hlc": "CREATE INDEX log_hlc ON log (hlc)",
}


def pages(store: Path) -> tuple[int, int]:
    """(page_count, freelist_count) of the store, as SQLite counts them."""
    with sqlite3.connect(store / STORE_FILE) as conn:
        (count,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    return int(count), int(free)


def log_indexes(store: Path) -> dict[str, str]:
    with sqlite3.connect(store / STORE_FILE) as conn:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'log'"
            " AND sql IS NOT NULL"
        )
        return dict(rows.fetchall())


def type_keystrokes(db: crdtdb.Database, doc_id: str, count: int) -> None:
    with db.transaction() as tx:
        tx.doc(doc_id)["body"] = Text()
    for i in range(count):
        with db.transaction() as tx:
            tx.doc(doc_id)["body"].insert(i, "abcdefghij"[i % 10])


def unpack_v4(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """eu's store written at schema 4 (commit dd4d9ba), and what that crdtdb read from it.

    Users rewritten 60 times, a text typed a keystroke a transaction, a deleted
    document, records of us (one after the compaction), history compacted up to
    an HLC, then more writes after a cut: the reads below cover every log index.
    """
    store = tmp_path / "eu"
    store.mkdir()
    packed = (DATA / "store-v4-eu.sqlite3.gz").read_bytes()
    (store / STORE_FILE).write_bytes(gzip.decompress(packed))
    expected: dict[str, Any] = json.loads((DATA / "store-v4.json").read_text())
    with sqlite3.connect(store / STORE_FILE) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (4,)
    return store, expected


def test_a_schema_4_store_is_migrated_and_reads_as_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, expected = unpack_v4(tmp_path)
    assert log_indexes(store) != NEW_INDEXES  # the old, wider ones
    with caplog.at_level(logging.WARNING, logger="crdtdb.storage"):
        crdtdb.open(store).close()
    said = [record.getMessage() for record in caplog.records]
    assert any(
        "migrating the store from schema 4 to 6 (7 documents, 117 log records" in line
        for line in said
    ), said
    assert any("migrated in" in line for line in said)
    assert log_indexes(store) == NEW_INDEXES
    with crdtdb.open(store, cache_size=1) as db:
        assert db.info()["schema_version"] == SCHEMA_VERSION == 6
        assert db.info()["log_records"] == expected["log_records"]
        read_back(db, expected)
        as_of = db.as_of(expected["cut"]).get("texts/t")
        assert as_of is not None and str(as_of["body"]) == expected["as_of_text"]
        floor = db.compacted_hlc
        got = [[r.origin, r.seq, r.doc_id] for r in db.changes(since=floor)]
        assert got == expected["changes"]
        since_cut = [[r.origin, r.seq] for r in db.changes(since=expected["cut"])]
        assert since_cut == expected["changes_since_cut"]
        assert [r.seq for r in db.records_from("us", 0)] == expected["us_records"]
        db.update("users/b", {"n": 1000})  # and it takes writes
        assert db.get("users/b") == {"name": "b", "n": 1000}
    with sqlite3.connect(store / STORE_FILE) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        # An old store keeps auto_vacuum off: turning it on would rewrite the file.
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    assert release_free_pages(store) == 0


def test_a_new_store_has_the_slim_indexes_and_incremental_vacuum(tmp_path: Path) -> None:
    with crdtdb.open(tmp_path / "eu", region="eu") as db:
        db.put("users/a", {"n": 1})
    assert log_indexes(tmp_path / "eu") == NEW_INDEXES
    with sqlite3.connect(tmp_path / "eu" / STORE_FILE) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL


def test_compaction_gives_the_freed_pages_back(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu") as db:
        type_keystrokes(db, "papers/p", 3000)
        before, free_before = pages(store)
        assert free_before <= 2
        clock_past(db)
        assert db.compact(retention_s=0) == 3000
        after, free_after = pages(store)
        assert free_after == 0
        # The log held 3,001 records; now one, and a snapshot and a base of a
        # 3,000-character text: far fewer pages.
        assert after < before / 2, (before, after)
        value = db.get("papers/p")
        assert value is not None and len(str(value["body"])) == 3000
    with sqlite3.connect(store / STORE_FILE) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    assert (store / STORE_FILE).stat().st_size == after * page_size
    with crdtdb.open(store, cache_size=1) as db:  # and reads back the same
        value = db.get("papers/p")
        assert value is not None and str(value["body"]) == "abcdefghij" * 300


def test_free_pages_are_released_in_steps_of_the_size_asked(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu") as db:
        type_keystrokes(db, "papers/p", 1000)
    with sqlite3.connect(store / STORE_FILE) as conn:
        conn.execute("DELETE FROM log WHERE id < (SELECT max(id) FROM log)")
    count, free = pages(store)
    assert free > 10
    assert release_free_pages(store, step_pages=3) == free
    assert pages(store) == (count - free, 0)
    assert release_free_pages(store) == 0  # nothing left: no step


def test_changes_in_hlc_order_across_pages_of_one_hlc(tmp_path: Path) -> None:
    """All records of a transaction share its HLC; log_hlc no longer orders them by
    seq, so the feed sorts each HLC's records: across its pages of 1,000 too."""
    with crdtdb.open(tmp_path / "eu", region="eu") as db:
        db.put("a/first", {"n": 0})
        with db.transaction() as tx:
            for i in range(2500):
                tx.doc(f"b/{i:05d}")["n"] = i
        db.put("c/last", {"n": 0})
        records = list(db.changes())
        assert [r.seq for r in records] == list(range(1, 2503))
        assert len({r.hlc for r in records[1:-1]}) == 1
        assert [r.seq for r in db.changes(since=records[0].hlc, limit=1700)] == list(range(2, 1702))


CLOCK_MS = 1_800_000_000_000


@settings(max_examples=25, deadline=None)
@given(
    writes=st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3)), min_size=1, max_size=25),
    order=st.randoms(use_true_random=False),
    page=st.integers(1, 7),
)
def test_changes_come_in_hlc_origin_seq_order_whatever_the_arrival_order(
    writes: list[tuple[str, int]], order: Any, page: int
) -> None:
    """Three origins on one stopped clock issue colliding HLCs; their records arrive
    in any order; the feed still gives them by (hlc, origin, seq), and its first
    ``limit`` records are the first of that order."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with ExitStack() as stack:
            regions = {
                name: stack.enter_context(
                    crdtdb.open(root / name, region=name, clock=lambda: CLOCK_MS)
                )
                for name in "abc"
            }
            for name, doc in writes:
                regions[name].update(f"notes/n{doc}", {name: doc})
            records = [r for db in regions.values() for r in db.changes()]
            order.shuffle(records)
            target = stack.enter_context(
                crdtdb.open(root / "t", region="t", clock=lambda: CLOCK_MS)
            )
            target.apply_remote_many(records)
            key = [(int(r.hlc), r.origin, r.seq) for r in target.changes()]
            assert key == sorted((int(r.hlc), r.origin, r.seq) for r in records)
            first = [(int(r.hlc), r.origin, r.seq) for r in target.changes(limit=page)]
            assert first == key[:page]
