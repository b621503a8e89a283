"""The sans-IO sync session, driven in memory between region stores.

Every test runs against SQLite stores (``crdtdb.Database``) and in-memory
ones (``tests/fake_store.py``): the session reads and asks for writes through
the protocols of ``crdtdb.sync.store`` only. Anti-entropy rounds are tested in
``test_rounds.py``.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from crdtdb import merkle
from crdtdb.sync import wire
from crdtdb.sync.session import (
    BULK_LANES,
    Closed,
    Established,
    RecordsReceived,
    SessionOptions,
    SyncSession,
)

from .fake_store import STORE_KINDS, Regions, open_store
from .harness.link import Link, drain, messages


@pytest.fixture(params=STORE_KINDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Regions]:
    regions = Regions(request.param, tmp_path)
    yield regions
    regions.close()


def test_handshake_then_delta_push(stores: Regions) -> None:
    eu, us = stores("eu", "us")
    eu.put("users/a", {"v": 1})
    link = Link(eu, us)
    link.settle()
    assert link.open
    assert [e for e in link.events if isinstance(e, Established)]
    assert us.get("users/a") == {"v": 1}
    eu.put("users/b", {"v": 2})
    us.put("users/c", {"v": 3})
    link.a.local_changed()
    link.b.local_changed()
    link.settle()
    assert eu.get("users/c") == {"v": 3} and us.get("users/b") == {"v": 2}
    from_us = [e for e in link.events if isinstance(e, RecordsReceived) and e.peer == "us"]
    assert sum(e.received for e in from_us) == 1  # us#1 only: eu's records are not echoed
    link.advance(1.0)  # the frontier reports tell each side what the other holds
    link.settle()
    assert link.b.peer_holds()["eu"] == 2 and link.a.peer_holds()["us"] == 1


def test_chain_relays_records(stores: Regions) -> None:
    eu, us, ap = stores("eu", "us", "ap")
    left, right = Link(eu, us), Link(us, ap)  # eu and ap never talk
    eu.put("users/a", {"from": "eu"})
    ap.put("users/b", {"from": "ap"})
    for _ in range(5):
        for link in (left, right):
            link.a.local_changed()
            link.b.local_changed()
            link.settle()
    assert ap.get("users/a") == {"from": "eu"} and eu.get("users/b") == {"from": "ap"}
    assert eu.merkle_root() == us.merkle_root() == ap.merkle_root()


def test_delete_only_divergence_is_repaired(stores: Regions) -> None:
    eu, us = stores("eu", "us")
    eu.put("docs/a", {"x": 1, "y": 2})
    us.apply_diff("docs/a", eu.diff("docs/a"))
    # a delete that arrives only as content: same state vectors, different delete sets
    with stores.open("ap", "eu2") as side:
        side.apply_diff("docs/a", eu.diff("docs/a"))
        with side.transaction() as tx:
            del tx.doc("docs/a")["x"]
        eu.apply_diff("docs/a", side.diff("docs/a", eu.state_vector("docs/a")))
    assert eu.get("docs/a") == {"y": 2} and us.get("docs/a") == {"x": 1, "y": 2}
    link = Link(eu, us)
    link.settle()
    assert us.get("docs/a") == {"y": 2}
    assert eu.digest("docs/a") == us.digest("docs/a")


def test_garbage_closes_the_session_and_changes_nothing(stores: Regions) -> None:
    (us,) = stores("us")
    session = SyncSession(us, dialer=False, now=0.0)
    session.receive(b"\x00garbage that is not a frame" * 3, 0.0)
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    assert isinstance(events[-1], Closed) and events[-1].error is not None
    assert not session.established
    assert us.info()["log_records"] == 0
    out = wire.FrameDecoder()
    out.feed(session.data_to_send(0.0))
    messages = []
    while (message := out.next_message()) is not None:
        messages.append(message)
    assert isinstance(messages[-1], wire.Error)


def test_records_before_handshake_are_refused(stores: Regions) -> None:
    eu, us = stores("eu", "us")
    eu.put("docs/a", {"x": 1})
    session = SyncSession(us, dialer=False, now=0.0)
    session.receive(wire.encode(wire.Records(tuple(eu.changes()))), 0.0)
    assert session.state == "closed"
    assert us.get("docs/a") is None


def test_peer_claiming_our_region_is_refused(stores: Regions) -> None:
    (us,) = stores("us")
    session = SyncSession(us, dialer=False, now=0.0)
    session.receive(wire.encode(wire.Hello(wire.PROTOCOL_VERSION, "us", b"n" * 32)), 0.0)
    assert session.state == "closed"


def test_handshake_timeout(stores: Regions) -> None:
    (us,) = stores("us")
    session = SyncSession(us, dialer=False, now=0.0)
    timer = session.get_timer()
    assert timer is not None
    session.handle_timer(timer)
    assert session.state == "closed"


def test_window_bounds_unacknowledged_batches(stores: Regions) -> None:
    eu, us = stores("eu", "us")
    with eu.transaction() as tx:
        for i in range(100):
            tx.put(f"docs/{i}", {"i": i})
    options = SessionOptions(batch_records=10, window=2)
    link = Link(eu, us, options=options)
    link.transfer()  # hellos
    link.transfer()  # frontiers
    data = link.a.data_to_send(0.0)
    decoder = wire.FrameDecoder()
    decoder.feed(data)
    batches = []
    while (message := decoder.next_message()) is not None:
        if isinstance(message, wire.Records):
            batches.append(message)
    assert len(batches) <= 2  # no more than the window in flight
    link.b.receive(data, 0.0)
    link.settle()
    assert us.info()["live_documents"] == 100


class Partitions(RuleBasedStateMachine):
    """Random edits, connections made and cut mid-transfer; healed, all converge."""

    kind = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="crdtdb-session-"))
        self.dbs: dict[str, Any] = {}
        self.links: dict[tuple[str, str], Link] = {}
        self.rng = random.Random(0)

    @initialize()
    def start(self) -> None:
        for region in ("eu", "us", "ap"):
            self.dbs[region] = open_store(self.kind, self.tmp / region, region)

    def teardown(self) -> None:
        for db in self.dbs.values():
            db.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(
        region=st.sampled_from(["eu", "us", "ap"]),
        doc=st.integers(0, 5),
        key=st.sampled_from(["a", "b", "c"]),
        value=st.integers(0, 9),
        delete=st.booleans(),
    )
    def edit(self, region: str, doc: int, key: str, value: int, delete: bool) -> None:
        if delete:
            self.dbs[region].delete(f"d/{doc}")
        else:
            self.dbs[region].update(f"d/{doc}", {key: value})
        for link in self.links.values():
            link.a.local_changed()
            link.b.local_changed()

    def _link(self, pair: tuple[str, str]) -> Link:
        # A low large_bytes sends many records and diffs on bulk lanes, which
        # arrive in any order relative to the main lane.
        large = self.rng.choice([16, 30, 64 * 1024])
        return Link(
            self.dbs[pair[0]],
            self.dbs[pair[1]],
            rng=self.rng,
            options=SessionOptions(large_bytes=large),
        )

    @rule(pair=st.sampled_from([("eu", "us"), ("us", "ap"), ("eu", "ap")]))
    def connect(self, pair: tuple[str, str]) -> None:
        if pair not in self.links:
            self.links[pair] = self._link(pair)

    @rule(pair=st.sampled_from([("eu", "us"), ("us", "ap"), ("eu", "ap")]), steps=st.integers(1, 4))
    def deliver_some(self, pair: tuple[str, str], steps: int) -> None:
        link = self.links.get(pair)
        if link is not None:
            for _ in range(steps):
                link.transfer()

    @rule(pair=st.sampled_from([("eu", "us"), ("us", "ap"), ("eu", "ap")]))
    def cut(self, pair: tuple[str, str]) -> None:
        self.links.pop(pair, None)  # in-flight bytes are lost

    @rule()
    def heal_and_check(self) -> None:
        self.links = {}
        for pair in (("eu", "us"), ("us", "ap"), ("eu", "ap")):
            self.links[pair] = self._link(pair)
        for _ in range(3):
            for link in self.links.values():
                link.settle()
                link.round()
        for link in self.links.values():
            assert link.open, link.events
        roots = {db.merkle_root() for db in self.dbs.values()}
        assert len(roots) == 1
        views = [{f"d/{i}": db.get(f"d/{i}") for i in range(6)} for db in self.dbs.values()]
        assert views[0] == views[1] == views[2]
        assert roots != {merkle.ZERO} or all(v is None for v in views[0].values())


class FakePartitions(Partitions):
    kind = "fake"


for machine in (Partitions, FakePartitions):
    machine.TestCase.settings = settings(
        max_examples=25,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
TestPartitions = Partitions.TestCase
TestFakePartitions = FakePartitions.TestCase


def test_a_silent_peer_is_dropped_but_gossip_keeps_a_quiet_link_open(stores: Regions) -> None:
    eu, us = stores("eu", "us")
    link = Link(eu, us)
    link.settle()
    for _ in range(20):  # 20 s of no writes: the frontier reports keep both sides hearing
        link.advance(1.0)
        link.settle()
    assert link.open
    link.advance(6.0)  # then nothing gets through for longer than the silence timeout
    assert not link.a.established and not link.b.established
    closed = [e for e in (link.a.next_event(), link.b.next_event()) if isinstance(e, Closed)]
    assert closed and all("silent" in e.reason for e in closed)


# ------------------------------------------------------------------ lanes


def test_a_large_record_travels_beside_the_small_ones(stores: Regions) -> None:
    """A big record goes on a bulk lane: records written after it need not wait for it."""
    eu, us = stores("eu", "us")
    link = Link(eu, us)
    link.settle()
    eu.put("big/1", {"text": "x" * 300_000})
    eu.put("small/1", {"v": 1})
    eu.put("small/2", {"v": 2})
    link.a.local_changed()
    main = link.a.data_to_send(0.0)
    lanes = link.a.lanes_to_send()
    main_docs = [r.doc_id for m in messages(main) if isinstance(m, wire.Records) for r in m.records]
    assert main_docs == ["small/1", "small/2"]
    assert len(lanes) == 1 and 1 <= lanes[0][0] <= BULK_LANES
    (bulk,) = messages(lanes[0][1], bulk=True)
    assert isinstance(bulk, wire.Records) and [r.doc_id for r in bulk.records] == ["big/1"]
    link.b.receive(main, 0.0)  # the small ones arrive first, past the big one's seq
    link.perform()
    assert us.get("small/2") == {"v": 2} and us.get("big/1") is None
    assert us.progress()["eu"][1] == 0  # contiguous: seq 1 (the big one) is still missing
    link.b.receive(lanes[0][1], 0.0, lanes[0][0])
    link.perform()
    assert us.get("big/1") == {"text": "x" * 300_000}
    assert us.progress()["eu"][1] == 3
    link.settle()
    assert link.open and eu.merkle_root() == us.merkle_root()


def test_a_large_diff_goes_on_a_bulk_lane(stores: Regions) -> None:
    eu, us = stores("eu", "us")
    eu.put("big/1", {"text": "y" * 200_000})
    eu.put("small/1", {"v": 1})
    eu.compact(retention_s=0)  # the records are gone: only anti-entropy can repair
    link = Link(eu, us)
    link.settle()
    sent_on_lanes: list[wire.Message] = []
    lanes_to_send = link.a.lanes_to_send

    def spy() -> list[tuple[int, bytes]]:
        out = lanes_to_send()
        sent_on_lanes.extend(m for _, data in out for m in messages(data, bulk=True))
        return out

    link.a.lanes_to_send = spy  # type: ignore[method-assign]
    link.advance(2.0)  # the records stopped flowing: the round due runs
    link.settle()
    diffs = [d for m in sent_on_lanes if isinstance(m, wire.Diffs) for d in m.docs]
    assert [doc_id for doc_id, _ in diffs] == ["big/1"]
    assert us.get("big/1") == {"text": "y" * 200_000} and us.get("small/1") == {"v": 1}
    assert eu.merkle_root() == us.merkle_root()


def test_a_record_over_the_main_lane_limit_replicates(stores: Regions) -> None:
    """One update above 16 MiB (the main lane's message limit) once could not be sent."""
    eu, us = stores("eu", "us")
    text = "z" * (wire.MAX_MESSAGE_BYTES + 1024)
    eu.put("huge/1", {"text": text})
    link = Link(eu, us)
    link.settle()
    assert link.open
    assert us.get("huge/1") == {"text": text}


def test_bulk_lane_abuse_is_refused(stores: Regions) -> None:
    eu, us = stores("eu", "us")
    eu.put("docs/a", {"x": 1})
    records = wire.encode(wire.Records(tuple(eu.changes())))
    # before the handshake: refused, nothing applied
    early = SyncSession(us, dialer=False, now=0.0)
    early.receive(records, 0.0, 1)
    assert early.state == "closed" and us.get("docs/a") is None
    # after it: only Records and Diffs, and only BULK_LANES lanes
    for lane, data, code in (
        (1, wire.encode(wire.Frontier((), 0)), "unexpected_message"),
        (BULK_LANES + 1, records, "too_many_streams"),
    ):
        link = Link(eu, us)
        link.settle()
        assert link.open
        link.b.receive(data, 0.0, lane)
        closed = [e for e in link.events + drain(link.b) if isinstance(e, Closed)]
        assert closed and closed[-1].error is not None, code
        assert getattr(closed[-1].error, "code", None) == code
    assert us.get("docs/a") == {"x": 1}  # only what the honest links delivered
