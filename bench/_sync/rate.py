"""Sections 2 and 3 over two ``crdtdb serve`` daemons: replication lag at paced write rates,
steady-state replicated updates/s against pycrdt-websocket, and the pipeline's capacity
(a backlog drained)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import Child, free_port, wait_for, wait_until
from _report import log

import crdtdb
from crdtdb import Database
from crdtdb.records import UpdateRecord

from .common import (
    OBSERVER_POLL_S,
    POLL_S,
    BenchError,
    Children,
    Config,
    CpuMeter,
    held,
    pair_configs,
    peer_status,
    percentile,
    read_json,
)


async def arrivals(
    db: Database,
    keep: Callable[[UpdateRecord], bool],
    start_writer: Callable[[], Child],
    finished: Callable[[list[tuple[str, float]]], bool],
    timeout: float,
    children: Children,
) -> list[tuple[str, float]]:
    """(doc_id, wall time seen) of each record of ``db``'s log that ``keep`` accepts.

    The watch starts before the writer, so nothing it writes is missed; it
    stops once ``finished`` says so (bounded by ``timeout``).
    """
    seen: list[tuple[str, float]] = []

    async def follow() -> None:
        async for record in db.watch(poll_interval=OBSERVER_POLL_S):
            if keep(record):
                seen.append((record.doc_id, time.time()))

    task = asyncio.create_task(follow())
    try:
        await asyncio.sleep(0.05)  # the watch has its cursor before the first write
        start_writer()
        await wait_for(
            lambda: finished(seen),
            timeout,
            lambda: f"the writer's records ({len(seen):,} seen)",
            interval=POLL_S,
            check=children.check,
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return seen


@dataclass(slots=True)
class Pair:
    """Two running daemons (eu dials us) and this process's handle on us's directory."""

    children: Children
    work: Path
    eu_dir: Path
    us: Database
    cpu: CpuMeter


def lag_run(pair: Pair, rate: int, per_tx: int, cfg: Config) -> dict[str, Any]:
    count = int(rate * cfg.lag_seconds)
    prefix, result = f"lag{rate}", pair.work / f"lag{rate}.json"
    args = (pair.eu_dir, prefix, rate, count, result, per_tx)
    pair.cpu.start()
    seen = asyncio.run(
        arrivals(
            pair.us,
            lambda r: r.doc_id.startswith(prefix + "/"),
            lambda: pair.children.role(f"writer-lag{rate}", "write-paced", *args),
            lambda seen: len(seen) >= count,
            60 + 3 * cfg.lag_seconds,
            pair.children,
        )
    )
    cpu = pair.cpu.stop()
    wait_until(
        result.exists, 30, "the paced writer's result", interval=POLL_S, check=pair.children.check
    )
    written = read_json(result)
    first_seen: dict[str, float] = {}
    for doc_id, when in seen:
        first_seen.setdefault(doc_id, when)
    lags = [
        (first_seen[f"{prefix}/{i}"] - committed) * 1e3
        for i, committed in enumerate(written["committed"])
    ]
    return {
        "rate": rate,
        "per_tx": per_tx,
        "writes": count,
        "achieved_rate": count / (written["committed"][-1] - written["started"]),
        "p50_ms": percentile(lags, 50),
        "p99_ms": percentile(lags, 99),
        "max_ms": max(lags),
        "commit_ms_p50": statistics.median(written["commit_ms"]),
        "cpu_s": {**cpu, "writer": written["cpu_s"]},
    }


@dataclass(frozen=True, slots=True)
class RateRun:
    """One throughput run: ``writes`` written in ``write_seconds``; arrivals per second of it."""

    writes: int
    write_seconds: float
    arrived_per_s: float
    drained_after_s: float
    cpu_s: dict[str, float]
    """CPU seconds each process used during the run (writer, daemons or server)."""

    @property
    def writes_per_s(self) -> float:
        return self.writes / self.write_seconds

    def cpu_us_per_update(self) -> dict[str, float]:
        return {name: 1e6 * s / self.writes for name, s in self.cpu_s.items()}


def rate_from(arrived: list[float], written: dict[str, Any], cpu: dict[str, float]) -> RateRun:
    """Arrivals per second inside the writing window, after a warm-up (the steady state)."""
    started, ended = written["started"], written["ended"]
    warm = min(0.5, (ended - started) / 4)
    inside = [t for t in arrived if started + warm <= t <= ended]
    return RateRun(
        writes=written["writes"],
        write_seconds=ended - started,
        arrived_per_s=len(inside) / (ended - started - warm),
        drained_after_s=max(arrived) - ended if arrived else float("nan"),
        cpu_s={**cpu, "writer": written["cpu_s"]},
    )


def crdtdb_rate_run(pair: Pair, cfg: Config, repeat: int) -> RateRun:
    doc_id, result = f"rate/{repeat}", pair.work / f"rate{repeat}.json"
    args = (pair.eu_dir, doc_id, cfg.rate_seconds, result)

    def finished(seen: list[tuple[str, float]]) -> bool:
        return result.exists() and len(seen) >= read_json(result)["writes"]

    pair.cpu.start()
    seen = asyncio.run(
        arrivals(
            pair.us,
            lambda r: r.doc_id == doc_id and r.origin == "eu",
            lambda: pair.children.role(f"writer-rate{repeat}", "write-fast", *args),
            finished,
            120 + 10 * cfg.rate_seconds,
            pair.children,
        )
    )
    return rate_from([t for _, t in seen], read_json(result), pair.cpu.stop())


@dataclass(slots=True)
class WsRate:
    """A pycrdt-websocket server counting the updates that arrive in its rooms."""

    children: Children
    work: Path
    server: Child
    port: int
    status: Path
    arrivals: Path
    cpu: list[dict[str, float]] = field(default_factory=list)


def start_ws_rate(children: Children, work: Path, rooms: int) -> WsRate:
    port = free_port()
    ready, status, arrived = (work / f"ws-rate.{x}" for x in ("ready", "status", "arrivals"))
    args = (port, "rate", rooms, "-", ready, status, arrived)
    server = children.role("ws-server-rate", "ws-server", *args)
    wait_until(
        ready.exists, 60, "the pycrdt-websocket server", interval=POLL_S, check=children.check
    )
    return WsRate(children, work, server, port, status, arrived)


def ws_rate_run(ws: WsRate, cfg: Config, repeat: int) -> None:
    """One writer run into room ``repeat``; its arrivals are read when the server stops."""
    result = ws.work / f"ws-rate{repeat}.json"
    meter = CpuMeter({"server": ws.server})
    meter.start()
    writer = ws.children.role(
        f"ws-writer{repeat}", "ws-writer", ws.port, repeat, cfg.rate_seconds, result
    )
    wait_until(
        result.exists,
        120 + 10 * cfg.rate_seconds,
        "the pycrdt-websocket writer",
        interval=POLL_S,
        check=ws.children.check,
    )
    writes = read_json(result)["writes"]

    def arrived() -> bool:
        counts = read_json(ws.status)["counts"] if ws.status.exists() else []
        return len(counts) > repeat and counts[repeat] >= writes

    wait_until(
        arrived, 120, "pycrdt-websocket updates to arrive", interval=POLL_S, check=ws.children.check
    )
    ws.cpu.append(meter.stop())
    result.with_suffix(".close").write_text("close")
    if writer.wait(30) != 0:
        raise BenchError(f"ws-writer failed:\n{writer.tail()}")


def ws_rate_results(ws: WsRate, repeats: int) -> list[RateRun]:
    ws.server.stop()
    per_room = read_json(ws.arrivals)["arrivals"]
    return [
        rate_from(per_room[r], read_json(ws.work / f"ws-rate{r}.json"), ws.cpu[r])
        for r in range(repeats)
    ]


@dataclass(frozen=True, slots=True)
class BacklogRun:
    """One backlog drain: ``records`` in eu's log before its daemon started, then pushed to us."""

    records: int
    written_per_s: float
    """The writer's commit rate while it wrote the backlog (no daemon running in eu)."""
    first_after_s: float
    """From starting eu's daemon to the first record seen in us (start-up, handshake)."""
    drain_s: float
    """From the first record seen in us to the last."""
    first_seen: int
    """Records seen together with the first (one poll): they arrived before the span began."""
    cpu_s: dict[str, float]
    """CPU seconds each daemon used from the first arrival in us to the last."""
    cpu_records: int
    """Records that arrived in that span (the CPU is per one of these)."""
    anti_entropy_repairs: int | None
    """Documents repaired by anti-entropy meanwhile (eu's daemon runs a round on connect)."""

    @property
    def arrived_per_s(self) -> float:
        """Records per second of the drain, those of the first poll excluded."""
        drained = self.records - self.first_seen
        return drained / self.drain_s if drained > 0 else float("nan")

    def cpu_us_per_record(self) -> dict[str, float]:
        per = 1e6 / self.cpu_records if self.cpu_records > 0 else float("nan")
        return {name: s * per for name, s in self.cpu_s.items()}


