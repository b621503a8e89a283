"""Following a region's log as it grows, whoever commits: cheap while idle, prompt when not.

The one follower of the log: the sync daemon's replicator and
:meth:`crdtdb.Database.watch` are both built on :class:`LogWatcher`.

This process's own commits wake it directly, through the store's change
signal (:class:`crdtdb.engine.ChangeSignal`). Applications commit to the
region's SQLite file from their own processes too, and of those a follower
learns only by looking. Asking SQLite (the log's
``max(id)``) every 5 ms cost an idle daemon about 4% of a core, most of it in
the wake-ups themselves rather than the query. So :class:`LogWatcher`:

- sleeps until the WAL file is written where the kernel can say so (inotify
  on Linux, through the ``inotify_simple`` package, on the data directory),
  then confirms with SQL;
- elsewhere stats the WAL file every ``poll_interval`` (inode, size, mtime:
  about 2 µs, no lock, no SQL) and confirms with SQL only when that changed;
- after a look that found new records, waits ``poll_interval`` before the
  next, so the commits of a busy writer go out in batches rather than a
  message each (a look that found nothing, because the commit was still
  being written, is followed up within ``FOLLOW_UP``);
- after a look prompted by a write, or one that found new records, looks
  again ``poll_interval`` later, then 4 and 16 times that (``FOLLOW_UPS``):
  a commit becomes visible an instant *after* its last write to the WAL, so
  the look its last write prompted can miss it;
- and reads the log position at least every ``CONFIRM_INTERVAL`` whatever the
  probes say, for what they cannot see (a WAL restarted after a checkpoint
  can come back to the same size within one mtime tick; an inotify queue can
  overflow; a file system may not report writes).

So a commit is noticed at once after an idle spell (inotify), within
``poll_interval`` while commits keep coming, and in the worst case (nothing
seen by the probes) ``CONFIRM_INTERVAL`` after it became visible. An idle
daemon wakes about ``1 / CONFIRM_INTERVAL`` times a second with inotify, and
``1 / poll_interval`` times (for a stat each) without.

The schedule is pure (:class:`WatchSchedule`, times passed in); only
:class:`LogWatcher` reads the clock. ``inotify_simple`` is imported only when
a probe is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .engine import ChangeSignal
from .storage import wal_path

__all__ = ["CONFIRM_INTERVAL", "LogWatcher", "WatchSchedule", "open_probe"]

log = logging.getLogger("crdtdb.follow")

CONFIRM_INTERVAL = 0.1
"""Seconds between looks at the log when no probe saw a write (the worst-case delay)."""
FOLLOW_UP = 0.001
"""Seconds between a look that found nothing and the next one a write prompts."""
FOLLOW_UPS = 3
"""Looks after a write (``poll_interval`` later, then 4 and 16 times that) before relying
on the probe and the confirming look again."""


@dataclass(slots=True)
class WatchSchedule:
    """When to look at the log next, given when we last looked and what we saw."""

    poll_interval: float
    """Shortest time between a look that found new records and the next one."""
    confirm_interval: float = CONFIRM_INTERVAL
    """Longest time between two looks."""
    last_look: float = 0.0
    grew: bool = False
    """Whether the last look found new records."""
    retry: float | None = None
    """Delay of the next look while following up a write (None: not following up)."""
    _retries_left: int = 0

    def earliest(self) -> float:
        """No look before this, however many writes are reported.

        After a look that found new records, ``poll_interval``: commits that keep
        coming go out in batches. Otherwise at most ``FOLLOW_UP`` (a commit
        being written when we looked shows within a millisecond).
        """
        gap = self.poll_interval if self.grew else min(FOLLOW_UP, self.poll_interval)
        return self.last_look + gap

    def deadline(self) -> float:
        """Look by this time even if no write is reported."""
        return self.last_look + (self.retry if self.retry is not None else self.confirm_interval)

    def looked(self, now: float, *, wrote: bool, grew: bool) -> None:
        """Record a look at ``now``: ``wrote`` if a probe saw a write, ``grew`` if the log had."""
        self.last_look, self.grew = now, grew
        if wrote or grew:
            self.retry = min(self.poll_interval, self.confirm_interval)
            self._retries_left = FOLLOW_UPS
        elif self.retry is not None:
            self._retries_left -= 1
            longer = self.retry * 4
            self.retry = longer if self._retries_left and longer < self.confirm_interval else None


class WriteProbe(Protocol):
    """Says whether the WAL file may have been written since the last call."""

    async def wait(self, timeout: float) -> bool:
        """Return True as soon as a write is seen, False after ``timeout`` seconds without."""
        ...

    def close(self) -> None: ...


class StatProbe:
    """Compares (inode, size, mtime) of the WAL file every ``poll_interval`` seconds."""

    def __init__(self, path: Path, poll_interval: float) -> None:
        self._path = path
        self._poll_interval = poll_interval
        self._last = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    async def wait(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            current = self._stat()
            if current != self._last:
                self._last = current
                return True
            remaining = end - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(self._poll_interval, remaining))

    def close(self) -> None:
        pass


class InotifyProbe:
    """Linux inotify on the data directory: woken by the kernel when the WAL file is written.

    The directory, not the file, is watched, so a WAL deleted and created again
    (when every connection closed) is still followed.
    """

    def __init__(self, directory: Path) -> None:
        from inotify_simple import INotify, flags  # Linux only: imported here

        self._overflow = flags.Q_OVERFLOW
        self._inotify = INotify(nonblocking=True)
        try:
            self._inotify.add_watch(directory, flags.MODIFY | flags.CREATE | flags.MOVED_TO)
        except OSError:
            self._inotify.close()
            raise
        self._name = wal_path(directory).name
        self._written = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._inotify.fileno(), self._readable)

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            events = self._inotify.read(timeout=0)
            if any(e.mask & self._overflow or e.name == self._name for e in events):
                self._written.set()

    async def wait(self, timeout: float) -> bool:
        if not self._written.is_set() and timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._written.wait()
        written = self._written.is_set()
        self._written.clear()  # before the caller looks: a write after the look sets it again
        return written

    def close(self) -> None:
        if not self._inotify.closed:
            self._loop.remove_reader(self._inotify.fileno())
            self._inotify.close()


class SignalledProbe:
    """Another probe, woken at once by this process's own commits (the change signal)."""

    def __init__(self, inner: WriteProbe, signal: ChangeSignal) -> None:
        self.inner = inner
        """The probe for other processes' commits."""
        self._committed = asyncio.Event()
        self._unfollow = signal.follow(asyncio.get_running_loop(), self._committed)

    async def wait(self, timeout: float) -> bool:
        written = False
        if not self._committed.is_set():
            probe = asyncio.ensure_future(self.inner.wait(timeout))
            committed = asyncio.ensure_future(self._committed.wait())
            try:
                await asyncio.wait((probe, committed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                probe.cancel()
                committed.cancel()
            written = probe.done() and not probe.cancelled() and probe.result()
        committed_here = self._committed.is_set()
        self._committed.clear()  # before the caller looks, as with the kernel's probe
        return written or committed_here

    def close(self) -> None:
        self._unfollow()
        self.inner.close()


def open_probe(
    directory: Path, poll_interval: float, signal: ChangeSignal | None = None
) -> WriteProbe:
    """inotify where available, else a stat of the WAL file every ``poll_interval``; woken
    at once by ``signal`` too, if given (call with the event loop running)."""
    probe = _kernel_probe(directory, poll_interval)
    return probe if signal is None else SignalledProbe(probe, signal)


def _kernel_probe(directory: Path, poll_interval: float) -> WriteProbe:
    if sys.platform.startswith("linux"):
        try:
            return InotifyProbe(directory)
        except (ImportError, OSError) as exc:  # no inotify_simple, or out of watches
            log.warning(
                "cannot watch %s with inotify (%s): checking the WAL file every %g s instead",
                directory,
                exc,
                poll_interval,
            )
    return StatProbe(wal_path(directory), poll_interval)


class LogWatcher:
    """Yields the new log position each time the log grows (see the module docstring)."""

    def __init__(
        self,
        position: Callable[[], int],
        probe: WriteProbe,
        poll_interval: float,
        confirm_interval: float = CONFIRM_INTERVAL,
    ) -> None:
        self._position = position
        self._probe = probe
        self.schedule = WatchSchedule(poll_interval, confirm_interval)
        self.looks = 0
        """How many times the log position was read (for tests and benchmarks)."""

    async def changes(self, since: int | None = None) -> AsyncGenerator[int, None]:
        """Each new log position; ``since``: the position already seen (default: now)."""
        loop = asyncio.get_running_loop()
        position = self._position() if since is None else since
        self.schedule.looked(loop.time(), wrote=False, grew=False)
        while True:
            wrote = await self._probe.wait(max(0.0, self.schedule.deadline() - loop.time()))
            if wrote and loop.time() < self.schedule.earliest():
                await asyncio.sleep(self.schedule.earliest() - loop.time())
            current = self._position()
            self.looks += 1
            grew = current != position
            self.schedule.looked(loop.time(), wrote=wrote, grew=grew)
            if grew:
                position = current
                yield current

    def close(self) -> None:
        self._probe.close()
