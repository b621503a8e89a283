"""What the child processes of the sync benchmark run: ``bench_sync.py --role NAME ARGS...``.

Writers on region eu's directory, a pycrdt-websocket server, writer and
fetcher, and a raw aioquic sink and source (the ceiling). Each writes its
results to a JSON file the parent reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from _harness import HarnessError, wait_for

import crdtdb

from .common import EMPTY_UPDATE, doc_name, doc_value, write_json


def role_write_paced(
    eu_dir: str, prefix: str, rate: str, count: str, result: str, per_tx: str = "1"
) -> None:
    """Write ``count`` documents at ``rate``/s, ``per_tx`` in a transaction; record each
    document's commit wall time (after its transaction committed)."""
    per_s, n, k = float(rate), int(count), int(per_tx)
    committed: list[float] = []
    commit_ms: list[float] = []
    with crdtdb.open(eu_dir) as db:
        started, cpu = time.time() + 0.05, time.process_time()
        for first in range(0, n, k):
            delay = started + first / per_s - time.time()
            if delay > 0:
                time.sleep(delay)
            before = time.time()
            with db.transaction() as tx:
                for i in range(first, min(first + k, n)):
                    tx.put(f"{prefix}/{i}", {"i": i, "t": before})
            done = time.time()
            committed += [done] * (min(first + k, n) - first)
            commit_ms.append((done - before) * 1e3)
    write_json(
        Path(result),
        {
            "started": started,
            "committed": committed,
            "commit_ms": commit_ms,
            "cpu_s": time.process_time() - cpu,
        },
    )


def role_write_fast(eu_dir: str, doc_id: str, seconds: str, result: str) -> None:
    """One-write transactions on one document, as fast as they go, for ``seconds``."""
    budget, i = float(seconds), 0
    with crdtdb.open(eu_dir) as db:
        started, cpu = time.time(), time.process_time()
        while time.time() - started < budget:
            for _ in range(10):
                db.update(doc_id, {f"k{i % 50}": i})
                i += 1
        ended = time.time()
    write_json(
        Path(result),
        {"started": started, "ended": ended, "writes": i, "cpu_s": time.process_time() - cpu},
    )


def role_write_count(eu_dir: str, doc_id: str, count: str, result: str) -> None:
    """``count`` one-write transactions on one document, as fast as they go."""
    with crdtdb.open(eu_dir) as db:
        started, cpu = time.time(), time.process_time()
        for i in range(int(count)):
            db.update(doc_id, {f"k{i % 50}": i})
        ended = time.time()
    write_json(
        Path(result),
        {
            "started": started,
            "ended": ended,
            "writes": int(count),
            "cpu_s": time.process_time() - cpu,
        },
    )


def role_ws_server(
    port: str,
    mode: str,
    count: str,
    source: str,
    ready: str,
    status: str,
    result: str = "-",
    profile: str = "tiny",
) -> None:
    args = (int(port), mode, int(count), source, Path(ready), status, result, profile)
    asyncio.run(_ws_server(*args))


