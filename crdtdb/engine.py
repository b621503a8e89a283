"""The store's engine: what every facet of a :class:`crdtdb.Database` builds on.

It owns this process's SQLite connection to a region's directory and the lock
around it, runs write transactions (``BEGIN IMMEDIATE``: every process on the
directory is serialised), catches up with the commits other processes made
(``PRAGMA data_version`` says when), keeps the loaded documents, reads the
store's metadata, and carries the one change signal that tells listeners of
every record this process commits, applies or sees.

The facets above it each own one concern and reach only this engine (and, for
the write path, the public methods of the facets it feeds): ``writes``
(local commit and remote apply), ``digests`` (digests and the Merkle tree),
``frontier``, ``feed`` (subscribe, watch, changes) and ``history`` (as_of,
compaction). ``Database`` is the public face over them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import storage
from ._cache import ApplyStats, DocCache, DocHandle
from .clients import ClientBindings
from .errors import (
    DatabaseClosedError,
    HistoryCompactedError,
    RegionMismatchError,
    StoreError,
    TransactionError,
    UsageError,
    shown,
)
from .fence import FENCE_KEY, ClockFence, decode_fence, encode_fence
from .group import CommitGroup, EngineLock
from .hlc import DEFAULT_MAX_OFFSET_MS, MAX_WALL_MS, Hlc, WallClock, system_wall_ms
from .ids import DocId, RegionId, validate_region
from .membership import MEMBERS_DOC
from .records import MAX_SQLITE_INT, UpdateRecord
from .shape import ShapeIds
from .signal import ChangeSignal, Listener
from .writelock import WriteLock

if TYPE_CHECKING:
    from .rows import LogRows

__all__ = [
    "ChangeSignal",
    "Engine",
    "Listener",
    "Options",
    "WriteBody",
    "check_count",
    "check_limit",
    "check_seconds",
    "load_into",
]

log = logging.getLogger("crdtdb")

WriteBody = Callable[[], tuple[Any, list[UpdateRecord]]]
"""The work of one write transaction: returns (its result, the records it wrote)."""
GroupBody = Callable[[], tuple[Any, list[UpdateRecord], "LogRows"]]
"""A local commit in a group: (its result, its records, the rows the leader writes)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """How a store is opened. Every field has a default suited to production, and is
    checked when the options are made (a bad value raises UsageError saying what is allowed)."""

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

    def __post_init__(self) -> None:
        # Checked here, before a store is opened or created: a typo such as
        # durability="FULL" must not silently run without fsync.
        for name, (allowed, wanted) in _OPTION_CHECKS.items():
            value = getattr(self, name)
            if not allowed(value):
                raise UsageError(f"option {name}={shown(value)} is not allowed: use {wanted}")


def _whole(low: int, high: int) -> Callable[[object], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


_OPTION_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "cache_size": (_whole(1, 2**63 - 1), "a whole number of documents >= 1"),
    "durability": (lambda v: v in ("normal", "full"), "'normal' or 'full'"),
    "max_clock_offset_ms": (_whole(0, MAX_WALL_MS), "a whole number of milliseconds >= 0"),
    "history_retention_s": (_seconds, "a finite number of seconds >= 0"),
    "snapshot_min_bytes": (_whole(0, 2**63 - 1), "a whole number of bytes >= 0"),
    "wal_autocheckpoint": (_whole(0, 2**31 - 1), "a whole number of WAL pages >= 0"),
    "clock": (callable, "a function returning wall-clock milliseconds"),
}
"""Per field of :class:`Options`: what a value must pass, and what to say if it does not."""


