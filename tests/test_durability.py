"""Durability: what a writer process was told is committed survives SIGKILL.

A child process (``procs/writer.py``) writes without pause: puts, updates,
deletes, small and large multi-document transactions. Before each operation it
prints its intent, after the call returns it prints an acknowledgement with the
HLC. The test kills it with SIGKILL in mid-stream, reopens the store and checks:

- every acknowledged write is there with exactly its value (deletes stay deleted);
- the one operation that may have been in flight is there entirely or not at all;
- the log holds one commit per operation: the records of one commit share its
  HLC, the region's sequence numbers are exactly 1..N, HLCs never decrease in
  sequence order and acknowledged HLCs strictly increase;
- ``info()`` agrees with the log, and new writes work and get later HLCs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import crdtdb
from crdtdb import Hlc

from .harness.process import running

pytestmark = pytest.mark.integration

TIMEOUT = 60.0  # seconds for any single line from the writer; generous for slow CI

Effect = list[Any]  # [kind, doc_id, value] as the writer prints it


@dataclass
class Op:
    i: int
    effects: list[Effect]
    hlc: int | None = None  # None: in flight when the writer was killed


@dataclass
class Run:
    """What one writer process reported before it died."""

    acked: list[Op] = field(default_factory=list)
    in_flight: Op | None = None


def write_until_killed(
    store: Path,
    *,
    start: int,
    kill_after: int,
    durability: str = "normal",
    snapshot_min_bytes: int | None = None,
) -> Run:
    """Run a writer; SIGKILL it once it acknowledged ``kill_after`` operations."""
    run = Run()
    args = [str(store), "--start", str(start), "--durability", durability]
    if snapshot_min_bytes is not None:
        args += ["--snapshot-min-bytes", str(snapshot_min_bytes)]
    intents: dict[int, Op] = {}

    def take(line: str) -> None:
        message = json.loads(line)
        if message["ev"] == "intent":
            intents[message["i"]] = Op(message["i"], message["effects"])
        elif message["ev"] == "ack":
            op = intents.pop(message["i"])
            op.hlc = message["hlc"]
            run.acked.append(op)

    with running("writer.py", *args) as child:
        assert json.loads(child.line(TIMEOUT)) == {"ev": "ready"}
        for _ in range(2 * kill_after):  # two lines per operation
            if len(run.acked) >= kill_after:
                break
            take(child.line(TIMEOUT))
        rest = child.kill()  # lines it wrote before dying are acknowledgements too
        for line in rest:
            take(line)
    assert len(run.acked) >= kill_after
    assert len(intents) <= 1, "the writer runs one operation at a time"
    run.in_flight = next(iter(intents.values()), None)
    return run


def apply_effects(model: dict[str, Any], effects: list[Effect]) -> None:
    for kind, doc_id, value in effects:
        if kind == "put":
            model[doc_id] = value
        elif kind == "update":
            model[doc_id] = {**(model.get(doc_id) or {}), **value}
        else:
            model[doc_id] = None


def is_visible(db: crdtdb.Database, effect: Effect) -> bool:
    """Whether one effect of an unacknowledged operation reached the disk.

    Every operation of the writer creates new documents or sets new keys, so
    "before" and "after" are always distinguishable.
    """
    kind, doc_id, value = effect
    current = db.get(doc_id)
    if kind == "put":
        return bool(current == value)
    if kind == "update":
        return current is not None and all(current.get(k) == v for k, v in value.items())
    return current is None


def expected_state(db: crdtdb.Database, runs: list[Run]) -> tuple[dict[str, Any], list[Op]]:
    """The documents every run's acknowledgements promise, and the list of commits made."""
    model: dict[str, Any] = {}
    commits: list[Op] = []
    for run in runs:
        for op in run.acked:
            apply_effects(model, op.effects)
            commits.append(op)
        if run.in_flight is not None:
            seen = [is_visible(db, effect) for effect in run.in_flight.effects]
            assert all(seen) or not any(seen), (
                f"operation {run.in_flight.i} is only partly on disk: {seen}"
            )
            if all(seen):
                apply_effects(model, run.in_flight.effects)
                commits.append(run.in_flight)
    return model, commits


