"""Section 5 of the query benchmark: the writer's commit rate alone, and beside a reader
(``con.refresh()`` and a query, in a loop) and a refresher, each a process of its own."""

from __future__ import annotations

import json
import signal
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _harness import Child, Group
from _report import log

WRITER = """
import json, sys, time, crdtdb
path, seconds, n, base = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def schedstat():
    try:
        with open("/proc/self/schedstat") as f:
            return [int(x) / 1e9 for x in f.read().split()[:2]]
    except OSError:
        return [0.0, 0.0]
with crdtdb.open(path) as db:
    db.update("users/0", {"score": -base})
    hlc0 = db.hlc
    i, cpu0, (_, wait0), wall0 = 0, time.process_time(), schedstat(), time.time()
    started = time.perf_counter()
    end = started + seconds
    while time.perf_counter() < end:
        db.update(f"users/{i % n}", {"score": base + i})  # never a value it held: a write
        i += 1
    elapsed = time.perf_counter() - started
    cpu, (_, wait) = time.process_time() - cpu0, schedstat()
    written = sum(1 for _ in db.changes(since=hlc0))
print(json.dumps({"commits": i, "written": written, "seconds": elapsed, "cpu_s": cpu,
                  "runqueue_s": wait - wait0, "start": wall0, "end": wall0 + elapsed}))
"""

READER = """
import sys, time, crdtdb.query
path, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
con = crdtdb.query.connect(path, refresh=False)
print("ready", flush=True)
while time.monotonic() < deadline:
    con.refresh()
    con.execute(sys.argv[3]).fetchall()
    print(time.time(), flush=True)
"""

REFRESHER = """
import sys, time, crdtdb.query
path, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
print("ready", flush=True)
while time.monotonic() < deadline:
    crdtdb.query.refresh(path)
    print(time.time(), flush=True)
"""


@contextmanager
def helpers(path: Path, lifetime: float, query: str) -> Iterator[list[Child]]:
    """The reader and the refresher, started and ready; stopped (killed if need be) on exit."""
    with Group() as group:
        for script, extra in ((READER, [query]), (REFRESHER, [])):
            argv = [sys.executable, "-c", script, str(path), str(lifetime), *extra]
            group.start(argv, stop_signal=signal.SIGTERM)
        for child in group.children:
            if child.line(120) != "ready":
                raise RuntimeError(f"a reader process failed: {child.describe()}")
        yield group.children


def run_writer(path: Path, seconds: float, n: int, base: int) -> dict[str, Any]:
    """One writer run; ``base`` makes its values new (an update to the same value writes
    nothing, and would be timed as a commit)."""
    with Child(
        [sys.executable, "-c", WRITER, str(path), str(seconds), str(n), str(base)]
    ) as writer:
        lines = writer.finish(seconds + 120)
    if writer.proc.returncode != 0:
        raise RuntimeError(f"the writer process failed: {writer.describe()}")
    result: dict[str, Any] = json.loads("\n".join(lines))
    if result["written"] != result["commits"]:
        raise RuntimeError(
            f"the writer wrote {result['written']} records in {result['commits']} commits"
        )
    result["rate"] = result["commits"] / result["seconds"]
    return result


def loops_in(helper: Child, start: float, end: float) -> int:
    """How many loop iterations a stopped helper finished within the writer's window."""
    stamps = []
    for line in helper.finish(30):
        try:
            stamps.append(float(line))
        except ValueError:  # not a time stamp
            continue
    return sum(1 for stamp in stamps if start <= stamp <= end)


def writer_with_readers(
    path: Path, seconds: float, n: int, rounds: int, query: str
) -> dict[str, Any]:
    """``rounds`` writer runs alone and as many beside a reader (running ``query``) and a
    refresher, interleaved; their commit rates and what slowed them."""
    runs: dict[str, list[dict[str, Any]]] = {"alone": [], "with": []}
    for r in range(rounds):
        runs["alone"].append(run_writer(path, seconds, n, base=(2 * r + 1) * 10**8))
        with helpers(path, seconds + 300, query) as (reader, refresher):
            run = run_writer(path, seconds, n, base=(2 * r + 2) * 10**8)
            for helper in (reader, refresher):
                helper.stop()
            run["reader_loops"] = loops_in(reader, run["start"], run["end"])
            run["refresher_loops"] = loops_in(refresher, run["start"], run["end"])
        runs["with"].append(run)
        log(
            f"  writer {r + 1}/{rounds}: alone {runs['alone'][-1]['rate']:,.0f}/s,"
            f" with readers {run['rate']:,.0f}/s ({run['reader_loops']} queries,"
            f" {run['refresher_loops']} refreshes)"
        )
    rates = {
        name: statistics.median([run["rate"] for run in values]) for name, values in runs.items()
    }
    waits = {
        name: statistics.median([run["runqueue_s"] / run["seconds"] for run in values])
        for name, values in runs.items()
    }
    cpu_per_commit = {
        name: statistics.median([run["cpu_s"] / run["commits"] for run in values])
        for name, values in runs.items()
    }
    helper_rates = {
        name: statistics.median([run[f"{name}_loops"] / run["seconds"] for run in runs["with"]])
        for name in ("reader", "refresher")
    }
    return {
        "runqueue_share": waits,
        "helper_rates": helper_rates,
        "cpu_per_commit_s": cpu_per_commit,
        "seconds": seconds,
        "runs": runs,
        "median_rate": rates,
        "ratio": rates["with"] / rates["alone"],
    }
