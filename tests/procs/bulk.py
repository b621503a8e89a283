"""Write N small documents, read every one back, and report memory along the way.

Usage: ``bulk.py DIR N [--cache-size C] [--batch B]``

Writes ``bulk/0 .. bulk/N-1`` (``{"n": i}``) in transactions of ``B``
documents, then reads each back with ``db.get`` in order (so, with a cache
smaller than N, nearly every read loads the document from disk). After every
tenth of each phase it prints a ``checkpoint`` line: peak RSS so far (``VmHWM``,
see :func:`peak_rss`) and the cache's length. After every write batch and
every read it records ``len(db._engine.cache)``, to compare with the capacity. Then
it calls ``db.info()`` (which brings the Merkle root up to date) and prints a
last checkpoint.

Finally it measures what one loaded document costs in this process: a second
handle on the store with a cache of ``PROBE`` documents reads ``PROBE`` of
them, and the growth of the *current* RSS is divided by ``PROBE``. The last
line is ``{"ev": "done", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Any

import crdtdb

PROBE = 10_000  # documents held at once to measure the cost of one loaded document


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (``VmHWM``).

    Not ``ru_maxrss``: on Linux that survives ``exec``, so a child started by a
    big pytest process reports the parent's peak until it outgrows it, which
    would hide growth. ``VmHWM`` belongs to this program's own address space.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status: this test needs Linux")


def ru_maxrss() -> int:
    """``getrusage`` peak RSS in bytes (Linux reports KiB); reported for reference only."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Meter:
    def __init__(self, db: crdtdb.Database, n: int) -> None:
        self.db, self.n = db, n
        self.start = time.perf_counter()
        self.max_cache = 0
        self.step = max(1, n // 10)

    def observe_cache(self) -> None:
        self.max_cache = max(self.max_cache, len(self.db._engine.cache))

    def checkpoint(self, phase: str, done: int) -> None:
        emit(
            {
                "ev": "checkpoint",
                "phase": phase,
                "done": done,
                "peak_rss": peak_rss(),
                "ru_maxrss": ru_maxrss(),
                "cache": len(self.db._engine.cache),
                "elapsed_s": round(time.perf_counter() - self.start, 2),
            }
        )


def write_all(db: crdtdb.Database, n: int, batch: int, meter: Meter) -> None:
    for first in range(0, n, batch):
        last = min(n, first + batch)
        with db.transaction() as tx:
            for i in range(first, last):
                tx.put(f"bulk/{i}", {"n": i})
        meter.observe_cache()
        if last // meter.step != first // meter.step or last == n:
            meter.checkpoint("write", last)


def read_all(db: crdtdb.Database, n: int, meter: Meter) -> list[Any]:
    bad: list[list[Any]] = []
    for i in range(n):
        value = db.get(f"bulk/{i}")
        meter.observe_cache()
        if value != {"n": i} and len(bad) < 20:
            bad.append([i, value])
        if (i + 1) % meter.step == 0 or i + 1 == n:
            meter.checkpoint("read", i + 1)
    return bad


def doc_cost(path: str, n: int) -> float:
    """Bytes of resident memory per document held in a Database's cache."""
    count = min(PROBE, n)
    with crdtdb.open(path, cache_size=count) as probe:
        before = current_rss()
        for i in range(count):
            probe.get(f"bulk/{i}")
        assert len(probe._engine.cache) == count
        return (current_rss() - before) / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("n", type=int)
    parser.add_argument("--cache-size", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    with crdtdb.open(args.dir, region="eu", cache_size=args.cache_size) as db:
        meter = Meter(db, args.n)
        meter.checkpoint("open", 0)
        write_all(db, args.n, args.batch, meter)
        bad = read_all(db, args.n, meter)
        info = db.info()  # counts, clocks and the Merkle root: must not load every document
        meter.checkpoint("info", args.n)
        max_cache = meter.max_cache
        elapsed = time.perf_counter() - meter.start
    emit(
        {
            "ev": "done",
            "bad": bad,
            "max_cache": max_cache,
            "capacity": args.cache_size,
            "live_documents": info["live_documents"],
            "log_records": info["log_records"],
            "doc_bytes": doc_cost(args.dir, args.n),
            "elapsed_s": round(elapsed, 2),
        }
    )


if __name__ == "__main__":
    main()
