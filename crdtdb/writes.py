"""Writes facet: local commits and remote applies, sharing one log-append path.

A local commit (a transaction, or an anti-entropy repair) issues the next HLC
and this region's next sequence numbers; a remote batch keeps its records'
own, after checking them. Both then append to the log, record each changed
document (its row, its body for readers that do not load CRDTs, its load
snapshot when due, its digest's state) and move the origins' progress, all
in one SQLite write transaction (see :class:`crdtdb.engine.Engine`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

from pycrdt import merge_updates

from . import merkle
from ._cache import DocHandle
from .chains import ChainRow, Chains
from .digests import Digests, DigestState
from .engine import Engine
from .errors import (
    ClientIdCollisionError,
    DocumentTooDeepError,
    InvalidRecordError,
    InvalidUpdateError,
    RegionLeavingError,
    shown,
)
from .frontier import Frontier
from .hlc import Hlc, observe, tick
from .ids import collection_of
from .membership import MEMBERS_DOC, leaving_message, writes_members_only
from .records import REPAIR, WRITE, UpdateRecord
from .rows import LogRows

__all__ = ["BODY_MAX_BYTES", "Writer"]

log = logging.getLogger("crdtdb")

BODY_MAX_BYTES = 16 * 1024
"""A commit writes a changed document's JSON to ``bodies`` while the document's stored
CRDT bytes are at most this; a larger one (a long text typed a keystroke a commit, say)
is left for readers to load, so that no commit pays in proportion to its document."""
_EMPTY_UPDATE = b"\x00\x00"  # no structs, no deletes

_Change = tuple[str, DocHandle, list[bytes]]
"""(doc_id, handle, its pending updates): one document a local commit changes."""


class _DocChange(NamedTuple):
    """One changed document of a commit or batch, as the log append records it."""

    doc_id: str
    handle: DocHandle
    log_id: int
    """Its newest record's position in the log."""
    size: int
    """Bytes it logged."""
    hlc: Hlc
    origin: str
    """Of its newest record: the greatest (HLC, origin) of the batch."""


class Known(NamedTuple):
    """What the store holds of a document's row: read before a write, kept on its handle
    after (valid while :attr:`Engine.known_gen` stays what it was then)."""

    pending: int
    hlc: int
    snapshot_bytes: int
    origin: str
    live: int
    dirty: int


_ABSENT = Known(0, 0, 0, "", 0, 0)


