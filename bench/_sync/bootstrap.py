"""Section 4, bulk bootstrap: a fresh region's daemon syncing N documents from a populated one,
against pycrdt-websocket fetching the same documents and raw aioquic pushing one stream."""

from __future__ import annotations

import re
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import STATUS_FILE, free_port, wait_until
from _report import log

import crdtdb

from .common import (
    POLL_S,
    PROFILES,
    BenchError,
    Children,
    Config,
    CpuMeter,
    Profile,
    build_source,
    held,
    pair_configs,
    peer_status,
    read_json,
)


@dataclass(slots=True)
class Transfer:
    """One bulk transfer: ``docs`` documents, ``payload`` CRDT bytes, ``wire`` bytes sent."""

    docs: int
    seconds: float
    payload: int
    wire: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.seconds

    @property
    def payload_mb_s(self) -> float:
        return self.payload / self.seconds / 1e6

    @property
    def wire_mb_s(self) -> float | None:
        return None if self.wire is None else self.wire / self.seconds / 1e6


class WireMeter:
    """Sync bytes of one daemon's peer across its sessions (each new session counts from 0).

    Sampled from the daemon's status file (written every second), so the last
    second of a session that dies is missed: a slight undercount then.
    """

    def __init__(self, data: Path) -> None:
        self.data = data
        self.closed = self.last = 0
        self.sampled = 0.0

    def sample(self, every: float = 0.5) -> None:
        if time.monotonic() - self.sampled < every:
            return
        self.sampled = time.monotonic()
        status = peer_status(self.data)
        now = status.get("bytes_in", 0) + status.get("bytes_out", 0)
        if now < self.last:
            self.closed += self.last
        self.last = now

    @property
    def total(self) -> int:
        return self.closed + self.last


def bootstrap_crdtdb(cfg: Config, work: Path, certs: Path, source: Path, fresh: Path) -> Transfer:
    """Start a daemon on an empty region us, then one on the populated eu; time us's catch-up."""
    with crdtdb.open(source) as db:
        target = held(db, "eu")
        payload = sum(len(r.update) for r in db.changes())
    configs = pair_configs(work, certs, source, fresh)
    wire_bytes = WireMeter(fresh)
    with Children(work) as children:
        us_daemon = children.daemon(configs["us"], "us")
        wait_until(
            lambda: (fresh / STATUS_FILE).exists(),
            60,
            "the us daemon to start",
            interval=POLL_S,
            check=children.check,
        )
        with crdtdb.open(fresh) as db, crdtdb.open(source) as src:
            launched = time.perf_counter()
            eu_daemon = children.daemon(configs["eu"], "eu")
            cpu = CpuMeter({"daemon eu": eu_daemon, "daemon us": us_daemon})
            cpu.start()
            firsts: list[float] = []

            def caught_up() -> float | None:
                wire_bytes.sample()
                now, have = time.perf_counter(), held(db, "eu")
                if have and not firsts:
                    firsts.append(now)
                return now if have >= target else None

            done = wait_until(
                caught_up,
                60 + cfg.docs / 200,
                lambda: f"us to hold {target:,} eu records (it holds {held(db, 'eu'):,})",
                interval=POLL_S,
                check=children.check,
            )
            cpu_s = cpu.stop()

            # Anti-entropy may have repaired documents in us while records were still in
            # flight: those repairs are new us records, which flow back to eu. Let them land.
            def flowed_back() -> bool:
                wire_bytes.sample()
                return held(src, "us") >= held(db, "us")

            wait_until(
                flowed_back,
                60 + cfg.docs / 200,
                "eu to hold us's records",
                interval=POLL_S,
                check=children.check,
            )
            repaired_records = held(db, "us")
    wire_bytes.sample(every=0)
    status = peer_status(fresh)
    assert us_daemon.log is not None
    log_text = us_daemon.log.read_text(errors="replace")
    return Transfer(
        docs=cfg.docs,
        seconds=done - firsts[0],
        payload=payload,
        wire=wire_bytes.total,
        extra={
            "seconds_from_daemon_launch": done - launched,
            "records": target,
            "connections": log_text.count("us: connected to eu"),
            "anti_entropy_rounds": status.get("rounds"),
            "anti_entropy_repairs": status.get("repairs"),
            "repair_records_created_in_us": repaired_records,
            "cpu_s": cpu_s,
        },
    )


