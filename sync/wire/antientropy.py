"""Anti-entropy messages: MerkleHashes, LeafList, Wants, Answers, Fills and Diffs.

A round compares Merkle hashes top-down (``MerkleHashes``), lists the
documents of the leaves that differ (``LeafList``), and trades state vectors
and diffs for the documents that differ (``Wants``, ``Answers``, ``Fills``,
``Diffs``). Hashes and digests travel as short slices (:func:`merkle_slice`);
state vectors travel with their client ids written once per message
(:class:`_ClientTable`), in the encoding of :mod:`crdtdb.yjs` at both ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Self

from crdtdb.yjs import encode_state_vector

from .checks import (
    check_ascending,
    check_bytes,
    check_doc_id,
    check_doc_pairs,
    check_int,
    check_rows,
    check_state_vector,
    check_tuple,
    refuse,
)
from .codec import MAX_U32, Message, Reader, Writer

__all__ = [
    "FANOUTS",
    "HASH_BYTES",
    "ID_CHECK_BYTES",
    "ID_HASH_BYTES",
    "LEAF_ENTRY_BYTES",
    "MERKLE_HASH_BYTES",
    "SAME_STATE_VECTOR",
    "Answers",
    "Diffs",
    "Fills",
    "LeafList",
    "MerkleHashes",
    "Wants",
    "merkle_slice",
]

HASH_BYTES: Final = 32
MERKLE_HASH_BYTES: Final = 3
"""Tree hashes, document digests and delete-set digests travel truncated to this many
bytes. A node or document that differs is missed with probability 2**-24 per round
(about 1 round in 6,000 when 1,000 documents differ), and then caught by a later
round, which compares another slice."""
ID_HASH_BYTES: Final = 2
"""A document in a ``LeafList`` is named by this many bytes of its id's hash."""
ID_CHECK_BYTES: Final = 4
"""The ``Wants`` naming a listed document back carry this many bytes of another hash
of the id that they mean, so that a clash of the short id hashes never applies one
document's diff to another (it would then take 2**-32 more)."""
FANOUTS: Final = (4, 16)
LEAF_ENTRY_BYTES: Final = ID_HASH_BYTES + MERKLE_HASH_BYTES
SAME_STATE_VECTOR: Final = b""
"""In an ``Answers`` entry's ask: "my state vector is the one you sent"."""

_HAS_ID, _HAS_DIFF, _APART, _ASKS, _ASKS_SAME = 1, 2, 4, 8, 16
_DOC_MIN_BYTES = 4  # a doc id is at least "c/k" behind its length byte