def backlog_run(
    pair: Pair, eu_config: Path, us_daemon: Child, cfg: Config, repeat: int
) -> BacklogRun:
    """With eu's daemon stopped, write ``cfg.backlog`` records in eu; start it; time the drain."""
    doc_id, result = f"backlog/{repeat}", pair.work / f"backlog{repeat}.json"
    writer = pair.children.role(
        f"writer-backlog{repeat}", "write-count", pair.eu_dir, doc_id, cfg.backlog, result
    )
    if writer.wait(120 + cfg.backlog / 100) != 0:
        raise BenchError(f"the backlog writer failed:\n{writer.tail()}")
    written = read_json(result)
    writes: int = written["writes"]
    launched: list[tuple[Child, float]] = []
    meter: list[tuple[CpuMeter, int]] = []  # started at the first arrival, leaving out start-up

    def launch() -> Child:
        daemon = pair.children.daemon(eu_config, "eu")
        launched.append((daemon, time.time()))
        return daemon

    def finished(seen: list[tuple[str, float]]) -> bool:
        if seen and not meter:
            meter.append(
                (CpuMeter({"daemon eu": launched[0][0], "daemon us": us_daemon}), len(seen))
            )
            meter[0][0].start()
        return len(seen) >= writes

    seen = asyncio.run(
        arrivals(
            pair.us,
            lambda r: r.doc_id == doc_id and r.origin == "eu",
            launch,
            finished,
            120 + cfg.backlog / 100,
            pair.children,
        )
    )
    cpu = meter[0][0].stop()
    eu_daemon, started = launched[0]
    stop_daemon(pair.children, eu_daemon)
    times = sorted(t for _, t in seen)
    return BacklogRun(
        records=written["writes"],
        written_per_s=written["writes"] / (written["ended"] - written["started"]),
        first_after_s=times[0] - started,
        drain_s=times[-1] - times[0],
        first_seen=sum(1 for t in times if t - times[0] < 0.002),
        cpu_s=cpu,
        cpu_records=len(seen) - meter[0][1],
        anti_entropy_repairs=peer_status(pair.eu_dir).get("repairs"),
    )


