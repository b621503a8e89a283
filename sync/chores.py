"""The daemon's membership chores: recording admissions, following the members, seeds.

:class:`MembershipChores` is a part of :class:`~.node.Replicator` (a mixin,
to keep the node module within its size): the membership decisions
themselves are :class:`~.cluster.ClusterView`'s; this writes what they say
on the writer thread, keeps one dial (or wait) per member at its newest
address, and dials seeds (see :mod:`.cluster`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Coroutine
from typing import Any

from crdtdb.errors import CrdtdbError

from .clockkeeper import ClockKeeper
from .cluster import Admission, ClusterView
from .config import RegionConfig
from .logs import Repeats
from .report import PeerStatus
from .session import Event, SyncSession
from .transport import SessionProtocol, dial
from .writer import StoreWriter

__all__ = ["MembershipChores"]

log = logging.getLogger("crdtdb.sync")


class MembershipChores:
    """Membership upkeep of a :class:`~.node.Replicator` (which provides the attributes)."""

    region: str
    config: RegionConfig
    cluster: ClusterView
    writer: StoreWriter[SessionProtocol]
    peers: dict[str, PeerStatus]
    protocols: set[SessionProtocol]
    clock: ClockKeeper
    _dial_repeats: Repeats
    _dialers: dict[str, tuple[tuple[str, int], asyncio.Task[None]]]

    def _session(self, dialer: bool, expected: str | None = None) -> SyncSession:
        raise NotImplementedError

    def _on_event(self, protocol: SessionProtocol, event: Event) -> None:
        raise NotImplementedError

    def _dial_loop(self, peer: str, host: str, port: int) -> Coroutine[Any, Any, None]:
        raise NotImplementedError

    def _await_dial_loop(self, peer: str) -> Coroutine[Any, Any, None]:
        raise NotImplementedError

    def _admitted(self, admission: Admission) -> None:
        """Record what admitting a peer changes in the membership, on the writer thread."""
        if admission.state is None:
            return
        task = asyncio.get_running_loop().create_task(
            self.writer.call(self.cluster.record, admission)
        )
        task.add_done_callback(self._membership_written)

    def _membership_written(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: cannot update the membership: %s", self.region, task.exception())

    def _reconcile_peers(self) -> None:
        """Dial (or wait for) every region the membership and config name, at its newest
        address; stop dialling removed ones and close their sessions."""
        targets = self.cluster.dial_targets()
        for peer, (address, task) in list(self._dialers.items()):
            if targets.get(peer) != address:
                task.cancel()
                del self._dialers[peer]
            if peer not in targets and self.cluster.removed(peer):
                self.peers.pop(peer, None)  # the members list says it is removed
        for peer in self.cluster.removed_regions():
            self.clock.forget(peer)  # nor does its clock count for the fence any more
        for peer, address in targets.items():
            if peer in self._dialers:
                continue
            self.peers.setdefault(peer, PeerStatus(peer))
            self.peers[peer].address = f"{address[0]}:{address[1]}"
            loop = (
                self._dial_loop(peer, *address)
                if self.region < peer
                else self._await_dial_loop(peer)
            )
            self._dialers[peer] = (address, asyncio.get_running_loop().create_task(loop))
        for protocol in list(self.protocols):
            session = protocol.session
            if session is not None and session.peer and self.cluster.removed(session.peer):
                session.close(f"{session.peer} was removed from the cluster")
                protocol.flush()
        self._drain_leavers()

    def _drain_leavers(self) -> None:
        """Remove the leaving regions this store holds every record of (see :mod:`.cluster`)."""
        if self.cluster.draining:
            return
        ready = self.cluster.drained()
        if not ready:
            return
        self.cluster.draining = True
        task = asyncio.get_running_loop().create_task(self.writer.call(self.cluster.drain, ready))

        def done(task: asyncio.Task[None]) -> None:
            self.cluster.draining = False
            self._membership_written(task)

        task.add_done_callback(done)

    async def _seed_loop(self, host: str, port: int) -> None:
        """Dial a seed while no session with the region found there is up (see
        :mod:`.cluster`): the way in for a region that joins through it."""
        address, found = f"{host}:{port}", None
        delay = self.config.reconnect_min
        made: list[SyncSession] = []

        def seed_session(dialer: bool) -> SyncSession:
            made.append(self._session(dialer))
            return made[-1]

        while True:
            if found is not None and found in self.peers and self.peers[found].connected:
                await asyncio.sleep(1.0)
                delay = self.config.reconnect_min
                continue
            made.clear()
            try:
                await dial(host, port, "", self.config.tls, seed_session, self._on_event)
            except (OSError, TimeoutError, ConnectionError, CrdtdbError) as exc:
                reason = str(exc) or type(exc).__name__
                if self._dial_repeats.due(address, reason, time.monotonic()) is not None:
                    log.warning(
                        "%s: cannot reach seed %s: %s",
                        self.region,
                        address,
                        reason,
                        extra={"event": "dial_failed", "peer": address},
                    )
            if made and made[-1].peer is not None:
                found = made[-1].peer
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(self.config.reconnect_max, delay * 2)
