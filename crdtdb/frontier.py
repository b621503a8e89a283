"""Frontier facet: what this region holds of every origin, and the frontiers built on it.

``origins`` holds per origin the highest sequence number held, the highest
*contiguous* one with its HLC, and ``complete_hlc`` learned from peers'
reports. From these: ``C`` of this region (it holds every update with an HLC
at or below it), gossiped as ``frontiers`` rows, and the global frontier ``F``
(the least ``C`` of every region), below which every region answers
``as_of`` alike and compaction may fold.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from .engine import Engine, check_count
from .errors import CrdtdbError, InvalidHlcError, UsageError, shown
from .hlc import Hlc, tick
from .ids import validate_region
from .records import MAX_SQLITE_INT, UpdateRecord

__all__ = ["Frontier", "frontier_clocks", "frontier_entries"]


def _checked_report(
    entries: list[tuple[str, int, int]], clocks: list[tuple[str, int]]
) -> tuple[list[tuple[str, int, int]], list[tuple[str, int]]]:
    """A frontier report as :meth:`Frontier.note` takes it, every field checked."""
    try:
        checked: list[tuple[str, int, int]] = [
            (validate_region(origin), check_count(seq, "seq"), _stored_hlc(hlc))
            for origin, seq, hlc in entries
        ]
        return checked, [(validate_region(other), _stored_hlc(hlc)) for other, hlc in clocks]
    except (TypeError, ValueError) as exc:  # not lists of tuples of the right size
        if isinstance(exc, CrdtdbError):
            raise
        raise UsageError(
            "a frontier report is entries [(origin, seq, hlc)] and clocks [(region, hlc)]"
        ) from None


def _stored_hlc(value: int) -> int:
    hlc = Hlc(value)
    if hlc > MAX_SQLITE_INT:
        raise InvalidHlcError(f"a frontier HLC is at most 2**63-1, not {hlc}")
    return int(hlc)


class Frontier:
    """This region's clock, the origins it holds, and the frontiers."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def heartbeat(self) -> Hlc:
        """Advance this region's clock to now with no record: an idle region's frontier moves."""
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("heartbeat()")
            hlc: Hlc = engine.write(self._heartbeat_locked)
            return hlc

    def _heartbeat_locked(self) -> tuple[Hlc, list[UpdateRecord]]:
        engine = self._engine
        last, seq = engine.read_counters()
        hlc = tick(last, engine.options.clock())
        engine.set_last_hlc(hlc)
        engine.counters = (hlc, seq)
        return hlc, []

    def entries(self) -> list[tuple[str, int, Hlc]]:
        """Per origin: (origin, contiguous seq held, HLC through which all its records are held).

        For this region itself that is (region, its last seq, its clock): every
        record it makes later will have a higher HLC.
        """
        engine = self._engine
        with engine.lock:
            engine.check()
            return frontier_entries(engine.conn, engine.region, engine.last_hlc)

    def local(self) -> Hlc:
        """``C`` of this region: it holds every update (of any origin) with HLC at or below it."""
        return min(hlc for _, _, hlc in self.entries())

    def note(self, entries: list[tuple[str, int, int]], clocks: list[tuple[str, int]]) -> None:
        """Take a peer's frontier report: per origin (seq, hlc), and C of other regions.

        (origin, s, h) means: the peer holds that origin's records 1..s, and the
        origin made none after s with an HLC at or below h. Once we hold 1..s
        too, we hold everything of that origin up to h.
        """
        entries, clocks = _checked_report(entries, clocks)
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("note_frontier()")
            engine.write(lambda: self._note_locked(entries, clocks))

    def _note_locked(
        self, entries: list[tuple[str, int, int]], clocks: list[tuple[str, int]]
    ) -> tuple[None, list[UpdateRecord]]:
        conn, region = self._engine.conn, self._engine.region
        for origin, seq, hlc in entries:
            if origin == region:
                continue
            validate_region(origin)
            conn.execute(
                "INSERT INTO origins (origin, max_seq, contiguous_seq, contiguous_hlc)"
                " VALUES (?, 0, 0, 0) ON CONFLICT (origin) DO NOTHING",
                (origin,),
            )
            conn.execute(
                "UPDATE origins SET complete_hlc = max(complete_hlc, ?)"
                " WHERE origin = ? AND contiguous_seq >= ?",
                (int(hlc), origin, seq),
            )
        for other, hlc in clocks:
            if other != region:
                conn.execute(
                    "INSERT INTO frontiers (region, hlc) VALUES (?1, ?2) ON CONFLICT (region)"
                    " DO UPDATE SET hlc = max(hlc, ?2)",
                    (other, int(hlc)),
                )
        return None, []

    def clocks(self) -> list[tuple[str, Hlc]]:
        """C per region known here (this one computed now), for gossip."""
        engine = self._engine
        with engine.lock:
            engine.check()
            return frontier_clocks(engine.conn, engine.region, engine.last_hlc)

    def global_frontier(self) -> Hlc:
        """The global frontier F: every region holds every update with an HLC at or below it."""
        return min(hlc for _, hlc in self.clocks())

    def expect_regions(self, regions: list[str]) -> None:
        """Name regions that must report before the frontier can move (e.g. configured peers)."""
        engine = self._engine
        with engine.lock:
            engine.check_no_tx("expect_regions()")
            if isinstance(regions, str):
                raise UsageError(f"expect_regions() takes a list of regions, not {shown(regions)}")
            rows = [(validate_region(r),) for r in regions if r != engine.region]
            engine.write(
                lambda: (
                    engine.conn.executemany(
                        "INSERT INTO frontiers (region, hlc) VALUES (?, 0)"
                        " ON CONFLICT (region) DO NOTHING",
                        rows,
                    ),
                    [],
                )
            )

    def progress(self) -> dict[str, tuple[int, int, Hlc]]:
        """Per origin held here: (max seq, highest contiguous seq, that record's HLC)."""
        engine = self._engine
        with engine.lock:
            engine.check()
            rows = engine.conn.execute(
                "SELECT origin, max_seq, contiguous_seq, contiguous_hlc FROM origins"
            ).fetchall()
        return {row[0]: (row[1], row[2], Hlc(row[3])) for row in rows}

    # ------------------------------------------------------------ the write path

    def record_local(self, seq: int, hlc: Hlc) -> None:
        """A local commit made this region's records through ``seq`` at ``hlc`` (in its
        write transaction: they are contiguous by construction)."""
        self._engine.conn.execute(
            "INSERT INTO origins (origin, max_seq, contiguous_seq, contiguous_hlc)"
            " VALUES (?1, ?2, ?2, ?3) ON CONFLICT (origin) DO UPDATE SET max_seq = ?2,"
            " contiguous_seq = ?2, contiguous_hlc = ?3",
            (self._engine.region, seq, int(hlc)),
        )

    def advance(self, records: list[UpdateRecord]) -> None:
        """Move each origin's max seq, and its contiguous seq over any gap now filled
        (in the write transaction that logged ``records``)."""
        conn = self._engine.conn
        by_origin: dict[str, list[tuple[int, int]]] = {}
        for record in records:
            by_origin.setdefault(record.origin, []).append((record.seq, int(record.hlc)))
        for origin, batch in by_origin.items():
            row = conn.execute(
                "SELECT max_seq, contiguous_seq, contiguous_hlc FROM origins WHERE origin = ?",
                (origin,),
            ).fetchone()
            max_seq, contiguous, contiguous_hlc = row if row else (0, 0, 0)
            if max_seq <= contiguous:  # no gap before: past it, the log holds just this batch
                after: Iterable[tuple[int, int]] = sorted(batch)
            else:
                after = conn.execute(
                    "SELECT seq, hlc FROM log WHERE origin = ? AND seq > ? ORDER BY seq",
                    (origin, contiguous),
                )
            for seq, hlc in after:
                if seq != contiguous + 1:
                    break
                contiguous, contiguous_hlc = seq, hlc
            conn.execute(
                "INSERT INTO origins (origin, max_seq, contiguous_seq, contiguous_hlc)"
                " VALUES (?1, ?2, ?3, ?4) ON CONFLICT (origin) DO UPDATE SET max_seq = ?2,"
                " contiguous_seq = ?3, contiguous_hlc = ?4",
                (origin, max(max_seq, *(seq for seq, _ in batch)), contiguous, contiguous_hlc),
            )


