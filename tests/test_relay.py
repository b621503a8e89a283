"""The lazy relay and the round rule (:mod:`crdtdb.sync.relay`), in memory.

A region relays another origin's records to a peer only when the peer did not
report a session with that origin; a round sends no diff of a document whose
records are on their way. The end-to-end version (three daemons, an 8 MiB
document, bytes from the metrics) is ``tests/test_large_documents.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtdb.hlc import Hlc
from crdtdb.records import UpdateRecord
from crdtdb.sync import wire
from crdtdb.sync.errors import LocalProtocolError
from crdtdb.sync.relay import DEFER_LIMIT, Deferral, InFlight, relays
from crdtdb.sync.rounds import AntiEntropyDone

from .fake_store import STORE_KINDS, Regions
from .harness.link import Link


@pytest.fixture(params=STORE_KINDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Regions]:
    regions = Regions(request.param, tmp_path)
    yield regions
    regions.close()


class Linked:
    """A region's neighbourhood as a session sees it: who it is linked to; idle."""

    def __init__(self, *regions: str) -> None:
        self.regions = tuple(sorted(regions))

    def linked(self) -> tuple[str, ...]:
        return self.regions

    def receiving(self) -> bool:
        return False


def test_the_relay_rule() -> None:
    assert relays("us", ours="us", peer_linked={"us", "eu"})  # our own: always
    assert relays("eu", ours="us", peer_linked=None)  # no report yet: eagerly
    assert relays("eu", ours="us", peer_linked={"us"})  # nobody serves it eu's
    assert not relays("eu", ours="us", peer_linked={"us", "eu"})  # eu serves it


def test_frontier_carries_the_linked_regions() -> None:
    frontier = wire.Frontier((("eu", 3, 7),), 7, ("ap", "us"))
    assert wire.decode_frame(wire.encode(frontier)) == frontier
    with pytest.raises(LocalProtocolError, match="more than once"):
        wire.Frontier((), 0, ("us", "us"))


def _linked_to(stores: Regions, *linked: str) -> tuple[Link, Any]:
    """eu's records in us; then a link us -> ap where ap reports ``linked``. Returns the
    link and ap's store."""
    eu, us, ap = stores("eu", "us", "ap")
    eu.put("docs/a", {"from": "eu"})
    Link(eu, us).settle()
    assert us.get("docs/a") == {"from": "eu"}
    link = Link(ap, us)
    link.a.neighbourhood = Linked(*linked)  # ap's side: what its gossip reports
    link.settle()
    return link, ap


def test_a_peer_linked_to_the_origin_is_not_relayed_its_records(stores: Regions) -> None:
    link, ap = _linked_to(stores, "eu", "us")
    assert link.b.peer_linked == frozenset({"eu", "us"})
    assert link.b.records_out == 0
    assert ap.get("docs/a") is None  # eu will bring it, not us


def test_a_peer_not_linked_to_the_origin_is_relayed_its_records(stores: Regions) -> None:
    link, ap = _linked_to(stores, "us")  # a chain eu - us - ap
    assert link.b.records_out == 1
    assert ap.get("docs/a") == {"from": "eu"}


def _record(origin: str, seq: int, doc_id: str) -> UpdateRecord:
    return UpdateRecord(doc_id, Hlc(seq), origin, seq, b"\x00\x00")


@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 5)), max_size=12))
def test_in_flight_holds_what_is_not_acknowledged(acks: list[tuple[str, int]]) -> None:
    """A document stays in flight until its origin is acknowledged through its seq."""
    flight = InFlight()
    sent = {("a", 1): "d1", ("a", 3): "d3", ("b", 2): "d2"}
    for (origin, seq), doc in sent.items():
        flight.sent([_record(origin, seq, doc)])
    held: dict[str, int] = {}
    for origin, seq in acks:
        flight.acked(origin, seq)
        held[origin] = max(held.get(origin, 0), seq)
    for (origin, seq), doc in sent.items():
        assert (doc in flight) == (seq > held.get(origin, 0))
    flight.acked("a", 0, everything=True)  # nothing unacknowledged: nothing in flight
    assert not any(doc in flight for doc in sent.values())


class Busy(Linked):
    def __init__(self) -> None:
        super().__init__()
        self.busy = True

    def receiving(self) -> bool:
        return self.busy


def test_another_sessions_transfer_puts_rounds_off_for_a_bounded_time() -> None:
    deferral, region = Deferral(), Busy()
    assert not deferral.defers(None, 0.0)
    assert deferral.defers(region, 100.0)  # a large record arriving on another link
    assert deferral.defers(region, 100.0 + DEFER_LIMIT - 1)
    assert not deferral.defers(region, 100.0 + DEFER_LIMIT)  # a trickle: no longer
    region.busy = False
    assert not deferral.defers(region, 200.0)
    region.busy = True
    assert deferral.defers(region, 201.0)  # a new transfer: a new grace


def test_a_dialer_waits_for_its_region_to_finish_receiving(stores: Regions) -> None:
    eu, us = stores("eu", "us")
    eu.put("docs/a", {"from": "eu"})
    link = Link(eu, us)
    region = Busy()
    link.a.neighbourhood = region
    link.settle()
    link.advance(2.0)  # the round due on connect, and one more interval
    link.settle()
    assert link.a.rounds == 0
    region.busy = False
    link.advance(2.0)
    link.settle()
    assert link.a.rounds == 1


def test_a_round_sends_no_diff_of_a_document_whose_records_are_in_flight(
    stores: Regions,
) -> None:
    us, eu = stores("us", "eu")
    link = Link(us, eu)  # us dials, eu listens and answers the round
    link.settle()
    eu.put("docs/a", {"from": "eu"})
    link.b.local_changed()
    in_flight = link.b.data_to_send(link.now)  # records sent, still on their way
    assert link.b.records_out == 1 and in_flight
    link.a.start_round(link.now)
    link.settle()
    done = [e for e in link.events if isinstance(e, AntiEntropyDone)]
    assert done and sum(e.repaired_docs for e in done) == 0
    assert us.get("docs/a") is None  # the records will bring it, not a diff
    link.a.receive(in_flight, link.now)  # they land
    link.settle()
    assert us.get("docs/a") == {"from": "eu"}
    assert us.merkle_root() == eu.merkle_root()
