"""The sans-IO replication session between two regions (one per connection).

Bytes in, bytes and events out, time passed in: ``receive(data, now)``,
``data_to_send(now)``, ``next_event()``, ``get_timer()``, ``handle_timer(now)``.
No socket, no clock, no asyncio: the QUIC glue (:mod:`.transport`) pumps it,
and tests wire two sessions together in memory.

Design rules:

- **Handshake.** Both sides send ``Hello`` (protocol version, region, a fresh
  nonce). The dialing side then proves its identity with ``Auth``: its
  certificate and a signature over both nonces and both region names, which
  binds the proof to this connection (TLS already proved the server to the
  client). The server answers ``AuthOk``. Nothing else is accepted before,
  and nothing of the store is read or written before.
- **Records, pulled from the log.** After the handshake each side tells the
  other, per origin region, the highest contiguous sequence number it holds
  (``Frontier``). Each side then sends, per origin, the records above what
  the peer holds, read from its own log in seq order, in batches, at most
  ``window`` batches unacknowledged. There is no per-peer record queue to
  overflow: a slow or absent peer just leaves a cursor behind, and a new
  commit only wakes the pump. Records of every origin are sent, so a chain
  A-B-C converges though A and C never talk.
- **Anti-entropy.** The dialing side starts a round on connect and every
  ``anti_entropy_interval``. The two sides walk the Merkle trees down
  together: each message carries the sender's hashes of the children of the
  nodes found different, one level per message, so a round costs the depth
  of the tree in messages and bytes in proportion to the differing
  documents. Hashes travel as 4-byte slices, another slice each round. The
  side that reaches the differing leaves lists its documents there
  (``LeafReply``: id, digest slice, state vector); the other answers with the
  diffs the listed state vectors lack and its own state vectors of the
  documents that differ (``StateVectors``), which the first answers with
  diffs. Three flights after the descent, and no state vector of a
  document in sync crosses the wire, except those sharing a leaf with one
  that is not.
- **Lanes.** Everything goes on the main lane (one QUIC stream) except a
  record or diff of a large document (``SessionOptions.large_bytes`` or more): that goes in
  a message of its own on one of ``BULK_LANES`` bulk lanes (each its own
  stream, chosen by the document id), so a large document is sent beside
  the small ones instead of in front of them. The receiver applies what
  comes in any order (a CRDT does not mind; the store keeps the contiguous
  seq per origin apart from the highest one), and accepts only ``Records``
  and ``Diffs`` on a bulk lane, and only once the handshake is done.
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
from dataclasses import dataclass, field
from typing import Protocol

from crdtdb import merkle
from crdtdb.errors import CrdtdbError
from crdtdb.hlc import Hlc
from crdtdb.records import UpdateRecord

from . import wire
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "BULK_LANES",
    "AntiEntropyDone",
    "Closed",
    "Established",
    "Event",
    "RecordsReceived",
    "SessionOptions",
    "Store",
    "SyncSession",
]

EMPTY_SV = b"\x00"
CHUNK_BYTES = 1 << 20
"""State vectors and diffs of a round, and records, go in messages of about this size."""
BULK_LANES = 4
"""Bulk lanes (QUIC streams) per direction besides the main one."""


class Store(Protocol):
    """What a session needs from a region's store (``crdtdb.Database`` provides it)."""

    @property
    def region(self) -> str: ...

    def merkle_node(self, node: int) -> bytes: ...
    def merkle_nodes(self, nodes: list[int]) -> list[bytes]: ...
    def leaf_docs(self, leaf: int) -> list[tuple[str, bytes]]: ...
    def state_vector(self, doc_id: str) -> bytes: ...
    def diff(self, doc_id: str, state_vector: bytes = ...) -> bytes: ...
    def apply_remote(self, record: UpdateRecord) -> bool: ...
    def apply_remote_many(self, records: list[UpdateRecord]) -> int: ...
    def apply_diff(self, doc_id: str, update: bytes) -> Hlc | None: ...
    def records_from(self, origin: str, after_seq: int, limit: int = ...) -> list[UpdateRecord]: ...
    def progress(self) -> dict[str, tuple[int, int, Hlc]]: ...
    def frontier_entries(self) -> list[tuple[str, int, Hlc]]: ...
    def frontier_clocks(self) -> list[tuple[str, Hlc]]: ...
    def note_frontier(
        self, entries: list[tuple[str, int, int]], clocks: list[tuple[str, int]] = ...
    ) -> None: ...


