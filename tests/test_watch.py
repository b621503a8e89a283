"""The daemon notices other processes' commits, cheaply when idle; Merkle digests off the loop.

Pure tests of the look schedule; probe tests on a real directory; then two
Replicators over loopback QUIC while a separate process commits to one
region's directory: right away, after an idle spell and after a WAL
checkpoint, with the inotify probe and with the stat fallback. The periodic
confirming look is pushed out to a minute there, so only the probe can make
those commits arrive before the deadline: if it broke, the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import crdtdb
from crdtdb import UpdateRecord, follow, membership
from crdtdb.follow import FOLLOW_UP, InotifyProbe, LogWatcher, StatProbe, WatchSchedule
from crdtdb.storage import STORE_FILE
from crdtdb.sync.config import PeerConfig
from crdtdb.sync.node import Replicator

from .conftest import ship
from .harness.config import region_config
from .harness.wait import wait_for

LINUX = sys.platform.startswith("linux")

# ------------------------------------------------------------------ schedule


def test_an_idle_watcher_still_looks_every_confirm_interval() -> None:
    schedule = WatchSchedule(poll_interval=0.005, confirm_interval=0.1)
    now = 10.0
    for _ in range(5):
        schedule.looked(now, wrote=False, grew=False)
        assert schedule.deadline() == pytest.approx(now + 0.1)
        now = schedule.deadline()


def test_a_write_is_followed_up_quickly_then_less_and_less() -> None:
    schedule = WatchSchedule(poll_interval=0.005, confirm_interval=0.1)
    schedule.looked(1.0, wrote=True, grew=False)  # the commit was not visible yet
    delays = []
    now = 1.0
    while schedule.retry is not None:
        delays.append(round(schedule.deadline() - now, 6))
        now = schedule.deadline()
        schedule.looked(now, wrote=False, grew=False)
    assert delays == [0.005, 0.02, 0.08]
    assert schedule.deadline() == pytest.approx(now + 0.1)


def test_looks_are_spaced_by_poll_interval_only_after_new_records() -> None:
    schedule = WatchSchedule(poll_interval=0.005, confirm_interval=0.1)
    schedule.looked(2.0, wrote=True, grew=True)
    assert schedule.earliest() == pytest.approx(2.005)  # a busy writer's commits batch up
    schedule.looked(2.005, wrote=True, grew=False)
    assert schedule.earliest() == pytest.approx(2.005 + FOLLOW_UP)  # a commit in progress


# -------------------------------------------------------------------- probes


async def _probe_sees_writes(probe: follow.WriteProbe, wal: Path) -> None:
    try:
        assert not await probe.wait(0.05)
        wal.write_bytes(b"x" * 10)
        assert await asyncio.wait_for(probe.wait(30), 40)
        assert not await probe.wait(0.05)  # one write, reported once
        (wal.parent / "other-file").write_bytes(b"y")
        assert not await probe.wait(0.05)  # other files do not count
        wal.write_bytes(b"z" * 10)  # same size again
        assert await asyncio.wait_for(probe.wait(30), 40)
    finally:
        probe.close()


@pytest.mark.skipif(not LINUX, reason="inotify is Linux only")
def test_inotify_probe_reports_writes_to_the_wal_only(tmp_path: Path) -> None:
    wal = tmp_path / f"{STORE_FILE}-wal"
    wal.write_bytes(b"")

    async def scenario() -> None:
        await _probe_sees_writes(InotifyProbe(tmp_path), wal)

    asyncio.run(scenario())


def test_stat_probe_reports_changes_of_the_wal(tmp_path: Path) -> None:
    wal = tmp_path / f"{STORE_FILE}-wal"
    wal.write_bytes(b"")

    async def scenario() -> None:
        probe = StatProbe(wal, 0.002)
        await asyncio.sleep(0.02)  # the next write gets a later mtime, even if coarse
        await _probe_sees_writes(probe, wal)

    asyncio.run(scenario())


class BlindProbe:
    """A probe that never sees anything (a file system that reports nothing)."""

    async def wait(self, timeout: float) -> bool:
        await asyncio.sleep(timeout)
        return False

    def close(self) -> None:
        pass


def test_a_change_no_probe_sees_is_found_by_the_confirming_look(tmp_path: Path) -> None:
    with crdtdb.open(tmp_path / "eu", region="eu") as db:

        async def scenario() -> None:
            watcher = LogWatcher(db.log_position, BlindProbe(), 0.005, confirm_interval=0.05)
            changes = watcher.changes()
            first = asyncio.ensure_future(anext(changes))
            await asyncio.sleep(0.01)
            db.put("users/a", {"v": 1})
            assert await asyncio.wait_for(first, 30) == db.log_position()
            await changes.aclose()

        asyncio.run(scenario())


# ------------------------------------------------------ the change signal


def _no_inotify(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(directory: Path) -> InotifyProbe:
        raise OSError("inotify switched off by the test")

    monkeypatch.setattr(follow, "InotifyProbe", refuse)


def test_a_commit_of_this_process_wakes_the_follower_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the kernel nor a look can see it in time: the stat probe and the confirming
    look wait a minute, so only the store's change signal can deliver the commit."""
    _no_inotify(monkeypatch)
    with crdtdb.open(tmp_path / "eu", region="eu") as db:

        async def scenario() -> None:
            probe = follow.open_probe(db.path, 60.0, db.signal)
            watcher = LogWatcher(db.log_position, probe, 60.0, confirm_interval=60.0)
            changes = watcher.changes()
            first = asyncio.ensure_future(anext(changes))
            await asyncio.sleep(0.05)
            db.put("users/a", {"v": 1})
            assert await asyncio.wait_for(first, 10) == db.log_position()
            await changes.aclose()
            watcher.close()

        asyncio.run(scenario())


