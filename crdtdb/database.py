"""The embedded database: one region's data directory, opened by an application.

:class:`Database` is the public face. It owns nothing itself: an
:class:`~crdtdb.engine.Engine` holds the connection, the lock, the loaded
documents and the change signal, and facets each own one concern on top of
it — writes (local commit and remote apply), digests and the Merkle tree,
the frontier, the change feed, and history. The replication surface they
make up is :class:`~crdtdb.replica.Replica` (``db.replica``), which this
class extends with documents, transactions, subscriptions and time travel.

Write path: edits on live pycrdt documents are captured; at commit one SQLite
write transaction (``BEGIN IMMEDIATE``, so all processes on the directory are
serialised) first catches up with other processes' commits, then issues the
HLC and the region's next sequence numbers, appends the records to the log,
updates each document's row, digest state and body, and commits. The HLC and
the sequence numbers are read from and written to the file inside that
transaction, so they stay strictly increasing and contiguous across processes
and restarts. Only then are subscribers told.

Read path: a bounded LRU of loaded documents. Before each operation
``PRAGMA data_version`` says whether another process committed; if so, the
new log records are applied to the cached documents.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import storage
from .engine import Engine, Listener, Options, check_limit, check_seconds
from .errors import BootstrappingError, UsageError, shown
from .feed import Subscription
from .history import History
from .hlc import Hlc
from .ids import RESERVED_COLLECTION, validate_collection, validate_doc_id
from .records import UpdateRecord
from .replica import Replica
from .transaction import Transaction

if TYPE_CHECKING:
    from .history import AsOf
    from .snapshot import Snapshot

__all__ = ["BOOTSTRAP_MARKER", "Database", "Options", "Subscription", "open"]

BOOTSTRAP_MARKER = "bootstrap.pending"
"""In a data directory while its daemon installs a peer's snapshot (:mod:`crdtdb.sync.bootstrap`):
until it is gone, opening the directory is refused, so no write is lost under the install."""

OPTION_NAMES = frozenset(field.name for field in fields(Options))

_DocIds = list[str]  # ``Database.list`` hides the builtin inside the class body


def open(path: str | Path, region: str | None = None, **options: Any) -> Database:
    """Open the region store in directory ``path``, creating it if ``region`` is given.

    ``options`` are the fields of :class:`Options`.
    """
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise UsageError(
            f"unknown option {shown(unknown[0])}: crdtdb.open() takes region and"
            f" {', '.join(sorted(OPTION_NAMES))}"
        )
    return Database(path, region, Options(**options))


class Database(Replica):
    """One region's store. Thread-safe; several processes may open the same directory."""

    def __init__(
        self, path: str | Path, region: str | None = None, options: Options | None = None
    ) -> None:
        if isinstance(path, str | Path) and (Path(path) / BOOTSTRAP_MARKER).exists():
            raise BootstrappingError(
                f"{path}: the region's daemon is bootstrapping this directory from a peer's"
                " snapshot; retry once it has finished (`crdtdb status` shows it serving)"
            )
        super().__init__(Engine(path, region, options or Options()))
        self._history = History(self._engine)

    @property
    def options(self) -> Options:
        return self._engine.options

    @property
    def path(self) -> Path:
        return self._engine.path

    @property
    def replica(self) -> Replica:
        """This store's replication surface (what a sync session needs), as one object."""
        return self

    # ------------------------------------------------------------- lifecycle

    def close(self) -> None:
        self._engine.close()

    @property
    def closed(self) -> bool:
        return self._engine.closed

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<crdtdb.Database region={self.region!r} path={str(self.path)!r}>"

    # ------------------------------------------------------------- documents

    def transaction(self, *, _reserved: bool = False) -> Transaction:
        """An atomic transaction across documents: ``with db.transaction() as tx: ...``.

        (``_reserved``: for :mod:`crdtdb.membership` only, which edits the reserved
        collection ``_cluster``.)"""
        self._engine.check()
        return Transaction(self._engine, self._writer, reserved=_reserved)

    def put(self, doc_id: str, value: Mapping[str, Any]) -> Hlc:
        """Make document ``doc_id`` equal to ``value``; return the HLC it holds that value at."""
        self._engine.check_no_tx_here("db.put()")
        # Not inside the lock: it may join a commit group (crdtdb.group).
        with self._one_shot() as tx:
            tx.put(doc_id, value)
        return tx.hlc if tx.hlc is not None else self._unchanged_hlc(doc_id)

    def update(self, doc_id: str, patch: Mapping[str, Any]) -> Hlc:
        """Set the top-level keys in ``patch``, leave the rest; return the HLC."""
        self._engine.check_no_tx_here("db.update()")
        with self._one_shot() as tx:
            tx.update(doc_id, patch)
        return tx.hlc if tx.hlc is not None else self._unchanged_hlc(doc_id)

    def _one_shot(self) -> Transaction:
        self._engine.check()
        return Transaction(self._engine, self._writer, one_shot=True)

    def _unchanged_hlc(self, doc_id: str) -> Hlc:
        with self._engine.lock:
            return self._engine.doc_hlc(doc_id)

    def delete(self, doc_id: str) -> Hlc | None:
        """Delete a whole document; return the commit HLC, or None if it did not exist."""
        validate_doc_id(doc_id)
        with self._engine.lock:
            self._engine.check_no_tx("db.delete()")
            self._engine.refresh()
            if not self._engine.handle(doc_id).live:
                return None
            with self.transaction() as tx:
                tx.delete(doc_id)
            return tx.hlc

    def get(self, doc_id: str) -> dict[str, Any] | None:
        """The document as a plain dict, or None if it does not exist or was deleted."""
        doc_id = validate_doc_id(doc_id)
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("db.get()")
            engine.refresh()
            handle = engine.handle(doc_id)
            if not handle.live:
                return None
            result: dict[str, Any] = handle.json()
            return result

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and self.get(doc_id) is not None

    def collections(self) -> _DocIds:
        """Names of the collections that hold at least one live document."""
        engine = self._engine
        with engine.lock:
            engine.check()
            rows = engine.conn.execute(
                "SELECT DISTINCT collection FROM docs WHERE live AND collection != ?"
                " ORDER BY collection",
                (RESERVED_COLLECTION,),
            )
            return [row[0] for row in rows]

    def list(
        self, collection: str, *, after: str | None = None, limit: int | None = None
    ) -> _DocIds:
        """Ids of the live documents in ``collection``, sorted; page with ``after``."""
        validate_collection(collection)
        limit = check_limit(limit)
        if after is not None and not isinstance(after, str):
            raise UsageError(f"after is the last doc id of the page before, not {shown(after)}")
        sql = "SELECT doc_id FROM docs WHERE collection = ? AND live AND doc_id > ? ORDER BY doc_id"
        params: tuple[Any, ...] = (collection, after or "")
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        engine = self._engine
        with engine.lock:
            engine.check()
            return [row[0] for row in engine.conn.execute(sql, params)]

    # ---------------------------------------------------------- change feed

    def changes(
        self, since: Hlc | int | None = None, *, origin: str | None = None, limit: int | None = None
    ) -> Iterator[UpdateRecord]:
        """Records with HLC above ``since``, in HLC order (ties: origin, seq).

        ``origin`` keeps only the records that region made. To follow one origin
        by sequence number instead, use :meth:`records_from`.
        """
        return self._feed.changes(since, origin=origin, limit=limit)

    def subscribe(self, callback: Listener) -> Subscription:
        """Call ``callback(record)`` after each commit this object sees.

        That is its own commits, applied remote records, and commits of other
        processes on the same directory (seen on this object's next operation;
        use :meth:`watch` to follow them without polling yourself).
        """
        return self._feed.subscribe(callback)

    def watch(
        self, *, from_start: bool = False, poll_interval: float = 0.005, after: int | None = None
    ) -> AsyncGenerator[UpdateRecord, None]:
        """Follow the log as it grows, whoever writes it (this process or another).

        From now on by default; from the start of the log with ``from_start``; or
        from just after log position ``after`` (a :meth:`log_position`), in the
        order records arrived here.
        """
        if check_seconds(poll_interval, "poll_interval") == 0:
            raise UsageError("poll_interval must be above 0 seconds, e.g. 0.005")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise UsageError(f"after must be a log position from log_position(), not {after!r:.40}")
        return self._feed.watch(from_start=from_start, poll_interval=poll_interval, after=after)

    # --------------------------------------------------------------- history

    def snapshot(self) -> Snapshot:
        """A consistent read-only cut of the store, on a connection of its own.

        For readers that copy the store elsewhere (the query layer): it holds one
        SQLite read transaction until closed, which never holds a writer back.
        Use it as a context manager.
        """
        return self._history.snapshot()

    def as_of(self, hlc: Hlc | int | str) -> AsOf:
        """A read-only view of the database at the consistent cut ``hlc``."""
        return self._history.as_of(hlc)

    def compact(
        self,
        *,
        retention_s: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Fold log records older than the retention window into snapshots.

        Returns the number of log records removed. Time travel and ``changes``
        keep working for HLCs inside the window; older ones raise
        ``HistoryCompactedError``. The pages freed go back to the file system
        (stores created at schema 5 or later; see
        :func:`crdtdb.storage.release_free_pages`).
        """
        if retention_s is None:
            keep = self.options.history_retention_s
        else:
            keep = check_seconds(retention_s, "retention_s")
        if progress is not None and not callable(progress):
            raise UsageError(f"progress is a function (done, total), not {shown(progress)}")
        horizon_ms = max(0, self.options.clock() - int(keep * 1000))
        with self._engine.lock:
            self._engine.check_no_tx("compact()")
            # Never above the global frontier: a region that has not got a record yet
            # must still be able to get it from our log.
            horizon = min(Hlc.from_parts(horizon_ms, 0), self.frontier())
            removed = self._history.compact(horizon, progress)
        if removed:
            # Outside the lock, in short steps: this process's writers go on meanwhile.
            storage.release_free_pages(self._engine.path)
        return removed

    @property
    def compacted_hlc(self) -> Hlc:
        """Time travel and changes() reach back to just above this HLC."""
        return self._history.compacted_hlc()

    # ------------------------------------------------------------------ info

    @property
    def hlc(self) -> Hlc:
        """The last HLC this region issued or observed."""
        engine = self._engine
        with engine.lock:
            engine.check()
            return max(engine.last_hlc, engine.stored_hlc())

    def info(self) -> dict[str, Any]:
        """Counts and clocks, for humans and monitoring."""
        engine = self._engine
        with engine.lock:
            engine.check()
            count = engine.conn.execute
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
                "compacted_hlc": str(engine.compacted_hlc()),
                "origins": origins,
                "merkle_root": self.merkle_root().hex(),
                "file_bytes": page_size * pages,
                "cached_documents": len(engine.cache),
                "clients": engine.clients.summary(),
                "provenance": self.chains.summary(),
                "updates_waiting": engine.cache.waiting(),
                "updates_reapplied": engine.apply_stats.reapplied,
            }

    def client_ids(self) -> dict[int, str]:
        """Every Yjs client id seen writing in this store, with the region it belongs to.

        Each process that opens a store writes under a client id of its own
        (``info()["clients"]["this_process"]``); see :mod:`crdtdb.clients`.
        """
        with self._engine.lock:
            self._engine.check()
            return self._engine.clients.all()
