"""Provenance facet: the stored side of signed records (``chain``, ``keys``, ``conflicts``).

Only storage here, no cryptography (``import crdtdb`` stays light, and the
keys live with the daemon): ``crdtdb.sync.signing`` computes and checks the
per-origin hash chain and its seals, ``crdtdb.sync.provenance`` decides what
to accept; this facet reads and writes their rows (see :mod:`crdtdb.storage`
for the tables). A chain row of a received record is written by
``apply_remote_many(..., chain=rows)`` in the transaction that applies it,
so a record is never held signed without its chain, nor the other way round.

Compaction prunes the rows of folded records (:func:`prune_locked`): per
origin it keeps the rows from the lowest sequence still in the log on (a
held record's row, and the seal of its run above it), and always the
origin's newest row, the hash the next run builds on (``tail``,
``hash_at``). Evidence in ``conflicts`` holds its own copies and is kept.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .engine import Engine
from .feed import _LOG_COLUMNS, _record
from .membership import Membership, read_conn
from .records import UpdateRecord
from .yjs import authors

__all__ = [
    "ChainRow",
    "Chains",
    "Conflict",
    "DocRecord",
    "RepairProvenance",
    "SealedRecord",
    "prune_locked",
]


@dataclass(frozen=True, slots=True)
class ChainRow:
    """One record's place in its origin's chain; ``key``/``sig`` where a run is sealed."""

    origin: str
    seq: int
    prev: bytes
    hash: bytes
    key: bytes | None = None
    sig: bytes | None = None


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """A log record with its chain row, as :meth:`Chains.chained_from` reads them."""

    record: UpdateRecord
    chain: ChainRow


@dataclass(frozen=True, slots=True)
class DocRecord:
    """One log record of a document, as :meth:`Chains.doc_records` reads them."""

    origin: str
    seq: int
    update: bytes
    chained: bool
    """Whether it has a chain row (so it can be relayed as its origin sealed it)."""


@dataclass(frozen=True, slots=True)
class RepairProvenance:
    """Whose items an anti-entropy repair record carries (see :meth:`Chains.carried`)."""

    carries: tuple[str, ...]
    """The origins the Yjs client ids of its items are bound to here, sorted."""
    unbound: int
    """Client ids among them that no origin is bound to here (yet)."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """Evidence of two contents for one ``(origin, seq)``."""

    origin: str
    seq: int
    kind: str
    """``equivocation`` (both signed by the origin), ``forgery`` (the second's signature
    does not verify: the relay made it), ``legacy`` (the held one predates signing) or
    ``retired_key`` (sealed by a key the membership retired, over a later record: only
    ``offered``, the first such record, is kept)."""
    peer: str
    held: bytes | None
    offered: bytes
    seal: bytes | None
    refused: int = 1
    first_ms: int = 0
    last_ms: int = 0


_LOG_COLUMNS_OF_LOG = ", ".join(f"log.{c.strip()}" for c in _LOG_COLUMNS.split(","))
"""The log's record columns, named through the table (for joins with ``chain``)."""

_UPSERT_CHAIN = (
    "INSERT INTO chain (origin, seq, prev, hash, key, sig) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (origin, seq) DO UPDATE SET key = coalesce(chain.key, excluded.key),"
    " sig = coalesce(chain.sig, excluded.sig)"
)
_CONFLICT_FIELDS = [
    "origin",
    "seq",
    "kind",
    "peer",
    "held",
    "offered",
    "seal",
    "refused",
    "first_ms",
    "last_ms",
]


