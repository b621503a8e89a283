"""The UDP fault-injection proxy: its sans-IO model, then real sockets on 127.0.0.1.

Waits poll a condition against a deadline; every scenario runs under an
asyncio timeout and closes what it opened. Latency is only checked from below.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .harness.wait import wait_for, wait_until
from .netfault import Address, Datagram, FaultProxy, Faults, Impairment, Which

T = TypeVar("T")
TIMEOUT = 10.0  # seconds for any one scenario; generous, a passing run takes far less
WAIT = 5.0  # seconds for any one condition inside a scenario
POLL = 0.002  # seconds between two looks at it


def run(scenario: Awaitable[T], timeout: float = TIMEOUT) -> T:
    """Run ``scenario`` in a fresh loop, failing it after ``timeout`` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await scenario

    return asyncio.run(bounded())


def messages(n: int, tag: str = "m") -> list[bytes]:
    """``n`` distinct, numbered payloads."""
    return [f"{tag}{i:04d}".encode() for i in range(n)]


# -- the sans-IO model ------------------------------------------------------------------

CLIENT: Address = ("127.0.0.1", 5000)


def up(data: bytes) -> Datagram:
    return Datagram("up", CLIENT, data)


def test_faults_reject_values_that_make_no_sense() -> None:
    with pytest.raises(ValueError, match=r"drop is a probability"):
        Faults(drop=1.5)
    with pytest.raises(ValueError, match=r"delay is in seconds"):
        Faults(delay=-0.1)
    with pytest.raises(ValueError, match=r"reorder is a probability"):
        Faults(reorder=float("nan"))


def test_the_delay_queue_is_bounded_and_overflow_is_counted() -> None:
    impairment = Impairment(max_pending=4)
    impairment.set_faults("up", Faults(delay=1.0))
    for data in messages(10):
        impairment.receive(up(data), now=100.0)
    counters = impairment.stats()["up"]
    assert (counters["delayed"], counters["overflowed"]) == (4, 6)
    assert impairment.get_timer() == 101.0
    impairment.handle_timer(100.5)
    assert impairment.datagrams_to_send() == []
    impairment.handle_timer(101.0)
    assert [d.data for d in impairment.datagrams_to_send()] == messages(4)
    assert impairment.pending == 0 and impairment.get_timer() is None


def test_a_held_datagram_goes_out_alone_after_the_hold_time() -> None:
    impairment = Impairment(hold=0.05)
    impairment.set_faults("up", Faults(reorder=1.0))
    impairment.receive(up(b"only"), now=1.0)
    assert impairment.datagrams_to_send() == [] and impairment.get_timer() == 1.05
    impairment.handle_timer(1.05)
    assert [d.data for d in impairment.datagrams_to_send()] == [b"only"]
    assert impairment.stats()["up"]["reordered"] == 0  # nothing overtook it


def test_a_partition_also_loses_datagrams_already_in_flight() -> None:
    impairment = Impairment()
    impairment.set_faults("up", Faults(delay=0.1))
    impairment.receive(up(b"in flight"), now=0.0)
    impairment.set_faults("up", Faults(delay=0.1, partitioned=True))
    impairment.handle_timer(0.1)
    assert impairment.datagrams_to_send() == []
    assert impairment.stats()["up"]["partitioned"] == 1


def test_the_same_seed_makes_the_same_decisions() -> None:
    def outcome(seed: int) -> list[bytes]:
        impairment = Impairment(seed=seed)
        impairment.set_faults("up", Faults(drop=0.3, duplicate=0.3, reorder=0.3))
        for data in messages(200):
            impairment.receive(up(data), now=0.0)
        impairment.handle_timer(1.0)
        return [d.data for d in impairment.datagrams_to_send()]

    assert outcome(7) == outcome(7)
    assert outcome(7) != outcome(8)


# -- real sockets -----------------------------------------------------------------------


