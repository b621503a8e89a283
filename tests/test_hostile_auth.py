"""A real Replicator for "us" under attack over QUIC on loopback: certificates,
impersonation, bad records from an authenticated peer, replayed proofs, idle peers.

The checks (a), (b) and (c) are those of test_hostile.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

import pytest

import crdtdb
from crdtdb.hlc import Hlc
from crdtdb.sync import wire
from crdtdb.sync.certs import init_ca, issue
from crdtdb.sync.config import PeerConfig
from crdtdb.sync.node import Replicator
from crdtdb.sync.session import SessionOptions

from .harness.config import region_config
from .harness.wait import wait_for
from .hostile_client import hostile_connection, self_signed
from .hostile_scenarios import (
    LOGGER,
    SCENARIO_TIMEOUT,
    Us,
    assert_refusal_logged,
    authenticate_as_eu,
    eu_record,
    proof,
    run_attack,
    running_us,
    say_hello,
    sealed,
)

pytestmark = pytest.mark.integration


# --------------------------------------------- 6. a certificate the CA never signed


def rogue_ca_eu(tmp: Path) -> tuple[bytes, bytes]:
    """eu's certificate and key from another cluster's CA."""
    directory = tmp / "rogue-certs"
    init_ca(directory, name="rogue CA")
    cert, key = issue(directory, "eu")
    return cert.read_bytes(), key.read_bytes()


@pytest.mark.parametrize("kind", ["self-signed", "other-ca"])
def test_certificate_not_signed_by_the_cluster_ca_is_refused(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    cert, key = self_signed("eu") if kind == "self-signed" else rogue_ca_eu(tmp_path)

    async def attack(us: Us) -> None:
        async with hostile_connection(us.port, us.ca) as client:
            server_hello, nonce = await say_hello(client)
            client.send(wire.Auth("eu", cert, proof(key, server_hello, nonce)))
            error = await client.expect_refusal("peer_auth")
            assert "not signed by this cluster's CA" in error.message
        await assert_refusal_logged(
            caplog, "eu", "peer_auth: ", "is not signed by this cluster's CA"
        )

    run_attack(tmp_path, certs, attack)


# ------------------------------------------------ 7. ap pretending to be eu


def test_certified_region_claiming_another_is_refused(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    ap_cert, ap_key = (certs / "ap.pem").read_bytes(), (certs / "ap.key").read_bytes()

    async def attack(us: Us) -> None:
        # Auth says eu, as Hello did: the certificate's region gives ap away.
        async with hostile_connection(us.port, us.ca) as client:
            server_hello, nonce = await say_hello(client, "eu")
            client.send(wire.Auth("eu", ap_cert, proof(ap_key, server_hello, nonce, "eu")))
            error = await client.expect_refusal("peer_auth")
            assert "certificate is for region 'ap' but the peer claims 'eu'" in error.message
        await assert_refusal_logged(
            caplog, "eu", "peer_auth: ", "certificate is for region 'ap' but the peer claims 'eu'"
        )
        # Auth says ap (true, and signed as ap) after a Hello that said eu.
        async with hostile_connection(us.port, us.ca) as client:
            server_hello, nonce = await say_hello(client, "eu")
            client.send(wire.Auth("ap", ap_cert, proof(ap_key, server_hello, nonce, "ap")))
            await client.expect_refusal("bad_region")
        await assert_refusal_logged(
            caplog, "eu", "bad_region: ", "Auth is for region 'ap' but Hello said 'eu'"
        )

    run_attack(tmp_path, certs, attack)


# --------------------------------------- 8. an authenticated eu sending bad records


def test_authenticated_peer_sending_undecodable_update_is_refused(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    record = replace(eu_record(tmp_path), update=b"\xff\x00garbage")

    async def attack(us: Us) -> None:
        async with hostile_connection(us.port, us.ca) as client:
            await authenticate_as_eu(client, certs)
            for message in sealed([record], certs):  # signed by eu: the store refuses it
                client.send(message)
            error = await client.expect_refusal("invalid_update")
            assert "eu#1" in error.message
        await assert_refusal_logged(
            caplog, "eu", "invalid_update: ", "refused record eu#1 for users/evil"
        )
        assert us.db.get("users/evil") is None

    run_attack(tmp_path, certs, attack)


def test_authenticated_peer_sending_future_hlc_is_refused(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    good = eu_record(tmp_path)
    hour_ahead = Hlc.from_parts(good.hlc.wall_ms + 3_600_000)
    record = replace(good, hlc=hour_ahead)

    async def attack(us: Us) -> None:
        hlc_before = us.db.hlc
        async with hostile_connection(us.port, us.ca) as client:
            await authenticate_as_eu(client, certs)
            for message in sealed([record], certs):
                client.send(message)
            await client.expect_refusal("clock_skew")
        await assert_refusal_logged(caplog, "eu", "clock_skew: ", f"remote HLC {hour_ahead}")
        assert us.db.get(record.doc_id) is None
        assert us.db.hlc.wall_ms < hour_ahead.wall_ms - 3_000_000, "us adopted the future clock"
        assert us.db.hlc >= hlc_before

    run_attack(tmp_path, certs, attack)


# ---------------------------------------------------------- 9. a replayed proof


def test_replayed_auth_is_refused(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    eu_cert, eu_key = (certs / "eu.pem").read_bytes(), (certs / "eu.key").read_bytes()

    async def attack(us: Us) -> None:
        # Connection 1: a genuine proof for its nonces, which us accepts.
        async with hostile_connection(us.port, us.ca) as client:
            first_hello, client_nonce = await say_hello(client)
            captured = wire.Auth("eu", eu_cert, proof(eu_key, first_hello, client_nonce))
            client.send(captured)
            await client.expect(wire.AuthOk)
        # Connection 2: the same Hello (even the same client nonce) and the captured Auth.
        async with hostile_connection(us.port, us.ca) as client:
            second_hello, _ = await say_hello(client, nonce=client_nonce)
            assert second_hello.nonce != first_hello.nonce
            client.send(captured)
            error = await client.expect_refusal("peer_auth")
            assert "bad signature" in error.message
        await assert_refusal_logged(caplog, "eu", "peer_auth: ", "bad signature")

    run_attack(tmp_path, certs, attack)


# ------------------------------------------------------- beyond the brief's list


def test_peer_that_never_authenticates_is_dropped_after_the_handshake_timeout(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A slow peer: Hello, then nothing but QUIC keep-alives. us must hang up after 10 s.

    FAILS (bug, see the report): sync/transport.py SessionProtocol keeps its session
    timer in ``self._timer``, the attribute aioquic's QuicConnectionProtocol uses for
    the QUIC timer; aioquic's ``transmit()`` cancels the session's timer as if it were
    its own (and ``_arm_timer`` cancels aioquic's), so the handshake deadline never
    fires and an unauthenticated connection stays open for as long as the peer pings.
    """
    caplog.set_level(logging.INFO, logger=LOGGER)
    deadline = SessionOptions().handshake_timeout

    async def attack(us: Us) -> None:
        async with hostile_connection(us.port, us.ca, idle_timeout=60) as client:
            await say_hello(client)
            pinger = asyncio.create_task(client.keep_alive())
            try:
                await client.expect_refusal("timeout", timeout=deadline + 3)
            except TimeoutError:
                raise AssertionError(
                    f"us did not end a connection that never sent Auth within {deadline + 3} s"
                ) from None
            finally:
                pinger.cancel()
        # _fail("timeout", ..., None) carries no error object, so the Replicator logs at INFO.
        await assert_refusal_logged(
            caplog, "eu", "timeout: ", "did not complete the handshake", level=logging.WARNING
        )

    run_attack(tmp_path, certs, attack)


