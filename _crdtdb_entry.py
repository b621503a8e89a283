"""The ``crdtdb`` command's entry point: a Ctrl-C while it starts exits quietly.

The console script runs :func:`main` here rather than ``crdtdb.cli.main``:
importing crdtdb takes a few hundred milliseconds, and in that window Python's
own handler would turn a Ctrl-C into a ``KeyboardInterrupt`` traceback. Until
``crdtdb.cli`` is loaded (its ``main`` handles Ctrl-C itself), SIGINT exits
with status 130, as shells expect. The module lives outside the crdtdb package
so that nothing of crdtdb loads before the handler is in place.
"""

from __future__ import annotations

import signal
from types import FrameType

__all__ = ["main"]


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(130)


def main() -> int:
    quiet = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not if ignored
    if quiet:
        signal.signal(signal.SIGINT, _interrupted)
    try:
        from crdtdb.cli import main as run

        if quiet:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return run()
    except KeyboardInterrupt:  # between the two lines above
        return 130