class Echo(asyncio.DatagramProtocol):
    """The target: returns every datagram to its source and remembers what it saw."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[bytes] = []
        self.sources: list[Address] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.append(data)
        self.sources.append((addr[0], addr[1]))
        assert self.transport is not None
        self.transport.sendto(data, addr)


class Inbox(asyncio.DatagramProtocol):
    """A client: collects the replies with their arrival times."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.replies: list[bytes] = []
        self.arrivals: dict[bytes, list[float]] = {}

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.replies.append(data)
        self.arrivals.setdefault(data, []).append(self.loop.time())


@dataclass
class Client:
    """One client socket talking to the proxy."""

    transport: asyncio.DatagramTransport
    inbox: Inbox
    sent_at: dict[bytes, float] = field(default_factory=dict)

    def send(self, payloads: list[bytes]) -> None:
        for data in payloads:
            self.sent_at[data] = self.inbox.loop.time()
            self.transport.sendto(data)

    @property
    def address(self) -> Address:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (host, port)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[Address, Echo]]:
    loop = asyncio.get_running_loop()
    transport, echo = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    try:
        host, port = transport.get_extra_info("sockname")[:2]
        yield (host, port), echo
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def client(remote: Address) -> AsyncIterator[Client]:
    loop = asyncio.get_running_loop()
    transport, inbox = await loop.create_datagram_endpoint(Inbox, remote_addr=remote)
    try:
        yield Client(transport, inbox)
    finally:
        transport.close()


@dataclass
class Rig:
    """An echo target behind a proxy, and one client in front of it."""

    proxy: FaultProxy
    echo: Echo
    client: Client


@contextlib.asynccontextmanager
async def rig(**faults: Any) -> AsyncIterator[Rig]:
    """A fresh rig; ``faults`` (Faults fields) apply to both directions."""
    async with (
        echo_server() as (target, echo),
        FaultProxy(target, seed=1, faults=Faults(**faults)) as proxy,
        client(proxy.address) as peer,
    ):
        yield Rig(proxy, echo, peer)


def test_without_faults_every_datagram_arrives_once_in_order() -> None:
    async def scenario() -> None:
        async with rig() as r:
            sent = messages(50)
            r.client.send(sent)
            await wait_for(
                lambda: len(r.client.inbox.replies) == 50, WAIT, "50 echoes", interval=POLL
            )
            stats = r.proxy.stats()
            assert r.echo.received == sent and r.client.inbox.replies == sent
            for direction in ("up", "down"):
                assert stats[direction]["received"] == stats[direction]["forwarded"] == 50
            assert r.proxy.pending == 0

    run(scenario())


@pytest.mark.parametrize("direction", ["up", "down", "both"])
def test_drop_everything_loses_every_datagram(direction: Which) -> None:
    async def scenario() -> None:
        async with rig() as r:
            r.proxy.configure(direction, drop=1.0)
            r.client.send(messages(20))
            # Dropped on the way up, nothing comes down; with "down" only the replies are.
            lossy = "down" if direction == "down" else "up"
            await wait_for(
                lambda: r.proxy.stats()[lossy]["dropped"] == 20, WAIT, "20 drops", interval=POLL
            )
            stats = r.proxy.stats()
            assert stats[lossy] | {"received": 20, "dropped": 20, "forwarded": 0} == stats[lossy]
            assert r.client.inbox.replies == []
            assert len(r.echo.received) == (0 if direction != "down" else 20)

    run(scenario())


def test_duplicate_everything_delivers_each_datagram_twice() -> None:
    async def scenario() -> None:
        async with rig() as r:
            r.proxy.configure("up", duplicate=1.0)
            sent = messages(20)
            r.client.send(sent)
            await wait_for(
                lambda: len(r.client.inbox.replies) == 40, WAIT, "40 echoes", interval=POLL
            )
            stats = r.proxy.stats()
            assert Counter(r.client.inbox.replies) == Counter(sent * 2)
            assert (stats["up"]["duplicated"], stats["up"]["forwarded"]) == (20, 40)
            assert (stats["down"]["received"], stats["down"]["forwarded"]) == (40, 40)

    run(scenario())


