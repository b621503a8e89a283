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
what the daemons were doing. :class:`Child` runs the writer programs in
``tests/procs/`` the same way (stdout read by a thread, lines awaited with
deadlines).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import crdtdb

from .netfault import FaultProxy, Faults

__all__ = [
    "PROCS",
    "Child",
    "Cluster",
    "ClusterError",
    "Lab",
    "Region",
    "free_udp_port",
    "lab",
    "snapshot",
    "wait_until",
]

PROCS = Path(__file__).resolve().parent / "procs"
STOP_TIMEOUT = 15.0
"""Seconds a daemon gets to exit after SIGTERM before it is killed."""
LOG_TAIL = 30
"""Lines of each daemon's log attached to a failure."""
T = TypeVar("T")


class ClusterError(AssertionError):
    """A daemon did not do what the test waited for (it exited, or was too slow)."""


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], T], timeout: float, what: str, *, interval: float = 0.05
) -> T:
    """Poll ``condition`` until it returns something truthy; raise ClusterError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1")


@dataclass(slots=True)
class Region:
    """One region of the cluster: its files and its running daemon (if any)."""

    name: str
    port: int
    root: Path
    peers: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def config(self) -> Path:
        return self.root / f"{self.name}.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data" / self.name

    @property
    def log(self) -> Path:
        return self.root / "logs" / f"{self.name}.log"

    @property
    def status_file(self) -> Path:
        return self.data_dir / "sync-status.json"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, Any] | None:
        """The daemon's last status report, or None if there is none (yet)."""
        try:
            status: dict[str, Any] = json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return status

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


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
    ) -> None:
        self.root = root
        self.sync = {
            "anti_entropy_interval": anti_entropy_interval,
            "max_clock_offset_ms": max_clock_offset_ms,
            "reconnect_min": reconnect_min,
            "reconnect_max": reconnect_max,
        }
        self.regions = {name: Region(name, free_udp_port(), root) for name in regions}
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

    def _crdtdb(self, *args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "crdtdb", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
        )
        if result.returncode != 0:
            raise ClusterError(f"crdtdb {' '.join(args)} failed: {result.stderr}")

    def _certs(self) -> None:
        certs = self.root / "certs"
        self._crdtdb("certs", "init", str(certs))
        for name in self.regions:
            self._crdtdb("certs", "issue", str(certs), name)

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
        lines = [
            f'region = "{name}"',
            f'data_dir = "data/{name}"',
            f'listen = "127.0.0.1:{region.port}"',
            "[tls]",
            'ca = "certs/ca.pem"',
            f'cert = "certs/{name}.pem"',
            f'key = "certs/{name}.key"',
        ]
        for peer in region.peers:
            lines += [
                "[[peers]]",
                f'region = "{peer}"',
                f'address = "{self._peer_address(name, peer)}"',
            ]
        lines.append("[sync]")
        lines += [f"{key} = {value}" for key, value in self.sync.items()]
        region.config.write_text("\n".join(lines) + "\n")
        return region.config

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
                log.flush()
                region.proc = subprocess.Popen(
                    [sys.executable, "-m", "crdtdb", "serve", "--config", str(region.config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=self.root,
                    env=_env(),
                )

    def ready(self, name: str, peers: Iterable[str] | None = None) -> bool:
        """The daemon is alive, reported its status, and sees ``peers`` (default all) connected."""
        region = self.regions[name]
        if not region.running():
            assert region.proc is not None, f"{name} was never started"
            raise ClusterError(f"the daemon of {name} exited with status {region.proc.returncode}")
        status = region.status()
        if status is None or status.get("pid") != region.proc.pid:  # type: ignore[union-attr]
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
        region = self.regions[name]
        assert region.proc is not None
        region.proc.send_signal(signal.SIGKILL)
        region.proc.wait(timeout=STOP_TIMEOUT)

    def terminate(self, name: str, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM a region's daemon and wait for it; kill it after ``timeout``.

        Returns its exit status (negative: killed by that signal).
        """
        region = self.regions[name]
        proc = region.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else 0
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ClusterError(f"{name} did not stop within {timeout:.0f} s of SIGTERM") from None

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
        errors: list[str] = []
        for region in self.regions.values():
            proc = region.proc
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for name, region in self.regions.items():
            proc = region.proc
            if proc is None:
                continue
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                errors.append(f"{name} did not stop within {STOP_TIMEOUT:.0f} s of SIGTERM")
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
        child = Child(script, *args, stderr=stderr)
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


# ----------------------------------------------------------------- children

_EOF = object()


class Child:
    """A program from ``tests/procs/`` run by this interpreter; stdout read with deadlines.

    Only complete lines count (a process killed mid-``print`` leaves a partial
    line, which is not an acknowledgement).
    """

    def __init__(self, script: str, *args: str, stderr: Path | None = None) -> None:
        self.argv = [sys.executable, str(PROCS / script), *args]
        self._stderr_path = stderr
        self._stderr_file: IO[bytes] | None = stderr.open("ab") if stderr else None
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file if self._stderr_file else subprocess.DEVNULL,
            env=_env(),
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            if raw.endswith(b"\n"):
                self._queue.put(raw.decode().rstrip("\n"))
        self._queue.put(_EOF)

    def describe(self) -> str:
        tail = ""
        if self._stderr_path is not None and self._stderr_path.exists():
            tail = "\n".join(self._stderr_path.read_text(errors="replace").splitlines()[-20:])
        return f"{' '.join(self.argv[1:])} (exit {self.proc.poll()}):\n{tail}"

    def line(self, timeout: float) -> str | None:
        """The next complete stdout line, or None at end of output; raises at the deadline."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise ClusterError(f"no output within {timeout:.0f} s from {self.describe()}") from None
        if item is _EOF:
            self._queue.put(_EOF)
            return None
        assert isinstance(item, str)
        self.lines.append(item)
        return item

    def message(self, timeout: float) -> dict[str, Any]:
        """The next line as JSON; raises if the child ended first."""
        line = self.line(timeout)
        if line is None:
            raise ClusterError(f"the child ended before saying anything more: {self.describe()}")
        value: dict[str, Any] = json.loads(line)
        return value

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def messages_until_exit(self, timeout: float) -> list[dict[str, Any]]:
        """Every remaining JSON line until the child exits (it must exit with status 0)."""
        deadline = time.monotonic() + timeout
        result = []
        while (line := self.line(max(0.0, deadline - time.monotonic()))) is not None:
            result.append(json.loads(line))
        code = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        if code != 0:
            raise ClusterError(f"child failed: {self.describe()}")
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
        if self._stderr_file is not None:
            self._stderr_file.close()
