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

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ._cache import DocHandle
from .engine import load_into
from .errors import DocumentTooDeepError, StoreError
from .frontier import frontier_clocks, frontier_entries
from .hlc import Hlc
from .storage import BUSY_TIMEOUT_MS, STORE_FILE, STORED_HLC

__all__ = ["DocRow", "LogRow", "OriginRow", "Snapshot"]

log = logging.getLogger("crdtdb")

_CHUNK = 500  # SQLite's limit on the parameters of one statement is far above
_DOC_ROWS = (
    "SELECT d.doc_id, d.collection, d.live, d.hlc, b.origin, b.log_id, b.body, b.shape"
    " FROM docs d LEFT JOIN bodies b ON b.doc_id = d.doc_id"
)


DocRow = tuple[str, str, int, int, str | None, int, str | None, int | None]
"""One document as of the snapshot, as a plain tuple (a reader may take millions):
``(doc_id, collection, live, hlc, origin, log_id, body, shape)``. ``live`` is 1 while it
exists; ``hlc`` and ``origin`` are those of its newest record (the greatest
``(hlc, origin)``; origin None if its history was compacted before schema 3);
``log_id`` that record's position in this store's log; ``body`` its canonical
JSON text, None once deleted; ``shape`` the number of its shape (:meth:`Snapshot.shapes`),
None where the commit did not note it."""

LogRow = tuple[int, str, int, str, int, int, int]
"""One log record without its update bytes: ``(log_id, doc_id, hlc, origin, seq,
bytes, kind)``."""


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

    def __init__(self, path: Path, region: str, floor: Hlc) -> None:
        self.region = region
        self._floor = floor
        self._closed = False
        try:
            self._conn = sqlite3.connect(
                path / STORE_FILE,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            self._conn.execute("BEGIN")
            row = self._conn.execute("SELECT max(id) FROM log").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot read a snapshot of the store: {exc}") from exc
        self.position: int = int(row[0] or 0)
        """The newest log id in the snapshot: what a later snapshot's changes start after."""
        self.hlc = max(self._floor, Hlc(self._conn.execute(STORED_HLC).fetchone()[0]))
        """The store's clock at the snapshot: every record in it has an HLC at or below."""
        self.compaction_epoch = self._meta("compaction_epoch")
        self.compacted_hlc = Hlc(self._meta("compacted_hlc"))

    def close(self) -> None:
        """End the read transaction (a long one keeps SQLite from recycling its WAL)."""
        if self._closed:
            return
        self._closed = True
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

    def documents(self, batch: int = 100_000) -> Iterator[list[DocRow]]:
        """Every document ever held (deleted ones too), in batches, in doc id order."""
        cursor = self._conn.execute(f"{_DOC_ROWS} ORDER BY d.doc_id")
        while rows := cursor.fetchmany(batch):
            yield self._complete(rows)

    def document_count(self) -> int:
        """How many documents the store holds (deleted ones too)."""
        return int(self._conn.execute("SELECT count(*) FROM docs").fetchone()[0])

    def changed_after(self, position: int) -> list[str]:
        """Ids of the documents with a log record after ``position`` (a log id), in order:
        :meth:`rows` then looks them up in the order of the tables' keys (10,000 of a
        million in 60% of the time they take in the log's order).

        Found through the log: a record compacted away before it was read is
        missed, so a reader that last read before a compaction (the
        ``compaction_epoch`` moved) asks :meth:`changed_since_scan` instead.
        """
        rows = self._conn.execute(
            "SELECT DISTINCT doc_id FROM log WHERE id > ? AND id <= ? ORDER BY doc_id",
            (position, self.position),
        )
        return [row[0] for row in rows]

    def changed_since_scan(self, position: int) -> list[str]:
        """:meth:`changed_after` by reading every document's newest log id (no log needed)."""
        rows = self._conn.execute(
            "SELECT d.doc_id FROM docs d LEFT JOIN bodies b ON b.doc_id = d.doc_id"
            " WHERE b.log_id IS NULL OR b.log_id > ? ORDER BY d.doc_id",
            (position,),
        )
        return [row[0] for row in rows]

    def rows(self, doc_ids: Sequence[str], batch: int = 100_000) -> Iterator[list[DocRow]]:
        """The given documents as of the snapshot, in batches (unknown ids are left out)."""
        for start in range(0, len(doc_ids), batch):
            found: list[DocRow] = []
            for first in range(start, min(start + batch, len(doc_ids)), _CHUNK):
                chunk = list(doc_ids[first : min(first + _CHUNK, start + batch)])
                marks = ",".join("?" * len(chunk))
                found += self._conn.execute(f"{_DOC_ROWS} WHERE d.doc_id IN ({marks})", chunk)
            yield self._complete(found)

    def _complete(self, rows: list[DocRow]) -> list[DocRow]:
        """Fill in what the commits left out: the JSON of documents too large for them to
        write, and anything of documents unchanged since a schema-2 store was migrated."""
        for i, (doc_id, collection, live, hlc, origin, log_id, body, shape) in enumerate(rows):
            if origin is None or (live and body is None):
                if live and body is None:
                    body = self.load_body(doc_id)
                if origin is None:
                    origin, log_id = self._newest(doc_id)
                rows[i] = (doc_id, collection, live, hlc, origin, log_id, body, shape)
        return rows

    def shapes(self, numbers: Sequence[int]) -> dict[int, str]:
        """The shapes (:mod:`crdtdb.shape`) with these numbers."""
        found: dict[int, str] = {}
        for start in range(0, len(numbers), _CHUNK):
            chunk = list(numbers[start : start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            found.update(
                self._conn.execute(f"SELECT id, shape FROM shapes WHERE id IN ({marks})", chunk)
            )
        return found

    def _newest(self, doc_id: str) -> tuple[str | None, int]:
        newest = self._conn.execute(
            "SELECT origin, id FROM log WHERE doc_id = ? ORDER BY hlc DESC, origin DESC LIMIT 1",
            (doc_id,),
        ).fetchone()
        return (newest[0], newest[1]) if newest else (None, 0)

    def load_body(self, doc_id: str) -> str | None:
        """A document's JSON, read from its CRDT bytes in the snapshot (slower than a body)."""
        handle = DocHandle(0)
        load_into(self._conn, doc_id, handle)
        try:
            return handle.body()
        except DocumentTooDeepError as exc:  # one such document must not stop every query
            log.warning("%s: its fields read as NULL: %s", doc_id, exc)
            return None

    # ------------------------------------------------------------------ log

    def log(self, after: int = 0, batch: int = 100_000) -> Iterator[list[LogRow]]:
        """Log records after position ``after``, in log order, in batches."""
        cursor = self._conn.execute(
            "SELECT id, doc_id, hlc, origin, seq, length(payload), kind FROM log"
            " WHERE id > ? AND id <= ? ORDER BY id",
            (after, self.position),
        )
        while rows := cursor.fetchmany(batch):
            yield rows

    # ------------------------------------------------------------- progress

    def origins(self) -> list[OriginRow]:
        """Per origin held here: highest seq, highest contiguous seq, complete-through HLC."""
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
        return min(hlc for _, hlc in frontier_clocks(self._conn, self.region, self._floor))