Authenticator = Callable[[wire.Auth, bytes, bytes], None]
"""Checks a client's Auth against (server nonce, client nonce); raises to refuse."""
Prover = Callable[[bytes, bytes, str], wire.Auth]
"""Makes our Auth from (server nonce, client nonce, server region)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOptions:
    """Tuning of one session; defaults suit a WAN link."""

    anti_entropy_interval: float = 2.0
    """Seconds between anti-entropy rounds started by the dialing side."""
    handshake_timeout: float = 10.0
    """Seconds the peer has to complete the handshake."""
    batch_records: int = 256
    """Records per ``Records`` message."""
    window: int = 8
    """``Records`` messages sent and not yet acknowledged, per session."""
    gossip_interval: float = 1.0
    """Seconds between frontier reports (also the heartbeat of an idle region)."""
    large_bytes: int = 64 * 1024
    """A record or diff at least this big goes in a message of its own on a bulk lane."""
    silence_timeout: float = 5.0
    """Close the session when nothing came from the peer for this long (it sends every
    ``gossip_interval``), so a restarted peer is redialed at once instead of after the
    QUIC idle timeout."""


# ----------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Established:
    peer: str


@dataclass(frozen=True, slots=True)
class RecordsReceived:
    peer: str
    received: int
    applied: int


@dataclass(frozen=True, slots=True)
class AntiEntropyDone:
    peer: str
    repaired_docs: int
    messages: int


@dataclass(frozen=True, slots=True)
class Closed:
    peer: str | None
    reason: str
    error: ProtocolError | CrdtdbError | None = None


Event = Established | RecordsReceived | AntiEntropyDone | Closed


@dataclass(slots=True)
class _Round:
    started: float
    messages: int = 0
    repaired: int = 0
    listed: bool = False
    """The differing leaves' documents were all listed (sent, or the final one received)."""
    awaiting: int = 0
    """LeafReply messages we sent that the peer has not answered yet."""
    sv_sent: set[str] = field(default_factory=set)
    """Documents we asked the peer about and whose diffs have not come yet."""


