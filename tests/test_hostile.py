"""A real Replicator for "us" under attack over QUIC on loopback.

Each test starts us, attacks it, then checks three things:

(a) nothing in us's store changed (log records, Merkle root, documents);
(b) the attack was refused: the client got an ``Error`` with the expected
    code and was hung up on, and us logged ``session with PEER closed:
    REASON`` naming the claimed region (or, before any Hello, saying what was
    wrong in the reason);
(c) us keeps serving: a legitimate "eu" Replicator dialing it replicates a
    write each way.

The hostile peer (:mod:`.hostile_client`) passes TLS like a real dialer but
writes frames by hand; :mod:`.hostile_scenarios` runs the attacks. Garbage,
framing and protocol attacks are here; certificates, impersonation, bad
records from an authenticated peer and replays in test_hostile_auth.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from pathlib import Path

import pytest

from crdtdb.sync import wire

from .hostile_client import hostile_connection
from .hostile_scenarios import (
    LOGGER,
    Us,
    assert_refusal_logged,
    authenticate_as_eu,
    eu_record,
    run_attack,
    say_hello,
    sync_lines,
)

pytestmark = pytest.mark.integration


# ------------------------------------------------- 1. garbage UDP datagrams


def quic_long_header(version: int, dcid: bytes, scid: bytes, packet_type: int = 0) -> bytes:
    """A QUIC long header (RFC 9000 17.2) whose payload will be garbage."""
    first = 0xC0 | (packet_type << 4) | 0x03
    header = bytes([first]) + struct.pack(">I", version)
    header += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    if packet_type == 0:  # Initial: empty token, then a 2-byte length
        header += b"\x00"
    return header


def garbage_datagrams(rng: random.Random) -> list[bytes]:
    """A few hundred datagrams: random bytes of many sizes, and some shaped like QUIC."""
    sizes = [1, 1, 2, 3, 7, 8, 20, 21, 64, 100, 1199, 1200, 1201, 1252, 1472, 1500, 1500]
    sizes += [rng.randint(1, 1500) for _ in range(250)]
    datagrams = [rng.randbytes(size) for size in sizes]
    for size in (1200, 1350, 1500):  # Initial of QUIC v1 whose "encrypted" payload is junk
        head = quic_long_header(1, rng.randbytes(8), rng.randbytes(8))
        rest = size - len(head) - 2
        datagrams.append(head + struct.pack(">H", 0x4000 | rest) + rng.randbytes(rest))
    for _ in range(20):  # short headers for connections that do not exist
        datagrams.append(bytes([0x40 | rng.randrange(64)]) + rng.randbytes(rng.randint(8, 1400)))
    datagrams.append(quic_long_header(1, b"", b"", packet_type=1))  # truncated 0-RTT
    datagrams.append(b"\xc0\x00\x00\x00\x01")  # a long header cut off after the version
    return datagrams


async def version_negotiation_probe(sock: socket.socket, port: int, tag: bytes) -> None:
    """Wait until us has read every datagram sent before this one.

    A packet of an unknown QUIC version gets a Version Negotiation echoing our
    source CID (``tag``); loopback keeps one socket pair's datagrams in order,
    so that answer comes after us has looked at everything sent before. It also
    paces the sender: asyncio reads one datagram per loop iteration, and a
    socket buffer overflowing would drop the garbage silently, untested.
    """
    loop = asyncio.get_running_loop()
    probe = quic_long_header(0x0A0A0A0A, b"us-probe", tag) + bytes(1200)
    sock.sendto(probe, ("127.0.0.1", port))
    async with asyncio.timeout(5):
        while True:
            reply = await loop.sock_recv(sock, 65536)
            # Version Negotiation: version 0, then our source CID as its destination CID
            if reply[1:5] == bytes(4) and reply[5 : 6 + len(tag)] == bytes([len(tag)]) + tag:
                return


def test_garbage_udp_datagrams_are_dropped(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def attack(us: Us) -> None:
        rng = random.Random(0xC0FFEE)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.bind(("127.0.0.1", 0))
            datagrams = garbage_datagrams(rng)
            for batch in range(0, len(datagrams), 16):
                for datagram in datagrams[batch : batch + 16]:
                    sock.sendto(datagram, ("127.0.0.1", us.port))
                await version_negotiation_probe(sock, us.port, b"probe%03d" % batch)
        # (b) aioquic drops undecodable datagrams before any crdtdb code sees them, so
        # there is no session and no line naming the sender (see the report): check at
        # least that nothing was refused as if it were a peer, and nothing broke.
        assert not [r.getMessage() for r in sync_lines(caplog) if r.levelno >= logging.WARNING]

    run_attack(tmp_path, certs, attack)


# ----------------------------------- 2. and 3. a TLS-valid stream of non-frames

GARBAGE_STREAMS = {
    "http": (b"GET / HTTP/1.1\r\nHost: us.crdtdb\r\n\r\n", "bad_frame", "not a crdtdb frame"),
    "random": (b"\x00" + random.Random(7).randbytes(4095), "bad_frame", "not a crdtdb frame"),
    "frame-version": (b"CD\x07\x01\x00\x00\x00\x01\x00", "bad_version", "wire frame version 7"),
    "message-type": (b"CD\x01\x7f\x00\x00\x00\x00", "unknown_type", "unknown message type 0x7f"),
    "hello-payload": (
        b"CD\x01\x01\x00\x00\x00\x05\xff\xff\xff\xff\xff",
        "bad_payload",
        "malformed Hello payload",
    ),
}


@pytest.mark.parametrize("name", sorted(GARBAGE_STREAMS))
def test_garbage_on_the_stream_is_refused(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    data, code, reason = GARBAGE_STREAMS[name]

    async def attack(us: Us) -> None:
        async with hostile_connection(us.port, us.ca) as client:
            client.send_raw(data)
            error = await client.expect_refusal(code)
            assert reason in error.message
        # No Hello yet: the peer has no name, so the reason must say what was wrong.
        await assert_refusal_logged(caplog, "?", f"{code}: ", reason)

    run_attack(tmp_path, certs, attack)


@pytest.mark.parametrize("after_hello", [False, True], ids=["first-bytes", "after-hello"])
def test_oversized_frame_is_refused_after_its_header(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture, after_hello: bool
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    length = wire.MAX_MESSAGE_BYTES + 1

    async def attack(us: Us) -> None:
        async with hostile_connection(us.port, us.ca) as client:
            if after_hello:
                await say_hello(client)
            # Only the 8 header bytes: the refusal must not wait for any of the 16 MiB.
            client.send_raw(struct.pack(">2sBBI", wire.MAGIC, wire.FRAME_VERSION, 0x10, length))
            error = await client.expect_refusal("too_large")
            assert f"announces {length} payload bytes" in error.message
        peer = "eu" if after_hello else "?"
        await assert_refusal_logged(caplog, peer, "too_large: ", f"announces {length}")

    run_attack(tmp_path, certs, attack)


# ------------------------------------------------------ 4. protocol version


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 7, 0xFFFFFFFF])
def test_unsupported_protocol_version_is_refused(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture, version: int
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def attack(us: Us) -> None:
        async with hostile_connection(us.port, us.ca) as client:
            client.send(wire.Hello(version, "eu", random.randbytes(wire.NONCE_BYTES)))
            error = await client.expect_refusal("bad_version")
            assert f"protocol version {version}" in error.message
            assert f"this node speaks {wire.PROTOCOL_VERSION}" in error.message
        # The version is checked before the region is taken, so the line says "?"; the
        # claimed region is in the reason.
        await assert_refusal_logged(
            caplog, "?", "bad_version: ", "region 'eu'", f"protocol version {version}"
        )

    run_attack(tmp_path, certs, attack)


# ----------------------------------------------------- 5. Records before Auth


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        ("main", "unexpected Records in state 'auth'"),
        # the bulk lanes (extra streams) are closed to anyone who has not authenticated
        ("bulk lane", "bulk lane before the handshake"),
    ],
)
def test_records_before_auth_are_refused(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture, stream: str, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    record = eu_record(tmp_path)

    async def attack(us: Us) -> None:
        async with hostile_connection(us.port, us.ca) as client:
            await say_hello(client)
            send = client.send if stream == "main" else client.send_on_new_stream
            send(wire.Records((record,)))
            await client.expect_refusal("unexpected_message")
        await assert_refusal_logged(caplog, "eu", "unexpected_message: ", reason)
        assert us.db.get(record.doc_id) is None

    run_attack(tmp_path, certs, attack)


def test_an_authenticated_peer_opening_too_many_streams_is_refused(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    from crdtdb.sync.session import BULK_LANES

    async def attack(us: Us) -> None:
        async with hostile_connection(us.port, us.ca) as client:
            await authenticate_as_eu(client, certs)
            for _ in range(BULK_LANES + 1):
                client.send_on_new_stream(wire.Diffs(()))  # harmless on a lane, but too many
                await asyncio.sleep(0.01)
            await client.expect_refusal("too_many_streams")
        await assert_refusal_logged(caplog, "eu", "too_many_streams: ", "bulk lanes")

    run_attack(tmp_path, certs, attack)