async def _ws_server(
    port: int,
    mode: str,
    count: int,
    source: str,
    ready: Path,
    status: str,
    result: str,
    profile: str,
) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.typing import ASGIFramework
    from pycrdt import Map, TransactionEvent
    from pycrdt.websocket import ASGIServer, WebsocketServer

    server = WebsocketServer(auto_clean_rooms=False)
    arrived: list[list[float]] = [[] for _ in range(count if mode == "rate" else 0)]

    def counter(times: list[float]) -> Callable[[TransactionEvent], None]:
        def on_update(event: TransactionEvent) -> None:
            if event.update != EMPTY_UPDATE:
                times.append(time.time())

        return on_update

    async with server:
        if mode == "rate":  # one room per repeat, each counting the updates applied to it
            for repeat, times in enumerate(arrived):
                (await server.get_room(f"/rate/{repeat}")).ydoc.observe(counter(times))
        elif mode == "rooms":  # one room per document, holding crdtdb's exact CRDT state
            with crdtdb.open(source) as db:
                for i in range(count):
                    (await server.get_room(f"/{doc_name(i)}")).ydoc.apply_update(
                        db.diff(doc_name(i))
                    )
        else:  # "one-doc": the same documents as entries of one document
            doc = (await server.get_room("/all")).ydoc
            root = doc.get("docs", type=Map)
            with doc.transaction():
                for i in range(count):
                    root[doc_name(i)] = Map(doc_value(profile, i))
        config = HypercornConfig()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = config.errorlog = None
        config.websocket_max_message_size = 1 << 30
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        async def report() -> None:
            while not stop.is_set():
                if status != "-":
                    write_json(Path(status), {"counts": [len(times) for times in arrived]})
                await asyncio.sleep(0.1)

        reporter = asyncio.create_task(report())
        app = cast(ASGIFramework, ASGIServer(server))  # its __call__ takes plain dicts
        serving = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
        await asyncio.sleep(0.3)
        ready.write_text("ready")
        await serving
        await reporter
    if result != "-":
        write_json(Path(result), {"arrivals": arrived})


def role_ws_writer(port: str, repeat: str, seconds: str, result: str) -> None:
    asyncio.run(_ws_writer(int(port), int(repeat), float(seconds), Path(result)))


async def _ws_writer(port: int, repeat: int, seconds: float, result: Path) -> None:
    """One update per transaction, so one message per update; yield to the sender after each."""
    import httpx
    from httpx_ws import AsyncWebSocketSession, aconnect_ws
    from pycrdt import Doc, Map, Provider
    from pycrdt.websocket.websocket import HttpxWebsocket

    path = f"/rate/{repeat}"
    doc: Doc[Any] = Doc()
    root = doc.get("data", type=Map)
    async with (
        httpx.AsyncClient() as client,
        # session_class is the default, given so that mypy can infer the session's type
        aconnect_ws(
            f"http://127.0.0.1:{port}{path}", client, session_class=AsyncWebSocketSession
        ) as websocket,
    ):
        async with Provider(doc, HttpxWebsocket(websocket, path)) as provider:
            await provider.synced.wait()
            i, started, cpu = 0, time.time(), time.process_time()
            while time.time() - started < seconds:
                for _ in range(10):
                    root[f"k{i % 50}"] = i
                    i += 1
                    await asyncio.sleep(0)
            ended = time.time()
        # leaving the provider sends every queued update (counted in the CPU time too)
        write_json(
            result,
            {"started": started, "ended": ended, "writes": i, "cpu_s": time.process_time() - cpu},
        )
        # Closing the websocket right away loses the last updates still on their way into
        # the server, so the parent says when they have all arrived.
        with contextlib.suppress(HarnessError):  # if the parent never says: close anyway
            await wait_for(result.with_suffix(".close").exists, 120, interval=0.01)


def role_ws_fetch(port: str, mode: str, count: str, connections: str, result: str) -> None:
    asyncio.run(_ws_fetch(int(port), mode, int(count), int(connections), Path(result)))


async def _ws_fetch(port: int, mode: str, count: int, connections: int, result: Path) -> None:
    import httpx
    from httpx_ws import AsyncWebSocketSession, aconnect_ws
    from pycrdt import Doc, Map, Provider
    from pycrdt.websocket.websocket import HttpxWebsocket

    async def fetch(client: httpx.AsyncClient, path: str) -> Doc[Any]:
        doc: Doc[Any] = Doc()
        url = f"http://127.0.0.1:{port}{path}"
        async with (
            aconnect_ws(  # session_class: the default, given for mypy as above
                url, client, max_message_size_bytes=1 << 30, session_class=AsyncWebSocketSession
            ) as websocket,
            Provider(doc, HttpxWebsocket(websocket, path)) as provider,
        ):
            await provider.synced.wait()
        return doc

    payload = docs = 0
    async with httpx.AsyncClient(timeout=120) as client:
        started = time.time()
        if mode == "one-doc":
            doc = await fetch(client, "/all")
            docs = len(doc.get("docs", type=Map))
            payload = len(doc.get_update())
        else:
            queue = [f"/{doc_name(i)}" for i in range(count)]

            async def worker() -> None:
                nonlocal payload, docs
                while queue:
                    doc = await fetch(client, queue.pop())
                    payload += len(doc.get_update())
                    docs += doc.get("data", type=Map).get("n") is not None

            await asyncio.gather(*(worker() for _ in range(connections)))
        seconds = time.time() - started
    if docs != count:
        raise SystemExit(f"fetched {docs} documents with content, expected {count}")
    write_json(result, {"docs": docs, "seconds": seconds, "payload": payload})


