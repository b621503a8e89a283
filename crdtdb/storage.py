"""The on-disk format: one SQLite file (WAL mode) per region directory.

Tables:

- ``meta``: schema facts and clocks (region, last HLC issued, compaction state).
- ``origins``: per origin region, the highest sequence number held, the
  highest *contiguous* one (with its HLC), and ``complete_hlc``: every record
  of that origin with an HLC at or below it is held (learned from peers'
  frontier reports, which also cover origins that have been idle).
- ``frontiers``: ``C_R`` gossiped for other regions R (see
  :meth:`crdtdb.Database.frontier`).
- ``log``: every update record ``(origin, seq, hlc, doc_id, update)``; ``id``
  is the local arrival order, so other processes can follow the log by id.
  Ids are never reused because compaction never deletes the newest record
  (cheaper than AUTOINCREMENT, which costs a page write per commit).
  Three indexes, each for the reads that need it and nothing more (schema 5
  slimmed them; ``bench/bench_footprint.py`` measures them):
  ``(origin, seq)`` (unique: the replication reads and the duplicate check),
  ``log_doc (doc_id)`` (a document's records, in id order: SQLite appends the
  rowid to every index entry, so ``(doc_id, id)`` stored the id twice) and
  ``log_hlc (hlc)`` (the change feed in HLC order and the time-travel and
  compaction cuts; ties on an HLC, rare, are ordered by origin and seq from
  the row). Before schema 5 ``log_hlc`` also held origin and seq: 27 bytes an
  entry, against 19.
- ``docs``: per document its collection, liveness, last HLC, its digest and
  where that stands (``dirty``: 0 current and in the Merkle tree, 1 changed
  since, the tree still holding ``digest``, 2 current but not in the tree
  yet; see :class:`crdtdb.digests.DigestState`), and the
  bookkeeping of its load snapshot: ``snapshot_id`` (the log id it holds the
  state through), ``snapshot_bytes`` (its size) and ``pending`` (log bytes
  written since).
- ``snapshots``: per document the load snapshot itself (full state through
  ``docs.snapshot_id``, to load quickly).
- ``bases``: per document the state of every record compacted away, for
  time travel.

  Both blobs live outside ``docs`` because every commit rewrites the
  document's ``docs`` row, and SQLite rewrites a row whole: with the blobs in
  it, a commit to a large document cost time in proportion to the document's
  size (schema 1 did this; it is migrated on open).
- ``merkle``: the anti-entropy tree (see :mod:`crdtdb.merkle`).
- ``bodies``: per document its JSON (for readers that do not load CRDTs: the
  query layer), the id and origin of its newest log record. Written by the
  commit that changes the document, while its JSON is small; ``body`` is
  NULL for a deleted document and for one too large to rewrite per commit
  (``crdtdb.writes.BODY_MAX_BYTES``): a reader loads that one. Documents of a
  schema-2 store have no row until they change. ``shape`` numbers the body's
  shape in ``shapes`` (see :mod:`crdtdb.shape`).
- ``clients``: every Yjs client id seen writing items, bound to the one origin
  region that authors with it (see :mod:`crdtdb.clients`); ``collisions``:
  each record refused because a second origin authored under a bound client
  id, counted (schema 3).

``log.kind`` says where a record's items come from (``crdtdb.records``): 0 an
edit its origin made (its items are checked against ``clients``), 1 an
anti-entropy repair (items of other origins, carried), 2 written before
schema 3 (never checked).

A store created at schema 5 or later has ``PRAGMA auto_vacuum = INCREMENTAL``
(it can only be set before the first table exists): the pages compaction
frees are handed back to the file system by :func:`release_free_pages`, in
short steps. Stores created earlier keep ``auto_vacuum`` off (turning it on
takes a ``VACUUM``, which rewrites the file and holds every writer back while
it runs): SQLite reuses their free pages for later writes, and an operator who
wants the space back runs, once, ``PRAGMA auto_vacuum = INCREMENTAL; VACUUM``
on the file (see the README, "Compaction").

The file is marked with ``PRAGMA application_id`` so that a foreign SQLite
file is refused rather than written into, and ``PRAGMA user_version`` holds
the schema version so that an older crdtdb refuses a newer store.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from .errors import (
    NoStoreError,
    NotAStoreError,
    SchemaVersionError,
    StoreError,
    StoreFullError,
    StoreIOError,
    StoreReadOnlyError,
)
from .merkle import xor_bytes

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "STORED_HLC",
    "STORE_FILE",
    "checkpoint",
    "connect",
    "release_free_pages",
    "wal_path",
]

STORE_FILE = "crdtdb.sqlite3"
APPLICATION_ID = 0x43524454  # "CRDT"
SCHEMA_VERSION = 6
STORED_HLC = (
    "SELECT max(coalesce((SELECT value FROM meta WHERE key = 'last_hlc'), 0),"
    " coalesce((SELECT contiguous_hlc FROM origins"
    " WHERE origin = (SELECT value FROM meta WHERE key = 'region')), 0))"
)
"""The last HLC any process of this store issued or observed. Since schema 6 a local
commit does not write ``meta.last_hlc`` (one statement and one page less a commit):
its HLC is its origin row's ``contiguous_hlc`` (a region's own records are always
contiguous), so the clock is the larger of the two. Remote applies and heartbeats,
which make no local record, still write ``meta.last_hlc``. Schema 5 read the meta
alone, so a crdtdb of schema 5 must not open a store written this way: hence the
version, though no table changed."""
BUSY_TIMEOUT_MS = 30_000
WAL_SIZE_LIMIT = 64 << 20
"""Bytes the WAL file is cut back to when it starts over (SQLite keeps it at its largest)."""
WAL_RESTART_PAGES = 65_536
"""WAL pages (256 MiB) from which :func:`checkpoint` also rewinds the WAL."""
RESTART_WAIT_MS = 100
"""How long that rewinding checkpoint waits for readers, holding writers back meanwhile."""

log = logging.getLogger("crdtdb.storage")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY) STRICT, WITHOUT ROWID;
CREATE TABLE origins (
    origin TEXT PRIMARY KEY,
    max_seq INTEGER NOT NULL,
    contiguous_seq INTEGER NOT NULL,
    contiguous_hlc INTEGER NOT NULL,
    complete_hlc INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;
CREATE TABLE frontiers (region TEXT PRIMARY KEY, hlc INTEGER NOT NULL) STRICT, WITHOUT ROWID;
CREATE TABLE log (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hlc INTEGER NOT NULL,
    doc_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    kind INTEGER NOT NULL DEFAULT 0,
    UNIQUE (origin, seq)
) STRICT;
CREATE INDEX log_doc ON log (doc_id);
CREATE INDEX log_hlc ON log (hlc);
CREATE TABLE docs (
    doc_id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    leaf INTEGER NOT NULL,
    live INTEGER NOT NULL,
    hlc INTEGER NOT NULL,
    digest BLOB,
    dirty INTEGER NOT NULL DEFAULT 1,
    snapshot_id INTEGER NOT NULL DEFAULT 0,
    snapshot_bytes INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;
CREATE INDEX docs_live ON docs (collection, doc_id) WHERE live;
CREATE INDEX docs_dirty ON docs (doc_id) WHERE dirty;
CREATE INDEX docs_leaf ON docs (leaf);
CREATE TABLE merkle (node INTEGER PRIMARY KEY, hash BLOB NOT NULL) STRICT;
"""
_BLOB_TABLES = """
CREATE TABLE snapshots (doc_id TEXT PRIMARY KEY, snapshot BLOB NOT NULL) STRICT;
CREATE TABLE bases (doc_id TEXT PRIMARY KEY, base BLOB NOT NULL) STRICT;
"""
_CLIENT_TABLES = """
CREATE TABLE clients (
    client_id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    hlc INTEGER NOT NULL
) STRICT;
CREATE TABLE bodies (
    doc_id TEXT PRIMARY KEY,
    log_id INTEGER NOT NULL,
    origin TEXT NOT NULL,
    body TEXT,
    shape INTEGER
) STRICT, WITHOUT ROWID;
CREATE TABLE shapes (id INTEGER PRIMARY KEY, shape TEXT NOT NULL UNIQUE) STRICT;
CREATE TABLE collisions (
    client_id INTEGER NOT NULL,
    origin TEXT NOT NULL,
    bound_origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    doc_id TEXT NOT NULL,
    refused INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    PRIMARY KEY (client_id, origin)
) STRICT;
"""
_CHAIN_TABLES = """
CREATE TABLE chain (
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    prev BLOB NOT NULL,
    hash BLOB NOT NULL,
    key BLOB,
    sig BLOB,
    PRIMARY KEY (origin, seq)
) STRICT, WITHOUT ROWID;
CREATE TABLE keys (
    fingerprint BLOB PRIMARY KEY,
    region TEXT NOT NULL,
    certificate BLOB NOT NULL,
    added_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE conflicts (
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    peer TEXT NOT NULL,
    held BLOB,
    offered BLOB NOT NULL,
    seal BLOB,
    refused INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    PRIMARY KEY (origin, seq, kind, peer)
) STRICT;
"""
_SCHEMA += _BLOB_TABLES + _CLIENT_TABLES + _CHAIN_TABLES