def stop_daemon(children: Children, daemon: Child) -> None:
    """Stop one daemon cleanly (it writes its status a last time) and forget it."""
    if daemon.stop() != 0:
        raise BenchError(f"{daemon.name} did not exit cleanly:\n{daemon.tail()}")
    children.remove(daemon)


def daemons_summary(eu_dir: Path) -> dict[str, Any]:
    status = peer_status(eu_dir)
    return {
        "anti_entropy_rounds": status.get("rounds"),
        "anti_entropy_repairs": status.get("repairs"),
        "records_received_by_eu": status.get("records_in"),
        "records_written_in_eu": held_now(eu_dir, "eu"),
    }


def bench_lag_and_rate(
    cfg: Config, work: Path, certs: Path, sections: set[str], out: dict[str, Any]
) -> None:
    eu_dir, us_dir = work / "lag-eu", work / "lag-us"
    for region, path in (("eu", eu_dir), ("us", us_dir)):
        crdtdb.open(path, region=region).close()
    configs = pair_configs(work, certs, eu_dir, us_dir)
    with Children(work) as children, crdtdb.open(us_dir) as us:
        daemons = {r: children.daemon(configs[r], r) for r in ("us", "eu")}
        pair = Pair(
            children, work, eu_dir, us, CpuMeter({f"daemon {r}": c for r, c in daemons.items()})
        )
        wait_until(
            lambda: peer_status(eu_dir).get("connected", False),
            60,
            "eu to connect",
            interval=POLL_S,
            check=children.check,
        )
        with crdtdb.open(eu_dir) as eu:
            eu.put("warmup/0", {"ok": True})
        wait_until(
            lambda: us.get("warmup/0") is not None,
            30,
            "the warm-up write",
            interval=POLL_S,
            check=children.check,
        )
        if "lag" in sections:
            out["lag"] = []
            for rate, per_tx in cfg.lag_rates:
                run = lag_run(pair, rate, per_tx, cfg)
                out["lag"].append(run)
                log(
                    f"  lag at {rate:,}/s: p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms"
                    f" (writer achieved {run['achieved_rate']:,.0f}/s)"
                )
        if "rate" in sections:
            ws = start_ws_rate(children, work, cfg.repeats)
            mine = []
            for repeat in range(cfg.repeats):  # interleaved, so load hits both alike
                mine.append(crdtdb_rate_run(pair, cfg, repeat))
                log(f"  crdtdb #{repeat + 1}: {mine[-1].arrived_per_s:,.0f} updates/s arrived")
                ws_rate_run(ws, cfg, repeat)
            theirs = ws_rate_results(ws, cfg.repeats)
            for repeat, theirs_run in enumerate(theirs):
                log(
                    f"  pycrdt-websocket #{repeat + 1}:"
                    f" {theirs_run.arrived_per_s:,.0f} updates/s arrived"
                )
            out["rate"] = {"crdtdb": mine, "pycrdt-websocket": theirs}
            # The backlog runs restart eu's daemon: sum up its first life before.
            stop_daemon(children, daemons["eu"])
            out["lag_daemons"] = daemons_summary(eu_dir)
            out["rate_backlog"] = []
            for repeat in range(cfg.repeats):
                backlog = backlog_run(pair, configs["eu"], daemons["us"], cfg, repeat)
                out["rate_backlog"].append(backlog)
                log(
                    f"  backlog #{repeat + 1}: {backlog.records:,} records drained at"
                    f" {backlog.arrived_per_s:,.0f}/s (written at {backlog.written_per_s:,.0f}/s)"
                )
    if "lag_daemons" not in out:
        out["lag_daemons"] = daemons_summary(eu_dir)


def held_now(path: Path, origin: str) -> int:
    with crdtdb.open(path) as db:
        return held(db, origin)
