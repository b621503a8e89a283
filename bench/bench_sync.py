"""Sync benchmark: crdtdb replication against pycrdt-websocket and raw aioquic, in one run.

What it measures (the numbers the replication issue asks for):

1. **anti-entropy efficiency**, in memory (two sans-IO sessions wired together,
   as in ``tests/sync_helpers.py``): two stores of N small documents that
   differ in 1% of them, some changed on one side, some on the other, some by
   deletes only. Bytes on the wire and round trips of one anti-entropy round,
   against the naive exchange of every document's state vector and against
   full state transfer. Merkle roots must be equal afterwards.
2. **replication lag** commit -> visible over loopback QUIC, between two
   ``crdtdb serve`` daemons (subprocesses): an application process writes to
   region eu's directory with the embedded library, paced at 100 and 1,000
   writes/s; this process polls region us's directory.
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

Every number comes from one run of this script on one machine, so they share
its load. Throughput runs are repeated (interleaved across systems) and the
median reported. Everything happens in a temporary directory that is removed
afterwards; every process started is stopped. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gzip
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from _report import table, verdict  # bench/_report.py: this folder is sys.path[0]
from pycrdt import Text

import crdtdb
from crdtdb import Database
from crdtdb.records import UpdateRecord
from crdtdb.sync import wire
from crdtdb.sync.session import SyncSession
from crdtdb.sync.writer import perform_pending

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sync.json"
SCRIPT = Path(__file__).resolve()
STATUS_FILE = "sync-status.json"
OBSERVER_POLL_S = 0.001
"""How often this process looks for new records in region us (adds ~0.5 ms to each lag)."""
NOW = 0.0
"""The in-memory sessions never see time pass: no timer fires during a round."""
AE_TYPES = {"MerkleHashes", "LeafList", "Wants", "Answers", "Fills", "Diffs"}
EMPTY_UPDATE = b"\x00\x00"
REFERENCE_PACKAGES = ("pycrdt.websocket", "hypercorn", "httpx_ws")
TEXT_TRACE = "automerge-paper.json.gz"
"""The editing trace whose final text (104,852 ASCII characters) the text documents are cut from."""
TEXT_CHARS = (2_000, 4_000)
"""Characters of one text document, least to most (about 3 KB of CRDT update on average)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Sizes of one benchmark run."""

    name: str
    """"quick" or "full": recorded in the output."""
    docs: int
    """N: documents in the anti-entropy stores and in the bootstrap."""
    divergent: float = 0.01
    """Fraction of the N documents that differ between the two anti-entropy stores."""
    lag_rates: tuple[int, ...] = (100, 1000)
    """Paced write rates of the lag runs (writes/s)."""
    lag_seconds: float
    """Length of one paced lag run."""
    rate_seconds: float
    """Length of one unpaced throughput run."""
    repeats: int
    """Throughput and ceiling runs per system (median reported)."""
    ws_docs: int
    """Documents pycrdt-websocket bootstraps one room at a time (a sample of the N)."""
    ws_connections: int = 16
    """Concurrent pycrdt-websocket connections in that bootstrap."""
    ws_one_doc_text: int = 20_000
    """Text documents pycrdt-websocket fetches as one document (a sample of the N).

    httpx-ws joins the frames of a message by repeated ``bytes +=``, quadratic in
    its size: 40,000 text documents (123 MB) take 20 s, 100,000 (300 MB) stall.
    """
    ceiling_mb: int
    """MB pushed through one raw aioquic stream for the ceiling."""
    batch: int = 1000
    """Documents per transaction when the source store is written."""
    backlog: int = 20_000
    """One-write records waiting in eu's log when its daemon starts (pipeline capacity)."""


QUICK = Config(
    name="quick",
    docs=10_000,
    lag_seconds=2.0,
    rate_seconds=2.0,
    repeats=1,
    ws_docs=500,
    ceiling_mb=20,
)
FULL = Config(
    name="full",
    docs=100_000,
    lag_seconds=4.0,
    rate_seconds=3.0,
    repeats=3,
    ws_docs=2_000,
    ceiling_mb=50,
    backlog=50_000,
)
SECTIONS = ("bootstrap", "ae", "lag", "rate")


class BenchError(RuntimeError):
    """A benchmark step failed (a child died, a deadline passed, a check did not hold)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def doc_name(i: int) -> str:
    return f"bench/{i}"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, children: Children | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if children is not None:
            children.check()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


# ------------------------------------------------------------------ processes


class Child:
    """A process this benchmark started; its output goes to a file in the work directory."""

    def __init__(self, name: str, argv: list[str], work: Path) -> None:
        self.name = name
        self.log_path = work / f"{name}.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"{self.name} did not finish in {timeout:g} s:\n{self.tail()}"
            ) from None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


class Children:
    """Every child of one step; ``with Children(work) as c:`` stops them all on the way out."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.running: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        for child in reversed(self.running):
            child.stop()

    def start(self, name: str, argv: list[str]) -> Child:
        child = Child(name, argv, self.work)
        self.running.append(child)
        return child

    def role(self, name: str, role: str, *args: object) -> Child:
        """This script run as one of its child roles (see ``ROLES``)."""
        return self.start(name, [sys.executable, str(SCRIPT), "--role", role, *map(str, args)])

    def check(self) -> None:
        """Raise if a child that should be running died."""
        for child in self.running:
            code = child.proc.poll()
            if code is not None and code != 0:
                raise BenchError(f"{child.name} exited with {code}:\n{child.tail()}")


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 for both UDP and TCP right now (held open together, then freed)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    while len(ports) < count:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        held += [udp, tcp]
        ports.append(port)
    for sock in held:
        sock.close()
    return ports


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json(path: Path, value: Any) -> None:
    """Atomically, so a reader polling for the file never sees half of it."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value))
    temporary.replace(path)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process so far (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds that some running children use between ``start()`` and ``stop()``."""

    def __init__(self, children: dict[str, Child]) -> None:
        self.children = children
        self._before: dict[str, float | None] = {}

    def start(self) -> None:
        self._before = {n: cpu_seconds(c.proc.pid) for n, c in self.children.items()}

    def stop(self) -> dict[str, float]:
        used = {}
        for name, child in self.children.items():
            before, after = self._before.get(name), cpu_seconds(child.proc.pid)
            if before is not None and after is not None:
                used[name] = after - before
        return used


# ---------------------------------------------------------- regions and daemons