class Writer:
    """Commits and applies for one store; feeds the digests and the frontier."""

    def __init__(self, engine: Engine, digests: Digests, frontier: Frontier) -> None:
        self._engine = engine
        self._digests = digests
        self._frontier = frontier
        self._chains = Chains(engine)

    # ------------------------------------------------------------ local commits

    def commit(self, handles: dict[str, DocHandle]) -> tuple[Hlc, list[UpdateRecord]] | None:
        """Commit a transaction's edited documents; None if nothing changed."""
        engine = self._engine
        changes: list[_Change] = []
        try:
            for doc_id, handle in handles.items():
                handle.finish_edits()
                pending = handle.take_pending()
                if pending:
                    changes.append((doc_id, handle, pending))
        except BaseException:
            self.rollback(handles)
            raise
        if not changes:
            return None

        def body() -> tuple[tuple[Hlc, list[UpdateRecord]], list[UpdateRecord], LogRows]:
            # Prepared here, written by the group's leader with the other members' rows.
            hlc, records, rows = self._commit_locked(changes)
            return (hlc, records), records, rows

        try:
            committed: tuple[Hlc, list[UpdateRecord]] = engine.join(body)
            return committed
        except BaseException as exc:
            self.rollback(handles)
            if isinstance(exc, ClientIdCollisionError):  # edits made under that id are void
                engine.clients.draw()
                engine.cache.clear()
            raise

    def rollback(self, handles: dict[str, DocHandle]) -> None:
        """Drop a transaction's edits: its documents are reloaded from disk on next use."""
        for doc_id, handle in handles.items():
            handle.end()
            handle.take_pending()
            self._engine.cache.evict(doc_id)

    def apply_diff(self, doc_id: str, update: bytes) -> Hlc | None:
        """Commit what an anti-entropy diff adds to a document as a local repair record."""
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("apply_diff()")
            engine.refresh()
            handle = engine.handle(doc_id)
            handle.capturing = True
            try:
                handle.apply(update)
            except ValueError as exc:
                handle.take_pending()
                engine.cache.evict(doc_id)
                raise InvalidUpdateError(
                    f"refused diff for {doc_id}: the update does not decode ({exc})"
                ) from None
            pending = [u for u in handle.take_pending() if u != _EMPTY_UPDATE]
            if not pending:
                return None
            try:
                hlc: Hlc = engine.write(lambda: self._repair_locked(doc_id, handle, pending))
            except BaseException:
                engine.cache.evict(doc_id)
                raise
            return hlc

    def _repair_locked(
        self, doc_id: str, handle: DocHandle, pending: list[bytes]
    ) -> tuple[Hlc, list[UpdateRecord]]:
        hlc, records, rows = self._commit_locked([(doc_id, handle, pending)], REPAIR)
        rows.store(self._engine.conn)
        return hlc, records

    def _commit_locked(
        self, changes: list[_Change], kind: int = WRITE
    ) -> tuple[Hlc, list[UpdateRecord], LogRows]:
        """Issue the HLC and sequence numbers of a local commit and prepare its rows
        (written by the caller: nothing of a commit that raises here is written)."""
        engine = self._engine
        last, seq = engine.read_counters()
        now = engine.options.clock()
        if kind == WRITE:  # an application's write; repairs re-record what peers wrote
            engine.check_fence(now)
            self._check_writable([change[0] for change in changes])
        hlc = tick(last, now)
        if kind == WRITE:
            engine.clients.bind_own(int(hlc))
        records = []
        for doc_id, _, pending in changes:
            seq += 1
            update = pending[0] if len(pending) == 1 else merge_updates(*pending)
            records.append(UpdateRecord(doc_id, hlc, engine.region, seq, update, kind))
        rows = self._append(records, {doc_id: handle for doc_id, handle, _ in changes})
        rows.local = (engine.region, seq, hlc)  # our origin's row: also the stored clock
        engine.last_hlc = hlc
        engine.counters = (hlc, seq)
        return hlc, records, rows

    def _check_writable(self, doc_ids: list[str]) -> None:
        """Refuse a local write once the membership says this region is leaving or was
        removed (:func:`crdtdb.membership.leaving_message`; writes to the membership itself
        are still taken); the answer is kept on the engine while nothing can change it."""
        if writes_members_only(doc_ids):
            return
        engine = self._engine
        if engine.leaving is None:
            engine.leaving = (leaving_message(engine.conn, engine.region),)
        message = engine.leaving[0]
        if message is not None:
            raise RegionLeavingError(message, engine.region)

    # ------------------------------------------------------------ remote applies

    def apply_remote_many(self, records: list[UpdateRecord], chain: Sequence[ChainRow] = ()) -> int:
        """Apply a batch of remote records in one transaction; return how many were new.

        ``chain``: their chain rows, written in the same transaction."""
        if not isinstance(records, list | tuple):
            raise InvalidRecordError(f"pass a list of UpdateRecord, not {shown(records)}")
        for record in records:
            if not isinstance(record, UpdateRecord):
                raise InvalidRecordError(
                    f"refused record: an UpdateRecord (from changes() or records_from() of"
                    f" a replica) is expected, not {type(record).__name__}"
                )
            record.validated()
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("apply_remote()")
            version = engine.data_version  # no other process committed while it stays so
            fresh = self._not_held(records)
            if not fresh:
                return 0
            try:
                applied: int = engine.write(lambda: self._apply_batch_locked(fresh, version, chain))
            except BaseException as exc:
                for doc_id in {record.doc_id for record in fresh}:
                    engine.cache.evict(doc_id)
                if isinstance(exc, ClientIdCollisionError):
                    self._note_collision(exc)
                raise
            return applied

    def _note_collision(self, error: ClientIdCollisionError) -> None:
        engine = self._engine
        log.error("%s: %s", engine.region, error)
        now = engine.options.clock()

        def body() -> tuple[None, list[UpdateRecord]]:
            engine.clients.note_collision(error, now)
            return None, []

        engine.write(body)

    def _not_held(self, records: list[UpdateRecord]) -> list[UpdateRecord]:
        """The records whose (origin, seq) is neither in the log nor earlier in the batch."""
        seqs: dict[str, list[int]] = {}
        for record in records:
            seqs.setdefault(record.origin, []).append(record.seq)
        held: set[tuple[str, int]] = set()
        for origin, wanted in seqs.items():
            held.update(
                (origin, row[0])
                for row in self._engine.conn.execute(
                    "SELECT seq FROM log WHERE origin = ? AND seq BETWEEN ? AND ?",
                    (origin, min(wanted), max(wanted)),
                )
            )
        fresh = []
        for record in records:
            key = (record.origin, record.seq)
            if key not in held:
                held.add(key)
                fresh.append(record)
        return fresh

    def _apply_batch_locked(
        self, records: list[UpdateRecord], version: int, chain: Sequence[ChainRow] = ()
    ) -> tuple[int, list[UpdateRecord]]:
        """Apply fresh records: each document's row, each origin's row and the clock once.

        Checked before any document is touched: the records are still not held
        (looked for again if another process committed since ``version``, the
        data version before they were first looked for), none claims this
        region as its origin, and no HLC is too far ahead.
        """
        engine = self._engine
        if engine.data_version != version:
            records = self._not_held(records)
            if not records:
                return 0, []
        for record in records:
            if record.origin == engine.region:
                # We are the only source of our own records: one we do not hold was forged
                # (or comes from a restored backup of this region, which is not supported).
                raise InvalidRecordError(
                    f"refused record {record.origin}#{record.seq}: it claims to come from this"
                    f" region, which never made it"
                )
        last, local_seq = engine.read_counters()
        # The clock after receiving the batch: above every record's HLC, as one message
        # (the newest HLC is the one a skew check would refuse, if any is refused).
        newest = Hlc(max(record.hlc for record in records))
        clock = observe(last, newest, engine.options.clock(), engine.options.max_clock_offset_ms)
        engine.clients.check(records)
        handles, new = self._apply_updates(records)
        self._append(records, handles, new).store(engine.conn)
        if chain:
            self._chains.write_locked(chain)
        self._frontier.advance(records)
        engine.set_last_hlc(clock)
        engine.counters = (clock, local_seq)
        return len(records), records

    def _apply_updates(self, records: list[UpdateRecord]) -> tuple[dict[str, DocHandle], set[str]]:
        """Apply the updates to their documents in order: the handles by document, and
        the documents that are new to this store."""
        engine = self._engine
        by_doc: dict[str, list[UpdateRecord]] = {}
        for record in records:
            by_doc.setdefault(record.doc_id, []).append(record)
        handles: dict[str, DocHandle] = {}
        unloaded = [d for d in by_doc if engine.cache.peek(d) is None]
        absent = set(unloaded)  # those with no row: no history to load
        absent.difference_update(
            row[0]
            for row in engine.rows_in("SELECT doc_id FROM docs WHERE doc_id IN ({marks})", unloaded)
        )
        for doc_id, mine in by_doc.items():
            if doc_id in absent:  # nothing on disk to load: start it empty (a bootstrap)
                handle = handles[doc_id] = engine.new_handle()
                engine.cache.put(doc_id, handle)
            else:
                handle = handles[doc_id] = engine.handle(doc_id)
            for record in mine:
                try:
                    handle.receive(record.update)
                except ValueError as exc:
                    raise InvalidUpdateError(
                        f"refused record {record.origin}#{record.seq} for {doc_id}: the update"
                        f" does not decode ({exc}); nothing of its batch was applied"
                    ) from None
            handle.settle([record.update for record in mine])
        return handles, absent

    # ---------------------------------------------------------- the log append

    def _append(
        self,
        records: list[UpdateRecord],
        handles: dict[str, DocHandle],
        new: set[str] | None = None,
    ) -> LogRows:
        """The rows that append ``records`` to the log and record their documents (``new``,
        if known: those without a row yet). Inside the write transaction."""
        engine = self._engine
        # We hold the write lock and have caught up, so the ids after seen_id are free
        # (compaction never deletes the newest record); the primary key would refuse
        # the write otherwise.
        first_id = engine.seen_id + 1
        rows = LogRows()
        rows.log = [
            (first_id + i, r.origin, r.seq, int(r.hlc), r.doc_id, r.update, r.kind)
            for i, r in enumerate(records)
        ]
        engine.seen_id = first_id + len(records) - 1
        if MEMBERS_DOC in handles:
            engine.leaving = None  # read the membership again at the next local write
        self._index(_doc_changes(records, handles, first_id), new, rows)
        return rows

    def _index(self, changed: list[_DocChange], new: set[str] | None, rows: LogRows) -> None:
        """Record changed documents: liveness, HLC, body, load snapshot, digest state.

        The load snapshot is rewritten once the log bytes written since the last
        one reach that snapshot's size (at least ``snapshot_min_bytes``): loading
        replays at most about twice the document's size, and rewriting costs at
        most one extra byte per byte logged.

        What the row held before is kept on the document's handle, so that a
        commit reads no row (see :meth:`_known`); and a row whose liveness and
        digest state stay as they were is updated without those columns, which
        leaves the pages of their two indexes untouched (SQLite rewrites an
        index entry whenever its column is assigned, even to the same value).
        """
        known = self._known([c for c in changed if new is None or c.doc_id not in new])
        created, rows.deltas = self._digests.on_created(
            [(c.doc_id, c.handle) for c in changed if c.doc_id not in known]
        )
        gen = self._engine.known_gen
        for change in changed:
            # One pycrdt read transaction for all this looks at (each look opened its own).
            with change.handle.doc.transaction():
                self._index_one(change, known, created, gen, rows)
        self._digests.on_changed([c.doc_id for c in changed if c.doc_id in known])

    def _index_one(
        self,
        change: _DocChange,
        known: dict[str, Known],
        created: dict[str, tuple[bytes, DigestState]],
        gen: int,
        rows: LogRows,
    ) -> None:
        """One document of :meth:`_index`."""
        change.handle.loaded_through = change.log_id
        before = known.get(change.doc_id, _ABSENT)
        pending = before.pending + change.size
        # the newest record is the greatest (HLC, origin): the same in every region
        origin = max((before.hlc, before.origin), (int(change.hlc), change.origin))[1]
        rows.bodies.append((change.doc_id, change.log_id, origin, *self._body(change, before)))
        snapshot_bytes: int | None = None
        snapshot_id = 0
        if self._snapshot_due(change.handle, pending, before.snapshot_bytes):
            snapshot = change.handle.doc.get_update()
            rows.snapshots.append((change.doc_id, snapshot))
            snapshot_bytes, snapshot_id, pending = len(snapshot), change.log_id, 0
        digest, state = created.get(change.doc_id, (None, DigestState.STALE))
        live = int(change.handle.live)
        hlc = max(int(change.hlc), before.hlc)
        if change.doc_id in known and before.live == live and before.dirty == state:
            rows.docs.append((True, (hlc, snapshot_bytes, snapshot_id, pending, change.doc_id)))
        else:
            rows.docs.append(
                (
                    False,
                    (
                        change.doc_id,
                        collection_of(change.doc_id),
                        merkle.leaf_of(change.doc_id),
                        live,
                        hlc,
                        snapshot_bytes,
                        snapshot_id,
                        pending,
                        digest,
                        int(state),
                    ),
                )
            )
        stored_bytes = before.snapshot_bytes if snapshot_bytes is None else snapshot_bytes
        change.handle.known = (
            gen,
            Known(pending, hlc, stored_bytes, origin, live, int(state)),
        )

    def _known(self, changed: list[_DocChange]) -> dict[str, Known]:
        """What the store holds of these documents' rows (absent: no row). Kept on each
        handle by the last write of this process, and read only where that may be out of
        date: another process committed, a write rolled back, or something other than
        a commit or apply wrote (each moves :attr:`Engine.known_gen`)."""
        gen = self._engine.known_gen
        found: dict[str, Known] = {}
        unread = []
        for change in changed:
            kept = change.handle.known
            if kept is not None and kept[0] == gen:
                if kept[1] is not _ABSENT:
                    found[change.doc_id] = kept[1]
            else:
                unread.append(change.doc_id)
        found.update(
            (row[0], Known(row[1], row[2], row[3], row[4] or "", row[5], row[6]))
            for row in self._engine.rows_in(
                "SELECT d.doc_id, d.pending, d.hlc, d.snapshot_bytes, b.origin, d.live,"
                " d.dirty FROM docs d LEFT JOIN bodies b ON b.doc_id = d.doc_id"
                " WHERE d.doc_id IN ({marks})",
                unread,
            )
        )
        return found

    def _body(self, change: _DocChange, before: Known) -> tuple[str | None, int | None]:
        """The document's JSON and shape number, while it is small enough to write."""
        if before.snapshot_bytes + before.pending + change.size > BODY_MAX_BYTES:
            return None, None
        try:
            found = change.handle.body_and_shape()
        except DocumentTooDeepError:  # made elsewhere: store it, readers are refused
            return None, None
        return (found[0], self._engine.shapes.id_of(found[1])) if found else (None, None)

    def _snapshot_due(self, handle: DocHandle, pending: int, snapshot_bytes: int) -> bool:
        minimum = self._engine.options.snapshot_min_bytes
        return pending >= max(minimum, snapshot_bytes) and not handle.waiting


def _doc_changes(
    records: list[UpdateRecord], handles: dict[str, DocHandle], first_id: int
) -> list[_DocChange]:
    """Per document of a batch logged from ``first_id`` on: what ``_index`` records."""
    newest_id: dict[str, int] = {}
    size: dict[str, int] = {}
    newest: dict[str, tuple[int, str]] = {}
    for log_id, record in enumerate(records, first_id):
        doc_id = record.doc_id
        newest_id[doc_id] = log_id
        size[doc_id] = size.get(doc_id, 0) + len(record.update)
        newest[doc_id] = max(newest.get(doc_id, (0, "")), (record.hlc, record.origin))
    return [
        _DocChange(
            doc_id, handles[doc_id], log_id, size[doc_id], Hlc(newest[doc_id][0]), newest[doc_id][1]
        )
        for doc_id, log_id in newest_id.items()
    ]
