"""Digests facet: each document's canonical digest and the Merkle tree over them.

A changed document's digest is computed when the tree is next read (once
per anti-entropy round, or by the daemon's background refresh), not per
commit: a digest scans the document's whole delete set, which grows with its
history. Where a document's digest stands is its ``docs.dirty`` state,
:class:`DigestState`.

A document new to the store is hashed in the commit that creates it: its
digest costs no more than what was written, and computing it with the
document in hand spares a load later (the process that refreshes the tree is
often another one, the sync daemon, where loading cost several times the
digest). When a commit or batch creates at least ``EAGER_DIGESTS`` documents
(a bootstrap, a bulk import), their paths are XORed into the tree at once,
sharing the upper nodes; fewer leave that to the refresh, since XORing one
path per commit would cost the commit more than the digest.

XOR deltas combine in any grouping, so flushing in chunks gives the same tree
as flushing at once.
"""

from __future__ import annotations

from enum import IntEnum

from . import merkle
from ._cache import DocHandle
from .engine import Engine
from .errors import UsageError, shown
from .records import UpdateRecord

__all__ = ["EAGER_DIGESTS", "DigestState", "Digests"]

EAGER_DIGESTS = 32
"""A commit or remote batch that creates at least this many documents XORs their
digests into the Merkle tree at once; smaller ones leave that to the next tree read."""


class DigestState(IntEnum):
    """``docs.dirty``: where a document's digest stands."""

    FRESH = 0
    """``digest`` is current and in the Merkle tree."""
    STALE = 1
    """The document changed since: ``digest`` is what the tree still holds for it (or NULL)."""
    UNTREED = 2
    """``digest`` is current (computed when the document was created) but not in the tree."""


