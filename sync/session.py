"""The sans-IO replication session between two regions (one per connection).

Bytes in, bytes and events out, time passed in: ``receive(data, now)``,
``data_to_send(now)``, ``next_event()``, ``get_timer()``, ``handle_timer(now)``.
No socket, no clock, no asyncio, and no storage writes: the QUIC glue
(:mod:`.transport`) pumps it, and tests wire two sessions together in memory.

Design rules:

- **Handshake.** Both sides send ``Hello`` (protocol version, region, a fresh
  nonce). The dialing side then proves its identity with ``Auth``: its
  certificate and a signature over both nonces and both region names, which
  binds the proof to this connection (TLS already proved the server to the
  client). The server answers ``AuthOk``. Nothing else is accepted before,
  and nothing of the store is read or written before.
- **Storage outside.** The session reads the store through the protocols of
  :mod:`.store` and writes nothing: what should be stored (records, repairs,
  the peer's frontier reports, fresh digests) it emits as *intents* among its
  events, and whoever pumps it performs them, batched, off the per-message
  path, and hands back each :class:`~.store.Outcome` with :meth:`performed`.
  What waits for one (an ``Ack``, a round) waits; a write the store refuses
  closes the session, as a malformed message does.
- **Records, pulled from the log.** After the handshake each side tells the
  other, per origin region, the highest contiguous sequence number it holds
  (``Frontier``). Each side then sends, per origin, the records above what
  the peer holds, read from its own log in seq order, in batches, at most
  ``window`` batches unacknowledged. There is no per-peer record queue to
  overflow: a slow or absent peer just leaves a cursor behind, and a new
  commit only wakes the pump. Records of every origin are sent, so a chain
  A-B-C converges though A and C never talk; but another origin's records
  are relayed to a peer only when the peer is not linked to that origin
  itself (:mod:`.relay`). Received records are acknowledged once applied,
  which is what paces the peer.
- **Anti-entropy.** The dialing side starts a round on connect and every
  ``anti_entropy_interval``, unless records are still flowing or on their
  way (:mod:`.relay`); the rounds themselves are :mod:`.rounds`' business.
- **Lanes.** Everything goes on the main lane (one QUIC stream) except a
  record or diff of a large document (``SessionOptions.large_bytes`` or more): that goes in
  a message of its own on one of ``BULK_LANES`` bulk lanes (each its own
  stream, chosen by the document id), so a large document is sent beside
  the small ones instead of in front of them. The receiver applies what
  comes in any order (a CRDT does not mind; the store keeps the contiguous
  seq per origin apart from the highest one), and accepts only ``Records``
  and ``Diffs`` on a bulk lane, and only once the handshake is done.
- **Signed records.** With a :class:`~.store.SealedLog` (the daemon's),
  records go as whole sealed runs with their seals, after the certificates
  of the seals' keys (once per session); what comes in is checked by the
  writer before it is applied (:mod:`.provenance`). Without one (in-memory
  tests) records go unsealed and are taken as they come.
- **Blame.** Anything malformed from the peer closes the session with an
  ``Error`` message naming the problem; nothing it sent is applied after
  that. A record the store refuses (bad update bytes, clock skew) is
  reported as an event and also closes the session: the peer cannot be
  trusted to send good data.
"""

from __future__ import annotations

import os
import zlib
from collections import deque
from collections.abc import Callable

from crdtdb.errors import CrdtdbError
from crdtdb.records import UpdateRecord

from . import wire
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import Closed, Established, Event, RecordsReceived
from .packing import Run, pack
from .relay import Deferral, InFlight, Neighbourhood, relays
from .rounds import CHUNK_BYTES, ROUND_MESSAGES, AntiEntropy, AntiEntropyDone
from .session_options import SessionOptions
from .store import (
    ApplyDiffs,
    ApplyRecords,
    Intent,
    NoteCertificates,
    NoteFrontier,
    Outcome,
    RefreshDigests,
    SealedLog,
    SessionStore,
)

