"""The rows one log append writes, gathered before they are written.

A remote batch writes its rows at once. A local commit hands them to its
commit group (:mod:`crdtdb.group`), whose leader writes the rows of every
member with one statement a table (in the members' order) just before the
group's ``COMMIT``: a member prepares everything first, so one whose commit
raises has written nothing, and a group of eight pays the statements of one.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from . import merkle
from .digests import DigestState
from .hlc import Hlc

__all__ = ["LogRows"]

_LOG = "INSERT INTO log (id, origin, seq, hlc, doc_id, payload, kind) VALUES (?, ?, ?, ?, ?, ?, ?)"
# A document already stale keeps the digest the tree holds for it; one whose digest
# was never XORed into the tree (UNTREED) has none there.
_UPSERT = (
    "INSERT INTO docs (doc_id, collection, leaf, live, hlc, dirty, snapshot_bytes,"
    " snapshot_id, pending, digest)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?10, coalesce(?6, 0), ?7, ?8, ?9)"
    " ON CONFLICT (doc_id) DO UPDATE SET live = ?4, hlc = ?5,"
    f" dirty = {DigestState.STALE:d}, pending = ?8,"
    " snapshot_bytes = coalesce(?6, snapshot_bytes),"
    " snapshot_id = max(?7, snapshot_id),"
    f" digest = CASE dirty WHEN {DigestState.UNTREED:d} THEN NULL ELSE digest END"
)
# Liveness and digest state unchanged: the pages of their indexes stay clean (SQLite
# rewrites an index entry whenever its column is assigned, even to the same value).
_QUIET = (
    "UPDATE docs SET hlc = ?1, pending = ?4, snapshot_bytes = coalesce(?2, snapshot_bytes),"
    " snapshot_id = max(?3, snapshot_id) WHERE doc_id = ?5"
)
_BODY = (
    "INSERT INTO bodies (doc_id, log_id, origin, body, shape) VALUES (?1, ?2, ?3, ?4, ?5)"
    " ON CONFLICT (doc_id) DO UPDATE SET log_id = ?2, origin = ?3, body = ?4, shape = ?5"
)
_SNAPSHOT = "INSERT OR REPLACE INTO snapshots (doc_id, snapshot) VALUES (?, ?)"
_MERKLE = (
    "INSERT INTO merkle (node, hash) VALUES (?, ?) ON CONFLICT (node)"
    " DO UPDATE SET hash = xor_blob(hash, excluded.hash)"
)
_LOCAL = (
    "INSERT INTO origins (origin, max_seq, contiguous_seq, contiguous_hlc)"
    " VALUES (?1, ?2, ?2, ?3) ON CONFLICT (origin) DO UPDATE SET max_seq = ?2,"
    " contiguous_seq = ?2, contiguous_hlc = ?3"
)


class LogRows:
    """Rows of the log, ``docs``, ``bodies``, ``snapshots`` and ``merkle`` tables, in order."""

    __slots__ = ("bodies", "deltas", "docs", "local", "log", "snapshots")

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.docs: list[tuple[bool, tuple[Any, ...]]] = []
        """(quiet, row) in order: a document's rows must land in the order written."""
        self.bodies: list[tuple[Any, ...]] = []
        self.snapshots: list[tuple[str, bytes]] = []
        self.deltas: dict[int, int] = {}
        """Merkle nodes' XOR deltas (they combine in any order)."""
        self.local: tuple[str, int, Hlc] | None = None
        """(region, its max seq, the newest local HLC) after a local commit."""

    def extend(self, other: LogRows) -> None:
        self.log += other.log
        self.docs += other.docs
        self.bodies += other.bodies
        self.snapshots += other.snapshots
        for node, delta in other.deltas.items():
            self.deltas[node] = self.deltas.get(node, 0) ^ delta
        self.local = other.local or self.local

    def store(self, conn: sqlite3.Connection) -> None:
        """Write them all, inside the caller's write transaction."""
        conn.executemany(_LOG, self.log)
        start = 0
        while start < len(self.docs):  # runs of one kind, each in one statement
            quiet = self.docs[start][0]
            end = start
            while end < len(self.docs) and self.docs[end][0] == quiet:
                end += 1
            conn.executemany(_QUIET if quiet else _UPSERT, [row for _, row in self.docs[start:end]])
            start = end
        conn.executemany(_BODY, self.bodies)
        if self.snapshots:
            conn.executemany(_SNAPSHOT, self.snapshots)
        if self.deltas:
            conn.executemany(
                _MERKLE,
                [(n, d.to_bytes(merkle.NODE_BYTES, "big")) for n, d in self.deltas.items()],
            )
        if self.local is not None:
            region, seq, hlc = self.local
            conn.execute(_LOCAL, (region, seq, int(hlc)))
