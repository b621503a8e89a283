"""The on-disk format: what a commit writes, and stores of an older schema."""

from __future__ import annotations

import gzip
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Text

import crdtdb
from crdtdb.records import UNCHECKED, WRITE
from crdtdb.storage import SCHEMA_VERSION, STORE_FILE

from .test_multiprocess import open_at_once

DATA = Path(__file__).resolve().parent / "data"


def wal_frames(store: Path) -> int:
    """Pages appended to the write-ahead log since it was last truncated."""
    size = (store / f"{STORE_FILE}-wal").stat().st_size
    page_size = 4096
    return max(0, size - 32) // (24 + page_size)


def truncate_wal(store: Path) -> None:
    with sqlite3.connect(store / STORE_FILE) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0, "a reader kept the checkpoint from finishing"
    assert wal_frames(store) == 0


def test_a_small_commit_to_a_large_document_writes_few_pages(tmp_path: Path) -> None:
    """A commit rewrites the document's bookkeeping row, never its snapshot.

    Schema 1 kept the load snapshot inside that row, so every commit to a
    document copied the whole document into the write-ahead log.
    """
    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu") as db:
        with db.transaction() as tx:
            tx.doc("papers/p")["body"] = Text("x" * 400_000)
        with sqlite3.connect(store / STORE_FILE) as conn:
            (snapshot,) = conn.execute("SELECT length(snapshot) FROM snapshots").fetchone()
        assert snapshot > 400_000  # the large document has its load snapshot
        truncate_wal(store)
        with db.transaction() as tx:
            tx.doc("papers/p")["body"].insert(0, "y")
        written = wal_frames(store)
    # log and its indexes, docs, meta, origins: about 8 pages, where the snapshot is 98
    assert 0 < written <= 16, f"a one-character commit wrote {written} pages"
    with crdtdb.open(store, cache_size=1) as db:
        value = db.get("papers/p")
        assert value is not None and str(value["body"]) == "y" + "x" * 400_000


