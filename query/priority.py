"""Refresh work at a lower scheduling priority than the store's writers.

A refresh is background work: on a machine whose cores are all busy, an
application's commits should not wait for a CPU behind it. On Linux a
thread's nice value is its own, and the threads it starts inherit it, so
:func:`yielding` runs a refresh in a thread of its own, and the refresh
calls :func:`background` once it has let go of the store's snapshot: the
rest (DuckDB writing Parquet, merging segments) runs at nice
``REFRESH_NICE``, with DuckDB's worker threads started after that point
(see :mod:`.materialize`) -- if the store was written to while the refresh
read it (:func:`write_stamp`: its write-ahead log changed): a refresh yields
to writers at work, and runs at full speed when there are none (an
analyst's ``refresh()`` of a quiet store is not slowed by other work on the
machine). The snapshot's part stays at the caller's
priority on purpose: a read transaction held open keeps SQLite from
recycling its WAL, and every commit meanwhile retries a checkpoint, so a
refresh preempted while it holds one would cost the writers more than it
spares them. The calling thread's priority is untouched (an unprivileged
process could not raise it back). Where threads have no nice value of their
own (other systems), the work runs at the caller's priority. An idle machine
gives a niced thread every cycle it wants: only contention slows it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from crdtdb.storage import STORE_FILE

__all__ = ["REFRESH_NICE", "background", "lower_priority", "write_stamp", "yielding"]

REFRESH_NICE = 10
"""The nice value refresh work runs at (0 is the default, 19 the lowest priority). At 10,
Linux's scheduler gives a thread about a tenth of the CPU time of a nice-0 one that
contends for the same core."""

T = TypeVar("T")

_local = threading.local()


def lower_priority(nice: int = REFRESH_NICE) -> bool:
    """Lower the calling thread's priority to ``nice`` (never raise it); whether it could."""
    if not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        return False
    return True


def yielding(work: Callable[..., T], *args: object) -> T:
    """``work(*args)`` in a thread of its own at priority ``REFRESH_NICE``; its result or
    its exception, as if called here."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        _local.yielding = True
        try:
            outcome.append(work(*args))
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name="crdtdb-refresh")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def background() -> bool:
    """From here on, the calling thread runs at ``REFRESH_NICE``, if it is a thread of
    :func:`yielding` (never the caller's own: its priority could not come back)."""
    return bool(getattr(_local, "yielding", False)) and lower_priority()


def write_stamp(store: Path) -> tuple[int, int] | None:
    """What changes when a transaction commits to the store in ``store``: its write-ahead
    log's size and modification time (SQLite appends each commit to it), None without one."""
    try:
        found = os.stat(store / f"{STORE_FILE}-wal")
    except OSError:
        return None
    return found.st_size, found.st_mtime_ns