# Schema 1 kept the snapshot and the base inside the docs row.
_MIGRATE_FROM_1 = (
    _BLOB_TABLES
    + """
INSERT INTO snapshots (doc_id, snapshot) SELECT doc_id, snapshot FROM docs
    WHERE snapshot IS NOT NULL;
INSERT INTO bases (doc_id, base) SELECT doc_id, base FROM docs WHERE base IS NOT NULL;
ALTER TABLE docs ADD COLUMN snapshot_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE docs SET snapshot_bytes = coalesce(length(snapshot), 0);
ALTER TABLE docs DROP COLUMN snapshot;
ALTER TABLE docs DROP COLUMN base;
"""
)
# Schema 2 did not know which origin authors under which Yjs client id: its records
# are kept unchecked (kind 2), and only records written from now on bind client ids.
_MIGRATE_FROM_2 = (
    _CLIENT_TABLES
    + """
ALTER TABLE log ADD COLUMN kind INTEGER NOT NULL DEFAULT 2;
"""
)
# Schema 3 did not sign records: its log is legacy, up to the newest id it holds.
_MIGRATE_FROM_3 = (
    _CHAIN_TABLES
    + """
INSERT INTO meta (key, value) SELECT 'legacy_log_id', coalesce(max(id), 0) FROM log;
"""
)
# Schema 4's log indexes carried columns no read needs (see the module docstring).
_MIGRATE_FROM_4 = """
DROP INDEX log_doc;
DROP INDEX log_hlc;
CREATE INDEX log_doc ON log (doc_id);
CREATE INDEX log_hlc ON log (hlc);
"""