def _watch_sees_another_connection(tmp_path: Path, poll_interval: float) -> None:
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as db,
        crdtdb.open(tmp_path / "eu") as other,  # its commits do not signal db's engine
    ):

        async def scenario() -> None:
            records = db.watch(poll_interval=poll_interval)
            first = asyncio.ensure_future(anext(records))
            await asyncio.sleep(0.05)
            other.put("users/b", {"v": 2})
            assert (await asyncio.wait_for(first, 10)).doc_id == "users/b"
            await records.aclose()

        asyncio.run(scenario())


@pytest.mark.skipif(not LINUX, reason="inotify is Linux only")
def test_db_watch_hears_other_connections_commits_from_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Database.watch`` is the same follower: with the stat probe and the confirming
    look a minute apart, only inotify can deliver another connection's commit in time."""
    monkeypatch.setattr(follow, "CONFIRM_INTERVAL", 60.0)
    _watch_sees_another_connection(tmp_path, poll_interval=60.0)


def test_db_watch_stats_the_wal_where_the_kernel_cannot_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "CONFIRM_INTERVAL", 60.0)
    _no_inotify(monkeypatch)
    _watch_sees_another_connection(tmp_path, poll_interval=0.01)


def test_db_watch_ends_when_the_store_is_closed(tmp_path: Path) -> None:
    db = crdtdb.open(tmp_path / "eu", region="eu")

    async def scenario() -> list[UpdateRecord]:
        async def drain() -> list[UpdateRecord]:
            return [record async for record in db.watch()]

        task = asyncio.ensure_future(drain())
        await asyncio.sleep(0.05)
        db.put("users/a", {"v": 1})
        await asyncio.sleep(0.05)
        db.close()
        return await asyncio.wait_for(task, 10)

    assert [record.doc_id for record in asyncio.run(scenario())] == ["users/a"]


# ------------------------------------------------- another process commits


COMMIT = """
import sqlite3, sys, crdtdb
path, doc_id, checkpoint = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
with crdtdb.open(path) as db:
    db.put(doc_id, {"by": "another process"})
if checkpoint:  # the next commit writes the WAL from its start again
    conn = sqlite3.connect(path + "/crdtdb.sqlite3")
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    assert busy == 0, "the checkpoint could not finish"
    conn.close()
"""


