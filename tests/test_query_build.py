"""How the query layer builds and refreshes its files: a first build streamed from the
child reader, collection by collection, and refresh work at a lower priority.

Results are checked against the documents written, through real SQLite
files, real child processes, real Parquet files and a real DuckDB.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

import crdtdb
from crdtdb import query
from crdtdb.query import arrow_read, files, materialize, priority, stream_build
from crdtdb.query.area import AREA, read_manifest

BIG = "y" * 40_000
"""Above the size whose JSON a commit writes: read through the snapshot."""


def rows(con: Any, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in con.execute(sql).fetchall()]


def nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def many_collections(store: Path) -> None:
    """Collections whose names sort around each other's (``a`` < ``a-b`` < ``a.b`` < ``a/``
    < ``a_b``), deleted documents, and documents too large for their commits' JSON."""
    with crdtdb.open(store, region="eu") as db:
        with db.transaction() as tx:
            for i in range(200):
                tx.put(f"a/{i:03d}", {"n": i})
                tx.put(f"a.b/{i:03d}", {"s": f"s{i}"})
                tx.put(f"a-b/{i:03d}", {"f": i / 2, "tags": ["t"] * (i % 3)})
                tx.put(f"a_b/{i:03d}", {"m": {"k": i}})
                tx.put(f"z/{i:03d}", {"v": i if i % 2 else str(i)})  # a field of two types
        db.put("a/big", {"n": 1000, "text": BIG})  # widens a's types: a is written again
        db.put("a.b/big", {"s": BIG})  # the same shape: a.b's streamed file stays
        db.delete("a-b/007")
        db.delete("z/000")


def expect_many(con: Any) -> None:
    assert rows(con, "SELECT count(*), sum(n), max(length(text)) FROM a") == [
        (201, sum(range(200)) + 1000, len(BIG))
    ]
    assert rows(con, 'SELECT count(*), max(length(s)) FROM "a.b"') == [(201, len(BIG))]
    assert rows(con, 'SELECT count(*), sum(f), sum(len(tags)) FROM "a-b"') == [
        (199, sum(i / 2 for i in range(200)) - 3.5, sum(i % 3 for i in range(200)) - 7 % 3)
    ]
    assert rows(con, "SELECT count(*), sum(m.k) FROM a_b") == [(200, sum(range(200)))]
    assert rows(con, "SELECT count(*), count(DISTINCT v) FROM z") == [(199, 199)]
    assert rows(con, "SELECT count(*), count(*) FILTER (deleted) FROM docs") == [(1002, 2)]


@pytest.mark.integration
def test_a_first_build_writes_each_collection_as_the_child_streams_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "eu"
    many_collections(store)
    monkeypatch.setattr(arrow_read, "CHILD_READ_MIN", 0)
    streamed: dict[str, Any] = {}
    original = stream_build.stream_collections

    def spy(*args: Any) -> Any:
        table, written = original(*args)
        streamed.update(written)
        return table, written

    monkeypatch.setattr("crdtdb.query.materialize.stream_collections", spy)
    result = query.refresh(store)
    assert (result.documents, result.records) == (1002, 1004)
    assert sorted(streamed) == ["a", "a-b", "a.b", "a_b", "z"]  # every collection, one pass
    con = query.connect(store, refresh=False)
    expect_many(con)
    manifest = read_manifest_of(store)
    files = {name: [f["path"] for f in c["files"]] for name, c in manifest.collections.items()}
    assert streamed["a"].path not in files["a"]  # written again with the big one's field
    assert files["a.b"][0] == streamed["a.b"].path and len(files["a.b"]) == 2  # + the big one
    for name in ("a-b", "a_b", "z"):
        assert files[name] == [streamed[name].path]
    on_disk = {str(p.relative_to(store / AREA)) for p in (store / AREA).rglob("*.parquet")}
    assert on_disk == set(manifest.files())  # the discarded file is gone


CHILD_WITH_SMALL_BATCHES = """
import sys
sys.path.insert(0, sys.argv[1])
import _arrow_child
_arrow_child.BATCH_ROWS = 50
sys.exit(_arrow_child.main(sys.argv[2:]))
"""
"""The child reader, run as it is but for 50 rows a batch."""


@pytest.mark.integration
def test_the_child_reads_documents_without_bodies_rows_through_the_join_from_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child scans ``docs`` and ``bodies`` side by side while they line up row for row;
    two documents without a ``bodies`` row (as a store migrated from schema 2 has them)
    in its third batch: from there on it reads the join, and the stream is the join's."""
    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu") as db:
        with db.transaction() as tx:
            for i in range(300):
                tx.put(f"users/{i:03d}", {"n": i})
        db.delete("users/010")
    sqlite_file = store / "crdtdb.sqlite3"
    with contextlib.closing(sqlite3.connect(sqlite_file)) as raw, raw:
        raw.execute("DELETE FROM bodies WHERE doc_id IN ('users/120', 'users/121')")
        joined = raw.execute(JOINED_ROWS).fetchall()
        position = raw.execute("SELECT max(id) FROM log").fetchone()[0]
    out = tmp_path / "documents.arrow"
    args = [str(sqlite_file), "documents", "0", str(position), "0", str(out)]
    script = [sys.executable, "-c", CHILD_WITH_SMALL_BATCHES, str(arrow_read._SCRIPT.parent)]
    assert subprocess.run([*script, *args], timeout=60, check=False).returncode == 0
    with pa.memory_map(str(out)) as source:
        batches = list(pa.ipc.open_stream(source))
    streamed = [tuple(row.values()) for b in batches for row in b.to_pylist()]
    assert len(joined) == 300 and streamed == joined
    assert [b.num_rows for b in batches] == [50, 50, 50, 50, 50, 50]
    assert joined[120][4:] == (None, None, None) and joined[122][4] == "eu"
    monkeypatch.setattr(arrow_read, "CHILD_READ_MIN", 0)  # and a build over it is right
    assert query.refresh(store).documents == 300
    con = query.connect(store, refresh=False)
    assert rows(con, "SELECT count(*), sum(n) FROM users") == [(299, sum(range(300)) - 10)]


