"""The query layer: the merged state in DuckDB, refreshed incrementally, read at any cut.

Results are checked against the documents written. The stores are real
SQLite files, the materialisation real Parquet files read by a real DuckDB;
the concurrency tests run the writer, a reader and a refresher as processes.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Text

import crdtdb
from crdtdb import Hlc, query
from crdtdb.errors import HistoryCompactedError, InvalidHlcError, StoreError
from crdtdb.query import materialize
from crdtdb.query.area import AREA, read_manifest

from .conftest import FakeClock, ship
from .harness.link import Link
from .harness.process import running

TIMEOUT = 120.0

PEOPLE: dict[str, dict[str, Any]] = {
    "users/alice": {"name": "Alice", "age": 31, "city": "Paris", "score": 1.5, "vip": True},
    "users/bob": {"name": "Bob", "age": 40, "city": "Paris", "score": 2.0, "vip": False},
    "users/carl": {"name": "Carl", "age": 25, "city": "Lima", "score": 3.25, "vip": False},
    "users/dora": {"name": "Dora", "age": 52, "city": "Tokyo", "score": 0.5, "vip": True},
}


@pytest.fixture
def people(db: crdtdb.Database) -> crdtdb.Database:
    with db.transaction() as tx:
        for doc_id, body in PEOPLE.items():
            tx.put(doc_id, body)
    return db


def rows(con: Any, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in con.execute(sql).fetchall()]


def column_types(con: Any, view: str) -> dict[str, str]:
    return {
        name: str(kind)
        for name, kind, *_ in con.execute(f"SELECT * FROM {view} LIMIT 0").description
    }


# ------------------------------------------------------------ the tables


def test_aggregates_through_docs_and_the_collection_view(people: crdtdb.Database) -> None:
    con = query.connect(people)
    expected: dict[str, list[int]] = {}
    for body in PEOPLE.values():
        expected.setdefault(str(body["city"]), []).append(int(body["age"]))
    got = rows(con, "SELECT city, count(*), avg(age) FROM users GROUP BY city ORDER BY city")
    assert got == [(c, len(a), statistics.mean(a)) for c, a in sorted(expected.items())]
    via_docs = rows(
        con,
        "SELECT body->>'city', count(*) FROM docs WHERE collection = 'users' GROUP BY 1 ORDER BY 1",
    )
    assert via_docs == [(c, len(a)) for c, a in sorted(expected.items())]
    assert rows(con, "SELECT id, key, origin FROM users WHERE vip ORDER BY id") == [
        ("users/alice", "alice", "eu"),
        ("users/dora", "dora", "eu"),
    ]
    hlcs = dict(rows(con, "SELECT id, hlc FROM docs"))
    assert all(hlc == int(people.as_of(hlc).hlc) for hlc in hlcs.values())
    stamp = rows(con, "SELECT epoch_ms(updated_at), hlc FROM docs LIMIT 1")[0]
    assert stamp[0] == Hlc(stamp[1]).wall_ms


def test_deleted_documents_are_flagged_in_docs_and_gone_from_views(
    people: crdtdb.Database,
) -> None:
    people.delete("users/bob")
    con = query.connect(people)
    assert rows(con, "SELECT deleted, body FROM docs WHERE id = 'users/bob'") == [(True, None)]
    assert "users/bob" not in {r[0] for r in rows(con, "SELECT id FROM users")}
    assert rows(con, "SELECT count(*) FROM users") == [(len(PEOPLE) - 1,)]


def test_concurrent_edits_from_two_regions_are_merged_in_the_body(
    pair: tuple[crdtdb.Database, crdtdb.Database],
) -> None:
    eu, us = pair
    eu.put("users/alice", {"name": "Alice"})
    ship(eu, us)
    eu.update("users/alice", {"city": "Paris"})
    us.update("users/alice", {"age": 31})
    ship(eu, us)
    ship(us, eu)
    for db in (eu, us):
        con = query.connect(db)
        (body,) = rows(con, "SELECT body FROM docs")[0]
        assert json.loads(body) == {"name": "Alice", "city": "Paris", "age": 31}
        assert rows(con, "SELECT name, city, age FROM users") == [("Alice", "Paris", 31)]
    bodies = {rows(query.connect(db), "SELECT body FROM docs")[0][0] for db in (eu, us)}
    assert len(bodies) == 1  # canonical JSON: the same bytes in both regions


def test_nested_values_and_texts_get_duckdb_types(db: crdtdb.Database) -> None:
    with db.transaction() as tx:
        tx.put(
            "notes/a",
            {
                "meta": {"lang": "en", "words": 3},
                "tags": ["x", "y"],
                "points": [1.5, 2],
                "title": Text("Hello"),
                "count": 2,
            },
        )
        tx.text("notes/a", "body").insert(0, "merged text")
    con = query.connect(db)
    types = column_types(con, "notes")
    assert types["meta"] == "STRUCT(lang VARCHAR, words BIGINT)"
    assert types["tags"] == "VARCHAR[]" and types["points"] == "DOUBLE[]"
    assert types["title"] == "VARCHAR" and types["body"] == "VARCHAR"
    assert types["count"] == "BIGINT"
    got = rows(con, "SELECT meta.lang, meta.words, tags, points, title, body, count FROM notes")
    assert got == [("en", 3, ["x", "y"], [1.5, 2.0], "Hello", "merged text", 2)]


def test_a_field_with_mixed_types_keeps_every_value(db: crdtdb.Database) -> None:
    values = {"a": 31, "b": "unknown", "c": 2.5, "d": True, "e": None}
    with db.transaction() as tx:
        for key, value in values.items():
            tx.put(f"users/{key}", {"age": value, "n": 1})
    con = query.connect(db)
    assert column_types(con, "users")["age"] == "JSON"
    got = dict(rows(con, "SELECT key, age FROM users"))
    assert {k: None if v is None else json.loads(v) for k, v in got.items()} == values


def test_new_fields_and_widened_types_after_the_first_build(people: crdtdb.Database) -> None:
    con = query.connect(people)
    assert "email" not in column_types(con, "users")
    people.update("users/alice", {"email": "alice@example.com", "age": 31.5})
    con.refresh()  # type: ignore[attr-defined]
    types = column_types(con, "users")
    assert types["email"] == "VARCHAR" and types["age"] == "DOUBLE"
    got = dict(rows(con, "SELECT key, age FROM users"))
    assert got == {k.split("/")[1]: float(v["age"]) for k, v in PEOPLE.items()} | {"alice": 31.5}
    assert rows(con, "SELECT key FROM users WHERE email IS NOT NULL") == [("alice",)]


@pytest.mark.integration
def test_a_key_seen_after_twenty_thousand_documents_is_a_column(db: crdtdb.Database) -> None:
    """DuckDB's read_json samples 20,480 rows and drops later keys; every document counts."""
    with db.transaction() as tx:
        for i in range(21_000):
            tx.put(f"items/{i:05d}", {"i": i})
    db.update("items/20999", {"late": "yes"})
    con = query.connect(db)
    assert rows(con, "SELECT key, late FROM items WHERE late IS NOT NULL") == [("20999", "yes")]


