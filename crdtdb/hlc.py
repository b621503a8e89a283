"""Hybrid logical clocks (Kulkarni et al., 2014) as 64-bit integers.

An :class:`Hlc` is an ``int``: the high 48 bits are wall-clock milliseconds
since the Unix epoch, the low 16 bits a logical counter. It therefore sorts as
an integer, fits SQLite ``INTEGER`` and DuckDB ``UBIGINT``, and reads as
``2026-11-27T05:15:18.123Z#5`` for humans.

:func:`tick` (a local event) and :func:`observe` (a remote timestamp) are pure:
they take the previous clock value and the wall time as arguments, so tests
control time. When the logical counter would overflow, the clock borrows one
millisecond from the future instead of wrapping; it never goes backwards.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

from .errors import ClockSkewError, InvalidHlcError, shown

__all__ = ["DEFAULT_MAX_OFFSET_MS", "Hlc", "WallClock", "observe", "system_wall_ms", "tick"]

LOGICAL_BITS = 16
MAX_LOGICAL = (1 << LOGICAL_BITS) - 1
MAX_WALL_MS = (1 << 48) - 1
DEFAULT_MAX_OFFSET_MS = 500

WallClock = Callable[[], int]
"""A function returning wall-clock milliseconds since the epoch."""

# ASCII only: a Unicode \d (or str.isdigit) accepts digits such as "²" that int() rejects.
_TEXT = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,3})?)Z(?:#(\d{1,5}))?", re.ASCII)
_INTEGER = re.compile(r"0*(\d{1,20})", re.ASCII)  # 2**64 - 1 has 20 digits


_MAX_DATETIME_SECONDS = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()) + 1


def system_wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Hlc(int):
    """A hybrid logical clock timestamp; an ``int`` with a readable ``str``."""

    __slots__ = ()

    def __new__(cls, value: int | str = 0) -> Hlc:
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidHlcError(
                f"an HLC is a non-negative int or its text form, not {shown(value)}"
            )
        if not 0 <= value < 1 << 64:
            raise InvalidHlcError(f"HLC {shown(value)} is outside 0..2**64-1")
        return super().__new__(cls, value)

    @classmethod
    def from_parts(cls, wall_ms: int, logical: int = 0) -> Hlc:
        if not 0 <= wall_ms <= MAX_WALL_MS or not 0 <= logical <= MAX_LOGICAL:
            raise InvalidHlcError(f"HLC parts out of range: wall_ms={wall_ms}, logical={logical}")
        return cls((wall_ms << LOGICAL_BITS) | logical)

    @classmethod
    def parse(cls, text: str) -> Hlc:
        """Parse ``str(hlc)`` (ISO time, ``#`` counter) or a decimal integer."""
        text = text.strip()
        integer = _INTEGER.fullmatch(text)
        if integer is not None:
            return cls(int(integer[1]))
        match = _TEXT.fullmatch(text)
        if match is None:
            raise InvalidHlcError(
                f"cannot read {shown(text)} as an HLC: write it as 2026-01-31T12:00:00.000Z#0"
                " or as its integer value"
            )
        seconds_text, _, millis_text = match[1].partition(".")
        try:
            stamp = datetime.strptime(seconds_text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        except ValueError as exc:  # well-shaped but impossible, e.g. February 30
            raise InvalidHlcError(f"cannot read {shown(text)} as an HLC: {exc}") from None
        wall_ms = int(stamp.timestamp()) * 1000 + int(millis_text.ljust(3, "0") or 0)
        return cls.from_parts(wall_ms, int(match[2] or 0))

    @property
    def wall_ms(self) -> int:
        return int(self) >> LOGICAL_BITS

    @property
    def logical(self) -> int:
        return int(self) & MAX_LOGICAL

    def __str__(self) -> str:
        seconds, millis = divmod(self.wall_ms, 1000)
        if seconds >= _MAX_DATETIME_SECONDS:  # beyond year 9999: only the integer form works
            return str(int(self))
        stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{stamp}.{millis:03d}Z#{self.logical}"

    def __repr__(self) -> str:
        return f"Hlc('{self}')"


def _advance(wall_ms: int, logical: int) -> Hlc:
    if logical > MAX_LOGICAL:  # borrow a millisecond rather than wrap
        return Hlc.from_parts(wall_ms + 1, 0)
    return Hlc.from_parts(wall_ms, logical)


def tick(last: Hlc, wall_ms: int) -> Hlc:
    """The timestamp of a new local event after ``last``, at wall time ``wall_ms``."""
    if wall_ms > last.wall_ms:
        return Hlc.from_parts(wall_ms, 0)
    return _advance(last.wall_ms, last.logical + 1)


def observe(
    last: Hlc, remote: Hlc, wall_ms: int, max_offset_ms: int = DEFAULT_MAX_OFFSET_MS
) -> Hlc:
    """The local clock after receiving ``remote``; refuses remote clocks too far ahead.

    Raises :class:`ClockSkewError` when ``remote`` is more than ``max_offset_ms``
    ahead of ``wall_ms``: adopting it would drag every later local timestamp
    into the future.
    """
    if remote.wall_ms > wall_ms + max_offset_ms:
        raise ClockSkewError(
            f"remote HLC {remote} is {remote.wall_ms - wall_ms} ms ahead of local wall time"
            f" (max offset {max_offset_ms} ms): check NTP on both hosts, or raise"
            " max_clock_offset_ms if the skew is expected"
        )
    top = max(last.wall_ms, remote.wall_ms, wall_ms)
    if top == last.wall_ms == remote.wall_ms:
        logical = max(last.logical, remote.logical) + 1
    elif top == last.wall_ms:
        logical = last.logical + 1
    elif top == remote.wall_ms:
        logical = remote.logical + 1
    else:
        logical = 0
    return _advance(top, logical)
