"""The sans-IO sync session, driven in memory between real region stores."""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

import crdtdb
from crdtdb import merkle
from crdtdb.sync import wire
from crdtdb.sync.session import (
    BULK_LANES,
    AntiEntropyDone,
    Closed,
    Established,
    RecordsReceived,
    SessionOptions,
    SyncSession,
)

from .harness.link import Link


def _stores(tmp_path: Path, *regions: str) -> list[crdtdb.Database]:
    return [crdtdb.open(tmp_path / r, region=r) for r in regions]


def test_handshake_then_delta_push(tmp_path: Path) -> None:
    eu, us = _stores(tmp_path, "eu", "us")
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


def test_chain_relays_records(tmp_path: Path) -> None:
    eu, us, ap = _stores(tmp_path, "eu", "us", "ap")
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


def test_anti_entropy_repairs_what_records_cannot(tmp_path: Path) -> None:
    """Content whose records were compacted away reaches the peer as diffs."""
    eu, us = _stores(tmp_path, "eu", "us")
    with eu.transaction() as tx:
        for i in range(50):
            tx.put(f"docs/{i}", {"i": i})
    eu.update("docs/7", {"extra": True})
    assert eu.compact(retention_s=0) == 50  # only the newest record is left in eu's log
    us.put("docs/9", {"theirs": True})
    link = Link(eu, us)
    link.settle()  # handshake and records: only docs/7's last record can travel
    assert us.get("docs/3") is None
    link.advance(0)  # the round due on connect waits: records just flowed
    link.settle()
    assert not [e for e in link.events if isinstance(e, AntiEntropyDone)]
    link.advance(2.0)  # the flow has stopped: the round runs and repairs the rest
    link.settle()
    done = [e for e in link.events if isinstance(e, AntiEntropyDone)]
    assert done and sum(e.repaired_docs for e in done) >= 50
    assert eu.merkle_root() == us.merkle_root()
    assert us.get("docs/3") == {"i": 3}
    assert us.get("docs/7") == {"i": 7, "extra": True}
    assert eu.get("docs/9") == us.get("docs/9")


def test_delete_only_divergence_is_repaired(tmp_path: Path) -> None:
    eu, us = _stores(tmp_path, "eu", "us")
    eu.put("docs/a", {"x": 1, "y": 2})
    us.apply_diff("docs/a", eu.diff("docs/a"))
    # a delete that arrives only as content: same state vectors, different delete sets
    with crdtdb.open(tmp_path / "eu2", region="ap") as side:
        side.apply_diff("docs/a", eu.diff("docs/a"))
        with side.transaction() as tx:
            del tx.doc("docs/a")["x"]
        eu.apply_diff("docs/a", side.diff("docs/a", eu.state_vector("docs/a")))
    assert eu.get("docs/a") == {"y": 2} and us.get("docs/a") == {"x": 1, "y": 2}
    link = Link(eu, us)
    link.settle()
    assert us.get("docs/a") == {"y": 2}
    assert eu.digest("docs/a") == us.digest("docs/a")


def test_round_in_sync_costs_one_exchange(tmp_path: Path) -> None:
    eu, us = _stores(tmp_path, "eu", "us")
    eu.put("docs/a", {"x": 1})
    link = Link(eu, us)
    link.settle()
    before = link.bytes
    link.round()
    done = [e for e in link.events if isinstance(e, AntiEntropyDone)]
    assert done[-1].repaired_docs == 0 and done[-1].messages <= 2
    assert link.bytes - before < 200


def test_garbage_closes_the_session_and_changes_nothing(tmp_path: Path) -> None:
    (us,) = _stores(tmp_path, "us")
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


def test_records_before_handshake_are_refused(tmp_path: Path) -> None:
    eu, us = _stores(tmp_path, "eu", "us")
    eu.put("docs/a", {"x": 1})
    session = SyncSession(us, dialer=False, now=0.0)
    session.receive(wire.encode(wire.Records(tuple(eu.changes()))), 0.0)
    assert session.state == "closed"
    assert us.get("docs/a") is None


def test_peer_claiming_our_region_is_refused(tmp_path: Path) -> None:
    (us,) = _stores(tmp_path, "us")
    session = SyncSession(us, dialer=False, now=0.0)
    session.receive(wire.encode(wire.Hello(wire.PROTOCOL_VERSION, "us", b"n" * 32)), 0.0)
    assert session.state == "closed"


def test_handshake_timeout(tmp_path: Path) -> None:
    (us,) = _stores(tmp_path, "us")
    session = SyncSession(us, dialer=False, now=0.0)
    timer = session.get_timer()
    assert timer is not None
    session.handle_timer(timer)
    assert session.state == "closed"


