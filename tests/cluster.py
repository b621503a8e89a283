"""A cluster of real ``crdtdb serve`` daemons on loopback, for integration tests.

:class:`Cluster` makes the cluster CA and one certificate per region (with the
``crdtdb certs`` command), writes one TOML config per region under a
temporary directory, and runs each region's daemon as a subprocess whose
stderr goes to ``logs/REGION.log`` (appended across restarts). It can:

- wait until a daemon has written its status file and reports every peer
  connected (polling with a deadline, never a fixed sleep);
- SIGKILL, SIGTERM and restart a region;
- route one pair's QUIC traffic through a :class:`tests.netfault.FaultProxy`
  (the dialing side's config names the proxy instead of the peer);
- open each region's store in the test process (``cluster.db("eu")``), as an
  application would, to write or to compare documents.

Every process it started is stopped when the cluster is closed (SIGTERM, then
SIGKILL after a timeout), and an ``AssertionError`` raised inside ``with
cluster:`` gets the tail of every daemon's log appended, so a failure says
what the daemons were doing. A :class:`Lab` also runs the writer programs of
``tests/procs/`` (a :class:`tests.harness.process.Child` each: stdout read by a
thread, lines awaited with deadlines). Processes, waits, ports and configs
are the harness's (``tests/harness/``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import crdtdb
from crdtdb.sync.demo_cluster import RegionLayout

from .harness.config import make_certs, write_region_config
from .harness.daemon import daemon_status, start_daemon
from .harness.ports import free_ports
from .harness.process import STOP_TIMEOUT, Child, file_tail, program, stop_all
from .harness.wait import HarnessError as ClusterError
from .harness.wait import wait_until
from .netfault import FaultProxy, Faults

__all__ = [
    "Cluster",
    "ClusterError",
    "Lab",
    "Region",
    "lab",
    "snapshot",
]

LOG_TAIL = 30
"""Lines of each daemon's log attached to a failure."""


@dataclass(slots=True)
class Region(RegionLayout):
    """One region of the cluster: its files (laid out as the demo's) and its running daemon
    (if any)."""

    peers: list[str] = field(default_factory=list)
    tables: dict[str, dict[str, object]] = field(default_factory=dict)
    """More config tables, e.g. ``{"cluster": {"auto_join": True}}``."""
    child: Child | None = None
    starts: int = 0

    def running(self) -> bool:
        return self.child is not None and self.child.running

    def status(self) -> dict[str, Any] | None:
        """The daemon's last status report, or None if there is none (yet)."""
        return daemon_status(self.data_dir)

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        return file_tail(self.log, lines)