def frontier_entries(
    conn: sqlite3.Connection, region: str, floor: int = 0
) -> list[tuple[str, int, Hlc]]:
    """:meth:`Database.frontier_entries` read through ``conn`` (``floor``: a clock known
    to this process that the store may not hold yet)."""
    rows = conn.execute(
        "SELECT origin, contiguous_seq, max(contiguous_hlc, complete_hlc) FROM origins"
        " WHERE origin != ?",
        (region,),
    ).fetchall()
    # regions we know of but hold nothing from: complete through 0 until they report
    silent = conn.execute(
        "SELECT region, 0, 0 FROM frontiers WHERE region != ?"
        " AND region NOT IN (SELECT origin FROM origins)",
        (region,),
    ).fetchall()
    own = conn.execute("SELECT max_seq FROM origins WHERE origin = ?", (region,)).fetchone()
    stored = conn.execute("SELECT value FROM meta WHERE key = 'last_hlc'").fetchone()
    clock = Hlc(max(floor, int(stored[0] or 0)))
    entries = [(row[0], row[1], Hlc(row[2])) for row in rows + silent]
    return [*entries, (region, own[0] if own else 0, clock)]


def frontier_clocks(conn: sqlite3.Connection, region: str, floor: int = 0) -> list[tuple[str, Hlc]]:
    """:meth:`Database.frontier_clocks` read through ``conn``."""
    own = min(hlc for _, _, hlc in frontier_entries(conn, region, floor))
    rows = conn.execute("SELECT region, hlc FROM frontiers").fetchall()
    return [*((row[0], Hlc(row[1])) for row in rows), (region, own)]