def merkle_slice(digest: bytes, salt: int) -> bytes:
    """The bytes of a 32-byte hash or digest that a round with ``salt`` compares."""
    offset = MERKLE_HASH_BYTES * (salt % (HASH_BYTES // MERKLE_HASH_BYTES))
    return digest[offset : offset + MERKLE_HASH_BYTES]


@dataclass(frozen=True, slots=True)
class MerkleHashes(Message):
    """The sender's hashes of some Merkle nodes, for the receiver to compare with its own.

    With no ``parents`` the one node is the root. Otherwise the nodes are, for
    each parent in order, its 16 children (``fanout`` 16) or its 4 quads
    (``fanout`` 4; a quad parent always has ``fanout`` 4: its 4 nodes), so no
    node ids travel but the parents', as gaps. Each hash is the
    :func:`merkle_slice` of the node's hash for ``salt``.
    """

    TYPE = 0x26
    salt: int
    fanout: int
    parents: tuple[int, ...]
    hashes: bytes

    def __post_init__(self) -> None:
        check_int("salt", self.salt, low=0, high=255)
        if self.fanout not in FANOUTS:
            refuse(f"fanout must be 4 or 16, got {self.fanout!r}")
        check_ascending("parents", self.parents, MAX_U32)
        check_bytes("hashes", self.hashes)
        count = self.fanout * len(self.parents) if self.parents else 1
        if len(self.hashes) != MERKLE_HASH_BYTES * count:
            refuse(f"MerkleHashes carries {len(self.hashes)} hash bytes for {count} nodes")

    def _write(self, writer: Writer) -> None:
        writer.varuint(self.salt)
        writer.varuint(self.fanout)
        writer.ascending(self.parents)
        writer.blob(self.hashes)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(reader.varuint(), reader.varuint(), reader.ascending(MAX_U32), reader.blob())


@dataclass(frozen=True, slots=True)
class LeafList(Message):
    """The sender's documents in some Merkle leaves found different, for the receiver to compare.

    ``leaves`` pairs each leaf (ascending) with its documents' entries, each
    ``ID_HASH_BYTES`` of the id's hash and the :func:`merkle_slice` of the
    digest, concatenated in the sender's order. The receiver answers each
    ``LeafList`` with one ``Wants`` that names entries by their position in the
    message (counting across its leaves). ``final`` marks the last of a round's
    lists; a round with no differing leaf sends just one, with no leaf.
    """

    TYPE = 0x23
    salt: int
    final: bool
    leaves: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        check_int("salt", self.salt, low=0, high=255)
        if not isinstance(self.final, bool):
            refuse(f"final must be a bool, got {type(self.final).__name__}")
        rows = check_rows("leaves", self.leaves, 2)
        check_ascending("leaf numbers", tuple(row[0] for row in rows), MAX_U32)
        for leaf, entries in rows:
            check_bytes(f"entries of leaf {leaf}", entries)
            assert isinstance(entries, bytes)
            if len(entries) % LEAF_ENTRY_BYTES:
                refuse(f"entries of leaf {leaf} are not {LEAF_ENTRY_BYTES} bytes each")

    def entries(self) -> int:
        return sum(len(data) // LEAF_ENTRY_BYTES for _, data in self.leaves)

    def _write(self, writer: Writer) -> None:
        writer.varuint(self.salt)
        writer.varuint(int(self.final))
        writer.ascending(tuple(leaf for leaf, _ in self.leaves))
        for _, entries in self.leaves:
            writer.blob(entries)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        salt, final = reader.varuint(), reader.varuint()
        if final > 1:
            reader.fail(f"final must be 0 or 1, got {final}")
        leaves = reader.ascending(MAX_U32)
        return cls(salt, bool(final), tuple((leaf, reader.blob()) for leaf in leaves))


class _ClientTable:
    """The client ids of a message's state vectors, each written once.

    A state vector then travels as its length + 1 (0: none) and (client's
    index in the table, clock) pairs: client ids are random 53-bit numbers,
    8 bytes each, shared by most documents of a message.
    """

    def __init__(self, state_vectors: list[bytes]) -> None:
        self.pairs = {sv: check_state_vector("state vector", sv) for sv in state_vectors if sv}
        self.index: dict[int, int] = {}
        for pairs in self.pairs.values():
            for client, _ in pairs:
                self.index.setdefault(client, len(self.index))

    def write_table(self, writer: Writer) -> None:
        writer.varuint(len(self.index))
        for client in self.index:
            writer.varuint(client)

    def write(self, writer: Writer, state_vector: bytes) -> None:
        if not state_vector:
            writer.varuint(0)
            return
        pairs = self.pairs[state_vector]
        writer.varuint(len(pairs) + 1)
        for client, clock in pairs:
            writer.varuint(self.index[client])
            writer.varuint(clock)

    @staticmethod
    def read_table(reader: Reader) -> list[int]:
        return [reader.varuint() for _ in range(reader.count(1))]

    @staticmethod
    def read(reader: Reader, table: list[int]) -> bytes:
        """A state vector back in Yjs's encoding (empty bytes: none)."""
        size = reader.varuint()
        if not size:
            return b""
        if (size - 1) * 2 > reader.remaining():
            reader.fail(
                f"claims a state vector of {size - 1} clients, {reader.remaining()} bytes left"
            )
        pairs = []
        for _ in range(size - 1):
            index = reader.varuint()
            if index >= len(table):
                reader.fail(f"client index {index} outside a table of {len(table)}")
            pairs.append((table[index], reader.varuint()))
        return encode_state_vector(pairs)


@dataclass(frozen=True, slots=True)
class Wants(Message):
    """The answer to one ``LeafList``: the listed documents that differ here.

    Per entry: its position in that list (ascending); then the sender's state
    vector of the document, or empty bytes if it has no such document; with a
    state vector, the id check (:func:`merkle_slice` of the id's check hash)
    and the slice of the sender's delete-set digest. The lister answers with
    one ``Answers``, entry for entry.
    """

    TYPE = 0x24
    wants: tuple[tuple[int, bytes, bytes, bytes], ...]

    def __post_init__(self) -> None:
        rows = check_rows("wants", self.wants, 4)
        check_ascending("want positions", tuple(row[0] for row in rows), MAX_U32)
        for position, state_vector, check, deletes in rows:
            check_bytes(f"state vector of entry {position}", state_vector)
            assert isinstance(state_vector, bytes)
            if state_vector:
                check_state_vector(f"entry {position}", state_vector)
            held = bool(state_vector)
            check_bytes(f"id check of entry {position}", check, ID_CHECK_BYTES * held)
            check_bytes(f"delete-set slice of entry {position}", deletes, MERKLE_HASH_BYTES * held)

    def _write(self, writer: Writer) -> None:
        writer.ascending(tuple(row[0] for row in self.wants))
        clients = _ClientTable([row[1] for row in self.wants])
        clients.write_table(writer)
        for _, state_vector, check, deletes in self.wants:
            clients.write(writer, state_vector)
            writer.raw(check)
            writer.raw(deletes)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        positions = reader.ascending(MAX_U32)
        table = _ClientTable.read_table(reader)
        wants = []
        for position in positions:
            state_vector = _ClientTable.read(reader, table)
            held = bool(state_vector)
            check = reader.take(ID_CHECK_BYTES * held)
            wants.append((position, state_vector, check, reader.take(MERKLE_HASH_BYTES * held)))
        return cls(tuple(wants))


@dataclass(frozen=True, slots=True)
class Answers(Message):
    """The lister's answer to one ``Wants``, entry for entry.

    Per entry: the document id (empty unless the asker has no such document,
    or its id check did not match: then this is the lister's document of that
    name); the diff the asker's state vector lacks (empty bytes for none);
    ``apart``: the diff comes apart, in a ``Diffs`` by name (on a bulk lane
    if large, or once the message holds enough diffs); and ``ask``: None, or
    the lister's state vector (or ``SAME_STATE_VECTOR``) when it lacks some of
    the asker's document. The
    asker answers the asks with one ``Fills``.
    """

    TYPE = 0x27
    answers: tuple[tuple[str, bytes, bool, bytes | None], ...]

    def __post_init__(self) -> None:
        for doc_id, diff, apart, ask in check_rows("answers", self.answers, 4):
            if doc_id != "":
                check_doc_id(doc_id)
            check_bytes("diff", diff)
            if not isinstance(apart, bool):
                refuse(f"apart must be a bool, got {type(apart).__name__}")
            if apart and diff:
                refuse("a diff sent apart carries no bytes here")
            if ask is not None:
                check_bytes("ask", ask)
                assert isinstance(ask, bytes)
                if ask:
                    check_state_vector("ask", ask)

    def _write(self, writer: Writer) -> None:
        clients = _ClientTable([ask for *_, ask in self.answers if ask])
        clients.write_table(writer)
        writer.varuint(len(self.answers))
        for doc_id, diff, apart, ask in self.answers:
            flags = (
                (_HAS_ID if doc_id else 0)
                | (_HAS_DIFF if diff else 0)
                | (_APART if apart else 0)
                | (_ASKS if ask is not None else 0)
                | (_ASKS_SAME if ask == SAME_STATE_VECTOR else 0)
            )
            writer.varuint(flags)
            if doc_id:
                writer.text(doc_id)
            if diff:
                writer.blob(diff)
            if ask:
                clients.write(writer, ask)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        table = _ClientTable.read_table(reader)
        answers = []
        for _ in range(reader.count(1)):
            flags = reader.varuint()
            if flags >= 32 or (flags & _ASKS_SAME and not flags & _ASKS):
                reader.fail(f"unknown answer flags {flags}")
            doc_id = reader.text() if flags & _HAS_ID else ""
            diff = reader.blob() if flags & _HAS_DIFF else b""
            if (flags & _HAS_ID and not doc_id) or (flags & _HAS_DIFF and not diff):
                reader.fail("an answer field flagged present is empty")
            ask: bytes | None = None
            if flags & _ASKS:
                ask = SAME_STATE_VECTOR if flags & _ASKS_SAME else _ClientTable.read(reader, table)
                if not flags & _ASKS_SAME and not ask:
                    reader.fail("an answer's state vector is empty")
            answers.append((doc_id, diff, bool(flags & _APART), ask))
        return cls(tuple(answers))


@dataclass(frozen=True, slots=True)
class Fills(Message):
    """The asker's diffs for the asks of one ``Answers``, ask for ask (in its order).

    Empty bytes: nothing to send, or the diff is large and comes in a ``Diffs``
    on a bulk lane.
    """

    TYPE = 0x28
    diffs: tuple[bytes, ...]

    def __post_init__(self) -> None:
        for diff in check_tuple("diffs", self.diffs):
            check_bytes("diff", diff)

    def _write(self, writer: Writer) -> None:
        writer.varuint(len(self.diffs))
        for diff in self.diffs:
            writer.blob(diff)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(tuple(reader.blob() for _ in range(reader.count(1))))


@dataclass(frozen=True, slots=True)
class Diffs(Message):
    """Per document, a pycrdt update holding what the peer's state vector lacked."""

    TYPE = 0x25
    docs: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        check_doc_pairs("update", self.docs)

    def _write(self, writer: Writer) -> None:
        writer.varuint(len(self.docs))
        for doc_id, data in self.docs:
            writer.text(doc_id)
            writer.blob(data)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        count = reader.count(_DOC_MIN_BYTES + 1)
        return cls(tuple((reader.text(), reader.blob()) for _ in range(count)))