async def commit_elsewhere(directory: Path, doc_id: str, *, checkpoint: bool = False) -> None:
    """Commit one document to ``directory`` from a separate Python process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", COMMIT, str(directory), doc_id, "1" if checkpoint else "0"
    )
    try:
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def two_regions(tmp_path: Path, certs: Path, **options: float) -> AsyncIterator[Pair]:
    """eu dials us over loopback QUIC; both stores open in this process too."""
    stop = asyncio.Event()
    us_db = crdtdb.open(tmp_path / "us", region="us")
    eu_db = crdtdb.open(tmp_path / "eu", region="eu")
    membership.ensure(us_db, "eu", "active")  # us lists no peers: eu is a member all the same
    us = Replicator(us_db, region_config(tmp_path, certs, "us", [], **options))
    tasks = [asyncio.create_task(us.run(stop))]
    try:
        await wait_for(lambda: us.port is not None)
        assert us.port is not None
        peers = [PeerConfig("us", "127.0.0.1", us.port)]
        eu = Replicator(eu_db, region_config(tmp_path, certs, "eu", peers, **options))
        tasks.append(asyncio.create_task(eu.run(stop)))
        await wait_for(lambda: eu.peers["us"].connected and us.peers["eu"].connected)
        yield Pair(eu, us, eu_db, us_db)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        eu_db.close()
        us_db.close()


class Pair:
    def __init__(
        self, eu: Replicator, us: Replicator, eu_db: crdtdb.Database, us_db: crdtdb.Database
    ) -> None:
        self.eu, self.us, self.eu_db, self.us_db = eu, us, eu_db, us_db


@pytest.fixture(params=["inotify", "stat"] if LINUX else ["stat"])
def probe_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Which probe the daemons use; the confirming look is put off for a minute."""
    monkeypatch.setattr(follow, "CONFIRM_INTERVAL", 60.0)
    if request.param == "stat":

        def no_inotify(directory: Path) -> InotifyProbe:
            raise OSError("inotify switched off by the test")

        monkeypatch.setattr(follow, "InotifyProbe", no_inotify)
    yield request.param


# Slow timers: nothing but the commits under test writes to the stores while idle.
QUIET = {"heartbeat_interval": 30.0, "anti_entropy_interval": 60.0}


@pytest.mark.integration
def test_commits_of_another_process_are_shipped_promptly(
    tmp_path: Path, certs: Path, probe_kind: str
) -> None:
    async def scenario() -> None:
        async with two_regions(tmp_path, certs, **QUIET) as pair:
            watcher = pair.eu.watcher
            assert watcher is not None
            expected = InotifyProbe if probe_kind == "inotify" else StatProbe
            assert isinstance(watcher._probe, follow.SignalledProbe)  # and, for others:
            assert isinstance(watcher._probe.inner, expected)

            await commit_elsewhere(tmp_path / "eu", "users/first")
            await wait_for(lambda: pair.us_db.get("users/first") is not None)

            # A long idle spell: the watcher backs off to the (here very long)
            # confirming look and stops reading the log.
            await wait_for(lambda: watcher.schedule.retry is None)
            looks = watcher.looks
            await asyncio.sleep(1.5)
            assert watcher.looks - looks <= 2, "an idle watcher keeps reading the log"
            await commit_elsewhere(tmp_path / "eu", "users/after-idle")
            await wait_for(lambda: pair.us_db.get("users/after-idle") is not None)

            # The WAL restarts from its beginning after a checkpoint (same size).
            await commit_elsewhere(tmp_path / "eu", "users/before-ckpt", checkpoint=True)
            await wait_for(lambda: pair.us_db.get("users/before-ckpt") is not None)
            await wait_for(lambda: watcher.schedule.retry is None)
            await commit_elsewhere(tmp_path / "eu", "users/after-ckpt")
            await wait_for(lambda: pair.us_db.get("users/after-ckpt") is not None)
            assert pair.us_db.get("users/after-ckpt") == {"by": "another process"}

    asyncio.run(scenario())