def _quic_configuration(certs: Path, *, client: bool) -> Any:
    """The same TLS files and QUIC defaults as ``crdtdb.sync.transport``."""
    import ssl

    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(
        is_client=client,
        alpn_protocols=["crdtdb/1"],
        idle_timeout=20.0,
        max_datagram_frame_size=None,
    )
    region = "us" if client else "eu"
    config.load_cert_chain(certs / f"{region}.pem", certs / f"{region}.key")
    if client:
        config.load_verify_locations(cafile=str(certs / "ca.pem"))
        config.verify_mode = ssl.CERT_REQUIRED
        config.server_name = "eu.crdtdb"
    return config


def role_quic_sink(port: str, certs: str, ready: str) -> None:
    asyncio.run(_quic_sink(int(port), Path(certs), Path(ready)))


async def _quic_sink(port: int, certs: Path, ready: Path) -> None:
    """Count each stream's bytes; at its end, answer with the count and close that stream."""
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import serve
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    class Sink(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.received: Counter[int] = Counter()

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived):
                self.received[event.stream_id] += len(event.data)
                if event.end_stream:
                    answer = str(self.received.pop(event.stream_id)).encode()
                    self._quic.send_stream_data(event.stream_id, answer, end_stream=True)
                    self.transmit()

    server = await serve(
        "127.0.0.1",
        port,
        configuration=_quic_configuration(certs, client=False),
        create_protocol=Sink,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    ready.write_text("ready")
    await stop.wait()
    server.close()


def role_quic_source(port: str, certs: str, mb: str, repeats: str, result: str) -> None:
    asyncio.run(_quic_source(int(port), Path(certs), int(mb), int(repeats), Path(result)))


async def _quic_source(port: int, certs: Path, mb: int, repeats: int, result: Path) -> None:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    class Source(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.answers: dict[int, asyncio.Future[bytes]] = {}

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived) and event.end_stream:
                self.answers[event.stream_id].set_result(event.data)

        async def push(self, data: bytes) -> int:
            stream = self._quic.get_next_available_stream_id()
            self.answers[stream] = asyncio.get_running_loop().create_future()
            self._quic.send_stream_data(stream, data, end_stream=True)
            self.transmit()
            return int(await self.answers[stream])

    data = os.urandom(1 << 20) * mb
    runs = []
    async with connect(
        "127.0.0.1",
        port,
        configuration=_quic_configuration(certs, client=True),
        create_protocol=Source,
    ) as protocol:
        assert isinstance(protocol, Source)
        for _ in range(repeats):
            started = time.perf_counter()
            received = await asyncio.wait_for(protocol.push(data), 120)
            runs.append((received, time.perf_counter() - started))
            if received != len(data):
                raise SystemExit(f"the sink got {received} bytes of {len(data)}")
    write_json(result, {"runs": runs})


ROLES: dict[str, Callable[..., None]] = {
    "write-paced": role_write_paced,
    "write-fast": role_write_fast,
    "write-count": role_write_count,
    "ws-server": role_ws_server,
    "ws-writer": role_ws_writer,
    "ws-fetch": role_ws_fetch,
    "quic-sink": role_quic_sink,
    "quic-source": role_quic_source,
}
"""What a child process started by this script runs: ``bench_sync.py --role NAME ARGS...``."""
