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
  nodes found different, one level per message, so bytes grow with the
  differing documents, not the store. Just above the leaves, where few nodes
  differ, the walk goes four ways (quads) instead of sixteen: one more flight,
  half the hashes. Hashes travel as 3-byte slices, other bytes each round.
  The side that reaches the differing leaves lists its documents there by 2
  bytes of id hash and a digest slice (``LeafList``); the other names back
  the ones that differ, by position, with its state vector, an id check and
  a delete-set slice (``Wants``); the lister answers each with the diff the
  state vector lacks, if it has anything the other lacks, and its own state
  vector if it lacks something (``Answers``); the asker sends those diffs
  (``Fills``). Documents one side has not at all go whole in ``Diffs``, by
  name. No document id, and no state vector of a document in sync, crosses
  the wire in a round, but for documents one side lacks.
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

import hashlib
import os
import zlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

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
LIST_DOCS = 2048
"""Documents per LeafList (whole leaves; more only if one leaf holds more): its Wants
carry a state vector each, and must stay well within the message size limit."""
QUAD_DENSITY = 0.75
"""Descend into the leaves by quads when fewer than this share of the nodes above differ."""
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
    salt: int = 0
    listed: bool = False
    """Lister: all our LeafLists are sent. Asker: the peer's final LeafList came."""
    lists: deque[list[str]] = field(default_factory=deque)
    """Lister: per LeafList the peer has not answered yet, its document ids in order."""
    wants: deque[list[tuple[str, bytes] | None]] = field(default_factory=deque)
    """Asker: per Wants not answered yet, per entry (our doc id, the state vector we
    sent), or None where we have no such document."""
    fills: deque[list[str]] = field(default_factory=deque)
    """Lister: per Answers with asks not filled yet, the documents asked."""


_Pending = TypeVar("_Pending")


def _answered(pending: deque[_Pending], message: wire.Message, what: str) -> _Pending:
    """The oldest of what we sent that ``message`` answers (each is answered in order)."""
    if not pending:
        raise RemoteProtocolError(
            f"{type(message).__name__} that answer no {what}", code="unexpected_message"
        )
    return pending.popleft()


def _id_slice(doc_id: str, salt: int) -> bytes:
    """The bytes of the id's hash that name a document in a ``LeafList`` for ``salt``.

    Not the first two: those place the document in its leaf."""
    offset = 2 + wire.ID_HASH_BYTES * (salt % 15)
    return hashlib.sha256(doc_id.encode("utf-8")).digest()[offset : offset + wire.ID_HASH_BYTES]


