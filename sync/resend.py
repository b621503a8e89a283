"""Anti-entropy repairs by the origins' own records, wherever they still exist.

A Merkle round finds a document that differs and, left to itself, sends the
state-vector diff the peer lacks; the peer commits it as a repair record of
its *own* (``REPAIR``, sealed with its key). That re-authors content other
regions wrote. So before a round sends a diff, :class:`RecordsFirst` looks
for the records in this store's log that carry what the peer lacks:

- the diff's items are, per Yjs client id, the clocks from the peer's state
  vector up to ours; each log record of the document covers some clock
  ranges (:func:`crdtdb.yjs.shape`). If every missing range is covered by
  records this side can relay as their origin sealed them (chained rows, not
  the peer's own records, which it would refuse as forged), the diff is not
  sent: those records are.
- A record the peer does not claim yet (its seq above the contiguous seq the
  peer last reported for that origin) is coming anyway: the session's push
  sends every record above that, or sent it already. Nothing more to do.
- A record the peer *claims* (at or below that seq) but whose items it lacks
  (say its log lost it, or it kept another record under that number) is
  resent: the suffix of its sealed run, through the push's own path
  (certificates, seals, acks), checked by the peer like any relayed record.
  Once per session and record: if the peer still lacks the items in a later
  round (the record was held, or waits there for items no record carries),
  the diff goes after all, so every round makes progress. A round resends at
  most ``RESEND_MESSAGES`` messages (the peer takes 64 before it
  acknowledges); the rest waits for the next round, and a document whose
  runs alone would not fit goes as a diff (a run is resent from the record
  on to its seal, which covers up to 256 records).
- A difference in the delete set alone (no items missing) is left to the
  records above the peer's holdings, if the document has any; otherwise the
  diff goes.

What no record covers (history compacted below the horizon, another origin's
legacy unsigned records, more than ``DOC_RECORDS`` records to read) goes as a
diff, as before. The peer commits it as its repair record, and its provenance
is read from that record: the repairing region is its origin (and signer),
and the origins whose items it carries are those the ``clients`` table binds
its Yjs client ids to (:meth:`crdtdb.chains.Chains.carried`; ``crdtdb log``
shows them).

Only a session with a :class:`~.store.SealedLog` (the daemon's) does this; an
unsealed session (in-memory tests) sends diffs as before.

Known limits: the records of a differing document are read and decoded where
the round runs (the event loop), up to ``DOC_RECORDS`` of them. A record left
to the push that the push never sends (a run this store took before it knew
its key was retired, which :meth:`.provenance.Provenance.runs_from` holds
back) keeps its document differing instead of being repaired by diff; that
content is what the peer would refuse as a record anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from crdtdb.chains import DocRecord
from crdtdb.yjs import decode_state_vector, shape

from .packing import Run
from .store import DocumentState, SealedLog

__all__ = ["DOC_RECORDS", "Pusher", "RecordsFirst", "RegionDocuments"]

DOC_RECORDS = 512
"""Records of one document read to find what carries a peer's missing items; a
document with more is repaired by diff. Reading and decoding one costs about
25 µs where the round runs (the event loop): 512 of them, about 15 ms."""

RESEND_MESSAGES = 32
"""``Records`` messages one round resends at most (the peer takes 64 before it
acknowledges, and the push may have its window out): what is left waits for the
next round, which starts once these are acknowledged."""
CHUNK_BYTES = 1 << 20
"""Bytes of small records one resent message holds (as :mod:`.packing` packs them)."""

Ranges = dict[int, list[tuple[int, int]]]
"""Per Yjs client id, ``[start, end)`` clock ranges."""


class RegionDocuments(DocumentState, Protocol):
    """Documents' state, and whose store it is."""

    @property
    def region(self) -> str: ...


class Pusher(Protocol):
    """What :class:`RecordsFirst` needs of its session."""

    sealed: SealedLog | None
    peer: str | None

    def peer_holds(self) -> dict[str, int]: ...
    def _send_runs(self, runs: list[Run]) -> None: ...


