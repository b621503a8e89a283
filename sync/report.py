"""What a :class:`~.node.Replicator` reports about its peers: the status ``crdtdb status`` shows.

Status (per peer: connected, last contact, bytes, rounds, repairs, lag) is
written atomically to ``DATA_DIR/sync-status.json`` every second (by the
replicator; :mod:`.status` names and reads the file); "last contact" is when
the peer was last heard from, heartbeats included. Here are the per-peer
record (:class:`PeerStatus`) and the report built from it and the live
sessions (:func:`status_report`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

from crdtdb.database import Database
from crdtdb.hlc import Hlc

from .config import RegionConfig
from .session import SyncSession
from .transport import SessionProtocol

__all__ = ["PeerStatus", "lag_seconds", "records_behind", "status_report", "wall_time"]


@dataclass(slots=True)
class PeerStatus:
    region: str
    address: str | None = None
    connected: bool = False
    last_contact: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    records_in: int = 0
    rounds: int = 0
    repairs: int = 0
    peer_holds: dict[str, int] | None = None
    """Per origin, the contiguous seq the peer holds (last known while disconnected)."""
    last_error: str | None = None


def records_behind(db: Database, session: SyncSession) -> int:
    """Records the peer reported holding that we do not hold yet."""
    progress = db.progress()
    return sum(
        max(0, seq - progress.get(origin, (0, 0))[1])
        for origin, seq in session.peer_reports.items()
    )


def lag_seconds(
    db: Database, progress: dict[str, tuple[int, int, Hlc]], holds: dict[str, int], now_ms: int
) -> float:
    """Age of the oldest record we hold and the peer lacks (0.0: it lacks nothing)."""
    oldest = min(
        (
            records[0].hlc.wall_ms
            for origin, (_, contiguous, _) in progress.items()
            if contiguous > holds.get(origin, 0)
            for records in [db.records_from(origin, holds.get(origin, 0), 1)]
            if records
        ),
        default=now_ms,
    )
    return max(0, now_ms - oldest) / 1000


def status_report(
    db: Database,
    config: RegionConfig,
    port: int | None,
    peers: Collection[PeerStatus],
    protocols: Collection[SessionProtocol],
    *,
    stopped: bool = False,
    clock: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``crdtdb status`` shows; ``stopped``: the daemon is stopping cleanly; ``clock``:
    the clock fence's report (:meth:`.clockkeeper.ClockKeeper.report`)."""
    progress = db.progress()
    now_ms = int(time.time() * 1000)
    entries = []
    for status in peers:
        entry = asdict(status)
        holds = status.peer_holds
        for protocol in protocols:
            session = protocol.session
            if session is not None and session.peer == status.region:
                holds = entry["peer_holds"] = session.peer_holds()
                entry["behind_records"] = records_behind(db, session)
                entry["last_contact"] = wall_time(session.last_heard)
        if holds is not None:
            entry["lag_records"] = {
                origin: max(0, held[1] - holds.get(origin, 0)) for origin, held in progress.items()
            }
            entry["lag_seconds"] = lag_seconds(db, progress, holds, now_ms)
        entries.append(entry)
    return {
        "region": db.region,
        "state": "stopped" if stopped else "running",
        "listen": f"{config.host}:{port}",
        "pid": os.getpid(),
        "time": time.time(),
        "hlc": str(db.hlc),
        "frontier": str(db.frontier()),
        "origins": {
            o: {"contiguous_seq": p[1], "contiguous_hlc": str(p[2])} for o, p in progress.items()
        },
        "peers": entries,
        "clock": clock,
        "provenance": db.chains.summary(count_legacy=False),
    }


def wall_time(loop_time: float) -> float:
    """A moment of the running loop's clock as wall-clock time (for people)."""
    try:
        now = asyncio.get_running_loop().time()
    except RuntimeError:  # no loop: the moment is as good as now
        now = loop_time
    return time.time() - (now - loop_time)