class Cluster:
    """N regions on loopback; ``links`` (default: every pair) say who peers with whom."""

    def __init__(
        self,
        root: Path,
        regions: Sequence[str],
        links: Iterable[tuple[str, str]] | None = None,
        *,
        anti_entropy_interval: float = 0.5,
        reconnect_min: float = 0.05,
        reconnect_max: float = 0.5,
        max_clock_offset_ms: int = 500,
        bootstrap: str | None = None,
    ) -> None:
        self.root = root
        self.sync: dict[str, float | str] = {
            "anti_entropy_interval": anti_entropy_interval,
            "max_clock_offset_ms": max_clock_offset_ms,
            "reconnect_min": reconnect_min,
            "reconnect_max": reconnect_max,
        }
        if bootstrap is not None:  # ``[sync] bootstrap``; none: the default (a snapshot)
            self.sync["bootstrap"] = bootstrap
        ports = free_ports(len(regions))
        self.regions = {
            name: Region(name, port, root) for name, port in zip(regions, ports, strict=True)
        }
        pairs = links if links is not None else _all_pairs(regions)
        for a, b in pairs:
            self.regions[a].peers.append(b)
            self.regions[b].peers.append(a)
        self.routes: dict[frozenset[str], FaultProxy] = {}
        self._dbs: dict[str, crdtdb.Database] = {}
        self._closers: list[Callable[[], object]] = []
        (root / "logs").mkdir(parents=True, exist_ok=True)
        self._certs()

    # ------------------------------------------------------------ setup

    def _certs(self) -> None:
        make_certs(self.root / "certs", self.regions, cli=True)

    def dialer(self, a: str, b: str) -> tuple[str, str]:
        """(dialing side, listening side) of a pair: the name that sorts first dials."""
        return (a, b) if a < b else (b, a)

    def route(self, a: str, b: str, faults: Faults | None = None, *, seed: int = 0) -> FaultProxy:
        """Send the traffic of pair a-b through a started :class:`FaultProxy` with ``faults``.

        The proxy forwards to the listening side; the dialing side's config
        names the proxy, so it takes effect when that daemon (re)starts. The
        proxy is stopped when the cluster is closed.
        """
        _, listener = self.dialer(a, b)
        proxy = FaultProxy(("127.0.0.1", self.regions[listener].port), faults=faults, seed=seed)
        proxy.start_in_thread()
        self.routes[frozenset((a, b))] = proxy
        self._closers.append(proxy.stop)
        return proxy

    def _peer_address(self, region: str, peer: str) -> str:
        proxy = self.routes.get(frozenset((region, peer)))
        if proxy is not None and self.dialer(region, peer)[0] == region:
            host, port = proxy.address
            return f"{host}:{port}"
        return f"127.0.0.1:{self.regions[peer].port}"

    def write_config(self, name: str) -> Path:
        region = self.regions[name]
        return write_region_config(
            region.config,
            region=name,
            data_dir=f"data/{name}",
            port=region.port,
            certs="certs",
            peers={peer: self._peer_address(name, peer) for peer in region.peers},
            sync=self.sync,
            tables=region.tables,
        )

    # ------------------------------------------------------------ processes

    def start(self, *names: str) -> None:
        """Start the daemons of ``names`` (default: every region); does not wait."""
        for name in names or tuple(self.regions):
            region = self.regions[name]
            assert not region.running(), f"{name} is already running"
            self.write_config(name)
            with contextlib.suppress(FileNotFoundError):
                region.status_file.unlink()  # a stale one must not count as "ready"
            region.starts += 1
            with region.log.open("ab") as log:
                log.write(f"---- start #{region.starts} of {name} ----\n".encode())
            region.child = start_daemon(region.config, log=region.log, cwd=self.root, name=name)

    def ready(self, name: str, peers: Iterable[str] | None = None) -> bool:
        """The daemon is alive, reported its status, and sees ``peers`` (default all) connected."""
        region = self.regions[name]
        if region.child is None:
            raise AssertionError(f"{name} was never started")
        if not region.child.running:
            code = region.child.proc.returncode
            raise ClusterError(f"the daemon of {name} exited with status {code}")
        status = region.status()
        if status is None or status.get("pid") != region.child.pid:
            return False
        connected = {p["region"] for p in status["peers"] if p["connected"]}
        return connected >= set(region.peers if peers is None else peers)

    def wait_ready(
        self, *names: str, peers: Iterable[str] | None = None, timeout: float = 30.0
    ) -> None:
        """Wait until each daemon of ``names`` (default all) reports its peers connected."""
        wanted = names or tuple(self.regions)
        peer_list = None if peers is None else list(peers)
        for name in wanted:
            wait_until(
                lambda name=name: self.ready(name, peer_list),  # type: ignore[misc]
                timeout,
                f"{name} to report its peers {peer_list or self.regions[name].peers} connected",
            )

    def kill(self, name: str) -> None:
        """SIGKILL a region's daemon (a crash) and reap it."""
        child = self.regions[name].child
        assert child is not None
        child.kill(STOP_TIMEOUT)

    def terminate(self, name: str, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM a region's daemon and wait for it; kill it after ``timeout`` (and raise).

        Returns its exit status (negative: killed by that signal).
        """
        child = self.regions[name].child
        return 0 if child is None else child.stop(timeout, strict=True)

    def restart(self, name: str) -> None:
        if self.regions[name].running():
            self.terminate(name)
        self.start(name)

    # ------------------------------------------------------------ stores

    def db(self, name: str) -> crdtdb.Database:
        """The region's store, opened in this process (as an application would)."""
        db = self._dbs.get(name)
        if db is None or db.closed:
            db = self._dbs[name] = crdtdb.open(self.regions[name].data_dir, region=name)
        return db

    def close_db(self, name: str) -> None:
        db = self._dbs.pop(name, None)
        if db is not None:
            db.close()

    def converged(self, doc_ids: Iterable[str] = ()) -> bool:
        """Every region has the same Merkle root, live documents and digests."""
        names = list(self.regions)
        roots = {self.db(n).merkle_root() for n in names}
        if len(roots) != 1:
            return False
        snaps = [snapshot(self.db(n), doc_ids) for n in names]
        return all(s == snaps[0] for s in snaps[1:])

    def wait_converged(self, doc_ids: Iterable[str] = (), timeout: float = 60.0) -> None:
        ids = list(doc_ids)
        try:
            wait_until(
                lambda: self.converged(ids), timeout, "every region to converge", interval=0.2
            )
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n{self.describe_divergence(ids)}") from None

    def describe_divergence(self, doc_ids: Iterable[str] = ()) -> str:
        ids = list(doc_ids)
        snaps = {n: snapshot(self.db(n), ids) for n in self.regions}
        lines = [f"{n}: merkle root {self.db(n).merkle_root().hex()[:16]}" for n in self.regions]
        first, *rest = self.regions
        for name in rest:
            a, b = snaps[first], snaps[name]
            differing = sorted(d for d in set(a) | set(b) if a.get(d) != b.get(d))
            lines.append(f"{first} vs {name}: {len(differing)} documents differ")
            lines += [f"  {d}: {a.get(d)} | {b.get(d)}" for d in differing[:5]]
        return "\n".join(lines)

    # ------------------------------------------------------------ teardown

    def logs(self, lines: int = LOG_TAIL) -> str:
        parts = []
        for region in self.regions.values():
            state = "running" if region.running() else "stopped"
            parts.append(
                f"==== {region.name} ({state}) {region.log} ====\n{region.log_tail(lines)}"
            )
        return "\n".join(parts)

    def close(self) -> None:
        """Stop every daemon (SIGTERM, then SIGKILL), close stores and proxies."""
        children = [r.child for r in self.regions.values() if r.child is not None]
        errors = stop_all(children)
        for name in list(self._dbs):
            with contextlib.suppress(Exception):
                self.close_db(name)
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                closer()
        self._closers.clear()
        if errors:
            raise ClusterError("; ".join(errors))

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        logs = self.logs() if exc is not None else ""
        self.close()
        if isinstance(exc, AssertionError):
            raise type(exc)(f"{exc}\n\n{logs}").with_traceback(tb) from None


def _all_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def snapshot(db: crdtdb.Database, doc_ids: Iterable[str] = ()) -> dict[str, tuple[str, str]]:
    """doc id -> (sorted JSON or "deleted", digest hex) for every live doc and ``doc_ids``."""
    ids = set(doc_ids)
    for collection in db.collections():
        ids.update(db.list(collection))
    result = {}
    for doc_id in sorted(ids):
        value = db.get(doc_id)
        digest = db.digest(doc_id)
        result[doc_id] = (
            "deleted" if value is None else json.dumps(value, sort_keys=True),
            digest.hex() if digest is not None else "absent",
        )
    return result


class Lab:
    """Makes clusters and child programs under one directory; :meth:`close` stops them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[Cluster] = []
        self.children: list[Child] = []

    def cluster(
        self,
        regions: Sequence[str],
        links: Iterable[tuple[str, str]] | None = None,
        **options: Any,
    ) -> Cluster:
        cluster = Cluster(self.root / f"cluster{len(self.made)}", regions, links, **options)
        self.made.append(cluster)
        return cluster

    def child(self, script: str, *args: str) -> Child:
        """Start ``tests/procs/SCRIPT ARGS``; its stderr goes to ``children/N-SCRIPT.log``."""
        logs = self.root / "children"
        logs.mkdir(parents=True, exist_ok=True)
        stderr = logs / f"{len(self.children)}-{Path(script).stem}.log"
        child = Child(program(script, *args), log=stderr)
        self.children.append(child)
        return child

    def close(self) -> None:
        try:
            for child in self.children:
                child.stop()
        finally:
            errors = []
            for cluster in self.made:
                try:
                    cluster.close()
                except ClusterError as exc:
                    errors.append(str(exc))
            if errors:
                raise ClusterError("; ".join(errors))


@contextlib.contextmanager
def lab(root: Path) -> Iterator[Lab]:
    """A :class:`Lab` under ``root`` that is closed on exit, whatever happens."""
    made = Lab(root)
    try:
        yield made
    finally:
        made.close()
