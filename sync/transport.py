"""The QUIC glue: the only module that imports ``aioquic.asyncio``.

It pumps a :class:`~.session.SyncSession` over QUIC streams: the session's
main lane on one bidirectional stream (opened by the dialing side), and
each of its bulk lanes on a unidirectional stream of the sending side,
opened when first used. Stream data in, session bytes out, the session's
timer on the event loop. TLS 1.3 (aioquic) authenticates the
listening side to the dialer, which checks the certificate against the
cluster CA and the name ``REGION.crdtdb``; the session's Auth message
authenticates the dialer (see :mod:`.certs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived, StreamReset

from .config import TlsFiles  # re-exported: its home was here
from .session import Event, SyncSession

__all__ = [
    "ALPN",
    "HandshakeRefused",
    "SessionProtocol",
    "StreamProtocol",
    "TlsFiles",
    "dial",
    "dial_streams",
    "listen",
    "server_name",
]

log = logging.getLogger("crdtdb.sync.transport")
ALPN = "crdtdb/1"


def server_name(region: str) -> str:
    """The TLS name a region's certificate carries."""
    return f"{region}.crdtdb"


class HandshakeRefused(ConnectionError):
    """The QUIC/TLS handshake was closed by either side, with this reason (a TLS alert's
    text, say: the peer's certificate does not match the region we expect)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


SessionFactory = Callable[[bool], SyncSession]
"""Makes the session for a new connection; the argument says whether we dialed."""
EventSink = Callable[["SessionProtocol", Event], None]


class SessionProtocol(QuicConnectionProtocol):
    """One QUIC connection carrying one sync session."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session: SyncSession | None = None
        self.on_event: EventSink | None = None
        self.closed = asyncio.Event()
        self._stream_id: int | None = None
        self._lane_streams: dict[int, int] = {}
        """Our unidirectional stream per bulk lane we send on."""
        self._peer_lanes: dict[int, int] = {}
        """The peer's streams other than the main one, numbered 1, 2, ... as they appear."""
        self._session_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.terminated: str | None = None
        """Why QUIC closed the connection (its reason phrase or error code), once it did."""

    def start(self, session: SyncSession, on_event: EventSink, *, dialer: bool) -> None:
        self.session = session
        self.on_event = on_event
        if dialer:
            self._stream_id = self._quic.get_next_available_stream_id()
            session.peer_certificate = self.peer_certificate()
        self.flush()

    def send_stream(self, stream_id: int | None, data: bytes, *, end: bool = False) -> int:
        """Write ``data`` on our unidirectional stream ``stream_id`` (None: open one), outside
        the session's lanes (a snapshot's bytes, :mod:`.snapshot`); returns the stream id."""
        if stream_id is None:
            stream_id = self._quic.get_next_available_stream_id(is_unidirectional=True)
        self._quic.send_stream_data(stream_id, data, end_stream=end)
        self.transmit()
        return stream_id

    def peer_certificate(self) -> bytes | None:
        """The certificate (DER) the peer's TLS handshake presented, if it presented one."""
        tls = getattr(self._quic, "tls", None)  # aioquic keeps no public accessor
        cert = getattr(tls, "_peer_certificate", None)
        if cert is None:
            return None
        from cryptography.hazmat.primitives.serialization import Encoding

        der: bytes = cert.public_bytes(Encoding.DER)
        return der

    @property
    def remote(self) -> str:
        """The peer's address, for log lines (the region it claims may be a lie)."""
        paths = getattr(self._quic, "_network_paths", None)  # aioquic keeps no public accessor
        if not paths:
            return "?"
        host, port = paths[0].addr[:2]
        return f"{host}:{port}"

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and self.session is not None:
            stream_id = event.stream_id
            if self._stream_id is None and not stream_id & 2:  # the first bidirectional one
                self._stream_id = stream_id
            if stream_id == self._stream_id:
                self.session.receive(event.data, self._loop.time())
            else:
                # Any other stream is a bulk lane; the session refuses one too many.
                lane = self._peer_lanes.setdefault(stream_id, len(self._peer_lanes) + 1)
                self.session.receive(event.data, self._loop.time(), lane)
            self.flush()
        elif isinstance(event, StreamReset) and self.session is not None:
            self.session.close(f"the peer reset stream {event.stream_id}")
            self.flush()
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event.reason_phrase or f"QUIC error code {event.error_code:#x}"
            if self.session is not None and self.session.state != "closed":
                self.session.close(
                    f"connection terminated: {event.reason_phrase or event.error_code}"
                )
                self._drain_events()
            self._cancel_timer()
            self.closed.set()

    def flush(self) -> None:
        """Send what the session has for the peer, report its events, re-arm its timer."""
        session = self.session
        if session is None:
            return
        if self._stream_id is not None:  # a listener learns it from the first data
            data = session.data_to_send(self._loop.time())
            if data:
                self._quic.send_stream_data(self._stream_id, data)
            lanes = session.lanes_to_send()
            for lane, lane_data in lanes:
                stream_id = self._lane_streams.get(lane)
                if stream_id is None:
                    stream_id = self._quic.get_next_available_stream_id(is_unidirectional=True)
                    self._lane_streams[lane] = stream_id
                self._quic.send_stream_data(stream_id, lane_data)
            if data or lanes:
                self.transmit()
        self._drain_events()
        if session.state == "closed":
            self._cancel_timer()
            self._quic.close(error_code=0, reason_phrase="sync session closed")
            self.transmit()
            return
        self._arm_timer()

    def _drain_events(self) -> None:
        assert self.session is not None
        while (event := self.session.next_event()) is not None:
            if self.on_event is not None:
                self.on_event(self, event)

    # (Not ``_timer``: QuicConnectionProtocol uses that name for the QUIC timer.)
    def _arm_timer(self) -> None:
        assert self.session is not None
        when = self.session.get_timer()
        timer = self._session_timer
        if timer is not None and when is not None and timer.when() == when:
            return  # already set for then: most datagrams do not move the session's timer
        self._cancel_timer()
        if when is not None:
            self._session_timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._session_timer = None
        if self.session is not None:
            self.session.handle_timer(self._loop.time())
            self.flush()

    def _cancel_timer(self) -> None:
        if self._session_timer is not None:
            self._session_timer.cancel()
            self._session_timer = None


