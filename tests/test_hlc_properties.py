"""Properties (a), (b) and (c) of crdtdb.hlc, checked with hypothesis (see test_hlc.py).

(a) monotonicity: any sequence of tick/observe calls, whatever the wall clock
    does (including jumping backwards), yields strictly increasing HLCs;
(b) happened-before implies a smaller HLC, across simulated nodes with skewed,
    non-monotonic clocks exchanging reordered messages;
(c) bounded distance from wall time (the exact bounds are stated in the
    docstrings of the tests that check them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtdb.errors import ClockSkewError
from crdtdb.hlc import MAX_LOGICAL, Hlc, observe, tick

from .hlc_strategies import BASE_MS, PROPERTY, logicals, near_hlcs, oracle

# --- (a) monotonicity -----------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One tick or observe at wall time ``wall``."""

    kind: str  # "tick" or "observe"
    wall: int
    remote_anchor: str  # the remote's wall part is relative to our "wall" or "last" HLC
    remote_delta: int
    remote_logical: int

    def remote(self, last: Hlc) -> Hlc:
        base = self.wall if self.remote_anchor == "wall" else last.wall_ms
        return Hlc.from_parts(base + self.remote_delta, self.remote_logical)


_wall_moves = st.one_of(
    st.just(0),  # the wall clock stands still
    st.integers(-3, 3),
    st.integers(-100_000, 100_000),  # big jumps either way
)
_raw_steps = st.lists(
    st.tuples(
        st.sampled_from(["tick", "observe"]),
        _wall_moves,
        st.sampled_from(["wall", "last"]),
        st.one_of(st.integers(-2, 2), st.integers(-1_000, 1_000)),
        logicals,
    ),
    min_size=1,
    max_size=50,
)


def _materialize(raw: list[tuple[str, int, str, int, int]]) -> list[Step]:
    steps = []
    wall = BASE_MS
    for kind, move, anchor, remote_delta, remote_logical in raw:
        wall += move
        steps.append(Step(kind, wall, anchor, remote_delta, remote_logical))
    return steps


# tick/observe steps whose wall clock wanders, jumps back and stands still, with
# remote clocks near our wall clock or near our own HLC (so that ties are common).
clock_steps = _raw_steps.map(_materialize)


@PROPERTY
@given(near_hlcs, clock_steps, st.integers(0, 600))
def test_property_a_monotonic_under_any_wall_clock(
    start: Hlc, steps: list[Step], max_offset: int
) -> None:
    last = start
    for step in steps:
        kind, wall, remote = step.kind, step.wall, step.remote(last)
        if kind == "tick":
            new = tick(last, wall)
            assert new == oracle(last + 1, wall << 16)
        elif remote.wall_ms > wall + max_offset:
            with pytest.raises(ClockSkewError):
                observe(last, remote, wall, max_offset)
            continue  # refused: the clock keeps its value
        else:
            new = observe(last, remote, wall, max_offset)
            assert new == oracle(last + 1, remote + 1, wall << 16)
            assert new > remote
        assert isinstance(new, Hlc)
        assert new > last
        assert new.wall_ms >= wall  # never behind the wall clock it just read
        assert 0 <= new.logical <= MAX_LOGICAL
        assert new < 1 << 64
        last = new


# --- (c) bounded distance from wall time ----------------------------------------------


@PROPERTY
@given(near_hlcs, clock_steps, st.integers(0, 600))
def test_property_c_bounded_by_wall_clock_offset_and_borrows(
    start: Hlc, steps: list[Step], max_offset: int
) -> None:
    """One node, remote HLCs from anywhere (accepted only within ``max_offset``).

    A step *borrows* when its result's wall part exceeds the wall parts of all its
    inputs (last, remote, wall reading); it then exceeds them by exactly 1 and the
    counter restarts at 0. Otherwise the wall part is exactly the largest input.
    Hence, with ``M`` the largest of the start's wall part and every wall reading
    so far and ``B`` the number of borrows so far:

        wall reading <= hlc.wall_ms <= M + max_offset + B

    and, with ``I`` the largest wall part of any input so far (``M`` and the wall parts
    of accepted remotes), ``I <= hlc.wall_ms <= I + B``, with equality while ``B == 0``:
    without overflow the clock is exactly the largest wall time it has seen.
    """
    last = start
    max_wall = start.wall_ms
    max_input = start.wall_ms  # largest wall part of any input, remotes included
    borrows = 0
    for step in steps:
        kind, wall, remote = step.kind, step.wall, step.remote(last)
        if kind == "observe" and remote.wall_ms > wall + max_offset:
            continue
        max_wall = max(max_wall, wall)
        if kind == "tick":
            new = tick(last, wall)
            top = max(last.wall_ms, wall)
        else:
            new = observe(last, remote, wall, max_offset)
            top = max(last.wall_ms, remote.wall_ms, wall)
            max_input = max(max_input, remote.wall_ms)
        max_input = max(max_input, wall)
        if new.wall_ms != top:
            assert (new.wall_ms, new.logical) == (top + 1, 0)
            borrows += 1
        assert wall <= new.wall_ms <= max_wall + max_offset + borrows
        assert new.wall_ms <= max_input + borrows
        assert max_input <= new.wall_ms
        if borrows == 0:
            assert new.wall_ms == max_input
        assert 0 <= new.logical <= MAX_LOGICAL
        assert 0 <= new < 1 << 64
        last = new