def check_count(value: object, what: str) -> int:
    """A whole number >= 0 the caller passed (a limit, a sequence number), as SQLite can
    take it: larger ones mean the same as 2**63-1, the largest a store holds."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{what} must be a whole number >= 0, not {shown(value)}")
    return min(value, MAX_SQLITE_INT)


def check_seconds(value: object, what: str) -> float:
    """A span of time the caller passed: a finite number of seconds >= 0."""
    if not _seconds(value):
        raise UsageError(
            f"{what}={shown(value)} is not allowed: use a finite number of seconds >= 0"
        )
    return float(value)  # type: ignore[arg-type]


def check_limit(limit: object, what: str = "limit") -> int | None:
    """The ``limit`` of a read: None (no limit) or a whole number >= 0."""
    if limit is None:
        return None
    if isinstance(limit, int) and not isinstance(limit, bool) and limit < 0:
        raise UsageError(f"{what}={limit} is negative: pass a number >= 0, or None for no limit")
    return check_count(limit, what)


class Engine:
    """One process's handle on a region's directory; shared by the facets.

    Every method expects the caller to hold :attr:`lock` unless it says
    otherwise; the facets take it around each public operation.
    """

    def __init__(self, path: str | Path, region: str | None, options: Options) -> None:
        if not isinstance(options, Options):
            raise UsageError(f"options must be a crdtdb.Options, not {type(options).__name__}")
        if not isinstance(path, str | os.PathLike):
            raise UsageError(f"a store's path is a str or a Path, not {type(path).__name__}")
        self.options = options
        self.path = Path(path)
        wanted = validate_region(region) if region is not None else None
        synchronous = "FULL" if options.durability == "full" else "NORMAL"
        self.conn = storage.connect(self.path, region=wanted, synchronous=synchronous)
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {options.wal_autocheckpoint}")
        stored = self.meta("region")
        if wanted is not None and stored != wanted:
            self.conn.close()
            raise RegionMismatchError(
                f"{self.path} holds region {stored!r}, not {wanted!r}: open it with"
                f" region={stored!r} (or leave region out), or use another directory"
            )
        self.region = RegionId(str(stored))
        self.write_lock = WriteLock(self.path)
        """Queues this process's write transactions with other processes' (:mod:`.writelock`)."""
        self.group: CommitGroup | None = None
        """The open commit group, if any (see :mod:`crdtdb.group`)."""
        self.lock = EngineLock(self)
        self.group_woken = threading.Condition(threading.Lock())
        """Members of a commit group wait on it for their leader's COMMIT."""
        self.tx_thread: int | None = None
        """The thread whose transaction is open, if any."""
        self.known_gen = 0
        """Moves whenever the document rows kept on handles may be out of date."""
        self.cache = DocCache(options.cache_size)
        self.apply_stats = ApplyStats()
        self.clients = ClientBindings(self.conn, self.region)
        self.shapes = ShapeIds(self.conn)
        self.signal = ChangeSignal()
        self.tx_handles: dict[str, DocHandle] | None = None
        """The documents of the open transaction, if any (one at a time per store)."""
        self.closed = False
        self.forked = False
        _open_engines.add(self)
        self.last_hlc = self.stored_hlc()
        self.data_version = -1
        # (last HLC, local max seq) as of our last look; valid while no other process
        # has committed (PRAGMA data_version unchanged), so commits need not read them.
        self.counters: tuple[Hlc, int] | None = None
        self.fence: ClockFence | None = None
        """The clock fence as of the last read of the counters (see :mod:`crdtdb.fence`)."""
        self.leaving: tuple[str | None] | None = None
        """Why the membership makes this region refuse local writes (None inside: it takes
        them), as last read; None until read again. Forgotten when another process
        commits, a transaction rolls back, or a write touches the membership document,
        so that a commit need not read the membership each time."""
        self.epoch = int(self.meta("compaction_epoch") or 0)
        self.seen_id = self.max_log_id()
        """The newest log id this process has seen (and its cached documents hold)."""

    # ------------------------------------------------------------- lifecycle

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            if self.tx_handles is not None:
                raise TransactionError("close() inside a transaction: finish the transaction first")
            self.closed = True
            self.cache.clear()
            self.conn.close()
            self.write_lock.close()
        self.signal.wake()

    def check(self) -> None:
        if self.closed:
            if self.forked:
                raise DatabaseClosedError(
                    "this database was opened before os.fork(), and a child process must not"
                    " use it (its SQLite connection and Yjs client id belong to the parent):"
                    " open the store again in the child with crdtdb.open()"
                )
            raise DatabaseClosedError("this database is closed: open it again with crdtdb.open()")

    def check_no_tx(self, what: str) -> None:
        self.check()
        if self.tx_handles is not None:
            raise TransactionError(
                f"{what} inside a transaction: use the transaction's own methods (tx.put,"
                " tx.doc, tx.delete), or call it after the `with` block"
            )

    def check_history(self, hlc: Hlc, what: str) -> None:
        floor = self.compacted_hlc()
        if hlc < floor:
            raise HistoryCompactedError(
                f"{what}: history before {floor} was compacted away; ask for a later HLC or"
                " raise history_retention_s"
            )

    @property
    def client_id(self) -> int:
        """The Yjs client id this process writes under (see :mod:`crdtdb.clients`)."""
        return self.clients.client_id

    # -------------------------------------------------------------- metadata

    def meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def compacted_hlc(self) -> Hlc:
        return Hlc(int(self.meta("compacted_hlc") or 0))

    def stored_hlc(self) -> Hlc:
        """The last HLC any process issued or observed, as the file holds it."""
        return Hlc(int(self.conn.execute(storage.STORED_HLC).fetchone()[0]))

    def max_log_id(self) -> int:
        row = self.conn.execute("SELECT max(id) FROM log").fetchone()
        return int(row[0] or 0)

    def doc_hlc(self, doc_id: str) -> Hlc:
        row = self.conn.execute("SELECT hlc FROM docs WHERE doc_id = ?", (doc_id,)).fetchone()
        return Hlc(row[0]) if row else max(self.last_hlc, self.stored_hlc())

    def rows_in(self, query: str, keys: Sequence[Any]) -> Iterator[Any]:
        """The rows of ``query`` for ``keys``, its ``{marks}`` replaced by up to 500 of them
        at a time (SQLite limits the number of parameters of one statement)."""
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            yield from self.conn.execute(query.format(marks=",".join("?" * len(chunk))), chunk)

    # ------------------------------------------------------------- documents

    def handle(self, doc_id: DocId | str) -> DocHandle:
        """The cached document, loaded from disk if needed."""
        handle = self.cache.get(doc_id)
        if handle is not None:
            return handle
        if self.tx_handles is not None and doc_id in self.tx_handles:
            return self.tx_handles[doc_id]
        handle = self.load(doc_id)
        self.cache.put(doc_id, handle)
        return handle

    def new_handle(self) -> DocHandle:
        return DocHandle(self.client_id, self.apply_stats)

    def load(self, doc_id: str) -> DocHandle:
        """Read a document from disk (snapshot, then the log records after it)."""
        if self.group is not None and doc_id in self.group.doc_ids:
            self.commit_group()  # the group's rows are not written yet: the log lacks them
        handle = self.new_handle()
        in_tx = self.conn.in_transaction
        if not in_tx:
            self.conn.execute("BEGIN")
        try:
            handle.loaded_through = load_into(self.conn, doc_id, handle)
        finally:
            if not in_tx:
                self.conn.execute("COMMIT")
        return handle

    def refresh(self) -> None:
        """Catch up with commits other processes made since our last look."""
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self.data_version:
            return
        self.data_version = version
        self.counters = None
        self.leaving = None
        self.known_gen += 1
        epoch = int(self.meta("compaction_epoch") or 0)
        if epoch != self.epoch:  # records we never saw may have been folded away
            self.epoch = epoch
            self.cache.clear()
        rows = self.conn.execute(
            "SELECT id, doc_id, hlc, origin, seq, payload, kind FROM log WHERE id > ? ORDER BY id",
            (self.seen_id,),
        ).fetchall()
        seen: list[UpdateRecord] = []
        for log_id, doc_id, hlc, origin, seq, payload, kind in rows:
            handle = self.cache.peek(doc_id)
            if handle is None and self.tx_handles is not None:
                handle = self.tx_handles.get(doc_id)
            if handle is not None and log_id > handle.loaded_through:
                handle.apply(payload)
                handle.loaded_through = log_id
            self.seen_id = log_id
            seen.append(UpdateRecord(doc_id, Hlc(hlc), origin, seq, bytes(payload), kind))
        self.last_hlc = max(self.last_hlc, self.stored_hlc())
        self.signal.emit(seen, defer=self.tx_handles is not None)

    # ---------------------------------------------------------------- writes

    def write(self, body: WriteBody) -> Any:
        """Run ``body`` in one SQLite write transaction, then tell the change signal.

        An SQLite failure (a full disk, a read-only or vanished directory) rolls the
        transaction back and is raised as a typed :class:`StoreError`; the store is as
        it was before, and the next write tries again. The document rows kept on handles
        are read again after it (what a body keeps there itself stays valid).
        """
        if self.group is not None:  # taken with the lock held since before the group
            self.commit_group()
        self.known_gen += 1
        seen_id = self.seen_id
        self.write_lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.refresh()
            seen_id = self.seen_id
            result, records = body()
            self.conn.execute("COMMIT")
        except BaseException as exc:
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # it may be rolled back already
                    self.conn.execute("ROLLBACK")
            self._rolled_back(seen_id)
            if isinstance(exc, sqlite3.Error):
                raise storage.store_error(self.path, exc) from exc
            raise
        finally:
            self.write_lock.release()
        self.signal.emit(records, defer=self.tx_handles is not None)
        return result

    def _rolled_back(self, seen_id: int) -> None:
        """Forget what a rolled-back write left in memory."""
        self.seen_id = seen_id  # ids of rolled-back rows will be used again
        self.counters = None
        self.leaving = None
        self.known_gen += 1
        self.clients.rolled_back()
        self.shapes.rolled_back()

    # ---------------------------------------------------------- group commit

    def join(self, body: GroupBody) -> Any:
        """Prepare a local commit in the open group, opening the group if there is none
        (see :mod:`crdtdb.group`): ``body`` issues its clock and sequence numbers and
        returns its rows, which the group's leader writes with the other members' just
        before the group's COMMIT, when the lock is released. A body that raises has
        queued nothing: the group goes on without it."""
        group = self.group
        seen_id, counters = self.seen_id, self.counters
        if group is None:
            self.write_lock.acquire()  # held until commit_group, or released below
        try:
            if group is None:
                self.conn.execute("BEGIN IMMEDIATE")  # the group's transaction begins here
                self.refresh()
                seen_id = self.seen_id
                group = CommitGroup(seen_id, self.group_woken)
            result, records, rows = body()
        except BaseException as exc:
            if self.group is None:
                if self.conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                self.write_lock.release()
                self._rolled_back(seen_id)
            else:  # the members before it stay as they are: only its ids and seqs go back
                self.seen_id, self.counters = seen_id, counters
            if isinstance(exc, sqlite3.Error):
                raise storage.store_error(self.path, exc) from exc
            raise
        self.group = group
        group.add(records, rows)
        return result

    def commit_group(self) -> None:
        """Commit the open group and wake its members (the leader's part; under the lock).
        Never raises for an SQLite failure: the members raise it, each in its thread."""
        group, self.group = self.group, None
        if group is None:
            return
        try:
            if group.rows is not None:
                group.rows.store(self.conn)
            if MEMBERS_DOC in group.doc_ids:  # a member read it before its rows were stored
                self.leaving = None
            self.conn.execute("COMMIT")  # the group's transaction commits here
        except BaseException as exc:
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            self.write_lock.release()
            if isinstance(exc, sqlite3.Error):
                interrupted = storage.take_interrupt(exc)
                if interrupted is None:
                    self._fail_group(group, storage.store_error(self.path, exc))
                    return
                exc = interrupted
            self._fail_group(group, StoreError(f"{self.path}: the commit was interrupted"))
            raise exc
        self.write_lock.release()
        try:
            self.signal.emit(group.records, defer=self.tx_handles is not None)
        finally:
            group.finish()

    def _fail_group(self, group: CommitGroup, error: StoreError) -> None:
        self._rolled_back(group.seen_id)
        for doc_id in group.doc_ids:  # their edits were never stored: reload from disk
            self.cache.evict(doc_id)
        group.finish(error)

    def await_group(self, group: CommitGroup) -> None:
        """Return once ``group`` committed (raise its error if it failed). A thread that
        still holds the lock (a transaction inside a locked section) commits it itself."""
        if not group.done and self.lock.held():
            self.commit_group()
        group.outcome()

    def read_counters(self) -> tuple[Hlc, int]:
        """The last HLC and the local max seq; call inside the write transaction."""
        if self.counters is None:
            # The clock fence rides on this read: a commit pays no statement for it.
            seq, stored, fence = self.conn.execute(
                "SELECT (SELECT max_seq FROM origins WHERE origin = ?),"
                f" ({storage.STORED_HLC}),"
                " (SELECT value FROM meta WHERE key = ?)",
                (self.region, FENCE_KEY),
            ).fetchone()
            self.fence = decode_fence(fence) if fence is not None else None
            self.counters = (max(self.last_hlc, Hlc(int(stored or 0))), seq or 0)
        return self.counters

    def check_fence(self, now_ms: int) -> None:
        """Refuse a local write while the clock fence holds; after :meth:`read_counters`."""
        if self.fence is not None:
            refusal = self.fence.refusal(now_ms)
            if refusal is not None:
                raise refusal

    def set_fence(self, fence: ClockFence | None) -> None:
        """Write (or, with None, lift) the clock fence; inside a write transaction."""
        if fence is None:
            self.conn.execute("DELETE FROM meta WHERE key = ?", (FENCE_KEY,))
        else:
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (FENCE_KEY, encode_fence(fence)),
            )
        self.fence = fence

    def set_last_hlc(self, hlc: Hlc) -> None:
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'last_hlc'", (int(hlc),))
        self.last_hlc = hlc

    def bump_epoch(self) -> None:
        """Note that records were folded away: other processes drop their loaded documents."""
        self.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'compaction_epoch'")
        self.epoch = int(self.meta("compaction_epoch"))

    # ---------------------------------------------------------- transactions

    def begin(self, handles: dict[str, DocHandle], *, join: bool = False) -> None:
        """Hold the lock for a transaction over ``handles`` until :meth:`end`.

        ``join``: it may join an open commit group, which then waits for it. Only a
        transaction that runs no application code may: a ``with`` block could wait
        for a thread whose commit is in the group, which would wait for the block.
        Any other commits the open group first (it may still lead a group)."""
        if join:
            self.lock.acquire_to_join()
        else:
            self.lock.acquire()
        if self.closed or self.tx_handles is not None:
            self.lock.release()
            self.check()
            raise TransactionError(
                "nested transaction: a Database runs one transaction at a time per thread;"
                " do all the edits in the outer `with db.transaction()` block"
            )
        if self.group is None:  # inside an open group, no other process can have committed
            self.refresh()
        self.tx_handles = handles
        self.tx_thread = threading.get_ident()

    def end(self, handles: dict[str, DocHandle]) -> None:
        if self.tx_handles is handles:
            self.tx_handles = None
            self.tx_thread = None
            try:
                self.signal.flush()
            finally:
                self.lock.release()

    def check_no_tx_here(self, what: str) -> None:
        """:meth:`check_no_tx` without the lock: whether this thread has a transaction open."""
        self.check()
        if self.tx_thread == threading.get_ident():
            self.check_no_tx(what)


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


_open_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_inherited: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    """A forked child must not use its parent's stores: it would write under the parent's
    Yjs client id (each would hide the other's edits), through an SQLite connection that
    SQLite forbids to cross a fork. Its copies are closed, their connections left alone."""
    for engine in list(_open_engines):
        if not engine.closed:
            engine.forked = engine.closed = True
            _inherited.append(engine.conn)  # never closed or freed here: the parent's
            engine.write_lock.close()  # the parent's lock stays held if it holds it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