class RecordsFirst:
    """One session's choice, per differing document, between records and a diff."""

    def __init__(self, session: Pusher, store: RegionDocuments, *, large_bytes: int) -> None:
        self._session = session
        self._store = store
        self._large_bytes = large_bytes
        self._room = RESEND_MESSAGES
        self._resent: set[tuple[str, int]] = set()
        self.resent_records = 0
        """Records resent to the peer instead of a diff (in whole or partial runs)."""
        self.left_to_records = 0
        """Documents a round left to records instead of sending their diff."""

    def new_round(self) -> None:
        """A round starts: it may resend ``RESEND_MESSAGES`` messages again."""
        self._room = RESEND_MESSAGES

    def covers(self, doc_id: str, their_sv: bytes) -> bool:
        """Whether records reach the peer in place of the diff against ``their_sv``
        (resending those the peer claims but lacks); False: send the diff."""
        session = self._session
        sealed, peer = session.sealed, session.peer
        if sealed is None or peer is None:
            return False
        holds = session.peer_holds()
        resend = self._plan(sealed, doc_id, their_sv, peer, holds)
        if resend is None or not self._resend(sealed, resend):
            return False
        self.left_to_records += 1
        return True

    def _plan(
        self, sealed: SealedLog, doc_id: str, their_sv: bytes, peer: str, holds: dict[str, int]
    ) -> list[tuple[str, int]] | None:
        """The claimed records to resend (empty: all coming anyway), or None: a diff."""
        theirs = dict(decode_state_vector(their_sv))
        ours = decode_state_vector(self._store.state_vector(doc_id))
        missing: Ranges = {
            client: [(theirs.get(client, 0), clock)]
            for client, clock in ours
            if clock > theirs.get(client, 0)
        }
        deletes_only = not missing
        records = sealed.doc_records(doc_id, DOC_RECORDS + 1)
        if len(records) > DOC_RECORDS:
            return None
        needed: list[DocRecord] = []
        own = self._store.region
        for record in records:
            claimed = record.seq <= holds.get(record.origin, 0)
            relayable = record.origin != peer and (record.chained or record.origin == own)
            if deletes_only:
                if not claimed and relayable:
                    needed.append(record)  # the push brings it: it may hold the deletes
                continue
            if not any(missing.values()):
                break  # all covered: the records after these carry nothing it lacks
            if _cut(missing, _ranges(record.update)):
                if not relayable or (claimed and not record.chained):
                    return None
                needed.append(record)
        if not needed or any(missing.values()):
            return None  # items no record here carries: compacted, legacy, too many
        resend = [(r.origin, r.seq) for r in needed if r.seq <= holds.get(r.origin, 0)]
        if any(key in self._resent for key in resend):
            return None  # resent once already and still lacking: the diff goes
        return resend

    def _resend(self, sealed: SealedLog, keys: Sequence[tuple[str, int]]) -> bool:
        """Send the sealed runs holding ``keys`` (from each key on); False if one is not
        relayable here, or they would not fit in one round (then the diff goes). If they
        do not fit in what is left of this round's room, they wait for the next round."""
        runs: list[Run] = []
        through: dict[str, int] = {}
        for origin, seq in sorted(keys):
            if seq <= through.get(origin, 0):
                continue  # in a run already taken
            found = sealed.runs_from(origin, seq - 1, 1)
            if not found or found[0][1][0].seq != seq:
                return False  # a retired key's run, say: this store does not relay it
            seal, run = found[0]
            runs.append((seal, run))
            through[origin] = seal.last
        if not runs:
            return True
        messages = self._messages(runs)
        if messages > RESEND_MESSAGES:
            return False
        if messages > self._room:
            return True  # left for the next round (the document stays differing till then)
        self._room -= messages
        self._session._send_runs(runs)
        self._resent.update(keys)
        self.resent_records += sum(len(run) for _, run in runs)
        return True

    def _messages(self, runs: list[Run]) -> int:
        """About how many messages ``runs`` take: a large record's each, the rest packed."""
        records = [record for _, run in runs for record in run]
        large = sum(len(r.update) >= self._large_bytes for r in records)
        small = sum(len(r.update) for r in records if len(r.update) < self._large_bytes)
        return large + small // CHUNK_BYTES + 1


def _ranges(update: bytes) -> Ranges:
    try:
        return shape(update).ranges
    except ValueError:  # a content kind the reader does not know: it covers nothing
        return {}


def _cut(missing: Ranges, ranges: Ranges) -> bool:
    """Take ``ranges`` out of ``missing`` (in place); whether they overlapped."""
    hit = False
    for client, spans in ranges.items():
        gaps = missing.get(client)
        if not gaps:
            continue
        for start, end in spans:
            left: list[tuple[int, int]] = []
            for low, high in gaps:
                if end <= low or high <= start:
                    left.append((low, high))
                    continue
                hit = True
                if low < start:
                    left.append((low, start))
                if end < high:
                    left.append((end, high))
            gaps = left
        missing[client] = gaps
    return hit
