"""The embedded store's side of replication: remote records and diffs, in any order,
bad ones refused, digests kept current (the local API is in test_database.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pycrdt import Text

import crdtdb
from crdtdb import Hlc, UpdateRecord, errors, merkle

from .conftest import FakeClock, ship


def test_out_of_order_delivery_is_integrated(pair: tuple[crdtdb.Database, crdtdb.Database]) -> None:
    """A record that arrives before the one it depends on is applied once that one arrives.

    (pycrdt 0.14 alone loses track of such a pending update when it touches two
    shared types; the store re-applies it until it is integrated.)
    """
    eu, us = pair
    eu.put("orders/1", {"a": 1})
    with eu.transaction() as tx:
        doc = tx.doc("orders/1")
        doc["b"] = 1  # needs nothing
        doc["a"] = 2  # overwrites record 1's item: needs record 1
    first, second = list(eu.changes())
    assert us.apply_remote(second)
    assert us.get("orders/1") == {"b": 1}  # the part that could be integrated
    assert us.apply_remote(first)
    assert us.get("orders/1") == eu.get("orders/1") == {"a": 2, "b": 1}
    assert us.digest("orders/1") == eu.digest("orders/1")
    us.close()
    with crdtdb.open(us.path) as reopened:  # replaying the log in arrival order works too
        assert reopened.get("orders/1") == {"a": 2, "b": 1}
        assert reopened.digest("orders/1") == eu.digest("orders/1")


def test_apply_remote_refuses_bad_records_and_changes_nothing(
    pair: tuple[crdtdb.Database, crdtdb.Database], clock: FakeClock
) -> None:
    eu, us = pair
    eu.put("users/a", {"v": 1})
    good = next(iter(eu.changes()))
    before = (us.info()["log_records"], us.merkle_root(), us.hlc)
    bad_records = [
        (
            UpdateRecord(good.doc_id, good.hlc, good.origin, good.seq, b"\xff\x00garbage"),
            errors.InvalidUpdateError,
            "does not decode",
        ),
        *(  # cut short inside the varints read to bind client ids (was a raw IndexError)
            (
                UpdateRecord(good.doc_id, good.hlc, good.origin, good.seq, cut),
                errors.InvalidUpdateError,
                "does not decode",
            )
            for cut in (b"\xff", b"\x01\xff", b"\x01\x01\xff")
        ),
        (
            UpdateRecord(good.doc_id, good.hlc, "Not A Region", good.seq, good.update),
            errors.InvalidRecordError,
            "region",
        ),
        (
            UpdateRecord("no-slash", good.hlc, good.origin, good.seq, good.update),
            errors.InvalidRecordError,
            "collection/key",
        ),
        (
            UpdateRecord(good.doc_id, good.hlc, good.origin, 0, good.update),
            errors.InvalidRecordError,
            "seq",
        ),
        (
            UpdateRecord(good.doc_id, good.hlc, good.origin, good.seq, b""),
            errors.InvalidRecordError,
            "non-empty",
        ),
        (
            UpdateRecord(
                good.doc_id,
                Hlc.from_parts(good.hlc.wall_ms + 3_600_000),
                good.origin,
                good.seq,
                good.update,
            ),
            errors.ClockSkewError,
            "ahead",
        ),
    ]
    for record, error, message in bad_records:
        with pytest.raises(error, match=message):
            us.apply_remote(record)
        assert (us.info()["log_records"], us.merkle_root(), us.hlc) == before
        assert us.get("users/a") is None
    assert us.apply_remote(good) is True
    assert us.apply_remote(good) is False  # idempotent
    assert us.get("users/a") == {"v": 1}
    assert us.info()["origins"]["eu"]["contiguous_seq"] == 1


def test_remote_hlc_is_observed(tmp_path: Path, clock: FakeClock) -> None:
    ahead = FakeClock(clock.now_ms + 400)  # within the default 500 ms offset
    with (
        crdtdb.open(tmp_path / "eu", region="eu", clock=ahead) as eu,
        crdtdb.open(tmp_path / "us", region="us", clock=clock) as us,
    ):
        remote = eu.put("users/a", {"v": 1})
        ship(eu, us)
        assert us.put("users/b", {"v": 1}) > remote  # causality: b was written after seeing a


def test_contiguous_sequence_tracks_gaps(pair: tuple[crdtdb.Database, crdtdb.Database]) -> None:
    eu, us = pair
    for i in range(4):
        eu.put(f"d/{i}", {"i": i})
    records = list(eu.changes())
    us.apply_remote(records[0])
    us.apply_remote(records[2])
    us.apply_remote(records[3])
    origin = us.info()["origins"]["eu"]
    assert (origin["max_seq"], origin["contiguous_seq"]) == (4, 1)
    us.apply_remote(records[1])
    assert us.info()["origins"]["eu"]["contiguous_seq"] == 4


def test_storing_a_text_view_is_a_real_assignment_unless_it_is_an_in_place_append(
    db: crdtdb.Database,
) -> None:
    with db.transaction() as tx:
        doc = tx.doc("notes/n")
        doc["a"] = Text("alpha")
        doc["b"] = Text("beta")
    with db.transaction() as tx:
        doc = tx.doc("notes/n")
        doc["a"] += "!"  # in place: the same text, appended to
        doc["c"] = doc["b"]  # another slot: a copy
        doc["b"] += "?"
        doc["b"] = "plain"  # replacing the text is not swallowed
    assert db.get("notes/n") == {"a": "alpha!", "b": "plain", "c": "beta"}


def test_apply_diff_commits_what_is_new_as_a_local_record(
    pair: tuple[crdtdb.Database, crdtdb.Database],
) -> None:
    eu, us = pair
    eu.put("docs/a", {"x": 1})
    us.put("docs/a", {"y": 2})
    hlc = us.apply_diff("docs/a", eu.diff("docs/a", us.state_vector("docs/a")))
    assert hlc is not None and us.get("docs/a") == {"x": 1, "y": 2}
    repair = list(us.changes())[-1]
    assert (repair.origin, repair.seq, repair.hlc) == ("us", 2, hlc)
    assert us.apply_diff("docs/a", eu.diff("docs/a")) is None  # nothing new: no record
    assert [r.seq for r in us.changes()] == [1, 2]
    with pytest.raises(errors.InvalidUpdateError, match="does not decode"):
        us.apply_diff("docs/a", b"\xff\xfe")
    assert us.get("docs/a") == {"x": 1, "y": 2}
    assert us.merkle_root() != eu.merkle_root()
    eu.apply_diff("docs/a", us.diff("docs/a", eu.state_vector("docs/a")))
    assert us.merkle_root() == eu.merkle_root()


def test_records_from_progress_and_leaf_docs(pair: tuple[crdtdb.Database, crdtdb.Database]) -> None:
    from crdtdb import merkle

    eu, us = pair
    for i in range(5):
        eu.put(f"docs/{i}", {"i": i})
    assert [r.seq for r in eu.records_from("eu", 2)] == [3, 4, 5]
    assert [r.seq for r in eu.records_from("eu", 0, limit=2)] == [1, 2]
    assert eu.records_from("us", 0) == []
    for record in eu.records_from("eu", 0):
        us.apply_remote(record)
    max_seq, contiguous, hlc = us.progress()["eu"]
    assert (max_seq, contiguous) == (5, 5) and hlc == eu.hlc
    leaf = merkle.leaf_of("docs/3")
    assert ("docs/3", eu.digest("docs/3")) in eu.leaf_docs(leaf)
    assert all(merkle.leaf_of(doc_id) == leaf for doc_id, _ in eu.leaf_docs(leaf))


def test_a_forged_record_of_our_own_region_is_refused(
    pair: tuple[crdtdb.Database, crdtdb.Database],
) -> None:
    eu, _us = pair
    eu.put("docs/a", {"v": 1})
    mine = next(iter(eu.changes()))
    assert eu.apply_remote(mine) is False  # our own record relayed back: a duplicate
    forged = UpdateRecord("docs/b", mine.hlc, "eu", 5, mine.update)
    with pytest.raises(errors.InvalidRecordError, match="never made it"):
        eu.apply_remote(forged)
    assert eu.put("docs/c", {"v": 2}) and [r.seq for r in eu.changes()] == [1, 2]


def test_refresh_digests_takes_cached_documents_first(tmp_path: Path) -> None:
    """Behind a bulk load, refreshing in doc id order would reload evicted documents."""
    import sqlite3

    from crdtdb.storage import STORE_FILE

    with crdtdb.open(tmp_path / "eu", region="eu", cache_size=100) as db:
        with db.transaction() as tx:  # new documents: hashed as they are created
            for i in range(300):
                tx.put(f"docs/{i:03d}", {"i": i})
        assert db.refresh_digests(50) == 0
        for i in range(300):
            db.update(f"docs/{i:03d}", {"j": i})  # stale now; only the last 100 stay loaded
        assert db.refresh_digests(50) == 50
        side = sqlite3.connect(tmp_path / "eu" / STORE_FILE)
        fresh = sorted(row[0] for row in side.execute("SELECT doc_id FROM docs WHERE NOT dirty"))
        assert fresh == [f"docs/{i:03d}" for i in range(200, 250)]  # the oldest loaded ones
        while db.refresh_digests(50):
            pass
        assert side.execute("SELECT count(*) FROM docs WHERE dirty").fetchone()[0] == 0
        side.close()
        root = db.merkle_root()
    with crdtdb.open(tmp_path / "copy", region="us") as copy:
        with crdtdb.open(tmp_path / "eu") as source:
            copy.apply_remote_many(list(source.changes()))
        assert copy.merkle_root() == root


def test_new_documents_are_hashed_by_their_writer_not_reloaded_by_the_refresher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync daemon refreshes the tree of the application's commits in its own process,
    where it would have to load each new document again to hash it."""
    with crdtdb.open(tmp_path / "eu", region="eu") as app:
        for i in range(40):  # one document a commit: too few to XOR into the tree at once
            app.put(f"docs/{i:02d}", {"i": i})
        app.update("docs/07", {"j": 7})  # changed again before any refresh: stale for real
        with crdtdb.open(tmp_path / "eu") as daemon:
            loaded: list[str] = []
            load = daemon._engine.load

            def loading(doc_id: str) -> Any:
                loaded.append(doc_id)
                return load(doc_id)

            monkeypatch.setattr(daemon._engine, "load", loading)
            assert daemon.stale_digests(100) == 40
            assert daemon.refresh_digests(100) == 40
            assert loaded == ["docs/07"]
            root = daemon.merkle_root()
        assert app.merkle_root() == root
        assert app.digest("docs/03") == merkle.doc_digest(app._engine.handle("docs/03").doc)
    with crdtdb.open(tmp_path / "copy", region="us") as copy:  # the tree of a rebuild
        with crdtdb.open(tmp_path / "eu") as source:
            copy.apply_remote_many(list(source.changes()))
        assert copy.merkle_root() == root


def test_a_record_is_checked_once_and_a_bad_one_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crdtdb import ids, records

    calls: list[str] = []

    def counting(doc_id: str) -> str:
        calls.append(doc_id)
        return validate(doc_id)

    validate = ids.validate_doc_id  # what records calls by that name
    monkeypatch.setattr(records, "validate_doc_id", counting)
    good = UpdateRecord("docs/a", Hlc(5), "eu", 1, b"\x00\x00")
    assert good.validated() is good and good.validated() is good
    assert calls == ["docs/a"]  # the fields are frozen: once is enough
    bad = UpdateRecord("docs/a", Hlc(5), "eu", 0, b"\x00\x00")
    for _ in range(2):
        with pytest.raises(errors.InvalidRecordError, match="seq"):
            bad.validated()
    assert good == UpdateRecord("docs/a", Hlc(5), "eu", 1, b"\x00\x00")  # not in equality