_interrupts = threading.local()
"""The Ctrl-C (or a signal handler's SystemExit) that struck inside ``xor_blob``, by thread.

SQLite calls the function from within a statement, and Python's sqlite3 turns
whatever it raises into "user-defined function raised exception": without this,
a Ctrl-C that lands there would surface as a store failure, not as itself.
"""

_UDF_FAILED = "user-defined function raised exception"


def _xor_blob(a: bytes | None, b: bytes | None) -> bytes:
    try:
        return xor_bytes(a, b)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            _interrupts.pending = exc
        raise


def take_interrupt(exc: sqlite3.Error) -> BaseException | None:
    """The KeyboardInterrupt or SystemExit behind ``exc``, if it is one that struck
    inside ``xor_blob`` (forgotten once taken); None for a real SQLite failure."""
    pending: BaseException | None = getattr(_interrupts, "pending", None)
    _interrupts.pending = None
    return pending if pending is not None and _UDF_FAILED in str(exc) else None


def connect(directory: Path, *, region: str | None, synchronous: str) -> sqlite3.Connection:
    """Open the store in ``directory``, creating it (for ``region``) if there is none."""
    if directory.exists() and not directory.is_dir():
        raise NotAStoreError(
            f"{directory} is a file, not a crdtdb data directory: pass a directory"
        )
    path = directory / STORE_FILE
    if region is None and not path.exists():
        raise NoStoreError(
            f"there is no crdtdb store in {directory}: to create one, name its region,"
            " e.g. crdtdb.open(path, region='eu')"
        )
    directory.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    try:
        _prepare(conn, path, region, synchronous)
    except BaseException:
        conn.close()
        raise
    conn.create_function("xor_blob", 2, _xor_blob, deterministic=True)
    return conn