class SyncSession:
    """One connection's replication state machine. Not thread-safe; one driver pumps it."""

    def __init__(
        self,
        store: Store,
        *,
        dialer: bool,
        now: float,
        expected_peer: str | None = None,
        prove: Prover | None = None,
        authenticate: Authenticator | None = None,
        options: SessionOptions | None = None,
        nonce: bytes | None = None,
    ) -> None:
        self.store = store
        self.dialer = dialer
        self.options = options or SessionOptions()
        self.expected_peer = expected_peer
        self.peer: str | None = None
        self.state = "hello"
        self.bytes_in = 0
        self.bytes_out = 0
        self.rounds = 0
        self.repairs = 0
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
        self._round: _Round | None = None
        self._peer_holds: dict[str, int] = {}
        self.peer_reports: dict[str, int] = {}
        """Per origin, the contiguous seq the peer last reported holding (what we can get)."""
        self._sent_through: dict[str, int] = {}
        self._unacked = 0
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
        out = [(lane, b"".join(chunks)) for lane, chunks in sorted(self._lane_out.items())]
        self._lane_out.clear()
        self.bytes_out += sum(len(data) for _, data in out)
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

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

    def close(self, reason: str = "closed by us") -> None:
        if self.state != "closed":
            self._send(wire.Error("closing", reason))
            self._closed(reason, None)

    @property
    def established(self) -> bool:
        return self.state == "open"

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
        self._events.append(Established(self.peer))
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
        self._send(wire.Frontier(complete, own))
        self._send(wire.Clocks(clocks))

    # --------------------------------------------------------------- records

    def _on_frontier(self, frontier: wire.Frontier, now: float) -> None:
        self._pump_needed = True
        for origin, contiguous, _ in frontier.complete:
            self._peer_holds[origin] = max(self._peer_holds.get(origin, 0), contiguous)
            self.peer_reports[origin] = contiguous
        self.store.note_frontier(list(frontier.complete))

    def _on_clocks(self, clocks: wire.Clocks, now: float) -> None:
        self.store.note_frontier([], list(clocks.regions))

    def _on_records(self, message: wire.Records, now: float) -> None:
        self._last_records_at = now
        applied = self.store.apply_remote_many(list(message.records))
        for origin in {record.origin for record in message.records}:
            # The peer holds what it sent: do not send it back (when the batch follows
            # on from what we know it holds, so no gap of ours is skipped).
            seqs = [r.seq for r in message.records if r.origin == origin]
            known = max(self._peer_holds.get(origin, 0), self._sent_through.get(origin, 0))
            if min(seqs) <= known + 1:
                self._sent_through[origin] = max(self._sent_through.get(origin, 0), max(seqs))
        assert self.peer is not None
        self._events.append(RecordsReceived(self.peer, len(message.records), applied))
        progress = self.store.progress()
        for origin in {record.origin for record in message.records}:
            self._send(wire.Ack(origin, progress.get(origin, (0, 0, Hlc(0)))[1]))

    def _on_ack(self, ack: wire.Ack, now: float) -> None:
        self._unacked = max(0, self._unacked - 1)
        self._pump_needed = True
        self._peer_holds[ack.origin] = max(self._peer_holds.get(ack.origin, 0), ack.seq)

    def _pump(self) -> None:
        """Send log records the peer does not hold yet, within the window."""
        if self.state != "open" or not self._pump_needed:
            return
        self._pump_needed = False
        try:
            for origin in sorted(self.store.progress()):
                if origin == self.peer:
                    continue  # a region holds all of its own records
                while self._unacked < self.options.window:
                    after = max(self._peer_holds.get(origin, 0), self._sent_through.get(origin, 0))
                    records = self.store.records_from(origin, after, self.options.batch_records)
                    if not records:
                        break
                    self._send_records(records)
                    self._sent_through[origin] = records[-1].seq
                if self._unacked >= self.options.window:
                    self._pump_needed = True  # the next Ack resumes here
                    break
        except LocalProtocolError as exc:
            self._fail(exc.code, str(exc), exc)

    def _send_records(self, records: list[UpdateRecord]) -> None:
        """Records in messages of about CHUNK_BYTES; a large one alone on a bulk lane."""
        batch: list[UpdateRecord] = []
        size = 0
        for record in records:
            if len(record.update) >= self.options.large_bytes:
                self._send_bulk(wire.Records((record,)), record.doc_id)
                self._unacked += 1
                continue
            if batch and size + len(record.update) > CHUNK_BYTES:
                self._send(wire.Records(tuple(batch)))
                self._unacked += 1
                batch, size = [], 0
            batch.append(record)
            size += len(record.update)
        if batch:
            self._send(wire.Records(tuple(batch)))
            self._unacked += 1

    # ---------------------------------------------------------- anti-entropy

    def start_round(self, now: float) -> None:
        """Start an anti-entropy round now (the dialing side does so on a timer).

        Skipped while records are still flowing (a bootstrap, a burst): they close
        the gap far more cheaply, and a round then would repair every document
        twice. Once the flow stops, whatever records cannot fix (compacted
        history, lost state) is left to the round.
        """
        self._next_round = now + self.options.anti_entropy_interval
        if self.state != "open" or self._round is not None or self.catching_up(now):
            return
        self._round = _Round(started=now)
        root = merkle.node_id(0, 0)
        salt = self.rounds % 4  # each round compares another slice of the hashes
        self._send_round(
            wire.MerkleHashes(salt, (), wire.merkle_slice(self.store.merkle_node(root), salt))
        )

    def catching_up(self, now: float) -> bool:
        """Whether records are still flowing: ours unacknowledged, or the peer's recent."""
        recent = now - self._last_records_at < self.options.anti_entropy_interval
        return self._unacked > 0 or recent

    def _send_round(self, message: wire.Message, *, lane_of: str | None = None) -> None:
        if self._round is not None:
            self._round.messages += 1
        if lane_of is None:
            self._send(message)
        else:
            self._send_bulk(message, lane_of)

    def _on_merkle_hashes(self, message: wire.MerkleHashes, now: float) -> None:
        """The peer's (sliced) hashes: answer with ours one level down where they differ."""
        salt, size = message.salt, wire.MERKLE_HASH_BYTES
        nodes = (
            [c for parent in message.parents for c in merkle.children(parent)]
            if message.parents
            else [merkle.node_id(0, 0)]
        )
        if any(node >> 16 > merkle.DEPTH or not merkle.valid_node(node) for node in nodes):
            raise RemoteProtocolError(
                "MerkleHashes names a node outside the tree", code="bad_payload"
            )
        ours = self.store.merkle_nodes(nodes)
        differing = [
            node
            for i, (node, digest) in enumerate(zip(nodes, ours, strict=True))
            if wire.merkle_slice(digest, salt) != message.hashes[i * size : (i + 1) * size]
        ]
        if not differing:
            self._send_round(wire.LeafReply(salt, True, (), ()))  # "in sync here": ends the round
            if self._round is None:  # the answering side counts the round too
                self._round = _Round(started=now, messages=1)
            self._finish_round()
            return
        if differing[0] >> 16 < merkle.DEPTH:
            children = [c for node in differing for c in merkle.children(node)]
            hashes = b"".join(wire.merkle_slice(h, salt) for h in self.store.merkle_nodes(children))
            self._send_round(wire.MerkleHashes(salt, tuple(differing), hashes))
            return
        self._send_leaves(salt, [node & 0xFFFF for node in differing], now)

    def _send_leaves(self, salt: int, leaves: list[int], now: float) -> None:
        """List our documents of the differing leaves, with their state vectors.

        In messages of about CHUNK_BYTES, each holding whole leaves, so that the
        peer can compare each one on its own; the peer answers each.
        """
        if self._round is None:
            self._round = _Round(started=now)
        chunks: list[tuple[list[int], list[tuple[str, bytes, bytes]]]] = [([], [])]
        size = 0
        for leaf in leaves:
            docs = [
                (doc_id, wire.merkle_slice(digest, salt), self.store.state_vector(doc_id))
                for doc_id, digest in self.store.leaf_docs(leaf)
            ]
            leaf_size = 4 + sum(len(doc_id) + len(sv) + 8 for doc_id, _, sv in docs)
            if chunks[-1][0] and size + leaf_size > CHUNK_BYTES:
                chunks.append(([], []))
                size = 0
            chunks[-1][0].append(leaf)
            chunks[-1][1].extend(docs)
            size += leaf_size
        self._round.awaiting += len(chunks)
        self._round.listed = True
        for i, (chunk_leaves, docs) in enumerate(chunks):
            final = i == len(chunks) - 1
            self._send_round(wire.LeafReply(salt, final, tuple(chunk_leaves), tuple(docs)))

    def _on_leaf_reply(self, message: wire.LeafReply, now: float) -> None:
        """The peer's documents of differing leaves: send diffs, ask for what we lack."""
        if not message.leaves:
            if not message.final:
                raise RemoteProtocolError("LeafReply lists no leaf", code="bad_payload")
            self._finish_round()  # in sync
            return
        if any(leaf >= merkle.FANOUT**merkle.DEPTH for leaf in message.leaves):
            raise RemoteProtocolError("LeafReply names a leaf outside the tree", code="bad_payload")
        if self._round is None:
            self._round = _Round(started=now)
        round_ = self._round
        theirs = {doc_id: (digest, sv) for doc_id, digest, sv in message.docs}
        ours = dict(d for leaf in message.leaves for d in self.store.leaf_docs(leaf))
        diffs: list[tuple[str, bytes]] = []
        asks: list[tuple[str, bytes]] = []
        for doc_id in sorted(set(theirs) | set(ours)):
            mine, other = ours.get(doc_id), theirs.get(doc_id)
            if (
                mine is not None
                and other is not None
                and wire.merkle_slice(mine, message.salt) == other[0]
            ):
                continue
            if mine is not None:
                diffs.append((doc_id, self.store.diff(doc_id, other[1] if other else EMPTY_SV)))
            if other is not None:
                asks.append((doc_id, self._state_vector(doc_id, mine is not None)))
        round_.sv_sent.update(doc_id for doc_id, _ in asks)
        round_.listed = round_.listed or message.final
        self._send_diffs(diffs)
        self._send_round(wire.StateVectors(tuple(asks)))  # always: it answers this LeafReply
        self._maybe_finish_round()

    def _state_vector(self, doc_id: str, held: bool) -> bytes:
        return self.store.state_vector(doc_id) if held else EMPTY_SV

    def _on_state_vectors(self, message: wire.StateVectors, now: float) -> None:
        """The peer's answer to one of our LeafReply messages: send it the diffs it asks."""
        self._send_diffs([(doc_id, self.store.diff(doc_id, sv)) for doc_id, sv in message.docs])
        if self._round is not None and self._round.awaiting > 0:
            self._round.awaiting -= 1
            self._maybe_finish_round()

    def _send_diffs(self, diffs: list[tuple[str, bytes]]) -> None:
        """Diffs in messages of about CHUNK_BYTES; a large one alone on a bulk lane."""
        batch: list[tuple[str, bytes]] = []
        size = 0
        for doc_id, data in diffs:
            if len(data) >= self.options.large_bytes:
                self._send_round(wire.Diffs(((doc_id, data),)), lane_of=doc_id)
                continue
            if batch and size + len(data) > CHUNK_BYTES:
                self._send_round(wire.Diffs(tuple(batch)))
                batch, size = [], 0
            batch.append((doc_id, data))
            size += len(data) + len(doc_id)
        if batch:
            self._send_round(wire.Diffs(tuple(batch)))

    def _on_diffs(self, message: wire.Diffs, now: float) -> None:
        repaired = 0
        for doc_id, update in message.docs:
            if update and self.store.apply_diff(doc_id, update) is not None:
                repaired += 1
        self.repairs += repaired
        if self._round is not None:
            self._round.repaired += repaired
            self._round.sv_sent.difference_update(doc_id for doc_id, _ in message.docs)
            self._maybe_finish_round()

    def _maybe_finish_round(self) -> None:
        round_ = self._round
        if round_ is not None and round_.listed and not round_.awaiting and not round_.sv_sent:
            self._finish_round()

    def _finish_round(self) -> None:
        if self._round is None:
            return
        round_, self._round = self._round, None
        self.rounds += 1
        assert self.peer is not None
        self._events.append(AntiEntropyDone(self.peer, round_.repaired, round_.messages))

    # ----------------------------------------------------------------- misc

    def _on_heartbeat(self, message: wire.Heartbeat, now: float) -> None:
        pass

    def _send(self, message: wire.Message) -> None:
        self._out.append(wire.encode(message))

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
        self._events.append(Closed(self.peer, reason, error))


