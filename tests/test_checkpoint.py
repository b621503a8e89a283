"""WAL checkpoints taken out of commits, and the daemon's garbage collection schedule."""

from __future__ import annotations

import asyncio
import gc
import itertools
from pathlib import Path

import pytest

import crdtdb
from crdtdb.errors import UsageError
from crdtdb.storage import STORE_FILE
from crdtdb.sync.node import Replicator

from .harness.config import region_config
from .harness.wait import wait_for

PAGE = 4096


def _wal_bytes(directory: Path) -> int:
    wal = directory / (STORE_FILE + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def _fill(db: crdtdb.Database, count: int, prefix: str = "docs") -> None:
    for start in range(0, count, 500):
        with db.transaction() as tx:
            for i in range(start, min(count, start + 500)):
                tx.put(f"{prefix}/{i}", {"i": i, "text": "x" * 1000})


@pytest.mark.integration
def test_without_autocheckpoint_commits_leave_the_wal_to_checkpoint(tmp_path: Path) -> None:
    with crdtdb.open(tmp_path / "auto", region="eu") as auto:
        _fill(auto, 6000)
        auto_wal = _wal_bytes(tmp_path / "auto")
    with crdtdb.open(tmp_path / "manual", region="eu", wal_autocheckpoint=0) as manual:
        _fill(manual, 6000)
        assert _wal_bytes(tmp_path / "manual") > 2 * 1000 * PAGE > auto_wal
        pages, copied = manual.checkpoint()
        assert pages > 2000 and copied == pages
        assert manual.checkpoint() == (pages, pages)  # nothing new: all copied already
        manual.put("docs/after", {"v": 1})  # the WAL restarts from its beginning
        assert manual.checkpoint()[0] < 50
    with crdtdb.open(tmp_path / "manual") as reopened:
        assert reopened.get("docs/5999") == {"i": 5999, "text": "x" * 1000}
        assert reopened.get("docs/after") == {"v": 1}


def test_checkpoints_alongside_a_steady_writer_rewind_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With commits going on during every checkpoint, the WAL only ever grew."""
    import sqlite3
    import threading
    import time

    from crdtdb import storage

    monkeypatch.setattr(storage, "WAL_RESTART_PAGES", 300)
    reported: list[int] = []
    with crdtdb.open(tmp_path / "eu", region="eu", wal_autocheckpoint=0) as db:
        stop = threading.Event()
        written = itertools.count()

        def write() -> None:
            while not stop.is_set():
                i = next(written)
                db.put(f"docs/{i}", {"i": i})

        writer = threading.Thread(target=write)
        writer.start()
        try:
            deadline = time.monotonic() + 20
            while len(reported) < 8 and time.monotonic() < deadline:
                time.sleep(0.1)
                reported.append(db.checkpoint()[0])
        finally:
            stop.set()
            writer.join(timeout=30)
        count = next(written)
        assert count > 100 and db.get(f"docs/{count - 1}") == {"i": count - 1}
    rewound = [b for a, b in itertools.pairwise(reported) if b < a]
    assert rewound, f"the WAL never started over: pages at each checkpoint {reported}"
    with sqlite3.connect(tmp_path / "eu" / STORE_FILE) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM docs").fetchone()[0] == count


@pytest.mark.parametrize("bad", [-1, 1.5, "1000", True])
def test_wal_autocheckpoint_must_be_pages(tmp_path: Path, bad: object) -> None:
    with pytest.raises(UsageError, match="wal_autocheckpoint"):
        crdtdb.open(tmp_path / "eu", region="eu", wal_autocheckpoint=bad)


@pytest.mark.integration
def test_a_replicator_checkpoints_a_store_that_leaves_it_to_it(tmp_path: Path, certs: Path) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        db = crdtdb.open(tmp_path / "eu", region="eu", wal_autocheckpoint=0)
        replicator = Replicator(db, region_config(tmp_path, certs, "eu", []))
        task = asyncio.create_task(replicator.run(stop))
        try:
            await wait_for(lambda: replicator.port is not None)
            _fill(db, 6000)
            await wait_for(lambda: replicator.checkpoints >= 1)
            # everything written before is in the database file now
            await wait_for(lambda: db.checkpoint()[0] == db.checkpoint()[1])
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            db.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_a_replicator_leaves_checkpoints_to_sqlite_by_default(tmp_path: Path, certs: Path) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        db = crdtdb.open(tmp_path / "eu", region="eu")
        replicator = Replicator(db, region_config(tmp_path, certs, "eu", []))
        task = asyncio.create_task(replicator.run(stop))
        try:
            await wait_for(lambda: replicator.port is not None)
            _fill(db, 2000)
            await asyncio.sleep(1.5)
            assert replicator.checkpoints == 0
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            db.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_the_daemon_runs_full_collections_itself_when_the_log_is_quiet(
    tmp_path: Path, certs: Path
) -> None:
    before = gc.get_threshold()

    async def scenario() -> None:
        stop = asyncio.Event()
        db = crdtdb.open(tmp_path / "eu", region="eu")
        replicator = Replicator(db, region_config(tmp_path, certs, "eu", []), manage_gc=True)
        task = asyncio.create_task(replicator.run(stop))
        try:
            await wait_for(lambda: replicator.port is not None)
            await asyncio.sleep(0.1)
            assert gc.get_threshold()[2] >= 1 << 30  # no automatic full collection
            collections = gc.get_stats()[2]["collections"]
            db.put("docs/a", {"v": 1})
            await wait_for(lambda: replicator.full_collections >= 1, timeout=10)
            assert gc.get_stats()[2]["collections"] > collections
            done = replicator.full_collections
            await asyncio.sleep(2.5)  # quiet since: no collection without new growth
            assert replicator.full_collections == done
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            db.close()

    asyncio.run(scenario())
    assert gc.get_threshold() == before  # restored when the replicator stops


@pytest.mark.integration
def test_stale_digests_are_refreshed_a_few_at_a_time_while_the_log_grows(
    tmp_path: Path, certs: Path
) -> None:
    """So that replication keeps the store lock to itself; the tree is fresh once quiet."""
    import sqlite3
    import threading
    import time

    from crdtdb.sync import housekeeping

    async def scenario() -> None:
        stop = asyncio.Event()
        db = crdtdb.open(tmp_path / "eu", region="eu")
        _fill(db, 600)
        calls: list[tuple[float, int, str]] = []  # (when, chunk, what the writer was doing)
        on_loop: list[bool] = []
        phase = "many"
        refresh = db.refresh_digests

        def recording(limit: int = 100) -> int:
            calls.append((time.monotonic(), limit, phase))
            on_loop.append(threading.current_thread() is threading.main_thread())
            return refresh(limit)

        db.refresh_digests = recording  # type: ignore[method-assign]
        config = region_config(tmp_path, certs, "eu", [], anti_entropy_interval=2.0)
        replicator = Replicator(db, config)
        task = asyncio.create_task(replicator.run(stop))
        store = sqlite3.connect(tmp_path / "eu" / STORE_FILE)

        def stale() -> int:
            return int(store.execute("SELECT count(*) FROM docs WHERE dirty").fetchone()[0])

        try:
            await wait_for(lambda: replicator.port is not None)
            for i in range(0, 600, 4):  # 1.5 s, 400 documents a second made stale
                for j in range(i, i + 4):
                    db.update(f"docs/{j}", {"again": j})
                await asyncio.sleep(0.01)
            phase = "quiet"
            await wait_for(lambda: stale() == 0, timeout=10)
            phase = "hot"
            for i in range(150):  # 1.5 s of rewriting one document
                db.update("docs/0", {"hot": i})
                await asyncio.sleep(0.01)
            phase = "quiet"
            await wait_for(lambda: stale() == 0, timeout=10)
        finally:
            store.close()
            stop.set()
            await asyncio.wait_for(task, 10)
            db.close()
        busy = [(when, chunk) for when, chunk, during in calls if during == "many"]
        assert len(busy) > 10, calls  # the refresh kept up while the writes went on
        assert {chunk for _, chunk in busy[1:]} == {housekeeping.DIGEST_CHUNK_BUSY}
        # busy chunks run on the event loop (in a thread they held the store lock while
        # the thread waited for the interpreter); full ones in a worker thread
        chunks = [(chunk, here) for (_, chunk, _), here in zip(calls, on_loop, strict=True)]
        assert all(here for chunk, here in chunks if chunk == housekeeping.DIGEST_CHUNK_BUSY)
        assert not any(here for chunk, here in chunks if chunk == housekeeping.DIGEST_CHUNK)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(busy)]
        assert min(gaps) >= housekeeping.DIGEST_PAUSE * 0.9
        # one document rewritten 100 times a second: hashed about once a second meanwhile
        assert len([c for c in calls if c[2] == "hot"]) <= 4, calls

    asyncio.run(scenario())