def test_names_that_are_not_sql_identifiers(db: crdtdb.Database) -> None:
    db.put("my-coll.v2/1", {"select": 1, "id": "inner", "Key": 2, "a b": 3})
    db.put("docs/1", {"x": 1})  # a collection named like a table
    con = query.connect(db)
    got = rows(con, 'SELECT "select", id_, "Key_", "a b", id FROM "my-coll.v2"')
    assert got == [(1, "inner", 2, 3, "my-coll.v2/1")]
    assert rows(con, 'SELECT x FROM collections."docs"') == [(1,)]
    assert rows(con, "SELECT count(*) FROM docs") == [(2,)]  # the table, not the collection


def test_fields_named_like_internal_columns_and_a_collection_of_deleted_documents(
    db: crdtdb.Database,
) -> None:
    before = db.put("orders/1", {"collection": "spring", "deleted": "no", "_seg": 1, "_body": 2})
    db.put("gone/1", {"x": 1})
    db.delete("gone/1")
    for con in (query.connect(db), query.connect(db, as_of=before)):
        got = rows(con, "SELECT id, collection_, deleted_, _seg_, _body_ FROM orders")
        assert got == [("orders/1", "spring", "no", 1, 2)]
    con = query.connect(db)
    assert rows(con, "SELECT id, deleted FROM docs WHERE collection = 'gone'") == [("gone/1", True)]
    assert rows(con, "SELECT count(*) FROM gone") == [(0,)]


