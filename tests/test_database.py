"""The embedded store's public API: documents, transactions, deletes, history, errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from pycrdt import Text

import crdtdb
from crdtdb import Hlc, UpdateRecord, errors
from crdtdb.storage import STORE_FILE

from .conftest import FakeClock, ship


def test_put_get_round_trips_json_values(db: crdtdb.Database) -> None:
    value = {
        "name": "Alice",
        "tags": ["a", "b"],
        "age": 31,
        "score": 2.5,
        "ok": True,
        "none": None,
        "nested": {"deep": [1, {"x": -7}]},
    }
    hlc = db.put("users/alice", value)
    assert isinstance(hlc, Hlc)
    assert db.get("users/alice") == value
    assert db.get("users/bob") is None


def test_put_replaces_and_update_merges(db: crdtdb.Database) -> None:
    db.put("users/alice", {"a": 1, "b": 2})
    db.put("users/alice", {"b": 3, "c": 4})
    assert db.get("users/alice") == {"b": 3, "c": 4}
    db.update("users/alice", {"d": 5})
    assert db.get("users/alice") == {"b": 3, "c": 4, "d": 5}


def test_put_of_unchanged_value_writes_nothing(db: crdtdb.Database) -> None:
    first = db.put("users/alice", {"a": 1})
    again = db.put("users/alice", {"a": 1})
    assert again == first
    assert len(list(db.changes())) == 1


def test_transaction_edits_are_crdt_edits_with_one_hlc(db: crdtdb.Database) -> None:
    db.put("users/alice", {"name": "Alice", "tags": ["a"]})
    with db.transaction() as tx:
        doc = tx.doc("users/alice")
        doc["age"] = 31
        doc["tags"].append("b")
        del doc["name"]
        tx.doc("orders/1")["total"] = 12.5
    assert db.get("users/alice") == {"tags": ["a", "b"], "age": 31}
    assert db.get("orders/1") == {"total": 12.5}
    records = [r for r in db.changes() if r.hlc == tx.hlc]
    assert sorted(r.doc_id for r in records) == ["orders/1", "users/alice"]
    assert [r.seq for r in sorted(records, key=lambda r: r.seq)] == [2, 3]


def test_transaction_that_raises_leaves_no_trace(db: crdtdb.Database) -> None:
    db.put("users/alice", {"n": 1})
    seen: list[UpdateRecord] = []
    db.subscribe(seen.append)
    with pytest.raises(RuntimeError, match="boom"), db.transaction() as tx:
        tx.doc("users/alice")["n"] = 2
        tx.put("users/bob", {"x": 1})
        raise RuntimeError("boom")
    assert db.get("users/alice") == {"n": 1}
    assert db.get("users/bob") is None
    assert seen == []
    assert [r.seq for r in db.changes()] == [1]
    # and the next commit continues the sequence without a gap
    db.put("users/carol", {"y": 1})
    assert [r.seq for r in db.changes()] == [1, 2]


def test_views_refuse_use_after_the_transaction(db: crdtdb.Database) -> None:
    with db.transaction() as tx:
        doc = tx.doc("users/alice")
        doc["a"] = 1
    with pytest.raises(errors.TransactionError, match="ended"):
        doc["a"] = 2
    assert db.get("users/alice") == {"a": 1}


def test_nested_transaction_and_db_calls_inside_a_transaction_are_refused(
    db: crdtdb.Database,
) -> None:
    with db.transaction() as tx:
        tx.put("users/a", {"v": 1})
        with pytest.raises(errors.TransactionError, match="nested"), db.transaction():
            pass
        with pytest.raises(errors.TransactionError, match=r"tx\.put"):
            db.put("users/b", {"v": 1})
    assert db.get("users/a") == {"v": 1}
    assert db.get("users/b") is None


def test_transaction_reads_its_own_writes(db: crdtdb.Database) -> None:
    with db.transaction() as tx:
        assert tx.get("users/a") is None
        tx.put("users/a", {"v": 1})
        assert tx.get("users/a") == {"v": 1}
        tx.delete("users/a")
        assert tx.get("users/a") is None


def test_text_values_merge_character_by_character(pair: tuple[crdtdb.Database, ...]) -> None:
    eu, us = pair
    with eu.transaction() as tx:
        tx.doc("notes/n")["body"] = Text("Hello world")
    ship(eu, us)
    with eu.transaction() as tx:
        tx.doc("notes/n")["body"].insert(5, ",")
    with us.transaction() as tx:
        tx.doc("notes/n")["body"] += "!"
    ship(eu, us)
    ship(us, eu)
    assert eu.get("notes/n") == us.get("notes/n") == {"body": "Hello, world!"}


def test_delete_then_recreate(db: crdtdb.Database) -> None:
    db.put("orders/1", {"total": 1})
    hlc = db.delete("orders/1")
    assert hlc is not None
    assert db.get("orders/1") is None
    assert "orders/1" not in db
    assert db.list("orders") == []
    assert db.delete("orders/1") is None  # nothing left to delete
    db.put("orders/1", {"total": 2})
    assert db.get("orders/1") == {"total": 2}
    assert db.list("orders") == ["orders/1"]


@pytest.mark.parametrize("deleter", ["eu", "us"])
@pytest.mark.parametrize("first_delivered", ["delete", "edit"])
def test_delete_concurrent_with_an_edit_keeps_the_edit(
    pair: tuple[crdtdb.Database, crdtdb.Database], deleter: str, first_delivered: str
) -> None:
    eu, us = pair
    eu.put("orders/1", {"total": 10, "items": ["book"]})
    original = list(eu.changes())
    ship(eu, us)
    deleting, editing = (eu, us) if deleter == "eu" else (us, eu)
    before_delete = {r.seq for r in deleting.changes() if r.origin == deleting.region}
    deleting.delete("orders/1")
    editing.update("orders/1", {"status": "shipped"})
    delete_records = [
        r for r in deleting.changes() if r.origin == deleting.region and r.seq not in before_delete
    ]
    edit_records = [
        r
        for r in editing.changes()
        if r.origin == editing.region and r.doc_id == "orders/1" and r.hlc == editing.hlc
    ]
    assert len(delete_records) == 1 and len(edit_records) == 1
    order = [delete_records[0], edit_records[0]]
    if first_delivered == "edit":
        order.reverse()
    with crdtdb.open(Path(str(eu.path) + "-third"), region="ap") as third:
        for record in original + order:  # a third region gets the concurrent pair in order
            third.apply_remote(record)
        for record in delete_records + edit_records:
            for target in (eu, us):
                target.apply_remote(record)
        # Observed-remove: the delete removed what the deleting region had seen;
        # the concurrent edit survives and the document stays live.
        expected = {"status": "shipped"}
        assert eu.get("orders/1") == us.get("orders/1") == third.get("orders/1") == expected
        assert eu.digest("orders/1") == us.digest("orders/1") == third.digest("orders/1")
        assert eu.list("orders") == us.list("orders") == ["orders/1"]


def test_delete_after_seeing_the_edit_wins(pair: tuple[crdtdb.Database, crdtdb.Database]) -> None:
    eu, us = pair
    eu.put("orders/1", {"total": 10})
    ship(eu, us)
    us.update("orders/1", {"status": "shipped"})
    ship(us, eu)
    eu.delete("orders/1")  # eu has seen the edit: a causally later delete removes it
    ship(eu, us)
    assert eu.get("orders/1") is None and us.get("orders/1") is None
    assert eu.list("orders") == us.list("orders") == []


def test_list_collections_and_paging(db: crdtdb.Database) -> None:
    with db.transaction() as tx:
        for i in range(5):
            tx.put(f"users/u{i}", {"i": i})
        tx.put("orders/1", {"x": 1})
    assert db.list("users") == [f"users/u{i}" for i in range(5)]
    assert db.list("users", limit=2) == ["users/u0", "users/u1"]
    assert db.list("users", after="users/u1", limit=2) == ["users/u2", "users/u3"]
    assert db.collections() == ["orders", "users"]
    with pytest.raises(errors.InvalidDocIdError):
        db.list("bad/collection")


def test_changes_are_hlc_ordered_and_filterable(db: crdtdb.Database, clock: FakeClock) -> None:
    hlcs = [db.put(f"users/u{i}", {"i": i}) for i in range(5)]
    records = list(db.changes())
    assert [r.hlc for r in records] == sorted(r.hlc for r in records) == hlcs
    assert [r.doc_id for r in db.changes(since=hlcs[2])] == ["users/u3", "users/u4"]
    assert len(list(db.changes(limit=3))) == 3
    assert all(r.origin == "eu" for r in records)


def test_changes_paginates_beyond_one_page(db: crdtdb.Database) -> None:
    with db.transaction() as tx:
        for i in range(2500):
            tx.put(f"bulk/{i}", {"i": i})
    records = list(db.changes())
    assert len(records) == 2500
    assert [r.seq for r in records] == list(range(1, 2501))


def test_time_travel_reads_a_consistent_cut(tmp_path: Path, clock: FakeClock) -> None:
    with crdtdb.open(tmp_path / "db", region="eu", clock=clock) as db:
        t1 = db.put("accounts/a", {"balance": 100})
        clock.advance(10)
        with db.transaction() as tx:  # a transfer: both sides or neither
            tx.update("accounts/a", {"balance": 70})
            tx.put("accounts/b", {"balance": 30})
        t2 = tx.hlc
        assert t2 is not None
        clock.advance(10)
        db.delete("accounts/b")
        assert db.as_of(t1).get("accounts/a") == {"balance": 100}
        assert db.as_of(t1).get("accounts/b") is None
        assert db.as_of(Hlc(t2 - 1)).get("accounts/b") is None
        assert db.as_of(t2).get("accounts/a") == {"balance": 70}
        assert db.as_of(t2).get("accounts/b") == {"balance": 30}
        assert db.as_of(t2).list("accounts") == ["accounts/a", "accounts/b"]
        assert db.as_of(db.hlc).get("accounts/b") is None
        assert db.as_of(str(t1)).get("accounts/a") == {"balance": 100}


def test_compaction_keeps_state_and_the_retention_window(tmp_path: Path, clock: FakeClock) -> None:
    with crdtdb.open(tmp_path / "db", region="eu", clock=clock) as db:
        old = [db.put("docs/a", {"v": i}) for i in range(10)]
        db.put("docs/b", {"v": "old"})
        clock.advance(60_000)
        recent = db.put("docs/a", {"v": 99})
        removed = db.compact(retention_s=30)
        assert removed == 11
        assert db.get("docs/a") == {"v": 99} and db.get("docs/b") == {"v": "old"}
        assert db.as_of(recent).get("docs/a") == {"v": 99}
        with pytest.raises(errors.HistoryCompactedError, match="compacted"):
            db.as_of(old[3]).get("docs/a")
        with pytest.raises(errors.HistoryCompactedError):
            list(db.changes(since=old[0]))
        assert [r.hlc for r in db.changes(since=db.compacted_hlc)] == [recent]
        digest = db.digest("docs/a")
    with crdtdb.open(tmp_path / "db", clock=clock) as db:  # reload from snapshots
        assert db.get("docs/a") == {"v": 99} and db.get("docs/b") == {"v": "old"}
        assert db.digest("docs/a") == digest
        assert db.as_of(db.compacted_hlc).get("docs/a") == {"v": 9}
        db.put("docs/a", {"v": 100})
        assert db.get("docs/a") == {"v": 100}


def test_compaction_reports_progress(tmp_path: Path, clock: FakeClock) -> None:
    with crdtdb.open(tmp_path / "db", region="eu", clock=clock) as db:
        with db.transaction() as tx:
            for i in range(1200):
                tx.put(f"d/{i}", {"i": i})
        clock.advance(10_000)
        calls: list[tuple[int, int]] = []
        # every record is old enough; the newest one stays so that log ids are never reused
        assert db.compact(retention_s=1, progress=lambda d, t: calls.append((d, t))) == 1199
        assert calls[-1] == (1200, 1200) and len(calls) == 3
        assert db.get("d/1199") == {"i": 1199}


def test_snapshots_bound_the_load_cost_and_keep_state(tmp_path: Path) -> None:
    with crdtdb.open(tmp_path / "db", region="eu", snapshot_min_bytes=500) as db:
        for i in range(200):
            db.update("docs/a", {f"k{i % 7}": i})
        expected = db.get("docs/a")
        digest = db.digest("docs/a")
    conn = sqlite3.connect(tmp_path / "db" / STORE_FILE)
    snapshot_id, pending, snapshot_size = conn.execute(
        "SELECT snapshot_id, pending, snapshot_bytes FROM docs WHERE doc_id = 'docs/a'"
    ).fetchone()
    stored = conn.execute("SELECT length(snapshot) FROM snapshots WHERE doc_id = 'docs/a'")
    assert stored.fetchone() == (snapshot_size,)
    replayed = conn.execute(
        "SELECT count(*), sum(length(payload)) FROM log WHERE doc_id = 'docs/a' AND id > ?",
        (snapshot_id,),
    ).fetchone()
    conn.close()
    # loading replays only what came after the snapshot: less than max(500, snapshot) bytes
    assert snapshot_id > 0 and 0 < replayed[0] < 200
    assert replayed[1] == pending < max(500, snapshot_size)
    with crdtdb.open(tmp_path / "db", cache_size=1) as db:
        assert db.get("docs/a") == expected
        assert db.digest("docs/a") == digest


def test_cache_is_bounded(tmp_path: Path) -> None:
    with crdtdb.open(tmp_path / "db", region="eu", cache_size=10) as db:
        with db.transaction() as tx:
            for i in range(100):
                tx.put(f"d/{i}", {"i": i})
        assert all(db.get(f"d/{i}") == {"i": i} for i in range(100))
        assert db.info()["cached_documents"] <= 10


def test_subscribe_gets_committed_records(db: crdtdb.Database) -> None:
    seen: list[UpdateRecord] = []
    sub = db.subscribe(seen.append)
    db.put("users/a", {"v": 1})
    with db.transaction() as tx:
        tx.put("users/b", {"v": 1})
        tx.put("users/c", {"v": 1})
        assert seen and len(seen) == 1  # nothing reported before the commit
    assert [r.doc_id for r in seen] == ["users/a", "users/b", "users/c"]
    sub.close()
    db.put("users/d", {"v": 1})
    assert len(seen) == 3


def test_subscriber_may_read_and_a_failing_one_does_not_break_writes(db: crdtdb.Database) -> None:
    reads: list[object] = []
    db.subscribe(lambda r: reads.append(db.get(r.doc_id)))

    def broken(record: UpdateRecord) -> None:
        raise ValueError("subscriber bug")

    db.subscribe(broken)
    db.put("users/a", {"v": 1})
    assert reads == [{"v": 1}]
    assert db.get("users/a") == {"v": 1}


async def _collect(db: crdtdb.Database, count: int) -> list[UpdateRecord]:
    out = []
    async for record in db.watch():
        out.append(record)
        if len(out) == count:
            break
    return out


def test_watch_yields_new_records(db: crdtdb.Database) -> None:
    import asyncio

    async def scenario() -> list[UpdateRecord]:
        task = asyncio.create_task(_collect(db, 2))
        await asyncio.sleep(0)
        db.put("users/a", {"v": 1})
        db.put("users/b", {"v": 2})
        return await asyncio.wait_for(task, 10)

    records = asyncio.run(scenario())
    assert [r.doc_id for r in records] == ["users/a", "users/b"]


def test_invalid_input_is_refused_with_typed_errors(db: crdtdb.Database) -> None:
    with pytest.raises(errors.InvalidDocIdError, match="collection/key"):
        db.put("no-slash", {"a": 1})
    with pytest.raises(errors.InvalidValueError, match="JSON object"):
        db.put("users/a", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidValueError, match=r"\$\.a\.b"):
        db.put("users/a", {"a": {"b": float("nan")}})
    with pytest.raises(errors.InvalidValueError, match="not JSON-like"):
        db.put("users/a", {"a": {1, 2}})
    with pytest.raises(errors.InvalidDocIdError):
        db.get(42)  # type: ignore[arg-type]
    assert db.get("users/a") is None
    assert list(db.changes()) == []


def test_closed_database_refuses_everything(tmp_path: Path) -> None:
    db = crdtdb.open(tmp_path / "db", region="eu")
    db.put("users/a", {"v": 1})
    db.close()
    db.close()  # idempotent
    for call in (
        lambda: db.get("users/a"),
        lambda: db.put("users/a", {}),
        db.transaction,
        lambda: list(db.changes()),
        db.info,
    ):
        with pytest.raises(errors.DatabaseClosedError, match="open it again"):
            call()


def test_reopen_keeps_region_data_and_clock(tmp_path: Path, clock: FakeClock) -> None:
    with crdtdb.open(tmp_path / "db", region="eu", clock=clock) as db:
        last = db.put("users/a", {"v": 1})
    clock.now_ms -= 60_000  # the wall clock went backwards across the restart
    with crdtdb.open(tmp_path / "db", clock=clock) as db:
        assert db.region == "eu"
        assert db.get("users/a") == {"v": 1}
        assert db.put("users/a", {"v": 2}) > last
        assert [r.seq for r in db.changes()] == [1, 2]


def test_store_errors(tmp_path: Path) -> None:
    with pytest.raises(errors.StoreError, match="region="):
        crdtdb.open(tmp_path / "nothing-here")
    assert not (tmp_path / "nothing-here" / STORE_FILE).exists()
    with crdtdb.open(tmp_path / "eu", region="eu"):
        pass
    with pytest.raises(errors.RegionMismatchError, match="'eu'"):
        crdtdb.open(tmp_path / "eu", region="us")
    with pytest.raises(errors.InvalidRegionError):
        crdtdb.open(tmp_path / "x", region="Not A Region")
    (tmp_path / "file").write_text("hello")
    with pytest.raises(errors.NotAStoreError, match="directory"):
        crdtdb.open(tmp_path / "file", region="eu")


def test_foreign_or_corrupt_files_are_never_overwritten(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    conn = sqlite3.connect(foreign / STORE_FILE)
    conn.execute("CREATE TABLE precious (x)")
    conn.execute("INSERT INTO precious VALUES (42)")
    conn.commit()
    conn.close()
    with pytest.raises(errors.NotAStoreError, match="another application"):
        crdtdb.open(foreign, region="eu")
    conn = sqlite3.connect(foreign / STORE_FILE)
    assert conn.execute("SELECT x FROM precious").fetchall() == [(42,)]
    conn.close()

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / STORE_FILE).write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(errors.NotAStoreError, match="not a crdtdb store"):
        crdtdb.open(garbage, region="eu")
    assert (garbage / STORE_FILE).read_bytes() == b"definitely not sqlite" * 100


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with crdtdb.open(tmp_path / "db", region="eu") as db:
        db.put("users/a", {"v": 1})
    conn = sqlite3.connect(tmp_path / "db" / STORE_FILE)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(errors.SchemaVersionError, match="upgrade crdtdb"):
        crdtdb.open(tmp_path / "db")


def test_info_reports_counts(db: crdtdb.Database) -> None:
    db.put("users/a", {"v": 1})
    db.put("users/b", {"v": 1})
    db.delete("users/b")
    info = db.info()
    assert info["region"] == "eu"
    assert info["documents"] == 2 and info["live_documents"] == 1
    assert info["log_records"] == 3
    assert info["origins"]["eu"]["contiguous_seq"] == 3
    json.dumps(info)  # serialisable for the CLI
