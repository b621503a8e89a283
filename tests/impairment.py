"""The sans-IO half of the UDP fault-injection proxy (:mod:`tests.netfault`).

:class:`Impairment`: datagrams go in with ``receive(datagram, now)``, ready
ones come out of ``datagrams_to_send()``, and one timer is driven by
``get_timer()`` / ``handle_timer(now)``. It owns the fault settings, the
seeded random source, the bounded delay queue, the reorder slots and the
counters; :class:`tests.netfault.FaultProxy` pumps it over real sockets.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import asdict, dataclass
from typing import Literal

__all__ = [
    "DIRECTIONS",
    "Address",
    "Counters",
    "Datagram",
    "Direction",
    "Faults",
    "Impairment",
    "Which",
    "directions",
]

Address = tuple[str, int]
Direction = Literal["up", "down"]
"""``"up"``: client to target; ``"down"``: target to client."""
Which = Literal["up", "down", "both"]
"""The directions a setter applies to."""

DIRECTIONS: tuple[Direction, ...] = ("up", "down")


def directions(which: Which) -> tuple[Direction, ...]:
    """The directions ``which`` names."""
    if which == "both":
        return DIRECTIONS
    if which in DIRECTIONS:
        return (which,)
    raise ValueError(f"direction must be 'up', 'down' or 'both', not {which!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """The impairments of one direction; the default is a perfect link."""

    drop: float = 0.0
    """Probability that a datagram is lost."""
    duplicate: float = 0.0
    """Probability that a datagram is sent twice."""
    delay: float = 0.0
    """Seconds every datagram is held before it is sent."""
    jitter: float = 0.0
    """Upper bound of a uniformly random extra delay, in seconds."""
    reorder: float = 0.0
    """Probability that a datagram is held back and sent after the next one."""
    partitioned: bool = False
    """Whether every datagram is lost, including those already delayed or held."""

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability: give a value in [0, 1], not {value!r}")
        for name in ("delay", "jitter"):
            value = getattr(self, name)
            if not 0.0 <= value < float("inf"):
                raise ValueError(f"{name} is in seconds: give a finite value >= 0, not {value!r}")


@dataclass(frozen=True, slots=True)
class Datagram:
    """One datagram of one client's flow, travelling in one direction."""

    direction: Direction
    client: Address
    data: bytes


@dataclass(slots=True)
class Counters:
    """Datagram counts of one direction."""

    received: int = 0
    """Read from the sending side."""
    forwarded: int = 0
    """Accepted by the kernel for the receiving side (copies included)."""
    dropped: int = 0
    """Lost to the ``drop`` probability."""
    partitioned: int = 0
    """Lost to a partition, on the way in or on the way out."""
    duplicated: int = 0
    """Extra copies made."""
    delayed: int = 0
    """Copies put in the delay queue."""
    reordered: int = 0
    """Held back and then sent after a later datagram."""
    overflowed: int = 0
    """Lost to a bound: the pending cap or a full socket buffer."""
    failed: int = 0
    """Sends that failed: an ICMP port unreachable from a stopped target, an evicted client."""


class Impairment:
    """The sans-IO fault model: no sockets, no clock; the caller passes ``now``."""

    def __init__(self, *, seed: int = 0, max_pending: int = 1024, hold: float = 0.05) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending!r}")
        if not 0.0 < hold < float("inf"):
            raise ValueError(f"hold is in seconds: give a finite value > 0, not {hold!r}")
        self._random = random.Random(seed)
        self._max_pending = max_pending
        self._hold = hold
        self._faults: dict[Direction, Faults] = {d: Faults() for d in DIRECTIONS}
        self._counters: dict[Direction, Counters] = {d: Counters() for d in DIRECTIONS}
        # (due, sequence, datagram): a heap by due time, FIFO among equal times.
        self._queue: list[tuple[float, int, Datagram]] = []
        self._sequence = itertools.count()
        # At most one held datagram per flow, with the time it is sent anyway.
        self._held: dict[tuple[Direction, Address], tuple[Datagram, float]] = {}
        self._ready: list[Datagram] = []

    @property
    def pending(self) -> int:
        """Datagrams in the delay queue or held for reordering."""
        return len(self._queue) + len(self._held)

    def faults(self, direction: Direction) -> Faults:
        """The current faults of ``direction``."""
        return self._faults[direction]

    def set_faults(self, direction: Direction, faults: Faults) -> None:
        """Replace the faults of ``direction``; datagrams already pending keep their times."""
        self._faults[direction] = faults

    def counters(self, direction: Direction) -> Counters:
        """The live counters of ``direction``; the I/O layer adds its send outcomes."""
        return self._counters[direction]

    def receive(self, datagram: Datagram, now: float) -> None:
        """Take a datagram read from the sending side at time ``now``."""
        faults = self._faults[datagram.direction]
        counters = self._counters[datagram.direction]
        counters.received += 1
        if faults.partitioned:
            counters.partitioned += 1
        elif self._chance(faults.drop):
            counters.dropped += 1
        else:
            copies = 2 if self._chance(faults.duplicate) else 1
            counters.duplicated += copies - 1
            for _ in range(copies):
                self._delay(datagram, faults, now)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next has work, or None."""
        times = [deadline for _, deadline in self._held.values()]
        if self._queue:
            times.append(self._queue[0][0])
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        """Release the delayed datagrams that are due and the held ones that waited enough."""
        while self._queue and self._queue[0][0] <= now:
            _, _, datagram = heapq.heappop(self._queue)
            self._release(datagram, now)
        for key, (datagram, deadline) in list(self._held.items()):
            if deadline <= now:
                del self._held[key]
                self._emit(datagram)

    def datagrams_to_send(self) -> list[Datagram]:
        """The datagrams to send now, in order; each is returned once."""
        ready, self._ready = self._ready, []
        return ready

    def discard(self) -> None:
        """Forget every pending datagram (the proxy is stopping)."""
        self._queue.clear()
        self._held.clear()
        self._ready.clear()

    def stats(self) -> dict[str, dict[str, int]]:
        """A snapshot of the counters, by direction."""
        return {d: asdict(self._counters[d]) for d in DIRECTIONS}

    def _chance(self, probability: float) -> bool:
        # Draw only for a real probability, so a fault-free direction uses no randomness.
        return probability > 0.0 and self._random.random() < probability

    def _delay(self, datagram: Datagram, faults: Faults, now: float) -> None:
        latency = faults.delay
        if faults.jitter > 0.0:
            latency += self._random.uniform(0.0, faults.jitter)
        if latency <= 0.0:
            self._release(datagram, now)
            return
        counters = self._counters[datagram.direction]
        if self.pending >= self._max_pending:
            counters.overflowed += 1
            return
        counters.delayed += 1
        heapq.heappush(self._queue, (now + latency, next(self._sequence), datagram))

    def _release(self, datagram: Datagram, now: float) -> None:
        """The reorder stage: swap with the flow's held datagram, or maybe hold this one."""
        key = (datagram.direction, datagram.client)
        held = self._held.pop(key, None)
        if held is not None:
            self._emit(datagram)
            self._emit(held[0])
            self._counters[datagram.direction].reordered += 1
            return
        reorder = self._faults[datagram.direction].reorder
        # With no room to hold it, a datagram goes out in order rather than being lost.
        if self._chance(reorder) and self.pending < self._max_pending:
            self._held[key] = (datagram, now + self._hold)
            return
        self._emit(datagram)

    def _emit(self, datagram: Datagram) -> None:
        if self._faults[datagram.direction].partitioned:
            self._counters[datagram.direction].partitioned += 1
        else:
            self._ready.append(datagram)
