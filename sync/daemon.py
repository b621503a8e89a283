"""``crdtdb serve --config region.toml``: one process serving one region.

SIGTERM and SIGINT stop it cleanly: sessions are closed with a goodbye, the
status file is written a last time, and the store is closed. Every store
write is one SQLite transaction, so nothing is ever half-applied whenever
the process stops, even by SIGKILL.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import sys
from pathlib import Path

from crdtdb.database import open as open_db

from .config import ConfigError, RegionConfig, load_config
from .node import Replicator

__all__ = ["serve"]


async def _serve(config_path: Path) -> int:
    config = load_config(config_path)
    _check_tls_files(config, config_path)  # before the data directory is created
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_abandoned_handshakes)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with open_db(
        config.data_dir,
        region=config.region,
        max_clock_offset_ms=config.max_clock_offset_ms,
        wal_autocheckpoint=0,  # the replicator checkpoints from a worker thread
    ) as db:
        replicator = Replicator(db, config, manage_gc=True)
        try:
            await replicator.run(stop)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                raise
            raise ConfigError(
                f"cannot listen on {config.host}:{config.port} ({exc.strerror}): stop what"
                f" uses it, or change listen in {config_path}"
            ) from None
    logging.getLogger("crdtdb.sync").info("%s: stopped", config.region)
    return 0


def _check_tls_files(config: RegionConfig, config_path: Path) -> None:
    for name in ("ca", "cert", "key"):
        path: Path = getattr(config.tls, name)
        if not path.is_file():
            raise ConfigError(
                f"[tls] {name}: no file at {path}: fix the path in {config_path}, or make it"
                " with `crdtdb certs init` / `crdtdb certs issue`"
            )


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


def serve(config_path: Path, *, verbose: bool = False) -> int:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(_serve(config_path))