JOINED_ROWS = (
    "SELECT d.doc_id, d.collection, d.live, d.hlc, b.origin, b.body, b.shape"
    " FROM docs d LEFT JOIN bodies b ON b.doc_id = d.doc_id ORDER BY d.doc_id"
)


@pytest.mark.integration
def test_a_streamed_build_whose_child_fails_is_read_through_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "eu"
    many_collections(store)
    monkeypatch.setattr(arrow_read, "CHILD_READ_MIN", 0)
    original = arrow_read.ChildReaders.succeeded

    def documents_fail(self: arrow_read.ChildReaders, name: str) -> bool:
        return original(self, name) and name != "documents"

    monkeypatch.setattr(arrow_read.ChildReaders, "succeeded", documents_fail)
    result = query.refresh(store)
    assert result.documents == 1002
    expect_many(query.connect(store, refresh=False))
    manifest = read_manifest_of(store)
    on_disk = {str(p.relative_to(store / AREA)) for p in (store / AREA).rglob("*.parquet")}
    assert on_disk == set(manifest.files())  # what was streamed is deleted


@pytest.mark.integration
def test_a_streamed_build_that_fails_midway_is_read_through_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB fails on the second collection's file: the child is stopped (not waited for
    on its full pipe), the files written so far are deleted, the snapshot is read."""
    store = tmp_path / "eu"
    many_collections(store)
    monkeypatch.setattr(arrow_read, "CHILD_READ_MIN", 0)
    monkeypatch.setattr(arrow_read, "TIMEOUT_S", 60.0)  # a wait on the child would fail it
    copies: list[Path] = []
    original = files.copy_to

    def second_fails(con: Any, select: str, path: Path) -> None:
        original(con, select, path)
        copies.append(path)
        if len(copies) == 2:
            raise duckdb.IOException("no space left on device")

    monkeypatch.setattr("crdtdb.query.stream_build.copy_to", second_fails)
    assert query.refresh(store).documents == 1002
    assert len(copies) == 2 and not any(path.exists() for path in copies)
    expect_many(query.connect(store, refresh=False))
    on_disk = {str(p.relative_to(store / AREA)) for p in (store / AREA).rglob("*.parquet")}
    assert on_disk == set(read_manifest_of(store).files())


def read_manifest_of(store: Path) -> Any:
    with crdtdb.open(store) as db:
        manifest = read_manifest(db)
    assert manifest is not None
    return manifest


def test_a_refresh_yields_to_a_writer_at_work_and_leaves_the_callers_priority(
    db: crdtdb.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.put("users/a", {"n": 1})
    query.refresh(db)  # the first build
    seen: list[tuple[int, int]] = []
    stage, write = materialize._stage, materialize._write_segment
    meanwhile: list[str] = []

    def staging(*args: Any) -> Any:
        if meanwhile:  # a writer commits while the refresh reads
            db.put(meanwhile.pop(), {"n": 9})
        seen.append((nice(), -1))
        return stage(*args)

    def writing(*args: Any) -> Any:
        seen[-1] = (seen[-1][0], nice())
        return write(*args)

    monkeypatch.setattr(materialize, "_stage", staging)
    monkeypatch.setattr(materialize, "_write_segment", writing)
    before = nice()
    db.put("users/b", {"n": 2})
    assert query.refresh(db).documents == 1  # nobody writing: all of it at full priority
    db.put("users/c", {"n": 3})
    meanwhile.append("users/d")
    assert query.refresh(db).documents == 1  # d came after the snapshot
    assert nice() == before  # the calling thread's priority is untouched
    lowered = max(before, priority.REFRESH_NICE) if sys.platform.startswith("linux") else before
    assert seen == [(before, before), (before, lowered)]  # the snapshot's part never lowered
    con = query.connect(db)
    assert rows(con, "SELECT key, n FROM users ORDER BY key") == [
        ("a", 1),
        ("b", 2),
        ("c", 3),
        ("d", 9),
    ]


def test_yielding_hands_back_the_result_or_the_exception_and_background_is_its_own() -> None:
    before = nice()
    assert priority.yielding(lambda a, b: a + b, 2, 3) == 5

    def fails() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        priority.yielding(fails)
    assert not priority.background()  # outside a yielding thread: never this one
    assert nice() == before
    lowered = priority.yielding(lambda: (priority.background(), nice()))
    if sys.platform.startswith("linux"):
        assert lowered == (True, max(before, priority.REFRESH_NICE))
    assert nice() == before
