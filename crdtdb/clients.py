"""Which origin region authors under which Yjs client id (the ``clients`` table).

Yjs names every item by ``(client id, clock)`` and ignores an item whose id
it already holds. Two writers that share a client id therefore shadow each
other: each region keeps its own edit, takes the other's as already seen, and
since the state vectors and delete sets are then equal, so are the digests:
anti-entropy finds nothing to repair. It happened for real when two processes
seeded Python's ``random`` alike (client ids now come from the operating
system). However it arises, it must be caught, not absorbed.

So every client id is bound to the one origin that authors items under it:
a process binds its own client id to its region in its first commit, and a
remote record binds the client ids it carries to its origin. A record whose
origin authors items under a client id bound to another origin is refused
(``ClientIdCollisionError``), counted in ``collisions`` and logged, and
nothing of its batch is applied.

Only edits are checked. An anti-entropy repair is committed by the repairing
region as a record of its own, but it carries items other regions authored;
such records are marked ``REPAIR`` in the log and on the wire
(``UpdateRecord.kind``), and their client ids prove nothing about their
origin. Records written before stores kept the kind (schema 2) are
``UNCHECKED``.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Sequence
from typing import Any

from .errors import ClientIdCollisionError
from .records import WRITE, UpdateRecord
from .yjs import authors

__all__ = ["ClientBindings"]

log = logging.getLogger("crdtdb")


class ClientBindings:
    """The ``clients`` and ``collisions`` tables of one store, for one process.

    Bindings never change once made, so the ones seen are kept in memory; a
    write transaction that rolls back forgets them all (some may not be stored).
    """

    def __init__(self, conn: sqlite3.Connection, region: str) -> None:
        self._conn = conn
        self._region = region
        self._bound_own = False
        self._known: dict[int, str] = {}
        self.client_id = 0
        """The Yjs client id this process writes with."""
        self.draw()

    def draw(self) -> None:
        """Take a new client id from the operating system's randomness, one not bound here.

        Never from ``random``: two processes that seed it alike (simulations and
        test suites do) would write under one client id. 53 bits: the largest
        integer a JavaScript Yjs peer reads exactly.
        """
        while True:
            client_id = secrets.randbits(53)
            taken = self._conn.execute(
                "SELECT 1 FROM clients WHERE client_id = ?", (client_id,)
            ).fetchone()
            if client_id and taken is None:
                self.client_id = client_id
                self._bound_own = False
                return

    def bind_own(self, hlc: int) -> None:
        """Bind this process's client id to this region; call inside the commit's transaction."""
        if self._bound_own:
            return
        self._bind([(self.client_id, self._region, None)], hlc)
        self._bound_own = True

    def check(self, records: Sequence[UpdateRecord]) -> None:
        """Refuse edits authored under a client id bound to another origin; bind the new ones.

        Call inside the write transaction that applies ``records``, before any
        of them is applied.
        """
        authored = [
            (client, record.origin, record)
            for record in records
            if record.kind == WRITE
            for client in authors(record.update)
        ]
        if authored:
            self._bind(authored, max(record.hlc for record in records))

    def _bind(self, authored: Sequence[tuple[int, str, UpdateRecord | None]], hlc: int) -> None:
        self._load([client for client, _, _ in authored if client not in self._known])
        new: dict[int, str] = {}
        for client, origin, record in authored:
            bound = self._known.get(client) or new.get(client)
            if bound is None:
                new[client] = origin
            elif bound != origin:
                raise _collision(client, bound, origin, record)
        self._conn.executemany(
            "INSERT INTO clients (client_id, origin, hlc) VALUES (?, ?, ?)",
            [(client, origin, hlc) for client, origin in new.items()],
        )
        self._known.update(new)

    def _load(self, clients: list[int]) -> None:
        for start in range(0, len(clients), 500):
            chunk = clients[start : start + 500]
            marks = ",".join("?" * len(chunk))
            self._known.update(
                self._conn.execute(
                    f"SELECT client_id, origin FROM clients WHERE client_id IN ({marks})", chunk
                ).fetchall()
            )

    def rolled_back(self) -> None:
        self._known.clear()
        self._bound_own = False

    def note_collision(self, error: ClientIdCollisionError, now_ms: int) -> None:
        """Count a refused record in ``collisions`` (its own write transaction's body)."""
        client, origin, bound, seq, doc_id = error.details
        self._conn.execute(
            "INSERT INTO collisions (client_id, origin, bound_origin, seq, doc_id, refused,"
            " last_ms) VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6) ON CONFLICT (client_id, origin)"
            " DO UPDATE SET refused = refused + 1, seq = ?4, doc_id = ?5, last_ms = ?6",
            (client, origin, bound, seq, doc_id, now_ms),
        )

    def summary(self, recent: int = 10) -> dict[str, Any]:
        """For ``Database.info()``: client ids per origin (the newest few) and collisions."""
        by_origin: dict[str, dict[str, Any]] = {}
        for origin, count in self._conn.execute(
            "SELECT origin, count(*) FROM clients GROUP BY origin ORDER BY origin"
        ):
            newest = self._conn.execute(
                "SELECT client_id FROM clients WHERE origin = ? ORDER BY hlc DESC, client_id"
                " LIMIT ?",
                (origin, recent),
            )
            by_origin[origin] = {"count": count, "newest": [row[0] for row in newest]}
        collisions = [
            dict(zip(_COLLISION_FIELDS, row, strict=True))
            for row in self._conn.execute(
                f"SELECT {', '.join(_COLLISION_FIELDS)} FROM collisions ORDER BY last_ms DESC"
            )
        ]
        return {"this_process": self.client_id, "by_origin": by_origin, "collisions": collisions}

    def all(self) -> dict[int, str]:
        return dict(self._conn.execute("SELECT client_id, origin FROM clients").fetchall())


_COLLISION_FIELDS = ("client_id", "origin", "bound_origin", "seq", "doc_id", "refused", "last_ms")


def _collision(
    client: int, bound: str, origin: str, record: UpdateRecord | None
) -> ClientIdCollisionError:
    if record is None:
        error = ClientIdCollisionError(
            f"this process's Yjs client id {client} is already bound to region {bound!r}:"
            " nothing was committed; run the transaction again (a new client id is drawn)"
        )
        error.details = (client, origin, bound, 0, "")
        return error
    error = ClientIdCollisionError(
        f"refused record {record.origin}#{record.seq} for {record.doc_id}: it writes items"
        f" under Yjs client id {client}, which region {bound!r} writes with; applying it"
        " would hide one region's edits from the other for good. Nothing of its batch was"
        " applied. Find what made two regions use one client id (a seeded or copied"
        " random generator, a cloned process) and see the README's data model section"
    )
    error.details = (client, origin, bound, record.seq, record.doc_id)
    return error
