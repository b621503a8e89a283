"""Anti-entropy rounds of the sans-IO sync session, driven in memory between region stores.

Every test runs against SQLite stores (``crdtdb.Database``) and in-memory
ones (``tests/fake_store.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import crdtdb
from crdtdb import merkle
from crdtdb.sync import rounds, wire
from crdtdb.sync.session import AntiEntropyDone, Closed, SyncSession

from .conftest import clock_past
from .fake_store import STORE_KINDS, Regions
from .harness.link import Link, NoLog, messages, spy


@pytest.fixture(params=STORE_KINDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Regions]:
    regions = Regions(request.param, tmp_path)
    yield regions
    regions.close()


def test_anti_entropy_repairs_what_records_cannot(stores: Regions) -> None:
    """Content whose records were compacted away reaches the peer as diffs."""
    eu, us = stores("eu", "us")
    with eu.transaction() as tx:
        for i in range(50):
            tx.put(f"docs/{i}", {"i": i})
    eu.update("docs/7", {"extra": True})
    if isinstance(eu, crdtdb.Database):  # the fake drops all but the newest, whatever the time
        clock_past(eu)
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


def test_round_in_sync_costs_one_exchange(stores: Regions) -> None:
    eu, us = stores("eu", "us")
    eu.put("docs/a", {"x": 1})
    link = Link(eu, us)
    link.settle()
    before = link.bytes
    link.round()
    done = [e for e in link.events if isinstance(e, AntiEntropyDone)]
    assert done[-1].repaired_docs == 0 and done[-1].messages <= 2
    assert link.bytes - before < 200


def test_round_sends_large_repairs_in_chunks(
    stores: Regions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lists, wants, answers, fills and diffs go in bounded messages, never one over the limit."""
    monkeypatch.setattr(rounds, "CHUNK_BYTES", 4_000)
    eu, us = stores("eu", "us")
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


def test_round_costs_bytes_in_proportion_to_the_differences(stores: Regions) -> None:
    """Sliced hashes and implicit node ids: a few differing documents cost a few KB."""
    eu, us = stores("eu", "us")
    with eu.transaction() as tx:
        for i in range(2_000):
            tx.put(f"docs/{i}", {"i": i})
    link = Link(eu, us)
    link.settle()
    link.round()
    assert eu.merkle_root() == us.merkle_root()
    for i in range(5):
        eu.update(f"docs/{i * 97}", {"changed": True})
    eu.records_from = lambda *args, **kwargs: []  # no push
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


def test_a_long_leaf_listing_goes_in_chunks_each_answered(
    stores: Regions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rounds, "CHUNK_BYTES", 2_000)
    monkeypatch.setattr(rounds, "LIST_DOCS", 100)
    eu, us = stores("eu", "us")
    with eu.transaction() as tx:
        for i in range(400):
            tx.put(f"docs/{i}", {"i": i})
    with us.transaction() as tx:  # both sides list many documents, whichever lists
        for i in range(400):
            tx.put(f"ours/{i}", {"i": i})
    link = Link(NoLog(eu), NoLog(us))  # type: ignore[arg-type]
    sent: list[wire.Message] = []
    for session in (link.a, link.b):
        data_to_send = session.data_to_send

        def spy(now: float, original: Callable[[float], bytes] = data_to_send) -> bytes:
            data = original(now)
            sent.extend(messages(data))
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


def _synced_pair(stores: Regions, count: int) -> tuple[Any, Any]:
    eu, us = stores("eu", "us")
    with eu.transaction() as tx:
        for i in range(count):
            tx.put(f"docs/{i}", {"i": i})
    link = Link(eu, us)
    link.settle()
    assert eu.merkle_root() == us.merkle_root()
    return eu, us


def test_sparse_differences_descend_by_quads_dense_ones_by_sixteen(
    stores: Regions, monkeypatch: pytest.MonkeyPatch
) -> None:
    eu, us = _synced_pair(stores, 3_000)
    eu.update("docs/5", {"changed": True})  # one path: the last step goes four ways
    link = Link(NoLog(eu), NoLog(us))  # type: ignore[arg-type]
    link.settle()
    sent = spy(link)
    link.round()
    fanouts = [m.fanout for _, m in sent if isinstance(m, wire.MerkleHashes) and m.parents]
    assert fanouts == [16, 16, 16, 4, 4]  # levels 1-3, then quads and their leaves
    assert us.get("docs/5") == {"i": 5, "changed": True}
    with eu.transaction() as tx:  # a third of the documents: a fifth of the level-3 nodes
        for i in range(0, 3_000, 3):
            tx.update(f"docs/{i}", {"dense": True})
    monkeypatch.setattr(rounds, "QUAD_DENSITY", 0.1)  # ... counts as dense below 10%
    sent.clear()
    link.round()
    fanouts = [m.fanout for _, m in sent if isinstance(m, wire.MerkleHashes) and m.parents]
    assert fanouts == [16, 16, 16, 16]
    assert eu.merkle_root() == us.merkle_root()