_BOOTSTRAPPED = re.compile(
    r"bootstrapped from eu's snapshot: (\d+) bytes \((\d+) compressed\) in ([0-9.]+) s"
)


def bootstrap_snapshot(cfg: Config, work: Path, certs: Path, source: Path, fresh: Path) -> Transfer:
    """Start eu's daemon on the populated store, then us's on an empty directory: us pulls a
    snapshot of eu's store (``[sync] bootstrap = "snapshot"``). Timed by us's own log line:
    from dialing eu to the store installed (eu's copy, the transfer, the checks, the link)."""
    with crdtdb.open(source) as db:
        target = held(db, "eu")
        payload = sum(len(r.update) for r in db.changes())
    configs = pair_configs(work, certs, source, fresh, bootstrap="snapshot")
    with Children(work) as children:
        eu_daemon = children.daemon(configs["eu"], "eu")
        wait_until(
            lambda: (source / STATUS_FILE).exists(),
            60,
            "the eu daemon to start",
            interval=POLL_S,
            check=children.check,
        )
        launched = time.perf_counter()
        us_daemon = children.daemon(configs["us"], "us")
        cpu = CpuMeter({"daemon eu": eu_daemon, "daemon us": us_daemon})
        cpu.start()
        assert us_daemon.log is not None
        us_log = us_daemon.log
        found = wait_until(
            lambda: _BOOTSTRAPPED.search(us_log.read_text(errors="replace")),
            120 + cfg.docs / 1_000,
            "us to install eu's snapshot",
            interval=POLL_S,
            check=children.check,
        )
        installed = time.perf_counter()
        cpu_s = cpu.stop()
        with crdtdb.open(fresh) as db:
            have = held(db, "eu")
            docs = len(db.list("bench"))
    if have < target or docs < cfg.docs:
        raise BenchError(f"us holds {have:,} eu records and {docs:,} docs after the snapshot")
    size, packed, seconds = int(found.group(1)), int(found.group(2)), float(found.group(3))
    return Transfer(
        docs=cfg.docs,
        seconds=seconds,
        payload=payload,
        wire=size,
        extra={
            "seconds_from_daemon_launch": installed - launched,
            "records": have,
            "snapshot_bytes": size,
            "compressed_bytes": packed,
            "cpu_s": cpu_s,
        },
    )


def bootstrap_ws(cfg: Config, work: Path, source: Path, mode: str, profile: str) -> Transfer:
    """pycrdt-websocket: a server process holding the documents, a client process fetching them."""
    if mode == "rooms":
        count = min(cfg.docs, cfg.ws_docs)
    else:
        count = cfg.docs if profile == "tiny" else min(cfg.docs, cfg.ws_one_doc_text)
    port = free_port()
    name = f"ws-{mode}-{profile}"
    ready, result = work / f"{name}.ready", work / f"{name}.json"
    with Children(work) as children:
        server_args = (port, mode, count, source, ready, "-", "-", profile)
        children.role(f"{name}-server", "ws-server", *server_args)
        wait_until(
            ready.exists,
            120 + count / 1_000,
            "the pycrdt-websocket server",
            interval=POLL_S,
            check=children.check,
        )
        fetch = children.role(
            f"{name}-fetch", "ws-fetch", port, mode, count, cfg.ws_connections, result
        )
        if fetch.wait(120 + count / 20) != 0:
            raise BenchError(f"ws-fetch failed:\n{fetch.tail()}")
    out = read_json(result)
    return Transfer(docs=out["docs"], seconds=out["seconds"], payload=out["payload"])


def quic_ceiling(cfg: Config, work: Path, certs: Path, runs: int) -> list[Transfer]:
    """Raw aioquic: ``runs`` pushes of one stream of ``ceiling_mb`` MB one way, same TLS and
    defaults."""
    port = free_port()
    ready, result = work / "quic.ready", work / "quic.json"
    with Children(work) as children:
        children.role("quic-sink", "quic-sink", port, certs, ready)
        wait_until(ready.exists, 60, "the aioquic sink", interval=POLL_S, check=children.check)
        source = children.role(
            "quic-source", "quic-source", port, certs, cfg.ceiling_mb, runs, result
        )
        if source.wait(120) != 0:
            raise BenchError(f"quic-source failed:\n{source.tail()}")
    measured: list[tuple[int, float]] = read_json(result)["runs"]
    return [Transfer(docs=0, seconds=s, payload=0, wire=size) for size, s in measured]


