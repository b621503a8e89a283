"""The daemon's log: one line per event that matters, for humans (default) or as JSON.

``crdtdb serve --log-format text|json --log-level debug|info|warning|error``.

- **Text**: ``TIME LEVEL LOGGER: REGION: what happened``.
- **JSON**: one object per line, ``{"time", "level", "logger", "message"}``
  plus ``region`` and whatever fields the line carries: the replicator tags
  the lines an operator acts on with ``event`` (``listening``,
  ``peer_connected``, ``peer_lost``, ``peer_refused``, ``dial_failed``,
  ``not_dialed``, ``repair_round``, ``bootstrap_progress``, ``caught_up``,
  ``store_unwritable``, ``store_writable``, ``stopped``, ``fatal``) and
  ``peer``, so that ``jq 'select(.event == "peer_lost")'`` finds them.
- An error that stops ``crdtdb serve`` (a bad config, a port in use) is one
  line ``error: ...`` on stderr, as from every command; with ``--log-format
  json`` it is a JSON line instead (``event`` ``fatal``, its ``code``). Only
  a bad command line, found before logging is set up, stays plain text.
- aioquic logs every connection's handshake at INFO (logger ``quic``); that
  is kept at WARNING unless ``--log-level debug`` asks for everything. Its
  warning for a connection closed on an error ("[cid] Error: 298, reason:
  ...") is dropped too: the replicator logs the same reason, naming the peer,
  once per change rather than once per dial.

:class:`Repeats` keeps a condition that recurs (a peer we keep failing to
dial) to one line when it starts or changes, and one a minute while it lasts.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

__all__ = ["LEVELS", "QUIC_LOGGER", "JsonFormatter", "Repeats", "set_region", "setup"]

LEVELS = ("debug", "info", "warning", "error")
QUIC_LOGGER = "quic"
"""aioquic's logger."""
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PLAIN = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
"""What every log record has: the rest are the fields a line was given (``extra``)."""


class _ReportedElsewhere(logging.Filter):
    """Drops aioquic's per-connection error warnings, which the replicator reports."""

    PATTERN = re.compile(r"^\[[0-9a-f]+\] Error: \d+, reason: ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.PATTERN.match(record.getMessage())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, fields."""

    def __init__(self, region: str | None = None) -> None:
        super().__init__()
        self.region = region

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.region is not None:
            line["region"] = self.region
        for key, value in vars(record).items():
            if key not in _PLAIN and not key.startswith("_"):
                line[key] = value if isinstance(value, int | float | str | bool) else str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def setup(level: str = "info", fmt: str = "text") -> logging.Handler:
    """Send the daemon's log to stderr as asked; returns the handler (its formatter may
    learn the region later: :func:`set_region`)."""
    if level not in LEVELS or fmt not in ("text", "json"):
        raise ValueError(f"log level {level!r} / format {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level.upper())
    root.setLevel(numeric)
    quic = logging.getLogger(QUIC_LOGGER)
    quic.setLevel(numeric if level == "debug" else logging.WARNING)
    for old_filter in [f for f in quic.filters if isinstance(f, _ReportedElsewhere)]:
        quic.removeFilter(old_filter)
    if level != "debug":
        quic.addFilter(_ReportedElsewhere())
    return handler


def set_region(handler: logging.Handler, region: str) -> None:
    """Name the region in every JSON line from now on (text lines already do)."""
    if isinstance(handler.formatter, JsonFormatter):
        handler.formatter.region = region


class Repeats:
    """Whether a recurring condition (say, a peer we cannot dial) deserves a line now.

    It does when it starts, when its text changes, and every ``every`` seconds
    while it lasts; :meth:`clear` once it is over.
    """

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._last: dict[str, tuple[str, float, int]] = {}

    def due(self, key: str, text: str, now: float) -> int | None:
        """None: stay quiet; else how many times it recurred unlogged since the last line."""
        last = self._last.get(key)
        if last is not None and last[0] == text and now < last[1] + self.every:
            self._last[key] = (last[0], last[1], last[2] + 1)
            return None
        self._last[key] = (text, now, 0)
        return 0 if last is None or last[0] != text else last[2]

    def clear(self, key: str) -> bool:
        """The condition is over; whether it had been logged."""
        return self._last.pop(key, None) is not None
