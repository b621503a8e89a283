"""Several processes writing to one region's directory, against one process alone.

An application with worker processes (and the sync daemon beside them) writes
to one store. Each writer is a real process that opens the directory, says it
is ready, waits for ``go``, then commits ``--count`` one-write transactions
(``db.update`` of its own document, default durability) and reports how many
of its writes failed and why. Rows, side by side in one run, repeats
interleaved so that load changes hit every row alike:

- **1 process**: one writer doing ``--procs`` x ``--count`` commits;
- **N processes**: ``--procs`` writers of ``--count`` commits each, started
  together.

The rate is every commit over the time from ``go`` to the last writer's end.
With ``--baseline DIR`` (another checkout of crdtdb, e.g. an older commit in a
``git worktree``), both rows are also run with that tree's ``crdtdb`` first
on ``PYTHONPATH``, so a change is measured against its parent in one run.

Target (issue 14): N processes together >= 0.8x one process alone, and no
``database is locked`` (nor any other error) ever reaching a writer.

    .venv/bin/python bench/bench_writers.py                 # 8 x 500, 3 repeats
    .venv/bin/python bench/bench_writers.py --baseline /tmp/old --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import Child, Group
from _report import log, table, verdict

TIMEOUT = 300.0
TARGET = 0.8


CHILD = """
import json, sys, time
import crdtdb  # the first on PYTHONPATH: this tree or the baseline

directory, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = crdtdb.open(directory, region="eu")
print(json.dumps({"ev": "ready", "module": crdtdb.__file__}), flush=True)
sys.stdin.readline()
errors = {}
for i in range(count):
    try:
        db.update(f"bench/{name}", {"n": i})
    except Exception as exc:  # counted and reported: the target is that there are none
        key = f"{type(exc).__name__}: {str(exc)[:80]}"
        errors[key] = errors.get(key, 0) + 1
db.close()
print(json.dumps({"ev": "done", "errors": errors}), flush=True)
"""
"""One writer: open, ready, wait for go, commit ``count`` times, report its errors.

Run with ``python -c`` in the store's directory, so that only ``PYTHONPATH``
(and not this script's folder, which puts this tree first) picks the crdtdb.
"""


def _writer(tree: Path, directory: str, name: str, count: int) -> Child:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(tree))
    return Child(
        [sys.executable, "-c", CHILD, directory, name, str(count)], env=env, cwd=Path(directory)
    )


def run(tree: Path, procs: int, count: int) -> dict[str, Any]:
    """``procs`` writers of ``count`` commits each on a fresh directory; the group's rate."""
    with tempfile.TemporaryDirectory(prefix="crdtdb-writers-") as tmp, Group() as group:
        # Create the store first: the writers' race to create it is not what is measured.
        opener = group.add(_writer(tree, tmp, "setup", 0))
        ready = json.loads(opener.line(TIMEOUT))
        opener.send("go")
        json.loads(opener.line(TIMEOUT))
        opener.wait(TIMEOUT)
        writers = [group.add(_writer(tree, tmp, f"w{i}", count)) for i in range(procs)]
        for writer in writers:
            ready = json.loads(writer.line(TIMEOUT))
        started = time.perf_counter()
        for writer in writers:
            writer.send("go")
        results = [json.loads(writer.line(TIMEOUT)) for writer in writers]
        elapsed = time.perf_counter() - started
        for writer in writers:
            writer.wait(TIMEOUT)
        errors: dict[str, int] = {}
        for result in results:
            for key, n in result["errors"].items():
                errors[key] = errors.get(key, 0) + n
        return {
            "module": ready["module"],
            "commits": procs * count,
            "seconds": elapsed,
            "rate": procs * count / elapsed,
            "errors": errors,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--count", type=int, default=500, help="commits per writer process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another crdtdb checkout to compare with")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results/writers.json")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    trees: list[tuple[str, Path]] = [("this tree", here)]
    if args.baseline is not None:
        trees.append(("baseline", args.baseline.resolve()))
    shapes = [
        ("1 process", 1, args.procs * args.count),
        (f"{args.procs} processes", args.procs, args.count),
    ]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for repeat in range(args.repeats):
        for label, tree in trees:
            for shape, procs, count in shapes:
                log(f"repeat {repeat + 1}/{args.repeats}: {label}, {shape}")
                runs.setdefault((label, shape), []).append(run(tree, procs, count))
    rows = []
    results: dict[str, Any] = {"procs": args.procs, "count": args.count, "rows": []}
    for label, _ in trees:
        alone = statistics.median(r["rate"] for r in runs[(label, shapes[0][0])])
        together = statistics.median(r["rate"] for r in runs[(label, shapes[1][0])])
        errors = sum(sum(r["errors"].values()) for shape in shapes for r in runs[(label, shape[0])])
        ratio = together / alone
        rows.append(
            [
                label,
                f"{alone:,.0f}",
                f"{together:,.0f}",
                f"{ratio:.2f}x {verdict(ratio >= TARGET)}",
                f"{errors} {verdict(errors == 0)}",
            ]
        )
        results["rows"].append(
            {
                "tree": label,
                "module": runs[(label, shapes[0][0])][0]["module"],
                "alone_per_s": alone,
                "together_per_s": together,
                "ratio": ratio,
                "errors": errors,
                "error_kinds": [r["errors"] for shape in shapes for r in runs[(label, shape[0])]],
            }
        )
    print(
        f"{args.procs} writer processes x {args.count} one-write commits against one process"
        f" doing all {args.procs * args.count}; median of {args.repeats}\n"
    )
    print(
        table(
            [
                "commits/s",
                "1 process",
                f"{args.procs} processes",
                f"together/alone (>= {TARGET}x)",
                "errors seen by writers (0)",
            ],
            rows,
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