def test_round_names_no_document_in_sync_and_moves_only_what_is_lacking(stores: Regions) -> None:
    eu, us = _synced_pair(stores, 500)
    eu.update("docs/1", {"eu": True})  # eu has more: eu's diff, no ask back
    us.update("docs/2", {"us": True})  # us has more: an ask, filled
    eu.put("docs/new", {"only": "eu"})
    us.put("docs/mine", {"only": "us"})
    link = Link(NoLog(eu), NoLog(us))  # type: ignore[arg-type]
    link.settle()
    sent = spy(link)
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


def test_a_delete_set_the_lister_already_holds_is_not_sent_back(stores: Regions) -> None:
    eu, us = _synced_pair(stores, 50)
    for doc_id, db in (("docs/3", eu), ("docs/4", us)):  # a delete only one side holds
        with stores.open("ap", f"side-{doc_id[-1]}") as side:
            side.apply_diff(doc_id, db.diff(doc_id))
            with side.transaction() as tx:
                del tx.doc(doc_id)["i"]
            db.apply_diff(doc_id, side.diff(doc_id, db.state_vector(doc_id)))
    link = Link(NoLog(eu), NoLog(us))  # type: ignore[arg-type]
    link.settle()
    sent = spy(link)
    link.round()
    for doc_id in ("docs/3", "docs/4"):  # the field is gone on both sides (an empty doc)
        assert eu.get(doc_id) == us.get(doc_id) and "i" not in (us.get(doc_id) or {})
    assert eu.merkle_root() == us.merkle_root()
    fills = [f for _, m in sent if isinstance(m, wire.Fills) for f in m.diffs]
    assert len(fills) == 2 and sorted(bool(f) for f in fills) == [False, True]


def test_an_id_hash_clash_never_applies_a_diff_to_another_document(
    stores: Regions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two documents, one per side, in one leaf and with the same short id hash."""
    by_leaf: dict[int, str] = {}
    for i in range(100_000):
        doc_id = f"docs/{i}"
        first = by_leaf.setdefault(merkle.leaf_of(doc_id), doc_id)
        if first != doc_id:
            break
    ours, theirs = first, doc_id
    eu, us = stores("eu", "us")
    eu.put(ours, {"owner": "eu"})
    us.put(theirs, {"owner": "us"})
    monkeypatch.setattr(rounds, "_id_slice", lambda doc_id, salt: b"\x00\x00")
    link = Link(NoLog(eu), NoLog(us))  # type: ignore[arg-type]
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
def test_round_messages_outside_a_round_are_refused(stores: Regions, message: wire.Message) -> None:
    eu, us = _synced_pair(stores, 5)
    link = Link(eu, us)
    link.settle()
    before = us.merkle_root()
    link.b.receive(wire.encode(message), link.now)
    closed = [e for e in iter(link.b.next_event, None) if isinstance(e, Closed)]
    assert closed and closed[0].error is not None
    assert closed[0].error.code == "unexpected_message" and "round" in closed[0].reason
    assert us.merkle_root() == before


def test_wants_naming_an_entry_past_the_list_are_refused(stores: Regions) -> None:
    eu, us = _synced_pair(stores, 200)
    eu.update("docs/7", {"changed": True})
    link = Link(NoLog(eu), NoLog(us))  # type: ignore[arg-type]
    link.settle()
    link.a.start_round(link.now)
    lister = None
    for _ in range(20):  # walk down until one side has sent its LeafList
        link.transfer()
        for session in (link.a, link.b):
            round_ = session.anti_entropy.round
            if round_ is not None and round_.lists:
                lister = session
        if lister is not None:
            break
    assert lister is not None
    lister.receive(wire.encode(wire.Wants(((10_000, b"", b"", b""),))), link.now)
    closed = [e for e in iter(lister.next_event, None) if isinstance(e, Closed)]
    assert closed and closed[0].error is not None and closed[0].error.code == "bad_payload"
    assert "entry 10000" in closed[0].reason