def test_property_c_borrow_runs_stay_bounded() -> None:
    """Ticking in one millisecond borrows exactly one ms per 65536 events, no more."""
    wall = BASE_MS
    last = Hlc.from_parts(wall, MAX_LOGICAL - 15)
    borrows = 0
    for _ in range(16 + MAX_LOGICAL + 1):
        new = tick(last, wall - 2)  # the wall clock even lags behind
        borrows += new.wall_ms != last.wall_ms
        assert new > last
        assert new.wall_ms <= wall + borrows
        last = new
    assert borrows == 2
    assert (last.wall_ms, last.logical) == (wall + 2, 0)
    # as soon as the wall clock catches up, the borrowed time is absorbed
    assert tick(last, wall + 2) == Hlc.from_parts(wall + 2, 1)
    assert tick(last, wall + 3) == Hlc.from_parts(wall + 3, 0)


# --- (b) happened-before => smaller HLC, with many nodes ------------------------------


@dataclass
class Event:
    node: int
    hlc: Hlc
    wall: int  # the wall reading taken by this event
    vector: tuple[int, ...]  # vector clock: the causal past, exactly
    past_max_wall: int  # largest wall reading in the causal past (this event included)
    past_borrows: frozenset[int] = field(default_factory=frozenset)  # ids of borrow events


@dataclass
class Message:
    hlc: Hlc
    send_event: int


@st.composite
def cluster_runs(
    draw: st.DrawFn,
) -> tuple[int, int, list[int], list[Hlc], list[tuple[Any, ...]]]:
    n = draw(st.integers(2, 5))
    # small bounds leave no room for skew: all clocks agree, so HLC ties are common
    max_offset = draw(st.one_of(st.integers(10, 13), st.integers(10, 400)))
    # Fixed per-node skew plus per-reading jitter, each within a quarter of the bound
    # less a margin: every reading is within max_offset / 2 - 5 of true time, so a
    # reading is never more than max_offset - 10 behind any earlier one. A message's
    # HLC is at most the largest earlier reading plus its borrows (property (c)), and
    # short runs borrow far fewer than 10 ms, so no receive may be refused as skewed.
    quarter = (max_offset - 10) // 4
    skews = [draw(st.integers(-quarter, quarter)) for _ in range(n)]
    # Start states at the top of each node's band and with counters near the
    # borrow point, so that ties and overflow borrows happen in short runs.
    starts = [Hlc.from_parts(BASE_MS + skews[i] + quarter, draw(logicals)) for i in range(n)]
    steps = [
        (kind, node % n, target % n, advance, jitter * quarter // 100)
        for kind, node, target, advance, jitter in draw(_cluster_steps)
    ]
    return n, max_offset, skews, starts, steps


_cluster_steps = st.lists(
    st.tuples(
        st.sampled_from(["local", "send", "receive"]),
        st.integers(0, 4),  # node
        st.integers(0, 4),  # destination (send) / which pending message (receive)
        st.integers(0, 2),  # how far true time advances
        st.integers(-100, 100),  # jitter, in % of a quarter: clocks go backwards too
    ),
    min_size=1,
    max_size=60,
)


@PROPERTY
@given(cluster_runs())
def test_property_b_happened_before_implies_smaller_hlc(run: tuple[Any, ...]) -> None:
    n, max_offset, skews, starts, steps = run
    events: list[Event] = []
    last_event: list[int] = []
    for i, start in enumerate(starts):  # each node's recovered state is its first event
        vector = tuple(1 if j == i else 0 for j in range(n))
        events.append(Event(i, start, start.wall_ms, vector, start.wall_ms))
        last_event.append(len(events) - 1)
    inboxes: list[list[Message]] = [[] for _ in range(n)]
    true_ms = BASE_MS
    for kind, node, target, advance, jitter in steps:
        true_ms += advance
        wall = true_ms + skews[node] + jitter
        prev = events[last_event[node]]
        if kind == "receive":
            if not inboxes[node]:
                continue
            message = inboxes[node].pop(target % len(inboxes[node]))  # any order
            sent = events[message.send_event]
            new = observe(prev.hlc, message.hlc, wall, max_offset)
            inputs_top = max(prev.hlc.wall_ms, message.hlc.wall_ms, wall)
            vector = tuple(max(a, b) for a, b in zip(prev.vector, sent.vector, strict=True))
            past_max = max(prev.past_max_wall, sent.past_max_wall, wall)
            past_borrows = prev.past_borrows | sent.past_borrows
            assert new > message.hlc  # receive after send
        else:
            new = tick(prev.hlc, wall)
            inputs_top = max(prev.hlc.wall_ms, wall)
            vector = prev.vector
            past_max = max(prev.past_max_wall, wall)
            past_borrows = prev.past_borrows
        assert new > prev.hlc  # program order on the node
        vector = tuple(v + 1 if j == node else v for j, v in enumerate(vector))
        if new.wall_ms > inputs_top:
            past_borrows = past_borrows | {len(events)}
        events.append(Event(node, new, wall, vector, past_max, past_borrows))
        last_event[node] = len(events) - 1
        if kind == "send":
            inboxes[target].append(Message(new, len(events) - 1))

    for e in events:
        # (c) in a closed system: the wall part is the largest wall reading in the
        # causal past, plus at most one millisecond per borrow in that past.
        assert e.past_max_wall <= e.hlc.wall_ms <= e.past_max_wall + len(e.past_borrows)
        if not e.past_borrows:
            assert e.hlc.wall_ms == e.past_max_wall
        assert e.hlc.logical <= MAX_LOGICAL
    for e in events:
        for f in events:
            happened_before = e is not f and all(
                a <= b for a, b in zip(e.vector, f.vector, strict=True)
            )
            if happened_before:
                assert e.hlc < f.hlc
    # events of one node are distinct, so (node, hlc) identifies an event
    assert len({(e.node, e.hlc) for e in events}) == len(events)
