"""The embedded database: one region's data directory, opened by an application.

Write path: edits on live pycrdt documents are captured; at commit one SQLite
write transaction (``BEGIN IMMEDIATE``, so all processes on the directory are
serialised) first catches up with other processes' commits, then issues the
HLC and the region's next sequence numbers, appends the records to the log,
updates each document's digest, liveness and Merkle path, and commits. The
HLC and the sequence numbers are read from and written to the file inside
that transaction, so they stay strictly increasing and contiguous across
processes and restarts. Only then are subscribers told.

Read path: a bounded LRU of loaded documents. Before each operation
``PRAGMA data_version`` says whether another process committed; if so, the
new log records are applied to the cached documents.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pycrdt import merge_updates

from . import merkle, storage
from ._cache import ApplyStats, DocCache, DocHandle
from .clients import ClientBindings
from .errors import (
    ClientIdCollisionError,
    DatabaseClosedError,
    HistoryCompactedError,
    InvalidRecordError,
    InvalidUpdateError,
    RegionMismatchError,
    StoreError,
    TransactionError,
    UsageError,
)
from .hlc import DEFAULT_MAX_OFFSET_MS, Hlc, WallClock, observe, system_wall_ms, tick
from .ids import (
    DocId,
    RegionId,
    collection_of,
    validate_collection,
    validate_doc_id,
    validate_region,
)
from .records import REPAIR, WRITE, UpdateRecord
from .shape import ShapeIds
from .transaction import Transaction

if TYPE_CHECKING:
    from .history import AsOf
    from .snapshot import Snapshot

__all__ = ["Database", "Options", "Subscription", "open"]

log = logging.getLogger("crdtdb")

_EMPTY_UPDATE = b"\x00\x00"  # no structs, no deletes

Listener = Callable[[UpdateRecord], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """How a store is opened. Every field has a default suited to production."""

    cache_size: int = 10_000
    """Documents kept loaded in memory (least recently used are dropped)."""
    durability: Literal["normal", "full"] = "normal"
    """"normal": a commit survives a crash of the process; "full": also a power cut (fsync)."""
    max_clock_offset_ms: int = DEFAULT_MAX_OFFSET_MS
    """Remote HLCs further ahead of local wall time than this are refused."""
    history_retention_s: float = 7 * 24 * 3600.0
    """How far back time travel reaches after ``compact()`` (default 7 days)."""
    snapshot_min_bytes: int = 64 * 1024
    """Log bytes of one document before its load snapshot is first rewritten."""
    wal_autocheckpoint: int = 1000
    """WAL pages after which a commit of this process also copies the WAL into the
    database file (SQLite's default). 0: never in a commit; the process calls
    :meth:`Database.checkpoint` itself, from a worker thread (the sync daemon does)."""
    clock: WallClock = system_wall_ms
    """Wall-clock milliseconds; injectable for tests."""


class Subscription:
    """Returned by :meth:`Database.subscribe`; ``close()`` stops the callbacks."""

    def __init__(self, listeners: list[Listener], callback: Listener) -> None:
        self._listeners = listeners
        self._callback = callback

    def close(self) -> None:
        if self._callback in self._listeners:
            self._listeners.remove(self._callback)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(path: str | Path, region: str | None = None, **options: Any) -> Database:
    """Open the region store in directory ``path``, creating it if ``region`` is given.

    ``options`` are the fields of :class:`Options`.
    """
    return Database(path, region, Options(**options))


EAGER_DIGESTS = 32
"""A commit or remote batch that creates at least this many documents XORs their
digests into the Merkle tree at once (see ``Database._index``); smaller ones leave
that to the next tree read."""
BODY_MAX_BYTES = 16 * 1024
"""A commit writes a changed document's JSON to ``bodies`` while the document's stored
CRDT bytes are at most this; a larger one (a long text typed a keystroke a commit, say)
is left for readers to load, so that no commit pays in proportion to its document."""
WAL_RESTART_PAGES = 65_536
"""WAL pages (256 MiB) from which :meth:`Database.checkpoint` also rewinds the WAL."""
RESTART_WAIT_MS = 100
"""How long that rewinding checkpoint waits for readers, holding writers back meanwhile."""
# docs.dirty: where a document's digest stands
FRESH = 0
"""``digest`` is current and in the Merkle tree."""
STALE = 1
"""The document changed since: ``digest`` is what the tree still holds for it (or NULL)."""
UNTREED = 2
"""``digest`` is current (computed when the document was created) but not in the tree yet."""


class Database:
    """One region's store. Thread-safe; several processes may open the same directory."""

    def __init__(
        self, path: str | Path, region: str | None = None, options: Options | None = None
    ) -> None:
        self.options = options or Options()
        self.path = Path(path)
        wanted = validate_region(region) if region is not None else None
        synchronous = "FULL" if self.options.durability == "full" else "NORMAL"
        checkpoint = self.options.wal_autocheckpoint
        if isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or checkpoint < 0:
            raise UsageError(
                f"wal_autocheckpoint must be a number of pages >= 0, not {checkpoint!r}"
            )
        self._conn = storage.connect(self.path, region=wanted, synchronous=synchronous)
        self._conn.execute(f"PRAGMA wal_autocheckpoint = {checkpoint}")
        stored = self._meta("region")
        if wanted is not None and stored != wanted:
            self._conn.close()
            raise RegionMismatchError(
                f"{self.path} holds region {stored!r}, not {wanted!r}: open it with"
                f" region={stored!r} (or leave region out), or use another directory"
            )
        self.region = RegionId(str(stored))
        self._lock = threading.RLock()
        self._cache = DocCache(self.options.cache_size)
        self._apply_stats = ApplyStats()
        self._clients = ClientBindings(self._conn, self.region)
        self._shapes = ShapeIds(self._conn)
        self._listeners: builtins.list[Listener] = []
        self._tx: Transaction | None = None
        self._deferred: builtins.list[UpdateRecord] = []
        self._stale_here: dict[str, None] = {}
        """Documents this process marked stale, oldest first (see :meth:`refresh_digests`)."""
        self._closed = False
        self._forked = False
        _open_stores.add(self)
        self._last_hlc = Hlc(int(self._meta("last_hlc") or 0))
        self._data_version = -1
        # (last HLC, local max seq) as of our last look; valid while no other process
        # has committed (PRAGMA data_version unchanged), so commits need not read them.
        self._counters: tuple[Hlc, int] | None = None
        self._epoch = int(self._meta("compaction_epoch") or 0)
        self._seen_id = self._max_log_id()
        self._wakeups: builtins.list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._tx is not None:
                raise TransactionError("close() inside a transaction: finish the transaction first")
            self._closed = True
            self._cache.clear()
            self._conn.close()
        self._wake_watchers()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<crdtdb.Database region={self.region!r} path={str(self.path)!r}>"

    def _check(self) -> None:
        if self._closed:
            if self._forked:
                raise DatabaseClosedError(
                    "this database was opened before os.fork(), and a child process must not"
                    " use it (its SQLite connection and Yjs client id belong to the parent):"
                    " open the store again in the child with crdtdb.open()"
                )
            raise DatabaseClosedError("this database is closed: open it again with crdtdb.open()")

    def _check_no_tx(self, what: str) -> None:
        self._check()
        if self._tx is not None:
            raise TransactionError(
                f"{what} inside a transaction: use the transaction's own methods (tx.put,"
                " tx.doc, tx.delete), or call it after the `with` block"
            )

    @property
    def _client_id(self) -> int:
        return self._clients.client_id

    # -------------------------------------------------------------- documents

    def transaction(self) -> Transaction:
        """An atomic transaction across documents: ``with db.transaction() as tx: ...``."""
        self._check()
        return Transaction(self)

    def put(self, doc_id: str, value: Mapping[str, Any]) -> Hlc:
        """Make document ``doc_id`` equal to ``value``; return the HLC it holds that value at."""
        with self._lock:
            self._check_no_tx("db.put()")
            with self.transaction() as tx:
                tx.put(doc_id, value)
            return tx.hlc if tx.hlc is not None else self._doc_hlc(doc_id)

    def update(self, doc_id: str, patch: Mapping[str, Any]) -> Hlc:
        """Set the top-level keys in ``patch``, leave the rest; return the HLC."""
        with self._lock:
            self._check_no_tx("db.update()")
            with self.transaction() as tx:
                tx.update(doc_id, patch)
            return tx.hlc if tx.hlc is not None else self._doc_hlc(doc_id)

    def delete(self, doc_id: str) -> Hlc | None:
        """Delete a whole document; return the commit HLC, or None if it did not exist."""
        validate_doc_id(doc_id)
        with self._lock:
            self._check_no_tx("db.delete()")
            self._refresh()
            if not self._handle(doc_id).live:
                return None
            with self.transaction() as tx:
                tx.delete(doc_id)
            return tx.hlc

    def get(self, doc_id: str) -> dict[str, Any] | None:
        """The document as a plain dict, or None if it does not exist or was deleted."""
        doc_id = validate_doc_id(doc_id)
        with self._lock:
            self._check_no_tx("db.get()")
            self._refresh()
            handle = self._handle(doc_id)
            if not handle.live:
                return None
            result: dict[str, Any] = handle.json()
            return result

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and self.get(doc_id) is not None

    def list(
        self, collection: str, *, after: str | None = None, limit: int | None = None
    ) -> builtins.list[str]:
        """Ids of the live documents in ``collection``, sorted; page with ``after``."""
        validate_collection(collection)
        sql = "SELECT doc_id FROM docs WHERE collection = ? AND live AND doc_id > ? ORDER BY doc_id"
        params: builtins.list[Any] = [collection, after or ""]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._lock:
            self._check()
            return [row[0] for row in self._conn.execute(sql, params)]

    def collections(self) -> builtins.list[str]:
        """Names of the collections that hold at least one live document."""
        with self._lock:
            self._check()
            rows = self._conn.execute(
                "SELECT DISTINCT collection FROM docs WHERE live ORDER BY collection"
            )
            return [row[0] for row in rows]

    # ------------------------------------------------------------ replication

    def state_vector(self, doc_id: str) -> bytes:
        """The document's CRDT state vector (empty-document vector if unknown)."""
        with self._lock:
            self._check_no_tx("state_vector()")
            self._refresh()
            return self._handle(validate_doc_id(doc_id)).doc.get_state()

    def diff(self, doc_id: str, state_vector: bytes = b"\x00") -> bytes:
        """The update a replica at ``state_vector`` is missing (all of it by default)."""
        with self._lock:
            self._check_no_tx("diff()")
            self._refresh()
            handle = self._handle(validate_doc_id(doc_id))
            try:
                return handle.doc.get_update(state_vector)
            except ValueError:
                raise InvalidUpdateError(
                    "not a valid state vector: pass bytes from state_vector() of a replica"
                ) from None

    def digest(self, doc_id: str) -> bytes | None:
        """The canonical digest of the stored document, or None if it never existed."""
        doc_id = validate_doc_id(doc_id)
        with self._lock:
            self._check_no_tx("digest()")
            self._refresh()
            row = self._conn.execute(
                "SELECT digest, dirty FROM docs WHERE doc_id = ?", (doc_id,)
            ).fetchone()
            if row is None:
                return None
            if row[1] != STALE:
                return bytes(row[0])
            return merkle.doc_digest(self._handle(doc_id).doc)

    def merkle_node(self, node: int) -> bytes:
        """The hash of one Merkle node (all zeros for an empty subtree), up to date."""
        with self._lock:
            self._check_no_tx("merkle_node()")
            self._ensure_digests()
            row = self._conn.execute("SELECT hash FROM merkle WHERE node = ?", (node,)).fetchone()
            return bytes(row[0]) if row else merkle.ZERO

    def merkle_nodes(
        self, nodes: builtins.list[int], *, flush: bool = True
    ) -> builtins.list[bytes]:
        """The hashes of many Merkle nodes at once, in order, up to date.

        ``flush=False``: as the tree stands, stale digests left for ``refresh_digests``."""
        with self._lock:
            self._check_no_tx("merkle_nodes()")
            if flush:
                self._ensure_digests()
            found = {
                node: bytes(digest)
                for node, digest in self._rows_in(
                    "SELECT node, hash FROM merkle WHERE node IN ({marks})", nodes
                )
            }
            return [found.get(node, merkle.ZERO) for node in nodes]

    def merkle_root(self) -> bytes:
        return self.merkle_node(merkle.node_id(0, 0))

    def checkpoint(self) -> tuple[int, int]:
        """Copy what the WAL holds into the database file; return (WAL pages, pages copied).

        SQLite's PASSIVE checkpoint, on a connection of its own and without the
        store's lock, so that it can run in a worker thread while this process
        goes on reading and committing (nor does it wait for other processes).
        For a process that opened the store with ``wal_autocheckpoint=0``, so
        that none of its commits pays for a checkpoint and its fsync.

        A checkpoint alongside commits never lets the WAL start over: SQLite
        rewinds it only for a write that begins with every frame copied, and
        commits keep adding frames while the checkpoint runs. Under a steady
        stream of commits the WAL grew without bound (850 MB in 6 s in a test).
        So once it holds ``WAL_RESTART_PAGES``, a RESTART checkpoint follows
        the PASSIVE one: it holds writers back while it copies what the PASSIVE
        one left (10-30 ms in that test) and waits at most
        ``RESTART_WAIT_MS`` for readers; the next commit then rewinds the WAL,
        and its file is cut back to ``storage.WAL_SIZE_LIMIT``.
        """
        with self._lock:
            self._check()
        conn = sqlite3.connect(
            self.path / storage.STORE_FILE,
            isolation_level=None,
            timeout=storage.BUSY_TIMEOUT_MS / 1000,
        )
        try:
            _, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if pages >= WAL_RESTART_PAGES:
                conn.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
                conn.execute(f"PRAGMA journal_size_limit = {storage.WAL_SIZE_LIMIT}")
                _, pages, copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: checkpoint failed: {exc}") from exc
        finally:
            conn.close()
        return int(pages), int(copied)

    def refresh_digests(self, limit: int = 100) -> int:
        """Bring up to ``limit`` stale digests and their Merkle paths up to date; return how many.

        Reading the tree flushes every stale digest on the reader's thread (about
        60 µs a document). A sync daemon instead calls this in the background,
        a small ``limit`` at a time while writes go on and from a worker thread
        once they stop, until it returns 0: each call is one write transaction
        under the lock, so the next read finds the tree fresh. XOR deltas
        combine in any grouping, so the tree is the same as if flushed at once.
        """
        with self._lock:
            self._check_no_tx("refresh_digests()")
            if self._conn.execute("SELECT 1 FROM docs WHERE dirty LIMIT 1").fetchone() is None:
                return 0  # nothing stale: no write lock taken

            count: int = self._write(lambda: self._flush_digests(limit))
            return count

    def stale_digests(self, limit: int = 100) -> int:
        """How many documents' digests are stale, counting up to ``limit`` (a quick look)."""
        with self._lock:
            self._check()
            row = self._conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM docs WHERE dirty LIMIT ?)", (limit,)
            ).fetchone()
            return int(row[0])

    def _stale_rows(self, limit: int) -> builtins.list[tuple[str, bytes | None, int]]:
        """Up to ``limit`` (doc_id, digest, dirty) of stale documents, those in the cache first.

        A digest costs about 20 µs for a document in the cache and several
        times that for one loaded from disk. In doc id order, which is what
        the stale mark's index gives, a refresh that fell behind a bulk load
        would pick documents long evicted; so it takes the ones this process
        marked and still has loaded, oldest first, then any others.
        """
        picked: builtins.list[str] = []
        stale = self._stale_here
        while stale and len(picked) < limit:
            doc_id = next(iter(stale))
            del stale[doc_id]
            if self._cache.peek(doc_id) is not None:
                picked.append(doc_id)
        rows: builtins.list[tuple[str, bytes | None, int]] = list(
            self._rows_in(
                "SELECT doc_id, digest, dirty FROM docs WHERE dirty AND doc_id IN ({marks})",
                picked,
            )
        )
        if len(rows) < limit:
            taken = {row[0] for row in rows}
            more = self._conn.execute(
                "SELECT doc_id, digest, dirty FROM docs WHERE dirty LIMIT ?", (limit,)
            ).fetchall()
            rows += [row for row in more if row[0] not in taken][: limit - len(rows)]
        return rows

    def leaf_docs(self, leaf: int, *, flush: bool = True) -> builtins.list[tuple[str, bytes]]:
        """(doc_id, digest) of every document in one Merkle leaf, digests up to date.

        ``flush=False``: the digests as stored, stale ones too (zeros where none is yet)."""
        with self._lock:
            self._check_no_tx("leaf_docs()")
            if flush:
                self._ensure_digests()
            rows = self._conn.execute(
                "SELECT doc_id, digest FROM docs WHERE leaf = ? ORDER BY doc_id", (leaf,)
            )
            return [(row[0], bytes(row[1] or merkle.ZERO)) for row in rows]

    def records_from(
        self, origin: str, after_seq: int, limit: int = 1000
    ) -> builtins.list[UpdateRecord]:
        """Records of ``origin`` held here with seq above ``after_seq``, in seq order.

        At most ``limit``; page by passing the last one's seq. There may be gaps
        where records have not arrived yet (``progress()`` says up to which seq
        there are none).
        """
        with self._lock:
            self._check()
            rows = self._conn.execute(
                "SELECT doc_id, hlc, origin, seq, payload, kind FROM log"
                " WHERE origin = ? AND seq > ? ORDER BY seq LIMIT ?",
                (origin, after_seq, limit),
            ).fetchall()
        return [UpdateRecord(r[0], Hlc(r[1]), r[2], r[3], bytes(r[4]), r[5]) for r in rows]

    # ------------------------------------------------------------- frontier

    def heartbeat(self) -> Hlc:
        """Advance this region's clock to now with no record: an idle region's frontier moves."""
        with self._lock:
            self._check_no_tx("heartbeat()")
            hlc: Hlc = self._write(self._heartbeat_locked)
            return hlc

    def _heartbeat_locked(self) -> tuple[Hlc, builtins.list[UpdateRecord]]:
        last, seq = self._read_counters()
        hlc = tick(last, self.options.clock())
        self._set_last_hlc(hlc)
        self._counters = (hlc, seq)
        return hlc, []

    def frontier_entries(self) -> builtins.list[tuple[str, int, Hlc]]:
        """Per origin: (origin, contiguous seq held, HLC through which all its records are held).

        For this region itself that is (region, its last seq, its clock): every
        record it makes later will have a higher HLC.
        """
        with self._lock:
            self._check()
            return frontier_entries(self._conn, self.region, self._last_hlc)

    def local_frontier(self) -> Hlc:
        """``C`` of this region: it holds every update (of any origin) with HLC at or below it."""
        return min(hlc for _, _, hlc in self.frontier_entries())

    def note_frontier(
        self,
        entries: builtins.list[tuple[str, int, int]],
        clocks: builtins.list[tuple[str, int]] = [],  # noqa: B006 - never mutated
    ) -> None:
        """Take a peer's frontier report: per origin (seq, hlc), and C of other regions.

        (origin, s, h) means: the peer holds that origin's records 1..s, and the
        origin made none after s with an HLC at or below h. Once we hold 1..s
        too, we hold everything of that origin up to h.
        """
        with self._lock:
            self._check_no_tx("note_frontier()")
            self._write(lambda: self._note_frontier_locked(entries, clocks))

    def _note_frontier_locked(
        self, entries: builtins.list[tuple[str, int, int]], clocks: builtins.list[tuple[str, int]]
    ) -> tuple[None, builtins.list[UpdateRecord]]:
        for origin, seq, hlc in entries:
            if origin == self.region:
                continue
            validate_region(origin)
            self._conn.execute(
                "INSERT INTO origins (origin, max_seq, contiguous_seq, contiguous_hlc)"
                " VALUES (?, 0, 0, 0) ON CONFLICT (origin) DO NOTHING",
                (origin,),
            )
            self._conn.execute(
                "UPDATE origins SET complete_hlc = max(complete_hlc, ?)"
                " WHERE origin = ? AND contiguous_seq >= ?",
                (int(hlc), origin, seq),
            )
        for region, hlc in clocks:
            if region != self.region:
                self._conn.execute(
                    "INSERT INTO frontiers (region, hlc) VALUES (?1, ?2) ON CONFLICT (region)"
                    " DO UPDATE SET hlc = max(hlc, ?2)",
                    (region, int(hlc)),
                )
        return None, []

    def frontier_clocks(self) -> builtins.list[tuple[str, Hlc]]:
        """C per region known here (this one computed now), for gossip."""
        with self._lock:
            self._check()
            return frontier_clocks(self._conn, self.region, self._last_hlc)

    def frontier(self) -> Hlc:
        """The global frontier F: every region holds every update with an HLC at or below it.

        So ``as_of(F)`` gives the same answer in every region, and compaction
        never folds anything above F. Regions that were named (as peers) but
        never reported count as 0 until they do.
        """
        return min(hlc for _, hlc in self.frontier_clocks())

    def expect_regions(self, regions: builtins.list[str]) -> None:
        """Name regions that must report before the frontier can move (e.g. configured peers)."""
        with self._lock:
            self._check_no_tx("expect_regions()")
            self._write(
                lambda: (
                    self._conn.executemany(
                        "INSERT INTO frontiers (region, hlc) VALUES (?, 0)"
                        " ON CONFLICT (region) DO NOTHING",
                        [(validate_region(r),) for r in regions if r != self.region],
                    ),
                    [],
                )
            )

    def log_position(self) -> int:
        """The id of the newest log record (from any process): cheap to poll for changes."""
        with self._lock:
            self._check()
            return self._max_log_id()

    def progress(self) -> dict[str, tuple[int, int, Hlc]]:
        """Per origin held here: (max seq, highest contiguous seq, that record's HLC)."""
        with self._lock:
            self._check()
            rows = self._conn.execute(
                "SELECT origin, max_seq, contiguous_seq, contiguous_hlc FROM origins"
            ).fetchall()
        return {row[0]: (row[1], row[2], Hlc(row[3])) for row in rows}

    def apply_diff(self, doc_id: str, update: bytes) -> Hlc | None:
        """Apply an anti-entropy repair (a state-vector diff from a peer).

        A diff has no origin of its own, so what it adds to the document is
        committed as a new local record (this region's next seq, a new HLC) and
        flows on like any local edit. Returns that HLC, or None if the diff
        brought nothing new. Bytes that do not decode raise InvalidUpdateError
        and change nothing.
        """
        doc_id = validate_doc_id(doc_id)
        if not isinstance(update, bytes) or not update:
            raise InvalidUpdateError("a diff must be non-empty bytes from Database.diff()")
        with self._lock:
            self._check_no_tx("apply_diff()")
            self._refresh()
            handle = self._handle(doc_id)
            handle.capturing = True
            try:
                handle.apply(update)
            except ValueError as exc:
                handle.take_pending()
                self._cache.evict(doc_id)
                raise InvalidUpdateError(
                    f"refused diff for {doc_id}: the update does not decode ({exc})"
                ) from None
            pending = [u for u in handle.take_pending() if u != _EMPTY_UPDATE]
            if not pending:
                return None
            try:
                hlc: Hlc = self._write(
                    lambda: self._commit_locked([(doc_id, handle, pending)], REPAIR)
                )
            except BaseException:
                self._cache.evict(doc_id)
                raise
            return hlc

    def apply_remote(self, record: UpdateRecord) -> bool:
        """Apply a record made in another region (or relayed); False if already held.

        Refused, with nothing changed: malformed fields (``InvalidRecordError``),
        update bytes that do not decode (``InvalidUpdateError``), an HLC more than
        ``max_clock_offset_ms`` ahead of local wall time (``ClockSkewError``).
        """
        return self.apply_remote_many([record]) == 1

    def apply_remote_many(self, records: builtins.list[UpdateRecord]) -> int:
        """Apply a batch of remote records in one transaction; return how many were new.

        Records already held are skipped before the write lock is taken (a relay
        often sends back what we have); of two records with the same origin and
        seq in one batch the first counts. If any record is refused, the error
        is raised and none of the batch is applied.
        """
        for record in records:
            record.validated()
        with self._lock:
            self._check_no_tx("apply_remote()")
            version = self._data_version  # no other process committed while it stays so
            fresh = self._not_held(records)
            if not fresh:
                return 0
            try:
                applied: int = self._write(lambda: self._apply_batch_locked(fresh, version))
            except BaseException as exc:
                for doc_id in {record.doc_id for record in fresh}:
                    self._cache.evict(doc_id)
                if isinstance(exc, ClientIdCollisionError):
                    self._note_collision(exc)
                raise
            return applied

    def _note_collision(self, error: ClientIdCollisionError) -> None:
        log.error("%s: %s", self.region, error)
        now = self.options.clock()

        def body() -> tuple[None, builtins.list[UpdateRecord]]:
            self._clients.note_collision(error, now)
            return None, []

        self._write(body)

    def _not_held(self, records: builtins.list[UpdateRecord]) -> builtins.list[UpdateRecord]:
        """The records whose (origin, seq) is neither in the log nor earlier in the batch."""
        seqs: dict[str, builtins.list[int]] = {}
        for record in records:
            seqs.setdefault(record.origin, []).append(record.seq)
        held: set[tuple[str, int]] = set()
        for origin, wanted in seqs.items():
            held.update(
                (origin, row[0])
                for row in self._conn.execute(
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
        self, records: builtins.list[UpdateRecord], version: int
    ) -> tuple[int, builtins.list[UpdateRecord]]:
        """Apply fresh records: each document's row, each origin's row and the clock once.

        Checked before any document is touched: the records are still not held
        (looked for again if another process committed since ``version``, the
        data version before they were first looked for), none claims this
        region as its origin, and no HLC is too far ahead.
        """
        if self._data_version != version:
            records = self._not_held(records)
            if not records:
                return 0, []
        for record in records:
            if record.origin == self.region:
                # We are the only source of our own records: one we do not hold was forged
                # (or comes from a restored backup of this region, which is not supported).
                raise InvalidRecordError(
                    f"refused record {record.origin}#{record.seq}: it claims to come from this"
                    f" region, which never made it"
                )
        last, local_seq = self._read_counters()
        clock = self._observe_all(last, records)
        self._clients.check(records)
        handles, new = self._apply_updates(records)
        first_id = self._seen_id + 1  # free: we hold the write lock and caught up
        self._conn.executemany(
            "INSERT INTO log (id, origin, seq, hlc, doc_id, payload, kind)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (first_id + i, r.origin, r.seq, int(r.hlc), r.doc_id, r.update, r.kind)
                for i, r in enumerate(records)
            ],
        )
        self._seen_id = first_id + len(records) - 1
        self._index(_doc_changes(records, handles, first_id), new)
        self._advance_origins(records)
        self._set_last_hlc(clock)
        self._counters = (clock, local_seq)
        return len(records), records

    def _observe_all(self, last: Hlc, records: builtins.list[UpdateRecord]) -> Hlc:
        """The clock after receiving the batch: above every record's HLC, as one message.

        The newest HLC is the one a skew check would refuse, if any is refused.
        """
        newest = Hlc(max(record.hlc for record in records))
        return observe(last, newest, self.options.clock(), self.options.max_clock_offset_ms)

    def _apply_updates(
        self, records: builtins.list[UpdateRecord]
    ) -> tuple[dict[str, DocHandle], set[str]]:
        """Apply the updates to their documents in order: the handles by document, and
        the documents that are new to this store."""
        by_doc: dict[str, builtins.list[UpdateRecord]] = {}
        for record in records:
            by_doc.setdefault(record.doc_id, []).append(record)
        handles: dict[str, DocHandle] = {}
        absent = self._absent([d for d in by_doc if self._cache.peek(d) is None])
        for doc_id, mine in by_doc.items():
            if doc_id in absent:  # nothing on disk to load: start it empty (a bootstrap)
                handle = handles[doc_id] = DocHandle(self._client_id, self._apply_stats)
                self._cache.put(doc_id, handle)
            else:
                handle = handles[doc_id] = self._handle(doc_id)
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

    def _absent(self, doc_ids: builtins.list[str]) -> set[str]:
        """Those of ``doc_ids`` this store has never held (no row: no history to load)."""
        absent = set(doc_ids)
        absent.difference_update(
            row[0]
            for row in self._rows_in("SELECT doc_id FROM docs WHERE doc_id IN ({marks})", doc_ids)
        )
        return absent

    def _rows_in(self, query: str, keys: Sequence[Any]) -> Iterator[Any]:
        """The rows of ``query`` for ``keys``, its ``{marks}`` replaced by up to 500 of them
        at a time (SQLite limits the number of parameters of one statement)."""
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            yield from self._conn.execute(query.format(marks=",".join("?" * len(chunk))), chunk)

    # ---------------------------------------------------------------- history

    def changes(
        self,
        since: Hlc | int | None = None,
        *,
        origin: str | None = None,
        limit: int | None = None,
    ) -> Iterator[UpdateRecord]:
        """Records with HLC above ``since``, in HLC order (ties: origin, seq).

        ``origin`` keeps only the records that region made. To follow one origin
        by sequence number instead, use :meth:`records_from`.
        """
        only = "" if origin is None else " AND origin = ?"
        extra: tuple[str, ...] = () if origin is None else (validate_region(origin),)
        floor = Hlc(since or 0)
        with self._lock:
            self._check()
            self._check_history(floor, "changes(since=...)")
        remaining = limit
        # Keyset pagination: (hlc, origin, seq) strictly after the cursor; "\uffff" sorts
        # after every region name, so the first page starts just above ``floor``.
        cursor: tuple[int, str, int] = (int(floor), "\uffff", 0)
        while remaining is None or remaining > 0:
            page = 1000 if remaining is None else min(1000, remaining)
            with self._lock:
                self._check()
                rows = self._conn.execute(
                    "SELECT doc_id, hlc, origin, seq, payload, kind FROM log"
                    f" WHERE (hlc, origin, seq) > (?, ?, ?){only} ORDER BY hlc, origin, seq"
                    " LIMIT ?",
                    (*cursor, *extra, page),
                ).fetchall()
            if not rows:
                return
            for doc_id, hlc, origin, seq, payload, kind in rows:
                yield UpdateRecord(doc_id, Hlc(hlc), origin, seq, bytes(payload), kind)
            if remaining is not None:
                remaining -= len(rows)
            cursor = (rows[-1][1], rows[-1][2], rows[-1][3])

    def snapshot(self) -> Snapshot:
        """A consistent read-only cut of the store, on a connection of its own.

        For readers that copy the store elsewhere (the query layer): it holds one
        SQLite read transaction until closed, which never holds a writer back.
        Use it as a context manager.
        """
        from .snapshot import Snapshot

        with self._lock:
            self._check()
        return Snapshot(self)

    def as_of(self, hlc: Hlc | int | str) -> AsOf:
        """A read-only view of the database at the consistent cut ``hlc``."""
        from .history import AsOf

        cut = Hlc(hlc) if not isinstance(hlc, Hlc) else hlc
        with self._lock:
            self._check()
            self._check_history(cut, "as_of()")
        return AsOf(self, cut)

    def compact(
        self,
        *,
        retention_s: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Fold log records older than the retention window into snapshots.

        Returns the number of log records removed. Time travel and ``changes``
        keep working for HLCs inside the window; older ones raise
        ``HistoryCompactedError``.
        """
        from .history import compact

        keep = self.options.history_retention_s if retention_s is None else retention_s
        horizon_ms = max(0, self.options.clock() - int(keep * 1000))
        with self._lock:
            self._check_no_tx("compact()")
            # Never above the global frontier: a region that has not got a record yet
            # must still be able to get it from our log.
            horizon = min(Hlc.from_parts(horizon_ms, 0), self.frontier())
            return compact(self, horizon, progress)

    @property
    def compacted_hlc(self) -> Hlc:
        """Time travel and changes() reach back to just above this HLC."""
        with self._lock:
            self._check()
            return Hlc(int(self._meta("compacted_hlc") or 0))

    def _check_history(self, hlc: Hlc, what: str) -> None:
        floor = Hlc(int(self._meta("compacted_hlc") or 0))
        if hlc < floor:
            raise HistoryCompactedError(
                f"{what}: history before {floor} was compacted away; ask for a later HLC or"
                " raise history_retention_s"
            )

    # ------------------------------------------------------------ subscribing

    def subscribe(self, callback: Listener) -> Subscription:
        """Call ``callback(record)`` after each commit this object sees.

        That is its own commits, applied remote records, and commits of other
        processes on the same directory (seen on this object's next operation;
        use :meth:`watch` to follow them without polling yourself).
        """
        self._check()
        self._listeners.append(callback)
        return Subscription(self._listeners, callback)

    async def watch(
        self, *, from_start: bool = False, poll_interval: float = 0.05
    ) -> AsyncIterator[UpdateRecord]:
        """Follow the log as it grows, whoever writes it (this process or another)."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        entry = (loop, wake)
        with self._lock:
            self._check()
            cursor = 0 if from_start else self._max_log_id()
            self._wakeups.append(entry)
        try:
            while not self._closed:
                rows = self._log_after(cursor, 1000)
                for log_id, record in rows:
                    cursor = log_id
                    yield record
                if not rows:
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), poll_interval)
        finally:
            with self._lock:
                self._wakeups.remove(entry)

    def _log_after(self, log_id: int, limit: int) -> builtins.list[tuple[int, UpdateRecord]]:
        with self._lock:
            if self._closed:
                return []
            rows = self._conn.execute(
                "SELECT id, doc_id, hlc, origin, seq, payload, kind FROM log WHERE id > ?"
                " ORDER BY id LIMIT ?",
                (log_id, limit),
            ).fetchall()
        return [(r[0], UpdateRecord(r[1], Hlc(r[2]), r[3], r[4], bytes(r[5]), r[6])) for r in rows]

    def _notify(self, records: builtins.list[UpdateRecord]) -> None:
        if self._tx is not None:  # told once the transaction has ended, so callbacks can read
            self._deferred.extend(records)
            return
        for record in records:
            for callback in list(self._listeners):
                try:
                    callback(record)
                except Exception:
                    log.exception(
                        "subscriber %r failed on %s; it stays subscribed", callback, record.doc_id
                    )
        if records:
            self._wake_watchers()

    def _wake_watchers(self) -> None:
        for loop, event in list(self._wakeups):
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    # ------------------------------------------------------------------ info

    @property
    def hlc(self) -> Hlc:
        """The last HLC this region issued or observed."""
        with self._lock:
            self._check()
            return max(self._last_hlc, Hlc(int(self._meta("last_hlc") or 0)))

    def info(self) -> dict[str, Any]:
        """Counts and clocks, for humans and monitoring."""
        with self._lock:
            self._check()
            count = self._conn.execute
            origins = {
                row[0]: {
                    "max_seq": row[1],
                    "contiguous_seq": row[2],
                    "contiguous_hlc": str(Hlc(row[3])),
                }
                for row in count(
                    "SELECT origin, max_seq, contiguous_seq, contiguous_hlc"
                    " FROM origins ORDER BY origin"
                )
            }
            page_size = count("PRAGMA page_size").fetchone()[0]
            pages = count("PRAGMA page_count").fetchone()[0]
            return {
                "path": str(self.path),
                "region": self.region,
                "schema_version": storage.SCHEMA_VERSION,
                "documents": count("SELECT count(*) FROM docs").fetchone()[0],
                "live_documents": count("SELECT count(*) FROM docs WHERE live").fetchone()[0],
                "log_records": count("SELECT count(*) FROM log").fetchone()[0],
                "last_hlc": str(self.hlc),
                "compacted_hlc": str(Hlc(int(self._meta("compacted_hlc") or 0))),
                "origins": origins,
                "merkle_root": self.merkle_root().hex(),
                "file_bytes": page_size * pages,
                "cached_documents": len(self._cache),
                "clients": self._clients.summary(),
                "updates_waiting": self._cache.waiting(),
                "updates_reapplied": self._apply_stats.reapplied,
            }

    def client_ids(self) -> dict[int, str]:
        """Every Yjs client id seen writing in this store, with the region it belongs to.

        Each process that opens a store writes under a client id of its own
        (``info()["clients"]["this_process"]``); see :mod:`crdtdb.clients`.
        """
        with self._lock:
            self._check()
            return self._clients.all()

    # ============================================================ internals

    def _meta(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _max_log_id(self) -> int:
        row = self._conn.execute("SELECT max(id) FROM log").fetchone()
        return int(row[0] or 0)

    def _doc_hlc(self, doc_id: str) -> Hlc:
        row = self._conn.execute("SELECT hlc FROM docs WHERE doc_id = ?", (doc_id,)).fetchone()
        return Hlc(row[0]) if row else self.hlc

    def _handle(self, doc_id: DocId | str) -> DocHandle:
        """The cached document, loaded from disk if needed."""
        handle = self._cache.get(doc_id)
        if handle is not None:
            return handle
        if self._tx is not None and doc_id in self._tx.handles:
            return self._tx.handles[doc_id]
        handle = self._load(doc_id)
        self._cache.put(doc_id, handle)
        return handle

    def _load(self, doc_id: str) -> DocHandle:
        """Read a document from disk (snapshot, then the log records after it)."""
        handle = DocHandle(self._client_id, self._apply_stats)
        in_tx = self._conn.in_transaction
        if not in_tx:
            self._conn.execute("BEGIN")
        try:
            handle.loaded_through = load_into(self._conn, doc_id, handle)
        finally:
            if not in_tx:
                self._conn.execute("COMMIT")
        return handle

    def _refresh(self) -> None:
        """Catch up with commits other processes made since our last look."""
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        self._data_version = version
        self._counters = None
        epoch = int(self._meta("compaction_epoch") or 0)
        if epoch != self._epoch:  # records we never saw may have been folded away
            self._epoch = epoch
            self._cache.clear()
        rows = self._conn.execute(
            "SELECT id, doc_id, hlc, origin, seq, payload, kind FROM log WHERE id > ? ORDER BY id",
            (self._seen_id,),
        ).fetchall()
        seen: builtins.list[UpdateRecord] = []
        for log_id, doc_id, hlc, origin, seq, payload, kind in rows:
            handle = self._cache.peek(doc_id)
            if handle is None and self._tx is not None:
                handle = self._tx.handles.get(doc_id)
            if handle is not None and log_id > handle.loaded_through:
                handle.apply(payload)
                handle.loaded_through = log_id
            self._seen_id = log_id
            seen.append(UpdateRecord(doc_id, Hlc(hlc), origin, seq, bytes(payload), kind))
        stored = Hlc(int(self._meta("last_hlc") or 0))
        self._last_hlc = max(self._last_hlc, stored)
        self._notify(seen)

    # ------------------------------------------------------- transactions

    def _begin_transaction(self, tx: Transaction) -> None:
        self._lock.acquire()
        if self._closed or self._tx is not None:
            self._lock.release()
            self._check()
            raise TransactionError(
                "nested transaction: a Database runs one transaction at a time per thread;"
                " do all the edits in the outer `with db.transaction()` block"
            )
        self._refresh()
        self._tx = tx

    def _end_transaction(self, tx: Transaction) -> None:
        if self._tx is tx:
            self._tx = None
            deferred, self._deferred = self._deferred, []
            try:
                self._notify(deferred)
            finally:
                self._lock.release()

    def _rollback(self, handles: dict[str, DocHandle]) -> None:
        for doc_id, handle in handles.items():
            handle.end()
            handle.take_pending()
            self._cache.evict(doc_id)

    def _commit(
        self, handles: dict[str, DocHandle]
    ) -> tuple[Hlc, builtins.list[UpdateRecord]] | None:
        changes: builtins.list[tuple[str, DocHandle, builtins.list[bytes]]] = []
        try:
            for doc_id, handle in handles.items():
                handle.finish_edits()
                pending = handle.take_pending()
                if pending:
                    changes.append((doc_id, handle, pending))
        except BaseException:
            self._rollback(handles)
            raise
        if not changes:
            return None

        def body() -> tuple[tuple[Hlc, builtins.list[UpdateRecord]], builtins.list[UpdateRecord]]:
            hlc, records = self._commit_locked(changes)
            return (hlc, records), records

        try:
            committed: tuple[Hlc, builtins.list[UpdateRecord]] = self._write(body)
            return committed
        except BaseException as exc:
            self._rollback(handles)
            if isinstance(exc, ClientIdCollisionError):  # edits made under that id are void
                self._clients.draw()
                self._cache.clear()
            raise

    def _write(self, body: Callable[[], tuple[Any, builtins.list[UpdateRecord]]]) -> Any:
        """Run ``body`` in one SQLite write transaction, then notify subscribers."""
        self._conn.execute("BEGIN IMMEDIATE")
        seen_id = self._seen_id
        try:
            self._refresh()
            seen_id = self._seen_id
            result, records = body()
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            self._seen_id = seen_id  # ids of rolled-back rows will be used again
            self._counters = None
            self._clients.rolled_back()
            self._shapes.rolled_back()
            raise
        self._notify(records)
        return result

    def _read_counters(self) -> tuple[Hlc, int]:
        """The last HLC and the local max seq; call inside the write transaction."""
        if self._counters is None:
            stored = Hlc(int(self._meta("last_hlc") or 0))
            row = self._conn.execute(
                "SELECT max_seq FROM origins WHERE origin = ?", (self.region,)
            ).fetchone()
            self._counters = (max(self._last_hlc, stored), row[0] if row else 0)
        return self._counters

    def _set_last_hlc(self, hlc: Hlc) -> None:
        self._conn.execute("UPDATE meta SET value = ? WHERE key = 'last_hlc'", (int(hlc),))
        self._last_hlc = hlc

    def _commit_locked(
        self,
        changes: builtins.list[tuple[str, DocHandle, builtins.list[bytes]]],
        kind: int = WRITE,
    ) -> tuple[Hlc, builtins.list[UpdateRecord]]:
        last, seq = self._read_counters()
        hlc = tick(last, self.options.clock())
        if kind == WRITE:
            self._clients.bind_own(int(hlc))
        self._set_last_hlc(hlc)
        records = []
        for doc_id, _, pending in changes:
            seq += 1
            update = pending[0] if len(pending) == 1 else merge_updates(*pending)
            records.append(UpdateRecord(doc_id, hlc, self.region, seq, update, kind))
        # We hold the write lock and have caught up, so the ids after _seen_id are free
        # (compaction never deletes the newest record); the primary key would refuse
        # the commit otherwise.
        first_id = self._seen_id + 1
        self._conn.executemany(
            "INSERT INTO log (id, origin, seq, hlc, doc_id, payload, kind)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (first_id + i, r.origin, r.seq, int(hlc), r.doc_id, r.update, kind)
                for i, r in enumerate(records)
            ],
        )
        self._seen_id = first_id + len(records) - 1
        self._index(
            [
                (doc_id, handle, first_id + i, len(record.update), hlc, self.region)
                for i, ((doc_id, handle, _), record) in enumerate(
                    zip(changes, records, strict=True)
                )
            ]
        )
        self._conn.execute(
            "INSERT INTO origins (origin, max_seq, contiguous_seq, contiguous_hlc)"
            " VALUES (?1, ?2, ?2, ?3) ON CONFLICT (origin) DO UPDATE SET max_seq = ?2,"
            " contiguous_seq = ?2, contiguous_hlc = ?3",
            (self.region, seq, int(hlc)),
        )
        self._counters = (hlc, seq)
        return hlc, records

    def _index(self, changed: builtins.list[_DocChange], new: set[str] | None = None) -> None:
        """Record changed documents' liveness and HLC, and mark their digests stale.

        ``changed`` holds (doc_id, handle, its newest log id, bytes logged, HLC),
        once per document; ``new``, if known, those without a row yet.

        A changed document's digest is computed when the Merkle tree is next
        read (once per anti-entropy round, or by the daemon's refresh), not per
        commit: a digest scans the document's whole delete set, which grows
        with its history (``dirty`` = 1: stale, and ``digest`` is what the
        tree holds for it).

        A document new to this store is hashed now: its digest costs no more
        than what was written, and computing it now, with the document in
        hand, spares a load later. The process that refreshes the tree is
        often another one (the sync daemon, for an application's commits),
        where loading the document cost several times the digest. When a
        commit or batch creates at least ``EAGER_DIGESTS`` documents (a
        bootstrap, a bulk import), their paths are XORed into the tree now,
        sharing the upper nodes. Fewer leave that to the refresh (``dirty`` =
        2: ``digest`` is current but not in the tree yet): XORing one path per
        commit would cost the commit more than the digest.

        The load snapshot is rewritten once the log bytes written since the last
        one reach that snapshot's size (at least ``snapshot_min_bytes``): loading
        replays at most about twice the document's size, and rewriting costs at
        most one extra byte per byte logged.
        """
        looked_up = [change[0] for change in changed if new is None or change[0] not in new]
        known: dict[str, tuple[int, int, int, str]] = {
            row[0]: (row[1], row[2], row[3], row[4] or "")
            for row in self._rows_in(
                "SELECT d.doc_id, d.pending, d.hlc, d.snapshot_bytes, b.origin FROM docs d"
                " LEFT JOIN bodies b ON b.doc_id = d.doc_id WHERE d.doc_id IN ({marks})",
                looked_up,
            )
        }
        params = []
        bodies = []
        snapshots: builtins.list[tuple[str, bytes]] = []
        deltas: dict[int, int] = {}
        eager = len(changed) - len(known) >= EAGER_DIGESTS
        for doc_id, handle, log_id, size, hlc, origin in changed:
            handle.loaded_through = log_id
            digest: bytes | None = None
            dirty = STALE
            if doc_id not in known:  # new: its digest costs only what was written
                digest = merkle.doc_digest(handle.doc)
                dirty = FRESH if eager else UNTREED
                if eager:
                    _add_delta(deltas, doc_id, digest, None)
            pending, doc_hlc, snapshot_size, doc_origin = known.get(doc_id, (0, 0, 0, ""))
            pending += size
            # the newest record is the greatest (HLC, origin): the same in every region
            origin = max((doc_hlc, doc_origin), (int(hlc), origin))[1]
            found = handle.body_and_shape() if snapshot_size + pending <= BODY_MAX_BYTES else None
            body, shape = (found[0], self._shapes.id_of(found[1])) if found else (None, None)
            bodies.append((doc_id, log_id, origin, body, shape))
            snapshot_bytes: int | None = None
            snapshot_id = 0
            if pending >= max(self.options.snapshot_min_bytes, snapshot_size) and (
                not handle.waiting
            ):
                snapshot = handle.doc.get_update()
                snapshots.append((doc_id, snapshot))
                snapshot_bytes, snapshot_id, pending = len(snapshot), log_id, 0
            params.append(
                (
                    doc_id,
                    collection_of(doc_id),
                    merkle.leaf_of(doc_id),
                    handle.live,
                    max(int(hlc), doc_hlc),
                    snapshot_bytes,
                    snapshot_id,
                    pending,
                    digest,
                    dirty,
                )
            )
        # A document already stale keeps the digest the tree holds for it; one whose
        # digest was never XORed into the tree (UNTREED) has none there.
        self._conn.executemany(
            "INSERT INTO docs (doc_id, collection, leaf, live, hlc, dirty, snapshot_bytes,"
            " snapshot_id, pending, digest)"
            " VALUES (?1, ?2, ?3, ?4, ?5, ?10, coalesce(?6, 0), ?7, ?8, ?9)"
            " ON CONFLICT (doc_id) DO UPDATE SET live = ?4, hlc = ?5, dirty = 1, pending = ?8,"
            " snapshot_bytes = coalesce(?6, snapshot_bytes), snapshot_id = max(?7, snapshot_id),"
            f" digest = CASE dirty WHEN {UNTREED} THEN NULL ELSE digest END",
            params,
        )
        self._conn.executemany(
            "INSERT INTO bodies (doc_id, log_id, origin, body, shape) VALUES (?1, ?2, ?3, ?4, ?5)"
            " ON CONFLICT (doc_id) DO UPDATE SET log_id = ?2, origin = ?3, body = ?4, shape = ?5",
            bodies,
        )
        if snapshots:
            self._conn.executemany(
                "INSERT OR REPLACE INTO snapshots (doc_id, snapshot) VALUES (?, ?)", snapshots
            )
        if deltas:
            self._xor_into_tree(deltas)
        stale = self._stale_here
        for change in changed:
            if change[0] in known:
                stale.pop(change[0], None)
                stale[change[0]] = None
        while len(stale) > 4 * self._cache.capacity:  # the rest is found by their mark
            del stale[next(iter(stale))]

    def _flush_digests(self, limit: int = 1000) -> tuple[int, builtins.list[UpdateRecord]]:
        """Bring up to ``limit`` stale digests and their Merkle paths up to date.

        Runs inside one write transaction and returns how many were stale.
        XOR deltas combine in any grouping, so flushing in chunks gives the same
        tree as flushing at once, while other processes get the write lock
        between chunks (a million stale digests take about a minute).
        """
        rows = self._stale_rows(limit)
        if not rows:
            return 0, []
        deltas: dict[int, int] = {}
        self._flush_chunk(rows, deltas)
        self._xor_into_tree(deltas)
        return len(rows), []

    def _xor_into_tree(self, deltas: dict[int, int]) -> None:
        self._conn.executemany(
            "INSERT INTO merkle (node, hash) VALUES (?, ?) ON CONFLICT (node)"
            " DO UPDATE SET hash = xor_blob(hash, excluded.hash)",
            [(node, delta.to_bytes(merkle.NODE_BYTES, "big")) for node, delta in deltas.items()],
        )

    def _flush_chunk(
        self, rows: builtins.list[tuple[str, bytes | None, int]], deltas: dict[int, int]
    ) -> None:
        fresh = []
        for doc_id, old, dirty in rows:
            if dirty == UNTREED:  # hashed when created: only its path is left to do
                assert old is not None
                _add_delta(deltas, doc_id, old, None)
                fresh.append((old, doc_id))
                continue
            handle = self._cache.peek(doc_id) or self._load(doc_id)
            digest = merkle.doc_digest(handle.doc)
            _add_delta(deltas, doc_id, digest, old)
            fresh.append((digest, doc_id))
        self._conn.executemany(
            f"UPDATE docs SET digest = ?, dirty = {FRESH} WHERE doc_id = ?", fresh
        )

    def _ensure_digests(self) -> None:
        if self._conn.execute("SELECT 1 FROM docs WHERE dirty LIMIT 1").fetchone() is None:
            return  # the common case: a read, no write lock taken
        while self._write(self._flush_digests):
            pass

    def _advance_origins(self, records: builtins.list[UpdateRecord]) -> None:
        """Move each origin's max seq, and its contiguous seq over any gap now filled."""
        by_origin: dict[str, builtins.list[tuple[int, int]]] = {}
        for record in records:
            by_origin.setdefault(record.origin, []).append((record.seq, int(record.hlc)))
        for origin, batch in by_origin.items():
            row = self._conn.execute(
                "SELECT max_seq, contiguous_seq, contiguous_hlc FROM origins WHERE origin = ?",
                (origin,),
            ).fetchone()
            max_seq, contiguous, contiguous_hlc = row if row else (0, 0, 0)
            if max_seq <= contiguous:  # no gap before: past it, the log holds just this batch
                after: Iterable[tuple[int, int]] = sorted(batch)
            else:
                after = self._conn.execute(
                    "SELECT seq, hlc FROM log WHERE origin = ? AND seq > ? ORDER BY seq",
                    (origin, contiguous),
                )
            for seq, hlc in after:
                if seq != contiguous + 1:
                    break
                contiguous, contiguous_hlc = seq, hlc
            self._conn.execute(
                "INSERT INTO origins (origin, max_seq, contiguous_seq, contiguous_hlc)"
                " VALUES (?1, ?2, ?3, ?4) ON CONFLICT (origin) DO UPDATE SET max_seq = ?2,"
                " contiguous_seq = ?3, contiguous_hlc = ?4",
                (origin, max(max_seq, *(seq for seq, _ in batch)), contiguous, contiguous_hlc),
            )