def test_window_bounds_unacknowledged_batches(tmp_path: Path) -> None:
    from crdtdb.sync.session import SessionOptions

    eu, us = _stores(tmp_path, "eu", "us")
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

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="crdtdb-session-"))
        self.dbs: dict[str, crdtdb.Database] = {}
        self.links: dict[tuple[str, str], Link] = {}
        self.rng = random.Random(0)

    @initialize()
    def start(self) -> None:
        for region in ("eu", "us", "ap"):
            self.dbs[region] = crdtdb.open(self.tmp / region, region=region)

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


Partitions.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPartitions = Partitions.TestCase


def test_a_silent_peer_is_dropped_but_gossip_keeps_a_quiet_link_open(tmp_path: Path) -> None:
    eu, us = _stores(tmp_path, "eu", "us")
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


def test_round_sends_large_repairs_in_chunks(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Lists, wants, answers, fills and diffs go in bounded messages, never one over the limit."""
    from crdtdb.sync import session as session_module

    monkeypatch.setattr(session_module, "CHUNK_BYTES", 4_000)
    eu, us = _stores(tmp_path, "eu", "us")
    with eu.transaction() as tx:
        for i in range(30):
            tx.put(f"docs/{i}", {"text": f"{i}-" + "x" * 1_500})
    eu.put("docs/last", {"v": 1})
    eu.compact(retention_s=0)  # the records are gone: only a round can carry the content
    link = Link(eu, us)
    link.settle()
    sizes: list[int] = []
    original = SyncSession._send

    def recording(self: SyncSession, message: wire.Message) -> None:
        if isinstance(message, (wire.Diffs, wire.LeafList, wire.Wants, wire.Answers, wire.Fills)):
            sizes.append(len(wire.encode(message)))
        original(self, message)

    monkeypatch.setattr(SyncSession, "_send", recording)
    link.round()
    assert us.get("docs/29") == {"text": "29-" + "x" * 1_500}
    assert eu.merkle_root() == us.merkle_root()
    assert len(sizes) > 5 and max(sizes) < 4_000 + 2_000  # one diff may top a chunk up


def test_round_costs_bytes_in_proportion_to_the_differences(tmp_path: Path) -> None:
    """Sliced hashes and implicit node ids: a few differing documents cost a few KB."""
    eu, us = _stores(tmp_path, "eu", "us")
    with eu.transaction() as tx:
        for i in range(2_000):
            tx.put(f"docs/{i}", {"i": i})
    link = Link(eu, us)
    link.settle()
    link.round()
    assert eu.merkle_root() == us.merkle_root()
    for i in range(5):
        eu.update(f"docs/{i * 97}", {"changed": True})
    eu.records_from = lambda *args, **kwargs: []  # type: ignore[method-assign]  # no push
    fresh = Link(eu, us)
    fresh.settle()
    before = fresh.bytes
    fresh.round()
    repaired = sum(e.repaired_docs for e in fresh.events if isinstance(e, AntiEntropyDone))
    assert repaired == 5
    assert eu.merkle_root() == us.merkle_root()
    assert us.get("docs/97") == {"i": 97, "changed": True}
    # 5 paths of 3 levels by 16 and 2 by 4, 3-byte hashes (~1 KB), plus 5 listed leaves,
    # wants and diffs; full 32-byte hashes with node ids would cost ~12 KB
    assert fresh.bytes - before < 1_800, fresh.bytes - before


# ------------------------------------------------------------------ lanes


def _messages(data: bytes, *, bulk: bool = False) -> list[wire.Message]:
    limit = wire.MAX_BULK_MESSAGE_BYTES if bulk else wire.MAX_MESSAGE_BYTES
    decoder = wire.FrameDecoder(max_message_bytes=limit)
    decoder.feed(data)
    messages = []
    while (message := decoder.next_message()) is not None:
        messages.append(message)
    return messages


def test_a_large_record_travels_beside_the_small_ones(tmp_path: Path) -> None:
    """A big record goes on a bulk lane: records written after it need not wait for it."""
    eu, us = _stores(tmp_path, "eu", "us")
    link = Link(eu, us)
    link.settle()
    eu.put("big/1", {"text": "x" * 300_000})
    eu.put("small/1", {"v": 1})
    eu.put("small/2", {"v": 2})
    link.a.local_changed()
    main = link.a.data_to_send(0.0)
    lanes = link.a.lanes_to_send()
    main_docs = [
        r.doc_id for m in _messages(main) if isinstance(m, wire.Records) for r in m.records
    ]
    assert main_docs == ["small/1", "small/2"]
    assert len(lanes) == 1 and 1 <= lanes[0][0] <= BULK_LANES
    (bulk,) = _messages(lanes[0][1], bulk=True)
    assert isinstance(bulk, wire.Records) and [r.doc_id for r in bulk.records] == ["big/1"]
    link.b.receive(main, 0.0)  # the small ones arrive first, past the big one's seq
    assert us.get("small/2") == {"v": 2} and us.get("big/1") is None
    assert us.progress()["eu"][1] == 0  # contiguous: seq 1 (the big one) is still missing
    link.b.receive(lanes[0][1], 0.0, lanes[0][0])
    assert us.get("big/1") == {"text": "x" * 300_000}
    assert us.progress()["eu"][1] == 3
    link.settle()
    assert link.open and eu.merkle_root() == us.merkle_root()


def test_a_large_diff_goes_on_a_bulk_lane(tmp_path: Path) -> None:
    eu, us = _stores(tmp_path, "eu", "us")
    eu.put("big/1", {"text": "y" * 200_000})
    eu.put("small/1", {"v": 1})
    eu.compact(retention_s=0)  # the records are gone: only anti-entropy can repair
    link = Link(eu, us)
    link.settle()
    sent_on_lanes = []
    lanes_to_send = link.a.lanes_to_send

    def spy() -> list[tuple[int, bytes]]:
        out = lanes_to_send()
        sent_on_lanes.extend(m for _, data in out for m in _messages(data, bulk=True))
        return out

    link.a.lanes_to_send = spy  # type: ignore[method-assign]
    link.advance(2.0)  # the records stopped flowing: the round due runs
    link.settle()
    diffs = [d for m in sent_on_lanes if isinstance(m, wire.Diffs) for d in m.docs]
    assert [doc_id for doc_id, _ in diffs] == ["big/1"]
    assert us.get("big/1") == {"text": "y" * 200_000} and us.get("small/1") == {"v": 1}
    assert eu.merkle_root() == us.merkle_root()


def test_a_record_over_the_main_lane_limit_replicates(tmp_path: Path) -> None:
    """One update above 16 MiB (the main lane's message limit) once could not be sent."""
    eu, us = _stores(tmp_path, "eu", "us")
    text = "z" * (wire.MAX_MESSAGE_BYTES + 1024)
    eu.put("huge/1", {"text": text})
    link = Link(eu, us)
    link.settle()
    assert link.open
    assert us.get("huge/1") == {"text": text}


def test_bulk_lane_abuse_is_refused(tmp_path: Path) -> None:
    eu, us = _stores(tmp_path, "eu", "us")
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
        closed = [e for e in link.events + _drain(link.b) if isinstance(e, Closed)]
        assert closed and closed[-1].error is not None, code
        assert getattr(closed[-1].error, "code", None) == code
    assert us.get("docs/a") == {"x": 1}  # only what the honest links delivered


def _drain(session: SyncSession) -> list[object]:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


class _NoLog:
    """A store whose log the session cannot read: only anti-entropy can repair."""

    def __init__(self, db: crdtdb.Database) -> None:
        self._db = db

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)

    def records_from(self, origin: str, after_seq: int, limit: int = 1000) -> list[object]:
        return []


def test_a_long_leaf_listing_goes_in_chunks_each_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crdtdb.sync.session as session_module

    monkeypatch.setattr(session_module, "CHUNK_BYTES", 2_000)
    monkeypatch.setattr(session_module, "LIST_DOCS", 100)
    eu, us = _stores(tmp_path, "eu", "us")
    with eu.transaction() as tx:
        for i in range(400):
            tx.put(f"docs/{i}", {"i": i})
    with us.transaction() as tx:  # both sides list many documents, whichever lists
        for i in range(400):
            tx.put(f"ours/{i}", {"i": i})
    link = Link(_NoLog(eu), _NoLog(us))  # type: ignore[arg-type]
    sent: list[wire.Message] = []
    for session in (link.a, link.b):
        data_to_send = session.data_to_send

        def spy(now: float, original=data_to_send) -> bytes:  # type: ignore[no-untyped-def]
            data = original(now)
            sent.extend(_messages(data))
            return data

        session.data_to_send = spy  # type: ignore[method-assign]
    link.settle()
    link.round()
    listings = [m for m in sent if isinstance(m, wire.LeafList)]
    assert len(listings) > 3 and [m.final for m in listings].count(True) == 1
    assert listings[-1].final
    assert all(len(wire.encode(m)) < 4 * 2_000 and m.entries() <= 101 for m in listings)
    answers = [m for m in sent if isinstance(m, wire.Wants)]
    assert len(answers) == len(listings)  # one answer per listing
    assert eu.merkle_root() == us.merkle_root()
    assert us.get("docs/399") == {"i": 399} and eu.get("ours/0") == {"i": 0}
    assert link.a.rounds == 1 and link.b.rounds == 1


# ------------------------------------------------------------------ anti-entropy, protocol 3


def _spy(link: Link) -> list[tuple[str, wire.Message]]:
    """Record every main-lane message each side sends, as (sender "a"/"b", message)."""
    sent: list[tuple[str, wire.Message]] = []
    for name, session in (("a", link.a), ("b", link.b)):
        data_to_send = session.data_to_send

        def spy(now: float, original=data_to_send, name=name) -> bytes:  # type: ignore[no-untyped-def]
            data = original(now)
            sent.extend((name, m) for m in _messages(data))
            return data

        session.data_to_send = spy  # type: ignore[method-assign]
    return sent


def _synced_pair(tmp_path: Path, count: int) -> tuple[crdtdb.Database, crdtdb.Database]:
    eu, us = _stores(tmp_path, "eu", "us")
    with eu.transaction() as tx:
        for i in range(count):
            tx.put(f"docs/{i}", {"i": i})
    link = Link(eu, us)
    link.settle()
    assert eu.merkle_root() == us.merkle_root()
    return eu, us


def test_sparse_differences_descend_by_quads_dense_ones_by_sixteen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crdtdb.sync import session as session_module

    eu, us = _synced_pair(tmp_path, 3_000)
    eu.update("docs/5", {"changed": True})  # one path: the last step goes four ways
    link = Link(_NoLog(eu), _NoLog(us))  # type: ignore[arg-type]
    link.settle()
    sent = _spy(link)
    link.round()
    fanouts = [m.fanout for _, m in sent if isinstance(m, wire.MerkleHashes) and m.parents]
    assert fanouts == [16, 16, 16, 4, 4]  # levels 1-3, then quads and their leaves
    assert us.get("docs/5") == {"i": 5, "changed": True}
    with eu.transaction() as tx:  # a third of the documents: a fifth of the level-3 nodes
        for i in range(0, 3_000, 3):
            tx.update(f"docs/{i}", {"dense": True})
    monkeypatch.setattr(session_module, "QUAD_DENSITY", 0.1)  # ... counts as dense below 10%
    sent.clear()
    link.round()
    fanouts = [m.fanout for _, m in sent if isinstance(m, wire.MerkleHashes) and m.parents]
    assert fanouts == [16, 16, 16, 16]
    assert eu.merkle_root() == us.merkle_root()


def test_round_names_no_document_in_sync_and_moves_only_what_is_lacking(tmp_path: Path) -> None:
    eu, us = _synced_pair(tmp_path, 500)
    eu.update("docs/1", {"eu": True})  # eu has more: eu's diff, no ask back
    us.update("docs/2", {"us": True})  # us has more: an ask, filled
    eu.put("docs/new", {"only": "eu"})
    us.put("docs/mine", {"only": "us"})
    link = Link(_NoLog(eu), _NoLog(us))  # type: ignore[arg-type]
    link.settle()
    sent = _spy(link)
    link.round()
    assert eu.merkle_root() == us.merkle_root()
    assert eu.get("docs/2") == {"i": 2, "us": True} and us.get("docs/1") == {"i": 1, "eu": True}
    assert eu.get("docs/mine") == {"only": "us"} and us.get("docs/new") == {"only": "eu"}
    kinds = [type(m).__name__ for _, m in sent]
    assert {"LeafList", "Wants", "Answers", "Fills"} <= set(kinds)
    wants = [w for _, m in sent if isinstance(m, wire.Wants) for w in m.wants]
    answers = [a for _, m in sent if isinstance(m, wire.Answers) for a in m.answers]
    # the lister's new document is asked for whole (no state vector), the others by position
    assert sorted(bool(sv) for _, sv, _, _ in wants) == [False, True, True]
    named = [name for name, *_ in answers if name]
    assert named == ["docs/new"] or named == ["docs/mine"]
    asks = [ask for *_, ask in answers if ask is not None]
    assert len(asks) == 1  # only the document the lister lacks something of
    named_diffs = [d for _, m in sent if isinstance(m, wire.Diffs) for d, _ in m.docs]
    assert named_diffs == ["docs/mine"] or named_diffs == ["docs/new"]  # the asker's own new doc


def test_a_delete_set_the_lister_already_holds_is_not_sent_back(tmp_path: Path) -> None:
    eu, us = _synced_pair(tmp_path, 50)
    for doc_id, db in (("docs/3", eu), ("docs/4", us)):  # a delete only one side holds
        with crdtdb.open(tmp_path / f"side-{doc_id[-1]}", region="ap") as side:
            side.apply_diff(doc_id, db.diff(doc_id))
            with side.transaction() as tx:
                del tx.doc(doc_id)["i"]
            db.apply_diff(doc_id, side.diff(doc_id, db.state_vector(doc_id)))
    link = Link(_NoLog(eu), _NoLog(us))  # type: ignore[arg-type]
    link.settle()
    sent = _spy(link)
    link.round()
    for doc_id in ("docs/3", "docs/4"):  # the field is gone on both sides (an empty doc)
        assert eu.get(doc_id) == us.get(doc_id) and "i" not in (us.get(doc_id) or {})
    assert eu.merkle_root() == us.merkle_root()
    fills = [f for _, m in sent if isinstance(m, wire.Fills) for f in m.diffs]
    assert len(fills) == 2 and sorted(bool(f) for f in fills) == [False, True]


def test_an_id_hash_clash_never_applies_a_diff_to_another_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two documents, one per side, in one leaf and with the same short id hash."""
    from crdtdb.sync import session as session_module

    by_leaf: dict[int, str] = {}
    for i in range(100_000):
        doc_id = f"docs/{i}"
        first = by_leaf.setdefault(merkle.leaf_of(doc_id), doc_id)
        if first != doc_id:
            break
    ours, theirs = first, doc_id
    eu, us = _stores(tmp_path, "eu", "us")
    eu.put(ours, {"owner": "eu"})
    us.put(theirs, {"owner": "us"})
    monkeypatch.setattr(session_module, "_id_slice", lambda doc_id, salt: b"\x00\x00")
    link = Link(_NoLog(eu), _NoLog(us))  # type: ignore[arg-type]
    link.settle()
    link.round()
    # each side took the other's document for its own; the id check caught it, so the
    # listed one arrived whole by name and nothing was mixed into the wrong document
    for db in (eu, us):
        for doc_id in (ours, theirs):
            value = db.get(doc_id)
            assert value in (None, {"owner": "eu" if doc_id == ours else "us"}), (db.region, value)
    assert (eu.get(theirs), us.get(ours)).count(None) == 1  # one arrived, one waits
    monkeypatch.undo()  # the next round hashes other bytes of the ids: no clash
    link.round()
    assert eu.get(theirs) == {"owner": "us"} and us.get(ours) == {"owner": "eu"}
    assert eu.merkle_root() == us.merkle_root()


@pytest.mark.parametrize(
    "message",
    [
        wire.Wants(((0, b"", b"", b""),)),
        wire.Answers((("", b"", False, None),)),
        wire.Fills((b"",)),
        wire.LeafList(0, True, ((1, b""),)),
        wire.MerkleHashes(0, 16, (0,), bytes(16 * wire.MERKLE_HASH_BYTES)),
    ],
)
def test_round_messages_outside_a_round_are_refused(tmp_path: Path, message: wire.Message) -> None:
    eu, us = _synced_pair(tmp_path, 5)
    link = Link(eu, us)
    link.settle()
    before = us.merkle_root()
    link.b.receive(wire.encode(message), link.now)
    closed = [e for e in iter(link.b.next_event, None) if isinstance(e, Closed)]
    assert closed and closed[0].error is not None
    assert closed[0].error.code == "unexpected_message" and "round" in closed[0].reason
    assert us.merkle_root() == before


def test_wants_naming_an_entry_past_the_list_are_refused(tmp_path: Path) -> None:
    eu, us = _synced_pair(tmp_path, 200)
    eu.update("docs/7", {"changed": True})
    link = Link(_NoLog(eu), _NoLog(us))  # type: ignore[arg-type]
    link.settle()
    link.a.start_round(link.now)
    lister = None
    for _ in range(20):  # walk down until one side has sent its LeafList
        link.transfer()
        for session in (link.a, link.b):
            if session._round is not None and session._round.lists:
                lister = session
        if lister is not None:
            break
    assert lister is not None
    lister.receive(wire.encode(wire.Wants(((10_000, b"", b"", b""),))), link.now)
    closed = [e for e in iter(lister.next_event, None) if isinstance(e, Closed)]
    assert closed and closed[0].error is not None and closed[0].error.code == "bad_payload"
    assert "entry 10000" in closed[0].reason
