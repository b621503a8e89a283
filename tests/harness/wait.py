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


def _timed_out(timeout: float, what: What) -> HarnessError:
    said = what() if callable(what) else what
    return HarnessError(f"timed out after {timeout:g} s waiting for {said}")


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    what: What = "the condition",
    *,
    interval: float = 0.05,
    check: Callable[[], object] | None = None,
) -> T:
    """Poll ``condition`` every ``interval`` s until it is truthy; raise at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what)
        time.sleep(interval)


async def wait_for(
    condition: Callable[[], T],
    timeout: float = 15.0,
    what: What = "the condition",
    *,
    interval: float = 0.02,
    check: Callable[[], object] | None = None,
) -> T:
    """:func:`wait_until` for a coroutine: the event loop runs while it waits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if check is not None:
            check()
        result = condition()
        if result:
            return result
        if loop.time() > deadline:
            raise _timed_out(timeout, what)
        await asyncio.sleep(interval)
