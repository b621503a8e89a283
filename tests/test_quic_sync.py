"""Replication over real QUIC on loopback: two Replicators in one event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import crdtdb
from crdtdb.sync.config import PeerConfig
from crdtdb.sync.node import Replicator

from .quic_helpers import region_config, wait_for

pytestmark = pytest.mark.integration


def test_two_regions_replicate_over_quic(tmp_path: Path, certs: Path) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        us_db = crdtdb.open(tmp_path / "us", region="us")
        eu_db = crdtdb.open(tmp_path / "eu", region="eu")
        us = Replicator(us_db, region_config(tmp_path, certs, "us", []))
        us_task = asyncio.create_task(us.run(stop))
        await wait_for(lambda: us.port is not None)
        assert us.port is not None
        eu = Replicator(
            eu_db, region_config(tmp_path, certs, "eu", [PeerConfig("us", "127.0.0.1", us.port)])
        )
        eu_task = asyncio.create_task(eu.run(stop))
        try:
            eu_db.put("users/a", {"from": "eu"})
            us_db.put("users/b", {"from": "us"})
            await wait_for(lambda: us_db.get("users/a") is not None)
            await wait_for(lambda: eu_db.get("users/b") is not None)
            with eu_db.transaction() as tx:
                for i in range(300):
                    tx.put(f"bulk/{i}", {"i": i})
            await wait_for(lambda: len(us_db.list("bulk")) == 300)
            await wait_for(lambda: eu.peers["us"].rounds >= 1 and us.peers["eu"].rounds >= 1)
            assert eu_db.merkle_root() == us_db.merkle_root()
            assert eu.peers["us"].connected and us.peers["eu"].connected
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(us_task, eu_task), 10)
            eu_db.close()
            us_db.close()

    asyncio.run(scenario())
    status = (tmp_path / "eu" / "sync-status.json").read_text()
    assert '"region": "eu"' in status


def test_an_idle_link_keeps_running_rounds_and_moving_the_frontier(
    tmp_path: Path, certs: Path
) -> None:
    """The session's timer must not be clobbered by aioquic's own (they once shared a name)."""

    async def scenario() -> None:
        stop = asyncio.Event()
        us_db = crdtdb.open(tmp_path / "us", region="us")
        eu_db = crdtdb.open(tmp_path / "eu", region="eu")
        us = Replicator(us_db, region_config(tmp_path, certs, "us", [PeerConfig("eu", "x", 1)]))
        tasks = [asyncio.create_task(us.run(stop))]
        await wait_for(lambda: us.port is not None)
        assert us.port is not None
        eu = Replicator(
            eu_db, region_config(tmp_path, certs, "eu", [PeerConfig("us", "127.0.0.1", us.port)])
        )
        tasks.append(asyncio.create_task(eu.run(stop)))
        try:
            written = eu_db.put("users/a", {"v": 1})
            await wait_for(lambda: eu.peers["us"].connected)
            rounds = eu.peers["us"].rounds
            # nothing is written from here on: only timers can make progress
            await wait_for(lambda: eu.peers["us"].rounds >= rounds + 4)
            await wait_for(lambda: eu_db.frontier() > written and us_db.frontier() > written)
            assert eu.peers["us"].connected and us.peers["eu"].connected
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            eu_db.close()
            us_db.close()

    asyncio.run(scenario())


def test_a_large_document_does_not_hold_up_the_small_ones(tmp_path: Path, certs: Path) -> None:
    """Over real QUIC: small commits made after a 20 MB one arrive before it does.

    The large record travels on a bulk lane (its own stream) beside the main
    one; on one stream the small records would queue behind it. 20 MB is also
    over the main lane's 16 MiB message limit, which once stopped such a
    document from replicating at all.
    """
    text = "x" * 20_000_000

    async def scenario() -> None:
        stop = asyncio.Event()
        us_db = crdtdb.open(tmp_path / "us", region="us")
        eu_db = crdtdb.open(tmp_path / "eu", region="eu")
        us = Replicator(us_db, region_config(tmp_path, certs, "us", []))
        tasks = [asyncio.create_task(us.run(stop))]
        await wait_for(lambda: us.port is not None)
        assert us.port is not None
        eu = Replicator(
            eu_db, region_config(tmp_path, certs, "eu", [PeerConfig("us", "127.0.0.1", us.port)])
        )
        tasks.append(asyncio.create_task(eu.run(stop)))
        try:
            await wait_for(lambda: eu.peers["us"].connected and us.peers["eu"].connected)
            eu_db.put("big/1", {"text": text})
            for i in range(5):
                eu_db.put(f"small/{i}", {"i": i})
            seen: dict[str, float] = {}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while len(seen) < 2 and loop.time() < deadline:
                for doc_id in ("big/1", "small/4"):
                    if doc_id not in seen and us_db.get(doc_id) is not None:
                        seen[doc_id] = loop.time()
                await asyncio.sleep(0.002)
            assert set(seen) == {"big/1", "small/4"}, "not replicated before the deadline"
            assert seen["small/4"] < seen["big/1"]
            assert us_db.get("big/1") == {"text": text}
            await wait_for(lambda: eu_db.merkle_root() == us_db.merkle_root(), timeout=30)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            eu_db.close()
            us_db.close()

    asyncio.run(scenario())


def test_status_reports_each_peer_and_its_lag(tmp_path: Path, certs: Path) -> None:
    """`crdtdb status` shows connection, contact, bytes, lag (records and time), rounds."""
    import subprocess
    import sys

    async def scenario() -> None:
        stop_us, stop_eu = asyncio.Event(), asyncio.Event()
        us_db = crdtdb.open(tmp_path / "us", region="us")
        eu_db = crdtdb.open(tmp_path / "eu", region="eu")
        us = Replicator(us_db, region_config(tmp_path, certs, "us", []))
        us_task = asyncio.create_task(us.run(stop_us))
        await wait_for(lambda: us.port is not None)
        assert us.port is not None
        eu = Replicator(
            eu_db, region_config(tmp_path, certs, "eu", [PeerConfig("us", "127.0.0.1", us.port)])
        )
        eu_task = asyncio.create_task(eu.run(stop_eu))
        try:
            eu_db.put("users/a", {"v": 1})
            await wait_for(lambda: us_db.get("users/a") is not None)
            await wait_for(lambda: eu.peers["us"].rounds >= 1)
            await wait_for(lambda: eu.status()["peers"][0].get("lag_records", {}).get("eu") == 0)
            live = eu.status()["peers"][0]
            assert live["connected"] and live["lag_seconds"] == 0.0
            assert live["bytes_in"] > 0 and live["bytes_out"] > 0
            stop_us.set()
            await asyncio.wait_for(us_task, 10)
            await wait_for(lambda: not eu.peers["us"].connected)
            for i in range(3):
                eu_db.put(f"users/late{i}", {"i": i})
            await asyncio.sleep(0.3)
            down = eu.status()["peers"][0]
            assert down["lag_records"]["eu"] == 3  # from what us last held, kept after the drop
            assert 0.25 <= down["lag_seconds"] < 30
            eu._write_status()
        finally:
            stop_us.set()
            stop_eu.set()
            await asyncio.wait_for(asyncio.gather(us_task, eu_task), 10)
            eu_db.close()
            us_db.close()

    asyncio.run(scenario())
    shown = subprocess.run(
        [sys.executable, "-m", "crdtdb", "status", str(tmp_path / "eu")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "region eu listening on" in shown and "frontier" in shown
    (line,) = [row for row in shown.splitlines() if row.strip().startswith("us ")]
    assert "DISCONNECTED" in line and "last contact" in line and "it lacks 3 records" in line
    assert "anti-entropy rounds" in line and "lag " in line