def bootstrap_profile(
    cfg: Config, work: Path, certs: Path, source: Path, fresh: Path, profile: Profile
) -> dict[str, Any]:
    """crdtdb and pycrdt-websocket bootstrapping the documents of ``source`` (one profile).

    The aioquic ceiling is pushed just before and just after crdtdb's run (twice
    each): on shared cores it moves with the load by a factor of two from one
    minute to the next, so the share of it is taken against the load crdtdb met.
    """
    before = quic_ceiling(cfg, work, certs, CEILING_RUNS)
    # The snapshot first: once us has synced record by record, eu holds records of us, and a
    # snapshot holding the joining region's own records is refused (it is not new).
    log(f"  {profile.name}: crdtdb daemon us bootstrapping from a snapshot ...")
    snap_dir = fresh.with_name(fresh.name + "-snapshot")
    snap = bootstrap_snapshot(cfg, work, certs, source, snap_dir)
    shutil.rmtree(snap_dir)
    log(
        f"  {profile.name}: snapshot {snap.docs_per_s:,.0f} docs/s,"
        f" {snap.wire_mb_s or 0:.2f} MB/s ({(snap.wire or 0) / 1e6:.1f} MB)"
    )
    log(f"  {profile.name}: crdtdb daemon us bootstrapping {cfg.docs:,} documents ...")
    mine = bootstrap_crdtdb(cfg, work, certs, source, fresh)
    log(f"  {profile.name}: crdtdb {mine.docs_per_s:,.0f} docs/s, {mine.wire_mb_s or 0:.2f} MB/s")
    ceiling = before + quic_ceiling(cfg, work, certs, CEILING_RUNS)
    log(f"  {profile.name}: aioquic ceiling around it: {_median_mb_s(ceiling):.1f} MB/s")
    rooms = bootstrap_ws(cfg, work, source, "rooms", profile.name)
    log(f"  {profile.name}: pycrdt-websocket, a room per doc: {rooms.docs_per_s:,.0f} docs/s")
    one = bootstrap_ws(cfg, work, source, "one-doc", profile.name)
    log(f"  {profile.name}: pycrdt-websocket, one doc: {one.docs_per_s:,.0f} docs/s")
    return {
        "document": profile.shown,
        "crdtdb": mine,
        "snapshot": snap,
        "ws-rooms": rooms,
        "ws-one-doc": one,
        "ceiling": ceiling,
    }


CEILING_RUNS = 2
"""aioquic pushes just before and again just after each profile's crdtdb run."""


def _median_mb_s(runs: list[Transfer]) -> float:
    return statistics.median(t.wire_mb_s or 0 for t in runs)


def bench_bootstrap(
    cfg: Config, work: Path, certs: Path, source: Path, out: dict[str, Any]
) -> None:
    """Every profile, each with its ceiling; the tiny profile's regions are kept for section 1."""
    profiles: dict[str, dict[str, Any]] = {}
    for profile in PROFILES:
        begun = time.perf_counter()
        if profile.name == "tiny":  # main() wrote its source: section 1 uses it too
            eu, us, written = source, work / "us", out.get("source_docs_per_s")
        else:
            eu, us = work / f"eu-{profile.name}", work / f"us-{profile.name}"
            log(f"  {profile.name}: source store, {cfg.docs:,} documents ...")
            written = build_source(eu, cfg, profile.name)
            log(f"  {profile.name}: written at {written:,.0f} docs/s")
        boot = bootstrap_profile(cfg, work, certs, eu, us, profile)
        if profile.name != "tiny":  # free the disk (hundreds of MB at full size)
            shutil.rmtree(eu)
            shutil.rmtree(us)
        seconds = time.perf_counter() - begun
        profiles[profile.name] = {**boot, "source_docs_per_s": written, "seconds": seconds}
        log(f"  {profile.name}: {seconds:.1f} s in all")
    ceiling = [run for results in profiles.values() for run in results["ceiling"]]
    out["bootstrap"] = {"profiles": profiles, "ceiling": ceiling, "replica": work / "us"}
