"""Group commit: the transactions of several threads in one SQLite transaction.

A local commit issues its HLC and sequence numbers inside the *group's* write
transaction, which the first member opens with ``BEGIN IMMEDIATE``, and hands
its rows to the group (:class:`crdtdb.rows.LogRows`) instead of writing them.
When it is done it does not commit at once if other threads wait to join: it
hands the engine's lock on, and they add their commits to the group. The
thread that finds nobody else waiting (or the group full) is the leader: it
writes every member's rows with one statement a table, commits once, tells
the change signal, and wakes the others. Every member gets its own HLC and
sequence numbers (issued in the order they joined) and returns only after
the group's ``COMMIT``: the durability of a lone commit. The anchors are
RocksDB's write groups and Postgres's ``commit_delay``, without the delay: a
thread alone commits at once, as before.

Only transactions that run no application code join a group (``db.put``,
``db.update``): a ``with db.transaction()`` block commits an open group when
it takes the lock (it may wait for a thread whose commit is in the group),
and may lead a group itself. Anything else that takes the lock (a read, a
remote apply, close) commits the open group first, so that nothing reads
what may yet be rolled back. A member whose commit raises has handed over
nothing. If the group's ``COMMIT`` fails, every member fails with the same
:class:`~crdtdb.errors.StoreError` and nothing of any member is stored; their
documents are dropped from memory and reloaded from disk on next use.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .errors import StoreError
from .records import UpdateRecord

if TYPE_CHECKING:
    from .engine import Engine
    from .rows import LogRows

__all__ = ["GROUP_MAX", "CommitGroup", "EngineLock"]

GROUP_MAX = 64
"""Members after which a group commits even if more threads wait: it bounds how long
the first member waits for its return, and the size of one SQLite transaction."""


class CommitGroup:
    """The members of one open group and what its leader tells them."""

    __slots__ = ("_woken", "doc_ids", "done", "error", "members", "records", "rows", "seen_id")

    def __init__(self, seen_id: int, woken: threading.Condition) -> None:
        self.seen_id = seen_id
        """The newest log id before the group: where this process stands if it rolls back."""
        self.members = 0
        self.records: list[UpdateRecord] = []
        self.rows: LogRows | None = None
        """Every member's rows, in the order they joined: the leader writes them."""
        self.doc_ids: set[str] = set()
        """Documents the members changed: dropped from memory if the group fails."""
        self.done = False
        """Committed or failed: set by the leader (under ``woken``)."""
        self.error: StoreError | None = None
        self._woken = woken
        """The engine's one condition for every group (a lone commit makes no new lock)."""

    def add(self, records: list[UpdateRecord], rows: LogRows) -> None:
        """A member's records and rows (its clock and sequence numbers are issued)."""
        self.members += 1
        self.records += records
        self.doc_ids.update(record.doc_id for record in records)
        if self.rows is None:
            self.rows = rows
        else:
            self.rows.extend(rows)

    def finish(self, error: StoreError | None = None) -> None:
        """The leader's word: committed (or failed with ``error``); wakes the members."""
        with self._woken:
            self.error = error
            self.done = True
            self._woken.notify_all()

    def outcome(self) -> None:
        """Wait for the leader's ``COMMIT``; raise the group's error if it failed."""
        if not self.done:
            with self._woken:
                self._woken.wait_for(lambda: self.done)
        error = self.error
        if error is not None:
            # One error per member (a raised exception carries its thread's traceback),
            # all of the same type and message.
            raise type(error)(str(error)) from error


class EngineLock:
    """The engine's lock (reentrant), which knows about the open group.

    ``with engine.lock:`` (any operation but a transaction) commits an open group
    first. :meth:`acquire_to_join` is how a transaction takes it: it is counted
    as waiting to join, so that a committing member leaves the group open for
    it. Releasing the lock for the last time commits an open group unless
    another thread is waiting to join it.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.RLock()
        self._owner: int | None = None
        self._depth = 0
        self._joining: set[int] = set()
        """Threads waiting for the lock to run a transaction (set.add is atomic)."""

    def acquire(self) -> None:
        self._take()
        if self._depth == 1 and self._engine.group is not None:
            try:
                self._engine.commit_group()
            except BaseException:  # interrupted: the group has failed; give the lock back
                self._give_back()
                raise

    def acquire_to_join(self) -> None:
        me = threading.get_ident()
        self._joining.add(me)
        try:
            self._take()
        finally:
            self._joining.discard(me)

    def release(self) -> None:
        assert self._owner == threading.get_ident(), "released by a thread that does not hold it"
        try:
            if self._depth == 1:
                group = self._engine.group
                if group is not None and (not self._joining or group.members >= GROUP_MAX):
                    self._engine.commit_group()
        finally:
            self._give_back()

    def held(self) -> bool:
        """Whether the calling thread holds the lock."""
        return self._owner == threading.get_ident()

    def _give_back(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
        self._lock.release()

    def _take(self) -> None:
        self._lock.acquire()
        self._owner = threading.get_ident()
        self._depth += 1

    def __enter__(self) -> EngineLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
