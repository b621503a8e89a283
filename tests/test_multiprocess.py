"""Several processes on one region directory: concurrent writers, readers, subscribers.

The writers are real processes (``procs/mpwriter.py``) started together on
the same SQLite file; the parent writes too. Every writer edits the same
shared documents (each its own keys), so every write must survive the merge.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import crdtdb
from crdtdb import UpdateRecord

from .harness.process import Child, Group, running
from .procs.mpwriter import expected, marker, missing, operation, perform

pytestmark = pytest.mark.integration

TIMEOUT = 120.0  # seconds for a writer to get ready or to finish; generous for slow CI
COUNT = 400  # operations per writer


def start(children: list[Child]) -> None:
    for child in children:
        assert json.loads(child.line(TIMEOUT)) == {"ev": "ready"}
    for child in children:
        child.send("go")


def finish(child: Child) -> dict[str, Any]:
    """The child's final report; it must exit cleanly without any error on stderr."""
    report: dict[str, Any] = json.loads(child.line(TIMEOUT))
    assert child.finish(TIMEOUT) == []
    assert child.proc.returncode == 0, child.describe()
    assert "locked" not in child.stderr and "Traceback" not in child.stderr, child.describe()
    return report


def records_of(name: str, count: int) -> Counter[str]:
    """How many log records writer ``name``'s operations (and marker) make, per document."""
    effects = [e for i in range(count) for e in operation(name, i)] + [marker(name, count)]
    return Counter(doc_id for _, doc_id, _ in effects)


def check_log(records: list[UpdateRecord], commits: list[int]) -> None:
    """Contiguous seq 1..N; one HLC per commit, shared by its records, increasing with seq."""
    records = sorted(records, key=lambda r: r.seq)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    hlcs = [r.hlc for r in records]
    assert hlcs == sorted(hlcs), "HLC decreases in sequence order"
    assert len(set(commits)) == len(commits), "two commits got the same HLC"
    assert set(hlcs) == set(commits), "log HLCs differ from the commits' HLCs"


