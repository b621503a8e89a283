"""A session owns no storage: it emits intents, and whoever pumps it performs them.

In memory (both store kinds) the session's reads and writes are checked
directly; over QUIC, that the node performs every write, and every Merkle
digest flush, on its writer thread and never on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from crdtdb import Database
from crdtdb.digests import Digests
from crdtdb.sync import housekeeping, wire
from crdtdb.sync import session as session_module
from crdtdb.sync.session import Closed, SyncSession
from crdtdb.sync.store import (
    ApplyRecords,
    Intent,
    NoteFrontier,
    Outcome,
    RefreshDigests,
)
from crdtdb.sync.writer import StoreWriter, perform

from .fake_store import STORE_KINDS, FakeStore, Regions
from .harness.link import Link, drain, messages
from .harness.wait import wait_for
from .quic_helpers import eu_dials_us

WRITES = ("apply_remote_many", "apply_remote", "apply_diff", "note_frontier", "refresh_digests")


@pytest.fixture(params=STORE_KINDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Regions]:
    regions = Regions(request.param, tmp_path)
    yield regions
    regions.close()


class ReadOnly:
    """A store as a session may use it: reads, and Merkle reads that do not flush."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name in WRITES or name == "heartbeat":
            raise AssertionError(f"the session called {name}()")
        return getattr(self._store, name)

    def merkle_nodes(self, nodes: list[int], *, flush: bool = True) -> list[bytes]:
        assert flush is False, "the session flushed stale digests"
        result: list[bytes] = self._store.merkle_nodes(nodes, flush=False)
        return result

    def leaf_docs(self, leaf: int, *, flush: bool = True) -> list[tuple[str, bytes]]:
        assert flush is False, "the session flushed stale digests"
        result: list[tuple[str, bytes]] = self._store.leaf_docs(leaf, flush=False)
        return result


def _intents(session: SyncSession) -> list[Intent]:
    return [e for e in drain(session) if isinstance(e, Intent)]


def _exchange(a: SyncSession, b: SyncSession, now: float = 0.0) -> tuple[list[Intent], ...]:
    """Move bytes both ways until quiet, performing nothing; return each side's intents."""
    intents: tuple[list[Intent], ...] = ([], [])
    while True:
        moved = False
        for sender, receiver in ((a, b), (b, a)):
            data = sender.data_to_send(now)
            if data:
                receiver.receive(data, now)
                moved = True
        for session, emitted in zip((a, b), intents, strict=True):
            emitted.extend(_intents(session))
        if not moved:
            return intents


def _perform(session: SyncSession, store: Any, intents: list[Intent], now: float) -> None:
    for _, intent, outcome in perform(store, [(session, i) for i in intents]):
        session.performed(intent, outcome, now)


def test_records_are_acknowledged_only_once_applied(stores: Regions) -> None:
    eu, us = stores("eu", "us")
    for i in range(3):
        eu.put(f"docs/{i}", {"i": i})
    a = SyncSession(ReadOnly(eu), dialer=True, now=0.0)
    b = SyncSession(ReadOnly(us), dialer=False, now=0.0)
    _, intents = _exchange(a, b)
    applies = [i for i in intents if isinstance(i, ApplyRecords)]
    assert [len(i.records) for i in applies] == [3]
    assert any(isinstance(i, NoteFrontier) for i in intents)
    assert us.get("docs/0") is None and us.progress().get("eu") is None  # nothing written
    assert not [m for m in messages(b.data_to_send(0.0)) if isinstance(m, wire.Ack)]
    ((_, intent, outcome),) = perform(us, [(b, applies[0])])
    assert outcome == Outcome(3, (("eu", 3),))
    b.performed(intent, outcome, 0.0)
    acks = [m for m in messages(b.data_to_send(0.0)) if isinstance(m, wire.Ack)]
    assert acks == [wire.Ack("eu", 3)]
    assert us.get("docs/2") == {"i": 2}


