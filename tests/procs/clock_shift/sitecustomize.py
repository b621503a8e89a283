"""Puts this process's wall clock ``CRDTDB_TEST_CLOCK_SHIFT_S`` seconds ahead (or behind).

For the clock-fence tests: a directory holding this file goes first on
``PYTHONPATH`` of a daemon or writer, and Python imports it at start-up
(``site``), before crdtdb reads the clock. ``time.time`` and ``time.time_ns`` are
shifted, which is what crdtdb's wall clock (``crdtdb.hlc.system_wall_ms``) and the
daemon's status read; the monotonic clocks that asyncio times with are not.
"""

import os
import time

_SHIFT_NS = int(float(os.environ.get("CRDTDB_TEST_CLOCK_SHIFT_S", "0")) * 1e9)

_time_ns = time.time_ns


def _shifted_ns() -> int:
    return _time_ns() + _SHIFT_NS


def _shifted() -> float:
    return _shifted_ns() / 1e9


if _SHIFT_NS:
    time.time_ns = _shifted_ns
    time.time = _shifted