def test_an_empty_store_has_empty_tables(db: crdtdb.Database) -> None:
    con = query.connect(db)
    assert rows(con, "SELECT count(*) FROM docs") == [(0,)]
    assert rows(con, "SELECT count(*) FROM changes") == [(0,)]
    assert rows(con, "SELECT region, records FROM regions") == [("eu", 0), ("_global", None)]


def test_changes_and_regions(pair: tuple[crdtdb.Database, crdtdb.Database]) -> None:
    eu, us = pair
    eu.put("users/a", {"x": 1})
    eu.put("users/a", {"x": 2})
    us.put("users/b", {"x": 3})
    ship(eu, us)
    con = query.connect(us)
    got = rows(con, "SELECT origin, count(*), sum(bytes) > 0 FROM changes GROUP BY 1 ORDER BY 1")
    assert got == [("eu", 2, True), ("us", 1, True)]
    assert rows(con, "SELECT id, seq, kind FROM changes WHERE origin = 'eu' ORDER BY seq") == [
        ("users/a", 1, "write"),
        ("users/a", 2, "write"),
    ]
    regions = {
        r[0]: r[1:] for r in rows(con, "SELECT region, records, contiguous_seq FROM regions")
    }
    assert regions["eu"] == (2, 2) and regions["us"] == (1, 1)
    frontier = rows(
        con,
        "SELECT frontier_hlc, freshness >= INTERVAL '0 seconds' FROM regions"
        " WHERE region = '_global'",
    )
    assert frontier == [(int(us.frontier()), True)]


def test_results_come_out_as_dataframes_and_arrow(people: crdtdb.Database) -> None:
    con = query.connect(people)
    assert len(con.sql("SELECT * FROM users").df()) == len(PEOPLE)
    assert con.sql("SELECT * FROM users").pl().height == len(PEOPLE)
    table = con.sql("SELECT age FROM users").arrow().read_all()
    assert sorted(table.column("age").to_pylist()) == sorted(b["age"] for b in PEOPLE.values())


# ---------------------------------------------------------- incremental