def test_reorder_changes_the_order_but_not_the_set() -> None:
    async def scenario() -> None:
        async with rig() as r:
            r.proxy.configure("up", reorder=0.5)
            sent = messages(40)
            r.client.send(sent)
            await wait_for(
                lambda: len(r.client.inbox.replies) == 40, WAIT, "40 echoes", interval=POLL
            )
            assert r.client.inbox.replies != sent
            assert sorted(r.client.inbox.replies) == sent
            assert r.proxy.stats()["up"]["reordered"] > 0

    run(scenario())


def test_delay_adds_at_least_the_configured_latency_each_way() -> None:
    delay = 0.03

    async def scenario() -> None:
        async with rig(delay=delay, jitter=0.01) as r:
            sent = messages(20)
            r.client.send(sent)
            await wait_for(
                lambda: len(r.client.inbox.replies) == 20, WAIT, "20 echoes", interval=POLL
            )
            assert sorted(r.client.inbox.replies) == sent
            for data in sent:
                (arrived,) = r.client.inbox.arrivals[data]
                assert arrived >= r.client.sent_at[data] + 2 * delay
            stats = r.proxy.stats()
            assert stats["up"]["delayed"] == stats["down"]["delayed"] == 20

    run(scenario())


def test_nothing_crosses_a_partition_and_traffic_flows_after_heal() -> None:
    async def scenario() -> None:
        async with rig() as r:
            r.proxy.partition()
            r.client.send(messages(10, "lost"))
            await wait_for(
                lambda: r.proxy.stats()["up"]["partitioned"] == 10,
                WAIT,
                "10 partitioned",
                interval=POLL,
            )
            assert r.echo.received == [] and r.client.inbox.replies == []
            r.proxy.heal()
            after = messages(10, "healed")
            r.client.send(after)
            await wait_for(
                lambda: len(r.client.inbox.replies) == 10,
                WAIT,
                "10 echoes after heal",
                interval=POLL,
            )
            assert r.client.inbox.replies == after

    run(scenario())


def test_a_one_way_partition_loses_only_the_replies() -> None:
    async def scenario() -> None:
        async with rig() as r:
            r.proxy.partition("down")
            r.client.send(messages(10))
            await wait_for(
                lambda: r.proxy.stats()["down"]["partitioned"] == 10,
                WAIT,
                "10 partitioned",
                interval=POLL,
            )
            assert len(r.echo.received) == 10 and r.client.inbox.replies == []

    run(scenario())


def test_two_clients_each_get_their_own_replies_from_distinct_sources() -> None:
    async def scenario() -> None:
        async with (
            echo_server() as (target, echo),
            FaultProxy(target) as proxy,
            client(proxy.address) as alice,
            client(proxy.address) as bob,
        ):
            alice.send(messages(5, "alice"))
            bob.send(messages(5, "bob"))
            await wait_for(
                lambda: len(alice.inbox.replies) == len(bob.inbox.replies) == 5,
                WAIT,
                "5 echoes each",
                interval=POLL,
            )
            assert alice.inbox.replies == messages(5, "alice")
            assert bob.inbox.replies == messages(5, "bob")
            assert len(set(echo.sources)) == 2
            assert set(proxy.clients) == {alice.address, bob.address}

    run(scenario())


def test_over_max_clients_the_least_recently_active_mapping_is_evicted() -> None:
    async def scenario() -> None:
        async with (
            echo_server() as (target, echo),
            FaultProxy(target, max_clients=1) as proxy,
            client(proxy.address) as alice,
            client(proxy.address) as bob,
        ):

            async def exchange(peer: Client, replies: int) -> None:
                peer.send([b"hello"])
                await wait_for(
                    lambda: len(peer.inbox.replies) == replies, WAIT, "an echo", interval=POLL
                )
                assert proxy.clients == (peer.address,)

            for peer, replies in ((alice, 1), (bob, 1), (alice, 2)):
                await exchange(peer, replies)
            assert len(set(echo.sources)) == 3  # alice came back through a new mapping

    run(scenario())


# -- thread mode, from synchronous code --------------------------------------------------