def make_certs(work: Path) -> Path:
    from crdtdb.sync.certs import init_ca, issue

    certs = work / "certs"
    init_ca(certs)
    for region in ("eu", "us"):
        issue(certs, region)
    return certs


def write_config(work: Path, certs: Path, region: str, data: Path, ports: dict[str, int]) -> Path:
    """A region config with the defaults an operator gets (poll 5 ms, anti-entropy every 2 s)."""
    (peer,) = [r for r in ports if r != region]
    text = "\n".join(
        [
            f"region = {json.dumps(region)}",
            f"data_dir = {json.dumps(str(data))}",
            f'listen = "127.0.0.1:{ports[region]}"',
            "[tls]",
            f"ca = {json.dumps(str(certs / 'ca.pem'))}",
            f"cert = {json.dumps(str(certs / f'{region}.pem'))}",
            f"key = {json.dumps(str(certs / f'{region}.key'))}",
            "[[peers]]",
            f"region = {json.dumps(peer)}",
            f'address = "127.0.0.1:{ports[peer]}"',
            "",
        ]
    )
    path = work / f"{region}-{data.name}.toml"
    path.write_text(text)
    return path


def start_daemon(children: Children, config: Path, region: str) -> Child:
    return children.start(
        f"daemon-{region}-{config.stem}",
        [sys.executable, "-m", "crdtdb", "serve", "--config", str(config)],
    )


def peer_status(data: Path) -> dict[str, Any]:
    """The daemon's status of its one peer (``{}`` until it wrote one)."""
    try:
        peers = read_json(data / STATUS_FILE)["peers"]
    except (OSError, ValueError, KeyError):
        return {}
    return dict(peers[0]) if peers else {}


def held(db: Database, origin: str) -> int:
    """Highest contiguous seq of ``origin`` that ``db`` holds."""
    entry = db.progress().get(origin)
    return entry[1] if entry else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """What each document of a bootstrap holds (section 4 runs every one of ``PROFILES``)."""

    name: str
    """Its key in the output: "tiny" or "text"."""
    shown: str
    """The document as the report describes it."""


PROFILES = (
    Profile(name="tiny", shown='{"n": i, "tag": "t"}'),
    Profile(
        name="text",
        shown=f'{{"n": i, "body": Text(...)}}, {TEXT_CHARS[0]:,}-{TEXT_CHARS[1]:,} characters of'
        f" {TEXT_TRACE.removesuffix('.json.gz')}'s final text",
    ),
)


@functools.cache
def paper_text() -> str:
    """The final text of a real paper (josephg/editing-traces, CC BY 4.0; see its README)."""
    shared = SCRIPT.parents[2] / "shared"
    if not shared.is_dir():
        shared = Path("/work/shared")
    path = shared / "data" / "editing-traces" / TEXT_TRACE
    if not path.is_file():
        raise BenchError(
            f"the text documents are cut from {path}, which is missing: restore the shared"
            " test data (josephg/editing-traces, CC BY 4.0) or run --sections without bootstrap"
        )
    text: str = json.loads(gzip.decompress(path.read_bytes()))["endContent"]
    return text


def doc_value(profile: str, i: int) -> dict[str, Any]:
    """Document ``i`` of a profile, for ``tx.put`` or a pycrdt ``Map`` (new objects each call).

    A text document is one slice of the paper, of a length and at an offset that
    vary with ``i`` (multiplying by primes spreads them), inserted as one
    ``Text``: a document written at once, not typed, as a document DB mostly
    receives them.
    """
    if profile == "tiny":
        return {"n": i, "tag": "t"}
    paper, low, high = paper_text(), *TEXT_CHARS
    size = low + i * 7_919 % (high - low + 1)
    start = i * 104_729 % (len(paper) - size)
    return {"n": i, "body": Text(paper[start : start + size])}


def build_source(path: Path, cfg: Config, profile: str = "tiny") -> float:
    """Region eu with N documents of ``profile``, ``cfg.batch`` a transaction; returns docs/s."""
    start = time.perf_counter()
    with crdtdb.open(path, region="eu") as db:
        for first in range(0, cfg.docs, cfg.batch):
            with db.transaction() as tx:
                for i in range(first, min(cfg.docs, first + cfg.batch)):
                    tx.put(doc_name(i), doc_value(profile, i))
        db.merkle_root()  # digests computed once here, not during a measurement
    return cfg.docs / (time.perf_counter() - start)


