"""A consistent, read-only cut of a store, for readers that copy it elsewhere.

``db.snapshot()`` opens a connection of its own on the store file (it only
reads, and takes no write lock) and holds
one read transaction on it: in WAL mode that sees one commit's state for as
long as it is open and never holds a writer back (the query layer reads a
whole store through one while applications and the sync daemon go on
committing). Everything it returns comes from that one cut: the documents
changed after a log position, their JSON, the log records, and each origin's
progress and the frontier.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

from ._cache import DocHandle
from .errors import StoreError
from .hlc import Hlc
from .storage import BUSY_TIMEOUT_MS, STORE_FILE

if TYPE_CHECKING:
    from .database import Database

__all__ = ["DocRow", "LogRow", "OriginRow", "Snapshot"]

_CHUNK = 500  # SQLite's limit on the parameters of one statement is far above
_DOC_ROWS = (
    "SELECT d.doc_id, d.collection, d.live, d.hlc, b.origin, b.log_id, b.body"
    " FROM docs d LEFT JOIN bodies b ON b.doc_id = d.doc_id"
)


class DocRow(NamedTuple):
    """One document as of the snapshot (a tuple: a reader may take a million of them)."""

    doc_id: str
    collection: str
    live: int
    """1 while it exists, 0 once deleted."""
    hlc: int
    """The HLC of its newest record."""
    origin: str | None
    """The region of its newest record (None: history compacted before schema 3)."""
    log_id: int
    """Its newest record's position in this store's log (0: not known)."""
    body: str | None
    """Its JSON text; None when it is deleted."""


class LogRow(NamedTuple):
    """One log record, without its update bytes."""

    log_id: int
    doc_id: str
    hlc: int
    origin: str
    seq: int
    size: int
    """Bytes of the update."""
    kind: int


@dataclass(frozen=True, slots=True)
class OriginRow:
    """What this store holds of one origin region's records."""

    origin: str
    max_seq: int
    contiguous_seq: int
    complete_hlc: Hlc
    """Every record of the origin with an HLC at or below this is held here."""


class Snapshot:
    """A read transaction on a store; use as a context manager (``with db.snapshot() as s``)."""

    def __init__(self, db: Database) -> None:
        self.region = db.region
        self._floor = db.hlc
        try:
            self._conn = sqlite3.connect(
                db.path / STORE_FILE,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            self._conn.execute("BEGIN")
            row = self._conn.execute("SELECT max(id) FROM log").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{db.path}: cannot read a snapshot of the store: {exc}") from exc
        self.position: int = int(row[0] or 0)
        """The newest log id in the snapshot: what a later snapshot's changes start after."""
        self.hlc = max(self._floor, Hlc(self._meta("last_hlc")))
        """The store's clock at the snapshot: every record in it has an HLC at or below."""
        self.compaction_epoch = self._meta("compaction_epoch")
        self.compacted_hlc = Hlc(self._meta("compacted_hlc"))

    def close(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")
        self._conn.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _meta(self, key: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0] or 0) if row else 0

    # ------------------------------------------------------------ documents

    def documents(self) -> Iterator[DocRow]:
        """Every document ever held (deleted ones too), in doc id order."""
        rows = self._conn.execute(f"{_DOC_ROWS} ORDER BY d.doc_id")
        for row in rows:
            yield self._row(row)

    def document_count(self) -> int:
        """How many documents the store holds (deleted ones too)."""
        return int(self._conn.execute("SELECT count(*) FROM docs").fetchone()[0])

    def changed_after(self, position: int) -> list[str]:
        """Ids of the documents with a log record after ``position`` (a log id).

        Found through the log: a record compacted away before it was read is
        missed, so a reader that last read before a compaction (the
        ``compaction_epoch`` moved) asks :meth:`changed_since_scan` instead.
        """
        rows = self._conn.execute(
            "SELECT DISTINCT doc_id FROM log WHERE id > ? AND id <= ?", (position, self.position)
        )
        return [row[0] for row in rows]

    def changed_since_scan(self, position: int) -> list[str]:
        """:meth:`changed_after` by reading every document's newest log id (no log needed)."""
        rows = self._conn.execute(
            "SELECT d.doc_id FROM docs d LEFT JOIN bodies b ON b.doc_id = d.doc_id"
            " WHERE b.log_id IS NULL OR b.log_id > ?",
            (position,),
        )
        return [row[0] for row in rows]

    def rows(self, doc_ids: Sequence[str]) -> Iterator[DocRow]:
        """The given documents as of the snapshot (unknown ids are left out)."""
        for start in range(0, len(doc_ids), _CHUNK):
            chunk = list(doc_ids[start : start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(
                f"{_DOC_ROWS} WHERE d.doc_id IN ({marks})",
                chunk,
            ):
                yield self._row(row)

    def _row(self, row: tuple[str, str, int, int, str | None, int | None, str | None]) -> DocRow:
        doc_id, collection, live, hlc, origin, log_id, body = row
        if origin is not None and (body is not None or not live):
            return DocRow._make(row)  # the common case: as written by its last commit
        if live and body is None:  # too large for the commit to write, or before schema 3
            body = self.load_body(doc_id)
        if origin is None:
            newest = self._conn.execute(
                "SELECT origin, id FROM log WHERE doc_id = ? ORDER BY hlc DESC, origin DESC"
                " LIMIT 1",
                (doc_id,),
            ).fetchone()
            origin, log_id = newest if newest else (None, 0)
        return DocRow(doc_id, collection, live, hlc, origin, log_id or 0, body)

    def load_body(self, doc_id: str) -> str | None:
        """A document's JSON, read from its CRDT bytes in the snapshot (slower than a body)."""
        from .database import load_into

        handle = DocHandle(0)
        load_into(self._conn, doc_id, handle)
        return handle.body()

    # ------------------------------------------------------------------ log

    def log(self, after: int = 0) -> Iterator[LogRow]:
        """Log records after position ``after``, in log order."""
        rows = self._conn.execute(
            "SELECT id, doc_id, hlc, origin, seq, length(payload), kind FROM log"
            " WHERE id > ? AND id <= ? ORDER BY id",
            (after, self.position),
        )
        for row in rows:
            yield LogRow._make(row)

    # ------------------------------------------------------------- progress

    def origins(self) -> list[OriginRow]:
        """Per origin held here: highest seq, highest contiguous seq, complete-through HLC."""
        from .database import frontier_entries

        complete = {o: hlc for o, _, hlc in frontier_entries(self._conn, self.region, self._floor)}
        rows = self._conn.execute("SELECT origin, max_seq, contiguous_seq FROM origins").fetchall()
        found = {
            origin: OriginRow(origin, max_seq, contiguous, complete.get(origin, Hlc(0)))
            for origin, max_seq, contiguous in rows
        }
        for origin, hlc in complete.items():
            found.setdefault(origin, OriginRow(origin, 0, 0, hlc))
        return sorted(found.values(), key=lambda row: row.origin)

    def frontier(self) -> Hlc:
        """The global frontier as of the snapshot (see ``Database.frontier``)."""
        from .database import frontier_clocks

        return min(hlc for _, hlc in frontier_clocks(self._conn, self.region, self._floor))
