"""A :class:`~.node.Replicator`'s background upkeep of its store: the loops it runs beside
the sessions.

- Merkle digests of changed documents are refreshed in the background, a
  few at a time on the event loop while writes go on and on the writer
  thread after each burst, so that an anti-entropy round finds the tree
  fresh; a round that finds it stale asks the writer thread to finish the
  job first, and never flushes a backlog of them on the event loop.
- A store opened with ``wal_autocheckpoint=0`` (the daemon's) has its WAL
  copied into the database file every second from a worker thread, so that
  no commit on the event loop pays for a checkpoint and its fsync.
- In the daemon (``manage_gc=True``), Python's full garbage collections run
  when the log is quiet rather than whenever the heap grew by a quarter,
  which under a stream of new documents meant a pause of the event loop
  every few seconds.
- The heartbeats (on the writer thread) keep an idle region's clock moving; a
  store write that fails (the heartbeat, every ``heartbeat_interval``) is
  logged and kept in :meth:`Housekeeping.store_health` for ``/healthz``.
  After each (and once at start) the clock fence is decided again
  (:mod:`.clockkeeper`).

The :class:`Housekeeping` is the replicator's own: it starts the loops
in its ``run`` and tells it when the log grew (:meth:`Housekeeping.log_grew`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from crdtdb.database import Database
from crdtdb.errors import CrdtdbError

from .clockkeeper import ClockKeeper
from .config import RegionConfig
from .logs import Repeats
from .writer import StoreWriter

__all__ = [
    "CHECKPOINT_INTERVAL",
    "DIGEST_CHUNK",
    "DIGEST_CHUNK_BUSY",
    "DIGEST_PAUSE",
    "DIGEST_QUIET",
    "GC_LONGEST",
    "GC_QUIET",
    "STORE_STALL",
    "Housekeeping",
]

log = logging.getLogger("crdtdb.sync")
DIGEST_QUIET = 0.1
"""Seconds without log growth after which stale Merkle digests are refreshed."""
DIGEST_CHUNK = 100
"""Digests refreshed per lock hold once the log is quiet (about 6 ms for documents not
in the cache)."""
DIGEST_CHUNK_BUSY = 16
"""Digests refreshed at a time, on the event loop, while the log keeps growing (about
1 ms for new documents; several for changed ones no longer loaded)."""
DIGEST_PAUSE = 0.01
"""Seconds at least between two such chunks: up to 1,600 digests a second, a tenth of a
core."""
CHECKPOINT_INTERVAL = 1.0
"""Seconds between WAL checkpoints, when the store leaves them to us."""
GC_QUIET = 1.0
"""Seconds without log growth after which a daemon runs a full garbage collection."""
GC_LONGEST = 60.0
"""Longest time between two full garbage collections of a daemon, however busy."""
STORE_STALL = 5.0
"""Seconds (at least; else five heartbeats) without a successful store write after which
the store counts as not writable."""


class Housekeeping:
    """The background loops that keep one region's store in shape while it replicates."""

    def __init__(
        self,
        db: Database,
        config: RegionConfig,
        writer: StoreWriter[Any],
        clock: ClockKeeper | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        """Decides the clock fence after each heartbeat (None: no fence)."""
        self.config = config
        self.region = db.region
        self.writer = writer
        self.store_ok_at = time.monotonic()
        """When (monotonic) a store write last succeeded."""
        self.store_problem: str | None = None
        """Why the last store write failed (None: it did not, or the store recovered)."""
        self._sync_failed = False
        """Whether a sync write (not only a heartbeat) failed in the current episode."""
        self._other_failures = Repeats()
        self.full_collections = 0
        self.checkpoints = 0
        self.last_growth = 0.0
        """When (the running loop's time) the log last grew."""
        self.digests_stale = asyncio.Event()

    def log_grew(self, now: float) -> None:
        """The log grew at ``now`` (the running loop's time): digests may be stale."""
        self.last_growth = now
        self.digests_stale.set()

    async def refresh_digests_loop(self) -> None:
        """Keep the Merkle tree fresh in the background, so rounds do not flush a backlog.

        Digests of changed documents are computed lazily (about 60 µs a
        document): a round that finds them stale waits for the writer thread
        to flush them all, which after a burst delays the round. Here they are
        flushed in the background: at full speed (``DIGEST_CHUNK`` documents
        per lock hold) once the log has been quiet for a moment; while it keeps growing,
        ``DIGEST_CHUNK_BUSY`` at a time at most every ``DIGEST_PAUSE``, and
        only once that many are stale or the oldest waited half an
        anti-entropy interval. So no backlog builds up for a round to flush,
        and a document rewritten a thousand times a second is hashed about
        twice a second, not a hundred times.

        The busy chunks run on the event loop itself, between its other work
        (small and paced: the one digest work the loop does; a session never
        flushes). In a worker thread, a chunk held the store lock for as long
        as the thread waited for the interpreter, which the busy loop kept:
        about 1 ms of work took 4-5 ms, and every record the loop wanted to
        send or apply meanwhile waited for it (lag p99 at 1,000 writes/s, six
        runs each: median 22 ms in a thread, 14 ms on the loop; measured when
        the loop still applied the records itself). Full chunks run on the
        writer thread, between its batches. New documents are hashed by
        whoever creates them, so a busy chunk is mostly XORing paths into the
        tree (see :mod:`crdtdb.digests`).
        """
        loop = asyncio.get_running_loop()
        quiet = min(DIGEST_QUIET, self.config.anti_entropy_interval / 4)
        longest = self.config.anti_entropy_interval / 2
        last = -float("inf")
        while True:
            await self.digests_stale.wait()
            self.digests_stale.clear()
            since = loop.time()  # when the oldest digest still stale (at most) went stale
            try:
                while True:
                    now = loop.time()
                    busy = now - self.last_growth < quiet
                    if busy and (
                        now < last + DIGEST_PAUSE
                        or (
                            now < since + longest
                            and self.db.stale_digests(DIGEST_CHUNK_BUSY) < DIGEST_CHUNK_BUSY
                        )
                    ):  # look again in a moment, or as soon as the log is quiet
                        await asyncio.sleep(min(DIGEST_PAUSE, self.last_growth + quiet - now))
                        continue
                    last = loop.time()
                    if busy:  # here, between the loop's other work: see above
                        refreshed = self.db.refresh_digests(DIGEST_CHUNK_BUSY)
                    else:
                        refreshed = await self.writer.call(self.db.refresh_digests, DIGEST_CHUNK)
                    if not refreshed:
                        break
                    since = loop.time()
            except CrdtdbError as exc:
                log.warning("%s: cannot refresh Merkle digests: %s", self.region, exc)

    async def checkpoint_loop(self) -> None:
        """Copy the WAL into the database file from a worker thread, every second.

        SQLite otherwise checkpoints inside whichever commit takes the WAL past
        ``wal_autocheckpoint`` pages: for the daemon that was a commit on the
        event loop, every hundred or so records, with an fsync of the database
        file that sometimes took a hundred milliseconds or more, while every
        record in flight waited (lag p99 at 1,000 writes/s: about 35 ms with
        them, 21 ms without). Other processes on the same store keep their
        own automatic checkpoints.
        """
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            try:
                pages, _ = await asyncio.to_thread(self.db.checkpoint)
            except CrdtdbError as exc:
                self.other_write_failed("checkpoint", f"WAL checkpoint failed: {exc}")
                continue
            self.other_write_ok("checkpoint")
            self.checkpoints += pages > 0

    async def collect_garbage_loop(self) -> None:
        """Run Python's full (generation 2) garbage collections when the log is quiet.

        A full collection walks every tracked object: with the thousands of
        documents a daemon caches it took 40-90 ms, and Python starts one each
        time the heap has grown by a quarter, which under a stream of new
        documents was every 2-3 s, each a pause of the event loop that every
        record in flight waited out (lag p99 at 1,000 writes/s: about 90 ms
        with them, 21 ms without). So automatic full collections are off while
        this runs; it collects once the log has been quiet for ``GC_QUIET`` s
        after growing, and at least every ``GC_LONGEST`` s however busy.
        Young generations are still collected automatically (cheap), so most
        garbage goes as before.
        """
        loop = asyncio.get_running_loop()
        thresholds = gc.get_threshold()
        gc.set_threshold(thresholds[0], thresholds[1], 1 << 30)
        last = loop.time()
        try:
            while True:
                await asyncio.sleep(GC_QUIET / 2)
                now = loop.time()
                quiet_after_growth = last < self.last_growth <= now - GC_QUIET
                if quiet_after_growth or now - last >= GC_LONGEST:
                    gc.collect()
                    self.full_collections += 1
                    last = loop.time()
        finally:
            gc.set_threshold(*thresholds)

    async def heartbeat_loop(self) -> None:
        """Keep an idle region's clock moving so that the global frontier advances; and
        so, find out that the store is no longer writable (see :meth:`store_health`)."""
        if self.clock is not None:  # a fence due to a stored HLC ahead: before serving
            await self.clock.update()
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            try:
                await self.writer.call(self.db.heartbeat)
            except Exception as exc:  # whatever it is, the store refused a write
                self.store_failed(str(exc), sync=False)
                continue
            self.store_ok(sync=False)
            if self.clock is not None:
                await self.clock.update()

    def store_failed(self, problem: str, *, sync: bool) -> None:
        """A store write failed (``sync``: one of the sync sessions', else a heartbeat).

        One episode of a store that takes no writes is logged once, however many
        writes it refuses (a session refused per reconnect, a heartbeat a second):
        a WARNING as it starts, an INFO once it is over (:meth:`store_ok`).
        """
        if self.store_problem is None:
            log.warning(
                "%s: cannot write to the store: %s",
                self.region,
                problem,
                extra={"event": "store_unwritable"},
            )
        self.store_problem = f"cannot write to the store: {problem}"
        self._sync_failed = self._sync_failed or sync

    def other_write_failed(self, key: str, problem: str) -> None:
        """A write beside the store's transactions failed (``key``: the WAL checkpoint, the
        status file): a line as it starts or changes and once a minute while it lasts, and
        none during an episode of :meth:`store_failed`, whose line says it all."""
        if self.store_problem is not None or (
            self._other_failures.due(key, problem, time.monotonic()) is None
        ):
            log.debug("%s: %s", self.region, problem)
            return
        log.warning("%s: %s", self.region, problem)

    def other_write_ok(self, key: str) -> None:
        self._other_failures.clear(key)

    def store_ok(self, *, sync: bool) -> None:
        """A store write succeeded. That ends an episode unless sync writes failed in it and
        this is a heartbeat: a tiny heartbeat may fit on a disk that a batch does not."""
        self.store_ok_at = time.monotonic()
        if self.store_problem is None or (self._sync_failed and not sync):
            return
        log.info("%s: the store is writable again", self.region, extra={"event": "store_writable"})
        self.store_problem = None
        self._sync_failed = False

    def store_health(self) -> str | None:
        """None while the store takes writes; else why not (any thread may ask)."""
        if self.store_problem is not None:
            return self.store_problem
        stalled = time.monotonic() - self.store_ok_at
        if stalled > max(STORE_STALL, 5 * self.config.heartbeat_interval):
            return f"no store write succeeded for {stalled:.0f} s"
        return None