_Handler = Callable[[SyncSession, wire.Message, float], None]
_OPEN_HANDLERS: dict[type, _Handler] = {
    wire.Frontier: SyncSession._on_frontier,  # type: ignore[dict-item]
    wire.Clocks: SyncSession._on_clocks,  # type: ignore[dict-item]
    wire.Records: SyncSession._on_records,  # type: ignore[dict-item]
    wire.Ack: SyncSession._on_ack,  # type: ignore[dict-item]
    wire.MerkleHashes: SyncSession._on_merkle_hashes,  # type: ignore[dict-item]
    wire.LeafReply: SyncSession._on_leaf_reply,  # type: ignore[dict-item]
    wire.StateVectors: SyncSession._on_state_vectors,  # type: ignore[dict-item]
    wire.Diffs: SyncSession._on_diffs,  # type: ignore[dict-item]
    wire.Heartbeat: SyncSession._on_heartbeat,  # type: ignore[dict-item]
}
_HANDLERS: dict[tuple[str, type], _Handler] = {
    ("hello", wire.Hello): SyncSession._on_hello,  # type: ignore[dict-item]
    ("auth", wire.Auth): SyncSession._on_auth,  # type: ignore[dict-item]
    ("auth", wire.AuthOk): SyncSession._on_auth_ok,  # type: ignore[dict-item]
    **{("open", kind): handler for kind, handler in _OPEN_HANDLERS.items()},
}
