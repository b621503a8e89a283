"""The daemon's reports: progress lines, the status file, and the observer's figures.

:class:`Reporting` is a part of :class:`~.node.Replicator` (a mixin, to keep
the node module within its size, like :class:`~.chores.MembershipChores`):
what the replicator tells the outside once a second (``sync-status.json``
for ``crdtdb status``; traffic, commits and gauges for the metrics) and the
lines that follow a catch-up from a peer.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from crdtdb.database import Database
from crdtdb.errors import CrdtdbError
from crdtdb.hlc import Hlc
from crdtdb.storage import wal_path

from .clockkeeper import ClockKeeper
from .cluster import ClusterView
from .config import RegionConfig
from .housekeeping import Housekeeping
from .observe import Observer
from .report import PeerStatus, records_behind, status_report
from .session import SyncSession
from .status import STATUS_FILE
from .transport import SessionProtocol

__all__ = ["Reporting"]

log = logging.getLogger("crdtdb.sync")


class Reporting:
    """Reports of a :class:`~.node.Replicator` (which provides the attributes)."""

    db: Database
    region: str
    config: RegionConfig
    observer: Observer
    peers: dict[str, PeerStatus]
    protocols: set[SessionProtocol]
    port: int | None
    clock: ClockKeeper
    cluster: ClusterView
    housekeeping: Housekeeping
    _catching_up: set[str]
    _last_progress_log: float
    _own_seq: int
    _counted: dict[SessionProtocol, tuple[int, int, int]]

    def _account(self, protocol: SessionProtocol) -> None:
        """Report to the observer the session's traffic since the last report."""
        session = protocol.session
        if session is None or session.peer is None:
            return
        counts = (session.bytes_in, session.bytes_out, session.records_out)
        before = self._counted.get(protocol, (0, 0, 0))
        if counts != before:
            self._counted[protocol] = counts
            bytes_in, bytes_out, records_out = (a - b for a, b in zip(counts, before, strict=True))
            self.observer.traffic(session.peer, bytes_in, bytes_out, records_out)

    def _log_progress(self, session: SyncSession, name: str) -> None:
        """A line every 2 s while a peer has records we lack (a bootstrap, a backlog)."""
        now = time.monotonic()
        if now - self._last_progress_log < 2.0:
            return
        self._last_progress_log = now
        behind = records_behind(self.db, session)
        if behind:
            self._catching_up.add(name)
            # Counted from the store, as the caught-up line is: the session's count of
            # records received can lag what the writer thread already committed.
            reported = sum(session.peer_reports.values())
            log.info(
                "%s: catching up from %s: holds %d of the %d records it reported, %d behind"
                " (%d received from it)",
                self.region,
                name,
                reported - behind,
                reported,
                behind,
                self.peers[name].records_in,
                extra={"event": "bootstrap_progress", "peer": name, "behind": behind},
            )

    def _log_caught_up(self) -> None:
        """The line that ends a catch-up's progress lines."""
        for protocol in list(self.protocols):
            session = protocol.session
            name = session.peer if session is not None else None
            if session is None or name not in self._catching_up or records_behind(self.db, session):
                continue
            self._catching_up.discard(name)
            # What the store holds, not the session's count of records received: the
            # writer thread commits a batch before the loop hears of it, so that count
            # can still lag the store by a few batches here.
            held = sum(session.peer_reports.values())
            log.info(
                "%s: caught up with %s: holds the %d records it reported (%d received from it)",
                self.region,
                name,
                held,
                self.peers[name].records_in,
                extra={"event": "caught_up", "peer": name, "held": held},
            )

    def _commits(self) -> int:
        """This region's commits in its log: its last sequence number."""
        return self.db.progress().get(self.region, (0, 0, Hlc(0)))[1]

    def _observe(self) -> None:
        """Once a second: traffic, commits and gauges to the observer; caught-up lines."""
        try:
            for protocol in list(self.protocols):
                self._account(protocol)
            commits = self._commits()
            if commits > self._own_seq:
                self.observer.commits(commits - self._own_seq)
            self._own_seq = commits
            try:
                wal_bytes = wal_path(self.config.data_dir).stat().st_size
            except OSError:
                wal_bytes = 0
            frontier_age = time.time() - self.db.frontier().wall_ms / 1000
            self.observer.gauges(frontier_age=max(0.0, frontier_age), wal_bytes=wal_bytes)
            evidence = self.db.chains.summary(count_legacy=False)
            self.observer.evidence(evidence["conflicts"], evidence["equivocating_origins"])
            self._log_caught_up()
        except CrdtdbError as exc:
            log.warning("%s: cannot read the store for metrics: %s", self.region, exc)

    def status(self, *, stopped: bool = False) -> dict[str, Any]:
        """What ``crdtdb status`` shows; ``stopped``: the daemon is stopping cleanly."""
        report = status_report(
            self.db,
            self.config,
            self.port,
            self.peers.values(),
            self.protocols,
            stopped=stopped,
            clock=self.clock.report(),
        )
        clocks = {region: int(hlc) for region, hlc in self.db.frontier_clocks()}
        report["members"] = [
            {**member, "frontier_hlc": clocks.get(str(member["region"]))}
            for member in self.cluster.report()
        ]
        return report

    def mark_stopped(self) -> None:
        """Write the status a last time, saying the daemon stopped (``crdtdb status`` then
        says "not running" at once, rather than after the report goes stale)."""
        self._write_status(stopped=True)

    def _write_status(self, *, stopped: bool = False) -> None:
        path = self.config.data_dir / STATUS_FILE
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(self.status(stopped=stopped), indent=2, sort_keys=True))
            temporary.replace(path)
        except (OSError, CrdtdbError) as exc:  # a line as it starts, not one a second
            self.housekeeping.other_write_failed("status", f"cannot write {path}: {exc}")
            return
        self.housekeeping.other_write_ok("status")
