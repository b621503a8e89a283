"""Shared by the tests that run Replicators over real QUIC on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import crdtdb
from crdtdb.sync.config import PeerConfig
from crdtdb.sync.node import Replicator

from .harness.config import region_config
from .harness.wait import wait_for


@dataclass(slots=True)
class RunningRegion:
    """A store and its Replicator running in this event loop until ``stop`` is set."""

    db: crdtdb.Database
    replicator: Replicator
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


@contextlib.asynccontextmanager
async def eu_dials_us(tmp: Path, certs: Path) -> AsyncIterator[tuple[RunningRegion, RunningRegion]]:
    """Regions eu and us in ``tmp``, eu dialing us over loopback QUIC; stopped and closed after."""
    us_db = crdtdb.open(tmp / "us", region="us")
    eu_db = crdtdb.open(tmp / "eu", region="eu")
    # us names eu as a peer (so its frontier waits for eu) but never dials it: "eu" < "us"
    us_replicator = Replicator(us_db, region_config(tmp, certs, "us", [PeerConfig("eu", "x", 1)]))
    us_stop = asyncio.Event()
    us_task = asyncio.create_task(us_replicator.run(us_stop))
    us = RunningRegion(us_db, us_replicator, us_stop, us_task)
    regions = [us]
    try:
        await wait_for(lambda: us_replicator.port is not None)
        assert us_replicator.port is not None
        peer = PeerConfig("us", "127.0.0.1", us_replicator.port)
        eu_replicator = Replicator(eu_db, region_config(tmp, certs, "eu", [peer]))
        eu_stop = asyncio.Event()
        eu_task = asyncio.create_task(eu_replicator.run(eu_stop))
        eu = RunningRegion(eu_db, eu_replicator, eu_stop, eu_task)
        regions.append(eu)
        yield eu, us
    finally:
        for region in regions:
            region.stop.set()
        await asyncio.wait_for(asyncio.gather(*(r.task for r in regions)), 10)
        eu_db.close()
        us_db.close()
