"""Time travel (reading the database as of an HLC cut) and log compaction.

If e happened before f then hlc(e) < hlc(f), so the set of records with
``hlc <= t`` is causally closed: replaying exactly that set on top of each
document's ``base`` (the records already compacted away, all older than the
compaction horizon) gives a state that really existed "as of t", for one
document or for all of them together.

Compaction folds every record older than the horizon into ``base``, refreshes
the load snapshot, and deletes those records. It works in batches of
documents, one SQLite transaction each, so a long compaction never holds the
write lock for long and reports progress as it goes. Then the chain rows of
the folded records are pruned (:func:`crdtdb.chains.prune_locked`: each
origin keeps what later runs and the records still held need).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._cache import DocHandle
from .chains import prune_locked
from .engine import Engine
from .errors import InvalidHlcError
from .hlc import Hlc
from .ids import validate_collection, validate_doc_id
from .records import MAX_SQLITE_INT, UpdateRecord

if TYPE_CHECKING:
    from .snapshot import Snapshot

__all__ = ["AsOf", "History", "checked_cut"]

log = logging.getLogger("crdtdb.history")
BATCH_DOCS = 500


def checked_cut(hlc: Hlc | int | str) -> Hlc:
    """``hlc`` as a time-travel cut; refuses one no store can reach (InvalidHlcError)."""
    cut = Hlc(hlc)
    if cut > MAX_SQLITE_INT:  # SQLite's INTEGER holds no later HLC: surely a mistake
        raise InvalidHlcError(
            f"as-of cut {int(cut)} is beyond the last HLC a store holds (2**63-1, in the year"
            " 6429): pass a cut of the past, e.g. the frontier or an HLC from a record"
        )
    return cut


class History:
    """History facet: snapshots, time travel and compaction of one store."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def snapshot(self) -> Snapshot:
        """A consistent read-only cut of the store, on a connection of its own."""
        from .snapshot import Snapshot

        engine = self._engine
        with engine.lock:
            engine.check()
            floor = max(engine.last_hlc, engine.stored_hlc())
        return Snapshot(engine.path, engine.region, floor)

    def as_of(self, hlc: Hlc | int | str) -> AsOf:
        """A read-only view of the database at the consistent cut ``hlc``."""
        cut = checked_cut(hlc)
        with self._engine.lock:
            self._engine.check()
            self._engine.check_history(cut, "as_of()")
        return AsOf(self._engine, cut)

    def compacted_hlc(self) -> Hlc:
        """Time travel and changes() reach back to just above this HLC."""
        with self._engine.lock:
            self._engine.check()
            return self._engine.compacted_hlc()

    def compact(self, horizon: Hlc, progress: Callable[[int, int], None] | None) -> int:
        """Fold records with ``hlc <= horizon`` into base snapshots; return how many were
        removed (the caller holds the lock and has checked there is no transaction)."""
        return _compact(self._engine, horizon, progress)


class AsOf:
    """A read-only view of a database at a consistent cut (``db.as_of(hlc)``)."""

    def __init__(self, engine: Engine, hlc: Hlc) -> None:
        self._engine = engine
        self.hlc = hlc
        self._cut = int(hlc)  # what SQLite compares with: at most 2**63-1 (History.as_of)

    def __repr__(self) -> str:
        return f"<crdtdb.AsOf {self.hlc}>"

    def _replay(self, doc_id: str) -> DocHandle | None:
        db = self._engine
        with db.lock:
            db.check()
            db.check_history(self.hlc, "as_of()")
            conn = db.conn
            row = conn.execute(
                "SELECT b.base FROM docs d LEFT JOIN bases b ON b.doc_id = d.doc_id"
                " WHERE d.doc_id = ?",
                (doc_id,),
            ).fetchone()
            if row is None:
                return None
            handle = DocHandle(0)
            if row[0] is not None:
                handle.apply(row[0])
            for (payload,) in conn.execute(
                "SELECT payload FROM log WHERE doc_id = ? AND hlc <= ? ORDER BY id",
                (doc_id, self._cut),
            ):
                handle.apply(payload)
            return handle

    def get(self, doc_id: str) -> dict[str, Any] | None:
        """The document as it was at this cut, or None if it did not exist then."""
        handle = self._replay(validate_doc_id(doc_id))
        if handle is None or not handle.live:
            return None
        result: dict[str, Any] = handle.json()
        return result

    def changed_after(self) -> list[str]:
        """Ids of the documents with a record after this cut (their state differs from now)."""
        db = self._engine
        with db.lock:
            db.check()
            rows = db.conn.execute(
                "SELECT DISTINCT doc_id FROM log WHERE hlc > ?", (self._cut,)
            ).fetchall()
        return [row[0] for row in rows]

    def created_after(self, doc_ids: list[str]) -> set[str]:
        """Those of ``doc_ids`` that did not exist yet at this cut: every record of theirs
        is after it, and none was compacted away."""
        return self._matching(
            "SELECT doc_id FROM log WHERE doc_id IN ({marks}) GROUP BY doc_id"
            " HAVING min(hlc) > ? AND doc_id NOT IN (SELECT doc_id FROM bases)",
            doc_ids,
            self._cut,
        )

    def _matching(self, sql: str, doc_ids: list[str], *params: int) -> set[str]:
        """The doc ids ``sql`` returns, its ``{marks}`` filled with ``doc_ids`` 500 at a time
        (SQLite's limit on parameters), ``params`` after them."""
        db = self._engine
        found: set[str] = set()
        with db.lock:
            db.check()
            for start in range(0, len(doc_ids), 500):
                chunk = doc_ids[start : start + 500]
                rows = db.conn.execute(
                    sql.format(marks=",".join("?" * len(chunk))), (*chunk, *params)
                )
                found.update(row[0] for row in rows)
        return found

    def settled(self, doc_ids: list[str], position: int) -> set[str]:
        """Those of ``doc_ids`` with no record at or below this cut after log ``position``.

        For a reader that holds the documents' states at that position (the query
        layer's files): for these, nothing that arrived since changes them as of
        this cut.
        """
        unsettled = self._matching(
            "SELECT DISTINCT doc_id FROM log WHERE doc_id IN ({marks}) AND id > ? AND hlc <= ?",
            doc_ids,
            position,
            self._cut,
        )
        return set(doc_ids) - unsettled

    def version(self, doc_id: str) -> tuple[str | None, Hlc, str | None] | None:
        """The document at this cut as ``(JSON, hlc, origin)``, or None if it did not exist.

        JSON is canonical (as the store's bodies are) and None if it was deleted
        by the cut; ``hlc`` and ``origin`` are those of its newest record at or
        before the cut (the compaction horizon and None once that was compacted).
        """
        handle = self._replay(validate_doc_id(doc_id))
        if handle is None:
            return None
        db = self._engine
        with db.lock:
            row = db.conn.execute(
                "SELECT hlc, origin FROM log WHERE doc_id = ? AND hlc <= ?"
                " ORDER BY hlc DESC, origin DESC LIMIT 1",
                (doc_id, self._cut),
            ).fetchone()
            floor = db.compacted_hlc()
        if row is None and not handle.live:
            return None  # created after the cut
        hlc, origin = (Hlc(row[0]), row[1]) if row else (floor, None)
        return handle.body(), hlc, origin

    def list(self, collection: str) -> list[str]:
        """Ids of the documents of ``collection`` that were live at this cut."""
        validate_collection(collection)
        with self._engine.lock:
            self._engine.check()
            ids = [
                row[0]
                for row in self._engine.conn.execute(
                    "SELECT doc_id FROM docs WHERE collection = ? ORDER BY doc_id", (collection,)
                )
            ]
        return [doc_id for doc_id in ids if self.get(doc_id) is not None]


