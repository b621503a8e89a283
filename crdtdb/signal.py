"""The change signal: tells listeners, in this process, of every record the store sees."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .records import UpdateRecord

__all__ = ["ChangeSignal", "Listener"]

log = logging.getLogger("crdtdb")

Listener = Callable[[UpdateRecord], None]


class ChangeSignal:
    """Tells listeners, in this process, of every record the store commits or sees.

    Listeners are called after the write transaction that made the records
    committed (records seen inside a transaction are told once it has ended,
    so that listeners can read); async followers are woken on their loops.
    """

    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        self._deferred: list[UpdateRecord] = []
        self._wakeups: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def emit(self, records: list[UpdateRecord], *, defer: bool = False) -> None:
        if defer:
            self._deferred.extend(records)
            return
        for record in records:
            for callback in list(self.listeners):
                try:
                    callback(record)
                except Exception:
                    log.exception(
                        "subscriber %r failed on %s; it stays subscribed", callback, record.doc_id
                    )
        if records:
            self.wake()

    def flush(self) -> None:
        """Tell what was deferred while a transaction was open."""
        deferred, self._deferred = self._deferred, []
        self.emit(deferred)

    def follow(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> Callable[[], None]:
        """Set ``event`` on ``loop`` at each emit (and at close); returns the undo."""
        entry = (loop, event)
        self._wakeups.append(entry)
        return lambda: self._wakeups.remove(entry)

    def wake(self) -> None:
        for loop, event in list(self._wakeups):
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)
