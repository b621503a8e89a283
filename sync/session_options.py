"""The tuning of one replication session (:class:`~.session.SyncSession`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SessionOptions"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOptions:
    """Tuning of one session; defaults suit a WAN link."""

    anti_entropy_interval: float = 2.0
    """Seconds between anti-entropy rounds started by the dialing side."""
    handshake_timeout: float = 10.0
    """Seconds the peer has to complete the handshake."""
    batch_records: int = 256
    """Records per ``Records`` message."""
    window: int = 8
    """``Records`` messages sent and not yet acknowledged, per session."""
    gossip_interval: float = 1.0
    """Seconds between frontier reports (also the heartbeat of an idle region)."""
    large_bytes: int = 64 * 1024
    """A record or diff at least this big goes in a message of its own on a bulk lane."""
    silence_timeout: float = 5.0
    """Close the session when nothing came from the peer for this long (it sends every
    ``gossip_interval``), so a restarted peer is redialed at once instead of after the
    QUIC idle timeout."""
