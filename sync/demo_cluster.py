"""The cluster ``crdtdb demo`` runs: certificates, region configs, one ``crdtdb serve`` each.

Laid out as an operator would (and as ``--keep DIR`` leaves it)::

    DIR/certs/ca.pem, ca.key, REGION.pem, REGION.key   the cluster CA and region certs
    DIR/REGION.toml                                       each region's config
    DIR/data/REGION/                                      each region's store
    DIR/logs/REGION.log                                   each daemon's output

Each daemon is a child process (``python -m crdtdb serve --config``) in the
demo's own process group, so that a Ctrl-C at the terminal reaches the
daemons too, and they stop even if whatever runs the demo kills it before it
could stop them. The demo stops them itself on every way out: SIGTERM (a
clean stop), and SIGKILL for one still running after :data:`STOP_TIMEOUT`
seconds.

Cutting a region off (:meth:`DemoCluster.cut`) stops its daemon with SIGTERM,
which closes its connections; its store stays open to its application, which
goes on writing locally. Healing starts the daemon again: it reconnects, is
told what its peers hold, and both sides push what the other lacks (plus an
anti-entropy round on connect). A SIGSTOP would be simpler still, but a
daemon frozen in the middle of a store transaction would hold the region's
write lock and stall its application too, which is not what a network cut does.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdtdb.errors import CrdtdbError

from .status import STATUS_FILE

__all__ = ["STOP_TIMEOUT", "DemoCluster", "DemoError", "DemoRegion", "RegionLayout"]

STOP_TIMEOUT = 10.0
"""Seconds a daemon gets to stop after SIGTERM before it is killed."""

SYNC_TIMERS = {
    "anti_entropy_interval": 1.0,
    "heartbeat_interval": 0.5,
    "reconnect_min": 0.1,
    "reconnect_max": 1.0,
}
"""The demo's ``[sync]`` options: shorter than the defaults, so that a cut heals in a second."""


class DemoError(CrdtdbError):
    """The demo could not do what it shows (a daemon died, the regions did not converge)."""

    code = "demo"


@dataclass(slots=True)
class RegionLayout:
    """Where one region of a cluster under ``root`` keeps its files (the module docstring's
    layout; the test suite's clusters use it too)."""

    name: str
    port: int
    root: Path

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
        return self.data_dir / STATUS_FILE


@dataclass(slots=True)
class DemoRegion(RegionLayout):
    """One region of the demo cluster: its files, port and daemon."""

    process: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)
    """Every daemon process started for this region (a healed region has had two)."""
    cut: bool = False
    stopped: bool = False
    """Its daemon was stopped by the demo (not exited on its own)."""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, Any] | None:
        """The running daemon's last status report, or None if it has not written one."""
        try:
            status: dict[str, Any] = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None
        if self.process is None or status.get("pid") != self.process.pid:
            return None  # an earlier daemon's
        return status


def free_udp_ports(count: int) -> list[int]:
    """``count`` distinct UDP ports free on 127.0.0.1 now (all held until all are found)."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


class DemoCluster:
    """The regions ``names`` under ``root``, every pair peered, on free loopback ports."""

    def __init__(self, root: Path, names: Sequence[str]) -> None:
        self.root = root
        ports = free_udp_ports(len(names))
        self.regions = {n: DemoRegion(n, p, root) for n, p in zip(names, ports, strict=True)}

    def write_files(self) -> None:
        """The CA, a certificate per region, and each region's config."""
        from .certs import init_ca, issue

        certs = self.root / "certs"
        init_ca(certs, name="crdtdb demo CA")
        for name in self.regions:
            issue(certs, name)
        (self.root / "logs").mkdir(exist_ok=True)
        for region in self.regions.values():
            region.config.write_text(self._config_text(region))

    def _config_text(self, region: DemoRegion) -> str:
        lines = [
            "# Written by `crdtdb demo`: start this region with",
            f"#   crdtdb serve --config {region.config.name}",
            f'region = "{region.name}"',
            f'data_dir = "data/{region.name}"',
            f'listen = "127.0.0.1:{region.port}"',
            "[tls]",
            'ca = "certs/ca.pem"',
            f'cert = "certs/{region.name}.pem"',
            f'key = "certs/{region.name}.key"',
        ]
        for peer in self.regions.values():
            if peer is not region:
                lines += ["[[peers]]", f'region = "{peer.name}"']
                lines.append(f'address = "127.0.0.1:{peer.port}"')
        lines.append("[sync]  # faster than the defaults, so that the demo's cut heals at once")
        lines += [f"{key} = {value}" for key, value in SYNC_TIMERS.items()]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------ daemons

    def start(self, name: str) -> int:
        """Start the daemon of ``name``; returns its pid."""
        region = self.regions[name]
        with region.log.open("ab") as log:
            log.write(f"---- crdtdb demo: starting the daemon of {name} ----\n".encode())
            log.flush()
            region.process = subprocess.Popen(
                [sys.executable, "-m", "crdtdb", "serve", "--config", str(region.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.root,
            )
        region.pids.append(region.process.pid)
        region.cut = region.stopped = False
        return region.process.pid

    def stop(self, name: str) -> int | None:
        """SIGTERM the daemon of ``name`` and wait (SIGKILL after STOP_TIMEOUT); its exit code."""
        process = self.regions[name].process
        if process is None:
            return None
        self.regions[name].stopped = True
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def stop_all(self) -> None:
        """Stop every daemon (all signalled first, so they stop side by side)."""
        for region in self.regions.values():
            if region.running and region.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    region.process.send_signal(signal.SIGTERM)
        for name in self.regions:
            self.stop(name)

    def cut(self, name: str) -> None:
        """Cut ``name`` off from its peers: stop its daemon (its store stays writable)."""
        self.stop(name)
        self.regions[name].cut = True

    def heal(self, name: str) -> int:
        """Reconnect ``name``: start its daemon again; returns the new pid."""
        return self.start(name)

    def check_alive(self) -> None:
        """Raise DemoError if a daemon that should run has exited."""
        for region in self.regions.values():
            if not region.stopped and region.process is not None and not region.running:
                raise DemoError(
                    f"the daemon of {region.name} exited with status {region.process.returncode}"
                    f" (its log ends: {self.last_log_line(region)!r}; all of it: {region.log})"
                )

    def last_log_line(self, region: DemoRegion) -> str:
        try:
            lines = region.log.read_text(errors="replace").split("\n")
        except OSError:
            return ""
        return next((line.strip() for line in reversed(lines) if line.strip()), "")[:300]

    def connected_peers(self, name: str) -> set[str]:
        """The peers the daemon of ``name`` last reported connected (none if it did not)."""
        status = self.regions[name].status()
        if status is None:
            return set()
        return {peer["region"] for peer in status.get("peers", []) if peer.get("connected")}

    def all_connected(self) -> bool:
        self.check_alive()
        return all(
            self.connected_peers(name) >= set(self.regions) - {name} for name in self.regions
        )

    def wait_connected(self, timeout: float, tick: Callable[[], None] = lambda: None) -> float:
        """Wait until every daemon reports every peer connected; returns the seconds it took."""
        started = time.monotonic()
        while not self.all_connected():
            if time.monotonic() - started > timeout:
                missing = {
                    name: sorted(set(self.regions) - {name} - self.connected_peers(name))
                    for name in self.regions
                }
                raise DemoError(
                    f"the daemons did not all connect within {timeout:g} s (missing: {missing});"
                    f" their logs are in {self.root / 'logs'}"
                )
            tick()
            time.sleep(0.1)
        return time.monotonic() - started
