"""A misbehaving peer for the hostile-input tests: a raw QUIC client speaking frames by hand.

It completes TLS like a real dialer (cluster CA, ``us.crdtdb``, ALPN
``crdtdb/1``) but presents no client certificate and runs no
:class:`~crdtdb.sync.session.SyncSession`: the test decides, byte by byte,
what goes on the stream, and reads back what the server answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crdtdb.sync import wire
from crdtdb.sync.transport import ALPN, server_name

M = TypeVar("M", bound=wire.Message)


class HostileProtocol(QuicConnectionProtocol):
    """Collects the server's messages and notices when it ends the connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoder = wire.FrameDecoder()
        self.messages: asyncio.Queue[wire.Message] = asyncio.Queue()
        self.terminated = asyncio.Event()
        self.close_reason: str | None = None
        self.stream_id: int | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.decoder.feed(event.data)
            while (message := self.decoder.next_message()) is not None:
                self.messages.put_nowait(message)
        elif isinstance(event, ConnectionTerminated):
            self.close_reason = event.reason_phrase
            self.terminated.set()

    def send_raw(self, data: bytes) -> None:
        """Write ``data`` to the one bidirectional stream (opened on first use)."""
        if self.stream_id is None:
            self.stream_id = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(self.stream_id, data)
        self.transmit()

    def send(self, message: wire.Message) -> None:
        self.send_raw(wire.encode(message))

    def send_on_new_stream(self, message: wire.Message) -> None:
        """Open one more unidirectional stream (a bulk lane) and write ``message`` on it."""
        stream_id = self._quic.get_next_available_stream_id(is_unidirectional=True)
        self._quic.send_stream_data(stream_id, wire.encode(message))
        self.transmit()

    async def keep_alive(self, every: float = 1.0) -> None:
        """Send QUIC PINGs until cancelled, so that no idle timeout ends the connection."""
        while not self.terminated.is_set():
            self._quic.send_ping(0)
            self.transmit()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.terminated.wait(), every)

    async def expect(self, kind: type[M], timeout: float = 5.0) -> M:
        """The next message from the server, which must be a ``kind``."""
        async with asyncio.timeout(timeout):
            message = await self.messages.get()
        assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r:.300}"
        return message

    async def expect_refusal(self, code: str, timeout: float = 5.0) -> wire.Error:
        """Skip what the server sent so far until its Error, then wait for it to hang up."""
        async with asyncio.timeout(timeout):
            while not isinstance(message := await self.messages.get(), wire.Error):
                pass
            await self.terminated.wait()
        assert message.code == code, f"refused with {message!r}, expected code {code!r}"
        return message


def client_configuration(ca: Path, idle_timeout: float) -> QuicConfiguration:
    """A client that checks the server like a real dialer but has no certificate itself."""
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        idle_timeout=idle_timeout,
        server_name=server_name("us"),
    )
    config.load_verify_locations(cafile=str(ca))
    config.verify_mode = ssl.CERT_REQUIRED
    return config


@contextlib.asynccontextmanager
async def hostile_connection(
    port: int, ca: Path, *, idle_timeout: float = 10.0
) -> AsyncIterator[HostileProtocol]:
    """A TLS-verified QUIC connection to us on 127.0.0.1:port, closed on the way out."""
    async with asyncio.timeout(5):
        manager = connect(
            "127.0.0.1",
            port,
            configuration=client_configuration(ca, idle_timeout),
            create_protocol=HostileProtocol,
        )
        protocol = await manager.__aenter__()
    try:
        assert isinstance(protocol, HostileProtocol)
        yield protocol
    finally:
        async with asyncio.timeout(5):
            await manager.__aexit__(None, None, None)


def self_signed(region: str) -> tuple[bytes, bytes]:
    """A (certificate PEM, key PEM) that looks like a region certificate but no CA signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, region)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(server_name(region))]), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
