"""Anti-entropy rounds of one sync session: the Merkle walk and the repairs it finds.

The dialing side starts a round on connect and every ``anti_entropy_interval``.
The two sides walk the Merkle trees down together: each message carries the
sender's hashes of the children of the nodes found different, one level per
message, so bytes grow with the differing documents, not the store. Just
above the leaves, where few nodes differ, the walk goes four ways (quads)
instead of sixteen: one more flight, half the hashes. Hashes travel as 3-byte
slices, other bytes each round. The side that reaches the differing leaves
lists its documents there by 2 bytes of id hash and a digest slice
(``LeafList``); the other names back the ones that differ, by position, with
its state vector, an id check and a delete-set slice (``Wants``); the lister
answers each with the diff the state vector lacks, if it has anything the
other lacks, and its own state vector if it lacks something (``Answers``);
the asker sends those diffs (``Fills``). Documents one side has not at all go
whole in ``Diffs``, by name. Before any diff goes, :mod:`.resend` is asked
whether the origins' own records can carry it instead: then the records go,
and the diff does not. No document id, and no state vector of a
document in sync, crosses the wire in a round, but for documents one side
lacks.

Storage stays outside (see :mod:`.store`). The tree is read as it stands,
never flushed here: when digests are stale the round first asks for
:class:`~.store.RefreshDigests` (the dialer before it starts, the listener
before it answers the root) and goes on once told they are fresh. Repairs go
out as one :class:`~.store.ApplyDiffs` per message, and a round reports
:class:`AntiEntropyDone` once the repairs it received are applied, so that it
can say how many changed anything.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pycrdt import merge_updates

from crdtdb import merkle

from . import wire
from .errors import RemoteProtocolError
from .resend import Pusher, RecordsFirst, RegionDocuments
from .store import ApplyDiffs, MerkleView, RefreshDigests

__all__ = ["CHUNK_BYTES", "AntiEntropy", "AntiEntropyDone"]

EMPTY_SV = b"\x00"
LIST_DOCS = 2048
"""Documents per LeafList (whole leaves; more only if one leaf holds more): its Wants
carry a state vector each, and must stay well within the message size limit."""
QUAD_DENSITY = 0.75
"""Descend into the leaves by quads when fewer than this share of the nodes above differ."""
CHUNK_BYTES = 1 << 20
"""State vectors and diffs of a round, and records, go in messages of about this size."""
ROOT = merkle.node_id(0, 0)


@dataclass(frozen=True, slots=True)
class AntiEntropyDone:
    peer: str
    repaired_docs: int
    messages: int
    by_records: int = 0
    """Documents whose repair this side left to their origins' records (see
    :mod:`.resend`): the peer does not hold a complete copy yet."""


class RoundStore(RegionDocuments, MerkleView, Protocol):
    """What a round reads."""


class Host(Pusher, Protocol):
    """What a round needs of its session: who the peer is, ways to send, push and emit."""

    dialer: bool
    in_flight: Container[str]  # documents whose records the peer has not acknowledged yet

    def _send(self, message: wire.Message) -> None: ...
    def _send_bulk(self, message: wire.Message, doc_id: str) -> None: ...
    def _emit(self, event: AntiEntropyDone | ApplyDiffs | RefreshDigests) -> None: ...


@dataclass(slots=True)
class _Round:
    started: float
    serial: int
    messages: int = 0
    repaired: int = 0
    by_records: int = 0
    applying: int = 0
    """ApplyDiffs of this round not performed yet."""
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


class AntiEntropy:
    """The rounds of one session: at most one walking, others waiting for their repairs."""

    def __init__(self, host: Host, store: RoundStore, *, large_bytes: int) -> None:
        self._host = host
        self._store = store
        self._large_bytes = large_bytes
        self.records_first = RecordsFirst(host, store, large_bytes=large_bytes)
        self.round: _Round | None = None
        self.rounds = 0
        """Rounds walked to the end."""
        self.repairs = 0
        """Diffs received that changed a document."""
        self._serial = 0
        self._inline_bytes = 0  # diffs in the Answers or Fills being built
        self._finishing: dict[int, _Round] = {}  # walked, waiting for their repairs
        self._refreshing = False  # a RefreshDigests is out
        self._fresh = False  # just refreshed: go on without looking again
        self._start_wanted = False
        self._held: wire.MerkleHashes | None = None  # the peer's root, until fresh

    @property
    def idle(self) -> bool:
        """No round walking, waiting to start, or waiting for its repairs."""
        return self.round is None and not self._finishing and not self._start_wanted

    def start(self, now: float) -> None:
        """Start a round (the dialer does), once the tree is fresh."""
        if self._stale():
            self._start_wanted = True
            self._refresh()
            return
        self.round = self._new_round(now)
        salt = self.rounds % 8  # each round compares other slices of the hashes
        (root,) = self._store.merkle_nodes([ROOT], flush=False)
        self._send_round(wire.MerkleHashes(salt, 16, (), wire.merkle_slice(root, salt)))

    def refreshed(self, now: float, *, may_start: bool) -> None:
        """The digests are fresh: start the round that waited, answer the root that did.

        Without looking again: under steady writes some digest is always stale
        by now, and the tree as of the refresh is what the round waited for."""
        self._refreshing = False
        self._fresh = True
        try:
            if self._start_wanted:
                self._start_wanted = False
                if may_start and self.round is None:
                    self.start(now)
            held, self._held = self._held, None
            if held is not None:
                self._on_merkle_hashes(held, now)
        finally:
            self._fresh = False

    def applied(self, intent: ApplyDiffs, count: int) -> None:
        """``count`` of the diffs of ``intent`` changed something."""
        self.repairs += count
        round_ = self.round
        if round_ is None or round_.serial != intent.round:
            round_ = self._finishing.get(intent.round)
        if round_ is None:
            return
        round_.repaired += count
        round_.applying -= 1
        if not round_.applying and self._finishing.pop(round_.serial, None) is not None:
            self._report(round_)

    def receive(self, message: wire.Message, now: float) -> None:
        """A round message from the peer (``MerkleHashes`` ... ``Diffs``)."""
        _HANDLERS[type(message)](self, message, now)

    def _by_records(self, doc_id: str, their_sv: bytes) -> bool:
        """Whether records reach the peer in place of this diff: in flight, or resent now."""
        by_records = doc_id in self._host.in_flight or self.records_first.covers(doc_id, their_sv)
        if by_records and self.round is not None:
            self.round.by_records += 1
        return by_records

    def _stale(self) -> bool:
        return not self._fresh and self._store.stale_digests(1) > 0

    def _refresh(self) -> None:
        if not self._refreshing:
            self._refreshing = True
            self._host._emit(RefreshDigests())

    def _new_round(self, now: float) -> _Round:
        self._serial += 1
        self.records_first.new_round()
        return _Round(started=now, serial=self._serial)

    def _send_round(self, message: wire.Message, *, lane_of: str | None = None) -> None:
        if self.round is not None:
            self.round.messages += 1
        if lane_of is None:
            self._host._send(message)
        else:
            self._host._send_bulk(message, lane_of)

    def _round_for(self, message: wire.Message, now: float) -> _Round:
        """The round ``message`` belongs to; the answering side starts its own on the root."""
        if isinstance(message, wire.MerkleHashes) and not message.parents:
            self.round = self._new_round(now)  # a new round replaces any unfinished one
        elif self.round is None:
            raise RemoteProtocolError(
                f"{type(message).__name__} outside an anti-entropy round",
                code="unexpected_message",
            )
        return self.round

    def _node_hashes(self, nodes: list[int]) -> list[bytes]:
        """Our hashes of tree nodes and quads (a quad's: the XOR of its four nodes')."""
        real = sorted(
            {c for n in nodes for c in (merkle.quad_children(n) if n & merkle.QUAD else (n,))}
        )
        known = dict(zip(real, self._store.merkle_nodes(real, flush=False), strict=True))
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
        if not message.parents:
            if self._host.dialer:
                raise RemoteProtocolError(
                    "a round started by the listening side (only the dialer starts rounds)",
                    code="unexpected_message",
                )
            if self._stale():
                self._held = message  # answered once the digests are fresh
                self._refresh()
                return
        round_ = self._round_for(message, now)
        salt, size = message.salt, wire.MERKLE_HASH_BYTES
        nodes = [ROOT] if not message.parents else []
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
            docs = self._store.leaf_docs(leaf, flush=False)
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
            ours = self._store.leaf_docs(leaf, flush=False)
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
                (doc_id, self._store.diff(doc_id, EMPTY_SV))
                for doc_id, _ in ours
                if doc_id not in matched and not self._by_records(doc_id, EMPTY_SV)
            )
        self._send_diffs(pushes)  # what the peer has no document of
        self._send_round(wire.Wants(tuple(wants)))
        round_.wants.append(meant)
        round_.listed = message.final
        self._maybe_finish_round()

    def _summary(self, doc_id: str) -> tuple[bytes, bytes]:
        """Our state vector of a document and the digest of its delete set."""
        state_vector = self._store.state_vector(doc_id)
        return state_vector, merkle.delete_set_digest(self._store.diff(doc_id, state_vector))

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
        if state_vector is None or self._by_records(doc_id, state_vector):
            return (name, b"", False, ask)
        diff = self._store.diff(doc_id, state_vector)
        return (name, *self._inline(doc_id, diff), ask)

    def _inline(self, doc_id: str, diff: bytes) -> tuple[bytes, bool]:
        """``(diff, False)`` to carry it in the message being built, or ``(b"", True)``
        when it went apart in a ``Diffs``: a large one alone on a bulk lane, or any once
        the message holds CHUNK_BYTES of diffs (so that it stays within the size limit)."""
        if len(diff) >= self._large_bytes:
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
        repairs: list[tuple[str, bytes]] = []
        self._inline_bytes = 0
        for (name, diff, _, ask), want in zip(message.answers, meant, strict=True):
            if not name and want is None:
                raise RemoteProtocolError(
                    "Answers leaves unnamed a document we do not have", code="bad_payload"
                )
            if diff:
                repairs.append((name or want[0] if want else name, diff))
            if ask is not None:
                if name or want is None:
                    raise RemoteProtocolError(
                        f"Answers asks for {name}, which we do not have", code="bad_payload"
                    )
                doc_id, sent = want
                if ask == wire.SAME_STATE_VECTOR and self._holds_all_of_ours(doc_id, diff):
                    fills.append(b"")
                    continue
                theirs = sent if ask == wire.SAME_STATE_VECTOR else ask
                if self._by_records(doc_id, theirs):
                    fills.append(b"")
                    continue
                fill = self._store.diff(doc_id, theirs)
                fills.append(self._inline(doc_id, fill)[0])
        self._apply(round_, repairs)
        if fills:
            self._send_round(wire.Fills(tuple(fills)))
        self._maybe_finish_round()

    def _holds_all_of_ours(self, doc_id: str, diff: bytes) -> bool:
        """Whether the lister, at our state vector, already has all our deletes.

        ``diff`` is what it sent us: with no structs (first byte 0) it is just
        the lister's whole delete set, so if ours merged with it (as it will be
        once the repair is applied) is the same, the lister lacks nothing of
        this document.
        """
        if not diff or diff[0] != 0:
            return False
        state_vector = self._store.state_vector(doc_id)
        try:
            merged = merge_updates(self._store.diff(doc_id, state_vector), diff)
        except ValueError:
            raise RemoteProtocolError(
                f"Answers carries a diff for {doc_id} that does not decode", code="bad_payload"
            ) from None
        return merkle.delete_set_digest(merged) == merkle.delete_set_digest(diff)

    def _on_fills(self, message: wire.Fills, now: float) -> None:
        round_ = self._round_for(message, now)
        asked = _answered(round_.fills, message, "ask")
        if len(message.diffs) != len(asked):
            raise RemoteProtocolError(
                f"Fills has {len(message.diffs)} diffs for {len(asked)} asks", code="bad_payload"
            )
        self._apply(round_, [(d, diff) for d, diff in zip(asked, message.diffs, strict=True)])
        self._maybe_finish_round()

    def _on_diffs(self, message: wire.Diffs, now: float) -> None:
        self._apply(self.round, list(message.docs))

    def _apply(self, round_: _Round | None, docs: list[tuple[str, bytes]]) -> None:
        """Ask for the (non-empty) diffs to be applied, in one intent."""
        docs = [(doc_id, diff) for doc_id, diff in docs if diff]
        if not docs:
            return
        if round_ is not None:
            round_.applying += 1
        self._host._emit(ApplyDiffs(tuple(docs), round_.serial if round_ else 0))

    def _send_diffs(self, diffs: list[tuple[str, bytes]]) -> None:
        """Diffs in messages of about CHUNK_BYTES; a large one alone on a bulk lane."""
        batch: list[tuple[str, bytes]] = []
        size = 0
        for doc_id, data in diffs:
            if len(data) >= self._large_bytes:
                self._send_round(wire.Diffs(((doc_id, data),)), lane_of=doc_id)
                continue
            if batch and size + len(data) > CHUNK_BYTES:
                self._send_round(wire.Diffs(tuple(batch)))
                batch, size = [], 0
            batch.append((doc_id, data))
            size += len(data) + len(doc_id)
        if batch:
            self._send_round(wire.Diffs(tuple(batch)))

    def _maybe_finish_round(self) -> None:
        round_ = self.round
        if (
            round_ is not None
            and round_.listed
            and not round_.lists
            and not round_.wants
            and not round_.fills
        ):
            self._finish_round()

    def _finish_round(self) -> None:
        """The walk is over; the round is reported once its repairs are applied."""
        if self.round is None:
            return
        round_, self.round = self.round, None
        self.rounds += 1
        if round_.applying:
            self._finishing[round_.serial] = round_
        else:
            self._report(round_)

    def _report(self, round_: _Round) -> None:
        assert self._host.peer is not None
        self._host._emit(
            AntiEntropyDone(self._host.peer, round_.repaired, round_.messages, round_.by_records)
        )


_Handler = Callable[[AntiEntropy, wire.Message, float], None]
_HANDLERS: dict[type, _Handler] = {
    wire.MerkleHashes: AntiEntropy._on_merkle_hashes,  # type: ignore[dict-item]
    wire.LeafList: AntiEntropy._on_leaf_list,  # type: ignore[dict-item]
    wire.Wants: AntiEntropy._on_wants,  # type: ignore[dict-item]
    wire.Answers: AntiEntropy._on_answers,  # type: ignore[dict-item]
    wire.Fills: AntiEntropy._on_fills,  # type: ignore[dict-item]
    wire.Diffs: AntiEntropy._on_diffs,  # type: ignore[dict-item]
}
ROUND_MESSAGES = tuple(_HANDLERS)
"""The message types of a round (``Diffs`` also come outside one)."""