def _compact(db: Engine, horizon: Hlc, progress: Callable[[int, int], None] | None) -> int:
    conn = db.conn
    floor = db.compacted_hlc()
    if horizon <= floor:
        return 0
    doc_ids = [
        row[0]
        for row in conn.execute("SELECT DISTINCT doc_id FROM log WHERE hlc <= ?", (int(horizon),))
    ]
    # The horizon moves first: from here on, time travel below it is refused rather
    # than answered from a base that already holds newer records.
    db.write(lambda: _move_horizon(db, horizon))
    removed = 0
    for start in range(0, len(doc_ids), BATCH_DOCS):
        batch = doc_ids[start : start + BATCH_DOCS]
        removed += _write_batch(db, batch, horizon)
        if progress is not None:
            progress(min(start + BATCH_DOCS, len(doc_ids)), len(doc_ids))
        log.info(
            "compaction: %d/%d documents, %d records folded",
            start + len(batch),
            len(doc_ids),
            removed,
        )
    if removed:
        pruned = _write_prune(db)
        log.info("compaction: %d chain rows of folded records pruned", pruned)
    return removed


def _write_prune(db: Engine) -> int:
    def body() -> tuple[int, list[UpdateRecord]]:
        return prune_locked(db.conn), []

    pruned: int = db.write(body)
    return pruned


def _write_batch(db: Engine, batch: list[str], horizon: Hlc) -> int:
    def body() -> tuple[int, list[UpdateRecord]]:
        return _fold(db, batch, horizon), []

    removed: int = db.write(body)
    return removed


def _fold(db: Engine, doc_ids: list[str], horizon: Hlc) -> int:
    conn = db.conn
    removed = 0
    for doc_id in doc_ids:
        base_row = conn.execute("SELECT base FROM bases WHERE doc_id = ?", (doc_id,)).fetchone()
        base = DocHandle(0)
        if base_row is not None:
            base.apply(base_row[0])
        for (payload,) in conn.execute(
            "SELECT payload FROM log WHERE doc_id = ? AND hlc <= ? ORDER BY id",
            (doc_id, int(horizon)),
        ):
            base.apply(payload)
        current = db.handle(doc_id)
        if base.waiting or current.waiting:
            # A snapshot would drop updates still waiting for their dependencies.
            log.warning("compaction: %s waits for missing updates; kept as it is", doc_id)
            continue
        snapshot = current.doc.get_update()
        conn.execute(
            "UPDATE docs SET snapshot_id = ?, snapshot_bytes = ?, pending = 0 WHERE doc_id = ?",
            (current.loaded_through, len(snapshot), doc_id),
        )
        conn.execute(
            "INSERT OR REPLACE INTO snapshots (doc_id, snapshot) VALUES (?, ?)", (doc_id, snapshot)
        )
        conn.execute(
            "INSERT OR REPLACE INTO bases (doc_id, base) VALUES (?, ?)",
            (doc_id, base.doc.get_update()),
        )
        # The newest record is kept: log ids must never be reused (see storage).
        removed += conn.execute(
            "DELETE FROM log WHERE doc_id = ? AND hlc <= ? AND id < (SELECT max(id) FROM log)",
            (doc_id, int(horizon)),
        ).rowcount
    db.bump_epoch()
    return removed


def _move_horizon(db: Engine, horizon: Hlc) -> tuple[None, list[UpdateRecord]]:
    db.conn.execute("UPDATE meta SET value = ? WHERE key = 'compacted_hlc'", (int(horizon),))
    db.bump_epoch()
    return None, []