def frontier_entries(
    conn: sqlite3.Connection, region: str, floor: int = 0
) -> builtins.list[tuple[str, int, Hlc]]:
    """:meth:`Database.frontier_entries` read through ``conn`` (``floor``: a clock known
    to this process that the store may not hold yet)."""
    rows = conn.execute(
        "SELECT origin, contiguous_seq, max(contiguous_hlc, complete_hlc) FROM origins"
        " WHERE origin != ?",
        (region,),
    ).fetchall()
    # regions we know of but hold nothing from: complete through 0 until they report
    silent = conn.execute(
        "SELECT region, 0, 0 FROM frontiers WHERE region != ?"
        " AND region NOT IN (SELECT origin FROM origins)",
        (region,),
    ).fetchall()
    own = conn.execute("SELECT max_seq FROM origins WHERE origin = ?", (region,)).fetchone()
    stored = conn.execute("SELECT value FROM meta WHERE key = 'last_hlc'").fetchone()
    clock = Hlc(max(floor, int(stored[0] or 0)))
    entries = [(row[0], row[1], Hlc(row[2])) for row in rows + silent]
    return [*entries, (region, own[0] if own else 0, clock)]


def frontier_clocks(
    conn: sqlite3.Connection, region: str, floor: int = 0
) -> builtins.list[tuple[str, Hlc]]:
    """:meth:`Database.frontier_clocks` read through ``conn``."""
    own = min(hlc for _, _, hlc in frontier_entries(conn, region, floor))
    rows = conn.execute("SELECT region, hlc FROM frontiers").fetchall()
    return [*((row[0], Hlc(row[1])) for row in rows), (region, own)]