def test_a_round_waits_for_fresh_digests_and_never_flushes_them(stores: Regions) -> None:
    eu, us = stores("eu", "us")
    for i in range(20):
        eu.put(f"docs/{i}", {"i": i})
    link = Link(eu, us)
    link.settle()
    eu.merkle_root(), us.merkle_root()  # fresh on both sides
    eu.update("docs/3", {"changed": True})  # stale here, and there once the record lands
    a = SyncSession(ReadOnly(eu), dialer=True, now=10.0)
    b = SyncSession(ReadOnly(us), dialer=False, now=10.0)
    for_eu, for_us = _exchange(a, b, 10.0)
    assert eu.stale_digests() == 1 and us.stale_digests() == 0  # the record is not applied
    _perform(a, eu, for_eu, 10.0)
    _perform(b, us, for_us, 10.0)
    assert _exchange(a, b, 10.0) == ([], [])  # the Acks
    a.start_round(20.0)
    assert drain(a) == [RefreshDigests()]  # asked, and waits: no root sent yet
    assert not [m for m in messages(a.data_to_send(20.0)) if isinstance(m, wire.MerkleHashes)]
    assert eu.stale_digests() == 1
    ((_, intent, outcome),) = perform(eu, [(a, RefreshDigests())])
    assert eu.stale_digests() == 0
    a.performed(intent, outcome, 20.0)
    root = a.data_to_send(20.0)
    assert [type(m) for m in messages(root)] == [wire.MerkleHashes]
    assert us.stale_digests() == 1  # docs/3, changed by the record applied
    b.receive(root, 20.0)
    assert drain(b) == [RefreshDigests()]  # the listener holds the root until fresh
    assert not b.data_to_send(20.0)
    ((_, intent, outcome),) = perform(us, [(b, RefreshDigests())])
    b.performed(intent, outcome, 20.0)
    assert [type(m) for m in messages(b.data_to_send(20.0))] == [wire.LeafList]
    assert eu.merkle_root() == us.merkle_root()


def test_a_refused_record_closes_the_session_and_nothing_after_it_is_applied(
    stores: Regions,
) -> None:
    eu, us = stores("eu", "us")
    eu.put("docs/bad", {"v": 1})
    eu.put("docs/good", {"v": 2})
    bad, good = eu.records_from("eu", 0)
    link = Link(stores.open("eu", "eu-empty"), us)
    link.settle()
    garbage = replace(bad, update=b"\xff\x00garbage")
    link.b.receive(wire.encode(wire.Records((garbage,))), 0.0)
    link.b.receive(wire.encode(wire.Records((good,))), 0.0)  # before the refusal is known
    assert not link.b.data_to_send(0.0)
    link.perform()
    closed = [e for e in link.events if isinstance(e, Closed)]
    assert closed and closed[0].error is not None
    assert closed[0].error.code == "invalid_update"
    assert us.get("docs/good") is None and us.get("docs/bad") is None
    assert isinstance(messages(link.b.data_to_send(0.0))[-1], wire.Error)


def test_a_peer_sending_far_past_the_window_is_refused(stores: Regions) -> None:
    eu, us = stores("eu", "us")
    eu.put("docs/a", {"v": 1})
    link = Link(eu, us)
    link.settle()
    records = wire.encode(wire.Records(tuple(eu.records_from("eu", 0))))
    for _ in range(session_module.MAX_UNAPPLIED):
        link.b.receive(records, 0.0)
    assert link.b.established
    link.b.receive(records, 0.0)
    closed = [e for e in drain(link.b) if isinstance(e, Closed)]
    assert closed and closed[0].error is not None
    assert closed[0].error.code == "unexpected_message"


class Recording(FakeStore):
    """A fake store that records its frontier notes and digest refreshes."""

    def __init__(self, region: str) -> None:
        super().__init__(region)
        self.notes: list[tuple[list[tuple[str, int, int]], list[tuple[str, int]]]] = []
        self.refreshes = 0

    def note_frontier(self, entries: Any, clocks: Any = ()) -> None:
        self.notes.append((list(entries), list(clocks)))
        super().note_frontier(entries, clocks)

    def refresh_digests(self, limit: int = 100) -> int:
        self.refreshes += 1
        return super().refresh_digests(limit)


def test_a_batch_notes_frontiers_once_and_skips_what_follows_a_refusal() -> None:
    source = FakeStore("eu")
    source.put("docs/a", {"v": 1})
    source.put("docs/b", {"v": 2})
    first, second = source.records_from("eu", 0)
    store = Recording("us")
    batch: list[tuple[str, Intent]] = [
        ("p1", NoteFrontier(entries=(("ap", 1, 10),))),
        ("p1", NoteFrontier(entries=(("ap", 2, 20),), clocks=(("ap", 5),))),
        ("p2", NoteFrontier(entries=(("ap", 1, 15),), clocks=(("ap", 7), ("eu", 3)))),
        ("p2", ApplyRecords((replace(first, update=b"\xff\xff"),))),
        ("p2", ApplyRecords((second,))),
        ("p1", ApplyRecords((first,))),
        ("p1", RefreshDigests()),
        ("p2", RefreshDigests()),
    ]
    results = perform(store, batch)
    # per peer the latest report per origin, per region the highest clock; one call
    assert store.notes == [([("ap", 2, 20), ("ap", 1, 15)], [("ap", 7), ("eu", 3)])]
    by_key = [
        (key, type(intent).__name__, outcome.error is None) for key, intent, outcome in results
    ]
    assert by_key == [
        ("p1", "NoteFrontier", True),
        ("p1", "NoteFrontier", True),
        ("p2", "NoteFrontier", True),
        ("p2", "ApplyRecords", False),  # refused: p2's later intents are not performed
        ("p1", "ApplyRecords", True),
        ("p1", "RefreshDigests", True),
    ]
    assert results[4][2] == Outcome(1, (("eu", 1),))
    assert store.get("docs/a") == {"v": 1} and store.get("docs/b") is None
    assert store.refreshes == 2 and store.stale_digests() == 0  # one refresh, to the end


