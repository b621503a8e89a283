"""What a :class:`~.node.Replicator` reports as it runs, for whoever counts (the metrics).

The replicator calls these hooks on its event loop, with deltas; this base
class ignores them all, so an application that embeds a replicator pays
nothing, and the replicator never imports a metrics library
(:class:`.metrics.Metrics` is the daemon's implementation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["Observer"]


class Observer:
    """Hooks called by the replicator, on its event loop; each does nothing here."""

    def peer_up(self, peer: str, up: bool) -> None:
        """``peer`` now has (or no longer has) an established session."""

    def traffic(self, peer: str, bytes_in: int, bytes_out: int, records_out: int) -> None:
        """More bytes went each way with ``peer``, and records were sent to it."""

    def records_received(self, peer: str, received: int, applied: int) -> None:
        """Records came from ``peer``; ``applied`` of them were new here."""

    def record_lags(self, peer: str, lags: Sequence[float]) -> None:
        """Seconds from each record's commit (its HLC) to its arrival here via ``peer``."""

    def round_done(self, peer: str, repaired: int) -> None:
        """An anti-entropy round with ``peer`` ended, ``repaired`` documents repaired here."""

    def refused(self, reason: str) -> None:
        """A peer (or would-be peer) was refused: ``reason`` is the error code."""

    def store_write_failed(self, code: str) -> None:
        """A sync session's write to our own store failed (``code``: say ``store_full``);
        the session was closed. Our fault, not the peer's: not a refusal."""

    def commits(self, count: int) -> None:
        """``count`` more commits of this region appeared in its log (any process's)."""

    def gauges(self, *, frontier_age: float, wal_bytes: int) -> None:
        """Current values, about once a second."""

    def clock(self, fenced: bool, offsets: dict[str, float]) -> None:
        """Each heartbeat: whether the clock fence holds, and per peer heard from recently
        its clock minus ours in seconds (see :mod:`.clockwatch`)."""

    def evidence(self, conflicts: Mapping[str, int], equivocating: Sequence[str]) -> None:
        """Records refused as evidence, by kind (``equivocation``, ``forgery``, ``legacy``),
        and the origins flagged for equivocation; about once a second."""
