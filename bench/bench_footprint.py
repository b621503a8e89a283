"""Store footprint: the automerge-paper trace typed one transaction a keystroke.

Reports, for one document that received the whole trace (issue 14, section 2):
the store's bytes before compaction, after ``compact(retention_s=0)`` (which,
from schema 5, hands the freed pages back to the file system), the sum of the
update payloads, pycrdt's final encoded state, and the ratios against their targets (store before
compaction ≤ 2x the payloads; after, ≤ 3x pycrdt's state plus a fixed
overhead). Beside them, where the bytes are: SQLite's ``dbstat`` per table and
index.

``--checkout PATH`` also runs the replay with the crdtdb of another checkout
(for example ``/work/main``), in a subprocess, for a before/after table.

    python bench/bench_footprint.py                 # the whole trace (~1-2 min)
    python bench/bench_footprint.py --keystrokes 20000 --checkout /work/main
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import log, table, verdict

HERE = Path(__file__).resolve()
TRACE = "automerge-paper.json.gz"
DOC = "papers/trace"
FIXED_OVERHEAD = 256 << 10
"""Bytes a store of one document holds whatever its size (schema, pages of each table)."""
SHOWN_BYTES = 64 << 10
"""Tables and indexes smaller than this, before and after, are summed in one row."""
DEFAULT_OUT = HERE.parent / "results" / "footprint.json"


def trace_path() -> Path:
    shared = HERE.parents[2] / "shared"
    if not shared.is_dir():
        shared = Path("/work/shared")
    return shared / "data" / "editing-traces" / TRACE


def keystrokes(limit: int | None) -> list[list[Any]]:
    txns = json.loads(gzip.decompress(trace_path().read_bytes()))["txns"]
    return [txn["patches"] for txn in txns[:limit]]


def pycrdt_state(trace: list[list[Any]]) -> tuple[int, int]:
    """A bare pycrdt replay: (sum of its update payloads, its final encoded state)."""
    from _core.replay import type_into
    from pycrdt import Doc, Text

    doc: Doc[Any] = Doc()
    text = doc.get("body", type=Text)
    sizes = [0]
    doc.observe(lambda event: sizes.__setitem__(0, sizes[0] + len(event.update)))
    type_into(doc, text, trace)
    return sizes[0], len(doc.get_update())


def store_stats(path: Path) -> dict[str, Any]:
    """Bytes of the store file (after a truncating checkpoint) and per table/index."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        parts = {
            name: int(size)
            for name, size in conn.execute(
                "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
            )
        }
        payload = conn.execute("SELECT coalesce(sum(length(payload)), 0) FROM log").fetchone()[0]
        records = conn.execute("SELECT count(*) FROM log").fetchone()[0]
        auto_vacuum = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
    finally:
        conn.close()
    return {
        "file_bytes": path.stat().st_size,
        "page_bytes": page * pages,
        "free_bytes": page * free,
        "parts": parts,
        "log_payload_bytes": int(payload),
        "log_records": int(records),
        "auto_vacuum": int(auto_vacuum),
    }


def replay(directory: Path, trace: list[list[Any]]) -> dict[str, Any]:
    """Type ``trace`` into a new store, compact it; the store's numbers at each step."""
    from pycrdt import Text

    import crdtdb

    started = time.perf_counter()
    db = crdtdb.open(directory, region="eu")
    store = directory / "crdtdb.sqlite3"
    try:
        with db.transaction() as tx:
            tx.doc(DOC)["body"] = Text()
        for i, patches in enumerate(trace):
            with db.transaction() as tx:
                body = tx.doc(DOC)["body"]
                for pos, deleted, inserted in patches:
                    if deleted:
                        del body.text[pos : pos + deleted]
                    if inserted:
                        body.insert(pos, inserted)
            if i % 50_000 == 49_999:
                log(f"  {i + 1:,} keystrokes typed")
        typed = time.perf_counter() - started
        value = db.get(DOC)
        text = "" if value is None else str(value["body"])
        before = store_stats(store)
        started = time.perf_counter()
        removed = db.compact(retention_s=0)
        compacted = time.perf_counter() - started
    finally:
        db.close()
    after = store_stats(store)
    return {
        "crdtdb": str(Path(crdtdb.__file__).resolve().parent),
        "text_chars": len(text),
        "typed_s": typed,
        "compact_s": compacted,
        "removed": removed,
        "before": before,
        "after": after,
    }