_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN = 8, 10, 13, 14


def store_error(directory: Path, exc: sqlite3.Error, what: str = "a write") -> StoreError:
    """The typed error for an SQLite failure on the store in ``directory``.

    Said once here, so that a full disk reads the same wherever it struck: what
    happened, that nothing of the operation was stored (the transaction rolled
    back), and what to do. A Ctrl-C that struck inside the statement (see
    :func:`take_interrupt`) is raised here as itself instead.
    """
    interrupted = take_interrupt(exc)
    if interrupted is not None:  # not a store failure: the caller's Ctrl-C, raised as itself
        raise interrupted from None
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code == _SQLITE_FULL:
        return StoreFullError(
            f"{directory}: the disk is full; nothing of {what} was stored. Free space on"
            " that file system (or raise its quota), then retry"
        )
    if code == _SQLITE_READONLY:
        return StoreReadOnlyError(
            f"{directory}: the store cannot be written ({exc}); nothing of {what} was"
            " stored. Make the directory and its files writable by this user, then retry"
        )
    if code in (_SQLITE_IOERR, _SQLITE_CANTOPEN):
        return StoreIOError(
            f"{directory}: the operating system failed {what} ({exc}); nothing of it was"
            " stored. Check that the directory still exists and the disk is healthy"
        )
    return StoreError(f"{directory}: {what} failed in SQLite ({exc}); nothing of it was stored")


def wal_path(directory: Path) -> Path:
    """The store's write-ahead log: it grows with every commit of any process."""
    return directory / (STORE_FILE + "-wal")


def checkpoint(directory: Path) -> tuple[int, int]:
    """Copy what the WAL holds into the database file; return (WAL pages, pages copied).

    SQLite's PASSIVE checkpoint, on a connection of its own, so that it can run
    in a worker thread while the process goes on reading and committing (nor
    does it wait for other processes). For a process that opened the store
    with ``wal_autocheckpoint=0``, so that none of its commits pays for a
    checkpoint and its fsync.

    A checkpoint alongside commits never lets the WAL start over: SQLite
    rewinds it only for a write that begins with every frame copied, and
    commits keep adding frames while the checkpoint runs. Under a steady
    stream of commits the WAL grew without bound (850 MB in 6 s in a test).
    So once it holds ``WAL_RESTART_PAGES``, a RESTART checkpoint follows the
    PASSIVE one: it holds writers back while it copies what the PASSIVE one
    left (10-30 ms in that test) and waits at most ``RESTART_WAIT_MS`` for
    readers; the next commit then rewinds the WAL, and its file is cut back to
    ``WAL_SIZE_LIMIT``.
    """
    conn = sqlite3.connect(
        directory / STORE_FILE, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
    )
    try:
        _, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if pages >= WAL_RESTART_PAGES:
            conn.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            _, pages, copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"{directory}: checkpoint failed: {exc}") from exc
    finally:
        conn.close()
    return int(pages), int(copied)


VACUUM_STEP_PAGES = 256
"""Free pages one step of :func:`release_free_pages` returns (1 MiB): a short write."""


