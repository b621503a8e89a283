"""The clock fence: a region whose clock is known to be off refuses local writes.

The sync daemon learns from its peers' clocks (see ``crdtdb.sync.clockwatch``)
when this region's clock runs ahead of most of them, or when the HLC the store
holds is ahead of the wall clock (after a clock that ran ahead was fixed).
Records made then would be refused by every peer that checks them
(``clock_skew``), so the region must not acknowledge them. Local writes come
from any process that opened the store (``crdtdb.open``), not only the
daemon: so the daemon writes the fence into the store's ``meta`` table
(key :data:`FENCE_KEY`), and every local commit checks it.

The check costs a commit nothing it did not already pay: the row is read by
the same statement that reads this region's sequence number when a commit
starts after another process committed (``Engine.read_counters``), and is
otherwise held in memory with the counters (a fence set or lifted by another
process is a commit of that process, so it is always seen).

A fence **expires** (:attr:`ClockFence.expires_ms`, wall-clock ms, by the
same clock commits read): the daemon rewrites it every heartbeat while it
holds, a few seconds ahead (``FENCE_TTL_MS``), and deletes it when it lifts.
So a daemon that dies does not leave the store fenced for more than that:
without its daemon a region replicates nothing anyway, and the daemon sets
the fence again when it starts, before it serves a peer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .errors import ClockSkewError

__all__ = ["FENCE_KEY", "FENCE_TTL_MS", "ClockFence", "decode_fence", "encode_fence"]

FENCE_KEY = "clock_fence"
"""The ``meta`` row that holds the fence (absent: no fence)."""
FENCE_TTL_MS = 10_000
"""How long a fence holds after the daemon last wrote it: it rewrites it every
heartbeat, so this is how long a store stays fenced after its daemon died."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockFence:
    """Why local writes are refused, and until when."""

    message: str
    """What the refusal says: by how much, in which direction, what to do."""
    ahead_ms: int
    """How far this region's clock (or stored HLC) is ahead of its peers'."""
    expires_ms: int
    """Wall-clock ms after which the fence no longer holds unless rewritten."""
    lift_ms: int | None = None
    """When it lifts by itself (wall ms), if known: a stored HLC ahead of the wall clock
    lifts once the wall clock is within the maximum offset of it."""

    def refusal(self, now_ms: int) -> ClockSkewError | None:
        """The error a local commit at wall time ``now_ms`` raises, or None once expired."""
        if now_ms >= self.expires_ms:
            return None
        text = self.message
        if self.lift_ms is not None:
            text += f" (in {max(0, self.lift_ms - now_ms) / 1000:.0f} s)"
        return ClockSkewError(f"refused local write: {text}; nothing was stored")


def encode_fence(fence: ClockFence) -> str:
    return json.dumps(asdict(fence), sort_keys=True)


def decode_fence(text: object) -> ClockFence | None:
    """The fence a ``meta`` value holds; None for none (a value it cannot read, too:
    a fence is advisory, and the daemon rewrites it every heartbeat)."""
    if not isinstance(text, str):
        return None
    try:
        fields = json.loads(text)
        lift = fields.get("lift_ms")
        return ClockFence(
            message=str(fields["message"]),
            ahead_ms=int(fields["ahead_ms"]),
            expires_ms=int(fields["expires_ms"]),
            lift_ms=None if lift is None else int(lift),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