@pytest.mark.integration
def test_a_refresh_rewrites_exactly_the_changed_documents(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    n = 300
    with crdtdb.open(store, region="eu") as db, db.transaction() as tx:
        for i in range(n):
            tx.put(f"users/{i:03d}", {"n": i, "city": "Paris"})
    first = query.refresh(store)
    assert first.documents == n
    script = (
        "import sys, crdtdb\n"
        "with crdtdb.open(sys.argv[1]) as db:\n"
        "    for i in range(0, 30, 3): db.update(f'users/{i:03d}', {'n': -i, 'zone': 'x'})\n"
        "    db.delete('users/001'); db.delete('users/002')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(store)], check=True, timeout=60)
    second = query.refresh(store)
    assert second.documents == 12  # ten updated, two deleted: nothing else is read
    assert second.records == 12
    assert query.refresh(store).documents == 0  # nothing changed since
    con = query.connect(store, refresh=False)
    assert rows(con, "SELECT count(*), sum(n) FROM users") == [
        (n - 2, sum(range(n)) - 1 - 2 - 2 * sum(range(0, 30, 3)))
    ]
    assert rows(con, "SELECT count(*) FROM users WHERE zone = 'x'") == [(10,)]
    assert rows(con, "SELECT count(*) FROM docs WHERE deleted") == [(2,)]


@pytest.mark.parametrize("chunk", [None, 3], ids=["log-read-once", "ids-from-the-log-index"])
def test_refreshes_over_segments_and_collections_supersede_exactly_the_changed_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int | None
) -> None:
    """The rows a refresh supersedes are found from the changed ids while the bodies are
    read: each changed document's one earlier row, in whichever collection and segment it
    lies, and none for a document new to the materialisation. ``chunk``: a refresh of
    more log records than one batch takes the ids from the log's index instead, and
    reads the documents and the records in several batches."""
    if chunk is not None:
        monkeypatch.setattr(materialize, "CHUNK", chunk)
    n = 200
    expected: dict[str, dict[str, int]] = {}
    with crdtdb.open(tmp_path / "eu", region="eu") as db:
        with db.transaction() as tx:
            for i in range(n):
                for collection in ("users", "orders"):
                    tx.put(f"{collection}/{i}", {"n": i})
                    expected[f"{collection}/{i}"] = {"n": i}
        query.refresh(db)
        superseded = 0
        for step, (collection, picked) in enumerate(
            [("users", range(0, 30)), ("orders", range(10, 20)), ("users", range(20, 40))]
        ):
            with db.transaction() as tx:
                for i in picked:
                    tx.update(f"{collection}/{i}", {"n": 1000 * (step + 1) + i})
                    expected[f"{collection}/{i}"] = {"n": 1000 * (step + 1) + i}
                tx.put(f"notes/{step}", {"n": step})  # a collection the files never had
                expected[f"notes/{step}"] = {"n": step}
            superseded += len(picked)
            with db.snapshot() as snap:  # the changed ids, in the keys' order
                changed = snap.changed_after(read_manifest(db).position)  # type: ignore[union-attr]
                assert changed == sorted([f"{collection}/{i}" for i in picked] + [f"notes/{step}"])
            result = query.refresh(db)
            assert result.documents == len(picked) + 1 and not result.merged
            assert result.records == len(picked) + 1
            manifest = read_manifest(db)
            assert manifest is not None
            assert manifest.dead_rows == superseded
            assert manifest.live_rows == len(expected)
        con = query.connect(db, refresh=False)
        got = {row[0]: row[1] for row in rows(con, "SELECT id, (body->>'n')::INT FROM docs")}
        assert got == {doc_id: body["n"] for doc_id, body in expected.items()}
        for collection in ("users", "orders", "notes"):
            total = sum(b["n"] for d, b in expected.items() if d.startswith(f"{collection}/"))
            assert rows(con, f"SELECT sum(n) FROM {collection}") == [(total,)]


def test_segments_are_merged_and_old_files_collected(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu") as db:
        with db.transaction() as tx:
            for i in range(40):
                tx.put(f"users/{i}", {"n": i})
        query.refresh(db)
        held = query.connect(db, refresh=False)  # leases the first generation
        first_files = {f for f in read_manifest(db).files()}  # type: ignore[union-attr]
        for i in range(20):  # half the documents: a merge
            db.update(f"users/{i}", {"n": 100 + i})
        result = query.refresh(db)
        assert result.merged
        manifest = read_manifest(db)
        assert manifest is not None and manifest.dead == [] and manifest.dead_rows == 0
        assert len(manifest.collections["users"]["files"]) == 1
        area = store / AREA
        assert all((area / f).exists() for f in first_files)  # still leased
        assert rows(held, "SELECT sum(n) FROM users") == [(sum(range(40)),)]  # its old cut
        del held
        import gc

        gc.collect()
        query.refresh(db)  # nothing new, but it collects
        db.update("users/0", {"n": 0})
        query.refresh(db)
        assert not any((area / f).exists() for f in first_files - set(read_manifest(db).files()))  # type: ignore[union-attr]
        con = query.connect(db)
        assert rows(con, "SELECT sum(n) FROM users") == [
            (sum(range(20, 40)) + sum(100 + i for i in range(1, 20)),)
        ]


def test_a_refresh_after_compaction_finds_every_change(tmp_path: Path, clock: FakeClock) -> None:
    with crdtdb.open(tmp_path / "eu", region="eu", clock=clock) as db:
        db.put("users/a", {"n": 1})
        query.refresh(db)
        db.put("users/b", {"n": 2})
        db.update("users/a", {"n": 3})
        clock.advance(10_000)
        db.heartbeat()
        assert db.compact(retention_s=0) > 0  # the records since the last refresh are folded
        con = query.connect(db)
        assert rows(con, "SELECT key, n FROM users ORDER BY key") == [("a", 3), ("b", 2)]


@pytest.mark.integration
def test_a_first_build_reads_through_child_processes_in_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crdtdb.query import arrow_read

    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu") as db:
        with db.transaction() as tx:
            for i in range(300):
                tx.put(f"users/{i:03d}", {"n": i, "tags": ["x"] * (i % 3)})
        db.put("notes/big", {"text": "y" * 40_000})  # no body written: read through the snapshot
        db.delete("users/007")
    monkeypatch.setattr(arrow_read, "CHILD_READ_MIN", 0)
    read: list[str] = []
    original = arrow_read.ChildReaders.succeeded

    def spy(self: arrow_read.ChildReaders, name: str) -> Any:
        succeeded = original(self, name)
        if succeeded:
            read.append(name)
        return succeeded

    monkeypatch.setattr(arrow_read.ChildReaders, "succeeded", spy)
    result = query.refresh(store)
    assert sorted(read) == ["documents", "log"]  # both read by the children
    assert (result.documents, result.records) == (301, 302)
    con = query.connect(store, refresh=False)
    assert rows(con, "SELECT count(*), sum(n), sum(len(tags)) FROM users") == [
        (299, sum(range(300)) - 7, sum(i % 3 for i in range(300)) - 7 % 3)
    ]
    assert rows(con, "SELECT length(text) FROM notes") == [(40_000,)]
    assert rows(con, "SELECT count(*) FROM changes") == [(302,)]
    assert not list((store / "analytics").glob(".read-*"))  # its files are gone


@pytest.mark.integration
def test_a_child_reader_refuses_a_store_past_the_cut(tmp_path: Path) -> None:
    """A commit between the snapshot and the child's read: the child says so (exit 3)."""
    from crdtdb.query import arrow_read

    with crdtdb.open(tmp_path / "eu", region="eu") as db:
        db.put("users/a", {"n": 1})
        with db.snapshot() as snap:
            position, epoch = snap.position, snap.compaction_epoch
    script = str(arrow_read._SCRIPT)
    store = str(tmp_path / "eu" / "crdtdb.sqlite3")
    for cut, expected in (((position, epoch), 0), ((position - 1, epoch), 3)):
        out = tmp_path / f"out{cut[0]}.arrow"
        args = [sys.executable, script, store, "documents", "0", str(cut[0]), str(cut[1]), str(out)]
        assert subprocess.run(args, timeout=60, check=False).returncode == expected
        assert out.exists() == (expected == 0)


def test_large_documents_and_stores_without_bodies_are_read_from_their_crdt(
    db: crdtdb.Database,
) -> None:
    big = "x" * 40_000  # above BODY_MAX_BYTES: its commit does not write its JSON
    db.put("notes/big", {"text": big, "n": 1})
    with db.snapshot() as snap:
        assert snap._conn.execute("SELECT body FROM bodies").fetchone() == (None,)
    con = query.connect(db)
    assert rows(con, "SELECT length(text), n FROM notes") == [(40_000, 1)]


@pytest.mark.integration
def test_two_processes_refreshing_at_once(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu") as db, db.transaction() as tx:
        for i in range(2000):
            tx.put(f"users/{i}", {"n": i})
    with (
        running("query_worker.py", "refresh-once", str(store)) as one,
        running("query_worker.py", "refresh-once", str(store)) as two,
    ):
        results = []
        for child in (one, two):
            assert json.loads(child.line(TIMEOUT)) == {"ev": "ready"}
        for child in (one, two):
            results.append(json.loads(child.line(TIMEOUT)))
    assert sorted(r["documents"] for r in results) == [0, 2000]  # one built, one found it done
    con = query.connect(store, refresh=False)
    assert rows(con, "SELECT count(*), sum(n) FROM users") == [(2000, sum(range(2000)))]


@pytest.mark.integration
def test_readers_see_consistent_cuts_while_a_writer_and_a_refresher_run(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    crdtdb.open(store, region="eu").close()
    count = 2000
    with (
        running("query_worker.py", "writer", str(store), str(count)) as writer,
        running("query_worker.py", "refresher", str(store)) as refresher,
        running("query_worker.py", "reader", str(store)) as reader,
    ):
        for child in (writer, refresher, reader):
            assert json.loads(child.line(TIMEOUT)) == {"ev": "ready"}
        assert json.loads(writer.line(TIMEOUT)) == {"ev": "done", "n": count}
        seen: list[int] = []
        while not seen or seen[-1] < count:
            event = json.loads(reader.line(TIMEOUT))
            assert event["ev"] == "cut", event  # never a torn cut
            seen.append(event["n"])
        refresher.send("stop")
        reader.send("stop")
        assert len(seen) > 1  # the reader saw the writer's progress, not just its end
        generations = [json.loads(line)["generation"] for line in refresher.finish(TIMEOUT)]
        assert reader.finish(TIMEOUT) == []
        assert generations, refresher.describe()


@pytest.mark.integration
def test_a_refresh_holds_no_writer_back(tmp_path: Path) -> None:
    """A snapshot (what a refresh reads through) stays open while another process commits."""
    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu") as db:
        db.put("pairs/a", {"n": 0})
        with db.snapshot() as snap:
            before = snap.position
            with running("query_worker.py", "writer", str(store), "50") as writer:
                assert json.loads(writer.line(TIMEOUT)) == {"ev": "ready"}
                assert json.loads(writer.line(TIMEOUT)) == {"ev": "done", "n": 50}
            assert list(snap.log(before)) == []  # still its own cut
        assert db.get("pairs/a") == {"n": 50}


# ---------------------------------------------------------- time travel


def test_time_travel_gives_each_cut_exactly(db: crdtdb.Database) -> None:
    cuts = []
    for n in range(1, 4):
        db.put("users/a", {"n": n})
        db.put(f"users/new{n}", {"n": 10 * n})
        cuts.append(db.hlc)
    db.delete("users/new1")
    for i, cut in enumerate(cuts, start=1):
        con = query.connect(db, as_of=cut)
        expected = [("a", i)] + [(f"new{k}", 10 * k) for k in range(1, i + 1)]
        assert rows(con, "SELECT key, n FROM users ORDER BY key") == expected
        assert rows(con, "SELECT count(*) FROM changes") == [(2 * i,)]
        assert rows(con, "SELECT max(hlc) FROM docs") == [(int(cut),)]
    now = query.connect(db)
    assert rows(now, "SELECT key FROM users ORDER BY key") == [("a",), ("new2",), ("new3",)]
    by_text = query.connect(db, as_of=str(cuts[0]))
    assert rows(by_text, "SELECT n FROM users WHERE key = 'a'") == [(1,)]


def test_time_travel_reads_old_versions_from_the_files_when_it_can(
    db: crdtdb.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    with db.transaction() as tx:
        for i in range(20):
            tx.put(f"users/{i}", {"n": i})
    query.refresh(db)  # these versions are in the files now
    db.heartbeat()  # the clock moves on: the cut is after anything those files know of
    cut = db.hlc
    for i in range(3):  # few enough that the segments are not merged (see materialize)
        db.update(f"users/{i}", {"n": 100 + i})
    db.put("users/new", {"n": -1})  # did not exist at the cut
    query.refresh(db)
    db.update("users/10", {"n": 110})  # changed after the cut and not refreshed yet
    replayed: list[str] = []
    original = crdtdb.AsOf.version

    def spy(self: crdtdb.AsOf, doc_id: str) -> Any:
        replayed.append(doc_id)
        return original(self, doc_id)

    monkeypatch.setattr(crdtdb.AsOf, "version", spy)
    con = query.connect(db, as_of=cut, refresh=False)
    assert rows(con, "SELECT sum(n), count(*) FROM users") == [(sum(range(20)), 20)]
    assert replayed == []  # every old version came from a superseded row
    con = query.connect(db, as_of=cut)  # refreshes: users/10's old row is superseded too
    assert rows(con, "SELECT sum(n), count(*) FROM users") == [(sum(range(20)), 20)]
    assert replayed == []
    with db.transaction() as tx:  # two changes between refreshes: the middle one is in no file
        tx.put("users/0", {"n": 1000})
    middle = db.hlc
    db.update("users/0", {"n": 2000})
    query.refresh(db)
    con = query.connect(db, as_of=middle, refresh=False)
    assert rows(con, "SELECT n FROM users WHERE key = '0'") == [(1000,)]
    assert replayed == ["users/0"]


def test_an_old_row_written_before_the_cut_is_not_taken_for_the_state_at_it(
    db: crdtdb.Database,
) -> None:
    db.put("users/a", {"n": 1})
    for i in range(10):
        db.put(f"users/other{i}", {"n": 0})
    query.refresh(db)  # a row of n=1, from a generation that knows nothing after this
    db.update("users/a", {"n": 2})
    cut = db.hlc
    db.update("users/a", {"n": 3})
    query.refresh(db)
    con = query.connect(db, as_of=cut, refresh=False)
    assert rows(con, "SELECT n FROM users WHERE key = 'a'") == [(2,)]


def test_as_of_a_timestamp_and_bad_cuts(db: crdtdb.Database, tmp_path: Path) -> None:
    clock = FakeClock()
    with crdtdb.open(tmp_path / "ap", region="ap", clock=clock) as ap:
        ap.put("users/a", {"n": 1})
        clock.advance(60_000)
        ap.put("users/a", {"n": 2})
        minute_ago = Hlc.from_parts(clock.now_ms - 30_000).wall_ms / 1000
        from datetime import UTC, datetime

        stamp = datetime.fromtimestamp(minute_ago, UTC).isoformat()
        assert rows(query.connect(ap, as_of=stamp), "SELECT n FROM users") == [(1,)]
        with pytest.raises(InvalidHlcError, match="time zone"):
            query.connect(ap, as_of=stamp.replace("+00:00", ""))
        with pytest.raises(InvalidHlcError):
            query.connect(ap, as_of="yesterday")
        for far in (2**63, str(2**64 - 1), -1):  # 2**63 and above were silently clamped
            with pytest.raises(InvalidHlcError, match=r"2\*\*63-1|outside"):
                query.connect(ap, as_of=far)
        clock.advance(10_000)
        ap.heartbeat()
        ap.compact(retention_s=1)
        with pytest.raises(HistoryCompactedError):
            query.connect(ap, as_of=stamp)


def test_as_of_frontier_is_the_same_answer_in_every_region(tmp_path: Path) -> None:
    dbs = {r: crdtdb.open(tmp_path / r, region=r) for r in ("eu", "us")}
    for db in dbs.values():
        db.expect_regions(["eu", "us"])
    link = Link(dbs["eu"], dbs["us"])
    for i in range(30):
        name = ("eu", "us")[i % 2]
        dbs[name].update(f"users/{i % 7}", {name: i, "n": i})
        if i % 10 == 9:
            for _ in range(3):
                link.a.local_changed()
                link.b.local_changed()
                link.advance(1.0)
                link.settle()
    dbs["eu"].update("users/0", {"late": True})  # after the last exchange: above the frontier
    results = []
    cons = {}
    for name, db in dbs.items():
        con = cons[name] = query.connect(db, as_of="frontier")
        # eu's users view also has a column "late" (a field first seen above the frontier,
        # NULL at this cut): views have the collection's current columns, so name them
        results.append(
            rows(con, "SELECT id, key, hlc, updated_at, origin, n, eu, us FROM users ORDER BY id")
        )
        results.append(rows(con, "SELECT * FROM docs ORDER BY id"))
        results.append(rows(con, "SELECT * FROM changes ORDER BY hlc, origin, seq"))
    assert results[0] == results[3] and results[1] == results[4] and results[2] == results[5]
    assert results[0] and all("late" not in json.dumps(r, default=str) for r in results[1])
    assert rows(cons["eu"], "SELECT count(*) FROM users WHERE late IS NOT NULL") == [(0,)]
    for db in dbs.values():
        db.close()


def test_connect_refuses_a_missing_or_foreign_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        query.connect(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    with pytest.raises(StoreError):
        query.connect(tmp_path / "other")