@contextlib.contextmanager
def udp_socket() -> Iterator[socket.socket]:
    """A blocking UDP socket on 127.0.0.1 whose every wait is bounded."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5.0)
        sock.bind(("127.0.0.1", 0))
        yield sock


def proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("netfault-proxy")]


def test_thread_mode_works_from_synchronous_code_and_stop_leaves_no_thread() -> None:
    with udp_socket() as target, udp_socket() as peer:
        proxy = FaultProxy(target.getsockname())
        address = proxy.start_in_thread()
        try:
            peer.sendto(b"ping", address)
            data, via = target.recvfrom(2048)
            target.sendto(b"pong", via)
            assert (data, peer.recvfrom(2048)[0]) == (b"ping", b"pong")

            proxy.partition()
            peer.sendto(b"lost", address)
            wait_until(
                lambda: proxy.stats()["up"]["partitioned"] == 1,
                WAIT,
                "the partitioned ping",
                interval=POLL,
            )
            proxy.heal()
            peer.sendto(b"again", address)
            assert target.recvfrom(2048)[0] == b"again"  # "lost" never came
        finally:
            proxy.stop()
        assert not proxy.running and proxy_threads() == []


def test_the_with_statement_runs_the_proxy_in_a_thread() -> None:
    with udp_socket() as target, udp_socket() as peer:
        with FaultProxy(target.getsockname(), faults=Faults(duplicate=1.0)) as proxy:
            assert len(proxy_threads()) == 1
            peer.sendto(b"twice", proxy.address)
            assert [target.recvfrom(2048)[0] for _ in range(2)] == [b"twice", b"twice"]
        assert not proxy.running and proxy_threads() == []


def test_a_failed_start_in_thread_raises_in_the_caller_and_leaves_no_thread() -> None:
    with udp_socket() as taken:
        port = taken.getsockname()[1]
        proxy = FaultProxy(("127.0.0.1", 9), port=port)
        with pytest.raises(OSError):
            proxy.start_in_thread()
        assert not proxy.running and proxy_threads() == []


# -- QUIC through a lossy proxy -----------------------------------------------------------

ALPN = "crdtdb/1"
SERVER_NAME = "eu.crdtdb"


def self_signed() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """An ECDSA P-256 key and a certificate for :data:`SERVER_NAME` signed by itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.now(UTC)  # aioquic checks validity against the real clock
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


async def echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send a stream's bytes back, then end it."""
    while chunk := await reader.read(65_536):
        writer.write(chunk)
    writer.write_eof()


def test_quic_handshake_and_a_200_kb_stream_echo_survive_a_lossy_proxy() -> None:
    key, certificate = self_signed()
    server_config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    server_config.certificate, server_config.private_key = certificate, key
    client_config = QuicConfiguration(
        is_client=True, alpn_protocols=[ALPN], server_name=SERVER_NAME
    )
    client_config.load_verify_locations(cadata=certificate.public_bytes(serialization.Encoding.PEM))
    assert client_config.verify_mode != ssl.CERT_NONE
    payload = bytes(range(256)) * 800  # 204,800 bytes
    handlers: set[asyncio.Task[None]] = set()

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(echo_stream(reader, writer))
        handlers.add(task)
        task.add_done_callback(handlers.discard)

    async def scenario() -> dict[str, dict[str, int]]:
        server = await serve("127.0.0.1", 0, configuration=server_config, stream_handler=on_stream)
        try:
            # serve() has no public way to report the port it bound; the transport knows it.
            assert server._transport is not None
            port = server._transport.get_extra_info("sockname")[1]
            faults = Faults(drop=0.1, duplicate=0.1, reorder=0.1)
            async with FaultProxy(("127.0.0.1", port), seed=3, faults=faults) as proxy:
                host, proxy_port = proxy.address
                async with connect(host, proxy_port, configuration=client_config) as quic:
                    reader, writer = await quic.create_stream()
                    writer.write(payload)
                    writer.write_eof()
                    echoed = await reader.read()
                assert echoed == payload
                return proxy.stats()
        finally:
            server.close()
            for task in handlers:
                task.cancel()

    stats = run(scenario(), timeout=15.0)
    for counter in ("dropped", "duplicated", "reordered"):
        assert stats["up"][counter] + stats["down"][counter] > 0, counter
