"""One region's replication: a listener, a dialer per peer, and the log watcher.

:class:`Replicator` runs inside an asyncio loop with a ``crdtdb.Database``.
The daemon (``crdtdb serve``) is a thin wrapper around it; an application
may run it in its own process too.

- Of two peers, the one whose region name sorts first dials; the other only
  listens, so each pair has one QUIC connection. Dialing retries with
  exponential backoff and full jitter between ``reconnect_min`` and
  ``reconnect_max`` seconds.
- Any growth of the log (a commit of this process, of another process on the
  same directory, or records received from a peer) wakes every session,
  which sends the peer what it lacks: that is both the delta push and the
  relay to regions further down a chain. How growth is noticed cheaply (an
  idle daemon must not keep querying SQLite) is :mod:`crdtdb.follow`'s business.
- Sessions write nothing themselves: the records, repairs and frontier
  reports they receive come out as intents, which one writer thread
  (:class:`~.writer.StoreWriter`) performs in batches, taking whatever queued
  while the last batch ran; the outcomes (what to acknowledge, what was
  repaired) go back to the sessions on the event loop. The same thread does
  the heartbeats.
- Its background upkeep of the store runs beside the sessions, owned by a
  :class:`~.housekeeping.Housekeeping`: Merkle digests refreshed in the
  background, WAL checkpoints from a worker thread (``wal_autocheckpoint=0``,
  the daemon's), full garbage collections when the log is quiet (in the
  daemon, ``manage_gc=True``), and the heartbeats (see :mod:`.housekeeping`).
- Status (per peer: connected, last contact, bytes, rounds, repairs, lag) is
  written atomically to ``DATA_DIR/sync-status.json`` every second for
  ``crdtdb status``; "last contact" is when the peer was last heard from,
  heartbeats included. What happens is also reported, as it happens, to an
  :class:`~.observe.Observer` (the daemon's metrics).
- What an operator must act on is logged once, at WARNING, where it is seen:
  a dial the peer's TLS refused says why (say, its certificate is for another
  region than the config names), repeated only when the reason changes or
  once a minute; a peer that should dial us and has not for a while is named,
  with what to check, instead of being waited for silently.
- A store write that fails (the heartbeat, every ``heartbeat_interval``) is
  logged and kept in :meth:`Replicator.store_health` for ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from crdtdb import follow
from crdtdb.database import Database
from crdtdb.errors import CrdtdbError, StoreError
from crdtdb.follow import LogWatcher

from . import wire
from .certs import sign_challenge, verify_peer
from .chores import MembershipChores
from .clockkeeper import ClockKeeper
from .cluster import Admission, ClusterView, check_seed_region, fingerprint
from .config import RegionConfig
from .housekeeping import CHECKPOINT_INTERVAL as CHECKPOINT_INTERVAL
from .housekeeping import DIGEST_CHUNK as DIGEST_CHUNK
from .housekeeping import DIGEST_CHUNK_BUSY as DIGEST_CHUNK_BUSY
from .housekeeping import DIGEST_PAUSE as DIGEST_PAUSE
from .housekeeping import DIGEST_QUIET as DIGEST_QUIET
from .housekeeping import GC_LONGEST as GC_LONGEST
from .housekeeping import GC_QUIET as GC_QUIET
from .housekeeping import STORE_STALL as STORE_STALL
from .housekeeping import Housekeeping
from .logs import Repeats
from .observe import Observer
from .preflight import bind_error
from .provenance import Provenance
from .report import PeerStatus, wall_time
from .reporting import Reporting
from .session import (
    AntiEntropyDone,
    Closed,
    Established,
    Event,
    RecordsReceived,
    SessionOptions,
    SyncSession,
)
from .signing import Signer
from .snapshot import SnapshotSender
from .status import STATUS_FILE
from .store import ApplyRecords, Intent, NoteFrontier, Outcome
from .transport import HandshakeRefused, SessionProtocol, dial, listen
from .writer import StoreWriter

__all__ = ["STATUS_FILE", "PeerStatus", "Replicator"]

log = logging.getLogger("crdtdb.sync")
NOT_DIALED_AFTER = 5.0
"""Seconds (at least; else twice ``reconnect_max``) that a peer which dials us may stay
away before we say so: it may not list us as its peer, and would never dial."""


class Replicator(MembershipChores, Reporting):
    """Keeps one region's store in sync with its peers until stopped."""

    def __init__(
        self,
        db: Database,
        config: RegionConfig,
        *,
        manage_gc: bool = False,
        observer: Observer | None = None,
    ) -> None:
        """``manage_gc``: this process is ours (the daemon), so schedule Python's full
        garbage collections (see :meth:`.Housekeeping.collect_garbage_loop`); leave it False when
        running inside an application. ``observer`` hears what happens (metrics)."""
        self.db = db
        self.observer = observer or Observer()
        self._timing = type(self.observer) is not Observer  # record lags cost a little
        self._counted: dict[SessionProtocol, tuple[int, int, int]] = {}
        self._unflushed: dict[SessionProtocol, None] = {}
        self._sealed_own = 0
        """This region's records sealed, through this seq (at least)."""
        """Sessions handed a write's outcome since the last flush (in order)."""
        """Per session, the (bytes in, bytes out, records out) reported to the observer."""
        self._dial_repeats = Repeats()
        self._catching_up: set[str] = set()
        self._own_seq = 0
        self.manage_gc = manage_gc
        self.config = config
        self.region = db.region
        self.options = SessionOptions(
            anti_entropy_interval=config.anti_entropy_interval,
            gossip_interval=config.heartbeat_interval,
            silence_timeout=max(3.0, 5 * config.heartbeat_interval),
        )
        self.peers: dict[str, PeerStatus] = {
            p.region: PeerStatus(p.region, f"{p.host}:{p.port}") for p in config.peers
        }
        self.protocols: set[SessionProtocol] = set()
        self._ca = config.tls.ca.read_bytes()
        self._cert = config.tls.cert.read_bytes()
        self._key = config.tls.key.read_bytes()
        self.port: int | None = None
        self._last_progress_log = 0.0
        self.watcher: LogWatcher | None = None
        self.provenance = Provenance(db, self._ca, Signer(self.region, self._cert, self._key))
        self.writer: StoreWriter[SessionProtocol] = StoreWriter(
            db, self._performed, verifier=self.provenance, batch_done=self._flush
        )
        self.clock = ClockKeeper(db, config, self.writer, self.observer)
        self.housekeeping = Housekeeping(db, config, self.writer, self.clock)
        self.cluster = ClusterView(db, config, fingerprint(self._cert))
        self.snapshots = SnapshotSender(db.path, self.region, self.provenance, self.writer)
        self._dialers: dict[str, tuple[tuple[str, int], asyncio.Task[None]]] = {}
        """Per peer we dial (or wait for): its address and the task doing it."""

    # ------------------------------------------------------------ sessions

    def _prove(self, server_nonce: bytes, client_nonce: bytes, server_region: str) -> wire.Auth:
        signature = sign_challenge(
            self._key,
            server_nonce=server_nonce,
            client_nonce=client_nonce,
            client_region=self.region,
            server_region=server_region,
        )
        return wire.Auth(self.region, self._cert, signature)

    def _authenticate(self, auth: wire.Auth, server_nonce: bytes, client_nonce: bytes) -> None:
        verify_peer(
            self._ca,
            auth.certificate,
            auth.signature,
            claimed_region=auth.region,
            server_nonce=server_nonce,
            client_nonce=client_nonce,
            server_region=self.region,
        )
        self._admitted(self.cluster.admit(auth.region, auth.certificate))

    def _session(self, dialer: bool, expected: str | None = None) -> SyncSession:
        def prove(server_nonce: bytes, client_nonce: bytes, server_region: str) -> wire.Auth:
            # TLS proved the server's certificate (for the name we expected, if any); the
            # membership decides whether we talk.
            certificate = session.peer_certificate
            if expected is None:  # a seed: whoever it is, its certificate must say so
                check_seed_region(certificate, server_region)
            self._admitted(self.cluster.admit(server_region, certificate, dialing=True))
            return self._prove(server_nonce, client_nonce, server_region)

        session = SyncSession(
            self.db,
            dialer=dialer,
            now=asyncio.get_running_loop().time(),
            expected_peer=expected,
            prove=prove,
            authenticate=self._authenticate,
            options=self.options,
            sealed=self.provenance,
            neighbourhood=self,
        )
        return session

    def linked(self) -> tuple[str, ...]:
        """The regions we have an established session with now (:mod:`.relay`)."""
        return tuple(sorted({s.peer for s in self._open_sessions() if s.peer}))

    def receiving(self) -> bool:
        """Whether a session has part of a message in hand or records to apply."""
        return any(s.receiving for s in self._open_sessions())

    def _open_sessions(self) -> list[SyncSession]:
        return [p.session for p in self.protocols if p.session and p.session.established]

    def _on_event(self, protocol: SessionProtocol, event: Event) -> None:
        session = protocol.session
        assert session is not None
        if isinstance(event, wire.SnapshotPull):  # a joining region wants our store
            self.snapshots.pull(protocol, event)
            return
        if isinstance(event, Intent):
            if isinstance(event, NoteFrontier) and session.peer:  # only once established
                self.clock.note_frontier(session.peer, event.entries)
            self.writer.submit(protocol, event)
            return
        # Until the handshake is done the region name is only a claim: it must not
        # touch the real peer's status (or create one) nor be logged as if true.
        trusted = protocol in self.protocols or isinstance(event, Established)
        name = session.peer if trusted and session.peer else None
        who = (
            f"{name} at {protocol.remote}"
            if name
            else (
                f"{protocol.remote} (claims {session.peer!r})" if session.peer else protocol.remote
            )
        )
        status = self.peers.setdefault(name, PeerStatus(name)) if name else None
        if status is not None:
            status.last_contact = wall_time(session.last_heard)
            status.bytes_in, status.bytes_out = session.bytes_in, session.bytes_out
        if isinstance(event, Established):
            assert status is not None
            self._established(protocol, status, who)
        elif isinstance(event, RecordsReceived) and status is not None:
            status.records_in += event.received
            self.observer.records_received(event.peer, event.received, event.applied)
            self._log_progress(session, event.peer)
        elif isinstance(event, AntiEntropyDone) and status is not None:
            self._round_done(event, status, who)
        elif isinstance(event, Closed):
            self._closed(protocol, event, status, who)

    def _established(self, protocol: SessionProtocol, status: PeerStatus, who: str) -> None:
        peer = status.region
        self._replace_protocol(protocol, peer)
        status.connected = True
        status.last_error = None
        self._account(protocol)
        self.observer.peer_up(peer, True)
        self._dial_repeats.clear(peer)
        unlisted = "" if any(p.region == peer for p in self.config.peers) else " (not in our peers)"
        log.info(
            "%s: connected to %s%s",
            self.region,
            who,
            unlisted,
            extra={"event": "peer_connected", "peer": peer},
        )
        self._tell_links(protocol)

    def _tell_links(self, changed: SessionProtocol) -> None:
        """Our links changed: tell the other peers at once (their relay rule reads them)."""
        now = asyncio.get_running_loop().time()
        for other in list(self.protocols):
            if other is not changed and other.session is not None:
                other.session.links_changed(now)
                other.flush()

    def _round_done(self, event: AntiEntropyDone, status: PeerStatus, who: str) -> None:
        if event.repaired_docs == 0 and event.by_records == 0:
            # Nothing to repair: a joining region (this one, or the peer) holds a complete copy.
            for region in (self.region, event.peer):
                if self.cluster.state(region) == "joining":
                    self._admitted(Admission(region, "active"))
        status.rounds += 1
        status.repairs += event.repaired_docs
        self.observer.round_done(event.peer, event.repaired_docs)
        log.log(
            logging.INFO if event.repaired_docs else logging.DEBUG,  # a clean round is routine
            "%s: anti-entropy with %s repaired %d documents (%d messages)",
            self.region,
            who,
            event.repaired_docs,
            event.messages,
            extra={"event": "repair_round", "peer": event.peer, "repaired": event.repaired_docs},
        )

    def _closed(
        self, protocol: SessionProtocol, event: Closed, status: PeerStatus | None, who: str
    ) -> None:
        session = protocol.session
        assert session is not None
        trusted = protocol in self.protocols
        if trusted:
            self._account(protocol)
            self.protocols.discard(protocol)
            self._tell_links(protocol)
            if status is not None:
                status.peer_holds = session.peer_holds()
                status.connected = any(
                    p.session and p.session.peer == status.region for p in self.protocols
                )
                status.last_error = event.reason if event.error is not None else None
                self.observer.peer_up(status.region, status.connected)
        self._counted.pop(protocol, None)
        if trusted and status is not None:
            self.clock.note_closed(status.region, event.reason)
        own = isinstance(event.error, StoreError)  # our store failed: the peer did nothing wrong
        if isinstance(event.error, StoreError):
            self.housekeeping.store_failed(event.reason, sync=True)  # logs once an episode
            self.observer.store_write_failed(event.error.code)
        elif event.error is not None:
            self.observer.refused(event.error.code)
        kind = "peer_refused" if event.error is not None else "peer_lost" if trusted else None
        level = logging.INFO if event.error is None and trusted else logging.WARNING
        level = logging.DEBUG if own else level
        log.log(
            level,
            "%s: session with %s closed: %s",
            self.region,
            who,
            event.reason,
            extra={
                "event": kind or "handshake_failed",
                "peer": status.region if status else None,
            },
        )

    def _performed(self, protocol: SessionProtocol, intent: Intent, outcome: Outcome) -> None:
        """Hand a write's outcome back to its session (on the loop); :meth:`_flush` sends
        what follows once the batch's outcomes are all handed back."""
        session = protocol.session
        if session is None or session.state == "closed":
            return
        if self._timing and isinstance(intent, ApplyRecords) and outcome.error is None:
            now_ms = time.time() * 1000
            lags = [(now_ms - record.hlc.wall_ms) / 1000 for record in intent.records]
            self.observer.record_lags(session.peer or "?", lags)
        if outcome.error is None and isinstance(intent, ApplyRecords):
            self.housekeeping.store_ok(sync=True)
        session.performed(intent, outcome, asyncio.get_running_loop().time())
        self._unflushed[protocol] = None

    def _flush(self, protocols: list[SessionProtocol]) -> None:
        """After a batch of writes: send what their outcomes made each session say (its
        Acks of every message applied) in one go, not a datagram per outcome."""
        unflushed, self._unflushed = self._unflushed, {}
        for protocol in unflushed:
            protocol.flush()

    def _replace_protocol(self, protocol: SessionProtocol, peer: str) -> None:
        """Keep one established session per peer: a newer one replaces an older one."""
        for old in [p for p in self.protocols if p.session and p.session.peer == peer]:
            self.protocols.discard(old)
            if old.session is not None:
                old.session.close("replaced by a newer connection")
                old.flush()
        self.protocols.add(protocol)

    # --------------------------------------------------------------- tasks

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; then close every connection."""
        try:
            server = await listen(
                self.config.host,
                self.config.port,
                self.config.tls,
                lambda dialer: self._session(dialer),
                self._on_event,
            )
        except OSError as exc:  # the port is taken, say: one line, not a traceback
            raise bind_error("listen for peers", self.config.host, self.config.port, exc) from None
        self.port = server._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        log.info(
            "%s: listening on %s:%s",
            self.region,
            self.config.host,
            self.port,
            extra={"event": "listening"},
        )
        self.housekeeping.store_ok_at = time.monotonic()
        self.snapshots.clean()
        self.cluster.start(self.port)  # before counting commits: its own are not news
        await self.provenance.started(self.writer.call)
        self._own_seq = self._commits()
        for peer in self.config.peers:
            self.observer.peer_up(peer.region, False)
        self._reconcile_peers()
        self.db.expect_regions([peer.region for peer in self.config.peers])
        tasks = [asyncio.create_task(self.writer.run())]
        tasks += [asyncio.create_task(self._seed_loop(*seed)) for seed in self.config.seeds]
        tasks.append(asyncio.create_task(self._watch_log()))
        tasks.append(asyncio.create_task(self.housekeeping.refresh_digests_loop()))
        tasks.append(asyncio.create_task(self.housekeeping.heartbeat_loop()))
        if self.manage_gc:
            tasks.append(asyncio.create_task(self.housekeeping.collect_garbage_loop()))
        if self.db.options.wal_autocheckpoint == 0:
            tasks.append(asyncio.create_task(self.housekeeping.checkpoint_loop()))
        tasks.append(asyncio.create_task(self._write_status_loop()))
        try:
            await stop.wait()
        finally:
            for protocol in list(self.protocols):
                if protocol.session is not None:
                    protocol.session.close("shutting down")
                    protocol.flush()
            tasks += [task for _, task in self._dialers.values()]
            await self.snapshots.close()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.writer.close()
            server.close()
            self._write_status()

    async def _dial_loop(self, peer: str, host: str, port: int) -> None:
        delay = self.config.reconnect_min
        while True:
            started = time.monotonic()
            try:
                await dial(
                    host,
                    port,
                    peer,
                    self.config.tls,
                    lambda dialer: self._session(dialer, peer),
                    self._on_event,
                )
            except (OSError, TimeoutError, ConnectionError, CrdtdbError) as exc:
                if isinstance(exc, TimeoutError) and not str(exc):
                    exc = TimeoutError("no QUIC handshake within 10 s")
                if isinstance(exc, HandshakeRefused):
                    self.observer.refused("tls_handshake")
                self._dial_failed(peer, f"{host}:{port}", exc)
            if time.monotonic() - started > 5 * self.config.reconnect_min:
                delay = self.config.reconnect_min  # it was up for a while: start over
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(self.config.reconnect_max, delay * 2)

    def _dial_failed(self, peer: str, address: str, exc: BaseException) -> None:
        """Say why a dial failed: at WARNING when the reason is new, then once a minute."""
        reason = str(exc) or type(exc).__name__
        self.peers[peer].last_error = f"{type(exc).__name__}: {reason}"
        repeats = self._dial_repeats.due(peer, reason, time.monotonic())
        extra = {"event": "dial_failed", "peer": peer}
        if repeats is None:
            log.debug("%s: cannot reach %s at %s: %s", self.region, peer, address, reason)
            return
        again = f" ({repeats} more failed attempts since the last line)" if repeats else ""
        log.warning(
            "%s: cannot reach %s at %s: %s%s",
            self.region,
            peer,
            address,
            reason,
            again,
            extra=extra,
        )

    async def _await_dial_loop(self, peer: str) -> None:
        """A peer whose name sorts first dials us: if it has not for a while, say so.

        A peer that does not list this region never dials, and both sides would
        otherwise wait in silence; the warning names what to check.
        """
        loop = asyncio.get_running_loop()
        patience = max(NOT_DIALED_AFTER, 2 * self.config.reconnect_max)
        status = self.peers[peer]
        since, warned = loop.time(), False
        while True:
            await asyncio.sleep(min(1.0, patience / 4))
            if status.connected:
                since, warned = loop.time(), False
                continue
            if warned or loop.time() - since < patience:
                continue
            warned = True
            text = (
                f"{peer} has not connected for {patience:g} s; it dials us (its name sorts"
                f" first): check that it runs, and that its config lists {self.region} as a"
                f" peer at {self.config.host}:{self.port}"
            )
            status.last_error = status.last_error or text
            log.warning("%s: %s", self.region, text, extra={"event": "not_dialed", "peer": peer})

    async def _watch_log(self) -> None:
        """Wake every session when the log grows, whichever process wrote: this one's
        commits (applied records, repairs) through the store's change signal, other
        processes' through the kernel (see :mod:`crdtdb.follow`)."""
        watcher = LogWatcher(
            self.db.log_position,
            follow.open_probe(self.config.data_dir, self.config.poll_interval, self.db.signal),
            self.config.poll_interval,
            follow.CONFIRM_INTERVAL,
        )
        self.watcher = watcher
        try:
            async for _ in watcher.changes():
                self.housekeeping.log_grew(asyncio.get_running_loop().time())
                await self._seal_own()
                for protocol in list(self.protocols):
                    if protocol.session is not None:
                        protocol.session.local_changed()
                        protocol.flush()
        finally:
            watcher.close()

    async def _seal_own(self) -> None:
        """Seal this region's new records (on the writer thread) before sessions send them.

        Skipped when the log grew by other regions' records only (a wake-up for what
        peers sent, on a receiving region: one per batch applied), which needs no
        trip to the writer thread and no look at the chain."""
        try:
            own = self.db.progress().get(self.region, (0, 0, None))[0]
        except CrdtdbError:
            own = None  # cannot tell: seal, which says why it cannot
        if own is not None and own <= max(self._sealed_own, self.provenance.sealed_through):
            return  # sealed already, here or by another path (start, a session's send)
        try:
            await self.writer.call(self.provenance.seal_own)
        except CrdtdbError as exc:
            log.warning("%s: cannot seal new records yet: %s", self.region, exc)
            return
        if own is not None:
            self._sealed_own = own  # committed before the seal began: sealed by it

    async def _heartbeat_loop(self) -> None:
        """The heartbeats (see :meth:`.Housekeeping.heartbeat_loop`)."""
        await self.housekeeping.heartbeat_loop()

    def store_health(self) -> str | None:
        """None while the store takes writes; else why not (any thread may ask)."""
        return self.housekeeping.store_health()

    @property
    def store_ok_at(self) -> float:
        """When (monotonic) a store write last succeeded."""
        return self.housekeeping.store_ok_at

    @property
    def store_problem(self) -> str | None:
        """Why the last store write failed (None: it did not)."""
        return self.housekeeping.store_problem

    @property
    def full_collections(self) -> int:
        """Full garbage collections run by the housekeeping (``manage_gc``)."""
        return self.housekeeping.full_collections

    @property
    def checkpoints(self) -> int:
        """WAL checkpoints that copied pages, run by the housekeeping."""
        return self.housekeeping.checkpoints

    async def _write_status_loop(self) -> None:
        while True:
            try:
                self.cluster.retry_start()
                self.cluster.refresh()
                self._reconcile_peers()
            except CrdtdbError as exc:
                log.warning("%s: cannot read the membership: %s", self.region, exc)
            self._write_status()
            self._observe()
            await asyncio.sleep(1.0)