# ------------------------------------------------------------ Merkle digests


def fresh_root(source: crdtdb.Database, directory: Path) -> bytes:
    """The Merkle root of a new store given every record of ``source``, flushed at once."""
    with crdtdb.open(directory, region="zz") as copy:
        ship(source, copy)
        return copy.merkle_root()


def test_refreshing_digests_in_chunks_from_a_thread_gives_the_fresh_root(
    tmp_path: Path,
) -> None:
    with crdtdb.open(tmp_path / "eu", region="eu") as db:
        with db.transaction() as tx:
            for i in range(250):
                tx.put(f"docs/{i}", {"i": i})
        with db.transaction() as tx:  # changed, no longer new: stale until refreshed
            for i in range(250):
                tx.update(f"docs/{i}", {"j": i})
        counts: list[int] = []
        failures: list[BaseException] = []

        def refresh() -> None:
            try:
                while count := db.refresh_digests(7):
                    counts.append(count)
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

        thread = threading.Thread(target=refresh)
        thread.start()
        for i in range(0, 250, 5):  # commits interleave with the chunks
            db.update(f"docs/{i}", {"again": i})
        db.delete("docs/1")
        thread.join(60)
        assert not thread.is_alive() and not failures
        assert counts and max(counts) <= 7
        while db.refresh_digests(7):
            pass
        assert db.refresh_digests() == 0
        with sqlite3.connect(tmp_path / "eu" / STORE_FILE) as conn:
            assert conn.execute("SELECT count(*) FROM docs WHERE dirty").fetchone() == (0,)
        assert db.merkle_root() == fresh_root(db, tmp_path / "copy")


def stale_digests(directory: Path) -> int:
    conn = sqlite3.connect(f"file:{directory / STORE_FILE}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM docs WHERE dirty").fetchone()[0])
    finally:
        conn.close()


def settled(pair: Pair) -> bool:
    """Both stores hold each other's records, and no anti-entropy round is under way."""
    held = [
        (a.progress().get(origin, (0, 0))[1], b.progress().get(origin, (0, 0))[1])
        for a, b in ((pair.eu_db, pair.us_db), (pair.us_db, pair.eu_db))
        for origin in (a.region,)
    ]
    sessions = [p.session for r in (pair.eu, pair.us) for p in r.protocols if p.session]
    return (
        all(mine == theirs for mine, theirs in held)
        and len(sessions) == 2
        and all(s.anti_entropy.idle for s in sessions)
    )


@pytest.mark.integration
def test_the_daemon_refreshes_digests_off_the_loop_after_a_burst(
    tmp_path: Path, certs: Path
) -> None:
    """No round runs (they are a minute apart), yet both trees end up fresh and equal."""

    async def scenario() -> None:
        async with two_regions(tmp_path, certs, **QUIET) as pair:
            # The round on connect runs, or waits a minute if the daemons' membership
            # records were still flowing then: either way none runs from here on.
            await wait_for(lambda: settled(pair))
            rounds = pair.eu.peers["us"].rounds, pair.us.peers["eu"].rounds
            with pair.eu_db.transaction() as tx:
                for i in range(300):
                    tx.put(f"bulk/{i}", {"i": i})
            await commit_elsewhere(tmp_path / "eu", "bulk/other")
            await wait_for(lambda: pair.us_db.get("bulk/other") is not None)
            await wait_for(lambda: len(pair.us_db.list("bulk")) == 301)
            await wait_for(lambda: stale_digests(tmp_path / "eu") == 0)
            await wait_for(lambda: stale_digests(tmp_path / "us") == 0)
            assert (pair.eu.peers["us"].rounds, pair.us.peers["eu"].rounds) == rounds
            root = pair.eu_db.merkle_root()
            assert pair.us_db.merkle_root() == root
            assert fresh_root(pair.eu_db, tmp_path / "copy") == root

    asyncio.run(scenario())