__all__ = [
    "BULK_LANES",
    "AntiEntropyDone",
    "Closed",
    "Established",
    "Event",
    "RecordsReceived",
    "SessionOptions",
    "SyncSession",
]

BULK_LANES = 4
"""Bulk lanes (QUIC streams) per direction besides the main one."""
MAX_UNAPPLIED = 64
"""``Records`` messages from the peer waiting to be applied, at most: eight times the
default window (an Ack per origin of a batch can let a sender run a little ahead)."""


Authenticator = Callable[[wire.Auth, bytes, bytes], None]
"""Checks a client's Auth against (server nonce, client nonce); raises to refuse."""
Prover = Callable[[bytes, bytes, str], wire.Auth]
"""Makes our Auth from (server nonce, client nonce, server region)."""


class SyncSession:
    """One connection's replication state machine. Not thread-safe; one driver pumps it."""

    def __init__(
        self,
        store: SessionStore,
        *,
        dialer: bool,
        now: float,
        expected_peer: str | None = None,
        prove: Prover | None = None,
        authenticate: Authenticator | None = None,
        options: SessionOptions | None = None,
        nonce: bytes | None = None,
        sealed: SealedLog | None = None,
        neighbourhood: Neighbourhood | None = None,
    ) -> None:
        self.store = store
        self.neighbourhood = neighbourhood
        self.sealed = sealed
        self._certificates_sent: set[bytes] = set()
        self.dialer = dialer
        self.options = options or SessionOptions()
        self.expected_peer = expected_peer
        self.peer: str | None = None
        self.peer_certificate: bytes | None = None
        """The peer's TLS certificate (DER), when the transport knows it (the dialing side)."""
        self.state = "hello"
        self.bytes_in = 0
        self.bytes_out = 0
        self.records_out = 0
        """Records sent to the peer (each once per send; a resend after a reconnect is
        another session's)."""
        self._prove = prove
        self._authenticate = authenticate
        self._nonce = nonce if nonce is not None else os.urandom(32)
        self._peer_nonce = b""
        self._decoders = {0: wire.FrameDecoder()}
        self._out: list[bytes] = []
        self._lane_out: dict[int, list[bytes]] = {}
        self._events: deque[Event] = deque()
        self._deadline: float | None = now + self.options.handshake_timeout
        self._next_round: float | None = None
        self._next_gossip: float | None = None
        self._last_heard = now
        self._last_records_at = -float("inf")
        self._unapplied = 0  # ApplyRecords emitted, not performed yet
        self.anti_entropy = AntiEntropy(self, store, large_bytes=self.options.large_bytes)
        self._peer_holds: dict[str, int] = {}
        self.peer_reports: dict[str, int] = {}
        self.peer_linked: frozenset[str] | None = None
        """The regions the peer last reported a session with (None: no report yet)."""
        """Per origin, the contiguous seq the peer last reported holding (what we can get)."""
        self._sent_through: dict[str, int] = {}
        self._unacked = 0
        self.in_flight = InFlight()
        self._deferral = Deferral()
        self._pump_needed = False  # until the peer's Frontier says what it holds
        self._send(wire.Hello(wire.PROTOCOL_VERSION, store.region, self._nonce))

    # ------------------------------------------------------------ the pump API

    def receive(self, data: bytes, now: float, lane: int = 0) -> None:
        """Feed bytes from the peer that came on ``lane`` (0: the main lane)."""
        if self.state == "closed":
            return
        self.bytes_in += len(data)
        self._last_heard = now
        try:
            decoder = self._decoder(lane)
            decoder.feed(data)
            while self.state != "closed":
                message = decoder.next_message()
                if message is None:
                    break
                if lane and not isinstance(message, wire.Records | wire.Diffs):
                    raise RemoteProtocolError(
                        f"{type(message).__name__} on a bulk lane, which carries only"
                        " Records and Diffs",
                        code="unexpected_message",
                    )
                self._handle(message, now)
        except ProtocolError as exc:
            self._fail(exc.code, str(exc), exc)
        except CrdtdbError as exc:
            self._fail(exc.code, str(exc), exc)
        self._pump()

    def _decoder(self, lane: int) -> wire.FrameDecoder:
        decoder = self._decoders.get(lane)
        if decoder is not None:
            return decoder
        if not 0 < lane <= BULK_LANES:
            raise RemoteProtocolError(
                f"the peer opened more than {BULK_LANES} bulk lanes (streams)",
                code="too_many_streams",
            )
        if self.state != "open":
            raise RemoteProtocolError(
                "data on a bulk lane before the handshake finished", code="unexpected_message"
            )
        decoder = self._decoders[lane] = wire.FrameDecoder(
            max_message_bytes=wire.MAX_BULK_MESSAGE_BYTES
        )
        return decoder

    def data_to_send(self, now: float) -> bytes:
        """Bytes to write to the peer on the main lane (empty if nothing)."""
        self._pump()
        data = b"".join(self._out)
        self._out.clear()
        self.bytes_out += len(data)
        return data

    def lanes_to_send(self) -> list[tuple[int, bytes]]:
        """Bytes to write on bulk lanes, as (lane 1..BULK_LANES, bytes); after ``data_to_send``."""
        if not self._lane_out:
            return []
        out = [(lane, b"".join(chunks)) for lane, chunks in sorted(self._lane_out.items())]
        self._lane_out.clear()
        self.bytes_out += sum(len(data) for _, data in out)
        return out

    def next_event(self) -> Event | None:
        """The oldest event not taken yet; intents among them are to be performed."""
        return self._events.popleft() if self._events else None

    def performed(self, intent: Intent, outcome: Outcome, now: float) -> None:
        """Take the outcome of an intent this session emitted, once it is performed."""
        if self.state == "closed":
            return
        try:
            if outcome.error is not None:
                raise outcome.error
            if isinstance(intent, ApplyRecords):
                self._records_applied(intent, outcome)
            elif isinstance(intent, ApplyDiffs):
                self.anti_entropy.applied(intent, outcome.applied)
            elif isinstance(intent, RefreshDigests):
                may_start = self.established and not self.catching_up(now)
                self.anti_entropy.refreshed(now, may_start=may_start)
        except ProtocolError as exc:
            self._fail(exc.code, str(exc), exc)
        except CrdtdbError as exc:
            self._fail(exc.code, str(exc), exc)
        self._pump()

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (None: no timer)."""
        silence = self._last_heard + self.options.silence_timeout if self.established else None
        timers = [
            t
            for t in (self._deadline, self._next_round, self._next_gossip, silence)
            if t is not None
        ]
        return min(timers) if timers and self.state != "closed" else None

    def handle_timer(self, now: float) -> None:
        if self.state == "closed":
            return
        if self._deadline is not None and now >= self._deadline:
            self._fail("timeout", "the peer did not complete the handshake in time", None)
            return
        if self.established and now >= self._last_heard + self.options.silence_timeout:
            self._fail(
                "silent", f"nothing from the peer for {self.options.silence_timeout:g} s", None
            )
            return
        if self._next_round is not None and now >= self._next_round:
            self.start_round(now)
        if self._next_gossip is not None and now >= self._next_gossip:
            self._gossip(now)

    def local_changed(self) -> None:
        """The store got new records (local commits or from other peers): send them."""
        self._pump_needed = True
        self._pump()

    def links_changed(self, now: float) -> None:
        """The region's sessions changed: report them at once (:mod:`.relay`)."""
        if self.established:
            self._gossip(now)

    def close(self, reason: str = "closed by us") -> None:
        if self.state != "closed":
            self._send(wire.Error("closing", reason))
            self._closed(reason, None)

    @property
    def established(self) -> bool:
        return self.state == "open"

    @property
    def last_heard(self) -> float:
        """When (``now`` as passed in) bytes last came from the peer: its heartbeats
        count, so on a live session this is at most a gossip interval old."""
        return self._last_heard

    @property
    def rounds(self) -> int:
        """Anti-entropy rounds walked to the end."""
        return self.anti_entropy.rounds

    @property
    def repairs(self) -> int:
        """Documents anti-entropy repaired here."""
        return self.anti_entropy.repairs

    def peer_holds(self) -> dict[str, int]:
        """Per origin, the highest contiguous seq the peer told us it holds."""
        return dict(self._peer_holds)

    # ------------------------------------------------------------- handshake

    def _handle(self, message: wire.Message, now: float) -> None:
        if isinstance(message, wire.Error):
            self._closed(f"peer closed: {message.code}: {message.message}", None)
            return
        handler = _HANDLERS.get((self.state, type(message)))
        if handler is None:
            raise RemoteProtocolError(
                f"unexpected {type(message).__name__} in state {self.state!r}",
                code="unexpected_message",
            )
        handler(self, message, now)

    def _on_hello(self, hello: wire.Hello, now: float) -> None:
        wire.check_version(hello)
        if hello.region == self.store.region:
            raise RemoteProtocolError(
                f"peer claims our own region {hello.region!r}", code="bad_region"
            )
        if self.expected_peer is not None and hello.region != self.expected_peer:
            raise RemoteProtocolError(
                f"expected region {self.expected_peer!r}, the peer says {hello.region!r}",
                code="bad_region",
            )
        self.peer = hello.region
        self._peer_nonce = hello.nonce
        if self.dialer:
            if self._prove is not None:
                self._send(self._prove(hello.nonce, self._nonce, hello.region))
                self.state = "auth"
            else:
                self._open(now)
        else:
            self.state = "auth" if self._authenticate is not None else "hello-done"
            if self._authenticate is None:
                self._open(now)

    def _on_auth(self, auth: wire.Auth, now: float) -> None:
        if self.dialer or self._authenticate is None:
            raise RemoteProtocolError("Auth is sent by the dialing side", code="unexpected_message")
        if auth.region != self.peer:
            raise RemoteProtocolError(
                f"Auth is for region {auth.region!r} but Hello said {self.peer!r}",
                code="bad_region",
            )
        self._authenticate(auth, self._nonce, self._peer_nonce)
        self._send(wire.AuthOk(self.store.region))
        self._open(now)

    def _on_auth_ok(self, ok: wire.AuthOk, now: float) -> None:
        if not self.dialer:
            raise RemoteProtocolError(
                "AuthOk is sent by the listening side", code="unexpected_message"
            )
        self._open(now)

    def _open(self, now: float) -> None:
        self.state = "open"
        self._deadline = None
        assert self.peer is not None
        self._emit(Established(self.peer))
        self._gossip(now)
        if self.dialer:
            self._next_round = now  # a round on every (re)connect

    def _gossip(self, now: float) -> None:
        """Tell the peer what we hold per origin, and every region's C we know of."""
        self._next_gossip = now + self.options.gossip_interval
        entries = self.store.frontier_entries()
        clocks = tuple((region, int(hlc)) for region, hlc in self.store.frontier_clocks())
        own = next(hlc for region, hlc in clocks if region == self.store.region)
        complete = tuple((origin, seq, int(hlc)) for origin, seq, hlc in entries)
        linked = self.neighbourhood.linked() if self.neighbourhood is not None else ()
        self._send(wire.Frontier(complete, own, linked))
        self._send(wire.Clocks(clocks))

    # --------------------------------------------------------------- records

    def _on_frontier(self, frontier: wire.Frontier, now: float) -> None:
        self._pump_needed = True
        for origin, contiguous, _ in frontier.complete:
            self._peer_holds[origin] = max(self._peer_holds.get(origin, 0), contiguous)
            self.peer_reports[origin] = contiguous
        self.peer_linked = frozenset(frontier.linked)
        self._emit(NoteFrontier(entries=frontier.complete))

    def _on_clocks(self, clocks: wire.Clocks, now: float) -> None:
        self._emit(NoteFrontier(clocks=clocks.regions))

    def _on_records(self, message: wire.Records, now: float) -> None:
        if self._unapplied >= MAX_UNAPPLIED:
            raise RemoteProtocolError(
                f"more than {MAX_UNAPPLIED} Records messages before our Acks",
                code="unexpected_message",
            )
        self._last_records_at = now
        for origin in {record.origin for record in message.records}:
            # The peer holds what it sent: do not send it back (when the batch follows
            # on from what we know it holds, so no gap of ours is skipped).
            seqs = [r.seq for r in message.records if r.origin == origin]
            known = max(self._peer_holds.get(origin, 0), self._sent_through.get(origin, 0))
            if min(seqs) <= known + 1:
                self._sent_through[origin] = max(self._sent_through.get(origin, 0), max(seqs))
        self._unapplied += 1
        self._emit(ApplyRecords(message.records, message.seals, self.peer or ""))

    def _on_certificates(self, message: wire.Certificates, now: float) -> None:
        self._emit(NoteCertificates(message.certificates))

    def _records_applied(self, intent: ApplyRecords, outcome: Outcome) -> None:
        """Report the records applied, and acknowledge them with what we now hold."""
        self._unapplied -= 1
        assert self.peer is not None
        self._emit(RecordsReceived(self.peer, len(intent.records), outcome.applied))
        held = dict(outcome.held)
        for origin in sorted({record.origin for record in intent.records}):
            self._send(wire.Ack(origin, held.get(origin, 0)))

    def _on_ack(self, ack: wire.Ack, now: float) -> None:
        self._unacked = max(0, self._unacked - 1)
        # No log read for an Ack: the last pump read to the end, or the window left it due.
        self._peer_holds[ack.origin] = max(self._peer_holds.get(ack.origin, 0), ack.seq)
        self.in_flight.acked(ack.origin, ack.seq, everything=not self._unacked)

    def _pump(self) -> None:
        """Send log records the peer does not hold yet, within the window."""
        if self.state != "open" or not self._pump_needed:
            return
        self._pump_needed = False
        try:
            for origin, (highest, _, _) in sorted(self.store.progress().items()):
                if origin == self.peer or not relays(
                    origin, ours=self.store.region, peer_linked=self.peer_linked
                ):
                    continue  # the peer holds its own records; its origin serves it
                while self._unacked < self.options.window:
                    after = max(self._peer_holds.get(origin, 0), self._sent_through.get(origin, 0))
                    if highest <= after:
                        break  # nothing above what the peer has or was sent: no read
                    if self.sealed is not None:
                        runs = self.sealed.runs_from(origin, after, self.options.batch_records)
                        if not runs:
                            break
                        self._send_runs(list(runs))
                        self.in_flight.sent(record for _, run in runs for record in run)
                        self._sent_through[origin] = runs[-1][0].last
                        continue
                    records = self.store.records_from(origin, after, self.options.batch_records)
                    if not records:
                        break
                    self._send_records(records)
                    self.in_flight.sent(records)
                    self._sent_through[origin] = records[-1].seq
                if self._unacked >= self.options.window:
                    self._pump_needed = True  # the next Ack resumes here
                    break
        except LocalProtocolError as exc:
            self._fail(exc.code, str(exc), exc)

    def _send_records(self, records: list[UpdateRecord]) -> None:
        """Unsealed records (no signing in this session), each a run of its own."""
        self._send_runs([(None, [record]) for record in records])

    def _send_runs(self, runs: list[Run]) -> None:
        """Runs in messages of about CHUNK_BYTES (see :mod:`.packing`), after the
        certificates of their seals' keys."""
        keys = {seal.key for seal, _ in runs if seal is not None}
        if keys:
            self._send_certificates(keys)
        self.records_out += sum(len(run) for _, run in runs)
        packed = pack(runs, large_bytes=self.options.large_bytes, chunk_bytes=CHUNK_BYTES)
        for message, bulk_doc in packed:
            if bulk_doc is None:
                self._send(message)
            else:
                self._send_bulk(message, bulk_doc)
            self._unacked += 1

    def _send_certificates(self, keys: set[bytes]) -> None:
        """The certificates of ``keys`` the peer has not had from us in this session."""
        new = keys - self._certificates_sent
        if new and self.sealed is not None:
            self._send(wire.Certificates(self.sealed.certificates(sorted(new))))
            self._certificates_sent |= new

    # ---------------------------------------------------------- anti-entropy

    def start_round(self, now: float) -> None:
        """Start an anti-entropy round now (the dialing side does so on a timer).

        Skipped while records are still flowing (a bootstrap, a burst): they close
        the gap far more cheaply, and a round then would repair every document
        twice. Once the flow stops, whatever records cannot fix (compacted
        history, lost state) is left to the round. Skipped too while the last
        round's repairs are still being applied, or a round waits to start.
        """
        self._next_round = now + self.options.anti_entropy_interval
        if self.state != "open" or self.catching_up(now) or not self.anti_entropy.idle:
            return
        self.anti_entropy.start(now)

    def catching_up(self, now: float) -> bool:
        """Whether records are still flowing: ours unacknowledged, or the peer's recent;
        or on their way (:mod:`.relay`'s round rule)."""
        recent = now - self._last_records_at < self.options.anti_entropy_interval
        if self._unacked > 0 or recent or self.receiving:
            return True
        return self._deferral.defers(self.neighbourhood, now)

    @property
    def receiving(self) -> bool:
        """Part of a message from the peer in hand, or its records not applied yet."""
        return self._unapplied > 0 or any(d.buffered for d in self._decoders.values())

    def _on_round_message(self, message: wire.Message, now: float) -> None:
        self.anti_entropy.receive(message, now)

    # ----------------------------------------------------------------- misc

    def _send(self, message: wire.Message) -> None:
        self._out.append(wire.encode(message))

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _send_bulk(self, message: wire.Message, doc_id: str) -> None:
        """Send ``message`` (one document's) on that document's bulk lane."""
        lane = 1 + zlib.crc32(doc_id.encode()) % BULK_LANES
        frame = wire.encode(message, max_message_bytes=wire.MAX_BULK_MESSAGE_BYTES)
        self._lane_out.setdefault(lane, []).append(frame)

    def _fail(self, code: str, text: str, error: ProtocolError | CrdtdbError | None) -> None:
        self._send(wire.Error(code, text))
        self._closed(f"{code}: {text}", error)

    def _closed(self, reason: str, error: ProtocolError | CrdtdbError | None) -> None:
        self.state = "closed"
        self._deadline = self._next_round = None
        self._emit(Closed(self.peer, reason, error))


_Handler = Callable[[SyncSession, wire.Message, float], None]
_OPEN_HANDLERS: dict[type, _Handler] = {
    wire.Frontier: SyncSession._on_frontier,  # type: ignore[dict-item]
    wire.Clocks: SyncSession._on_clocks,  # type: ignore[dict-item]
    wire.Records: SyncSession._on_records,  # type: ignore[dict-item]
    wire.Certificates: SyncSession._on_certificates,  # type: ignore[dict-item]
    wire.Ack: SyncSession._on_ack,  # type: ignore[dict-item]
    wire.Heartbeat: lambda session, message, now: None,
    wire.SnapshotPull: lambda session, message, now: session._emit(message),  # type: ignore
    **{kind: SyncSession._on_round_message for kind in ROUND_MESSAGES},
}
_HANDLERS: dict[tuple[str, type], _Handler] = {
    ("hello", wire.Hello): SyncSession._on_hello,  # type: ignore[dict-item]
    ("auth", wire.Auth): SyncSession._on_auth,  # type: ignore[dict-item]
    ("auth", wire.AuthOk): SyncSession._on_auth_ok,  # type: ignore[dict-item]
    **{("open", kind): handler for kind, handler in _OPEN_HANDLERS.items()},
}
