"""Two sans-IO sync sessions wired together in memory (like aioquic's ``transfer``).

The tests drive sessions with it, and the sync benchmark counts what a round
sends through it (see :meth:`Link.sent`).
"""

from __future__ import annotations

import random

from crdtdb.sync.session import Event, SessionOptions, Store, SyncSession


class Link:
    """A connection between two stores: a dialing session and a listening session.

    ``transfer`` moves bytes both ways, on every lane, optionally cut into random
    chunks with the lanes in random order;
    ``cut`` drops the connection with whatever was in flight, like a partition.
    """

    def __init__(
        self,
        dialer: Store,
        listener: Store,
        *,
        now: float = 0.0,
        options: SessionOptions | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.a = SyncSession(dialer, dialer=True, now=now, options=options)
        self.b = SyncSession(listener, dialer=False, now=now, options=options)
        self.rng = rng
        self.events: list[Event] = []
        self.now = now
        self.bytes = 0
        self.messages = 0

    def transfer(self) -> int:
        """Deliver everything pending once each way; return the bytes moved."""
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
        for session in (self.a, self.b):
            while (event := session.next_event()) is not None:
                self.events.append(event)
        self.bytes += moved
        return moved

    def sent(self, sender: SyncSession, lanes: list[tuple[int, bytes]]) -> None:
        """What ``sender`` sends in one transfer, before it is delivered; a subclass that
        counts bytes or flights overrides this (here: nothing)."""

    def _chunks(self, data: bytes) -> list[bytes]:
        if self.rng is None or len(data) < 2:
            return [data]
        cuts = sorted(self.rng.sample(range(1, len(data)), min(3, len(data) - 1)))
        return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]

    def settle(self, max_steps: int = 10_000) -> None:
        """Transfer until nothing moves (bounded)."""
        for _ in range(max_steps):
            if not self.transfer():
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
