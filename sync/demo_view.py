"""What ``crdtdb demo`` shows while it runs: one row per region, measured from the stores.

:func:`measure` reads every region's store (the demo holds each one open,
as its writers' application would) and builds a :class:`RegionRow`:

- ``writes``: transactions its writer committed;
- ``docs``: its live documents;
- ``in``: records of other regions it holds; ``out``: records of its own
  the other regions hold (so the cluster's ``in`` and ``out`` sums agree);
- ``behind``: records the others wrote that it lacks, and ``lag``: the age
  of the oldest of them (0 when it lacks none);
- ``frontier``: how old its global frontier is (every region holds every
  update older than it; it stalls while a region is cut off);
- ``merkle``: the first bytes of its Merkle root (the regions agree when
  all roots are equal).

Two displays: :class:`LiveTable` redraws a rich table in place on a
terminal; :class:`PlainLines` prints the rows every few seconds, for logs
and CI (stdout not a terminal). Both print events (a cut, a heal) as lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from crdtdb.database import Database
from crdtdb.hlc import Hlc

if TYPE_CHECKING:
    from rich.live import Live
    from rich.table import Table

__all__ = ["Display", "LiveTable", "PlainLines", "RegionRow", "measure", "open_display"]

PLAIN_EVERY = 2.0
"""Seconds between two sets of rows in plain output."""


@dataclass(frozen=True, slots=True)
class RegionRow:
    """One region as measured at one moment (see the module docstring)."""

    region: str
    daemon: str
    writes: int
    docs: int
    records_in: int
    records_out: int
    behind: int
    lag_s: float
    frontier_age_s: float | None
    root: str

    def cells(self) -> list[str]:
        frontier = "-" if self.frontier_age_s is None else f"{self.frontier_age_s:.1f}s ago"
        return [
            self.region,
            self.daemon,
            str(self.writes),
            str(self.docs),
            str(self.records_in),
            str(self.records_out),
            str(self.behind),
            f"{self.lag_s:.1f}s",
            frontier,
            self.root,
        ]


HEADERS = ["region", "daemon", "writes", "docs", "in", "out", "behind", "lag", "frontier", "merkle"]


def agreement(rows: list[RegionRow]) -> str:
    """One line: do the regions agree (equal Merkle roots)?"""
    roots = {row.root for row in rows}
    if len(roots) == 1:
        return f"regions agree: yes (every Merkle root is {rows[0].root})"
    return f"regions agree: no ({len(roots)} different Merkle roots)"


def measure(
    dbs: Mapping[str, Database], writes: Mapping[str, int], daemons: Mapping[str, str]
) -> list[RegionRow]:
    """A row per region of ``dbs``; ``writes`` and ``daemons`` say what the demo knows."""
    now_ms = int(time.time() * 1000)
    held = {name: {o: p[1] for o, p in db.progress().items()} for name, db in dbs.items()}
    own = {name: held[name].get(name, 0) for name in dbs}
    rows = []
    for name, db in dbs.items():
        others = [o for o in dbs if o != name]
        frontier = db.frontier()
        rows.append(
            RegionRow(
                region=name,
                daemon=daemons.get(name, "?"),
                writes=writes.get(name, 0),
                docs=sum(len(db.list(c)) for c in db.collections()),
                records_in=sum(held[name].get(o, 0) for o in others),
                records_out=sum(held[o].get(name, 0) for o in others),
                behind=sum(max(0, own[o] - held[name].get(o, 0)) for o in others),
                lag_s=_lag(dbs, held[name], own, others, now_ms),
                frontier_age_s=None
                if frontier == Hlc(0)
                else max(0, now_ms - frontier.wall_ms) / 1000,
                root=db.merkle_root().hex()[:8],
            )
        )
    return rows


def _lag(
    dbs: Mapping[str, Database],
    holds: dict[str, int],
    own: dict[str, int],
    others: list[str],
    now_ms: int,
) -> float:
    """Age of the oldest record of ``others`` missing from ``holds`` (0: none is missing).

    Each missing record is read from its origin's own store (the demo holds every one open).
    """
    oldest = now_ms
    for origin in others:
        after = holds.get(origin, 0)
        if own[origin] > after:
            first = dbs[origin].records_from(origin, after, 1)
            if first:
                oldest = min(oldest, first[0].hlc.wall_ms)
    return max(0, now_ms - oldest) / 1000


# ------------------------------------------------------------------ displays


class Display(Protocol):
    """Where the demo's rows and events go."""

    def event(self, elapsed: float, message: str) -> None: ...
    def update(
        self, elapsed: float, phase: str, rows: list[RegionRow], force: bool = False
    ) -> None: ...
    def close(self) -> None: ...


class PlainLines:
    """Rows printed every :data:`PLAIN_EVERY` seconds, events as they come: for logs and CI."""

    def __init__(self) -> None:
        self._last = -PLAIN_EVERY

    def event(self, elapsed: float, message: str) -> None:
        print(f"[{elapsed:5.1f}s] {message}", flush=True)

    def update(
        self, elapsed: float, phase: str, rows: list[RegionRow], force: bool = False
    ) -> None:
        if not force and elapsed - self._last < PLAIN_EVERY:
            return
        self._last = elapsed
        for row in rows:
            region, daemon, writes, docs, rin, rout, behind, lag, frontier, root = row.cells()
            print(
                f"[{elapsed:5.1f}s] {region:<3} {daemon:<10} writes {writes:>4}  docs {docs:>4}"
                f"  in {rin:>5}  out {rout:>5}  behind {behind:>4}  lag {lag:>5}"
                f"  frontier {frontier:>9}  merkle {root}"
            )
        print(f"[{elapsed:5.1f}s] {phase}; {agreement(rows)}", flush=True)

    def close(self) -> None:
        sys.stdout.flush()


class LiveTable:
    """A rich table redrawn in place on the terminal; events are printed above it."""

    def __init__(self, title: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self._title = title
        self._console = Console()
        self._live: Live = Live(console=self._console, auto_refresh=False, transient=False)
        self._live.start()

    def event(self, elapsed: float, message: str) -> None:
        self._live.console.print(f"[dim][{elapsed:5.1f}s][/dim] {message}", highlight=False)

    def update(
        self, elapsed: float, phase: str, rows: list[RegionRow], force: bool = False
    ) -> None:
        self._live.update(self._table(elapsed, phase, rows), refresh=True)

    def _table(self, elapsed: float, phase: str, rows: list[RegionRow]) -> Table:
        from rich import box
        from rich.table import Table

        agree = agreement(rows)
        colour = "green" if agree.startswith("regions agree: yes") else "yellow"
        table = Table(
            title=f"{self._title}  [dim]{elapsed:5.1f}s[/dim]",
            caption=f"{phase}  [{colour}]{agree}[/{colour}]",
            title_justify="left",
            caption_justify="left",
            box=box.SIMPLE_HEAD,  # no column rules: fits 80 columns
            pad_edge=False,
            collapse_padding=True,
        )
        for header in HEADERS:
            numeric = header not in ("region", "daemon", "merkle")
            table.add_column(header, justify="right" if numeric else "left")
        for row in rows:
            style = "red" if row.daemon.startswith(("CUT", "exited")) else None
            table.add_row(*row.cells(), style=style)
        return table

    def close(self) -> None:
        self._live.stop()


def open_display(title: str, *, live: bool | None = None) -> Display:
    """A :class:`LiveTable` if stdout is a terminal (or ``live``), else :class:`PlainLines`."""
    if live is None:
        live = sys.stdout.isatty()
    return LiveTable(title) if live else PlainLines()
