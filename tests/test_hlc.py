"""Tests for crdtdb.hlc: the 64-bit hybrid logical clock.

Besides examples, four properties are checked with hypothesis ((a) to (c) in
test_hlc_properties.py):

(a) monotonicity: any sequence of tick/observe calls, whatever the wall clock
    does (including jumping backwards), yields strictly increasing HLCs;
(b) happened-before implies a smaller HLC, across simulated nodes with skewed,
    non-monotonic clocks exchanging reordered messages;
(c) bounded distance from wall time (the exact bounds are stated in the
    docstrings of the tests that check them);
(d) ``Hlc.parse(str(h)) == h`` and parsing of the integer form.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtdb.errors import ClockSkewError, InvalidHlcError, RemoteDataError, UsageError
from crdtdb.hlc import (
    DEFAULT_MAX_OFFSET_MS,
    MAX_LOGICAL,
    MAX_WALL_MS,
    Hlc,
    observe,
    system_wall_ms,
    tick,
)

from .hlc_strategies import BASE_MS, MAX_HLC, PROPERTY, hlcs, logicals, near_hlcs

# --- construction and validation -------------------------------------------------------


def test_hlc_is_an_int_with_wall_and_logical_parts() -> None:
    h = Hlc.from_parts(BASE_MS, 7)
    assert isinstance(h, int)
    assert int(h) == (BASE_MS << 16) | 7
    assert h.wall_ms == BASE_MS
    assert h.logical == 7
    assert Hlc() == 0
    assert Hlc(int(h)) == h
    assert Hlc(h) == h
    assert type(Hlc(5)) is Hlc


def test_from_parts_extremes() -> None:
    assert Hlc.from_parts(0, 0) == 0
    top = Hlc.from_parts(MAX_WALL_MS, MAX_LOGICAL)
    assert top == MAX_HLC
    assert top.wall_ms == MAX_WALL_MS
    assert top.logical == MAX_LOGICAL


@pytest.mark.parametrize(
    ("wall_ms", "logical"),
    [(-1, 0), (MAX_WALL_MS + 1, 0), (0, -1), (0, MAX_LOGICAL + 1), (BASE_MS, 1 << 20)],
)
def test_from_parts_refuses_out_of_range(wall_ms: int, logical: int) -> None:
    with pytest.raises(InvalidHlcError, match="out of range"):
        Hlc.from_parts(wall_ms, logical)


@pytest.mark.parametrize(
    "value",
    [
        -1,
        -(1 << 70),
        1 << 64,
        (1 << 64) + 5,
        True,
        False,
        1.0,
        0.0,
        float("nan"),
        None,
        b"12",
        [1],
        object(),
    ],
    ids=repr,
)
def test_invalid_values_are_refused(value: object) -> None:
    with pytest.raises(InvalidHlcError) as info:
        Hlc(value)  # type: ignore[arg-type]
    assert info.value.code == "invalid_hlc"
    assert isinstance(info.value, UsageError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "garbage",
        "-1",
        "+5",
        "1.5",
        "0x10",
        "1e3",
        "18446744073709551616",  # 2**64
        "99999999999999999999999",
        "9" * 5000,  # longer than int()'s digit limit
        "²",  # str.isdigit() is True, int() refuses it
        "١٢٣",  # Arabic-Indic digits: not an HLC
        "2026-01-31",
        "2026-01-31T12:00:00",  # no Z
        "2026-01-31 12:00:00Z",
        "2026-01-31T12:00:00.1234Z#0",  # sub-millisecond precision
        "2026-01-31T12:00:00.000Z#",
        "2026-01-31T12:00:00.000Z#-1",
        "2026-01-31T12:00:00.000Z#65536",  # logical counter overflow
        "2026-01-31T12:00:00.000Z#123456",
        "2026-01-31T12:00:00.000+00:00",
        "2026-02-30T00:00:00.000Z#0",  # well-shaped, impossible date
        "2026-13-01T00:00:00.000Z#0",
        "2026-01-01T24:00:00.000Z#0",
        "2026-01-01T23:59:60.000Z#0",
        "0000-01-01T00:00:00.000Z#0",
        "1969-12-31T23:59:59.999Z#0",  # before the epoch
        "٢٠٢٦-01-31T12:00:00.000Z#0",
    ],
)
def test_garbage_strings_are_refused(text: str) -> None:
    with pytest.raises(InvalidHlcError):
        Hlc(text)
    with pytest.raises(InvalidHlcError):
        Hlc.parse(text)


def test_parse_error_says_how_to_write_an_hlc() -> None:
    with pytest.raises(InvalidHlcError, match=r"2026-01-31T12:00:00\.000Z#0"):
        Hlc.parse("yesterday")


# --- text form ------------------------------------------------------------------------


def test_str_is_iso_time_and_counter() -> None:
    wall = int(datetime(2026, 11, 27, 5, 15, 18, tzinfo=UTC).timestamp()) * 1000 + 123
    h = Hlc.from_parts(wall, 5)
    assert str(h) == "2026-11-27T05:15:18.123Z#5"
    assert repr(h) == "Hlc('2026-11-27T05:15:18.123Z#5')"
    assert str(Hlc(0)) == "1970-01-01T00:00:00.000Z#0"
    assert Hlc.parse("2026-11-27T05:15:18.123Z#5") == h
    assert Hlc("2026-11-27T05:15:18.123Z#5") == h


def test_parse_accepts_short_forms() -> None:
    assert Hlc.parse("2026-01-01T00:00:00Z") == Hlc.from_parts(BASE_MS, 0)
    assert Hlc.parse("2026-01-01T00:00:00Z#9") == Hlc.from_parts(BASE_MS, 9)
    assert Hlc.parse("2026-01-01T00:00:00.5Z#0") == Hlc.from_parts(BASE_MS + 500, 0)
    assert Hlc.parse("2026-01-01T00:00:00.05Z#0") == Hlc.from_parts(BASE_MS + 50, 0)
    assert Hlc.parse("  2026-01-01T00:00:00.000Z#1\n") == Hlc.from_parts(BASE_MS, 1)
    assert Hlc.parse("2026-01-01T00:00:00.000Z#65535").logical == MAX_LOGICAL


def test_parse_integer_form() -> None:
    assert Hlc.parse("0") == 0
    assert Hlc.parse("42") == 42
    assert Hlc.parse(" 42 ") == 42
    assert Hlc.parse("0042") == 42
    assert Hlc.parse("0" * 30 + "7") == 7
    assert Hlc.parse(str(MAX_HLC)) == MAX_HLC
    assert type(Hlc.parse("42")) is Hlc


def test_beyond_year_9999_str_falls_back_to_the_integer() -> None:
    h = Hlc(MAX_HLC)
    assert str(h) == str(MAX_HLC)
    assert Hlc.parse(str(h)) == h
    last_readable = Hlc.from_parts(
        int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()) * 1000 + 999, 3
    )
    assert str(last_readable) == "9999-12-31T23:59:59.999Z#3"
    assert Hlc.parse(str(last_readable)) == last_readable
    first_unreadable = Hlc.from_parts(last_readable.wall_ms + 1, 0)
    assert str(first_unreadable) == str(int(first_unreadable))
    assert Hlc.parse(str(first_unreadable)) == first_unreadable


@PROPERTY
@given(st.one_of(hlcs, near_hlcs, st.builds(Hlc.from_parts, st.integers(0, MAX_WALL_MS), logicals)))
def test_property_d_string_round_trip(h: Hlc) -> None:
    text = str(h)
    assert Hlc.parse(text) == h
    assert Hlc(text) == h
    assert Hlc.parse(str(int(h))) == h
    assert Hlc.parse(f" {int(h)}\t") == h
    assert eval(repr(h), {"Hlc": Hlc}) == h
    if text != str(int(h)):  # the readable form carries the parts explicitly
        assert text.endswith(f"Z#{h.logical}")


# --- ordering -------------------------------------------------------------------------


def test_sorts_as_int() -> None:
    values = [
        Hlc.from_parts(BASE_MS, 2),
        Hlc.from_parts(BASE_MS - 1, MAX_LOGICAL),
        Hlc.from_parts(BASE_MS + 1, 0),
        Hlc.from_parts(BASE_MS, 0),
        Hlc(0),
    ]
    assert sorted(values) == sorted(int(v) for v in values)
    assert sorted(values) == [values[4], values[1], values[3], values[0], values[2]]
    assert Hlc.from_parts(BASE_MS, 1) > (BASE_MS << 16)
    assert hash(Hlc(12345)) == hash(12345)
    assert {Hlc(12345): "x"}[12345] == "x"  # type: ignore[index]
    assert max(values) == Hlc.from_parts(BASE_MS + 1, 0)


@PROPERTY
@given(st.integers(0, MAX_WALL_MS), logicals, st.integers(0, MAX_WALL_MS), logicals)
def test_order_is_wall_then_logical(w1: int, l1: int, w2: int, l2: int) -> None:
    a, b = Hlc.from_parts(w1, l1), Hlc.from_parts(w2, l2)
    assert (a < b) == ((w1, l1) < (w2, l2))
    assert (a == b) == ((w1, l1) == (w2, l2))


# --- tick and observe: examples -------------------------------------------------------


def test_tick_follows_the_wall_clock_when_it_moves_forward() -> None:
    h = tick(Hlc(0), BASE_MS)
    assert (h.wall_ms, h.logical) == (BASE_MS, 0)
    h2 = tick(h, BASE_MS + 10)
    assert (h2.wall_ms, h2.logical) == (BASE_MS + 10, 0)


def test_tick_counts_when_the_wall_clock_stands_still_or_goes_back() -> None:
    h = Hlc.from_parts(BASE_MS, 3)
    assert tick(h, BASE_MS) == Hlc.from_parts(BASE_MS, 4)
    assert tick(h, BASE_MS - 10_000) == Hlc.from_parts(BASE_MS, 4)
    assert tick(h, -5) == Hlc.from_parts(BASE_MS, 4)


def test_tick_overflow_borrows_a_millisecond() -> None:
    last = Hlc.from_parts(BASE_MS, MAX_LOGICAL)
    h = tick(last, BASE_MS)
    assert (h.wall_ms, h.logical) == (BASE_MS + 1, 0)
    assert h > last
    assert tick(last, BASE_MS - 3) == h
    # and then the borrowed millisecond counts on normally
    assert tick(h, BASE_MS) == Hlc.from_parts(BASE_MS + 1, 1)
    assert tick(h, BASE_MS + 1) == Hlc.from_parts(BASE_MS + 1, 1)
    assert tick(h, BASE_MS + 2) == Hlc.from_parts(BASE_MS + 2, 0)


def test_observe_overflow_borrows_a_millisecond() -> None:
    last = Hlc.from_parts(BASE_MS, MAX_LOGICAL)
    assert observe(last, Hlc.from_parts(BASE_MS, 5), BASE_MS) == Hlc.from_parts(BASE_MS + 1, 0)
    remote = Hlc.from_parts(BASE_MS, MAX_LOGICAL)
    assert observe(Hlc(0), remote, BASE_MS - 1) == Hlc.from_parts(BASE_MS + 1, 0)
    assert observe(last, remote, BASE_MS) == Hlc.from_parts(BASE_MS + 1, 0)


def test_the_very_last_hlc_cannot_advance_and_does_not_wrap() -> None:
    top = Hlc(MAX_HLC)
    with pytest.raises(InvalidHlcError):
        tick(top, BASE_MS)
    with pytest.raises(InvalidHlcError):
        observe(Hlc(0), top, MAX_WALL_MS)


def test_observe_takes_the_largest_of_the_three_clocks() -> None:
    last = Hlc.from_parts(BASE_MS, 4)
    # local wall ahead of both: logical resets
    assert observe(last, Hlc.from_parts(BASE_MS + 5, 9), BASE_MS + 10) == Hlc.from_parts(
        BASE_MS + 10, 0
    )
    # remote ahead: remote's counter + 1
    assert observe(last, Hlc.from_parts(BASE_MS + 5, 9), BASE_MS) == Hlc.from_parts(BASE_MS + 5, 10)
    # last ahead: last's counter + 1
    assert observe(last, Hlc.from_parts(BASE_MS - 5, 9), BASE_MS - 7) == Hlc.from_parts(BASE_MS, 5)
    # last and remote tie: the larger counter + 1
    assert observe(last, Hlc.from_parts(BASE_MS, 9), BASE_MS) == Hlc.from_parts(BASE_MS, 10)
    assert observe(last, Hlc.from_parts(BASE_MS, 1), BASE_MS - 1) == Hlc.from_parts(BASE_MS, 5)
    # wall ties with remote: remote's counter + 1
    assert observe(Hlc(0), Hlc.from_parts(BASE_MS, 9), BASE_MS) == Hlc.from_parts(BASE_MS, 10)


def test_skew_refused_with_a_message_naming_the_offset() -> None:
    remote = Hlc.from_parts(BASE_MS + 501, 0)
    with pytest.raises(ClockSkewError) as info:
        observe(Hlc(0), remote, BASE_MS, max_offset_ms=500)
    message = str(info.value)
    assert "501 ms ahead" in message
    assert "max offset 500 ms" in message
    assert info.value.code == "clock_skew"
    assert isinstance(info.value, RemoteDataError)


def test_skew_exactly_at_max_offset_is_accepted() -> None:
    remote = Hlc.from_parts(BASE_MS + 500, 7)
    h = observe(Hlc(0), remote, BASE_MS, max_offset_ms=500)
    assert h == Hlc.from_parts(BASE_MS + 500, 8)
    assert observe(Hlc(0), Hlc.from_parts(BASE_MS, 3), BASE_MS, max_offset_ms=0) == (
        Hlc.from_parts(BASE_MS, 4)
    )
    with pytest.raises(ClockSkewError):
        observe(Hlc(0), Hlc.from_parts(BASE_MS + 1, 0), BASE_MS, max_offset_ms=0)


def test_default_max_offset_applies() -> None:
    observe(Hlc(0), Hlc.from_parts(BASE_MS + DEFAULT_MAX_OFFSET_MS, 0), BASE_MS)
    with pytest.raises(ClockSkewError):
        observe(Hlc(0), Hlc.from_parts(BASE_MS + DEFAULT_MAX_OFFSET_MS + 1, 0), BASE_MS)


def test_skew_is_judged_against_the_wall_clock_only() -> None:
    """A remote clock that is behind our own HLC but too far ahead of our wall clock is
    still refused: after a backwards wall-clock jump the HLC is no measure of real time."""
    last = Hlc.from_parts(BASE_MS + 10_000, 0)
    with pytest.raises(ClockSkewError):
        observe(last, Hlc.from_parts(BASE_MS + 5_000, 0), BASE_MS, max_offset_ms=500)


def test_remote_behind_is_never_refused() -> None:
    h = observe(Hlc.from_parts(BASE_MS, 0), Hlc(0), BASE_MS + 1_000_000, max_offset_ms=0)
    assert h == Hlc.from_parts(BASE_MS + 1_000_000, 0)


def test_tick_and_observe_are_pure() -> None:
    last = Hlc.from_parts(BASE_MS, 3)
    remote = Hlc.from_parts(BASE_MS + 1, 3)
    assert tick(last, BASE_MS) == tick(last, BASE_MS)
    assert observe(last, remote, BASE_MS) == observe(last, remote, BASE_MS)
    assert last == Hlc.from_parts(BASE_MS, 3)


def test_system_wall_ms_is_milliseconds_since_epoch() -> None:
    before = time.time_ns() // 1_000_000
    now = system_wall_ms()
    after = time.time_ns() // 1_000_000
    assert isinstance(now, int)
    assert before <= now <= after
