"""The daemon's status file, and ``crdtdb status DIR|CONFIG``: what it last reported, for humans.

The daemon (:class:`.node.Replicator`) writes ``DATA_DIR/sync-status.json``
atomically every second, and a last time with ``"state": "stopped"`` when
it stops cleanly; this module only names and reads it. It imports neither
aioquic nor cryptography (nor the daemon), so that ``crdtdb status`` starts
as fast as ``import crdtdb`` (``--watch`` loads rich, to draw its table).

The exit status says whether the daemon runs: 0 if it does, 1 if it stopped,
its process is gone, or its report is older than ``STALE_AFTER`` seconds
(hung, or killed in a way that left its pid to another process); and 2 if
there is no report at all (never started here) or the config is bad.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from crdtdb.errors import UsageError
from crdtdb.hlc import Hlc

__all__ = [
    "CLOCK_TOLERANCE",
    "STALE_AFTER",
    "STATUS_FILE",
    "clock_text",
    "down_reason",
    "show_status",
]

STATUS_FILE = "sync-status.json"
"""The status file's name inside the region's data directory."""
STALE_AFTER = 5.0
"""Seconds after which a report the daemon rewrites every second means it is not running."""


def _status_path(target: str) -> Path:
    path = Path(target)
    if path.is_dir():
        return path / STATUS_FILE
    if path.name == STATUS_FILE:
        return path
    if path.suffix == ".toml" or path.is_file():  # a config, whether it exists or not
        from .config import load_config

        return load_config(path).data_dir / STATUS_FILE
    return path / STATUS_FILE


def _read(path: Path) -> dict[str, Any]:
    try:
        status: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"no status at {path}: is `crdtdb serve` running for this region?"
        ) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the status file {path}: {exc}") from None
    return status


def _pid_gone(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: it exists
        return False
    return False


def down_reason(status: dict[str, Any], now: float) -> str | None:
    """None if the daemon that wrote ``status`` is running; else why we think it is not."""
    age = now - float(status.get("time", 0))
    if status.get("state") == "stopped":
        return f"stopped cleanly {_ago(float(status.get('time', 0)), now)}"
    if _pid_gone(status.get("pid")):
        return f"its process (pid {status.get('pid')}) is gone: crashed or killed"
    if age > STALE_AFTER:
        return f"no report for {age:.1f}s: hung, or killed"
    return None


CLOCK_TOLERANCE = 1.0
"""Seconds a moment the daemon reported may lie ahead of this process's clock before
``status`` says that a clock looks off (it never shows a negative age)."""


def _ago(moment: float | None, now: float, *, short: bool = False) -> str:
    """How long ago ``moment`` was, never negative: a moment ahead of ``now`` means the
    daemon's clock reads ahead of ours, and says so (``short``: for a table column)."""
    if moment is None:
        return "never"
    age = now - moment
    if age < -CLOCK_TOLERANCE:
        if short:
            return "0.0s (clock off?)"
        return f"0.0s ago (stamped {-age:.1f}s ahead of this host's clock: a clock looks off)"
    return f"{max(0.0, age):.1f}s" + ("" if short else " ago")


def clock_text(clock: dict[str, Any] | None) -> str | None:
    """The status line about the clock fence (None: the daemon did not report one)."""
    if not clock:
        return None
    if clock.get("fenced"):
        return f"clock FENCED, local writes refused: {clock.get('message')}"
    offsets = ", ".join(
        f"{name} {peer['offset_ms'] / 1000:+.1f}s" for name, peer in clock.get("peers", {}).items()
    )
    heard = f" (peers' clocks minus ours: {offsets})" if offsets else " (no peer heard yet)"
    if clock.get("behind_ms"):
        return (
            f"clock looks {clock['behind_ms'] / 1000:.1f}s BEHIND most peers{heard}: fix this"
            " host's clock (NTP); it refuses their records until then"
        )
    return f"clock agrees with the peers{heard}"


def _lag_text(peer: dict[str, Any]) -> str:
    lag = peer.get("lag_records")
    if lag is None:
        return "lag unknown (never connected)"
    return f"it lacks {sum(lag.values())} records (lag {peer.get('lag_seconds', 0.0):.1f}s)"


def _headline(status: dict[str, Any], now: float, down: str | None) -> str:
    age = _ago(status["time"], now)
    if down is None:
        return (
            f"region {status['region']} listening on {status['listen']} pid {status['pid']},"
            f" reported {age}"
        )
    return (
        f"region {status['region']} NOT RUNNING: {down}"
        f" (last report: pid {status['pid']} on {status['listen']}, {age})"
    )