# ------------------------------------------------------------- 4. bootstrap


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
    ports = dict(zip(("eu", "us"), free_ports(2), strict=True))
    configs = {
        r: write_config(work, certs, r, d, ports) for r, d in (("eu", source), ("us", fresh))
    }
    wire_bytes = WireMeter(fresh)
    with Children(work) as children:
        us_daemon = start_daemon(children, configs["us"], "us")
        wait_for(lambda: (fresh / STATUS_FILE).exists(), 60, "the us daemon to start", children)
        with crdtdb.open(fresh) as db, crdtdb.open(source) as src:
            launched = time.perf_counter()
            eu_daemon = start_daemon(children, configs["eu"], "eu")
            cpu = CpuMeter({"daemon eu": eu_daemon, "daemon us": us_daemon})
            cpu.start()
            first = done = None
            deadline = launched + 60 + cfg.docs / 200
            while done is None:
                children.check()
                wire_bytes.sample()
                now, have = time.perf_counter(), held(db, "eu")
                if first is None and have:
                    first = now
                if have >= target:
                    done, cpu_s = now, cpu.stop()
                if now > deadline:
                    raise BenchError(f"bootstrap: us holds {have:,} of {target:,} eu records")
                time.sleep(0.01)

            # Anti-entropy may have repaired documents in us while records were still in
            # flight: those repairs are new us records, which flow back to eu. Let them land.
            def flowed_back() -> bool:
                wire_bytes.sample()
                return held(src, "us") >= held(db, "us")

            wait_for(flowed_back, 60 + cfg.docs / 200, "eu to hold us's records", children)
            repaired_records = held(db, "us")
    wire_bytes.sample(every=0)
    status = peer_status(fresh)
    log_text = us_daemon.log_path.read_text(errors="replace")
    assert first is not None
    return Transfer(
        docs=cfg.docs,
        seconds=done - first,
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


def bootstrap_ws(cfg: Config, work: Path, source: Path, mode: str, profile: str) -> Transfer:
    """pycrdt-websocket: a server process holding the documents, a client process fetching them."""
    if mode == "rooms":
        count = min(cfg.docs, cfg.ws_docs)
    else:
        count = cfg.docs if profile == "tiny" else min(cfg.docs, cfg.ws_one_doc_text)
    (port,) = free_ports(1)
    name = f"ws-{mode}-{profile}"
    ready, result = work / f"{name}.ready", work / f"{name}.json"
    with Children(work) as children:
        server_args = (port, mode, count, source, ready, "-", "-", profile)
        children.role(f"{name}-server", "ws-server", *server_args)
        wait_for(ready.exists, 120 + count / 1_000, "the pycrdt-websocket server", children)
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
    (port,) = free_ports(1)
    ready, result = work / "quic.ready", work / "quic.json"
    with Children(work) as children:
        children.role("quic-sink", "quic-sink", port, certs, ready)
        wait_for(ready.exists, 60, "the aioquic sink", children)
        source = children.role(
            "quic-source", "quic-source", port, certs, cfg.ceiling_mb, runs, result
        )
        if source.wait(120) != 0:
            raise BenchError(f"quic-source failed:\n{source.tail()}")
    runs = read_json(result)["runs"]
    return [Transfer(docs=0, seconds=s, payload=0, wire=size) for size, s in runs]


def bootstrap_profile(
    cfg: Config, work: Path, certs: Path, source: Path, fresh: Path, profile: Profile
) -> dict[str, Any]:
    """crdtdb and pycrdt-websocket bootstrapping the documents of ``source`` (one profile).

    The aioquic ceiling is pushed just before and just after crdtdb's run (twice
    each): on shared cores it moves with the load by a factor of two from one
    minute to the next, so the share of it is taken against the load crdtdb met.
    """
    before = quic_ceiling(cfg, work, certs, CEILING_RUNS)
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


# ---------------------------------------------------------- 1. anti-entropy


class Unpushed:
    """A store as a session sees it, without its log: the round alone must repair.

    The record push would otherwise deliver the divergent edits before
    anti-entropy looks; in production anti-entropy repairs what the push
    missed, which is what is set up here.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def records_from(self, origin: str, after_seq: int, limit: int = 1000) -> list[UpdateRecord]:
        return []


def frames(data: bytes) -> Iterator[tuple[str, int]]:
    """(message type name, frame bytes) of each whole frame in ``data``."""
    pos = 0
    while pos < len(data):
        size = wire.HEADER_BYTES + int.from_bytes(data[pos + 4 : pos + 8], "big")
        yield wire.MESSAGE_TYPES[data[pos + 3]].__name__, size
        pos += size


class Link:
    """Two sans-IO sessions wired in memory, in lock step (after ``tests/sync_helpers.Link``).

    Each step delivers what the dialer has to the listener, then the listener's
    answer back: so every listener flight answers the dialer's flight of the same
    step, and counts as one wait of the dialer (one round trip).
    """

    def __init__(self, dialer: Any, listener: Any) -> None:
        self.a = SyncSession(dialer, dialer=True, now=NOW)
        self.b = SyncSession(listener, dialer=False, now=NOW)
        self.stores = ((self.a, dialer), (self.b, listener))
        self.bytes: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self.waits = 0
        self.flights = 0

    def _tally(self, data: bytes) -> bool:
        ae = False
        for kind, size in frames(data):
            self.bytes[kind] += size
            self.messages[kind] += 1
            ae = ae or kind in AE_TYPES
        self.flights += ae
        return ae

    def perform(self) -> None:
        """The store writes the sessions ask for, at once (a node does them in a thread)."""
        for session, store in self.stores:
            perform_pending(session, store, NOW)

    def step(self) -> bool:
        self.perform()
        out_a = self.a.data_to_send(NOW)
        if out_a:
            self._tally(out_a)
            self.b.receive(out_a, NOW)
            self.perform()
        out_b = self.b.data_to_send(NOW)
        if out_b:
            self.waits += self._tally(out_b)
            self.a.receive(out_b, NOW)
            self.perform()
        return bool(out_a or out_b)

    def settle(self, max_steps: int = 10_000) -> None:
        for _ in range(max_steps):
            if not self.step():
                return
        raise BenchError("the in-memory link did not settle")

    def reset(self) -> None:
        self.bytes.clear()
        self.messages.clear()
        self.waits = self.flights = 0


def make_replica_by_apply(source: Path, dest: Path, limit: int | None = None) -> float:
    """Region us made by ``apply_remote`` of each eu record (the alternative); returns records/s."""
    start, count = time.perf_counter(), 0
    with crdtdb.open(source) as src, crdtdb.open(dest, region="us") as db:
        for record in src.changes(limit=limit):
            db.apply_remote(record)
            count += 1
    return count / (time.perf_counter() - start)


def converge(eu: Database, us: Database) -> None:
    """Push and one round both ways until the stores are equal (setup, not measured)."""
    link = Link(eu, us)
    link.settle()
    link.a.start_round(NOW)
    link.settle()
    if eu.merkle_root() != us.merkle_root():
        raise BenchError("setup: the two anti-entropy stores did not converge")


def diverge(eu: Database, us: Database, cfg: Config) -> dict[str, list[str]]:
    """Make ``divergent`` of the documents differ: changed in eu, in us, deletes only in each."""
    rng = random.Random(7)
    count = max(8, round(cfg.docs * cfg.divergent))
    chosen = [doc_name(i) for i in rng.sample(range(cfg.docs), count)]
    third = count * 3 // 10
    groups = {
        "changed in eu": chosen[:third],
        "changed in us": chosen[third : 2 * third],
        "deletes only in eu": chosen[2 * third : 2 * third + (count - 2 * third) // 2],
        "deletes only in us": chosen[2 * third + (count - 2 * third) // 2 :],
    }
    for name, ids in groups.items():
        db = eu if name.endswith("eu") else us
        with db.transaction() as tx:
            for j, doc_id in enumerate(ids):
                if name.startswith("changed"):
                    tx.doc(doc_id)["n"] = -j  # a new item: the state vector grows
                elif j % 2:
                    del tx.doc(doc_id)["tag"]  # a field delete: the state vector stays
                else:
                    tx.delete(doc_id)  # a whole-document delete: the state vector stays
    return groups


def encoded_size(kind: type[wire.Message], docs: list[tuple[str, bytes]]) -> int:
    """Wire bytes of ``docs`` sent as ``kind`` messages of at most 10,000 documents each."""
    step = 10_000
    return sum(len(wire.encode(kind(tuple(docs[i : i + step])))) for i in range(0, len(docs), step))


def bench_ae(cfg: Config, work: Path, replica: Path | None, out: dict[str, Any]) -> None:
    source = work / "eu"
    sample = min(cfg.docs, 2_000)
    rate = make_replica_by_apply(source, work / "apply-probe", limit=sample)
    log(f"  apply_remote of eu's records into a new region: {rate:,.0f} records/s")
    setup: dict[str, Any] = {"apply_remote_per_s": rate}
    if replica is None:  # no bootstrap in this run: make region us record by record
        replica = work / "us"
        start = time.perf_counter()
        make_replica_by_apply(source, replica)
        setup["replica"] = f"apply_remote of every eu record, {time.perf_counter() - start:.1f} s"
    else:
        setup["replica"] = "the bootstrap's region us (QUIC, section 4)"
    log(f"  region us: {setup['replica']}")
    with crdtdb.open(source) as eu, crdtdb.open(replica) as us:
        converge(eu, us)
        groups = diverge(eu, us, cfg)
        (
            eu.merkle_root(),
            us.merkle_root(),
        )  # digests of the edits: computed at commit time's next read
        # what the naive exchange sends once it has the state vectors: each side's
        # diff of every divergent document against the other's state vector
        naive_diffs = [
            (d, mine.diff(d, theirs.state_vector(d)))
            for ids in groups.values()
            for d in ids
            for mine, theirs in ((eu, us), (us, eu))
        ]
        link = Link(Unpushed(eu), Unpushed(us))
        link.settle()  # handshake and frontier gossip: not part of the round
        link.reset()
        start = time.perf_counter()
        link.a.start_round(NOW)
        link.settle()
        seconds = time.perf_counter() - start
        equal = eu.merkle_root() == us.merkle_root()
        values_equal = all(
            json.dumps(eu.get(d), sort_keys=True) == json.dumps(us.get(d), sort_keys=True)
            for ids in groups.values()
            for d in ids
        )
        names = [doc_name(i) for i in range(cfg.docs)]
        state_vectors = [(d, eu.state_vector(d)) for d in names]
        full = [(d, eu.diff(d)) for d in names] + [(d, us.diff(d)) for d in names]
        rounds = (link.a.rounds, link.b.rounds)
    ae_bytes = sum(size for kind, size in link.bytes.items() if kind in AE_TYPES)
    naive = encoded_size(wire.Diffs, state_vectors) + encoded_size(wire.Diffs, naive_diffs)
    out["ae"] = {
        "setup": setup,
        "groups": {name: len(ids) for name, ids in groups.items()},
        "divergent": sum(len(ids) for ids in groups.values()),
        "bytes": ae_bytes,
        "bytes_by_type": dict(link.bytes),
        "messages_by_type": dict(link.messages),
        "round_trips": link.waits,
        "one_way_flights": link.flights,
        "seconds": seconds,
        "repaired": link.a.repairs + link.b.repairs,
        "rounds_finished": rounds,
        "roots_equal": equal,
        "values_equal": values_equal,
        "naive_bytes": naive,
        "full_bytes": encoded_size(wire.Diffs, full),
        "round_trip_limit": math.log(cfg.docs, 16) + 2,
    }
    log(
        f"  round: {ae_bytes:,} bytes, {link.waits} round trips, {seconds:.2f} s;"
        f" naive {naive:,} bytes; roots equal: {equal}"
    )
    if not (equal and values_equal):
        raise BenchError("anti-entropy: the stores differ after the round")


# ----------------------------------------------------- 2. lag, 3. throughput


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
        deadline = time.monotonic() + timeout
        while not finished(seen):
            children.check()
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:g} s; {len(seen):,} records seen")
            await asyncio.sleep(0.01)
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


def lag_run(pair: Pair, rate: int, cfg: Config) -> dict[str, Any]:
    count = int(rate * cfg.lag_seconds)
    prefix, result = f"lag{rate}", pair.work / f"lag{rate}.json"
    args = (pair.eu_dir, prefix, rate, count, result)
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
    wait_for(result.exists, 30, "the paced writer's result", pair.children)
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
    (port,) = free_ports(1)
    ready, status, arrived = (work / f"ws-rate.{x}" for x in ("ready", "status", "arrivals"))
    args = (port, "rate", rooms, "-", ready, status, arrived)
    server = children.role("ws-server-rate", "ws-server", *args)
    wait_for(ready.exists, 60, "the pycrdt-websocket server", children)
    return WsRate(children, work, server, port, status, arrived)


def ws_rate_run(ws: WsRate, cfg: Config, repeat: int) -> None:
    """One writer run into room ``repeat``; its arrivals are read when the server stops."""
    result = ws.work / f"ws-rate{repeat}.json"
    meter = CpuMeter({"server": ws.server})
    meter.start()
    writer = ws.children.role(
        f"ws-writer{repeat}", "ws-writer", ws.port, repeat, cfg.rate_seconds, result
    )
    wait_for(result.exists, 120 + 10 * cfg.rate_seconds, "the pycrdt-websocket writer", ws.children)
    writes = read_json(result)["writes"]

    def arrived() -> bool:
        counts = read_json(ws.status)["counts"] if ws.status.exists() else []
        return len(counts) > repeat and counts[repeat] >= writes

    wait_for(arrived, 120, "pycrdt-websocket updates to arrive", ws.children)
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
    launched: list[tuple[Child, float]] = []
    meter: list[tuple[CpuMeter, int]] = []  # started at the first arrival, leaving out start-up

    def launch() -> Child:
        daemon = start_daemon(pair.children, eu_config, "eu")
        launched.append((daemon, time.time()))
        return daemon

    def finished(seen: list[tuple[str, float]]) -> bool:
        if seen and not meter:
            meter.append(
                (CpuMeter({"daemon eu": launched[0][0], "daemon us": us_daemon}), len(seen))
            )
            meter[0][0].start()
        return len(seen) >= written["writes"]

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
    children.running.remove(daemon)


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
    ports = dict(zip(("eu", "us"), free_ports(2), strict=True))
    configs = {
        r: write_config(work, certs, r, d, ports) for r, d in (("eu", eu_dir), ("us", us_dir))
    }
    with Children(work) as children, crdtdb.open(us_dir) as us:
        daemons = {r: start_daemon(children, configs[r], r) for r in ("us", "eu")}
        pair = Pair(
            children, work, eu_dir, us, CpuMeter({f"daemon {r}": c for r, c in daemons.items()})
        )
        wait_for(lambda: peer_status(eu_dir).get("connected", False), 60, "eu to connect", children)
        with crdtdb.open(eu_dir) as eu:
            eu.put("warmup/0", {"ok": True})
        wait_for(lambda: us.get("warmup/0") is not None, 30, "the warm-up write", children)
        if "lag" in sections:
            out["lag"] = []
            for rate in cfg.lag_rates:
                run = lag_run(pair, rate, cfg)
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
                run = backlog_run(pair, configs["eu"], daemons["us"], cfg, repeat)
                out["rate_backlog"].append(run)
                log(
                    f"  backlog #{repeat + 1}: {run.records:,} records drained at"
                    f" {run.arrived_per_s:,.0f}/s (written at {run.written_per_s:,.0f}/s)"
                )
    if "lag_daemons" not in out:
        out["lag_daemons"] = daemons_summary(eu_dir)


def held_now(path: Path, origin: str) -> int:
    with crdtdb.open(path) as db:
        return held(db, origin)


# ------------------------------------------------------------------ child roles


def role_write_paced(eu_dir: str, prefix: str, rate: str, count: str, result: str) -> None:
    """Write ``count`` documents at ``rate``/s; record each commit's wall time (after commit)."""
    per_s, n = float(rate), int(count)
    committed, commit_ms = [], []
    with crdtdb.open(eu_dir) as db:
        started, cpu = time.time() + 0.05, time.process_time()
        for i in range(n):
            delay = started + i / per_s - time.time()
            if delay > 0:
                time.sleep(delay)
            before = time.time()
            db.put(f"{prefix}/{i}", {"i": i, "t": before})
            done = time.time()
            committed.append(done)
            commit_ms.append((done - before) * 1e3)
    write_json(
        Path(result),
        {
            "started": started,
            "committed": committed,
            "commit_ms": commit_ms,
            "cpu_s": time.process_time() - cpu,
        },
    )


def role_write_fast(eu_dir: str, doc_id: str, seconds: str, result: str) -> None:
    """One-write transactions on one document, as fast as they go, for ``seconds``."""
    budget, i = float(seconds), 0
    with crdtdb.open(eu_dir) as db:
        started, cpu = time.time(), time.process_time()
        while time.time() - started < budget:
            for _ in range(10):
                db.update(doc_id, {f"k{i % 50}": i})
                i += 1
        ended = time.time()
    write_json(
        Path(result),
        {"started": started, "ended": ended, "writes": i, "cpu_s": time.process_time() - cpu},
    )


def role_write_count(eu_dir: str, doc_id: str, count: str, result: str) -> None:
    """``count`` one-write transactions on one document, as fast as they go."""
    with crdtdb.open(eu_dir) as db:
        started, cpu = time.time(), time.process_time()
        for i in range(int(count)):
            db.update(doc_id, {f"k{i % 50}": i})
        ended = time.time()
    write_json(
        Path(result),
        {
            "started": started,
            "ended": ended,
            "writes": int(count),
            "cpu_s": time.process_time() - cpu,
        },
    )


def role_ws_server(
    port: str,
    mode: str,
    count: str,
    source: str,
    ready: str,
    status: str,
    result: str = "-",
    profile: str = "tiny",
) -> None:
    args = (int(port), mode, int(count), source, Path(ready), status, result, profile)
    asyncio.run(_ws_server(*args))


async def _ws_server(
    port: int,
    mode: str,
    count: int,
    source: str,
    ready: Path,
    status: str,
    result: str,
    profile: str,
) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HypercornConfig
    from pycrdt import Map, TransactionEvent
    from pycrdt.websocket import ASGIServer, WebsocketServer

    server = WebsocketServer(auto_clean_rooms=False)
    arrived: list[list[float]] = [[] for _ in range(count if mode == "rate" else 0)]

    def counter(times: list[float]) -> Callable[[TransactionEvent], None]:
        def on_update(event: TransactionEvent) -> None:
            if event.update != EMPTY_UPDATE:
                times.append(time.time())

        return on_update

    async with server:
        if mode == "rate":  # one room per repeat, each counting the updates applied to it
            for repeat, times in enumerate(arrived):
                (await server.get_room(f"/rate/{repeat}")).ydoc.observe(counter(times))
        elif mode == "rooms":  # one room per document, holding crdtdb's exact CRDT state
            with crdtdb.open(source) as db:
                for i in range(count):
                    (await server.get_room(f"/{doc_name(i)}")).ydoc.apply_update(
                        db.diff(doc_name(i))
                    )
        else:  # "one-doc": the same documents as entries of one document
            doc = (await server.get_room("/all")).ydoc
            root = doc.get("docs", type=Map)
            with doc.transaction():
                for i in range(count):
                    root[doc_name(i)] = Map(doc_value(profile, i))
        config = HypercornConfig()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = config.errorlog = None
        config.websocket_max_message_size = 1 << 30
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        async def report() -> None:
            while not stop.is_set():
                if status != "-":
                    write_json(Path(status), {"counts": [len(times) for times in arrived]})
                await asyncio.sleep(0.1)

        reporter = asyncio.create_task(report())
        serving = asyncio.create_task(serve(ASGIServer(server), config, shutdown_trigger=stop.wait))
        await asyncio.sleep(0.3)
        ready.write_text("ready")
        await serving
        await reporter
    if result != "-":
        write_json(Path(result), {"arrivals": arrived})


def role_ws_writer(port: str, repeat: str, seconds: str, result: str) -> None:
    asyncio.run(_ws_writer(int(port), int(repeat), float(seconds), Path(result)))


async def _ws_writer(port: int, repeat: int, seconds: float, result: Path) -> None:
    """One update per transaction, so one message per update; yield to the sender after each."""
    import httpx
    from httpx_ws import aconnect_ws
    from pycrdt import Doc, Map, Provider
    from pycrdt.websocket.websocket import HttpxWebsocket

    path = f"/rate/{repeat}"
    doc: Doc[Any] = Doc()
    root = doc.get("data", type=Map)
    async with (
        httpx.AsyncClient() as client,
        aconnect_ws(f"http://127.0.0.1:{port}{path}", client) as websocket,
    ):
        async with Provider(doc, HttpxWebsocket(websocket, path)) as provider:
            await provider.synced.wait()
            i, started, cpu = 0, time.time(), time.process_time()
            while time.time() - started < seconds:
                for _ in range(10):
                    root[f"k{i % 50}"] = i
                    i += 1
                    await asyncio.sleep(0)
            ended = time.time()
        # leaving the provider sends every queued update (counted in the CPU time too)
        write_json(
            result,
            {"started": started, "ended": ended, "writes": i, "cpu_s": time.process_time() - cpu},
        )
        # Closing the websocket right away loses the last updates still on their way into
        # the server, so the parent says when they have all arrived.
        deadline = time.monotonic() + 120
        while not result.with_suffix(".close").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


def role_ws_fetch(port: str, mode: str, count: str, connections: str, result: str) -> None:
    asyncio.run(_ws_fetch(int(port), mode, int(count), int(connections), Path(result)))


async def _ws_fetch(port: int, mode: str, count: int, connections: int, result: Path) -> None:
    import httpx
    from httpx_ws import aconnect_ws
    from pycrdt import Doc, Map, Provider
    from pycrdt.websocket.websocket import HttpxWebsocket

    async def fetch(client: httpx.AsyncClient, path: str) -> Doc[Any]:
        doc: Doc[Any] = Doc()
        url = f"http://127.0.0.1:{port}{path}"
        async with (
            aconnect_ws(url, client, max_message_size_bytes=1 << 30) as websocket,
            Provider(doc, HttpxWebsocket(websocket, path)) as provider,
        ):
            await provider.synced.wait()
        return doc

    payload = docs = 0
    async with httpx.AsyncClient(timeout=120) as client:
        started = time.time()
        if mode == "one-doc":
            doc = await fetch(client, "/all")
            docs = len(doc.get("docs", type=Map))
            payload = len(doc.get_update())
        else:
            queue = [f"/{doc_name(i)}" for i in range(count)]

            async def worker() -> None:
                nonlocal payload, docs
                while queue:
                    doc = await fetch(client, queue.pop())
                    payload += len(doc.get_update())
                    docs += doc.get("data", type=Map).get("n") is not None

            await asyncio.gather(*(worker() for _ in range(connections)))
        seconds = time.time() - started
    if docs != count:
        raise SystemExit(f"fetched {docs} documents with content, expected {count}")
    write_json(result, {"docs": docs, "seconds": seconds, "payload": payload})


def _quic_configuration(certs: Path, *, client: bool) -> Any:
    """The same TLS files and QUIC defaults as ``crdtdb.sync.transport``."""
    import ssl

    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(
        is_client=client,
        alpn_protocols=["crdtdb/1"],
        idle_timeout=20.0,
        max_datagram_frame_size=None,
    )
    region = "us" if client else "eu"
    config.load_cert_chain(certs / f"{region}.pem", certs / f"{region}.key")
    if client:
        config.load_verify_locations(cafile=str(certs / "ca.pem"))
        config.verify_mode = ssl.CERT_REQUIRED
        config.server_name = "eu.crdtdb"
    return config


def role_quic_sink(port: str, certs: str, ready: str) -> None:
    asyncio.run(_quic_sink(int(port), Path(certs), Path(ready)))


async def _quic_sink(port: int, certs: Path, ready: Path) -> None:
    """Count each stream's bytes; at its end, answer with the count and close that stream."""
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import serve
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    class Sink(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.received: Counter[int] = Counter()

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived):
                self.received[event.stream_id] += len(event.data)
                if event.end_stream:
                    answer = str(self.received.pop(event.stream_id)).encode()
                    self._quic.send_stream_data(event.stream_id, answer, end_stream=True)
                    self.transmit()

    server = await serve(
        "127.0.0.1",
        port,
        configuration=_quic_configuration(certs, client=False),
        create_protocol=Sink,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    ready.write_text("ready")
    await stop.wait()
    server.close()


def role_quic_source(port: str, certs: str, mb: str, repeats: str, result: str) -> None:
    asyncio.run(_quic_source(int(port), Path(certs), int(mb), int(repeats), Path(result)))


async def _quic_source(port: int, certs: Path, mb: int, repeats: int, result: Path) -> None:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    class Source(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.answers: dict[int, asyncio.Future[bytes]] = {}

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived) and event.end_stream:
                self.answers[event.stream_id].set_result(event.data)

        async def push(self, data: bytes) -> int:
            stream = self._quic.get_next_available_stream_id()
            self.answers[stream] = asyncio.get_running_loop().create_future()
            self._quic.send_stream_data(stream, data, end_stream=True)
            self.transmit()
            return int(await self.answers[stream])

    data = os.urandom(1 << 20) * mb
    runs = []
    async with connect(
        "127.0.0.1",
        port,
        configuration=_quic_configuration(certs, client=True),
        create_protocol=Source,
    ) as protocol:
        assert isinstance(protocol, Source)
        for _ in range(repeats):
            started = time.perf_counter()
            received = await asyncio.wait_for(protocol.push(data), 120)
            runs.append((received, time.perf_counter() - started))
            if received != len(data):
                raise SystemExit(f"the sink got {received} bytes of {len(data)}")
    write_json(result, {"runs": runs})


ROLES: dict[str, Callable[..., None]] = {
    "write-paced": role_write_paced,
    "write-fast": role_write_fast,
    "write-count": role_write_count,
    "ws-server": role_ws_server,
    "ws-writer": role_ws_writer,
    "ws-fetch": role_ws_fetch,
    "quic-sink": role_quic_sink,
    "quic-source": role_quic_source,
}
"""What a child process started by this script runs: ``bench_sync.py --role NAME ARGS...``."""


# ------------------------------------------------------------------ report


@dataclass(frozen=True, slots=True)
class Check:
    """One target of the issue: what was measured against the threshold."""

    name: str
    value: float
    threshold: float
    shown: str
    met: bool


def ae_report(ae: dict[str, Any], cfg: Config, checks: list[Check]) -> list[str]:
    groups = ", ".join(f"{n} {name}" for name, n in ae["groups"].items())
    naive, full, mine = ae["naive_bytes"], ae["full_bytes"], ae["bytes"]
    rows = [
        [
            "crdtdb anti-entropy round",
            f"{mine:,}",
            f"{mine / naive:.1%}",
            f"{mine / full:.1%}",
            str(ae["round_trips"]),
            str(ae["one_way_flights"]),
        ],
        [
            "naive: all (doc_id, sv) + diffs",
            f"{naive:,}",
            "100.0%",
            f"{naive / full:.1%}",
            "1",
            "2",
        ],
        ["full state transfer, both ways", f"{full:,}", f"{full / naive:.1%}", "100.0%", "1", "2"],
    ]
    parts = ", ".join(
        f"{kind} {ae['bytes_by_type'][kind]:,} B/{ae['messages_by_type'][kind]}"
        for kind in sorted(ae["bytes_by_type"])
        if kind in AE_TYPES
    )
    share = mine / naive
    limit = ae["round_trip_limit"]
    checks.append(
        Check("anti-entropy bytes <= 5% of naive", share, 0.05, f"{share:.1%}", share <= 0.05)
    )
    checks.append(
        Check(
            f"anti-entropy round trips <= log16(N)+2 = {limit:.2f}",
            ae["round_trips"],
            limit,
            str(ae["round_trips"]),
            ae["round_trips"] <= limit,
        )
    )
    return [
        f"1. anti-entropy, in memory: N={cfg.docs:,}, {ae['divergent']:,} divergent ({groups})",
        table(["exchange", "bytes", "vs naive", "vs full", "round trips", "one-way flights"], rows),
        f"   round: {parts}",
        f"   {ae['repaired']:,} documents repaired in {ae['seconds']:.2f} s (wall time, both"
        f" stores in this process); Merkle roots equal after: {ae['roots_equal']}; region us"
        f" made by {ae['setup']['replica']} (apply_remote would run at"
        f" {ae['setup']['apply_remote_per_s']:,.0f} records/s)",
    ]


def cpu_text(cpu_s: dict[str, float], per: float, unit: str) -> str:
    return ", ".join(f"{name} {s / per:{unit}}" for name, s in sorted(cpu_s.items()))


def lag_report(lag: list[dict[str, Any]], cfg: Config, checks: list[Check]) -> list[str]:
    rows = [
        [
            f"{run['rate']:,}/s",
            f"{run['achieved_rate']:,.0f}/s",
            f"{run['writes']:,}",
            f"{run['p50_ms']:.1f}",
            f"{run['p99_ms']:.1f}",
            f"{run['max_ms']:.1f}",
            f"{run['commit_ms_p50']:.2f}",
        ]
        for run in lag
    ]
    for run in lag:
        if run["rate"] == 1000:
            p99 = run["p99_ms"]
            checks.append(
                Check("lag p99 <= 20 ms at 1,000 writes/s", p99, 20, f"{p99:.1f} ms", p99 <= 20)
            )
    cpu = [
        f"   CPU per write at {run['rate']:,}/s (us, daemons include their idle work):"
        f" {cpu_text(run['cpu_s'], run['writes'] / 1e6, ',.0f')}"
        for run in lag
    ]
    return [
        "2. replication lag, commit -> visible in us (two `crdtdb serve` daemons, QUIC loopback)",
        table(
            ["paced at", "achieved", "writes", "p50 ms", "p99 ms", "max ms", "commit ms p50"], rows
        ),
        *cpu,
    ]


def median_of(runs: list[RateRun], value: Callable[[RateRun], float]) -> float:
    return statistics.median(value(run) for run in runs)


def rate_report(rate: dict[str, list[RateRun]], checks: list[Check]) -> list[str]:
    labels = {
        "crdtdb": "crdtdb eu -> us (daemons, QUIC)",
        "pycrdt-websocket": "pycrdt-websocket client -> server",
    }
    arrived = {s: median_of(runs, lambda r: r.arrived_per_s) for s, runs in rate.items()}
    rows = [
        [
            labels[system],
            f"{arrived[system]:,.0f}",
            f"{median_of(runs, lambda r: r.writes_per_s):,.0f}",
            f"{median_of(runs, lambda r: r.drained_after_s):.2f}",
            f"{arrived[system] / arrived['pycrdt-websocket']:.2f}x",
        ]
        for system, runs in rate.items()
    ]
    ratio = arrived["crdtdb"] / arrived["pycrdt-websocket"]
    checks.append(
        Check(
            "replicated updates/s >= 10x pycrdt-websocket",
            ratio,
            10,
            f"{ratio:.2f}x",
            ratio >= 10,
        )
    )
    cpu = [
        f"   CPU per update written, {system} (us, median): "
        + ", ".join(
            f"{name} {statistics.median(r.cpu_us_per_update().get(name, 0) for r in runs):.0f}"
            for name in sorted(runs[0].cpu_s)
        )
        for system, runs in rate.items()
    ]
    return [
        "3. steady-state replicated updates/s (one-write transactions on one document)",
        table(["system", "arrived/s", "written/s", "backlog drained (s)", "vs pycrdt-ws"], rows),
        *cpu,
    ]


def backlog_report(backlog: list[BacklogRun], live: list[RateRun]) -> list[str]:
    """The pipeline's capacity beside the live rate: which of the two limits the live number."""
    drained = statistics.median(r.arrived_per_s for r in backlog)
    live_arrived = median_of(live, lambda r: r.arrived_per_s)
    live_written = median_of(live, lambda r: r.writes_per_s)
    rows = [
        [
            "live: writer running, daemons up",
            f"{live_arrived:,.0f}",
            f"{live_written:,.0f}",
            "-",
            "-",
        ],
        [
            f"backlog: {backlog[0].records:,} records waiting",
            f"{drained:,.0f}",
            f"{statistics.median(r.written_per_s for r in backlog):,.0f}",
            f"{statistics.median(r.first_after_s for r in backlog):.2f}",
            f"{drained / live_arrived:.2f}x",
        ],
    ]
    cpu = ", ".join(
        f"{name} {statistics.median(r.cpu_us_per_record().get(name, 0) for r in backlog):.0f}"
        for name in sorted(backlog[0].cpu_s)
    )
    lagging = median_of(live, lambda r: r.drained_after_s)
    if lagging > max(0.25, 0.1 * median_of(live, lambda r: r.write_seconds)):
        limit = (
            f"live: the pipeline fell behind the writer (still delivering {lagging:.2f} s after"
            " the last commit)"
        )
    else:
        limit = (
            f"live: the pipeline kept up (last record {lagging:.2f} s after the last commit), so"
            f" the writer's commit rate is the limit; a backlog drains at"
            f" {drained / live_arrived:.1f}x the live rate"
        )
    return [
        "   crdtdb replication pipeline, eu -> us: live against a backlog drain (eu's daemon"
        " started with the records already in its log)",
        table(["crdtdb eu -> us", "arrived/s", "written/s", "first after (s)", "vs live"], rows),
        f"   CPU per record in the backlog drain (us, median): {cpu};"
        f" anti-entropy repaired {backlog[-1].anti_entropy_repairs or 0} documents meanwhile",
        f"   {limit}",
    ]


def bootstrap_report(boot: dict[str, Any], cfg: Config, checks: list[Check]) -> list[str]:
    lines = [f"4. bulk bootstrap of a fresh region, N={cfg.docs:,} documents, per document profile"]
    for name, results in boot["profiles"].items():
        lines += profile_report(name, results, results["ceiling"], cfg, checks)
    ceiling: list[Transfer] = boot["ceiling"]
    return [
        *lines,
        f"   ceiling, per profile: median of {2 * CEILING_RUNS} raw aioquic pushes of"
        f" {(ceiling[0].wire or 0) / 1e6:.0f} MB, {CEILING_RUNS} just before and"
        f" {CEILING_RUNS} just after its crdtdb run (all of them: "
        + ", ".join(f"{t.wire_mb_s or 0:.1f}" for t in ceiling)
        + " MB/s)",
    ]


def profile_report(
    name: str, boot: dict[str, Any], ceiling: list[Transfer], cfg: Config, checks: list[Check]
) -> list[str]:
    """One profile's table, its notes and its two target checks."""
    mine: Transfer = boot["crdtdb"]
    ceiling_mb_s = statistics.median(t.wire_mb_s or 0 for t in ceiling)
    ceiling_bytes = ceiling[0].wire or 0

    def row(label: str, t: Transfer) -> list[str]:
        wire_mb_s = t.wire_mb_s
        return [
            label,
            f"{t.docs:,}",
            f"{t.seconds:.2f}",
            f"{t.docs_per_s:,.0f}",
            f"{t.payload_mb_s:.2f}",
            "-" if wire_mb_s is None else f"{wire_mb_s:.2f}",
            f"{mine.docs_per_s / t.docs_per_s:.2f}x" if t.docs else "-",
            "-" if wire_mb_s is None else f"{wire_mb_s / ceiling_mb_s:.1%}",
        ]

    rows = [
        row("crdtdb daemon -> fresh daemon", mine),
        row("pycrdt-websocket, a room per doc", boot["ws-rooms"]),
        row("pycrdt-websocket, all in one doc", boot["ws-one-doc"]),
        [
            "aioquic raw, one stream",
            "-",
            f"{ceiling_bytes / 1e6:.0f} MB",
            "-",
            "-",
            f"{ceiling_mb_s:.2f}",
            "-",
            "100.0%",
        ],
    ]
    faster = mine.docs_per_s / boot["ws-rooms"].docs_per_s
    share = (mine.wire_mb_s or 0) / ceiling_mb_s
    # The tiny profile's checks keep the names they had before there were profiles.
    which = "bootstrap" if name == "tiny" else f"bootstrap of {name} docs"
    checks.append(
        Check(
            f"{which} faster than pycrdt-websocket (a room per doc)",
            faster,
            1,
            f"{faster:.2f}x",
            faster > 1,
        )
    )
    checks.append(
        Check(f"{which} wire MB/s >= 50% of raw aioquic", share, 0.5, f"{share:.1%}", share >= 0.5)
    )
    extra = mine.extra
    written = boot.get("source_docs_per_s")
    source = "" if written is None else f"; source store written at {written:,.0f} docs/s"
    took = f"; {boot['seconds']:.0f} s for the profile" if "seconds" in boot else ""
    return [
        f"   {name}: {boot['document']}, {mine.payload / mine.docs:,.0f} B of CRDT update a"
        f" document{source}{took}",
        table(
            [
                f"{name}: system",
                "docs",
                "seconds",
                "docs/s",
                "payload MB/s",
                "wire MB/s",
                "crdtdb is",
                "of ceiling",
            ],
            rows,
        ),
        f"   crdtdb: {extra['records']:,} records, {mine.wire or 0:,} wire bytes (both ways),"
        f" {extra['seconds_from_daemon_launch']:.2f} s from launching the eu daemon,"
        f" {extra['connections']} QUIC connection(s);"
        f" anti-entropy during it: {extra['anti_entropy_rounds']} rounds,"
        f" {extra['anti_entropy_repairs'] or 0:,} documents repaired,"
        f" {extra['repair_records_created_in_us']:,} repair records created in us;"
        f" CPU per document (us): {cpu_text(extra['cpu_s'], mine.docs / 1e6, '.0f')}",
        f"   pycrdt-websocket a room per doc: {boot['ws-rooms'].docs:,} of the documents,"
        f" {cfg.ws_connections} connections at a time{one_doc_sample(boot['ws-one-doc'], cfg)}",
    ]


def one_doc_sample(one: Transfer, cfg: Config) -> str:
    if one.docs >= cfg.docs:
        return ""
    return (
        f"; all in one doc: {one.docs:,} of them, {one.payload / 1e6:.0f} MB (httpx-ws"
        " reassembles a message in quadratic time: all N stall)"
    )


def report(cfg: Config, out: dict[str, Any], env: dict[str, Any]) -> tuple[str, list[Check]]:
    checks: list[Check] = []
    lines = [
        f"crdtdb sync benchmark ({cfg.name}): pycrdt {env['pycrdt']}, pycrdt-websocket"
        f" {env['pycrdt-websocket']}, aioquic {env['aioquic']}, Python {env['python']},"
        f" {env['cpus']} CPUs, load {env['load_average_before'][0]:.2f} before",
        "",
    ]
    if "ae" in out:
        lines += [*ae_report(out["ae"], cfg, checks), ""]
    if "lag" in out:
        lines += [*lag_report(out["lag"], cfg, checks), ""]
    if "rate" in out:
        lines += rate_report(out["rate"], checks)
        if "rate_backlog" in out:
            lines += backlog_report(out["rate_backlog"], out["rate"]["crdtdb"])
        lines.append("")
    if "bootstrap" in out:
        lines += [*bootstrap_report(out["bootstrap"], cfg, checks), ""]
    if "lag_daemons" in out:
        d = out["lag_daemons"]
        lines += [
            f"daemons of 2-3 over their life: eu wrote {d['records_written_in_eu']:,} records and"
            f" received {d['records_received_by_eu']:,} from us (us writes none: echoes of eu's"
            f" own); {d['anti_entropy_rounds']} anti-entropy rounds repaired"
            f" {d['anti_entropy_repairs'] or 0:,} documents",
            "",
        ]
    lines.append(
        table(["target", "measured", ""], [[c.name, c.shown, verdict(c.met)] for c in checks])
    )
    return "\n".join(lines), checks


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
        certs = make_certs(work)
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
        ]
        wanted = {
            "4. bootstrap": {"bootstrap"},
            "1. anti-entropy": {"ae"},
            "2-3. lag and throughput": {"lag", "rate"},
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