def run_here(limit: int | None) -> dict[str, Any]:
    trace = keystrokes(limit)
    with tempfile.TemporaryDirectory(prefix="crdtdb-footprint-") as tmp:
        return replay(Path(tmp) / "store", trace)


def run_checkout(checkout: Path, limit: int | None) -> dict[str, Any]:
    """The same replay with the crdtdb of ``checkout``, in a subprocess."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    argv = [sys.executable, str(HERE), "--child"]
    if limit is not None:
        argv += ["--keystrokes", str(limit)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the replay with {checkout} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def report(runs: dict[str, dict[str, Any]], payload: int, state: int) -> str:
    lines = [
        f"update payloads (pycrdt, summed): {mb(payload)}; pycrdt final state: {mb(state)}",
        "",
    ]
    rows = []
    for name, run in runs.items():
        before, after = run["before"], run["after"]
        rows.append(
            [
                name,
                mb(before["file_bytes"]),
                f"{before['file_bytes'] / payload:.2f}x",
                mb(after["file_bytes"]),
                mb(after["free_bytes"]),
                f"{after['file_bytes'] / state:.2f}x",
                f"{run['typed_s']:.1f} s",
                f"{run['compact_s']:.1f} s",
            ]
        )
    headers = [
        "schema",
        "before compaction",
        "/payloads",
        "after compaction",
        "of it free",
        "/state",
        "typing",
        "compact()",
    ]
    lines.append(table(headers, rows))
    for name, run in runs.items():
        lines += ["", f"where the bytes are ({name}): before and after compaction"]
        before, after = dict(run["before"]["parts"]), dict(run["after"]["parts"])
        names = sorted(set(before) | set(after), key=lambda n: -before.get(n, 0))
        # The ~25 tables and indexes of one page each are the fixed overhead: one row.
        small = [n for n in names if max(before.get(n, 0), after.get(n, 0)) < SHOWN_BYTES]
        names = [n for n in names if n not in small]
        before["(the other tables and indexes)"] = sum(before.get(n, 0) for n in small)
        after["(the other tables and indexes)"] = sum(after.get(n, 0) for n in small)
        names.append("(the other tables and indexes)")
        lines.append(
            table(
                ["table/index", "before", "after"],
                [[n, mb(before.get(n, 0)), mb(after.get(n, 0))] for n in names],
            )
        )
    mine = runs["this checkout"]
    small_before = mine["before"]["file_bytes"] <= 2 * payload
    small_after = mine["after"]["file_bytes"] <= 3 * state + FIXED_OVERHEAD
    lines += [
        "",
        f"{verdict(small_before)}: store before compaction"
        f" {mb(mine['before']['file_bytes'])} <= 2x payloads ({mb(2 * payload)})",
        f"{verdict(small_after)}: store after compaction"
        f" {mb(mine['after']['file_bytes'])} <= 3x state + 256 KiB"
        f" ({mb(3 * state + FIXED_OVERHEAD)})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--keystrokes", type=int, help="only the trace's first N keystrokes")
    parser.add_argument("--checkout", type=Path, help="also replay with this checkout's crdtdb")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_here(args.keystrokes)))
        return 0
    log("bare pycrdt replay")
    payload, state = pycrdt_state(keystrokes(args.keystrokes))
    runs: dict[str, dict[str, Any]] = {}
    if args.checkout is not None:
        log(f"crdtdb replay with {args.checkout}")
        runs[f"{args.checkout}"] = run_checkout(args.checkout, args.keystrokes)
    log("crdtdb replay with this checkout")
    runs["this checkout"] = run_here(args.keystrokes)
    print(report(runs, payload, state))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"keystrokes": args.keystrokes, "payload": payload, "state": state, "runs": runs},
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
