"""Change feed facet: the log read as a stream (changes, records of one origin) and
followed as it grows (subscribe, watch), whoever writes it.

Listeners hang on the engine's one change signal: this process's own commits
and applied records reach them directly, other processes' commits when this
process next catches up. ``watch`` is the log follower of :mod:`crdtdb.follow`,
woken by the same signal and, for other processes' commits, by the kernel.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator

from .engine import Engine, Listener, check_count, check_limit
from .errors import UsageError, shown
from .hlc import Hlc
from .ids import validate_region
from .records import MAX_SQLITE_INT, UpdateRecord

__all__ = ["ChangeFeed", "Subscription"]

_LOG_COLUMNS = "doc_id, hlc, origin, seq, payload, kind"


class Subscription:
    """Returned by :meth:`Database.subscribe`; ``close()`` stops the callbacks."""

    def __init__(self, listeners: list[Listener], callback: Listener) -> None:
        self._listeners = listeners
        self._callback = callback

    def close(self) -> None:
        if self._callback in self._listeners:
            self._listeners.remove(self._callback)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _record(row: tuple[str, int, str, int, bytes, int]) -> UpdateRecord:
    return UpdateRecord(row[0], Hlc(row[1]), row[2], row[3], bytes(row[4]), row[5])


class ChangeFeed:
    """The log of one store, read and followed."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def changes(
        self, since: Hlc | int | None = None, *, origin: str | None = None, limit: int | None = None
    ) -> Iterator[UpdateRecord]:
        """Records with HLC above ``since``, in HLC order (ties: origin, seq)."""
        engine = self._engine
        only = "" if origin is None else " AND origin = ?"
        extra: tuple[str, ...] = () if origin is None else (validate_region(origin),)
        floor = Hlc(since or 0)
        limit = check_limit(limit)
        with engine.lock:
            engine.check()
            engine.check_history(floor, "changes(since=...)")
        return self._pages(floor, only, extra, limit)

    def _pages(
        self, floor: Hlc, only: str, extra: tuple[str, ...], limit: int | None
    ) -> Iterator[UpdateRecord]:
        engine = self._engine
        remaining = limit
        # Keyset pagination: (hlc, origin, seq) strictly after the cursor; "\uffff" sorts
        # after every region name, so the first page starts just above ``floor``.
        # No stored HLC is above 2**63-1 (a signed SQLite INTEGER): nothing is after a later one.
        cursor: tuple[int, str, int] = (min(int(floor), MAX_SQLITE_INT), "\uffff", 0)
        while remaining is None or remaining > 0:
            page = 1000 if remaining is None else min(1000, remaining)
            with engine.lock:
                engine.check()
                rows = engine.conn.execute(
                    f"SELECT {_LOG_COLUMNS} FROM log"
                    f" WHERE (hlc, origin, seq) > (?, ?, ?){only} ORDER BY hlc, origin, seq"
                    " LIMIT ?",
                    (*cursor, *extra, page),
                ).fetchall()
            if not rows:
                return
            yield from map(_record, rows)
            if remaining is not None:
                remaining -= len(rows)
            cursor = (rows[-1][1], rows[-1][2], rows[-1][3])

    def records_from(self, origin: str, after_seq: int, limit: int = 1000) -> list[UpdateRecord]:
        """Records of ``origin`` held here with seq above ``after_seq``, in seq order."""
        engine = self._engine
        checked = (
            validate_region(origin),
            check_count(after_seq, "after_seq"),
            check_count(limit, "limit"),
        )
        with engine.lock:
            engine.check()
            rows = engine.conn.execute(
                f"SELECT {_LOG_COLUMNS} FROM log WHERE origin = ? AND seq > ? ORDER BY seq LIMIT ?",
                checked,
            ).fetchall()
        return [_record(row) for row in rows]

    def log_position(self) -> int:
        """The id of the newest log record (from any process): cheap to poll for changes."""
        engine = self._engine
        with engine.lock:
            engine.check()
            return engine.max_log_id()

    def subscribe(self, callback: Listener) -> Subscription:
        """Call ``callback(record)`` after each commit this store object sees."""
        if not callable(callback):
            raise UsageError(
                f"subscribe() takes a function called with each UpdateRecord, not {shown(callback)}"
            )
        self._engine.check()
        listeners = self._engine.signal.listeners
        listeners.append(callback)
        return Subscription(listeners, callback)

    async def watch(
        self, *, from_start: bool = False, poll_interval: float = 0.005, after: int | None = None
    ) -> AsyncGenerator[UpdateRecord, None]:
        """Follow the log as it grows, whoever writes it (this process or another).

        Built on the log follower (:mod:`crdtdb.follow`): this process's commits
        wake it at once, other processes' through the kernel (or a stat of the
        WAL every ``poll_interval`` where the kernel cannot say), and while
        commits keep coming it looks at most every ``poll_interval``.
        """
        from . import follow

        engine = self._engine
        with engine.lock:
            engine.check()
            cursor = 0 if from_start else engine.max_log_id() if after is None else after
        probe = follow.open_probe(engine.path, poll_interval, engine.signal)
        watcher = follow.LogWatcher(self._position, probe, poll_interval, follow.CONFIRM_INTERVAL)
        try:
            changes = watcher.changes(since=cursor)  # so nothing after the cursor is missed
            while True:
                while rows := self.log_after(cursor, 1000):
                    for cursor, record in rows:  # noqa: B007 - the cursor moves on
                        yield record
                if engine.closed or await anext(changes) < 0:
                    return
        finally:
            watcher.close()

    def _position(self) -> int:
        """The newest log id, or -1 once the store is closed (the follower then stops)."""
        engine = self._engine
        with engine.lock:
            return -1 if engine.closed else engine.max_log_id()

    def log_after(self, log_id: int, limit: int) -> list[tuple[int, UpdateRecord]]:
        """Up to ``limit`` (log id, record) after ``log_id``, in log order ([] once closed)."""
        engine = self._engine
        with engine.lock:
            if engine.closed:
                return []
            rows = engine.conn.execute(
                f"SELECT id, {_LOG_COLUMNS} FROM log WHERE id > ? ORDER BY id LIMIT ?",
                (log_id, limit),
            ).fetchall()
        return [(row[0], _record(row[1:])) for row in rows]
