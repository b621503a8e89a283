"""The replicator's side of the clock fence: feeds :mod:`.clockwatch`, writes the fence.

The replicator hands it what its sessions hear (each peer's own clock in its
frontier gossip; a peer's ``clock_skew`` refusal); the housekeeping calls
:meth:`ClockKeeper.update` once at start, before the first heartbeat, and after
each heartbeat. While the verdict is "fenced" the fence is rewritten in the
store every heartbeat with an expiry ``FENCE_TTL_MS`` ahead (see
:mod:`crdtdb.fence`: a daemon that dies leaves it for that long at most), and
deleted when it lifts. It logs one WARNING when the fence goes up and one INFO
when it lifts (and the same for a clock that looks behind, which is reported
only), and reports to the observer (the metrics) and to ``crdtdb status``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from crdtdb.database import Database
from crdtdb.errors import CrdtdbError
from crdtdb.fence import FENCE_TTL_MS, ClockFence
from crdtdb.hlc import Hlc

from .clockwatch import ClockWatch, Verdict, parse_refusal
from .config import RegionConfig
from .observe import Observer
from .writer import StoreWriter

__all__ = ["GOSSIP_SLACK_MS", "ClockKeeper"]

log = logging.getLogger("crdtdb.sync")

GOSSIP_SLACK_MS = 5_000
"""How stale a peer's gossiped clock may be, at least: beyond the offset, a lead shown by
gossip alone must exceed this to count (a refusal counts exactly)."""


class ClockKeeper:
    """Learns whether this region's clock is off, and fences the store while it is."""

    def __init__(
        self, db: Database, config: RegionConfig, writer: StoreWriter[Any], observer: Observer
    ) -> None:
        self.db = db
        self.region = db.region
        self.writer = writer
        self.observer = observer
        self.watch = ClockWatch(
            max_offset_ms=config.max_clock_offset_ms,
            # a peer ticks its clock each heartbeat and gossips it each heartbeat; its
            # writer thread may be held up a while (see clockwatch)
            slack_ms=max(GOSSIP_SLACK_MS, int(2000 * config.heartbeat_interval) + 100),
            # a peer that refuses us closes the session: the next one may be a backoff away
            window_s=max(30.0, 3 * config.reconnect_max),
        )
        self.verdict = Verdict(False)
        self._fence_stored: bool | None = None  # None: not looked yet
        self._updating = asyncio.Lock()
        self._poked: asyncio.Task[None] | None = None

    def _now(self) -> tuple[int, float]:
        return self.db.options.clock(), asyncio.get_running_loop().time()

    def note_frontier(self, peer: str, entries: Iterable[tuple[str, int, int]]) -> None:
        """A peer's frontier report: its entry for itself holds its own clock."""
        for origin, _, hlc in entries:
            if origin == peer and hlc:
                wall_ms, now = self._now()
                self.watch.note_gossip(peer, Hlc(hlc), wall_ms, now)
                self._poke()

    def forget(self, peer: str) -> None:
        """``peer`` was removed from the cluster: its clock no longer counts, nor shows."""
        self.watch.forget(peer)

    def note_closed(self, peer: str, reason: str) -> None:
        """A session with ``peer`` closed for ``reason``: learn from a clock_skew refusal."""
        if not reason.startswith("peer closed: clock_skew:"):
            return
        found = parse_refusal(reason)
        if found is not None:
            wall_ms, now = self._now()
            self.watch.note_refusal(peer, found[0], found[1], wall_ms, now)
            self._poke()

    def _poke(self) -> None:
        """Decide now rather than at the next heartbeat while not fenced: a write
        acknowledged meanwhile would be refused by the peers that just told us."""
        if self.verdict.fenced or (self._poked is not None and not self._poked.done()):
            return  # fenced: the heartbeats keep it; or a decision is on its way
        self._poked = asyncio.get_running_loop().create_task(self._poked_update())

    async def _poked_update(self) -> None:
        try:
            await self.update()
        except Exception as exc:  # the daemon is stopping (its writer thread is gone)
            log.debug("%s: clock fence not updated: %s", self.region, exc)

    async def update(self) -> None:
        """Decide again, and write, refresh or lift the fence in the store."""
        async with self._updating:
            await self._update()

    async def _update(self) -> None:
        wall_ms, now = self._now()
        try:
            if self._fence_stored is None:
                self._fence_stored = self.db.clock_fence() is not None
            verdict = self.watch.decide(stored=self.db.hlc, wall_ms=wall_ms, now=now)
            if verdict.fenced:
                fence = ClockFence(
                    message=verdict.message,
                    ahead_ms=verdict.ahead_ms,
                    expires_ms=wall_ms + FENCE_TTL_MS,
                    lift_ms=verdict.lift_ms,
                )
                await self.writer.call(self.db.set_clock_fence, fence)
                self._fence_stored = True
            elif self._fence_stored:
                await self.writer.call(self.db.set_clock_fence, None)
                self._fence_stored = False
        except CrdtdbError as exc:  # the store is not writable: the heartbeat says so
            log.debug("%s: cannot update the clock fence: %s", self.region, exc)
            return
        self._report(self.verdict, verdict)
        self.verdict = verdict
        self.observer.clock(
            verdict.fenced,
            {name: clock.offset_ms / 1000 for name, clock in verdict.peers.items()},
        )

    def _report(self, before: Verdict, after: Verdict) -> None:
        if after.fenced and (not before.fenced or before.reason != after.reason):
            log.warning(
                "%s: clock fenced, local writes refused: %s",
                self.region,
                after.message,
                extra={"event": "clock_fenced", "ahead_ms": after.ahead_ms},
            )
        elif before.fenced and not after.fenced:
            why = (
                "the stored HLC is within the offset of the wall clock"
                if before.reason == "stored"
                else "the clock agrees with most peers"
            )
            log.info(
                "%s: clock fence lifted: %s again, local writes are accepted",
                self.region,
                why,
                extra={"event": "clock_fence_lifted"},
            )
        if after.behind_ms and not before.behind_ms:
            log.warning(
                "%s: this region's clock looks %.1f s behind most of its peers: it will refuse"
                " their records (clock_skew) and fall behind; fix this host's clock (NTP)",
                self.region,
                after.behind_ms / 1000,
                extra={"event": "clock_behind", "behind_ms": after.behind_ms},
            )
        elif before.behind_ms and not after.behind_ms:
            log.info("%s: the clock no longer looks behind its peers", self.region)

    def report(self) -> dict[str, Any]:
        """What ``crdtdb status`` shows about the clock."""
        verdict = self.verdict
        return {
            "fenced": verdict.fenced,
            "reason": verdict.reason or None,
            "ahead_ms": verdict.ahead_ms,
            "behind_ms": verdict.behind_ms,
            "message": verdict.message or None,
            "lift_at": None if verdict.lift_ms is None else verdict.lift_ms / 1000,
            "peers": {
                name: {"offset_ms": clock.offset_ms, "source": clock.source}
                for name, clock in verdict.peers.items()
            },
        }
