"""Frontier facet: what this region holds of every origin, and the frontiers built on it.

``origins`` holds per origin the highest sequence number held, the highest
*contiguous* one with its HLC, and ``complete_hlc`` learned from peers'
reports. From these: ``C`` of this region (it holds every update with an HLC
at or below it), gossiped as ``frontiers`` rows, and the global frontier ``F``
(the least ``C`` of every region), below which every region answers
``as_of`` alike and compaction may fold.

Which regions count is the cluster's membership (:mod:`crdtdb.membership`),
once the store holds one (a store that never joined a cluster, say two
embedded stores exchanging records by hand, counts every region it has heard
of, as before):

- ``F`` waits for the members that are not removed (``joining``, ``active``,
  ``leaving``), each counted from the moment the membership names it, even
  before it has reported anything (then as 0). A region that was never
  added, or was removed, holds nobody back: neither its own ``C`` (from
  ``frontiers``) nor its records (in ``origins``) count.
- **Removal.** When a region R is removed at HLC t, the region that removes
  it records ``final_seq``: R's records it holds contiguously (1..n). Those
  records are final: the remover holds them, so they reach every remaining
  region, and a region's ``C`` still waits for R until it holds 1..final_seq.
  From then on the frontier no longer includes R's clock: past t it moves
  with the remaining regions alone, so every update of R at or below ``F`` is
  in every remaining region and ``as_of(F)`` answers the same everywhere
  across the removal. (Concurrent removals by several regions take the
  highest ``final_seq``, which one of them holds.) R is refused from the
  moment a region learns of its removal; records R made past ``final_seq``
  and handed to a region that had not learnt of it yet are not lost there
  (they were acknowledged writes): they replicate like any record, but may
  reach a region after its frontier passed their HLC, and then change the
  answer of ``as_of`` for those cuts there; a region that knew of the
  removal refuses those stamped after it (``retired_key``, see
  :mod:`crdtdb.sync.provenance`). Decommission a region once it is stopped
  (or cut off) to leave no such window.
- The own region always counts, whatever its state; so does a region whose
  records we hold but that the membership does not name at all (a member
  whose addition has not reached us yet, whose records came first through
  a relay; or a store that took records before it had a membership: remove
  such a region explicitly once it is gone). A region that only connected
  or reported, and whose records were refused, never counts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from .engine import Engine, check_count
from .errors import CrdtdbError, InvalidHlcError, UsageError, shown
from .hlc import Hlc, tick
from .ids import validate_region
from .membership import Membership, read_conn
from .records import MAX_SQLITE_INT, UpdateRecord
from .storage import STORED_HLC

__all__ = ["Frontier", "frontier_clocks", "frontier_entries", "local_clock"]


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
        """``C`` of this region: it holds every update (of the origins that count, see the
        module docstring) with HLC at or below it."""
        engine = self._engine
        with engine.lock:
            engine.check()
            return local_clock(engine.conn, engine.region, engine.last_hlc)

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
    stored = conn.execute(STORED_HLC).fetchone()
    clock = Hlc(max(floor, int(stored[0])))
    entries = [(row[0], row[1], Hlc(row[2])) for row in rows + silent]
    return [*entries, (region, own[0] if own else 0, clock)]


def local_clock(conn: sqlite3.Connection, region: str, floor: int = 0) -> Hlc:
    """``C`` of this region read through ``conn``: the least complete-through HLC of the
    origins that count (all of them without a membership; see the module docstring)."""
    entries = frontier_entries(conn, region, floor)
    members = read_conn(conn)
    if members is None:
        return min(hlc for _, _, hlc in entries)
    waited, final = _waited(conn, region, members), members.removed()
    counted = [
        hlc
        for origin, seq, hlc in entries
        if origin in waited or (origin in final and seq < final[origin])
    ]
    held = {origin for origin, _, _ in entries}
    counted += [Hlc(0) for origin in waited - held]  # named, not heard from yet
    return min(counted)


def _waited(conn: sqlite3.Connection, region: str, members: Membership) -> set[str]:
    """The regions whose clock counts: members not removed, this one, and any region we
    hold records of that the membership does not name at all (yet: a member we have
    not heard is one, say, or a store from before membership)."""
    held = {row[0] for row in conn.execute("SELECT origin FROM origins WHERE max_seq > 0")}
    return set(members.waited()) | {region} | (held - set(members.members))


def frontier_clocks(conn: sqlite3.Connection, region: str, floor: int = 0) -> list[tuple[str, Hlc]]:
    """:meth:`Database.frontier_clocks` read through ``conn``: ``C`` per region that counts
    (see the module docstring), this one computed now."""
    own = local_clock(conn, region, floor)
    rows = [(row[0], Hlc(row[1])) for row in conn.execute("SELECT region, hlc FROM frontiers")]
    members = read_conn(conn)
    if members is not None:
        waited = _waited(conn, region, members) - {region}
        rows = [(other, hlc) for other, hlc in rows if other in waited]
        rows += [(other, Hlc(0)) for other in sorted(waited - {other for other, _ in rows})]
    return [*rows, (region, own)]
