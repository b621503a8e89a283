"""Replication over real QUIC on loopback: two Replicators in one event loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from .harness.wait import wait_for
from .quic_helpers import eu_dials_us

pytestmark = pytest.mark.integration


def test_two_regions_replicate_over_quic(tmp_path: Path, certs: Path) -> None:
    async def scenario() -> None:
        async with eu_dials_us(tmp_path, certs) as (eu, us):
            eu.db.put("users/a", {"from": "eu"})
            us.db.put("users/b", {"from": "us"})
            await wait_for(lambda: us.db.get("users/a") is not None)
            await wait_for(lambda: eu.db.get("users/b") is not None)
            with eu.db.transaction() as tx:
                for i in range(300):
                    tx.put(f"bulk/{i}", {"i": i})
            await wait_for(lambda: len(us.db.list("bulk")) == 300)
            await wait_for(
                lambda: (
                    eu.replicator.peers["us"].rounds >= 1 and us.replicator.peers["eu"].rounds >= 1
                )
            )
            assert eu.db.merkle_root() == us.db.merkle_root()
            assert eu.replicator.peers["us"].connected and us.replicator.peers["eu"].connected

    asyncio.run(scenario())
    status = (tmp_path / "eu" / "sync-status.json").read_text()
    assert '"region": "eu"' in status


def test_an_idle_link_keeps_running_rounds_and_moving_the_frontier(
    tmp_path: Path, certs: Path
) -> None:
    """The session's timer must not be clobbered by aioquic's own (they once shared a name)."""

    async def scenario() -> None:
        async with eu_dials_us(tmp_path, certs) as (eu, us):
            written = eu.db.put("users/a", {"v": 1})
            link = eu.replicator.peers["us"]
            await wait_for(lambda: link.connected)
            rounds = link.rounds
            # nothing is written from here on: only timers can make progress
            await wait_for(lambda: link.rounds >= rounds + 4)
            await wait_for(lambda: eu.db.frontier() > written and us.db.frontier() > written)
            assert link.connected and us.replicator.peers["eu"].connected

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
        async with eu_dials_us(tmp_path, certs) as (eu, us):
            await wait_for(
                lambda: eu.replicator.peers["us"].connected and us.replicator.peers["eu"].connected
            )
            eu.db.put("big/1", {"text": text})
            for i in range(5):
                eu.db.put(f"small/{i}", {"i": i})
            seen: dict[str, float] = {}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while len(seen) < 2 and loop.time() < deadline:
                for doc_id in ("big/1", "small/4"):
                    if doc_id not in seen and us.db.get(doc_id) is not None:
                        seen[doc_id] = loop.time()
                await asyncio.sleep(0.002)
            assert set(seen) == {"big/1", "small/4"}, "not replicated before the deadline"
            assert seen["small/4"] < seen["big/1"]
            assert us.db.get("big/1") == {"text": text}
            await wait_for(lambda: eu.db.merkle_root() == us.db.merkle_root(), timeout=30)

    asyncio.run(scenario())


def test_status_reports_each_peer_and_its_lag(tmp_path: Path, certs: Path) -> None:
    """`crdtdb status` shows connection, contact, bytes, lag (records and time), rounds."""

    async def scenario() -> None:
        async with eu_dials_us(tmp_path, certs) as (eu, us):
            eu.db.put("users/a", {"v": 1})
            await wait_for(lambda: us.db.get("users/a") is not None)
            await wait_for(lambda: eu.replicator.peers["us"].rounds >= 1)
            await wait_for(
                lambda: eu.replicator.status()["peers"][0].get("lag_records", {}).get("eu") == 0
            )
            live = eu.replicator.status()["peers"][0]
            assert live["connected"] and live["lag_seconds"] == 0.0
            assert live["bytes_in"] > 0 and live["bytes_out"] > 0
            await us.halt()
            await wait_for(lambda: not eu.replicator.peers["us"].connected)
            for i in range(3):
                eu.db.put(f"users/late{i}", {"i": i})
            await asyncio.sleep(0.3)
            down = eu.replicator.status()["peers"][0]
            assert down["lag_records"]["eu"] == 3  # from what us last held, kept after the drop
            assert 0.25 <= down["lag_seconds"] < 30
            eu.replicator._write_status()

    asyncio.run(scenario())
    shown = subprocess.run(
        [sys.executable, "-m", "crdtdb", "status", str(tmp_path / "eu")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "region eu listening on" in shown and "frontier" in shown
    peers = shown.split("\nmembers:")[0]  # the members follow, one line each
    (line,) = [row for row in peers.splitlines() if row.strip().startswith("us ")]
    assert "DISCONNECTED" in line and "last contact" in line and "it lacks 3 records" in line
    assert "anti-entropy rounds" in line and "lag " in line