def test_concurrent_writers_on_one_directory(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    # Both children create the store at the same moment (the parent opens it after).
    with (
        running("mpwriter.py", str(store), "p1", str(COUNT), "--other", "p2") as p1,
        running("mpwriter.py", str(store), "p2", str(COUNT), "--other", "p1") as p2,
    ):
        for child in (p1, p2):
            assert json.loads(child.line(TIMEOUT)) == {"ev": "ready"}
        with crdtdb.open(store, region="eu") as db:
            for child in (p1, p2):
                child.send("go")
            mine = [perform(db, operation("p0", i)) for i in range(COUNT)]
            mine.append(perform(db, [marker("p0", COUNT)]))
            reports = [finish(p1), finish(p2)]
            # The parent's next reads see both children's writes.
            assert missing(db, expected("p1", COUNT)) == []
            assert missing(db, expected("p2", COUNT)) == []

    for report in reports:
        # Each child saw every write of the other once it saw the other's marker.
        assert report["missing"] == [], f"{report['name']} did not see: {report['missing'][:5]}"
        assert report["shared_x_keys"] >= COUNT  # its own COUNT/2 keys and the other's
        assert report["hlcs"] == sorted(set(report["hlcs"])), "one process's HLCs went back"
    assert mine == sorted(set(mine))

    with crdtdb.open(store) as db:  # a fresh open sees everything
        shared: dict[str, Any] = {}
        for name in ("p0", "p1", "p2"):
            model = expected(name, COUNT)
            assert missing(db, model) == [], name
            shared.update(model["shared/x"])
        assert db.get("shared/x") == shared, "shared/x lost keys of some writer"
        assert db.get("shared/y") == {"p0": COUNT - 2, "p1": COUNT - 2, "p2": COUNT - 2}
        records = list(db.changes())
        assert {r.origin for r in records} == {"eu"}
        want = records_of("p0", COUNT) + records_of("p1", COUNT) + records_of("p2", COUNT)
        assert Counter(r.doc_id for r in records) == want
        writers = [
            r.doc_id.partition("/")[0]
            for r in sorted(records, key=lambda r: r.seq)
            if r.doc_id.partition("/")[0] in ("p0", "p1", "p2")
        ]
        switches = sum(a != b for a, b in itertools.pairwise(writers))
        assert switches > 2, "the writers ran one after another: nothing concurrent was tested"
        check_log(records, mine + reports[0]["hlcs"] + reports[1]["hlcs"])
        info = db.info()
        assert info["origins"]["eu"]["max_seq"] == info["origins"]["eu"]["contiguous_seq"]
        assert info["origins"]["eu"]["max_seq"] == len(records) == info["log_records"]


def test_subscriber_is_told_of_other_process_commits_on_next_read(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu") as db:
        db.put("parent/start", {"n": 0})
        assert db.get("shared/x") is None  # cached: must still catch up later
        db.update("shared/x", {"parent": 1})
        told: list[UpdateRecord] = []
        with db.subscribe(told.append), running("mpwriter.py", str(store), "p1", "60") as child:
            start([child])
            report = finish(child)
            db.get("parent/start")  # the next read: catches up, tells the subscriber
            assert Counter(r.doc_id for r in told) == records_of("p1", 60)
            assert [r.seq for r in told] == list(range(3, 3 + len(told))), "order or gaps"
            assert sorted({r.hlc for r in told}) == report["hlcs"]
            db.get("parent/start")
            assert len(told) == sum(records_of("p1", 60).values()), "told twice"
            assert db.get("shared/x") == {"parent": 1, **expected("p1", 60)["shared/x"]}


def test_watch_follows_commits_of_another_process(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    count = 80
    want = records_of("p1", count)

    async def follow(db: crdtdb.Database, child: Child) -> list[UpdateRecord]:
        seen: list[UpdateRecord] = []
        async with contextlib.aclosing(db.watch(from_start=True)) as records:
            async for record in records:
                if record.doc_id == "parent/start":  # the watch is running: let p1 write
                    child.send("go")
                    continue
                seen.append(record)
                if len(seen) == sum(want.values()):
                    break
        return seen

    with (
        crdtdb.open(store, region="eu") as db,
        running("mpwriter.py", str(store), "p1", str(count)) as child,
    ):
        assert json.loads(child.line(TIMEOUT)) == {"ev": "ready"}
        db.put("parent/start", {"n": 0})
        seen = asyncio.run(asyncio.wait_for(follow(db, child), TIMEOUT))
        report = finish(child)
    assert Counter(r.doc_id for r in seen) == want
    assert [r.seq for r in seen] == list(range(2, 2 + len(seen)))
    assert sorted({r.hlc for r in seen}) == report["hlcs"]


_OPEN_AT_ONCE = """
import sys, time
import crdtdb
start = float(sys.argv[2])
while time.time() < start:
    pass
with crdtdb.open(sys.argv[1], region="eu") as db:
    db.put("docs/" + sys.argv[3], {"by": sys.argv[3]})
"""


def open_at_once(directory: Path, count: int) -> list[str]:
    """``count`` processes open ``directory`` at the same instant and each writes
    ``docs/p{i}``; the last error line of each one that failed."""
    start = time.time() + 0.5
    errors = []
    with Group() as group:
        children = [
            group.start(
                [sys.executable, "-c", _OPEN_AT_ONCE, str(directory), str(start), f"p{i}"],
                read_lines=False,
            )
            for i in range(count)
        ]
        for child in children:
            if child.wait(TIMEOUT):
                errors.append(child.stderr.strip().splitlines()[-1])
    return errors


def test_processes_creating_a_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Racing first opens once failed with "database is locked" or "another application"."""
    for round_ in range(5):
        directory = tmp_path / f"r{round_}"
        assert open_at_once(directory, 6) == []
        with crdtdb.open(directory) as db:
            assert sorted(db.list("docs")) == sorted(f"docs/p{i}" for i in range(6))
