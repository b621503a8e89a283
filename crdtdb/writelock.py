"""The writers of every process on a directory queue on one kernel lock.

SQLite lets one connection write at a time. A second process that finds the
write lock held waits in SQLite's busy handler, which sleeps in growing steps
(up to 100 ms) and polls again: eight processes doing one-write transactions
together committed about 900 times a second, against 3,000-4,700 for one
process alone, because the lock sat free while the waiters slept.

So a write transaction first takes an exclusive ``flock`` on
``DIR/write.lock`` and holds it until its COMMIT or ROLLBACK. A waiter blocks
in the kernel, which wakes it as soon as the holder lets go; SQLite's own
lock is then free, and its busy handler (kept, for writers that do not take
this lock: an older crdtdb, a bare ``sqlite3`` shell) never sleeps.

- The kernel drops the lock when its holder dies, however it dies (SIGKILL
  included), so a crash never leaves it held. The file stays: removing it
  would let a writer lock a new file while another still holds the old one.
- The lock is held only around the SQLite write transaction, never while the
  application's ``with db.transaction()`` block runs.
- A process stopped while it holds the lock (SIGSTOP, a debugger) holds back
  the other processes' writes until it resumes or exits. SQLite alone would
  have failed them with "database is locked" after its 30-second timeout.
- Two :class:`~crdtdb.Database` objects of one process on one directory lock
  each other out like two processes do; one thread taking the lock through a
  second of them while it holds it through the first would wait for itself,
  so that is refused at once (:class:`~crdtdb.errors.TransactionError`).
- Where the file cannot be created (a read-only directory), writes go
  without it: SQLite's lock still keeps them one at a time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO

from .errors import TransactionError

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system: SQLite's lock alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["WRITE_LOCK_FILE", "WriteLock"]

WRITE_LOCK_FILE = "write.lock"
"""The lock file's name inside the region's directory; it stays empty."""

_held: dict[tuple[int, int], int] = {}
"""(device, inode) of each lock file held in this process -> the holding thread's id."""
_held_guard = threading.Lock()


class WriteLock:
    """The exclusive lock one process's writes take around each SQLite write transaction."""

    def __init__(self, directory: Path) -> None:
        self._file: BinaryIO | None = None
        self._key = (0, 0)
        if fcntl is None:
            return
        try:
            # Append mode creates the file if need be and never truncates or writes it.
            # A file object, not a bare descriptor, so that garbage collection closes it.
            file = open(directory / WRITE_LOCK_FILE, "ab")  # noqa: SIM115 - held for the store's life
        except OSError:
            return
        stat = os.fstat(file.fileno())
        self._file = file
        self._key = (stat.st_dev, stat.st_ino)

    def acquire(self) -> None:
        if self._file is None:
            return
        me = threading.get_ident()
        with _held_guard:
            holder = _held.get(self._key)
        if holder == me:
            raise TransactionError(
                "this thread already holds this directory's write lock through another"
                " Database: write through the Database it is using, or from another thread"
            )
        fcntl.flock(self._file, fcntl.LOCK_EX)
        with _held_guard:
            _held[self._key] = me

    def release(self) -> None:
        if self._file is None:
            return
        with _held_guard:
            _held.pop(self._key, None)
        fcntl.flock(self._file, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the descriptor (also in a forked child: the parent's lock stays held).

        A lock belongs to the open file description, which a forked child
        shares; closing the child's descriptor leaves the parent's lock as it is.
        """
        if self._file is not None:
            self._file.close()
            self._file = None
