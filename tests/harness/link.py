"""Two sans-IO sync sessions wired together in memory (like aioquic's ``transfer``).

The tests drive sessions with it, and the sync benchmark counts what a round
sends through it (see :meth:`Link.sent`).
"""

from __future__ import annotations

import random
from typing import Any

from crdtdb.sync import wire
from crdtdb.sync.session import Event, SessionOptions, SyncSession
from crdtdb.sync.store import ReplicaStore
from crdtdb.sync.writer import perform_pending


class Link:
    """A connection between two stores: a dialing session and a listening session.

    ``transfer`` moves bytes both ways, on every lane, optionally cut into random
    chunks with the lanes in random order, and performs at once the writes each
    session asks for (as the node does, later and batched);
    ``cut`` drops the connection with whatever was in flight, like a partition.
    """

    def __init__(
        self,
        dialer: ReplicaStore,
        listener: ReplicaStore,
        *,
        now: float = 0.0,
        options: SessionOptions | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.a = SyncSession(dialer, dialer=True, now=now, options=options)
        self.b = SyncSession(listener, dialer=False, now=now, options=options)
        self._stores = ((self.a, dialer), (self.b, listener))
        self.rng = rng
        self.events: list[Event] = []
        self.now = now
        self.bytes = 0
        self.messages = 0
        self._performed = 0

    def transfer(self) -> int:
        """Deliver everything pending once each way; return the bytes moved."""
        self.perform()  # what timers and direct calls asked for
        moved = 0
        for sender, receiver in ((self.a, self.b), (self.b, self.a)):
            main = (0, sender.data_to_send(self.now))
            lanes = [(lane, data) for lane, data in [main, *sender.lanes_to_send()] if data]
            if self.rng is not None:
                self.rng.shuffle(lanes)  # streams are independent: any lane may come first
            self.sent(sender, lanes)
            for lane, data in lanes:
                moved += len(data)
                for chunk in self._chunks(data):
                    receiver.receive(chunk, self.now, lane)
            self.perform()
        self.bytes += moved
        return moved

    def perform(self) -> int:
        """Perform the writes both sessions asked for; collect their other events."""
        count = 0
        for session, store in self._stores:
            events, performed = perform_pending(session, store, self.now)
            self.events.extend(events)
            count += performed
        self._performed += count
        return count

    def sent(self, sender: SyncSession, lanes: list[tuple[int, bytes]]) -> None:
        """What ``sender`` sends in one transfer, before it is delivered; a subclass that
        counts bytes or flights overrides this (here: nothing)."""

    def _chunks(self, data: bytes) -> list[bytes]:
        if self.rng is None or len(data) < 2:
            return [data]
        cuts = sorted(self.rng.sample(range(1, len(data)), min(3, len(data) - 1)))
        return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]

    def settle(self, max_steps: int = 10_000) -> None:
        """Transfer until nothing moves and nothing is left to perform (bounded)."""
        for _ in range(max_steps):
            performed = self._performed
            if not self.transfer() and self._performed == performed:
                return
        raise AssertionError("link did not settle")

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for session in (self.a, self.b):
            timer = session.get_timer()
            if timer is not None and timer <= self.now:
                session.handle_timer(self.now)

    def round(self) -> None:
        """Run one anti-entropy round to completion (after records stopped flowing)."""
        self.now += self.a.options.anti_entropy_interval
        before = self.a.rounds
        self.a.start_round(self.now)
        self.settle()
        if self.open and self.a.rounds == before:
            raise AssertionError("the anti-entropy round did not run to completion")

    @property
    def open(self) -> bool:
        return self.a.established and self.b.established


def messages(data: bytes, *, bulk: bool = False) -> list[wire.Message]:
    """The whole messages in ``data`` (main-lane or bulk-lane frames)."""
    limit = wire.MAX_BULK_MESSAGE_BYTES if bulk else wire.MAX_MESSAGE_BYTES
    decoder = wire.FrameDecoder(max_message_bytes=limit)
    decoder.feed(data)
    out = []
    while (message := decoder.next_message()) is not None:
        out.append(message)
    return out


def drain(session: SyncSession) -> list[Event]:
    """Every event the session has, intents included, without performing any."""
    return list(iter(session.next_event, None))


def spy(link: Link) -> list[tuple[str, wire.Message]]:
    """Record every main-lane message each side sends, as (sender "a"/"b", message)."""
    sent: list[tuple[str, wire.Message]] = []
    for name, session in (("a", link.a), ("b", link.b)):
        data_to_send = session.data_to_send

        def spied(now: float, original: Any = data_to_send, name: str = name) -> bytes:
            data: bytes = original(now)
            sent.extend((name, m) for m in messages(data))
            return data

        session.data_to_send = spied  # type: ignore[method-assign]
    return sent


class NoLog:
    """A store whose log the session cannot read: only anti-entropy can repair."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def records_from(self, origin: str, after_seq: int, limit: int = 1000) -> list[object]:
        return []
