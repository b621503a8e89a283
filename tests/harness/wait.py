"""Waiting for a condition with a deadline, never for a fixed time: sync and async.

Both pollers call ``condition`` until it returns something truthy and return
that; ``check`` (if given) runs before each look, so that a caller can fail
at once when a process it depends on died instead of at the deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["HarnessError", "wait_for", "wait_until"]

T = TypeVar("T")
What = str | Callable[[], str]
"""What is awaited, for the error: a text, or a function that says it at the deadline."""


class HarnessError(AssertionError):
    """A process or a condition did not do what the caller waited for (it exited, or was too
    slow). An ``AssertionError``, so that a test that meets it fails rather than errors."""


class _Looks:
    """One look at ``condition`` after another, until it holds or the deadline passed."""

    def __init__(
        self, timeout: float, what: What, check: Callable[[], object] | None, now: float
    ) -> None:
        self.timeout, self.what, self.check = timeout, what, check
        self.deadline = now + timeout

    def __call__(self, condition: Callable[[], T | None], now: Callable[[], float]) -> T | None:
        """``condition``'s result if truthy; None to look again; raises past the deadline."""
        if self.check is not None:
            self.check()
        result = condition()
        if result:
            return result
        if now() > self.deadline:
            said = self.what() if callable(self.what) else self.what
            raise HarnessError(f"timed out after {self.timeout:g} s waiting for {said}")
        return None


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: What = "the condition",
    *,
    interval: float = 0.05,
    check: Callable[[], object] | None = None,
) -> T:
    """Poll ``condition`` every ``interval`` s until it is truthy; raise at the deadline."""
    look = _Looks(timeout, what, check, time.monotonic())
    while (result := look(condition, time.monotonic)) is None:
        time.sleep(interval)
    return result


async def wait_for(
    condition: Callable[[], T | None],
    timeout: float = 15.0,
    what: What = "the condition",
    *,
    interval: float = 0.02,
    check: Callable[[], object] | None = None,
) -> T:
    """:func:`wait_until` for a coroutine: the event loop runs while it waits."""
    loop = asyncio.get_running_loop()
    look = _Looks(timeout, what, check, loop.time())
    while (result := look(condition, loop.time)) is None:
        await asyncio.sleep(interval)
    return result