class StreamProtocol(QuicConnectionProtocol):
    """One QUIC connection driven by a plain callback per stream's data (no sync session):
    the joining side of a bootstrap (:mod:`.bootstrap`) speaks the handshake itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_data: Callable[[int, bytes, bool], None] | None = None
        """Called with (stream id, data, whether the stream ended there)."""
        self.closed = asyncio.Event()
        self.terminated: str | None = None
        self.main_stream = self._quic.get_next_available_stream_id()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and self.on_data is not None:
            self.on_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event.reason_phrase or f"QUIC error code {event.error_code:#x}"
            self.closed.set()

    def send(self, data: bytes) -> None:
        """Write ``data`` on the main (bidirectional) stream."""
        self._quic.send_stream_data(self.main_stream, data)
        self.transmit()


@contextlib.asynccontextmanager
async def dial_streams(
    host: str, port: int, peer: str, tls: TlsFiles, *, timeout: float = 10.0
) -> AsyncIterator[StreamProtocol]:
    """A QUIC connection to ``peer`` (TLS checked as :func:`dial` does), closed on exit."""
    configuration = _configuration(tls, is_client=True, peer=peer)
    async with asyncio.timeout(timeout):
        manager = connect(
            host,
            port,
            configuration=configuration,
            create_protocol=StreamProtocol,
            wait_connected=True,
        )
        protocol: StreamProtocol = await manager.__aenter__()  # type: ignore[assignment]
    try:
        yield protocol
    finally:
        await manager.__aexit__(None, None, None)


def _configuration(tls: TlsFiles, *, is_client: bool, peer: str | None) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        idle_timeout=20.0,
        max_datagram_frame_size=None,
    )
    config.load_cert_chain(tls.cert, tls.key)
    if is_client:
        config.load_verify_locations(cafile=str(tls.ca))
        config.verify_mode = ssl.CERT_REQUIRED
        config.server_name = server_name(peer) if peer else None
    return config


async def listen(
    host: str,
    port: int,
    tls: TlsFiles,
    make_session: SessionFactory,
    on_event: EventSink,
) -> QuicServer:
    """Accept QUIC connections; each gets a session from ``make_session(False)``."""

    def create_protocol(*args: Any, **kwargs: Any) -> SessionProtocol:
        protocol = SessionProtocol(*args, **kwargs)
        protocol.start(make_session(False), on_event, dialer=False)
        return protocol

    # retry: a client must prove it receives at its source address before the
    # server keeps any state for it (no sessions for spoofed Initial packets).
    return await serve(
        host,
        port,
        configuration=_configuration(tls, is_client=False, peer=None),
        create_protocol=create_protocol,
        retry=True,
    )


async def dial(
    host: str,
    port: int,
    peer: str,
    tls: TlsFiles,
    make_session: SessionFactory,
    on_event: EventSink,
    *,
    timeout: float = 10.0,
) -> None:
    """Connect to ``peer`` and run the session until the connection ends.

    A handshake that either side closes raises :class:`HandshakeRefused` with the
    reason (aioquic's own ``ConnectionError`` says nothing), so the dialing side
    logs why, e.g. that the peer's certificate is not for the region we expect.
    """
    configuration = _configuration(tls, is_client=True, peer=peer)
    made: list[SessionProtocol] = []

    def create_protocol(*args: Any, **kwargs: Any) -> SessionProtocol:
        made.append(SessionProtocol(*args, **kwargs))
        return made[-1]

    try:
        async with asyncio.timeout(timeout):
            manager = connect(
                host,
                port,
                configuration=configuration,
                create_protocol=create_protocol,
                wait_connected=True,
            )
            protocol: SessionProtocol = await manager.__aenter__()  # type: ignore[assignment]
    except ConnectionError:
        reason = made[-1].terminated if made else None
        if reason is None:
            raise
        if f"'{server_name(peer)}' doesn't match" in reason:  # aioquic's words for it
            reason += (
                f" (the server at {host}:{port} is not region {peer!r}: check this peer's"
                " region and address in the config)"
            )
        raise HandshakeRefused(f"the QUIC/TLS handshake failed: {reason}") from None
    try:
        protocol.start(make_session(True), on_event, dialer=True)
        await protocol.closed.wait()
    finally:
        await manager.__aexit__(None, None, None)
