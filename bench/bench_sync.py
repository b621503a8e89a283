"""Sync benchmark: crdtdb replication against pycrdt-websocket and raw aioquic, in one run.

What it measures (the numbers the replication issue asks for):

1. **anti-entropy efficiency**, in memory (two sans-IO sessions wired together,
   as in ``tests/harness/link.py``): two stores of N small documents that
   differ in 1% of them, some changed on one side, some on the other, some by
   deletes only. Bytes on the wire and round trips of one anti-entropy round,
   against the naive exchange of every document's state vector and against
   full state transfer. Merkle roots must be equal afterwards.
2. **replication lag** commit -> visible over loopback QUIC, between two
   ``crdtdb serve`` daemons (subprocesses): an application process writes to
   region eu's directory with the embedded library, paced at 100 and 1,000
   one-write transactions/s, and at 10,000 writes/s in transactions of 10;
   this process polls region us's directory.
3. **steady-state replicated updates/s**, eu -> us, one-write transactions,
   counted on arrival in us; against pycrdt-websocket (hypercorn server, httpx-ws
   client, one update per message) counted on arrival in the server's room.
   Beside it, the **replication pipeline's capacity**: eu's daemon is stopped
   while a writer puts a backlog of one-write records in eu's log, then started;
   records/s arriving in us while the backlog drains. The live number cannot
   exceed the writer's commit rate; the backlog number says what the pipeline
   (push, QUIC, batched apply) carries when the writer is not the limit.
4. **bulk bootstrap**: a fresh region's daemon syncing N documents from a
   populated one; against pycrdt-websocket fetching the same documents (one room
   per document, as it is built; and, as its best case, all of them in one
   document), and against raw aioquic pushing one big stream (the ceiling).
   Twice: with tiny documents (~42 B, where per-document costs are all there
   is) and with text documents (2-4 KB of a real paper's text, where MB/s
   means something).
5. **a large document** (8 MiB of text) written in one region of three in a
   full mesh: seconds until visible in the others and bytes each received,
   against raw aioquic carrying the update's bytes (``bench/_sync/large.py``).

Every number comes from one run of this script on one machine, so they share
its load. Throughput runs are repeated (interleaved across systems) and the
median reported. Everything happens in a temporary directory that is removed
afterwards; every process started is stopped. The sections live in
``bench/_sync/``; see ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from _harness import make_certs
from _report import log
from _sync.ae import bench_ae
from _sync.bootstrap import Transfer, bench_bootstrap
from _sync.common import (
    DEFAULT_OUT,
    FULL,
    QUICK,
    REFERENCE_PACKAGES,
    SECTIONS,
    Config,
    build_source,
)
from _sync.large import bench_large
from _sync.rate import BacklogRun, RateRun, bench_lag_and_rate
from _sync.report import report
from _sync.roles import ROLES

import crdtdb


def environment() -> dict[str, Any]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pycrdt": version("pycrdt"),
        "pycrdt-websocket": version("pycrdt-websocket"),
        "hypercorn": version("hypercorn"),
        "httpx-ws": version("httpx-ws"),
        "aioquic": version("aioquic"),
        "crdtdb": crdtdb.__version__,
        "load_average_before": os.getloadavg(),
    }


def jsonable(value: Any) -> Any:
    if isinstance(value, Transfer):
        return {
            **asdict(value),
            "docs_per_s": value.docs_per_s,
            "payload_mb_s": value.payload_mb_s,
            "wire_mb_s": value.wire_mb_s,
        }
    if isinstance(value, RateRun):
        return {**asdict(value), "writes_per_s": value.writes_per_s}
    if isinstance(value, BacklogRun):
        return {**asdict(value), "arrived_per_s": value.arrived_per_s}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return None
    return value


# -------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> tuple[Config, Path, set[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, about 90 s")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--docs", type=int, help="N: documents for anti-entropy and bootstrap")
    parser.add_argument("--repeats", type=int, help="throughput runs per system (median)")
    parser.add_argument("--ws-docs", type=int, help="documents pycrdt-websocket fetches by room")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    overrides = {
        name: getattr(args, name)
        for name in ("docs", "repeats", "ws_docs")
        if getattr(args, name) is not None
    }
    sections = set(args.sections.split(","))
    if not sections <= set(SECTIONS):
        parser.error(f"--sections: choose from {','.join(SECTIONS)}")
    return replace(cfg, **overrides), args.out, sections


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--role"]:
        ROLES[argv[1]](*argv[2:])
        return 0
    cfg, out_path, sections = parse_args(argv)
    missing = [name for name in REFERENCE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        log(f"error: missing {missing}: pip install pycrdt-websocket hypercorn httpx-ws")
        return 2
    env = environment()
    out: dict[str, Any] = {}
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="crdtdb-bench-sync-"))
    try:
        certs = make_certs(work / "certs", ("eu", "us"))
        if sections & {"bootstrap", "ae"}:
            log(f"source store: region eu with {cfg.docs:,} documents ...")
            out["source_docs_per_s"] = build_source(work / "eu", cfg)
            log(f"  written at {out['source_docs_per_s']:,.0f} docs/s")
        steps: list[tuple[str, Callable[[], None]]] = [
            ("4. bootstrap", lambda: bench_bootstrap(cfg, work, certs, work / "eu", out)),
            (
                "1. anti-entropy",
                lambda: bench_ae(cfg, work, out.get("bootstrap", {}).get("replica"), out),
            ),
            (
                "2-3. lag and throughput",
                lambda: bench_lag_and_rate(cfg, work, certs, sections, out),
            ),
            ("5. large document", lambda: bench_large(cfg, work, out)),
        ]
        wanted = {
            "4. bootstrap": {"bootstrap"},
            "1. anti-entropy": {"ae"},
            "2-3. lag and throughput": {"lag", "rate"},
            "5. large document": {"large"},
        }
        for title, step in steps:
            if wanted[title] & sections:
                log(f"{title} ...")
                begun = time.perf_counter()
                step()
                log(f"{title}: {time.perf_counter() - begun:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env["load_average_after"] = os.getloadavg()
    env["seconds"] = time.perf_counter() - started
    text, checks = report(cfg, out, env)
    print(text)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "sync",
        "config": asdict(cfg),
        "sections": sorted(sections),
        "environment": env,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": jsonable(out),
        "targets": [asdict(c) for c in checks],
    }
    out_path.write_text(json.dumps(document, indent=2) + "\n")
    log(f"results written to {out_path} ({env['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