def check_store(store: Path, runs: list[Run]) -> None:
    with crdtdb.open(store) as db:
        model, commits = expected_state(db, runs)

        # Every acknowledged write, with its value; deleted documents stay deleted.
        wrong = {
            doc_id: (db.get(doc_id), want)
            for doc_id, want in model.items()
            if db.get(doc_id) != want
        }
        assert not wrong, f"{len(wrong)} documents differ, e.g. {list(wrong.items())[:3]}"
        live = {doc_id for doc_id, value in model.items() if value is not None}
        assert set(db.list("w")) == {d for d in live if d.startswith("w/")}

        # The log: contiguous sequence numbers, one HLC per commit, HLCs in seq order.
        records = sorted(db.changes(), key=lambda r: r.seq)
        assert {r.origin for r in records} <= {"eu"}
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        hlcs = [r.hlc for r in records]
        assert hlcs == sorted(hlcs), "HLC decreases somewhere in sequence order"
        by_hlc: dict[int, set[str]] = defaultdict(set)
        for record in records:
            by_hlc[record.hlc].add(record.doc_id)
        assert len(by_hlc) == len(commits), "log commits differ from acknowledged operations"
        acked = [op for op in commits if op.hlc is not None]
        acked_hlcs = [op.hlc for op in acked if op.hlc is not None]  # all of them, as ints
        assert acked_hlcs == sorted(set(acked_hlcs)), (
            "acknowledged HLCs are not strictly increasing"
        )
        for op in acked:
            assert op.hlc is not None
            assert by_hlc[op.hlc] == {e[1] for e in op.effects}, f"commit of operation {op.i}"

        # info() tells the same story.
        info = db.info()
        top_seq, top_hlc = len(records), max(hlcs, default=0)
        if records:
            assert info["origins"]["eu"]["max_seq"] == top_seq
            assert info["origins"]["eu"]["contiguous_seq"] == top_seq
        assert info["log_records"] == top_seq
        assert info["live_documents"] == len(live)
        assert Hlc(info["last_hlc"]) >= top_hlc
        assert db.hlc >= top_hlc

        # New writes after the crash: later HLC, next sequence number, readable.
        after = db.put("after/crash", {"ok": True})
        assert after > top_hlc
        again = db.update("hot/0", {"after": 1})
        assert again > after
        new = list(db.changes(since=top_hlc))
        assert [(r.doc_id, r.seq) for r in new] == [
            ("after/crash", top_seq + 1),
            ("hot/0", top_seq + 2),
        ]
        assert db.get("after/crash") == {"ok": True}
        assert (db.get("hot/0") or {}).get("after") == 1


@pytest.mark.parametrize(
    ("durability", "kill_after"),
    [
        ("normal", 0),  # right after opening: maybe mid-way through the very first commit
        ("normal", 37),
        ("normal", 300),
        ("normal", 1000),
        ("full", 150),
    ],
)
def test_acknowledged_writes_survive_sigkill(
    tmp_path: Path, durability: str, kill_after: int
) -> None:
    store = tmp_path / "eu"
    run = write_until_killed(store, start=0, kill_after=kill_after, durability=durability)
    check_store(store, [run])


def test_repeated_crashes_keep_log_contiguous_and_clock_monotonic(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    runs = []
    for round_, kill_after in enumerate((120, 45, 200)):
        # Tiny snapshot threshold: the hot documents' load snapshots are rewritten often,
        # so some kills land in (or right after) a snapshot rewrite.
        run = write_until_killed(
            store, start=round_ * 100_000, kill_after=kill_after, snapshot_min_bytes=128
        )
        runs.append(run)
    check_store(store, runs)
