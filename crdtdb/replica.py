"""The replication surface of a store: what a sync session, anti-entropy and the
daemon use, and nothing an application needs.

:class:`Replica` is built on the engine and the facets and delegates to them;
:class:`crdtdb.Database` extends it with documents, transactions, the change
feed and history, and ``db.replica`` is the same store seen through this
narrower type.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import merkle, storage
from .chains import ChainRow, Chains
from .digests import Digests
from .engine import ChangeSignal, Engine, check_count
from .errors import InvalidUpdateError
from .feed import ChangeFeed
from .fence import FENCE_KEY, ClockFence, decode_fence
from .frontier import Frontier
from .hlc import Hlc
from .ids import RegionId, validate_doc_id
from .records import UpdateRecord
from .writes import Writer

__all__ = ["Replica"]


class Replica:
    """A region's store as a replica: records, diffs, digests, the Merkle tree, frontiers."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._digests = Digests(engine)
        self._frontier = Frontier(engine)
        self._feed = ChangeFeed(engine)
        self._writer = Writer(engine, self._digests, self._frontier)
        self.chains = Chains(engine)
        """The signed-records rows: chains, keys, conflicts (see :mod:`crdtdb.chains`)."""

    @property
    def region(self) -> RegionId:
        return self._engine.region

    @property
    def signal(self) -> ChangeSignal:
        """Told of every record this process commits, applies or sees: a follower of the
        log in this process waits on it (see :mod:`crdtdb.follow`)."""
        return self._engine.signal

    # ------------------------------------------------------------ documents

    def state_vector(self, doc_id: str) -> bytes:
        """The document's CRDT state vector (empty-document vector if unknown)."""
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("state_vector()")
            engine.refresh()
            return engine.handle(validate_doc_id(doc_id)).doc.get_state()

    def diff(self, doc_id: str, state_vector: bytes = b"\x00") -> bytes:
        """The update a replica at ``state_vector`` is missing (all of it by default)."""
        if not isinstance(state_vector, bytes):
            raise InvalidUpdateError(
                f"a state vector is bytes from state_vector(), not {type(state_vector).__name__}"
            )
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("diff()")
            engine.refresh()
            handle = engine.handle(validate_doc_id(doc_id))
            try:
                return handle.doc.get_update(state_vector)
            except ValueError:
                raise InvalidUpdateError(
                    "not a valid state vector: pass bytes from state_vector() of a replica"
                ) from None

    def apply_diff(self, doc_id: str, update: bytes) -> Hlc | None:
        """Apply an anti-entropy repair (a state-vector diff from a peer).

        A diff has no origin of its own, so what it adds to the document is
        committed as a new local record (this region's next seq, a new HLC) and
        flows on like any local edit. Returns that HLC, or None if the diff
        brought nothing new. Bytes that do not decode raise InvalidUpdateError
        and change nothing.
        """
        doc_id = validate_doc_id(doc_id)
        if not isinstance(update, bytes) or not update:
            raise InvalidUpdateError("a diff must be non-empty bytes from Database.diff()")
        return self._writer.apply_diff(doc_id, update)

    # --------------------------------------------------------------- records

    def apply_remote(self, record: UpdateRecord) -> bool:
        """Apply a record made in another region (or relayed); False if already held.

        Refused, with nothing changed: malformed fields (``InvalidRecordError``),
        update bytes that do not decode (``InvalidUpdateError``), an HLC more than
        ``max_clock_offset_ms`` ahead of local wall time (``ClockSkewError``).
        """
        return self.apply_remote_many([record]) == 1

    def apply_remote_many(self, records: list[UpdateRecord], chain: Sequence[ChainRow] = ()) -> int:
        """Apply a batch of remote records in one transaction; return how many were new.

        Records already held are skipped before the write lock is taken (a relay
        often sends back what we have); of two records with the same origin and
        seq in one batch the first counts. If any record is refused, the error
        is raised and none of the batch is applied. ``chain``: the records'
        chain rows (checked by the caller, see :mod:`crdtdb.chains`), stored in
        the same transaction.
        """
        return self._writer.apply_remote_many(records, chain)

    def records_from(self, origin: str, after_seq: int, limit: int = 1000) -> list[UpdateRecord]:
        """Records of ``origin`` held here with seq above ``after_seq``, in seq order.

        At most ``limit``; page by passing the last one's seq. There may be gaps
        where records have not arrived yet (``progress()`` says up to which seq
        there are none).
        """
        return self._feed.records_from(origin, after_seq, limit)

    def log_position(self) -> int:
        """The id of the newest log record (from any process): cheap to poll for changes."""
        return self._feed.log_position()

    def progress(self) -> dict[str, tuple[int, int, Hlc]]:
        """Per origin held here: (max seq, highest contiguous seq, that record's HLC)."""
        return self._frontier.progress()

    # ------------------------------------------------------- digests, Merkle

    def digest(self, doc_id: str) -> bytes | None:
        """The canonical digest of the stored document, or None if it never existed."""
        return self._digests.digest(validate_doc_id(doc_id))

    def merkle_node(self, node: int) -> bytes:
        """The hash of one Merkle node (all zeros for an empty subtree), up to date."""
        return self._digests.node(node)

    def merkle_nodes(self, nodes: list[int], *, flush: bool = True) -> list[bytes]:
        """The hashes of many Merkle nodes at once, in order, up to date.

        ``flush=False``: as the tree stands, stale digests left for ``refresh_digests``
        (a sync session reads so, and asks its node to refresh off the event loop)."""
        return self._digests.nodes(nodes, flush=flush)

    def merkle_root(self) -> bytes:
        return self._digests.node(merkle.node_id(0, 0))

    def leaf_docs(self, leaf: int, *, flush: bool = True) -> list[tuple[str, bytes]]:
        """(doc_id, digest) of every document in one Merkle leaf, digests up to date.

        ``flush=False``: the digests as stored, stale ones too (zeros where none is yet)."""
        return self._digests.leaf_docs(leaf, flush=flush)

    def refresh_digests(self, limit: int = 100) -> int:
        """Bring up to ``limit`` stale digests and their Merkle paths up to date; return how
        many (see :meth:`crdtdb.digests.Digests.refresh`: for a daemon's background work)."""
        return self._digests.refresh(check_count(limit, "limit"))

    def stale_digests(self, limit: int = 100) -> int:
        """How many documents' digests are stale, counting up to ``limit`` (a quick look)."""
        return self._digests.stale_count(check_count(limit, "limit"))

    # -------------------------------------------------------------- frontier

    def heartbeat(self) -> Hlc:
        """Advance this region's clock to now with no record: an idle region's frontier moves."""
        return self._frontier.heartbeat()

    def frontier_entries(self) -> list[tuple[str, int, Hlc]]:
        """Per origin: (origin, contiguous seq held, HLC through which all its records are held).

        For this region itself that is (region, its last seq, its clock): every
        record it makes later will have a higher HLC.
        """
        return self._frontier.entries()

    def local_frontier(self) -> Hlc:
        """``C`` of this region: it holds every update (of any origin) with HLC at or below it."""
        return self._frontier.local()

    def note_frontier(
        self,
        entries: list[tuple[str, int, int]],
        clocks: list[tuple[str, int]] = [],  # noqa: B006 - never mutated
    ) -> None:
        """Take a peer's frontier report: per origin (seq, hlc), and C of other regions."""
        self._frontier.note(entries, clocks)

    def frontier_clocks(self) -> list[tuple[str, Hlc]]:
        """C per region known here (this one computed now), for gossip."""
        return self._frontier.clocks()

    def frontier(self) -> Hlc:
        """The global frontier F: every region holds every update with an HLC at or below it.

        So ``as_of(F)`` gives the same answer in every region, and compaction
        never folds anything above F. Regions that were named (as peers) but
        never reported count as 0 until they do.
        """
        return self._frontier.global_frontier()

    def expect_regions(self, regions: list[str]) -> None:
        """Name regions that must report before the frontier can move (e.g. configured peers)."""
        self._frontier.expect_regions(regions)

    # ----------------------------------------------------------- clock fence

    def set_clock_fence(self, fence: ClockFence | None) -> None:
        """Refuse (or, with None, allow again) local writes of every process on this store
        while ``fence`` holds (see :mod:`crdtdb.fence`; the sync daemon sets it)."""
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("set_clock_fence()")

            def body() -> tuple[None, list[UpdateRecord]]:
                engine.set_fence(fence)
                return None, []

            engine.write(body)

    def clock_fence(self) -> ClockFence | None:
        """The clock fence the store holds (expired or not), or None."""
        engine = self._engine
        with engine.lock:
            engine.check()
            return decode_fence(engine.meta(FENCE_KEY))

    # ---------------------------------------------------------------- upkeep

    def checkpoint(self) -> tuple[int, int]:
        """Copy what the WAL holds into the database file; return (WAL pages, pages copied).

        Without the store's lock, on a connection of its own: for a worker
        thread of a process that opened the store with ``wal_autocheckpoint=0``
        (see :func:`crdtdb.storage.checkpoint`).
        """
        with self._engine.lock:
            self._engine.check()
        return storage.checkpoint(self._engine.path)