class Digests:
    """Digests and the Merkle tree of one store."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._stale_here: dict[str, None] = {}
        """Documents this process marked stale, oldest first (see :meth:`refresh`)."""

    # ------------------------------------------------------------------ reads

    def digest(self, doc_id: str) -> bytes | None:
        """The canonical digest of the stored document, or None if it never existed."""
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("digest()")
            engine.refresh()
            row = engine.conn.execute(
                "SELECT digest, dirty FROM docs WHERE doc_id = ?", (doc_id,)
            ).fetchone()
            if row is None:
                return None
            if row[1] != DigestState.STALE:
                return bytes(row[0])
            return merkle.doc_digest(engine.handle(doc_id).doc)

    def node(self, node: int) -> bytes:
        """The hash of one Merkle node (all zeros for an empty subtree), up to date."""
        return self.nodes([node], "merkle_node()")[0]

    def nodes(
        self, nodes: list[int], what: str = "merkle_nodes()", *, flush: bool = True
    ) -> list[bytes]:
        """The hashes of many Merkle nodes at once, in order, up to date (``flush=False``:
        as the tree stands, stale digests left for :meth:`refresh`)."""
        _check_nodes(nodes, what)
        engine = self._engine
        with engine.lock:
            engine.check_no_tx(what)
            if flush:
                self.ensure()
            found = {
                node: bytes(digest)
                for node, digest in engine.rows_in(
                    "SELECT node, hash FROM merkle WHERE node IN ({marks})", nodes
                )
            }
            return [found.get(node, merkle.ZERO) for node in nodes]

    def root(self) -> bytes:
        return self.node(merkle.node_id(0, 0))

    def leaf_docs(self, leaf: int, *, flush: bool = True) -> list[tuple[str, bytes]]:
        """(doc_id, digest) of every document in one Merkle leaf, digests up to date
        (``flush=False``: as stored, stale ones too, zeros where none is yet)."""
        if isinstance(leaf, bool) or not isinstance(leaf, int) or not 0 <= leaf < LEAVES:
            raise UsageError(
                f"leaf_docs(): a leaf is a whole number 0..{LEAVES - 1}, not {shown(leaf)}"
            )
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("leaf_docs()")
            if flush:
                self.ensure()
            rows = engine.conn.execute(
                "SELECT doc_id, digest FROM docs WHERE leaf = ? ORDER BY doc_id", (leaf,)
            )
            return [(row[0], bytes(row[1] or merkle.ZERO)) for row in rows]

    def stale_count(self, limit: int = 100) -> int:
        """How many documents' digests are stale, counting up to ``limit`` (a quick look)."""
        engine = self._engine
        with engine.lock:
            engine.check()
            row = engine.conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM docs WHERE dirty LIMIT ?)", (limit,)
            ).fetchone()
            return int(row[0])

    # ----------------------------------------------------------------- upkeep

    def refresh(self, limit: int = 100) -> int:
        """Bring up to ``limit`` stale digests and their Merkle paths up to date; return how many.

        Reading the tree flushes every stale digest on the reader's thread (about
        60 µs a document). A sync daemon instead calls this in the background,
        a small ``limit`` at a time while writes go on and from a worker thread
        once they stop, until it returns 0: each call is one write transaction
        under the lock, so the next read finds the tree fresh.
        """
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("refresh_digests()")
            if not self._any_stale():
                return 0  # nothing stale: no write lock taken
            count: int = engine.write(lambda: self._flush(limit))
            return count

    def ensure(self) -> None:
        """Flush every stale digest (under the lock, in write transactions of 1,000)."""
        if not self._any_stale():
            return  # the common case: a read, no write lock taken
        while self._engine.write(self._flush):
            pass

    def _any_stale(self) -> bool:
        row = self._engine.conn.execute("SELECT 1 FROM docs WHERE dirty LIMIT 1").fetchone()
        return row is not None

    def _flush(self, limit: int = 1000) -> tuple[int, list[UpdateRecord]]:
        """Bring up to ``limit`` stale digests and their Merkle paths up to date, inside
        one write transaction; returns how many were stale. Other processes get the
        write lock between chunks (a million stale digests take about a minute)."""
        rows = self._stale_rows(limit)
        if not rows:
            return 0, []
        deltas: dict[int, int] = {}
        fresh = []
        for doc_id, old, dirty in rows:
            if dirty == DigestState.UNTREED:  # hashed when created: only its path is left
                assert old is not None
                add_delta(deltas, doc_id, old, None)
                fresh.append((old, doc_id))
                continue
            handle = self._engine.cache.peek(doc_id) or self._engine.load(doc_id)
            digest = merkle.doc_digest(handle.doc)
            add_delta(deltas, doc_id, digest, old)
            fresh.append((digest, doc_id))
        self._engine.conn.executemany(
            f"UPDATE docs SET digest = ?, dirty = {DigestState.FRESH:d} WHERE doc_id = ?", fresh
        )
        self._xor_into_tree(deltas)
        return len(rows), []

    def _stale_rows(self, limit: int) -> list[tuple[str, bytes | None, int]]:
        """Up to ``limit`` (doc_id, digest, dirty) of stale documents, those in the cache first.

        A digest costs about 20 µs for a document in the cache and several
        times that for one loaded from disk. In doc id order, which is what
        the stale mark's index gives, a refresh that fell behind a bulk load
        would pick documents long evicted; so it takes the ones this process
        marked and still has loaded, oldest first, then any others.
        """
        engine = self._engine
        picked: list[str] = []
        stale = self._stale_here
        while stale and len(picked) < limit:
            doc_id = next(iter(stale))
            del stale[doc_id]
            if engine.cache.peek(doc_id) is not None:
                picked.append(doc_id)
        rows: list[tuple[str, bytes | None, int]] = list(
            engine.rows_in(
                "SELECT doc_id, digest, dirty FROM docs WHERE dirty AND doc_id IN ({marks})",
                picked,
            )
        )
        if len(rows) < limit:
            taken = {row[0] for row in rows}
            more = engine.conn.execute(
                "SELECT doc_id, digest, dirty FROM docs WHERE dirty LIMIT ?", (limit,)
            ).fetchall()
            rows += [row for row in more if row[0] not in taken][: limit - len(rows)]
        return rows

    def _xor_into_tree(self, deltas: dict[int, int]) -> None:
        self._engine.conn.executemany(
            "INSERT INTO merkle (node, hash) VALUES (?, ?) ON CONFLICT (node)"
            " DO UPDATE SET hash = xor_blob(hash, excluded.hash)",
            [(node, delta.to_bytes(merkle.NODE_BYTES, "big")) for node, delta in deltas.items()],
        )

    # ------------------------------------------------------------ the write path

    def on_created(
        self, created: list[tuple[str, DocHandle]]
    ) -> tuple[dict[str, tuple[bytes, DigestState]], dict[int, int]]:
        """Digests of documents a commit or batch creates, with the state to store them in,
        and the Merkle deltas to XOR into the tree with them (see the module's docstring);
        called inside its write transaction, which writes both."""
        eager = len(created) >= EAGER_DIGESTS
        deltas: dict[int, int] = {}
        found: dict[str, tuple[bytes, DigestState]] = {}
        for doc_id, handle in created:
            digest = merkle.doc_digest(handle.doc)
            found[doc_id] = (digest, DigestState.FRESH if eager else DigestState.UNTREED)
            if eager:
                add_delta(deltas, doc_id, digest, None)
        return found, deltas

    def on_changed(self, doc_ids: list[str]) -> None:
        """Note existing documents a commit marked stale, so :meth:`refresh` finds them
        while they are still loaded."""
        stale = self._stale_here
        for doc_id in doc_ids:
            stale.pop(doc_id, None)
            stale[doc_id] = None
        while len(stale) > 4 * self._engine.cache.capacity:  # the rest is found by their mark
            del stale[next(iter(stale))]


LEAVES = merkle.FANOUT**merkle.DEPTH


def _check_nodes(nodes: object, what: str) -> None:
    if not isinstance(nodes, list | tuple):
        raise UsageError(f"{what}: pass a list of Merkle node numbers, not {shown(nodes)}")
    for node in nodes:
        if (
            isinstance(node, bool)
            or not isinstance(node, int)
            or not 0 <= node < 1 << 32
            or not merkle.valid_node(node)
        ):
            raise UsageError(
                f"{what}: {shown(node)} is not a node of the Merkle tree: use merkle.node_id()"
            )


def add_delta(deltas: dict[int, int], doc_id: str, digest: bytes, old: bytes | None) -> None:
    """XOR into ``deltas`` (by tree node) what a document's new digest changes on its path."""
    delta = int.from_bytes(merkle.contribution(doc_id, digest), "big")
    if old is not None:
        delta ^= int.from_bytes(merkle.contribution(doc_id, bytes(old)), "big")
    for node in merkle.path_to_root(merkle.leaf_of(doc_id)):
        deltas[node] = deltas.get(node, 0) ^ delta
