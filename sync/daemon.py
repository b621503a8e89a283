"""``crdtdb serve --config region.toml``: one process serving one region.

Before it touches anything, it checks what can be checked (:mod:`.preflight`):
the TLS files and the region they are for, before the data directory is
even created; then it takes the data directory's lock (:mod:`.lock`: a
second daemon on the same directory is refused, with the first one's pid),
checks its ports, and only then opens the store. ``--check`` does the same
checks, reports them, and exits.

With ``[metrics] listen`` it serves ``/metrics`` and ``/healthz`` from a
thread of its own (:mod:`.metrics`); ``/healthz`` is 200 only while the
event loop answers within ``LOOP_DEADLINE`` and the store takes writes.

SIGTERM and SIGINT stop it cleanly: sessions are closed with a goodbye, the
status file is written a last time saying it stopped, and the store is
closed. Every store write is one SQLite transaction, so nothing is ever
half-applied whenever the process stops, even by SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from crdtdb.database import open as open_db
from crdtdb.errors import CrdtdbError

from . import bootstrap, logs
from .config import RegionConfig, load_config
from .lock import DataDirLock
from .node import Replicator
from .preflight import bind_error, check, check_data_dir, check_ports, check_tls

if TYPE_CHECKING:
    from .metrics import Metrics, MetricsServer

__all__ = ["LOOP_DEADLINE", "check_config", "serve"]

log = logging.getLogger("crdtdb.sync")
LOOP_DEADLINE = 2.0
"""Seconds the event loop has to answer a ``/healthz`` probe."""


class _Health:
    """``/healthz``'s question, asked on the metrics server's thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.replicator: Replicator | None = None

    def __call__(self) -> str | None:
        loop, replicator = self.loop, self.replicator
        if loop is None or replicator is None:
            return "starting"
        answered = threading.Event()
        try:
            loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # the loop is closed
            return "stopped"
        if not answered.wait(LOOP_DEADLINE):
            return f"the event loop did not answer within {LOOP_DEADLINE:g} s"
        return replicator.store_health()


async def _serve(
    config: RegionConfig, metrics: Metrics | None, server: MetricsServer | None, health: _Health
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_abandoned_handshakes)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if bootstrap.wanted(config):
        await bootstrap.bootstrap(config)
    with open_db(
        config.data_dir,
        region=config.region,
        max_clock_offset_ms=config.max_clock_offset_ms,
        wal_autocheckpoint=0,  # the replicator checkpoints from a worker thread
    ) as db:
        replicator = Replicator(db, config, manage_gc=True, observer=metrics)
        health.loop, health.replicator = loop, replicator
        if server is not None:
            server.start()
            log.info(
                "%s: metrics on http://%s:%d/metrics",
                config.region,
                server.host,
                server.port,
                extra={"event": "metrics"},
            )
        try:
            await replicator.run(stop)
        finally:
            health.replicator = None
        replicator.mark_stopped()
    log.info("%s: stopped", config.region, extra={"event": "stopped"})
    return 0


def _quiet_abandoned_handshakes(
    loop: asyncio.AbstractEventLoop, context: dict[str, object]
) -> None:
    """Drop the noise of a timed-out dial: aioquic's shielded handshake future then fails
    unobserved ("Future exception was never retrieved"); the dial loop already logged it."""
    if isinstance(context.get("exception"), ConnectionError) and "never retrieved" in str(
        context.get("message", "")
    ):
        return
    loop.default_exception_handler(context)


def _metrics(config: RegionConfig, health: _Health) -> tuple[Metrics | None, MetricsServer | None]:
    """The metrics and their HTTP server (bound, not serving yet), if the config asks."""
    if config.metrics_listen is None:
        return None, None
    from .metrics import Metrics, MetricsServer  # prometheus_client: only when asked

    metrics = Metrics()
    metrics.known_peers(peer.region for peer in config.peers)
    host, port = config.metrics_listen
    try:
        return metrics, MetricsServer(host, port, metrics.registry, health)
    except OSError as exc:
        raise bind_error("serve metrics", host, port, exc) from None


def serve(
    config_path: Path, *, log_level: str = "info", log_format: str = "text", verbose: bool = False
) -> int:
    """Run the region's daemon until SIGTERM or SIGINT; refuse at once what cannot work."""
    handler = logs.setup("debug" if verbose else log_level, log_format)
    try:
        return _serve_config(config_path, handler)
    except CrdtdbError as exc:
        if log_format == "json":  # the log is JSON lines: so is the error that ends it
            log.error("%s", exc, extra={"event": "fatal", "code": exc.code})
            exc.reported = True
        raise


def _serve_config(config_path: Path, handler: logging.Handler) -> int:
    config = load_config(config_path)
    logs.set_region(handler, config.region)
    check_tls(config)  # before the data directory is created: nothing to clean up after
    check_data_dir(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    with DataDirLock(config.data_dir):
        check_ports(config)
        health = _Health()
        metrics, server = _metrics(config, health)
        try:
            return asyncio.run(_serve(config, metrics, server, health))
        finally:
            if server is not None:
                server.close()


def check_config(config_path: Path) -> int:
    """``crdtdb serve --check``: print what was checked; raise (one line) at the first
    problem."""
    for line in check(config_path):
        print(line)
    print(f"ok: {config_path} can be served")
    return 0