def load_into(conn: sqlite3.Connection, doc_id: str, handle: DocHandle) -> int:
    """Apply a stored document (load snapshot, then the log after it) to ``handle``.

    Call inside a read transaction of ``conn``; returns the newest log id applied.
    """
    row = conn.execute(
        "SELECT s.snapshot, d.snapshot_id FROM docs d LEFT JOIN snapshots s"
        " ON s.doc_id = d.doc_id WHERE d.doc_id = ?",
        (doc_id,),
    ).fetchone()
    through = 0
    if row is not None:
        if row[0] is not None:
            handle.apply(row[0])
        through = row[1]
    for log_id, payload in conn.execute(
        "SELECT id, payload FROM log WHERE doc_id = ? AND id > ? ORDER BY id", (doc_id, through)
    ):
        handle.apply(payload)
        through = log_id
    return int(through)


_open_stores: weakref.WeakSet[Database] = weakref.WeakSet()
_inherited: builtins.list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    """A forked child must not use its parent's stores: it would write under the parent's
    Yjs client id (each would hide the other's edits), through an SQLite connection that
    SQLite forbids to cross a fork. Its copies are closed, their connections left alone."""
    for db in list(_open_stores):
        if not db._closed:
            db._forked = db._closed = True
            _inherited.append(db._conn)  # never closed or freed here: the parent's


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_DocChange = tuple[str, DocHandle, int, int, Hlc, str]
"""(doc_id, handle, its newest log id, bytes logged, HLC, that record's origin): one changed
document of a commit or batch."""


def _add_delta(deltas: dict[int, int], doc_id: str, digest: bytes, old: bytes | None) -> None:
    """XOR into ``deltas`` (by tree node) what a document's new digest changes on its path."""
    delta = int.from_bytes(merkle.contribution(doc_id, digest), "big")
    if old is not None:
        delta ^= int.from_bytes(merkle.contribution(doc_id, bytes(old)), "big")
    for node in merkle.path_to_root(merkle.leaf_of(doc_id)):
        deltas[node] = deltas.get(node, 0) ^ delta


def _doc_changes(
    records: builtins.list[UpdateRecord], handles: dict[str, DocHandle], first_id: int
) -> builtins.list[_DocChange]:
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
        (doc_id, handles[doc_id], log_id, size[doc_id], Hlc(newest[doc_id][0]), newest[doc_id][1])
        for doc_id, log_id in newest_id.items()
    ]
