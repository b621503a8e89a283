"""Out-of-order and bulk apply: records ahead of what they build on, and in batches.

Two workloads, each timed in causal order and in a bad order, for crdtdb
(``apply_remote``, one record at a time, into a fresh store) and for bare
pycrdt (``apply_update`` into a fresh ``Doc``), side by side in one run:

- **typed-between N**: region x types N characters; y merges them and types a
  character after each of them. The bad order delivers all of y's records
  first: every one of them waits for a character of x's.
- **trace, blocks**: the real ``clownschool`` session (3 authors, 23,136
  keystroke transactions, josephg/editing-traces, CC BY 4.0) replayed one
  store per author, then delivered to a fresh store one author's whole log
  after another (causal order: all records in HLC order).

Reported: seconds, the bad order's time over the causal order's (the target:
a small constant factor; it was quadratic, 19-24 s for N=1,000), and how many
records crdtdb applied again because what they waited for had arrived.

Bulk apply (issue 14): each workload's causal order is also applied to a
fresh store ``BULK`` records at a time through ``apply_remote_many`` (one
SQLite transaction and one pass of bookkeeping a batch, as the daemon's
writer does), and must end with the same documents; the second table gives
µs per applied record, one at a time against batched, with pycrdt's.
Results go to ``bench/results/apply.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _report import log, table, verdict  # bench/_report.py: this folder is sys.path[0]
from pycrdt import Doc

import crdtdb
from crdtdb import UpdateRecord

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "apply.json"
TRACE = "clownschool.json.gz"
MAX_RATIO = 3.0
"""Target: the bad order costs at most this many times the causal order."""
BULK = 256
"""Records per ``apply_remote_many`` batch in the bulk rows (the daemon's batch size)."""


def typed_between(tmp: Path, n: int) -> tuple[list[UpdateRecord], list[UpdateRecord]]:
    with (
        crdtdb.open(tmp / "x", region="x") as x,
        crdtdb.open(tmp / "y", region="y") as y,
    ):
        for _ in range(n):
            with x.transaction() as tx:
                tx.text("notes/a", "body").insert(0, "a")
        xs = list(x.changes())
        y.apply_remote_many(xs)
        for i in range(n):
            with y.transaction() as tx:
                tx.text("notes/a", "body").insert(2 * i + 1, "b")
        return xs, list(y.changes(origin="y"))


def trace_records(tmp: Path) -> list[list[UpdateRecord]]:
    """Each author's own records after replaying the trace, one store per author."""
    shared = Path(__file__).resolve().parents[2] / "shared"
    if not shared.is_dir():
        shared = Path("/work/shared")
    path = shared / "data" / "editing-traces" / TRACE
    if not path.is_file():
        sys.exit(f"the editing trace {path} is missing (shared test data, CC BY 4.0)")
    trace = json.loads(gzip.decompress(path.read_bytes()))
    stores = [crdtdb.open(tmp / f"r{a}", region=f"r{a}") for a in range(trace["numAgents"])]
    held = [[0] * len(stores) for _ in stores]
    after: list[list[int]] = []
    for txn in trace["txns"]:
        author = txn["agent"]
        for parent in txn["parents"]:
            for origin, seq in enumerate(after[parent]):
                if held[author][origin] < seq:
                    source = stores[origin]
                    records = source.records_from(source.region, held[author][origin], 10**9)
                    stores[author].apply_remote_many([r for r in records if r.seq <= seq])
                    held[author][origin] = seq
        with stores[author].transaction() as tx:
            text = tx.text("notes/trace", "body")
            for pos, deleted, inserted in txn["patches"]:
                if deleted:
                    del text[pos : pos + deleted]
                if inserted:
                    text.insert(pos, inserted)
        held[author][author] += 1
        after.append(list(held[author]))
    logs = [db.records_from(db.region, 0, 10**9) for db in stores]
    for db in stores:
        db.close()
    return logs


def crdtdb_apply(tmp: Path, name: str, records: list[UpdateRecord]) -> tuple[float, int, Any]:
    with crdtdb.open(tmp / name, region="z") as z:
        start = time.perf_counter()
        for record in records:
            z.apply_remote(record)
        seconds = time.perf_counter() - start
        info = z.info()
        assert info["updates_waiting"] == 0
        return (
            seconds,
            info["updates_reapplied"],
            {d: z.get(d) for d in {r.doc_id for r in records}},
        )


def crdtdb_bulk(tmp: Path, name: str, records: list[UpdateRecord]) -> tuple[float, Any]:
    """The records in causal order, ``BULK`` at a time through ``apply_remote_many``."""
    with crdtdb.open(tmp / name, region="z") as z:
        start = time.perf_counter()
        for first in range(0, len(records), BULK):
            z.apply_remote_many(records[first : first + BULK])
        seconds = time.perf_counter() - start
        assert z.info()["updates_waiting"] == 0
        return seconds, {d: z.get(d) for d in {r.doc_id for r in records}}


def pycrdt_apply(records: list[UpdateRecord]) -> float:
    docs: dict[str, Doc[Any]] = {}
    start = time.perf_counter()
    for record in records:
        doc = docs.get(record.doc_id)
        if doc is None:
            doc = docs[record.doc_id] = Doc()
        doc.apply_update(record.update)
    return time.perf_counter() - start


def measure(
    tmp: Path, name: str, causal: list[UpdateRecord], bad: list[UpdateRecord]
) -> dict[str, Any]:
    log(f"{name}: {len(causal):,} records ...")
    results: dict[str, Any] = {"workload": name, "records": len(causal)}
    answers = []
    for order, records in (("causal", causal), ("bad", bad)):
        seconds, reapplied, docs = crdtdb_apply(tmp, f"{name}-{order}", records)
        answers.append(docs)
        results[f"crdtdb_{order}_s"] = seconds
        results[f"crdtdb_{order}_reapplied"] = reapplied
        results[f"pycrdt_{order}_s"] = pycrdt_apply(records)
    assert answers[0] == answers[1], "the two orders disagree"
    results["crdtdb_bulk_s"], bulk_docs = crdtdb_bulk(tmp, f"{name}-bulk", causal)
    assert bulk_docs == answers[0], "bulk apply disagrees with one-by-one apply"
    results["crdtdb_ratio"] = results["crdtdb_bad_s"] / results["crdtdb_causal_s"]
    results["pycrdt_ratio"] = results["pycrdt_bad_s"] / results["pycrdt_causal_s"]
    return results


def report(rows: list[dict[str, Any]]) -> str:
    def secs(value: float) -> str:
        return f"{value:.2f}"

    cells: list[Callable[[dict[str, Any]], str]] = [
        lambda r: f"{r['workload']} ({r['records']:,} records)",
        lambda r: secs(r["crdtdb_causal_s"]),
        lambda r: secs(r["crdtdb_bad_s"]),
        lambda r: f"{r['crdtdb_ratio']:.2f}x {verdict(r['crdtdb_ratio'] <= MAX_RATIO)}",
        lambda r: f"{r['crdtdb_bad_reapplied']:,}",
        lambda r: secs(r["pycrdt_causal_s"]),
        lambda r: secs(r["pycrdt_bad_s"]),
    ]
    headers = [
        "workload",
        "crdtdb causal s",
        "crdtdb bad s",
        f"bad/causal (<= {MAX_RATIO:g}x)",
        "re-applied",
        "pycrdt causal s",
        "pycrdt bad s",
    ]
    return table(headers, [[cell(row) for cell in cells] for row in rows])


def bulk_report(rows: list[dict[str, Any]]) -> str:
    """Bulk apply: µs per applied record, one at a time against batches, causal order."""

    def per(row: dict[str, Any], key: str) -> float:
        return float(row[key]) / int(row["records"]) * 1e6

    body = [
        [
            f"{r['workload']} ({r['records']:,} records)",
            f"{per(r, 'crdtdb_causal_s'):.0f}",
            f"{per(r, 'crdtdb_bulk_s'):.0f}",
            f"{r['crdtdb_causal_s'] / r['crdtdb_bulk_s']:.1f}x",
            f"{per(r, 'pycrdt_causal_s'):.1f}",
        ]
        for r in rows
    ]
    headers = [
        "µs per applied record",
        "crdtdb one at a time",
        f"crdtdb {BULK} a batch",
        "batch speed-up",
        "pycrdt",
    ]
    return table(headers, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, no trace")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)
    sizes = [300] if args.quick else [1000, 2000]
    rows = []
    with tempfile.TemporaryDirectory(prefix="crdtdb-bench-apply-") as name:
        tmp = Path(name)
        for n in sizes:
            xs, ys = typed_between(tmp / f"gen{n}", n)
            rows.append(measure(tmp, f"typed-between {n:,}", xs + ys, ys + xs))
        if not args.quick:
            logs = trace_records(tmp / "trace")
            in_hlc_order = sorted((r for own in logs for r in own), key=lambda r: r.hlc)
            blocks = [r for own in logs for r in own]
            rows.append(measure(tmp, "clownschool, blocks", in_hlc_order, blocks))
    print(report(rows))
    print()
    print(bulk_report(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "apply", "rows": rows}, indent=2) + "\n")
    log(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
