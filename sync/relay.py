"""When a region relays another origin's records, and when a round waits (lazy relay).

A session sends its peer the records of every origin the peer lacks, read
from the log, so a chain A-B-C converges though A and C never talk. In a
full mesh that eager relay doubles what a region receives: when eu commits
an 8 MiB document, us holds it (from eu) while ap is still receiving it
from eu, and us sends it to ap a second time, because ap's reports do not
show it yet. The rules here keep every region receiving each record about
once, as Plumtree's lazy push does, without a tree to maintain:

- **Relay rule.** Each side's ``Frontier`` gossip (every ``gossip_interval``)
  names the regions it has an established session with now (``linked``).
  A region sends its peer P the records of origin O when O is itself
  (a region always serves its own records), or when P's last report does
  not list O: then nobody serves P directly and we do (the chain case). When
  P's session to O drops, P's next report (within a gossip interval) no
  longer lists O and the relay resumes from what P acknowledged, so no record
  is skipped. A peer that has not reported yet (an older session start) is
  served as before: eagerly. Known cost: with four regions where P is linked
  to B and C but not to O, both B and C relay O's records to P.
- **Round rule.** Anti-entropy must not repair, by a whole-document diff, a
  document whose records are on their way. A dialing side does not start a
  round while its region is *receiving*: any session of the region has part
  of a message in hand (a large record mid-transfer on a bulk lane) or
  records decoded and not applied yet. Both end by themselves (a message
  arrives whole or its session closes; records get applied); and another
  session's state puts a round off for at most :data:`DEFER_LIMIT` in a row,
  so a peer that trickles a message forever cannot stop the rounds of the
  region's other links. And a side answering a round sends no diff of a
  document whose records it sent that peer and has not had acknowledged
  (:class:`InFlight`): records are far cheaper than a diff of the same
  document, and they are on their way (once nothing of ours is unacknowledged,
  nothing is in flight, as records past a gap of the peer's are acknowledged
  below them).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol

from crdtdb.records import UpdateRecord

__all__ = ["DEFER_LIMIT", "Deferral", "InFlight", "Neighbourhood", "relays"]


def relays(origin: str, *, ours: str, peer_linked: Collection[str] | None) -> bool:
    """Whether we send ``origin``'s records to a peer whose report lists ``peer_linked``
    (None: it has not reported yet)."""
    return origin == ours or peer_linked is None or origin not in peer_linked


class Neighbourhood(Protocol):
    """What a session asks of its region about the region's other sessions."""

    def linked(self) -> tuple[str, ...]:
        """The regions we have an established session with now, sorted."""
        ...

    def receiving(self) -> bool:
        """Whether any session of ours has a message in hand or records to apply."""
        ...


class InFlight:
    """The documents of records the pump sent to the peer and not acknowledged yet, per
    origin (the round rule: a round sends no diff of these, the records will do). The
    pump sends in seq order from what the peer holds, so what the peer lacks below them
    is on its way too; a round's own resends (:mod:`.resend`) are not counted: they may
    carry a document's later records without its earlier ones."""

    def __init__(self) -> None:
        self._sent: dict[str, list[tuple[int, frozenset[str]]]] = {}

    def sent(self, records: Iterable[UpdateRecord]) -> None:
        by_origin: dict[str, list[UpdateRecord]] = {}
        for record in records:
            by_origin.setdefault(record.origin, []).append(record)
        for origin, sent in by_origin.items():
            last = max(record.seq for record in sent)
            self._sent.setdefault(origin, []).append((last, frozenset(r.doc_id for r in sent)))

    def acked(self, origin: str, seq: int, *, everything: bool = False) -> None:
        """The peer holds ``origin`` through ``seq``; ``everything``: no message of ours
        is unacknowledged (records past a gap of the peer's are held, not contiguous)."""
        if everything:
            self._sent.clear()
            return
        batches = self._sent.get(origin)
        if batches:
            batches[:] = [(last, docs) for last, docs in batches if last > seq]

    def __contains__(self, doc_id: object) -> bool:
        return any(doc_id in docs for batches in self._sent.values() for _, docs in batches)


DEFER_LIMIT = 30.0
"""Seconds a session's rounds wait for the region's other sessions' messages, at most: a
peer that trickles a message forever must not stop anti-entropy on every other link."""


class Deferral:
    """The round rule's region-wide half, for one session: whether to put a round off
    because another session is receiving, for at most :data:`DEFER_LIMIT` in a row."""

    def __init__(self) -> None:
        self._since: float | None = None

    def defers(self, neighbourhood: Neighbourhood | None, now: float) -> bool:
        if neighbourhood is None or not neighbourhood.receiving():
            self._since = None
            return False
        if self._since is None:
            self._since = now
        return now - self._since < DEFER_LIMIT
