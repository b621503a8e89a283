"""How the hostile-peer tests run an attack on a real "us" Replicator (test_hostile*.py).

:func:`run_attack` starts us, runs the attack, then checks that us's store did
not change and that a legitimate eu still replicates with it; the attacks use
:func:`assert_refusal_logged` and the handshake helpers to check the refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hashes import SHA256

import crdtdb
from crdtdb import membership
from crdtdb.records import UpdateRecord
from crdtdb.sync import wire
from crdtdb.sync.certs import sign_challenge
from crdtdb.sync.config import PeerConfig
from crdtdb.sync.node import Replicator
from crdtdb.sync.signing import GENESIS, chain_hashes, fingerprint, seal_payload

from .harness.config import region_config
from .harness.wait import wait_for
from .hostile_client import HostileProtocol

LOGGER = "crdtdb.sync"
SCENARIO_TIMEOUT = 30.0


@dataclass
class Us:
    """The attacked region: its store, its Replicator and where it listens."""

    db: crdtdb.Database
    replicator: Replicator
    port: int
    certs: Path
    tmp: Path

    @property
    def ca(self) -> Path:
        return self.certs / "ca.pem"


def snapshot(db: crdtdb.Database) -> dict[str, Any]:
    """Everything an attack must not change (the HLC may move: us heartbeats)."""
    info = db.info()
    return {
        "counts": {k: info[k] for k in ("documents", "live_documents", "log_records")},
        "merkle_root": info["merkle_root"],
        "origins": info["origins"],
        "log": [(r.origin, r.seq, r.doc_id, r.update) for r in db.changes()],
        "documents": {
            doc_id: db.get(doc_id)
            for collection in db.collections()
            for doc_id in db.list(collection)
        },
    }


@contextlib.asynccontextmanager
async def running_us(
    tmp_path: Path, certs: Path, members: tuple[str, ...] = ("eu",)
) -> AsyncIterator[Us]:
    db = crdtdb.open(tmp_path / "us", region="us")
    for member in members:  # eu belongs to the cluster (its impostors do not)
        membership.ensure(db, member, "active")
    stop = asyncio.Event()
    replicator = Replicator(db, region_config(tmp_path, certs, "us", []))
    task = asyncio.create_task(replicator.run(stop))
    try:
        db.put("users/seed", {"from": "us"})
        await wait_for(lambda: replicator.port is not None or task.done(), 10)
        assert replicator.port is not None, "us did not start listening"
        yield Us(db, replicator, replicator.port, certs, tmp_path)
        assert not task.done(), "us's Replicator stopped during the attack"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        db.close()


async def assert_eu_replicates(us: Us) -> None:
    """(c): a legitimate eu dials us and a write goes each way."""
    stop = asyncio.Event()
    eu_db = crdtdb.open(us.tmp / "eu", region="eu")
    eu = Replicator(
        eu_db, region_config(us.tmp, us.certs, "eu", [PeerConfig("us", "127.0.0.1", us.port)])
    )
    task = asyncio.create_task(eu.run(stop))
    try:
        eu_db.put("users/from-eu", {"after": "attack"})
        us.db.put("users/from-us", {"after": "attack"})
        await wait_for(lambda: us.db.get("users/from-eu") == {"after": "attack"}, 10)
        await wait_for(lambda: eu_db.get("users/from-us") == {"after": "attack"}, 10)
        assert eu_db.get("users/seed") == {"from": "us"}
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        eu_db.close()


Attack = Callable[[Us], Awaitable[None]]


def run_attack(tmp_path: Path, certs: Path, attack: Attack) -> None:
    """Start us, run ``attack``, then check (a) and (c); the attack checks (b) itself."""

    async def scenario() -> None:
        loop_errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
        async with asyncio.timeout(SCENARIO_TIMEOUT), running_us(tmp_path, certs) as us:
            before = snapshot(us.db)
            await attack(us)
            assert snapshot(us.db) == before, "the attack changed us's store"
            await assert_eu_replicates(us)
        # An exception escaping a protocol callback lands here, not in the test.
        assert not loop_errors, f"unhandled errors in us's event loop: {loop_errors}"

    asyncio.run(scenario())


def sync_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


async def assert_refusal_logged(
    caplog: pytest.LogCaptureFixture,
    peer: str,
    *reason_parts: str,
    level: int = logging.WARNING,
) -> str:
    """(b): us logged ``session with WHO closed: ...`` at ``level``, the reason naming the problem.

    WHO always carries the peer's address. ``peer`` is the region the attacker
    claimed in its Hello ("eu at ADDR" once authenticated, "ADDR (claims 'eu')"
    before), or "?" if it never sent one (then the reason must say what was wrong).
    """
    address = r"127\.0\.0\.1:\d+"
    if peer == "?":
        who = address
    else:
        who = rf"(?:{re.escape(peer)} at {address}|{address} \(claims '{re.escape(peer)}'\))"
    pattern = re.compile(rf"us: session with {who} closed: ")

    def matching() -> list[logging.LogRecord]:
        return [
            r
            for r in sync_lines(caplog)
            if pattern.search(r.getMessage())
            and all(part in r.getMessage() for part in reason_parts)
        ]

    try:
        await wait_for(lambda: bool(matching()), 5)
    except AssertionError:
        lines = [r.getMessage() for r in sync_lines(caplog)]
        raise AssertionError(f"no refusal naming {peer!r} / {reason_parts} in {lines}") from None
    line = matching()[0]
    assert line.levelno == level, f"a refused attack logged at {line.levelname}"
    return line.getMessage()


def eu_record(tmp: Path, doc_id: str = "users/evil") -> UpdateRecord:
    """A well-formed record as eu would send it (seq 1), made in a scratch eu store."""
    with crdtdb.open(tmp / "scratch-eu", region="eu") as scratch:
        scratch.put(doc_id, {"evil": True})
        (record,) = scratch.changes()
    return record


async def say_hello(
    client: HostileProtocol, region: str = "eu", nonce: bytes | None = None
) -> tuple[wire.Hello, bytes]:
    """Send our Hello, return the server's Hello and the nonce we sent."""
    nonce = nonce if nonce is not None else random.randbytes(wire.NONCE_BYTES)
    client.send(wire.Hello(wire.PROTOCOL_VERSION, region, nonce))
    server_hello = await client.expect(wire.Hello)
    assert server_hello.region == "us"
    return server_hello, nonce