def test_the_writer_performs_a_batch_on_its_own_thread() -> None:
    source = FakeStore("eu")
    for i in range(3):
        source.put(f"docs/{i}", {"i": i})
    threads: list[str] = []

    class Watched(FakeStore):
        def apply_remote_many(self, records: Any, chain: Any = ()) -> int:
            threads.append(threading.current_thread().name)
            return super().apply_remote_many(records, chain)

    store = Watched("us")
    done: list[tuple[str, Outcome, str]] = []

    async def scenario() -> None:
        writer: StoreWriter[str] = StoreWriter(
            store,
            lambda key, _, outcome: done.append((key, outcome, threading.current_thread().name)),
        )
        for record in source.records_from("eu", 0):
            writer.submit("peer", ApplyRecords((record,)))
        task = asyncio.create_task(writer.run())
        await wait_for(lambda: len(done) == 3, timeout=10)
        task.cancel()
        await writer.close()
        assert writer.batches == 1  # all three queued before it ran: one batch

    asyncio.run(scenario())
    assert threads and all(name.startswith("crdtdb-writer") for name in threads)
    assert [outcome.held for _, outcome, _ in done] == [(("eu", 3),)] * 3
    assert {name for *_, name in done} == {threading.current_thread().name}  # on the loop
    assert store.get("docs/2") == {"i": 2}


@pytest.mark.integration
def test_the_node_writes_on_its_writer_thread_and_never_flushes_on_the_loop(
    tmp_path: Path, certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replication's store writes run on the writer thread; digests are never flushed by a
    read (the session's reads do not flush), and on the event loop only in the node's
    small paced background chunks."""
    seen: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
    watch = ("apply_remote_many", "apply_diff", "note_frontier", "heartbeat")
    # A read that flushes stale digests goes through the digests facet's ``ensure``.
    targets: list[tuple[type[object], str, str]] = [
        (Database, name, name) for name in (*watch, "refresh_digests")
    ]
    targets.append((Digests, "ensure", "_ensure_digests"))
    for owner, attribute, name in targets:
        original = getattr(owner, attribute)

        def watched(self: Any, *args: Any, _call: Any = original, _name: str = name) -> Any:
            seen.setdefault(_name, []).append((threading.current_thread().name, args))
            return _call(self, *args)

        monkeypatch.setattr(owner, attribute, watched)

    async def scenario() -> None:
        async with eu_dials_us(tmp_path, certs) as (eu, us):
            with eu.db.transaction() as tx:
                for i in range(200):
                    tx.put(f"docs/{i}", {"i": i})
            us.db.put("docs/us", {"from": "us"})
            await wait_for(lambda: us.db.get("docs/199") is not None)
            for i in range(0, 200, 5):
                eu.db.update(f"docs/{i}", {"again": True})
            await wait_for(lambda: eu.db.get("docs/us") is not None)
            await wait_for(lambda: us.db.get("docs/195") == {"i": 195, "again": True})
            rounds = eu.replicator.peers["us"].rounds
            await wait_for(lambda: eu.replicator.peers["us"].rounds >= rounds + 2)
            calls = {name: list(made) for name, made in seen.items()}
            await wait_for(lambda: eu.db.merkle_root() == us.db.merkle_root())  # flushes here
        loop = threading.current_thread().name
        assert {"apply_remote_many", "note_frontier", "heartbeat"} <= set(calls)
        for name in watch:
            made = calls.get(name, [])
            assert all(t.startswith("crdtdb-writer") for t, _ in made), (name, made)
        assert "_ensure_digests" not in calls  # no read flushed the tree
        refreshes = calls["refresh_digests"]
        assert any(t.startswith("crdtdb-writer") for t, _ in refreshes)
        assert all(args == (housekeeping.DIGEST_CHUNK_BUSY,) for t, args in refreshes if t == loop)

    asyncio.run(scenario())
