"""Batched remote apply (``Database.apply_remote_many``): one transaction per batch.

A batch writes each document's row, each origin's row and the clock once, so
these tests pin what that must not change: every record lands in the log,
documents, digests and per-origin progress end as if the records had been
applied one at a time, duplicates count once, and a refused record leaves no
trace of its whole batch (not in SQLite, not in the cached documents).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import crdtdb
from crdtdb import errors
from crdtdb.hlc import Hlc
from crdtdb.records import UpdateRecord


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[tuple[crdtdb.Database, crdtdb.Database, crdtdb.Database]]:
    """Two origins (eu, ap) and the region that receives their records (us)."""
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "ap", region="ap") as ap,
        crdtdb.open(tmp_path / "us", region="us") as us,
    ):
        yield eu, ap, us


def _state(db: crdtdb.Database) -> tuple[object, ...]:
    """Everything a refused batch must leave as it was."""
    info = db.info()
    return (info["log_records"], info["origins"], info["documents"], db.merkle_root(), db.hlc)


def _log_rows(db: crdtdb.Database) -> list[tuple[str, int]]:
    return sorted((r.origin, r.seq) for r in db.changes())


def test_several_records_of_one_document_in_one_batch(
    trio: tuple[crdtdb.Database, crdtdb.Database, crdtdb.Database],
) -> None:
    eu, _, us = trio
    for i in range(20):
        eu.update("orders/1", {f"k{i % 3}": i, "n": i})
    eu.put("orders/2", {"other": True})
    records = list(eu.changes())
    seen: list[tuple[str, int]] = []
    with us.subscribe(lambda r: seen.append((r.origin, r.seq))):
        assert us.apply_remote_many(records) == 21
    assert seen == [(r.origin, r.seq) for r in records]  # each once, in batch order
    assert us.get("orders/1") == eu.get("orders/1")
    assert us.get("orders/2") == {"other": True}
    assert _log_rows(us) == [("eu", seq) for seq in range(1, 22)]
    assert us.digest("orders/1") == eu.digest("orders/1")
    assert us.merkle_root() == eu.merkle_root()
    assert us.progress()["eu"] == (21, 21, records[-1].hlc)
    assert us.hlc >= max(r.hlc for r in records)
    assert us.apply_remote_many(records) == 0  # idempotent


def test_the_document_row_keeps_the_newest_hlc_and_a_snapshot_of_all(tmp_path: Path) -> None:
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "us", region="us", snapshot_min_bytes=1) as us,
    ):
        for i in range(10):
            eu.update("orders/1", {"i": i, f"k{i}": "x" * 50})
        records = list(eu.changes())
        us.apply_remote_many(records[:4])
        us.apply_remote_many(records[4:])
        expected = eu.get("orders/1")
        digest = eu.digest("orders/1")
        leaf = [d for d, _ in us.leaf_docs(crdtdb.merkle.leaf_of("orders/1"))]
        assert leaf == ["orders/1"]
    with crdtdb.open(tmp_path / "us") as reopened:  # loaded from the batch's snapshot
        assert reopened.get("orders/1") == expected
        assert reopened.digest("orders/1") == digest
        row = reopened._engine.conn.execute(
            "SELECT hlc, snapshot_id, pending FROM docs WHERE doc_id = 'orders/1'"
        ).fetchone()
        newest = reopened._engine.conn.execute("SELECT max(id) FROM log").fetchone()[0]
    assert row == (int(records[-1].hlc), newest, 0)


def test_the_document_row_keeps_the_newest_hlc_of_the_batch_in_any_order(
    tmp_path: Path,
) -> None:
    now = 1_800_000_000_000
    with (
        crdtdb.open(tmp_path / "eu", region="eu", clock=lambda: now + 200) as eu,
        crdtdb.open(tmp_path / "ap", region="ap", clock=lambda: now) as ap,
        crdtdb.open(tmp_path / "us", region="us", clock=lambda: now) as us,
    ):
        later = eu.put("orders/1", {"by": "eu"})
        ap.put("orders/1", {"by": "ap"})
        assert us.apply_remote_many([*eu.changes(), *ap.changes()]) == 2
        row = us._engine.conn.execute("SELECT hlc FROM docs WHERE doc_id = 'orders/1'").fetchone()
        assert row[0] == int(later)
        assert us.hlc > later


def test_a_duplicate_in_the_batch_counts_once(
    trio: tuple[crdtdb.Database, crdtdb.Database, crdtdb.Database],
) -> None:
    eu, _, us = trio
    for i in range(3):
        eu.put(f"users/{i}", {"i": i})
    a, b, c = eu.changes()
    assert us.apply_remote_many([a, b, a, c, b]) == 3
    assert _log_rows(us) == [("eu", 1), ("eu", 2), ("eu", 3)]
    assert us.apply_remote_many([c, a]) == 0
    assert [us.get(f"users/{i}") for i in range(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_records_already_held_are_skipped_and_the_rest_applied(
    trio: tuple[crdtdb.Database, crdtdb.Database, crdtdb.Database],
) -> None:
    eu, _, us = trio
    for i in range(5):
        eu.put(f"users/{i}", {"i": i})
    records = list(eu.changes())
    assert us.apply_remote_many(records[1:3]) == 2
    assert us.apply_remote_many(records) == 3
    assert _log_rows(us) == [("eu", seq) for seq in range(1, 6)]
    assert us.progress()["eu"][:2] == (5, 5)


def test_a_batch_mixing_origins_with_gaps_tracks_each_origin(
    trio: tuple[crdtdb.Database, crdtdb.Database, crdtdb.Database],
) -> None:
    eu, ap, us = trio
    for i in range(4):
        eu.put(f"eu/{i}", {"i": i})
        ap.put(f"ap/{i}", {"i": i})
    e = list(eu.changes())
    p = list(ap.changes())
    assert us.apply_remote_many([e[0], p[1], e[1], e[3], p[2]]) == 5
    progress = us.progress()
    assert progress["eu"] == (4, 2, e[1].hlc)  # eu#3 missing
    assert progress["ap"] == (3, 0, Hlc(0))  # ap#1 missing
    assert us.apply_remote_many([p[0], e[2]]) == 2  # both gaps filled, in one batch
    progress = us.progress()
    assert progress["eu"] == (4, 4, e[3].hlc)
    assert progress["ap"] == (3, 3, p[2].hlc)
    assert us.apply_remote_many([p[3]]) == 1
    assert us.progress()["ap"] == (4, 4, p[3].hlc)
    for db, n in ((eu, "eu"), (ap, "ap")):
        for i in range(4):
            assert us.get(f"{n}/{i}") == db.get(f"{n}/{i}")


def test_out_of_order_records_inside_one_batch_are_integrated(
    trio: tuple[crdtdb.Database, crdtdb.Database, crdtdb.Database],
) -> None:
    eu, _, us = trio
    eu.put("orders/1", {"a": 1})
    with eu.transaction() as tx:
        doc = tx.doc("orders/1")
        doc["b"] = 1
        doc["a"] = 2  # needs record 1
    first, second = eu.changes()
    assert us.apply_remote_many([second, first]) == 2
    assert us.get("orders/1") == {"a": 2, "b": 1}
    assert us.digest("orders/1") == eu.digest("orders/1")


def _refused_batches(eu: crdtdb.Database) -> list[tuple[list[UpdateRecord], type, str]]:
    """Batches whose good records come first and whose last record is refused."""
    for i in range(3):
        eu.update("orders/1", {"i": i})
    good = [r for r in eu.changes() if r.doc_id == "orders/1"]
    last = good[-1]
    skewed = UpdateRecord(
        "orders/1", Hlc.from_parts(last.hlc.wall_ms + 3_600_000), "eu", last.seq + 1, last.update
    )
    garbage = UpdateRecord("orders/1", last.hlc, "eu", last.seq + 1, b"\xff\x00garbage")
    forged = UpdateRecord("orders/1", last.hlc, "us", 1, last.update)
    return [
        ([*good, skewed], errors.ClockSkewError, "ahead"),
        ([*good, garbage], errors.InvalidUpdateError, "does not decode"),
        ([*good, forged], errors.InvalidRecordError, "this region"),
    ]


def test_a_refused_record_rolls_back_its_whole_batch(
    trio: tuple[crdtdb.Database, crdtdb.Database, crdtdb.Database],
) -> None:
    eu, _, us = trio
    eu.put("orders/0", {"seed": 1})
    us.apply_remote_many(list(eu.changes()))  # orders/0 (eu#1) held before
    us.get("orders/1")  # cached, as a daemon's working set would be
    for batch, error, message in _refused_batches(eu):
        before = _state(us)
        with pytest.raises(error, match=message):
            us.apply_remote_many(batch)
        assert _state(us) == before
        assert us.get("orders/1") is None  # the cached document was not left half-applied
    assert us.apply_remote_many(list(eu.changes())) == 3
    assert us.get("orders/1") == eu.get("orders/1") == {"i": 2}


def test_another_process_sees_the_batch_and_shares_the_log_ids(
    trio: tuple[crdtdb.Database, crdtdb.Database, crdtdb.Database],
) -> None:
    eu, _, us = trio
    for i in range(5):
        eu.update("orders/1", {"i": i})
    records = list(eu.changes())
    with crdtdb.open(us.path) as other:
        assert other.get("orders/1") is None  # cached there
        us.apply_remote_many(records[:2])
        other.put("local/1", {"by": "other"})  # us has not seen this commit yet
        assert us.apply_remote_many(records[2:]) == 3
        assert other.get("orders/1") == {"i": 4}
        assert us.get("local/1") == {"by": "other"}
        ids = [row[0] for row in other._engine.conn.execute("SELECT id FROM log ORDER BY id")]
    assert ids == list(range(1, 7))


def test_records_another_process_applied_meanwhile_are_skipped(
    trio: tuple[crdtdb.Database, crdtdb.Database, crdtdb.Database],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held records are looked for again inside the write lock, not only before it."""
    eu, _, us = trio
    for i in range(3):
        eu.update("orders/1", {"i": i})
    records = list(eu.changes())
    with crdtdb.open(us.path) as other:
        write = us._engine.write

        def racing(body: Callable[[], Any]) -> Any:
            other.apply_remote_many(records[:2])  # between the first look and the lock
            return write(body)

        monkeypatch.setattr(us._engine, "write", racing)
        assert us.apply_remote_many(records) == 1
    assert _log_rows(us) == [("eu", 1), ("eu", 2), ("eu", 3)]
    assert us.get("orders/1") == {"i": 2}
    assert us.progress()["eu"][:2] == (3, 3)
