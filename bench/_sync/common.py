"""What the sections of the sync benchmark share: sizes, documents, regions and children.

Processes, waits, ports and configs are the test harness's (``bench/_harness.py``).
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _harness import Child, Group, daemon_status, free_ports, start_daemon, write_region_config
from pycrdt import Text

import crdtdb
from crdtdb import Database

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "sync.json"
SCRIPT = Path(__file__).resolve().parents[1] / "bench_sync.py"
"""The entry point, which also runs the child roles (``bench_sync.py --role NAME ARGS``)."""
POLL_S = 0.01
"""How often the benchmark looks at a condition it waits for."""
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
    lag_rates: tuple[tuple[int, int], ...] = ((100, 1), (1000, 1), (10_000, 10))
    """The lag runs: paced write rate (writes/s), and writes per transaction."""
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
SECTIONS = ("bootstrap", "ae", "lag", "rate", "large")


class BenchError(RuntimeError):
    """A benchmark step failed (a child died, a deadline passed, a check did not hold)."""


def doc_name(i: int) -> str:
    return f"bench/{i}"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Children(Group):
    """The children of one step, their output in logs in ``work``; all stopped on the way out."""

    def __init__(self, work: Path) -> None:
        super().__init__()
        self.work = work

    def role(self, name: str, role: str, *args: object) -> Child:
        """``bench_sync.py`` run as one of its child roles (see ``roles.ROLES``)."""
        argv = [sys.executable, str(SCRIPT), "--role", role, *map(str, args)]
        log = self.work / f"{name}.log"
        return self.start(argv, name=name, log=log, read_lines=False, stop_signal=signal.SIGTERM)

    def daemon(self, config: Path, region: str) -> Child:
        """``crdtdb serve`` for ``region`` with ``config``."""
        name = f"daemon-{region}-{config.stem}"
        return self.add(start_daemon(config, log=self.work / f"{name}.log", name=name))


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


def pair_configs(
    work: Path, certs: Path, eu: Path, us: Path, *, bootstrap: str = "records"
) -> dict[str, Path]:
    """Configs of regions eu and us (data in ``eu`` and ``us``) peering on two free ports,
    with the defaults an operator gets (poll 5 ms, anti-entropy every 2 s), except
    ``[sync] bootstrap``: record by record unless asked (the snapshot row asks)."""
    dirs = {"eu": eu, "us": us}
    ports = dict(zip(dirs, free_ports(2), strict=True))
    return {
        region: write_region_config(
            work / f"{region}-{data.name}.toml",
            region=region,
            data_dir=data,
            port=ports[region],
            certs=certs,
            peers={peer: f"127.0.0.1:{ports[peer]}" for peer in dirs if peer != region},
            tables={"sync": {"bootstrap": bootstrap}},
        )
        for region, data in dirs.items()
    }


def peer_status(data: Path) -> dict[str, Any]:
    """The daemon's status of its one peer (``{}`` until it wrote one)."""
    peers = (daemon_status(data) or {}).get("peers")
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