def proof(
    key_pem: bytes, server_hello: wire.Hello, client_nonce: bytes, region: str = "eu"
) -> bytes:
    return sign_challenge(
        key_pem,
        server_nonce=server_hello.nonce,
        client_nonce=client_nonce,
        client_region=region,
        server_region=server_hello.region,
    )


async def authenticate_as_eu(client: HostileProtocol, certs: Path) -> None:
    """A correct handshake as eu, with eu's own certificate and key."""
    server_hello, nonce = await say_hello(client)
    signature = proof((certs / "eu.key").read_bytes(), server_hello, nonce)
    client.send(wire.Auth("eu", (certs / "eu.pem").read_bytes(), signature))
    await client.expect(wire.AuthOk)


async def authenticate_as(client: HostileProtocol, certs: Path, region: str) -> None:
    """A correct handshake as ``region``, with its own certificate and key."""
    server_hello, nonce = await say_hello(client, region)
    signature = proof((certs / f"{region}.key").read_bytes(), server_hello, nonce, region)
    client.send(wire.Auth(region, (certs / f"{region}.pem").read_bytes(), signature))
    await client.expect(wire.AuthOk)


def sealed(
    records: Sequence[UpdateRecord],
    certs: Path,
    signer: str | None = None,
    *,
    base: bytes = GENESIS,
) -> tuple[wire.Certificates, wire.Records]:
    """``records`` (one origin's, consecutive) sealed as one run with ``signer``'s key
    (by default their origin's: genuine), and the certificate that goes before them."""
    origin = records[0].origin
    name = signer or origin
    cert, key = (certs / f"{name}.pem").read_bytes(), (certs / f"{name}.key").read_bytes()
    hashes = chain_hashes(base, records)
    private = serialization.load_pem_private_key(key, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    last = records[-1].seq
    signature = private.sign(seal_payload(origin, last, hashes[-1]), ec.ECDSA(SHA256()))
    seal = wire.Seal(origin, records[0].seq, last, base, fingerprint(cert), signature)
    return wire.Certificates((cert,)), wire.Records(tuple(records), (seal,))