def test_refused_impostor_does_not_mark_the_real_peer_disconnected(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real eu is connected; someone without eu's key says Hello as eu and is refused.

    FAILS (bug, see the report): Replicator._on_event (sync/node.py) files every
    event under the region the peer *claimed* in Hello, authenticated or not, so the
    impostor's Closed event sets ``peers["eu"].connected = False`` (and overwrites its
    byte counters and last_error) while the real eu session is still up.
    """
    caplog.set_level(logging.INFO, logger=LOGGER)
    cert, key = self_signed("eu")

    async def scenario() -> None:
        async with asyncio.timeout(SCENARIO_TIMEOUT), running_us(tmp_path, certs) as us:
            stop = asyncio.Event()
            eu_db = crdtdb.open(tmp_path / "live" / "eu", region="eu")
            eu_config = region_config(
                tmp_path / "live", certs, "eu", [PeerConfig("us", "127.0.0.1", us.port)]
            )
            eu_task = asyncio.create_task(Replicator(eu_db, eu_config).run(stop))
            try:
                await wait_for(lambda: "eu" in us.replicator.peers, 10)
                await wait_for(lambda: us.replicator.peers["eu"].connected, 10)
                async with hostile_connection(us.port, us.ca) as client:
                    server_hello, nonce = await say_hello(client)
                    client.send(wire.Auth("eu", cert, proof(key, server_hello, nonce)))
                    await client.expect_refusal("peer_auth")
                await assert_refusal_logged(caplog, "eu", "peer_auth: ")
                real = [p for p in us.replicator.protocols if p.session and p.session.peer == "eu"]
                assert real and real[0].session is not None and real[0].session.established
                assert us.replicator.peers["eu"].connected, "the impostor disconnected eu"
                (entry,) = [p for p in us.replicator.status()["peers"] if p["region"] == "eu"]
                assert entry["connected"]
            finally:
                stop.set()
                await asyncio.wait_for(eu_task, 10)
                eu_db.close()

    asyncio.run(scenario())