def _print_text(status: dict[str, Any], now: float, down: str | None) -> None:
    print(_headline(status, now, down))
    print(f"hlc {status['hlc']}  frontier {status.get('frontier', '?')}")
    clock = clock_text(status.get("clock"))
    if clock is not None:
        print(clock)
    for peer in status["peers"]:
        state = "connected" if peer["connected"] else "DISCONNECTED"
        if down is not None and peer["connected"]:
            state = "was connected"
        print(
            f"  {peer['region']:<10} {state:<12} last contact {_ago(peer['last_contact'], now)};"
            f" in {peer['bytes_in']} B, out {peer['bytes_out']} B; {_lag_text(peer)},"
            f" we lack {peer.get('behind_records', 0)};"
            f" anti-entropy rounds {peer['rounds']}, repairs {peer['repairs']}"
        )
        if peer.get("last_error"):
            print(f"             last error: {peer['last_error']}")
    members = status.get("members") or []
    if members:
        print("members:")
    for member in members:
        clock = member.get("frontier_hlc")
        seen = None if clock is None else Hlc(clock).wall_ms / 1000
        print(
            f"  {member['region']:<10} {member['state'] or '?':<8}"
            f" {member.get('address') or '-':<22} frontier clock {_ago(seen, now)}"
        )
    if line := evidence_line(status.get("provenance") or {}):
        print(line)


def evidence_line(provenance: dict[str, Any]) -> str | None:
    """The line on refused records kept as evidence (None: there are none)."""
    conflicts = provenance.get("conflicts") or {}
    if not conflicts:
        return None
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(conflicts.items()))
    flagged = provenance.get("equivocating_origins") or []
    blame = f"; EQUIVOCATING origins: {', '.join(flagged)}" if flagged else ""
    return f"record evidence: {kinds} (kept in the store's conflicts table){blame}"


def show_status(
    target: str, *, as_json: bool = False, watch: bool = False, interval: float = 1.0
) -> int:
    """Print the status; 0 if the daemon runs, 1 if not (see the module's docstring)."""
    path = _status_path(target)
    if watch:
        return _watch(path, interval)
    status = _read(path)
    now = time.time()
    down = down_reason(status, now)
    if as_json:
        print(json.dumps({**status, "running": down is None}, indent=2, sort_keys=True))
    else:
        _print_text(status, now, down)
    sys.stdout.flush()
    return 0 if down is None else 1


_COLUMNS = ("peer", "state", "heard", "bytes in", "bytes out", "it lacks", "lag", "we lack",
            "rounds", "repairs")  # fmt: skip
"""The ``--watch`` table: "heard" is the last contact (seconds ago); "it lacks" the records
the peer lacks, "lag" the age of the oldest of them; "we lack" what it has that we lack;
anti-entropy rounds and the documents they repaired here. Last errors follow the table."""


def _short(count: float) -> str:
    """1234567 -> '1.2M': numbers that fit a narrow column."""
    for unit in ("", "k", "M", "G"):
        if abs(count) < 1000:
            return f"{count:.0f}{unit}" if unit == "" else f"{count:.1f}{unit}"
        count /= 1000
    return f"{count:.1f}T"


def _table(path: Path) -> Any:
    """What ``--watch`` draws: the headline, the clocks, the per-peer table, last errors."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = time.time()
    try:
        status = _read(path)
    except UsageError as exc:
        return Text(f"{exc}  (watching; Ctrl-C to stop)", style="yellow")
    down = down_reason(status, now)
    head = Text(_headline(status, now, down), style="bold" if down is None else "bold red")
    table = Table(box=None, header_style="bold", padding=(0, 1, 0, 0), pad_edge=False)
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("peer", "state") else "right")
    errors = []
    for peer in status["peers"]:
        lag = peer.get("lag_records")
        connected = peer["connected"] and down is None
        table.add_row(
            peer["region"],
            Text("up" if connected else "DOWN", style="green" if connected else "red"),
            _ago(peer["last_contact"], now, short=True),
            _short(peer["bytes_in"]),
            _short(peer["bytes_out"]),
            "?" if lag is None else _short(sum(lag.values())),
            "?" if lag is None else f"{peer.get('lag_seconds', 0.0):.1f}s",
            _short(peer.get("behind_records", 0)),
            _short(peer["rounds"]),
            _short(peer["repairs"]),
        )
        if peer.get("last_error"):
            errors.append(Text(f"{peer['region']}: last error: {peer['last_error']}", "yellow"))
    clocks = Text(f"hlc {status['hlc']}  frontier {status.get('frontier', '?')}", style="dim")
    fence = clock_text(status.get("clock"))
    if fence is not None:
        style = "bold red" if status["clock"].get("fenced") else "dim"
        clocks = Group(clocks, Text(fence, style=style))  # type: ignore[assignment]
    return Group(head, clocks, table, *errors)


def _watch(path: Path, interval: float) -> int:
    """``--watch``: the per-peer table, redrawn in place every ``interval`` s until Ctrl-C."""
    from rich.console import Console
    from rich.live import Live

    if not interval > 0:
        raise UsageError(f"--interval must be a positive number of seconds, not {interval!r}")
    with Live(_table(path), console=Console(), auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            live.update(_table(path), refresh=True)
