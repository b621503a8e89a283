"""A UDP fault-injection proxy for tests: loss, duplication, delay, reordering, partitions.

It sits between two QUIC endpoints on loopback. Two layers, the aioquic way:

* :class:`Impairment` (in :mod:`tests.impairment`) is sans-IO: datagrams go
  in with ``receive(datagram, now)``, ready ones come out of
  ``datagrams_to_send()``, and one timer is driven by ``get_timer()`` /
  ``handle_timer(now)``. It owns the fault settings, the seeded random
  source, the bounded delay queue, the reorder slots and the counters.
* :class:`FaultProxy` pumps it over real non-blocking sockets: one listening
  socket, and per client one upstream socket connected to the target (a NAT
  mapping, so the target sees a distinct source per client). It runs in the
  caller's event loop (``async with FaultProxy(target) as proxy``) or in a
  thread with a loop of its own (``start_in_thread()`` / ``stop()``, or plain
  ``with``) for synchronous tests that drive subprocess daemons.

Directions: ``"up"`` is client to target, ``"down"`` is target to client.

A datagram goes through the stages partition, drop, duplicate, delay (fixed
plus uniform jitter), reorder (held back until the next datagram of its flow
has been sent, or for at most ``hold`` seconds), and the partition check once
more as it leaves, so a partition also swallows datagrams already in flight.
Nothing grows without bound: the delay queue and reorder slots share
``max_pending``, sends go straight to the kernel with no user-space buffer
(whatever hits either bound is counted as ``overflowed``), and at most
``max_clients`` client mappings are kept, the least recently active evicted.
Per direction, once nothing is pending::

    received + duplicated == forwarded + dropped + partitioned + overflowed + failed
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
from dataclasses import replace
from types import TracebackType
from typing import Self

from .impairment import (
    Address,
    Counters,
    Datagram,
    Direction,
    Faults,
    Impairment,
    Which,
    directions,
)

__all__ = [
    "Address",
    "Counters",
    "Datagram",
    "Direction",
    "FaultProxy",
    "Faults",
    "Impairment",
    "Which",
]

MAX_DATAGRAM = 65_535
BATCH = 64  # datagrams read per readiness callback, so one busy socket cannot starve the loop


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _udp_socket(bind: Address) -> socket.socket:
    """A non-blocking UDP socket bound to ``bind``; closed again if binding fails."""
    sock = socket.socket(_family(bind[0]), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind(bind)
    except BaseException:
        sock.close()
        raise
    return sock


class FaultProxy:
    """A UDP proxy from ``address`` to ``target`` that impairs traffic both ways.

    The fault setters, :meth:`stats` and the properties are thread-safe; the
    sockets are only touched from the proxy's event loop.
    """

    def __init__(
        self,
        target: Address,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        faults: Faults | None = None,
        max_pending: int = 1024,
        max_clients: int = 64,
        hold: float = 0.05,
    ) -> None:
        """Configure, without binding; ``faults`` (default none) apply to both directions."""
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, not {max_clients!r}")
        self.target: Address = (target[0], target[1])
        self._bind: Address = (host, port)
        self._max_clients = max_clients
        self._lock = threading.Lock()
        self._impairment = Impairment(seed=seed, max_pending=max_pending, hold=hold)
        if faults is not None:
            self.set_faults(faults)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: socket.socket | None = None
        self._address: Address | None = None
        self._upstream: dict[Address, socket.socket] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._stop_requested: asyncio.Event | None = None

    # -- faults and counters (any thread) ---------------------------------------------

    def faults(self, direction: Direction) -> Faults:
        """The current faults of ``direction``."""
        with self._lock:
            return self._impairment.faults(direction)

    def set_faults(self, faults: Faults, direction: Which = "both") -> None:
        """Replace the faults of ``direction`` wholesale (``Faults()`` heals everything)."""
        with self._lock:
            for d in directions(direction):
                self._impairment.set_faults(d, faults)

    def configure(
        self,
        direction: Which = "both",
        *,
        drop: float | None = None,
        duplicate: float | None = None,
        delay: float | None = None,
        jitter: float | None = None,
        reorder: float | None = None,
    ) -> None:
        """Change the given faults of ``direction``, keeping the others."""
        given = (
            ("drop", drop),
            ("duplicate", duplicate),
            ("delay", delay),
            ("jitter", jitter),
            ("reorder", reorder),
        )
        changes = {name: value for name, value in given if value is not None}
        self._update(direction, **changes)

    def partition(self, direction: Which = "both") -> None:
        """Lose every datagram of ``direction``, in flight or new, until :meth:`heal`."""
        self._update(direction, partitioned=True)

    def heal(self, direction: Which = "both") -> None:
        """End a partition of ``direction``; the other faults stay as they are."""
        self._update(direction, partitioned=False)

    def stats(self) -> dict[str, dict[str, int]]:
        """A snapshot of the counters: ``{"up": {...}, "down": {...}}``, names as in Counters."""
        with self._lock:
            return self._impairment.stats()

    @property
    def pending(self) -> int:
        """Datagrams delayed or held for reordering right now."""
        with self._lock:
            return self._impairment.pending

    @property
    def clients(self) -> tuple[Address, ...]:
        """The mapped client addresses, least recently active first."""
        with self._lock:
            return tuple(self._upstream)

    @property
    def address(self) -> Address:
        """Where clients send: (host, port) of the listening socket."""
        if self._address is None:
            raise RuntimeError("the proxy has no address yet: start it first")
        return self._address

    @property
    def running(self) -> bool:
        """Whether the listening socket is open or the proxy thread is alive."""
        thread = self._thread
        return self._listener is not None or (thread is not None and thread.is_alive())

    def _update(self, direction: Which, **changes: float | bool) -> None:
        with self._lock:
            # Build every new value first, so a bad one changes nothing.
            updated = {
                d: replace(self._impairment.faults(d), **changes)  # type: ignore[arg-type]
                for d in directions(direction)
            }
            for d, faults in updated.items():
                self._impairment.set_faults(d, faults)

    # -- running in the caller's event loop ---------------------------------------------

    async def start(self) -> Address:
        """Bind and start forwarding in the running loop; return :attr:`address`."""
        if self._listener is not None:
            raise RuntimeError("the proxy is already running")
        loop = asyncio.get_running_loop()
        listener = _udp_socket(self._bind)
        self._loop, self._listener = loop, listener
        host, port = listener.getsockname()[:2]
        self._address = (host, port)
        loop.add_reader(listener.fileno(), self._on_listener_readable)
        return self._address

    def close(self) -> None:
        """Stop forwarding, cancel the timer, close every socket; call it in the loop's thread.

        Pending datagrams are discarded; the counters stay readable. Idempotent.
        """
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            sockets = list(self._upstream.values())
            if self._listener is not None:
                sockets.append(self._listener)
            self._listener = None
            self._upstream.clear()
            self._impairment.discard()
            for sock in sockets:
                self._unwatch(sock)
                sock.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- running in a thread of its own --------------------------------------------------

    def start_in_thread(self, timeout: float = 5.0) -> Address:
        """Start a thread running the proxy in its own loop; return :attr:`address`."""
        if self.running:
            raise RuntimeError("the proxy is already running")
        ready = threading.Event()
        errors: list[Exception] = []
        thread = threading.Thread(
            target=self._thread_main,
            args=(ready, errors),
            name=f"netfault-proxy-to-{self.target[0]}:{self.target[1]}",
            daemon=True,  # a test that forgets stop() must not hang the interpreter
        )
        self._thread = thread
        thread.start()
        if not ready.wait(timeout):
            self.stop(timeout)
            raise TimeoutError(f"the proxy thread did not start within {timeout} s")
        if errors:
            thread.join(timeout)
            self._thread = None
            raise errors[0]
        return self.address

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the proxy: close every socket and, in thread mode, join the thread.

        Without a thread this is :meth:`close` (call it in the loop's thread).
        Raises RuntimeError if the thread is still alive after ``timeout`` seconds.
        """
        thread = self._thread
        if thread is None:
            self.close()
            return
        loop, stop_requested = self._loop, self._stop_requested
        if loop is not None and stop_requested is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(stop_requested.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the proxy thread did not stop within {timeout} s")
        self._thread = None

    def __enter__(self) -> Self:
        self.start_in_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _thread_main(self, ready: threading.Event, errors: list[Exception]) -> None:
        asyncio.run(self._serve_in_thread(ready, errors))

    async def _serve_in_thread(self, ready: threading.Event, errors: list[Exception]) -> None:
        self._stop_requested = asyncio.Event()
        try:
            await self.start()
        except Exception as error:  # re-raised by start_in_thread in the caller's thread
            errors.append(error)
            return
        finally:
            ready.set()
        try:
            await self._stop_requested.wait()
        finally:
            self.close()

    # -- the pump (loop thread only) -----------------------------------------------------

    def _on_listener_readable(self) -> None:
        listener = self._listener
        if listener is None:
            return
        with self._lock:
            now = self._now()
            for _ in range(BATCH):
                try:
                    data, source = listener.recvfrom(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # a reported ICMP error; the socket keeps working
                    continue
                client: Address = (source[0], source[1])
                self._map(client)
                self._impairment.receive(Datagram("up", client, data), now)
            self._flush()

    def _on_upstream_readable(self, client: Address, sock: socket.socket) -> None:
        with self._lock:
            now = self._now()
            for _ in range(BATCH):
                try:
                    data = sock.recv(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. the target is not listening (ICMP port unreachable)
                    continue
                self._impairment.receive(Datagram("down", client, data), now)
            self._flush()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            self._impairment.handle_timer(self._now())
            self._flush()

    def _map(self, client: Address) -> None:
        """Make sure ``client`` has a socket towards the target, most recently used last."""
        sock = self._upstream.pop(client, None)
        if sock is None:
            if len(self._upstream) >= self._max_clients:
                # Like a NAT: the least recently active mapping goes (a restarted daemon's
                # old port, typically); its datagrams still pending then count as failed.
                self._forget(next(iter(self._upstream)))
            sock = self._connect(client)
        self._upstream[client] = sock

    def _connect(self, client: Address) -> socket.socket:
        sock = _udp_socket((self._bind[0], 0))
        try:
            sock.connect(self.target)  # and the kernel filters out other sources
        except BaseException:
            sock.close()
            raise
        assert self._loop is not None
        callback = functools.partial(self._on_upstream_readable, client, sock)
        self._loop.add_reader(sock.fileno(), callback)
        return sock

    def _forget(self, client: Address) -> None:
        sock = self._upstream.pop(client)
        self._unwatch(sock)
        sock.close()

    def _flush(self) -> None:
        """Send what the impairment has released and re-arm its timer (lock held)."""
        for datagram in self._impairment.datagrams_to_send():
            self._send(datagram)
        self._arm_timer()

    def _send(self, datagram: Datagram) -> None:
        counters = self._impairment.counters(datagram.direction)
        try:
            if datagram.direction == "up":
                upstream = self._upstream.get(datagram.client)
                if upstream is None:  # the mapping was evicted while the datagram waited
                    raise ConnectionResetError
                upstream.send(datagram.data)
            elif self._listener is not None:
                self._listener.sendto(datagram.data, datagram.client)
        except (BlockingIOError, InterruptedError):  # the kernel buffer is full
            counters.overflowed += 1
        except OSError:
            counters.failed += 1
        else:
            counters.forwarded += 1

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self._impairment.get_timer()
        if when is not None and self._loop is not None:
            # If the loop fires a little early, handle_timer releases nothing and we re-arm.
            self._timer = self._loop.call_at(when, self._on_timer)

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _unwatch(self, sock: socket.socket) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(sock.fileno())
