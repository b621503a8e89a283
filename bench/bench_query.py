"""The DuckDB query layer: materialisation, incremental refresh, queries, time travel, writers.

One collection ``users`` of N documents (1,000,000; ``--quick``: 50,000) of
a realistic shape (eight top-level fields: int, float, strings, a bool, a
nested map, a short list), deterministic (seeded), measured side by side in
one run against the ceilings:

1. **first materialisation** (documents/s): ``crdtdb.query.refresh(db)`` on
   the freshly written store (each run from scratch: the ``analytics`` folder
   removed first), interleaved with the same bodies written to a typed Parquet
   file by pyarrow (``Table.from_pylist`` of the Python dicts, given their
   schema) and by DuckDB (``json_transform`` of their JSON text); the faster is
   the ceiling.
2. **refresh after 1% changed** (score updates, a few deletes, a few new
   documents, a new field in a few): its time against the first build's.
3. **queries** (a group-by and a selective filter) through the collection
   view, against the same queries on the typed Parquet file of the same data
   (the ceiling) and on the ``docs`` view's JSON body (``->>``), right after
   the first build (one segment) and after the 1% refresh (two segments).
4. **time travel**: the group-by on ``connect(db, as_of=cut)`` after 10,000
   documents changed (quick: 1,000) against ``connect(db)``: the query alone,
   and connect + query.
5. **writer commit rate** (one-write transactions) alone, and beside a reader
   (``con.refresh()`` + the group-by, in a loop) and a refresher process.

Timings are medians of interleaved repeats; the builds, the ceilings and the
refresh are timed as ``timeit`` times, garbage collected before and not
during (see ``collected``). Results go to ``bench/results/query.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import math
import os
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from _query.report import machine, measures, report
from _query.writers import writer_with_readers
from _report import log  # bench/_report.py: this folder is sys.path[0]

import crdtdb
import crdtdb.query
from crdtdb.query import materialize
from crdtdb.query.area import AREA

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "query.json"
SEED = 20261207
BATCH = 1000
"""Documents written per transaction while loading the store."""

CITIES = ["Paris", "Berlin", "London", "Madrid", "Rome", "Vienna", "Lisbon", "Oslo"]
CITIES += ["Warsaw", "Prague", "Dublin", "Athens"]
FIRST = ["Ada", "Alan", "Grace", "Linus", "Barbara", "Edsger", "Donald", "Frances"]
LAST = ["Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Dijkstra", "Knuth", "Allen"]
TAGS = ["admin", "beta", "vip", "trial", "staff", "partner", "legacy", "mobile"]

GROUP_BY = "SELECT city, count(*), avg(age), avg(score) FROM users GROUP BY city"
SELECTIVE = "SELECT id, name FROM users WHERE age = 42 AND city = 'Paris'"
JSON_GROUP_BY = (
    "SELECT body->>'city' AS city, count(*), avg((body->>'age')::BIGINT),"
    " avg((body->>'score')::DOUBLE) FROM docs WHERE collection = 'users' AND NOT deleted"
    " GROUP BY 1"
)
JSON_SELECTIVE = (
    "SELECT id, body->>'name' FROM docs WHERE collection = 'users' AND NOT deleted"
    " AND (body->>'age')::BIGINT = 42 AND body->>'city' = 'Paris'"
)
SHAPE = json.dumps(
    {
        "name": "VARCHAR",
        "age": "BIGINT",
        "score": "DOUBLE",
        "city": "VARCHAR",
        "email": "VARCHAR",
        "active": "BOOLEAN",
        "address": {"street": "VARCHAR", "zip": "VARCHAR"},
        "tags": ["VARCHAR"],
    }
)
"""The documents' types, for DuckDB's ``json_transform`` (the DuckDB ceiling)."""
ARROW_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("age", pa.int64()),
        ("score", pa.float64()),
        ("city", pa.string()),
        ("email", pa.string()),
        ("active", pa.bool_()),
        ("address", pa.struct([("street", pa.string()), ("zip", pa.string())])),
        ("tags", pa.list_(pa.string())),
    ]
)
"""The same for pyarrow (the pyarrow ceiling)."""

Docs = dict[str, dict[str, Any]]
"""The live documents, doc id -> body, as the store should hold them."""


def median(values: list[float]) -> float:
    return statistics.median(values)


# ------------------------------------------------------------------ documents


def user(rng: random.Random, i: int) -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {
        "name": f"{first} {last} {i}",
        "age": rng.randint(18, 90),
        "score": round(rng.uniform(0, 100), 3),
        "city": rng.choice(CITIES),
        "email": f"{first.lower()}.{last.lower()}{i}@example.com",
        "active": rng.random() < 0.7,
        "address": {"street": f"{rng.randint(1, 999)} {rng.choice(LAST)} St", "zip": f"{i:05d}"},
        "tags": rng.sample(TAGS, rng.randint(0, 3)),
    }


def load_store(db: crdtdb.Database, rng: random.Random, n: int) -> Docs:
    """Write N users, BATCH per transaction; return them."""
    docs: Docs = {}
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        with db.transaction() as tx:
            for i in range(start, min(n, start + BATCH)):
                body = docs[f"users/{i}"] = user(rng, i)
                tx.put(f"users/{i}", body)
        if (start // BATCH) % 100 == 99 or start + BATCH >= n:
            done = min(n, start + BATCH)
            rate = done / (time.perf_counter() - started)
            log(f"  store: {done:,} of {n:,} documents written ({rate:,.0f}/s)")
    return docs


def change_one_percent(db: crdtdb.Database, rng: random.Random, docs: Docs) -> dict[str, int]:
    """1% of the documents changed: score updates, deletes, a new field, new documents."""
    n = len(docs)
    few = max(1, n // 2000)
    changed = n // 100
    picked = rng.sample(sorted(docs), changed - few)
    deletes, new_field, updates = picked[:few], picked[few : 2 * few], picked[2 * few :]
    ops: list[tuple[str, str, dict[str, Any]]] = [("delete", d, {}) for d in deletes]
    ops += [("update", d, {"vip": True}) for d in new_field]
    # outside the first range: an update that sets the same value writes nothing
    ops += [("update", d, {"score": round(rng.uniform(100, 200), 3)}) for d in updates]
    ops += [("put", f"users/new{i}", user(rng, n + i)) for i in range(few)]
    for start in range(0, len(ops), BATCH):
        with db.transaction() as tx:
            for op, doc_id, value in ops[start : start + BATCH]:
                if op == "delete":
                    tx.delete(doc_id)
                    del docs[doc_id]
                elif op == "update":
                    tx.update(doc_id, value)
                    docs[doc_id] = {**docs[doc_id], **value}
                else:
                    tx.put(doc_id, value)
                    docs[doc_id] = value
    return {"changed": len(ops), "deleted": few, "new_field": few, "new": few}


def change_ages(db: crdtdb.Database, rng: random.Random, docs: Docs, count: int) -> None:
    picked = rng.sample(sorted(docs), count)
    for start in range(0, count, BATCH):
        with db.transaction() as tx:
            for doc_id in picked[start : start + BATCH]:
                age = docs[doc_id]["age"] % 73 + 18
                tx.update(doc_id, {"age": age})
                docs[doc_id] = {**docs[doc_id], "age": age}


# ------------------------------------------------------------------ ceilings


def pyarrow_parquet(docs: Docs, path: Path) -> float:
    """Seconds to write the bodies, Python dicts, as a typed Parquet file with pyarrow."""
    ids, bodies = list(docs), list(docs.values())
    schema = _schema(bodies)
    started = time.perf_counter()
    typed = pa.Table.from_pylist(bodies, schema=schema)
    typed = typed.add_column(0, "id", pa.array(ids, pa.string()))
    pq.write_table(typed, path)
    return time.perf_counter() - started


def _schema(bodies: list[dict[str, Any]]) -> pa.Schema:
    """The users' Arrow types (inferred from a first body with no tags, they would be wrong),
    plus ``vip`` once some body has it."""
    schema = ARROW_SCHEMA
    if any("vip" in body for body in bodies):
        schema = schema.append(pa.field("vip", pa.bool_()))
    return schema


def duckdb_parquet(ids: list[str], texts: list[str], path: Path) -> float:
    """Seconds to write the bodies, JSON text, as a typed Parquet file with DuckDB."""
    fields = json.loads(SHAPE)
    columns = ", ".join(f"t.{name} AS {name}" for name in fields)
    target = str(path).replace("'", "''")
    started = time.perf_counter()
    with duckdb.connect() as con:
        con.register("texts", pa.table({"id": pa.array(ids), "body": pa.array(texts)}))
        con.execute(
            f"COPY (SELECT id, {columns} FROM (SELECT id, json_transform(body, '{SHAPE}') AS t"
            f" FROM texts)) TO '{target}' (FORMAT parquet)"
        )
    return time.perf_counter() - started


# ------------------------------------------------------------------ 1: build


def first_build(
    db: crdtdb.Database, docs: Docs, tmp: Path, repeats: int, profile: bool
) -> dict[str, Any]:
    """First materialisations, each from scratch, interleaved with the two ceilings."""
    ids = list(docs)
    texts = [json.dumps(body) for body in docs.values()]
    warm_up(tmp / "warm-up", docs)
    runs: dict[str, list[float]] = {"crdtdb": [], "pyarrow": [], "duckdb": []}
    for r in range(repeats):
        shutil.rmtree(db.path / AREA, ignore_errors=True)  # a first build again
        with collected():
            result = crdtdb.query.refresh(db)
        if result.documents != len(docs):
            raise RuntimeError(
                f"a first build wrote {result.documents:,} documents, not {len(docs):,}"
            )
        runs["crdtdb"].append(result.seconds)
        with collected():
            runs["pyarrow"].append(pyarrow_parquet(docs, tmp / "ceiling.parquet"))
        with collected():
            runs["duckdb"].append(duckdb_parquet(ids, texts, tmp / "duckdb.parquet"))
        log(
            f"  build {r + 1}/{repeats}: "
            + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items())
        )
    seconds = {name: median(values) for name, values in runs.items()}
    ceiling = min(("pyarrow", "duckdb"), key=lambda name: seconds[name])
    results = {
        "documents": len(docs),
        "runs_s": runs,
        "median_s": seconds,
        "docs_per_s": {name: len(docs) / s for name, s in seconds.items()},
        "ceiling": ceiling,
        "ratio": seconds[ceiling] / seconds["crdtdb"],
    }
    if profile:
        shutil.rmtree(db.path / AREA, ignore_errors=True)
        results["profile"] = profiled_build(db)
    return results


@contextlib.contextmanager
def collected() -> Iterator[None]:
    """Garbage collected before, and no collection during, as ``timeit`` times: a full
    collection walks this benchmark's million reference dicts (about 1 s) and landed in
    the timed refresh about one run in eight, whatever the code measured allocated.
    (Timed in a fresh process instead, a refresh paid 0.3 s of one-time loading;
    ``gc.freeze()`` of the dicts made full collections more frequent, not rarer.)"""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def warm_up(path: Path, docs: Docs) -> None:
    """One small run of each contender first: one-time imports and extension loads (DuckDB
    imports pandas on its first ``register``) are not charged to whichever runs first."""
    sample = dict(list(docs.items())[:100])
    path.mkdir()
    with crdtdb.open(path / "store", region="eu") as small:
        with small.transaction() as tx:
            for doc_id, body in sample.items():
                tx.put(doc_id, body)
        crdtdb.query.refresh(small)
    pyarrow_parquet(sample, path / "pyarrow.parquet")
    duckdb_parquet(list(sample), [json.dumps(b) for b in sample.values()], path / "duckdb.parquet")
    shutil.rmtree(path)


def profiled_build(db: crdtdb.Database, top: int = 25, what: str = "first build") -> list[str]:
    """One more refresh under cProfile: its top functions by cumulative time.

    ``refresh()`` works in a thread of its own (see crdtdb.query.priority), which
    cProfile would not see into: the same work is called on this thread here.
    """
    profiler = cProfile.Profile()
    profiler.enable()
    result = materialize._refresh_now(db, False, None)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    log(f"  profiled {what} ({result.seconds:.2f} s under cProfile):")
    for line in lines:
        log("    " + line)
    return lines


# ------------------------------------------------------------------ 3: queries


def timed(con: duckdb.DuckDBPyConnection, query: str) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    rows = con.execute(query).fetchall()
    return time.perf_counter() - started, rows


def timer(con: duckdb.DuckDBPyConnection, query: str) -> Callable[[], float]:
    """A variant for :func:`interleaved`: one run of ``query`` on ``con``, its seconds."""
    return lambda: timed(con, query)[0]


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Each variant once to warm up, then ``repeats`` rounds of all of them; the medians."""
    for run in variants.values():
        run()
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            runs[name].append(run())
    return {name: median(values) for name, values in runs.items()}


