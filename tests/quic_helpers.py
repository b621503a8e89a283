"""Shared by the tests that run Replicators over real QUIC on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from crdtdb.sync.config import PeerConfig, RegionConfig
from crdtdb.sync.transport import TlsFiles


def region_config(
    tmp: Path, certs: Path, region: str, peers: list[PeerConfig], **options: float
) -> RegionConfig:
    """A region listening on an ephemeral loopback port, with fast timers for tests."""
    settings: dict[str, float] = {
        "anti_entropy_interval": 0.5,
        "heartbeat_interval": 0.2,
        "reconnect_min": 0.05,
        "reconnect_max": 0.5,
        **options,
    }
    return RegionConfig(
        region=region,
        data_dir=tmp / region,
        host="127.0.0.1",
        port=0,
        tls=TlsFiles(
            ca=certs / "ca.pem", cert=certs / f"{region}.pem", key=certs / f"{region}.key"
        ),
        peers=tuple(peers),
        **settings,  # type: ignore[arg-type]
    )


async def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``condition`` until true; fail at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)
