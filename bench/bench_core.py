"""Core benchmark: crdtdb against raw pycrdt and pycrdt-store, side by side in one run.

What it measures (the numbers the core's performance issue asks for):

- single-key writes/s, as one-write transactions and batched (1,000 writes per
  transaction), on one hot document (D=1) and round-robin over D=100 documents;
- reads/s of a whole document: hot (cached) over the D documents, and cold over
  many distinct documents with a cache smaller than the set;
- open time of a 100k-document store: open plus the first read of one document.

Why these three systems: raw in-memory pycrdt is the ceiling (the CRDT work
alone, no persistence); pycrdt-store (``SQLiteYStore``) is what a pycrdt user
would reach for today to persist documents; crdtdb is measured with its
default durability ("normal": survives a process crash) and with
``durability="full"`` (fsync per commit: survives a power cut, the same class
as pycrdt-store's defaults of a rollback journal with ``synchronous=FULL``).

Every system runs the same sequence of operations: write ``i`` sets
``doc[f"k{i % 50}"] = i`` on document ``i % D``. Each timed run lasts about
``--seconds`` (it runs whole steps of that sequence until the budget is spent,
so fast systems do more of it); runs are repeated and the median is reported
(write runs interleaved across systems, so that load on the machine hits all
of them alike). Everything happens in temporary directories that are removed
afterwards. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sqlite3
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack, closing
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import anyio
from _core.commits import bench_commits, bench_replay
from _core.common import (
    CRDTDB_VARIANTS,
    DEFAULT_OUT,
    FILL_ROUNDS,
    FULL,
    KEYS,
    PREFILL,
    QUICK,
    STEP,
    Api,
    Cell,
    Config,
    Durability,
    Mode,
    Run,
    doc_id,
    key_of,
    median_rate,
    median_seconds,
    temp_dir,
    timed,
    timed_async,
    touched,
)
from _core.report import report, to_json
from _report import log  # bench/_report.py: this folder is sys.path[0]
from pycrdt import Doc, Map, TransactionEvent
from pycrdt.store import BaseYStore, SQLiteYStore

import crdtdb

# ------------------------------------------------------------------ writers


class Writer(Protocol):
    def one(self, i: int) -> None: ...
    def batch(self, start: int, n: int) -> None: ...


def new_map() -> Map[Any]:
    doc: Doc[Any] = Doc()
    root: Map[Any] = doc.get("data", type=Map)
    return root


class RawWriter:
    """Raw pycrdt: one Doc with a Map root per document, nothing persisted."""

    def __init__(self, docs: int) -> None:
        self.maps = [new_map() for _ in range(docs)]
        for root in self.maps:  # same starting state as the persistent systems
            root.update(PREFILL)

    def one(self, i: int) -> None:
        root = self.maps[i % len(self.maps)]
        with root.doc.transaction():
            root[key_of(i)] = i

    def batch(self, start: int, n: int) -> None:
        with ExitStack() as stack:
            for d in touched(start, n, len(self.maps)):
                stack.enter_context(self.maps[d].doc.transaction())
            for i in range(start, start + n):
                self.maps[i % len(self.maps)][key_of(i)] = i


class CrdtdbWriter:
    """crdtdb: ``update()`` (``tx.update`` when batched) or ``tx.doc(id)[k] = v``."""

    def __init__(self, path: Path, docs: int, durability: Durability, api: Api) -> None:
        self.db = crdtdb.open(path, region="eu", durability=durability)
        self.ids = [doc_id(d) for d in range(docs)]
        self.api = api
        with self.db.transaction() as tx:  # documents exist and are cached before timing
            for name in self.ids:
                tx.put(name, PREFILL)

    def _write(self, tx: crdtdb.Transaction, i: int) -> None:
        name = self.ids[i % len(self.ids)]
        if self.api == "update":
            tx.update(name, {key_of(i): i})
        else:
            tx.doc(name)[key_of(i)] = i

    def one(self, i: int) -> None:
        if self.api == "update":
            self.db.update(self.ids[i % len(self.ids)], {key_of(i): i})
            return
        with self.db.transaction() as tx:
            self._write(tx, i)

    def batch(self, start: int, n: int) -> None:
        with self.db.transaction() as tx:
            for i in range(start, start + n):
                self._write(tx, i)


def bulk_load(db_path: str, rows: list[tuple[str, bytes]]) -> None:
    """Insert ``(document name, update)`` rows as ``await store.write(update)`` would.

    For set-up only, never timed: ``write`` commits (and fsyncs) once per update,
    so filling stores through it would take most of the run on a slow disk. The
    rows are the ones ``write`` inserts (name, update, metadata b"", timestamp);
    no store here reaches the 100 writes after which ``write`` also checkpoints.
    """
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.executemany(
            "INSERT INTO yupdates VALUES (?, ?, ?, ?)",
            [(name, update, b"", time.time()) for name, update in rows],
        )


def store_class(path: Path) -> type[SQLiteYStore]:
    """pycrdt-store is configured by subclassing: one database file, one store per doc."""
    return type("BenchYStore", (SQLiteYStore,), {"db_path": str(path / "ystore.db")})


async def start_stores(
    cls: type[SQLiteYStore], names: list[str], stack: AsyncExitStack
) -> list[SQLiteYStore]:
    """One started store per document name (started one by one: the first creates the file)."""
    stores = []
    for name in names:
        store = await stack.enter_async_context(cls(name))
        assert isinstance(store, SQLiteYStore) and store.db_initialized is not None
        await store.db_initialized.wait()
        stores.append(store)
    return stores


class StoreWriter:
    """pycrdt-store: in-memory Docs whose updates are written with ``await store.write``."""

    def __init__(self, stores: list[SQLiteYStore]) -> None:
        self.stores = stores
        self.maps = [new_map() for _ in stores]
        self.pending: list[list[bytes]] = [[] for _ in stores]
        self._subscriptions = [
            root.doc.observe(partial(self._capture, d)) for d, root in enumerate(self.maps)
        ]

    def _capture(self, d: int, event: TransactionEvent) -> None:
        self.pending[d].append(event.update)

    async def flush(self, d: int) -> None:
        for update in self.pending[d]:
            await self.stores[d].write(update)
        self.pending[d].clear()

    async def one(self, i: int) -> None:
        d = i % len(self.maps)
        self.maps[d][key_of(i)] = i
        await self.flush(d)

    def edit(self, start: int, n: int) -> list[int]:
        """Writes ``start .. start + n - 1`` in memory; return the documents they touched."""
        docs = touched(start, n, len(self.maps))
        with ExitStack() as stack:  # one pycrdt transaction, hence one update, per document
            for d in docs:
                stack.enter_context(self.maps[d].doc.transaction())
            for i in range(start, start + n):
                self.maps[i % len(self.maps)][key_of(i)] = i
        return docs

    def set_all(self, values: dict[str, int]) -> None:
        """Set ``values`` in every document, one transaction per document (in memory)."""
        for root in self.maps:
            root.update(values)

    async def batch(self, start: int, n: int) -> None:
        for d in self.edit(start, n):
            await self.flush(d)

    def bulk_flush(self, db_path: str) -> None:
        """Store the pending updates without timing them (set-up only), see :func:`bulk_load`."""
        bulk_load(
            db_path,
            [
                (store.path, update)
                for store, pending in zip(self.stores, self.pending, strict=True)
                for update in pending
            ],
        )
        for pending in self.pending:
            pending.clear()


# ------------------------------------------------------------- write runs


def write_step(writer: Writer, mode: Mode, cfg: Config) -> Callable[[int], int]:
    def step(i: int) -> int:
        if mode == "batched":
            writer.batch(i, cfg.batch)
            return cfg.batch
        for j in range(i, i + STEP):
            writer.one(j)
        return STEP

    return step


def raw_write_run(cfg: Config, docs: int, mode: Mode) -> Run:
    return timed(write_step(RawWriter(docs), mode, cfg), cfg)


def crdtdb_write_run(durability: Durability, api: Api, cfg: Config, docs: int, mode: Mode) -> Run:
    with temp_dir() as path:
        writer = CrdtdbWriter(path, docs, durability, api)
        try:
            return timed(write_step(writer, mode, cfg), cfg)
        finally:
            writer.db.close()


async def _store_write_run(cfg: Config, docs: int, mode: Mode) -> Run:
    with temp_dir() as path:
        async with AsyncExitStack() as stack:
            cls = store_class(path)
            writer = StoreWriter(await start_stores(cls, [doc_id(d) for d in range(docs)], stack))
            writer.set_all(PREFILL)  # documents exist before timing
            writer.bulk_flush(cls.db_path)

            async def step(i: int) -> int:
                if mode == "batched":
                    await writer.batch(i, cfg.batch)
                    return cfg.batch
                for j in range(i, i + STEP):
                    await writer.one(j)
                return STEP

            return await timed_async(step, cfg)


def store_write_run(cfg: Config, docs: int, mode: Mode) -> Run:
    return anyio.run(_store_write_run, cfg, docs, mode)


WriteRun = Callable[[Config, int, Mode], Run]


def write_runners() -> dict[str, WriteRun]:
    runners: dict[str, WriteRun] = {"raw": raw_write_run, "pycrdt-store": store_write_run}
    for system, (durability, api) in CRDTDB_VARIANTS.items():
        runners[system] = partial(crdtdb_write_run, durability, api)
    return runners


def bench_writes(cfg: Config, results: dict[Cell, list[Run]]) -> None:
    """Every write cell once per repeat, interleaved, so drift hits all systems alike."""
    runners = write_runners()
    for repeat in range(cfg.repeats):
        for docs in cfg.doc_counts:
            for mode in ("one", "batched"):
                for system, runner in runners.items():
                    run = runner(cfg, docs, mode)
                    results.setdefault((f"write-{mode}", system, docs), []).append(run)
                    log(
                        f"  write {mode:7} D={docs:<3} {system:16} #{repeat + 1}:"
                        f" {run.rate:>12,.0f}/s"
                    )


# -------------------------------------------------------------- hot reads


def fill_values(r: int) -> dict[str, int]:
    return {key_of(k): r * KEYS + k for k in range(KEYS)}


def read_step(read: Callable[[int], object], docs: int) -> Callable[[int], int]:
    def step(i: int) -> int:
        for j in range(i, i + STEP):
            read(j % docs)
        return STEP

    return step


def raw_hot_reads(cfg: Config, docs: int) -> list[Run]:
    maps = [new_map() for _ in range(docs)]
    for r in range(FILL_ROUNDS):
        for root in maps:
            root.update(fill_values(r))
    return [timed(read_step(lambda d: maps[d].to_py(), docs), cfg) for _ in range(cfg.repeats)]


def crdtdb_hot_reads(cfg: Config, docs: int) -> list[Run]:
    with temp_dir() as path, crdtdb.open(path, region="eu") as db:
        for r in range(FILL_ROUNDS):  # one log record per document per round
            with db.transaction() as tx:
                for d in range(docs):
                    tx.update(doc_id(d), fill_values(r))
        names = [doc_id(d) for d in range(docs)]
        for name in names:
            assert db.get(name) == fill_values(FILL_ROUNDS - 1)
        return [timed(read_step(lambda d: db.get(names[d]), docs), cfg) for _ in range(cfg.repeats)]


async def store_read(store: BaseYStore) -> dict[str, Any]:
    """How a pycrdt-store user reads a document: a new Doc with the stored updates applied."""
    doc: Doc[Any] = Doc()
    root = doc.get("data", type=Map)
    await store.apply_updates(doc)
    return root.to_py() or {}


async def _store_hot_reads(cfg: Config, docs: int) -> list[Run]:
    with temp_dir() as path:
        async with AsyncExitStack() as stack:
            cls = store_class(path)
            stores = await start_stores(cls, [doc_id(d) for d in range(docs)], stack)
            writer = StoreWriter(stores)
            for r in range(FILL_ROUNDS):  # one stored update per document per round
                writer.set_all(fill_values(r))
            writer.bulk_flush(cls.db_path)
            assert await store_read(stores[-1]) == fill_values(FILL_ROUNDS - 1)

            async def step(i: int) -> int:
                for j in range(i, i + STEP):
                    await store_read(stores[j % docs])
                return STEP

            return [await timed_async(step, cfg) for _ in range(cfg.repeats)]


def store_hot_reads(cfg: Config, docs: int) -> list[Run]:
    return anyio.run(_store_hot_reads, cfg, docs)


def bench_hot_reads(cfg: Config, results: dict[Cell, list[Run]]) -> None:
    readers = {"raw": raw_hot_reads, "pycrdt-store": store_hot_reads, "crdtdb": crdtdb_hot_reads}
    for docs in cfg.doc_counts:
        for system, reader in readers.items():
            runs = reader(cfg, docs)
            results[("read-hot", system, docs)] = runs
            log(f"  read hot D={docs:<3} {system:16} {median_rate(runs):>12,.0f}/s")


# ------------------------------------------------- big stores: open + cold reads


def small_doc_id(i: int) -> str:
    return f"docs/{i}"


def create_crdtdb_store(path: Path, n: int, batch: int) -> Run:
    start = time.perf_counter()
    with closing(crdtdb.open(path, region="eu")) as db:
        for first in range(0, n, batch):
            with db.transaction() as tx:
                for i in range(first, min(first + batch, n)):
                    tx.put(small_doc_id(i), {"n": i})
    return Run(n, time.perf_counter() - start)


def small_update(i: int) -> bytes:
    doc: Doc[Any] = Doc()
    doc.get("data", type=Map)["n"] = i
    return doc.get_update()


async def create_ystore(path: Path, n: int) -> None:
    """Document 0 through the store's API (it creates the schema), the rest bulk-loaded.

    Writing 100k documents through ``write`` would take many minutes of fsyncs
    and measure writes, which are measured above; see :func:`bulk_load`.
    """
    cls = store_class(path)
    async with cls(small_doc_id(0)) as store:
        await store.write(small_update(0))
    bulk_load(cls.db_path, [(small_doc_id(i), small_update(i)) for i in range(1, n)])


def crdtdb_open_once(path: Path, target: int) -> Run:
    start = time.perf_counter()
    db = crdtdb.open(path)
    value = db.get(small_doc_id(target))
    elapsed = time.perf_counter() - start
    db.close()
    assert value == {"n": target}, value
    return Run(1, elapsed)


async def store_open_once(path: Path, target: int) -> Run:
    start = time.perf_counter()
    async with store_class(path)(small_doc_id(target)) as store:
        value = await store_read(store)
        elapsed = time.perf_counter() - start
    assert value == {"n": target}, value
    return Run(1, elapsed)


def crdtdb_cold_reads(cfg: Config, path: Path) -> Run:
    """A fresh open per run, so the doc cache starts empty and every read misses it."""
    with closing(crdtdb.open(path, cache_size=cfg.cold_cache)) as db:
        return timed(read_step(lambda i: db.get(small_doc_id(i)), cfg.cold_docs), cfg)


async def store_cold_read(path: Path, i: int) -> dict[str, Any]:
    """One store per document, started for the read: how pycrdt-store loads a document."""
    async with store_class(path)(small_doc_id(i)) as store:
        return await store_read(store)


async def store_cold_reads(cfg: Config, path: Path) -> Run:
    async def step(i: int) -> int:
        for j in range(i, i + STEP):
            await store_cold_read(path, j % cfg.cold_docs)
        return STEP

    return await timed_async(step, cfg)


def bench_crdtdb_store(cfg: Config, results: dict[Cell, list[Run]]) -> None:
    with temp_dir() as path:
        results[("create", "crdtdb", None)] = [create_crdtdb_store(path, cfg.open_docs, cfg.batch)]
        target = cfg.open_docs // 2
        results[("open", "crdtdb", None)] = [
            crdtdb_open_once(path, target) for _ in range(cfg.repeats)
        ]
        results[("read-cold", "crdtdb", None)] = [
            crdtdb_cold_reads(cfg, path) for _ in range(cfg.repeats)
        ]


async def _bench_ystore(cfg: Config, results: dict[Cell, list[Run]]) -> None:
    with temp_dir() as path:
        await create_ystore(path, cfg.open_docs)
        target = cfg.open_docs // 2
        results[("open", "pycrdt-store", None)] = [
            await store_open_once(path, target) for _ in range(cfg.repeats)
        ]
        results[("read-cold", "pycrdt-store", None)] = [
            await store_cold_reads(cfg, path) for _ in range(cfg.repeats)
        ]


def bench_big_stores(cfg: Config, results: dict[Cell, list[Run]]) -> None:
    bench_crdtdb_store(cfg, results)
    log(
        f"  crdtdb: created {cfg.open_docs:,} docs at"
        f" {median_rate(results[('create', 'crdtdb', None)]):,.0f} docs/s,"
        f" open {median_seconds(results[('open', 'crdtdb', None)]) * 1e3:.2f} ms"
    )
    anyio.run(_bench_ystore, cfg, results)
    log(
        f"  pycrdt-store: open"
        f" {median_seconds(results[('open', 'pycrdt-store', None)]) * 1e3:.2f} ms"
    )


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "pycrdt": importlib.metadata.version("pycrdt"),
        "pycrdt-store": importlib.metadata.version("pycrdt-store"),
        "crdtdb": crdtdb.__version__,
        "load_average_before": os.getloadavg(),
    }


# -------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> tuple[Config, Path, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--seconds", type=float, help="time budget of one timed run")
    parser.add_argument("--repeats", type=int, help="timed runs per number (median)")
    parser.add_argument("--open-docs", type=int, help="documents in the open-time store")
    parser.add_argument("--cold-docs", type=int, help="documents the cold reads cycle over")
    parser.add_argument("--cold-cache", type=int, help="crdtdb cache_size for cold reads")
    parser.add_argument("--footprint", action="store_true", help="then bench_footprint.py")
    parser.add_argument(
        "--replay-keystrokes", type=int, help="automerge-paper keystrokes replayed (all if unset)"
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    overrides = {
        name: getattr(args, name)
        for name in (
            "seconds",
            "repeats",
            "open_docs",
            "cold_docs",
            "cold_cache",
            "replay_keystrokes",
        )
        if getattr(args, name) is not None
    }
    return replace(cfg, **overrides), args.out, args.footprint


def main(argv: list[str] | None = None) -> int:
    cfg, out, footprint = parse_args(argv)
    env = environment()
    results: dict[Cell, list[Run]] = {}
    sections = [
        ("writes", bench_writes),
        ("hot reads", bench_hot_reads),
        ("open time and cold reads", bench_big_stores),
        ("commit ceiling and 8 threads", bench_commits),
        ("automerge-paper replay", bench_replay),
    ]
    for title, section in sections:
        log(f"{title} ...")
        start = time.perf_counter()
        section(cfg, results)
        log(f"{title}: {time.perf_counter() - start:.1f} s")
    env["load_average_after"] = os.getloadavg()
    print(report(cfg, results, env))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_json(cfg, results, env), indent=2) + "\n")
    log(f"results written to {out}")
    if footprint:  # the store's size for the automerge-paper trace (its own file)
        import bench_footprint

        return bench_footprint.main(["--keystrokes", "20000"] if cfg.name == "quick" else [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