class Chains:
    """The chain, key and conflict rows of one store."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        engine = self._engine
        with engine.lock:
            engine.check()
            return engine.conn.execute(query, args).fetchall()

    # ---------------------------------------------------------------- chain

    def tail(self, origin: str) -> ChainRow | None:
        """The newest chain row of ``origin`` held here (None: none)."""
        rows = self._rows(
            "SELECT origin, seq, prev, hash, key, sig FROM chain WHERE origin = ?"
            " ORDER BY seq DESC LIMIT 1",
            (origin,),
        )
        return ChainRow(*rows[0]) if rows else None

    def hash_at(self, origin: str, seq: int) -> bytes | None:
        rows = self._rows("SELECT hash FROM chain WHERE origin = ? AND seq = ?", (origin, seq))
        return bytes(rows[0][0]) if rows else None

    def unchained(self, origin: str, after_seq: int, limit: int) -> list[UpdateRecord]:
        """Records of ``origin`` above ``after_seq`` that have no chain row, in seq order."""
        rows = self._rows(
            f"SELECT {_LOG_COLUMNS} FROM log WHERE origin = ? AND seq > ? AND NOT EXISTS"
            " (SELECT 1 FROM chain WHERE chain.origin = log.origin AND chain.seq = log.seq)"
            " ORDER BY seq LIMIT ?",
            (origin, after_seq, limit),
        )
        return [_record(row) for row in rows]

    def add(self, rows: Sequence[ChainRow]) -> None:
        """Store chain rows (the origin's own seals), in one write transaction."""
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("sealing records")

            def body() -> tuple[None, list[UpdateRecord]]:
                self.write_locked(rows)
                return None, []

            engine.write(body)

    def write_locked(self, rows: Sequence[ChainRow]) -> None:
        """Store chain rows inside the caller's write transaction."""
        self._engine.conn.executemany(
            _UPSERT_CHAIN, [(r.origin, r.seq, r.prev, r.hash, r.key, r.sig) for r in rows]
        )

    def chained_from(self, origin: str, after_seq: int, limit: int) -> list[SealedRecord]:
        """Up to ``limit`` records of ``origin`` above ``after_seq`` that have chain rows,
        in seq order (page by the last one's seq)."""
        rows = self._rows(
            f"SELECT {_LOG_COLUMNS_OF_LOG}, chain.prev, chain.hash, chain.key, chain.sig FROM log"
            " JOIN chain ON chain.origin = log.origin AND chain.seq = log.seq"
            " WHERE log.origin = ? AND log.seq > ? ORDER BY log.seq LIMIT ?",
            (origin, after_seq, limit),
        )
        out = []
        for row in rows:
            record = _record(row[:6])
            key, sig = row[8], row[9]
            chain = ChainRow(
                record.origin,
                record.seq,
                bytes(row[6]),
                bytes(row[7]),
                None if key is None else bytes(key),
                None if sig is None else bytes(sig),
            )
            out.append(SealedRecord(record, chain))
        return out

    def held(self, origin: str, low: int, high: int) -> dict[int, tuple[UpdateRecord, bool]]:
        """Records of ``origin`` with seq in ``low..high`` held here, and whether chained."""
        rows = self._rows(
            f"SELECT {_LOG_COLUMNS_OF_LOG}, chain.hash IS NOT NULL FROM log LEFT JOIN chain"
            " ON chain.origin = log.origin AND chain.seq = log.seq"
            " WHERE log.origin = ? AND log.seq BETWEEN ? AND ?",
            (origin, low, high),
        )
        return {row[3]: (_record(row[:6]), bool(row[6])) for row in rows}

    def doc_records(self, doc_id: str, limit: int) -> list[DocRecord]:
        """Up to ``limit`` log records of ``doc_id``, in log order, each with whether it
        is chained (anti-entropy looks for the records that carry what a peer lacks)."""
        rows = self._rows(
            "SELECT log.origin, log.seq, log.payload, chain.hash IS NOT NULL FROM log"
            " LEFT JOIN chain ON chain.origin = log.origin AND chain.seq = log.seq"
            " WHERE log.doc_id = ? ORDER BY log.id LIMIT ?",
            (doc_id, limit),
        )
        return [DocRecord(str(o), int(q), bytes(u), bool(c)) for o, q, u, c in rows]

    def carried(self, update: bytes) -> RepairProvenance:
        """Whose items ``update`` (a repair record's) carries: the origins its Yjs client
        ids are bound to in ``clients``, and how many of them are bound to none.

        A repair's provenance is read from the record itself, not stored apart: its
        origin is the region that committed (and sealed) it, and every client id is
        bound to one origin for good, so the answer only ever gains bindings, as the
        origins' own records arrive."""
        clients = sorted(set(authors(update)))
        if not clients:
            return RepairProvenance((), 0)
        engine = self._engine
        with engine.lock:
            engine.check()
            bound = dict(
                engine.rows_in(
                    "SELECT client_id, origin FROM clients WHERE client_id IN ({marks})", clients
                )
            )
        return RepairProvenance(tuple(sorted(set(bound.values()))), len(clients) - len(bound))

    def legacy_records(self) -> int:
        """Log records that predate signing (a migrated schema-3 store) and are unsigned."""
        rows = self._rows(
            "SELECT count(*) FROM log WHERE id <= (SELECT coalesce(max(value), 0) FROM meta"
            " WHERE key = 'legacy_log_id') AND NOT EXISTS (SELECT 1 FROM chain WHERE"
            " chain.origin = log.origin AND chain.seq = log.seq)"
        )
        return int(rows[0][0])

    def membership(self) -> Membership | None:
        """The cluster membership as stored (cached per body: cheap for every batch)."""
        engine = self._engine
        with engine.lock:
            engine.check()
            return read_conn(engine.conn)

    # ----------------------------------------------------------------- keys

    def certificates(self) -> list[tuple[bytes, str, bytes]]:
        """Every stored certificate: (fingerprint, region, PEM)."""
        rows = self._rows("SELECT fingerprint, region, certificate FROM keys ORDER BY added_ms")
        return [(bytes(f), str(r), bytes(c)) for f, r, c in rows]

    def add_key(self, fingerprint: bytes, region: str, certificate: bytes, now_ms: int) -> None:
        """Keep a certificate (already verified) under its fingerprint."""
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("storing a key")

            def body() -> tuple[None, list[UpdateRecord]]:
                engine.conn.execute(
                    "INSERT OR IGNORE INTO keys (fingerprint, region, certificate, added_ms)"
                    " VALUES (?, ?, ?, ?)",
                    (fingerprint, region, certificate, now_ms),
                )
                return None, []

            engine.write(body)

    # ------------------------------------------------------------ conflicts

    def note_conflict(self, conflict: Conflict, now_ms: int) -> None:
        """Keep the evidence (or count it again if it is already kept)."""
        engine = self._engine
        c = conflict
        with engine.lock:
            engine.check_no_tx("keeping evidence")

            def body() -> tuple[None, list[UpdateRecord]]:
                engine.conn.execute(
                    "INSERT INTO conflicts (origin, seq, kind, peer, held, offered, seal,"
                    " refused, first_ms, last_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?8, ?8)"
                    " ON CONFLICT (origin, seq, kind, peer) DO UPDATE SET"
                    " refused = refused + 1, last_ms = ?8",
                    (c.origin, c.seq, c.kind, c.peer, c.held, c.offered, c.seal, now_ms),
                )
                return None, []

            engine.write(body)

    def conflicts(self) -> list[Conflict]:
        """Every conflict kept, newest first."""
        rows = self._rows(
            f"SELECT {', '.join(_CONFLICT_FIELDS)} FROM conflicts ORDER BY last_ms DESC"
        )
        return [Conflict(*row) for row in rows]

    def summary(self, *, count_legacy: bool = True) -> dict[str, Any]:
        """For ``Database.info()``: conflicts by kind, flagged origins, unsigned records
        (``count_legacy=False``: do not count them, which reads the whole log)."""
        by_kind = dict(self._rows("SELECT kind, count(*) FROM conflicts GROUP BY kind"))
        flagged = [
            row[0]
            for row in self._rows(
                "SELECT DISTINCT origin FROM conflicts WHERE kind = 'equivocation' ORDER BY 1"
            )
        ]
        return {
            "conflicts": by_kind,
            "equivocating_origins": flagged,
            "legacy_records": self.legacy_records() if count_legacy else None,
            "keys": len(self._rows("SELECT 1 FROM keys")),
        }


def prune_locked(conn: sqlite3.Connection) -> int:
    """Delete the chain rows compaction made useless (inside a write transaction): per
    origin, those below both its lowest record still in the log and its newest chain
    row. Returns how many were deleted."""
    deleted = 0
    origins = [row[0] for row in conn.execute("SELECT DISTINCT origin FROM chain")]
    for origin in origins:
        (newest,) = conn.execute(
            "SELECT max(seq) FROM chain WHERE origin = ?", (origin,)
        ).fetchone()
        (lowest,) = conn.execute("SELECT min(seq) FROM log WHERE origin = ?", (origin,)).fetchone()
        keep_from = newest if lowest is None else min(lowest, newest)
        deleted += conn.execute(
            "DELETE FROM chain WHERE origin = ? AND seq < ?", (origin, keep_from)
        ).rowcount
    return deleted
