"""What a sync session reads from a region's store, and the writes it asks for.

A session owns no storage: it reads through the narrow protocols below and,
instead of writing, emits *intents* (frozen dataclasses, in its event queue)
that the layer pumping it performs off the per-message path, batched, and
answers with an :class:`Outcome` (``SyncSession.performed``). The node does so
in one writer thread (:mod:`.writer`); tests do it in memory, against a
``crdtdb.Database`` or a fake store alike.

- :class:`RecordLog`, :class:`DocumentState`, :class:`MerkleView` and
  :class:`FrontierSource` are reads only. A ``MerkleView`` read must not
  flush stale digests (``flush=False``): the session asks for a
  :class:`RefreshDigests` first when the tree is stale, so hashing never runs
  where the session runs (the event loop, in the daemon).
- :class:`ReplicaStore` adds the writes that performing the intents takes.

``crdtdb.Database`` provides all of them, structurally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from crdtdb.chains import ChainRow, DocRecord
from crdtdb.errors import CrdtdbError
from crdtdb.hlc import Hlc
from crdtdb.records import UpdateRecord

from .wire import Seal

__all__ = [
    "ApplyDiffs",
    "ApplyRecords",
    "DocumentState",
    "FrontierSource",
    "Intent",
    "MerkleView",
    "NoteCertificates",
    "NoteFrontier",
    "Outcome",
    "RecordLog",
    "RefreshDigests",
    "ReplicaStore",
    "SealedLog",
    "SessionStore",
    "Verifier",
]


class RecordLog(Protocol):
    """The region's update log, read: what the session sends the peer."""

    @property
    def region(self) -> str: ...

    def records_from(self, origin: str, after_seq: int, limit: int = ...) -> list[UpdateRecord]: ...
    def progress(self) -> dict[str, tuple[int, int, Hlc]]: ...


class DocumentState(Protocol):
    """Documents' CRDT state, read: what anti-entropy compares and sends."""

    def state_vector(self, doc_id: str) -> bytes: ...
    def diff(self, doc_id: str, state_vector: bytes = ...) -> bytes: ...


class MerkleView(Protocol):
    """The Merkle tree as it stands (``flush=False``: stale digests are left stale)."""

    def stale_digests(self, limit: int = ...) -> int: ...
    def merkle_nodes(self, nodes: list[int], *, flush: bool = ...) -> list[bytes]: ...
    def leaf_docs(self, leaf: int, *, flush: bool = ...) -> list[tuple[str, bytes]]: ...


class FrontierSource(Protocol):
    """What the region holds per origin, and every region's frontier it knows: gossip."""

    def frontier_entries(self) -> list[tuple[str, int, Hlc]]: ...
    def frontier_clocks(self) -> list[tuple[str, Hlc]]: ...


class SessionStore(RecordLog, DocumentState, MerkleView, FrontierSource, Protocol):
    """Everything a session reads."""


class ReplicaStore(SessionStore, Protocol):
    """A session's reads and the writes that perform its intents."""

    def apply_remote_many(
        self, records: list[UpdateRecord], chain: Sequence[ChainRow] = ...
    ) -> int: ...
    def apply_diff(self, doc_id: str, update: bytes) -> Hlc | None: ...
    def note_frontier(
        self, entries: list[tuple[str, int, int]], clocks: list[tuple[str, int]] = ...
    ) -> None: ...
    def refresh_digests(self, limit: int = ...) -> int: ...


class SealedLog(Protocol):
    """The log read as its origins' sealed runs (signed records, see :mod:`.provenance`)."""

    def runs_from(
        self, origin: str, after_seq: int, limit: int
    ) -> list[tuple[Seal, list[UpdateRecord]]]: ...
    def certificates(self, fprs: Sequence[bytes]) -> tuple[bytes, ...]: ...
    def doc_records(self, doc_id: str, limit: int) -> list[DocRecord]: ...


class Verifier(Protocol):
    """Checks received records' seals before they are applied (writer thread)."""

    def check(
        self, records: Sequence[UpdateRecord], seals: Sequence[Seal], peer: str
    ) -> tuple[list[UpdateRecord], list[ChainRow]]: ...
    def note_certificates(self, pems: Sequence[bytes]) -> None: ...


# ----------------------------------------------------------------- intents


@dataclass(frozen=True, slots=True)
class ApplyRecords:
    """Store these records from the peer (one ``Records`` message); the session acks
    them once the outcome says what the store holds."""

    records: tuple[UpdateRecord, ...]
    seals: tuple[Seal, ...] = ()
    """Their origins' seals, checked by the ``Verifier`` before anything is applied."""
    peer: str = ""
    """Who sent them (for the evidence of a refusal)."""


@dataclass(frozen=True, slots=True)
class NoteCertificates:
    """Check the certificates the peer sent (against the cluster CA) and keep their keys."""

    certificates: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ApplyDiffs:
    """Apply these anti-entropy repairs, ``(doc_id, diff)``; ``round`` is the session's
    number of the round they came in (0: none), which counts what they repaired."""

    docs: tuple[tuple[str, bytes], ...]
    round: int = 0


@dataclass(frozen=True, slots=True)
class NoteFrontier:
    """Take the peer's frontier report; a later one from the same peer supersedes it,
    origin by origin, so reports waiting together are noted as one."""

    entries: tuple[tuple[str, int, int], ...] = ()
    clocks: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class RefreshDigests:
    """Bring every stale digest into the Merkle tree; an anti-entropy round waits for it."""


Intent = ApplyRecords | NoteCertificates | ApplyDiffs | NoteFrontier | RefreshDigests


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came of one intent."""

    applied: int = 0
    """Records or diffs that brought something new."""
    held: tuple[tuple[str, int], ...] = ()
    """After ``ApplyRecords``: per origin of its records, the contiguous seq now held."""
    error: CrdtdbError | None = None
    """Why the store refused: the rest of the intent, and the session's intents after
    it, are not performed."""
