"""What a :class:`~.session.SyncSession` reports to whoever pumps it (``next_event``)."""

from __future__ import annotations

from dataclasses import dataclass

from crdtdb.errors import CrdtdbError

from . import wire
from .errors import ProtocolError
from .rounds import AntiEntropyDone
from .store import Intent

__all__ = ["Closed", "Established", "Event", "RecordsReceived"]


@dataclass(frozen=True, slots=True)
class Established:
    peer: str


@dataclass(frozen=True, slots=True)
class RecordsReceived:
    peer: str
    received: int
    applied: int


@dataclass(frozen=True, slots=True)
class Closed:
    peer: str | None
    reason: str
    error: ProtocolError | CrdtdbError | None = None


Event = Established | RecordsReceived | AntiEntropyDone | Closed | Intent | wire.SnapshotPull
"""What ``next_event`` returns: news for the pumping layer, an intent for it to perform, or a
joining peer's pull of a snapshot (the node answers it: :mod:`.snapshot`)."""
