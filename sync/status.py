"""The daemon's status file, and ``crdtdb status DIR|CONFIG``: what it last reported, for humans.

The daemon (:class:`.node.Replicator`) writes ``DATA_DIR/sync-status.json``
atomically every second; this module only names and reads it. It imports
neither aioquic nor cryptography (nor the daemon), so that ``crdtdb status``
starts as fast as ``import crdtdb``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from crdtdb.errors import UsageError

__all__ = ["STATUS_FILE", "show_status"]

STATUS_FILE = "sync-status.json"
"""The status file's name inside the region's data directory."""


def _status_path(target: str) -> Path:
    path = Path(target)
    if path.is_file() and path.suffix == ".toml":
        from .config import load_config

        return load_config(path).data_dir / STATUS_FILE
    return path / STATUS_FILE


def _ago(moment: float | None, now: float) -> str:
    return "never" if moment is None else f"{now - moment:.1f}s ago"


def show_status(target: str, *, as_json: bool = False) -> int:
    path = _status_path(target)
    try:
        status: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"no status at {path}: is `crdtdb serve` running for this region?"
        ) from None
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    now = time.time()
    age = now - status["time"]
    stale = " (STALE: the daemon may be down)" if age > 5 else ""
    print(
        f"region {status['region']} listening on {status['listen']} pid {status['pid']},"
        f" reported {age:.1f}s ago{stale}"
    )
    print(f"hlc {status['hlc']}  frontier {status.get('frontier', '?')}")
    for peer in status["peers"]:
        state = "connected" if peer["connected"] else "DISCONNECTED"
        lag = peer.get("lag_records")
        lag_text = (
            "lag unknown (never connected)"
            if lag is None
            else f"it lacks {sum(lag.values())} records (lag {peer.get('lag_seconds', 0.0):.1f}s)"
        )
        print(
            f"  {peer['region']:<10} {state:<12} last contact {_ago(peer['last_contact'], now)};"
            f" in {peer['bytes_in']} B, out {peer['bytes_out']} B; {lag_text},"
            f" we lack {peer.get('behind_records', 0)};"
            f" anti-entropy rounds {peer['rounds']}, repairs {peer['repairs']}"
        )
        if peer.get("last_error"):
            print(f"             last error: {peer['last_error']}")
    sys.stdout.flush()
    return 0