def same_group_by(a: list[Any], b: list[Any]) -> bool:
    a, b = sorted(a), sorted(b)
    return len(a) == len(b) and all(
        x[:2] == y[:2]
        and all(math.isclose(p, q, rel_tol=1e-9) for p, q in zip(x[2:], y[2:], strict=True))
        for x, y in zip(a, b, strict=True)
    )


def ceiling_connection(docs: Docs, path: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with ``users`` over a typed Parquet file of ``docs`` (pyarrow)."""
    pyarrow_parquet(docs, path)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW users AS SELECT * FROM read_parquet('{path}')")
    return con


def queries(db: crdtdb.Database, docs: Docs, tmp: Path, stage: str, repeats: int) -> dict[str, Any]:
    """The two queries: collection view, typed Parquet ceiling, ``docs`` JSON body."""
    view = crdtdb.query.connect(db)
    ceiling = ceiling_connection(docs, tmp / f"ceiling-{stage}.parquet")
    try:
        results: dict[str, Any] = {"stage": stage, "documents": len(docs)}
        pairs = {"group_by": (GROUP_BY, JSON_GROUP_BY), "selective": (SELECTIVE, JSON_SELECTIVE)}
        for name, (query, json_query) in pairs.items():
            answers = {
                "view": view.execute(query).fetchall(),
                "parquet": ceiling.execute(query).fetchall(),
                "json": view.execute(json_query).fetchall(),
            }
            check = same_group_by if name == "group_by" else (lambda a, b: sorted(a) == sorted(b))
            for other in ("view", "json"):
                if not check(answers[other], answers["parquet"]):
                    raise RuntimeError(f"{stage} {name}: {other} disagrees with the Parquet file")
            seconds = interleaved(
                {
                    "view": timer(view, query),
                    "parquet": timer(ceiling, query),
                    "json": timer(view, json_query),
                },
                repeats,
            )
            results[name] = {
                "rows": len(answers["view"]),
                "median_s": seconds,
                "ratio": seconds["view"] / seconds["parquet"],
                "json_ratio": seconds["json"] / seconds["parquet"],
            }
            results.setdefault("answers", {})[name] = answers["view"] if name == "group_by" else []
            log(
                f"  {stage} {name}: "
                + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in seconds.items())
            )
        return results
    finally:
        view.close()
        ceiling.close()


# ------------------------------------------------------------------ 4: time travel


def time_travel(
    db: crdtdb.Database,
    rng: random.Random,
    docs: Docs,
    count: int,
    before: list[Any],
    repeats: int,
) -> dict[str, Any]:
    """The group-by as of a cut before ``count`` documents changed, against the present."""
    cut = db.hlc
    change_ages(db, rng, docs, count)
    crdtdb.query.refresh(db)
    past, present = crdtdb.query.connect(db, as_of=cut), crdtdb.query.connect(db)
    try:
        if not same_group_by(past.execute(GROUP_BY).fetchall(), before):
            raise RuntimeError("as_of=cut does not show the state at the cut")
        query_s = interleaved(
            {
                "as_of": lambda: timed(past, GROUP_BY)[0],
                "present": lambda: timed(present, GROUP_BY)[0],
            },
            repeats,
        )
    finally:
        past.close()
        present.close()

    def connect_and_query(as_of: int | None) -> float:
        started = time.perf_counter()
        con = crdtdb.query.connect(db, as_of=as_of)
        con.execute(GROUP_BY).fetchall()
        seconds = time.perf_counter() - started
        con.close()
        return seconds

    both_s = interleaved(
        {"as_of": lambda: connect_and_query(cut), "present": lambda: connect_and_query(None)},
        max(3, repeats // 2),
    )
    log(f"  as_of: query {query_s}, connect+query {both_s}")
    return {
        "changed": count,
        "query_s": query_s,
        "query_ratio": query_s["as_of"] / query_s["present"],
        "connect_query_s": both_s,
        "connect_query_ratio": both_s["as_of"] / both_s["present"],
    }


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    n = args.docs or (50_000 if args.quick else 1_000_000)
    repeats = 5  # builds vary by 15% from one to the next on a shared machine: five, interleaved
    rng = random.Random(SEED)
    res: dict[str, Any] = {}
    db = crdtdb.open(tmp / "store", region="eu")
    try:
        log(f"writing {n:,} documents ...")
        started = time.perf_counter()
        docs = load_store(db, rng, n)
        res["store_write_s"] = time.perf_counter() - started
        log("1. first materialisation ...")
        res["build"] = first_build(db, docs, tmp, repeats, args.profile)
        log("3. queries, one segment ...")
        res["queries"] = [queries(db, docs, tmp, "1 segment", args.query_repeats)]
        log("2. 1% changed ...")
        res["refresh"] = change_one_percent(db, rng, docs)
        with collected():
            result = crdtdb.query.refresh(db)
        res["refresh"].update(seconds=result.seconds, documents=result.documents)
        res["refresh"]["share"] = result.seconds / res["build"]["median_s"]["crdtdb"]
        log(f"  refresh {result}")
        log("3. queries, after the 1% refresh ...")
        res["queries"].append(queries(db, docs, tmp, "2 segments", args.query_repeats))
        before = res["queries"][-1]["answers"]["group_by"]
        log("4. time travel ...")
        count = min(10_000 if n >= 100_000 else 1_000, len(docs) // 10)
        res["time_travel"] = time_travel(db, rng, docs, count, before, args.query_repeats)
        if args.profile:  # last: the stages above measure the store as they describe it
            log("2. profiled: another 1% changed ...")
            change_one_percent(db, rng, docs)
            res["refresh"]["profile"] = profiled_build(db, what="refresh after 1% changed")
    finally:
        db.close()
    log("5. writer with readers ...")
    seconds = 2.0 if args.quick else 5.0
    res["writer"] = writer_with_readers(tmp / "store", seconds, n, rounds=3, query=GROUP_BY)
    for q in res["queries"]:
        q.pop("answers", None)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="50,000 documents, shorter runs")
    parser.add_argument("--docs", type=int, default=0, help="number of documents (overrides)")
    parser.add_argument("--query-repeats", type=int, default=9, help="interleaved query rounds")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile one more first build, and a refresh of another 1%% (stderr, JSON)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)
    env = machine()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crdtdb-bench-query-", dir="/tmp") as name:
        res = run(args, Path(name))
    env["load_avg_after"] = os.getloadavg()
    env["total_s"] = time.perf_counter() - started
    rows = measures(res)
    print(report(rows))
    print(
        f"\n{env['cpu_count']} cpus; load average {env['load_avg'][0]:.2f} before,"
        f" {env['load_avg_after'][0]:.2f} after; {env['total_s']:.0f} s in all"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "query", "quick": args.quick, "env": env, "results": res, "rows": rows}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    log(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
