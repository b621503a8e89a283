"""One daemon per data directory: ``DATA_DIR/daemon.lock``, held for the daemon's life.

Two daemons on one data directory each dial and accept the same peers and
keep replacing each other's connections. So ``crdtdb serve`` takes an
exclusive ``flock`` on this file before it opens the store, and a second one
is refused with the first one's pid. The kernel drops the lock when the
holder exits however it exits (SIGKILL included), so a crash never leaves a
stale lock behind; the file itself stays (removing it would let a third
daemon lock a new file while the second still holds the old one).

Applications opening the same store are not affected: they never take it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from .errors import StartupError

__all__ = ["LOCK_FILE", "DataDirLock", "DataDirLockedError"]

LOCK_FILE = "daemon.lock"
"""The lock file's name inside the region's data directory; it holds the holder's pid."""


class DataDirLockedError(StartupError):
    """Another daemon already serves this data directory."""

    code = "data_dir_locked"

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid
        """The holder's pid, as it wrote it (None: not known)."""


class DataDirLock:
    """The exclusive lock of one data directory (which must exist), or a refusal."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise DataDirLockedError(
                f"another `crdtdb serve` ({who}) already serves {data_dir}: stop it first,"
                " or give this daemon a data_dir of its own",
                holder,
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another daemon start here (idempotent); exiting does the same."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int) -> int | None:
    """The pid the lock's holder wrote (None if not written yet, or garbled)."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None