def _id_check(doc_id: str, salt: int) -> bytes:
    """What ``Wants`` carries to show which document it means by a list position."""
    digest = hashlib.sha256(b"id-check\x00" + doc_id.encode("utf-8")).digest()
    offset = wire.ID_CHECK_BYTES * (salt % (len(digest) // wire.ID_CHECK_BYTES))
    return digest[offset : offset + wire.ID_CHECK_BYTES]


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
        self._inline_bytes = 0  # diffs in the Answers or Fills being built
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
        if not self._lane_out:
            return []
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
        salt = self.rounds % 8  # each round compares other slices of the hashes
        self._send_round(
            wire.MerkleHashes(salt, 16, (), wire.merkle_slice(self.store.merkle_node(root), salt))
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

    def _round_for(self, message: wire.Message, now: float) -> _Round:
        """The round ``message`` belongs to; the answering side starts its own on the root."""
        if isinstance(message, wire.MerkleHashes) and not message.parents:
            if self.dialer:
                raise RemoteProtocolError(
                    "a round started by the listening side (only the dialer starts rounds)",
                    code="unexpected_message",
                )
            self._round = _Round(started=now)  # a new round replaces any unfinished one
        elif self._round is None:
            raise RemoteProtocolError(
                f"{type(message).__name__} outside an anti-entropy round",
                code="unexpected_message",
            )
        return self._round

    def _node_hashes(self, nodes: list[int]) -> list[bytes]:
        """Our hashes of tree nodes and quads (a quad's: the XOR of its four nodes')."""
        real = sorted(
            {c for n in nodes for c in (merkle.quad_children(n) if n & merkle.QUAD else (n,))}
        )
        known = dict(zip(real, self.store.merkle_nodes(real), strict=True))
        out = []
        for node in nodes:
            if node & merkle.QUAD:
                digest = merkle.ZERO
                for child in merkle.quad_children(node):
                    digest = merkle.xor_bytes(digest, known[child])
                out.append(digest)
            else:
                out.append(known[node])
        return out

    def _on_merkle_hashes(self, message: wire.MerkleHashes, now: float) -> None:
        """The peer's (sliced) hashes: answer with ours one step down where they differ."""
        round_ = self._round_for(message, now)
        salt, size = message.salt, wire.MERKLE_HASH_BYTES
        nodes = [merkle.node_id(0, 0)] if not message.parents else []
        for parent in message.parents:
            if not merkle.valid_node(parent) or merkle.is_leaf(parent):
                raise RemoteProtocolError(
                    f"MerkleHashes names {parent:#x}, not a node above the leaves",
                    code="bad_payload",
                )
            if parent & merkle.QUAD:
                if message.fanout != 4:
                    raise RemoteProtocolError(
                        "MerkleHashes gives a quad 16 children", code="bad_payload"
                    )
                nodes.extend(merkle.quad_children(parent))
            else:
                nodes.extend(
                    merkle.children(parent) if message.fanout == 16 else merkle.quads(parent)
                )
        ours = self._node_hashes(nodes)
        differing = [
            node
            for i, (node, digest) in enumerate(zip(nodes, ours, strict=True))
            if wire.merkle_slice(digest, salt) != message.hashes[i * size : (i + 1) * size]
        ]
        if not differing:
            self._send_round(wire.LeafList(salt, True, ()))  # "in sync here": ends the round
            self._finish_round()
            return
        if merkle.is_leaf(differing[0]):
            self._send_leaves(round_, salt, [node & 0xFFFF for node in differing])
            return
        # Four ways where the differences are sparse just above the leaves: half the
        # hashes for one more flight (a quad's children cost 4 hashes, not 16).
        quad_step = (
            not differing[0] & merkle.QUAD
            and differing[0] >> 16 == merkle.DEPTH - 1
            and len(differing) < QUAD_DENSITY * len(nodes)
        )
        if differing[0] & merkle.QUAD or quad_step:
            fanout = 4
            below = [
                c
                for node in differing
                for c in (merkle.quad_children(node) if node & merkle.QUAD else merkle.quads(node))
            ]
        else:
            fanout = 16
            below = [c for node in differing for c in merkle.children(node)]
        hashes = b"".join(wire.merkle_slice(h, salt) for h in self._node_hashes(below))
        self._send_round(wire.MerkleHashes(salt, fanout, tuple(differing), hashes))

    def _send_leaves(self, round_: _Round, salt: int, leaves: list[int]) -> None:
        """List our documents of the differing leaves: id hash and digest slices.

        In messages of about CHUNK_BYTES, each holding whole leaves; the peer
        answers each with one ``Wants`` naming entries by position, so we keep
        each list's document ids until then.
        """
        chunks: list[tuple[list[tuple[int, bytes]], list[str]]] = [([], [])]
        size = 0
        for leaf in leaves:
            docs = self.store.leaf_docs(leaf)
            entries = b"".join(
                _id_slice(doc_id, salt) + wire.merkle_slice(digest, salt) for doc_id, digest in docs
            )
            if chunks[-1][0] and (
                size + len(entries) > CHUNK_BYTES or len(chunks[-1][1]) >= LIST_DOCS
            ):
                chunks.append(([], []))
                size = 0
            chunks[-1][0].append((leaf, entries))
            chunks[-1][1].extend(doc_id for doc_id, _ in docs)
            size += len(entries) + 4
        round_.salt = salt
        for i, (listed, doc_ids) in enumerate(chunks):
            round_.lists.append(doc_ids)
            self._send_round(wire.LeafList(salt, i == len(chunks) - 1, tuple(listed)))
        round_.listed = True

    def _on_leaf_list(self, message: wire.LeafList, now: float) -> None:
        """The peer's documents of differing leaves: say which differ here, send what it lacks."""
        round_ = self._round_for(message, now)
        if round_.listed:
            raise RemoteProtocolError("LeafList after the round's final one", code="bad_payload")
        if not message.leaves and message.final and not round_.wants:
            self._finish_round()  # in sync
            return
        if any(leaf >= merkle.FANOUT**merkle.DEPTH for leaf, _ in message.leaves):
            raise RemoteProtocolError("LeafList names a leaf outside the tree", code="bad_payload")
        salt, width = message.salt, wire.LEAF_ENTRY_BYTES
        wants: list[tuple[int, bytes, bytes, bytes]] = []
        meant: list[tuple[str, bytes] | None] = []
        pushes: list[tuple[str, bytes]] = []
        position = 0
        for leaf, data in message.leaves:
            theirs = [data[i : i + width] for i in range(0, len(data), width)]
            ours = self.store.leaf_docs(leaf)
            by_id: dict[bytes, list[tuple[str, bytes]]] = {}
            for doc_id, digest in ours:
                by_id.setdefault(_id_slice(doc_id, salt), []).append((doc_id, digest))
            seen = Counter(entry[: wire.ID_HASH_BYTES] for entry in theirs)
            matched: set[str] = set()
            for entry in theirs:
                id_slice, digest_slice = entry[: wire.ID_HASH_BYTES], entry[wire.ID_HASH_BYTES :]
                candidates = by_id.get(id_slice, [])
                if len(candidates) == 1 and seen[id_slice] == 1:
                    doc_id, digest = candidates[0]
                    matched.add(doc_id)
                    if wire.merkle_slice(digest, salt) != digest_slice:
                        state_vector, deletes = self._summary(doc_id)
                        check = _id_check(doc_id, salt)
                        deletes_slice = wire.merkle_slice(deletes, salt)
                        wants.append((position, state_vector, check, deletes_slice))
                        meant.append((doc_id, state_vector))
                else:  # not here, or an id-hash clash: ask for all of it, by name
                    wants.append((position, b"", b"", b""))
                    meant.append(None)
                position += 1
            pushes.extend(
                (doc_id, self.store.diff(doc_id, EMPTY_SV))
                for doc_id, _ in ours
                if doc_id not in matched
            )
        self._send_diffs(pushes)  # what the peer has no document of
        self._send_round(wire.Wants(tuple(wants)))
        round_.wants.append(meant)
        round_.listed = message.final
        self._maybe_finish_round()

    def _summary(self, doc_id: str) -> tuple[bytes, bytes]:
        """Our state vector of a document and the digest of its delete set."""
        state_vector = self.store.state_vector(doc_id)
        return state_vector, merkle.delete_set_digest(self.store.diff(doc_id, state_vector))

    def _on_wants(self, message: wire.Wants, now: float) -> None:
        """The peer's answer to one of our lists: send the diffs it lacks, ask for ours."""
        round_ = self._round_for(message, now)
        doc_ids, salt = _answered(round_.lists, message, "LeafList"), round_.salt
        answers: list[tuple[str, bytes, bool, bytes | None]] = []
        asked: list[str] = []
        self._inline_bytes = 0
        for position, their_sv, check, their_deletes in message.wants:
            if position >= len(doc_ids):
                raise RemoteProtocolError(
                    f"Wants names entry {position} of a list of {len(doc_ids)}",
                    code="bad_payload",
                )
            doc_id = doc_ids[position]
            if not their_sv or check != _id_check(doc_id, salt):  # the peer has no such doc
                answers.append(self._answer(doc_id, doc_id, EMPTY_SV, None))
                continue
            ours, deletes = self._summary(doc_id)
            # their_sv decoded whole when the Wants was built: no second check here
            mine, theirs = merkle.state_vector_clocks(ours), merkle.state_vector_clocks(their_sv)
            deletes_differ = wire.merkle_slice(deletes, salt) != their_deletes
            we_have_more = any(clock > theirs.get(c, 0) for c, clock in mine.items())
            they_have_more = any(clock > mine.get(c, 0) for c, clock in theirs.items())
            ask = None
            if they_have_more or deletes_differ:
                ask = wire.SAME_STATE_VECTOR if mine == theirs else ours
                asked.append(doc_id)
            send = we_have_more or deletes_differ
            answers.append(self._answer("", doc_id, their_sv if send else None, ask))
        self._send_round(wire.Answers(tuple(answers)))
        if asked:
            round_.fills.append(asked)
        self._maybe_finish_round()

    def _answer(
        self, name: str, doc_id: str, state_vector: bytes | None, ask: bytes | None
    ) -> tuple[str, bytes, bool, bytes | None]:
        """One ``Answers`` entry: the diff against ``state_vector`` (if any), in it or apart."""
        diff = b"" if state_vector is None else self.store.diff(doc_id, state_vector)
        return (name, *self._inline(doc_id, diff), ask)

    def _inline(self, doc_id: str, diff: bytes) -> tuple[bytes, bool]:
        """``(diff, False)`` to carry it in the message being built, or ``(b"", True)``
        when it went apart in a ``Diffs``: a large one alone on a bulk lane, or any once
        the message holds CHUNK_BYTES of diffs (so that it stays within the size limit)."""
        if len(diff) >= self.options.large_bytes:
            self._send_round(wire.Diffs(((doc_id, diff),)), lane_of=doc_id)
            return b"", True
        if self._inline_bytes + len(diff) > CHUNK_BYTES:
            self._send_round(wire.Diffs(((doc_id, diff),)))
            return b"", True
        self._inline_bytes += len(diff)
        return diff, False

    def _on_answers(self, message: wire.Answers, now: float) -> None:
        """The lister's answer to our Wants: apply its diffs, fill what it asks."""
        round_ = self._round_for(message, now)
        meant = _answered(round_.wants, message, "Wants")
        if len(message.answers) != len(meant):
            raise RemoteProtocolError(
                f"Answers has {len(message.answers)} entries for {len(meant)} wants",
                code="bad_payload",
            )
        fills: list[bytes] = []
        self._inline_bytes = 0
        for (name, diff, _, ask), want in zip(message.answers, meant, strict=True):
            if not name and want is None:
                raise RemoteProtocolError(
                    "Answers leaves unnamed a document we do not have", code="bad_payload"
                )
            if diff:
                self._apply_repair(round_, name or want[0] if want else name, diff)
            if ask is not None:
                if name or want is None:
                    raise RemoteProtocolError(
                        f"Answers asks for {name}, which we do not have", code="bad_payload"
                    )
                doc_id, sent = want
                if ask == wire.SAME_STATE_VECTOR and self._holds_all_of_ours(doc_id, diff):
                    fills.append(b"")
                    continue
                fill = self.store.diff(doc_id, sent if ask == wire.SAME_STATE_VECTOR else ask)
                fills.append(self._inline(doc_id, fill)[0])
        if fills:
            self._send_round(wire.Fills(tuple(fills)))
        self._maybe_finish_round()

    def _holds_all_of_ours(self, doc_id: str, diff: bytes) -> bool:
        """Whether the lister, at our state vector, already has all our deletes.

        ``diff`` is what it sent us: with no structs (first byte 0) it is just
        the lister's whole delete set, so if ours, now merged with it, is the
        same, the lister lacks nothing of this document.
        """
        if not diff or diff[0] != 0:
            return False
        return self._summary(doc_id)[1] == merkle.delete_set_digest(diff)

    def _on_fills(self, message: wire.Fills, now: float) -> None:
        round_ = self._round_for(message, now)
        asked = _answered(round_.fills, message, "ask")
        if len(message.diffs) != len(asked):
            raise RemoteProtocolError(
                f"Fills has {len(message.diffs)} diffs for {len(asked)} asks", code="bad_payload"
            )
        for doc_id, diff in zip(asked, message.diffs, strict=True):
            if diff:
                self._apply_repair(round_, doc_id, diff)
        self._maybe_finish_round()

    def _apply_repair(self, round_: _Round | None, doc_id: str, diff: bytes) -> None:
        if self.store.apply_diff(doc_id, diff) is not None:
            self.repairs += 1
            if round_ is not None:
                round_.repaired += 1

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
        for doc_id, update in message.docs:
            if update:
                self._apply_repair(self._round, doc_id, update)

    def _maybe_finish_round(self) -> None:
        round_ = self._round
        if (
            round_ is not None
            and round_.listed
            and not round_.lists
            and not round_.wants
            and not round_.fills
        ):
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
    wire.LeafList: SyncSession._on_leaf_list,  # type: ignore[dict-item]
    wire.Wants: SyncSession._on_wants,  # type: ignore[dict-item]
    wire.Answers: SyncSession._on_answers,  # type: ignore[dict-item]
    wire.Fills: SyncSession._on_fills,  # type: ignore[dict-item]
    wire.Diffs: SyncSession._on_diffs,  # type: ignore[dict-item]
    wire.Heartbeat: SyncSession._on_heartbeat,  # type: ignore[dict-item]
}
_HANDLERS: dict[tuple[str, type], _Handler] = {
    ("hello", wire.Hello): SyncSession._on_hello,  # type: ignore[dict-item]
    ("auth", wire.Auth): SyncSession._on_auth,  # type: ignore[dict-item]
    ("auth", wire.AuthOk): SyncSession._on_auth_ok,  # type: ignore[dict-item]
    **{("open", kind): handler for kind, handler in _OPEN_HANDLERS.items()},
}