def unpack_v1_store(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A store written by crdtdb at schema 1, and what that crdtdb read from it.

    Made by commit ac41424: a document with a load snapshot and log records
    after it, compacted history (bases), a deleted document and a text.
    """
    store = tmp_path / "v1"
    store.mkdir()
    (store / STORE_FILE).write_bytes(gzip.decompress((DATA / "store-v1.sqlite3.gz").read_bytes()))
    expected: dict[str, Any] = json.loads((DATA / "store-v1.json").read_text())
    return store, expected


def read_back(db: crdtdb.Database, expected: dict[str, Any], *, only_these: bool = True) -> None:
    for doc_id, value in expected["docs"].items():
        got = db.get(doc_id)
        if doc_id == "texts/t":
            assert got is not None and str(got["body"]) == value
        else:
            assert got == value, doc_id
    assert db.list("users") == expected["users"]
    for doc_id, digest in expected["digests"].items():
        assert db.digest(doc_id) == bytes.fromhex(digest), doc_id
    if only_these:  # no document written since
        assert db.merkle_root() == bytes.fromhex(expected["root"])
    assert str(db.compacted_hlc) == expected["compacted_hlc"]
    cut = db.as_of(expected["cut"])
    for doc_id, value in expected["as_of"].items():
        assert cut.get(doc_id) == value, doc_id


def test_a_schema_1_store_is_migrated_and_reads_as_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, expected = unpack_v1_store(tmp_path)
    with sqlite3.connect(store / STORE_FILE) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    with caplog.at_level(logging.WARNING, logger="crdtdb.storage"):
        crdtdb.open(store).close()
    said = [record.getMessage() for record in caplog.records]
    assert any("migrating the store from schema 1 to 6 (7 documents" in line for line in said)
    assert any("migrated in" in line for line in said)
    with crdtdb.open(store, cache_size=1) as db:
        assert db.info()["schema_version"] == SCHEMA_VERSION == 6
        assert db.info()["log_records"] == expected["log_records"]
        read_back(db, expected)
    with sqlite3.connect(store / STORE_FILE) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(docs)")}
        assert "snapshot" not in columns and "base" not in columns
        assert "snapshot_bytes" in columns
        sizes = dict(conn.execute("SELECT doc_id, length(snapshot) FROM snapshots"))
        recorded = dict(conn.execute("SELECT doc_id, snapshot_bytes FROM docs"))
        assert sizes and all(recorded[doc_id] == size for doc_id, size in sizes.items())
        assert conn.execute("SELECT count(*) FROM bases").fetchone()[0] > 0
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_migrated_store_keeps_working(tmp_path: Path) -> None:
    store, expected = unpack_v1_store(tmp_path)
    query = "SELECT snapshot_id FROM docs WHERE doc_id = 'notes/big'"
    with sqlite3.connect(store / STORE_FILE) as conn:
        (before,) = conn.execute(query).fetchone()
    with crdtdb.open(store, snapshot_min_bytes=500) as db:
        for i in range(300):  # enough to rewrite notes/big's snapshot in the new table
            db.update("notes/big", {"k0": 10_000 + i})
        db.put("users/f", {"name": "f"})
    with sqlite3.connect(store / STORE_FILE) as conn:
        (after,) = conn.execute(query).fetchone()
        assert after > before  # the snapshot was rewritten since the migration
    with crdtdb.open(store, cache_size=1) as db:
        assert db.get("notes/big") == {**expected["docs"]["notes/big"], "k0": 10_299}
        assert db.list("users") == [*expected["users"], "users/f"]
        assert db.as_of(expected["cut"]).get("users/a") == expected["as_of"]["users/a"]


@pytest.mark.integration
def test_processes_opening_a_schema_1_store_at_once_all_open_it(tmp_path: Path) -> None:
    """One migrates; the others wait for its write lock, then find the store migrated."""
    store, expected = unpack_v1_store(tmp_path)
    assert open_at_once(store, 4) == []
    with crdtdb.open(store, cache_size=1) as db:
        assert db.info()["schema_version"] == SCHEMA_VERSION
        assert sorted(db.list("docs")) == [f"docs/p{i}" for i in range(4)]
        read_back(db, expected, only_these=False)


def test_schema_2_stores_are_migrated_and_their_records_are_not_checked(tmp_path: Path) -> None:
    """Stores written by crdtdb at schema 2 (commit eedd47b), before records had a kind.

    ``us`` holds eu's records, an anti-entropy repair that carries eu's items
    as us's own record (us#1) and an edit of its own (us#2). Taken for edits,
    the repair would be refused as us writing under eu's client id; migrated,
    every old record is ``UNCHECKED`` and travels as such.
    """
    expected: dict[str, Any] = json.loads((DATA / "store-v2.json").read_text())
    for region in ("eu", "us"):
        store = tmp_path / region
        store.mkdir()
        packed = (DATA / f"store-v2-{region}.sqlite3.gz").read_bytes()
        (store / STORE_FILE).write_bytes(gzip.decompress(packed))
    with (
        crdtdb.open(tmp_path / "eu", clock=lambda: 1_800_000_001_000) as eu,
        crdtdb.open(tmp_path / "us", clock=lambda: 1_800_000_001_000) as us,
        crdtdb.open(tmp_path / "ap", region="ap", clock=lambda: 1_800_000_001_000) as ap,
    ):
        assert us.info()["schema_version"] == SCHEMA_VERSION == 6
        assert {doc_id: us.get(doc_id) for doc_id in expected["docs"]} == expected["docs"]
        old = list(us.changes())
        assert [(r.origin, r.seq, r.kind) for r in old] == [
            ("eu", 1, UNCHECKED),
            ("eu", 2, UNCHECKED),
            ("us", 1, UNCHECKED),
            ("us", 2, UNCHECKED),
        ]
        assert len(list(eu.changes())) == expected["eu_records"]
        ap.apply_remote_many(list(eu.changes()))
        ap.apply_remote_many(old)
        assert {doc_id: ap.get(doc_id) for doc_id in expected["docs"]} == expected["docs"]
        assert ap.client_ids() == {}  # nothing old binds a client id
        eu.update("notes/b", {"y": 4})  # an edit made after the migration is checked
        new = list(eu.changes(origin="eu"))[-1]
        assert (new.seq, new.kind) == (4, WRITE)
        assert ap.apply_remote(new)
        assert ap.client_ids() == {eu.info()["clients"]["this_process"]: "eu"}
        assert ap.get("notes/b") == {"y": 4}
