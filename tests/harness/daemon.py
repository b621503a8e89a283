"""A ``crdtdb serve`` daemon as a child process, and the status file it keeps."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

from .process import Child

__all__ = ["STATUS_FILE", "daemon_status", "start_daemon"]

STATUS_FILE = "sync-status.json"
"""The daemon's status report, rewritten every second inside its data directory."""


def start_daemon(config: Path, *, log: Path, cwd: Path | None = None, name: str = "") -> Child:
    """``crdtdb serve --config CONFIG``, its output appended to ``log``; stopped by SIGTERM."""
    return Child(
        [sys.executable, "-m", "crdtdb", "serve", "--config", str(config)],
        name=name or f"daemon {config.stem}",
        log=log,
        read_lines=False,
        cwd=cwd,
        stop_signal=signal.SIGTERM,
    )


def daemon_status(data_dir: Path) -> dict[str, Any] | None:
    """The daemon's last status report, or None if there is none (yet)."""
    try:
        status: dict[str, Any] = json.loads((data_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):  # none yet, or unreadable: as if none
        return None
    return status