def release_free_pages(directory: Path, step_pages: int = VACUUM_STEP_PAGES) -> int:
    """Hand the store's free pages back to the file system; return how many were freed.

    ``PRAGMA incremental_vacuum`` in steps of ``step_pages``, each its own
    write transaction on a connection of its own, so that a writer of any
    process waits at most one step (a few milliseconds), never the whole
    release: a ``VACUUM`` would rewrite the file and hold writers back while
    it ran. Free pages are moved to the end of the file and cut off; in WAL
    mode the file itself shrinks at the next checkpoint. A store created
    before schema 5 has ``auto_vacuum`` off: nothing is released (SQLite
    reuses those pages for later writes). The number of steps is bounded by
    the free pages counted at the start, so writers freeing pages meanwhile
    cannot keep it going.
    """
    conn = sqlite3.connect(
        directory / STORE_FILE, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
    )
    try:
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != _AUTO_VACUUM_INCREMENTAL:
            return 0
        free = start = conn.execute("PRAGMA freelist_count").fetchone()[0]
        for _ in range(-(-start // step_pages)):
            # Each page moved is one step of the statement, and its result rows have no
            # column, so ``execute`` (which steps such a statement once) moves one page:
            # ``executescript`` steps it to the end.
            conn.executescript(f"PRAGMA incremental_vacuum({int(step_pages)})")
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if free == 0:
                break
    except sqlite3.Error as exc:
        raise store_error(directory, exc, "releasing free pages") from exc
    finally:
        conn.close()
    return max(0, int(start - free))


_AUTO_VACUUM_INCREMENTAL = 2


def _prepare(conn: sqlite3.Connection, path: Path, region: str | None, synchronous: str) -> None:
    try:
        # One read transaction: another process may be creating the store right now,
        # and its tables must not be seen without its application id.
        conn.execute("BEGIN")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        finally:
            conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise NotAStoreError(
            f"{path} is not a crdtdb store ({exc}): point crdtdb at its own data directory"
        ) from None
    if app_id != APPLICATION_ID and (tables or app_id):
        raise NotAStoreError(
            f"{path} is an SQLite file of another application (application_id={app_id}):"
            " crdtdb will not write into it; use an empty directory"
        )
    if app_id == APPLICATION_ID and version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path} has schema version {version}, newer than this crdtdb understands"
            f" ({SCHEMA_VERSION}): upgrade crdtdb to open it"
        )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    if not tables:
        # Only while the file is empty, before the switch to WAL writes its first page
        # (SQLite ignores it later, so a store another process just made keeps its own).
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = _switch_to_wal(conn)
    if mode.lower() != "wal":
        raise StoreError(
            f"{path}: could not switch to WAL mode (got {mode}); is the disk read-only?"
        )
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = OFF")
    if app_id != APPLICATION_ID:
        _create(conn, path, region)
    elif version < SCHEMA_VERSION:
        _migrate(conn, path)


def _switch_to_wal(conn: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode = WAL``, retried while other processes hold the file.

    Several processes opening a new store at once all start in rollback-journal
    mode; a switch that would have to wait on another's shared lock fails at
    once with "database is locked" instead of waiting (SQLite does not wait
    where waiting could deadlock). So retry, with backoff, for up to the busy
    timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.001
    while True:
        try:
            mode: str = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            return mode
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.05)


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated statements inside the caller's transaction.

    ``executescript`` would commit that transaction first.
    """
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring a store of an older schema up to ``SCHEMA_VERSION``, in one transaction.

    A crash part way leaves the store as it was; another process opening it at
    the same time waits for the write lock, then finds it migrated.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version in (1, 2, 3, 4):
            docs = conn.execute("SELECT count(*) FROM docs").fetchone()[0]
            records = conn.execute("SELECT count(*) FROM log").fetchone()[0]
            log.warning(
                "%s: migrating the store from schema %d to %d (%d documents, %d log records%s)",
                path,
                version,
                SCHEMA_VERSION,
                docs,
                records,
                ": it rewrites the documents table, about half a second per 100,000,"
                " and rebuilds two log indexes, about 15 s per million records"
                if version == 1
                else ": it rebuilds two log indexes, about 15 s per million records",
            )
            started = time.monotonic()
            if version == 1:
                _run_script(conn, _MIGRATE_FROM_1)
            if version <= 2:
                _run_script(conn, _MIGRATE_FROM_2)
            if version <= 3:
                _run_script(conn, _MIGRATE_FROM_3)
            _run_script(conn, _MIGRATE_FROM_4)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            log.warning("%s: migrated in %.1f s", path, time.monotonic() - started)
        elif version == 5:  # no table changed: only who writes meta.last_hlc (STORED_HLC)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{path} has schema version {version}, which this crdtdb cannot migrate"
                f" (it reads {SCHEMA_VERSION} and migrates 1 to 5): open it with the crdtdb"
                " that wrote it and export its documents"
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _create(conn: sqlite3.Connection, path: Path, region: str | None) -> None:
    if region is None:
        raise NoStoreError(f"{path} holds no crdtdb store yet: name its region to create one")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have created it while we waited for the lock.
        if conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID:
            conn.execute("ROLLBACK")
            return
        _run_script(conn, _SCHEMA)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("region", region),
                ("last_hlc", 0),
                ("compacted_hlc", 0),
                ("compaction_epoch", 0),
                ("legacy_log_id", 0),
            ],
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
