"""The commit ceiling: a bare SQLite one-row commit, against crdtdb's commits.

- ``commit sqlite``: ``BEGIN IMMEDIATE; INSERT one row; COMMIT`` on a bare SQLite
  file in WAL mode with ``synchronous=NORMAL`` (what crdtdb's default durability
  sets), one thread: the ceiling of any durable one-write commit on this disk.
- ``write-one-8t crdtdb``: 8 threads of one process, each doing one-write
  transactions (``db.update``) on a document of its own, all at once: group
  commit's case. Its rate is every thread's commits together.
- the automerge-paper replay (:mod:`.replay`), one commit a keystroke.

The targets compare them, each with numbers of the same run.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass

from _report import log, table, verdict

import crdtdb

from .common import PREFILL, Cell, Config, Run, key_of, median_rate, temp_dir, timed
from .replay import replay_rows

THREADS = 8


def bare_commit_run(cfg: Config) -> Run:
    """One-row commits on a bare SQLite file, WAL, ``synchronous=NORMAL``."""
    with temp_dir() as path, closing(sqlite3.connect(path / "bare.db", isolation_level=None)) as c:
        c.execute("PRAGMA journal_mode = WAL")
        c.execute("PRAGMA synchronous = NORMAL")
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        row = b"x" * 32  # about a one-key update's size

        def step(_: int) -> int:
            for _ in range(10):
                c.execute("BEGIN IMMEDIATE")
                c.execute("INSERT INTO t (v) VALUES (?)", (row,))
                c.execute("COMMIT")
            return 10

        return timed(step, cfg)


def threads_run(cfg: Config, threads: int = THREADS) -> Run:
    """``threads`` threads of one-write transactions at once, for ``cfg.seconds``."""
    with temp_dir() as path, crdtdb.open(path, region="eu") as db:
        names = [f"bench/{t}" for t in range(threads)]
        with db.transaction() as tx:
            for name in names:
                tx.put(name, PREFILL)
        counts = [0] * threads
        stop = threading.Event()
        start = threading.Barrier(threads + 1)

        def work(t: int) -> None:
            start.wait()
            i = 0
            while not stop.is_set() and i < cfg.max_ops:
                db.update(names[t], {key_of(i): i})
                i += 1
            counts[t] = i

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        start.wait()
        began = time.perf_counter()
        stop.wait(cfg.seconds)
        stop.set()
        for worker in workers:
            worker.join()
        return Run(sum(counts), time.perf_counter() - began)


def bench_commits(cfg: Config, results: dict[Cell, list[Run]]) -> None:
    """The bare ceiling and the 8 threads, interleaved over the repeats."""
    for repeat in range(cfg.repeats):
        for cell, runner in (
            (("commit", "sqlite", None), bare_commit_run),
            (("write-one-8t", "crdtdb", None), threads_run),
        ):
            run = runner(cfg)
            results.setdefault(cell, []).append(run)
            log(f"  {cell[0]:13} {cell[1]:7} #{repeat + 1}: {run.rate:>12,.0f}/s")


def bench_replay(cfg: Config, results: dict[Cell, list[Run]]) -> None:
    replay_rows(cfg, results, cfg.replay_keystrokes)
    for system in ("raw", "crdtdb-doc"):
        run = results[("replay", system, None)][0]
        log(f"  replay {system:10} {run.ops:,} keystrokes in {run.seconds:.1f} s")


@dataclass(frozen=True, slots=True)
class Ratio:
    """A target of the form: ``mine`` >= ``threshold`` x ``against``, one run."""

    name: str
    mine: Cell
    against: Cell
    threshold: float

    def value(self, results: dict[Cell, list[Run]]) -> float | None:
        mine, against = results.get(self.mine), results.get(self.against)
        if not mine or not against:
            return None
        return median_rate(mine) / median_rate(against)

    def cell(self, results: dict[Cell, list[Run]]) -> str:
        value = self.value(results)
        return "-" if value is None else f"{value:.2f}x {verdict(value >= self.threshold)}"


BARE = ("commit", "sqlite", None)
RATIOS = [
    Ratio(
        "one-write >= 0.2x bare SQLite commit: crdtdb update()",
        ("write-one", "crdtdb", 1),
        BARE,
        0.2,
    ),
    Ratio(
        "one-write >= 0.2x bare SQLite commit: crdtdb tx.doc()[k]=v",
        ("write-one", "crdtdb-doc", 1),
        BARE,
        0.2,
    ),
    Ratio(
        f"{THREADS} threads one-write >= 0.5x bare SQLite commit",
        ("write-one-8t", "crdtdb", None),
        BARE,
        0.5,
    ),
    Ratio(
        "automerge-paper replay >= 0.3x bare pycrdt",
        ("replay", "crdtdb-doc", None),
        ("replay", "raw", None),
        0.3,
    ),
]


def commit_report(cfg: Config, results: dict[Cell, list[Run]]) -> list[str]:
    """The commit rows and their targets, for the plain-text report."""
    rows = []
    for label, cell in (
        ("bare SQLite one-row commit (WAL, synchronous=NORMAL)", BARE),
        ("crdtdb update(), one thread, D=1", ("write-one", "crdtdb", 1)),
        (f"crdtdb update(), {THREADS} threads together", ("write-one-8t", "crdtdb", None)),
        ("automerge-paper replay: bare pycrdt", ("replay", "raw", None)),
        ("automerge-paper replay: crdtdb, a commit a keystroke", ("replay", "crdtdb-doc", None)),
    ):
        runs = results.get(cell)
        rows.append([label, f"{median_rate(runs):,.0f}" if runs else "-"])
    keystrokes = cfg.replay_keystrokes
    replayed = "the whole trace" if keystrokes is None else f"its first {keystrokes:,} keystrokes"
    return [
        table(["commits/s", "rate"], rows),
        f"replay: {replayed}, once each, one transaction a keystroke",
        "",
        table(["target (same run)", "ratio"], [[r.name, r.cell(results)] for r in RATIOS]),
    ]


def commit_json(results: dict[Cell, list[Run]]) -> list[dict[str, object]]:
    return [
        {
            "name": r.name,
            "mine": list(r.mine),
            "against": list(r.against),
            "threshold": r.threshold,
            "value": r.value(results),
            "met": (r.value(results) or 0) >= r.threshold,
        }
        for r in RATIOS
    ]
