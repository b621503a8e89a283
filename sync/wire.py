"""The replication wire protocol: versioned, length-prefixed messages, pure encode/decode.

No I/O and no clock here: :func:`encode` turns a message into bytes, and a
:class:`FrameDecoder` turns bytes, fed in chunks of any size, back into
messages. Anything malformed raises a typed
:class:`~crdtdb.sync.errors.RemoteProtocolError` (never another exception);
asking to send something invalid raises
:class:`~crdtdb.sync.errors.LocalProtocolError`.

Frame (8-byte header, then the payload)::

    offset  size  field
    0       2     magic b"CD"
    2       1     frame version (FRAME_VERSION = 1)
    3       1     message type
    4       4     payload length, u32 big-endian, at most max_message_bytes
    8       n     payload

A connection carries a main lane (every message, at most 16 MiB,
``MAX_MESSAGE_BYTES``) and a few bulk lanes, each its own QUIC stream, that
carry only ``Records`` and ``Diffs`` holding one large document, at most
256 MiB (``MAX_BULK_MESSAGE_BYTES``), so that one large document never holds
up the others (see :mod:`.session`).

The decoder checks the header as soon as its bytes arrive, so a bad magic,
version, type or length is refused before any of the payload is buffered.
The header version changes only if this frame layout changes. The
messages after ``Hello``, their encodings and what they mean are versioned
by ``Hello.protocol_version`` (see :func:`check_version`), so ``Hello``'s
layout is frozen across versions. Version 3 lists leaves by id and digest
slices and names documents by position (``LeafList``, ``Wants``, ``Answers``,
``Fills``); version 4 adds each record's kind, so that a region can tell an
edit from a repair when it checks who writes under which Yjs client id.
Nodes of versions 1 to 3 are refused with a message to upgrade.

Payload fields:

- ``varuint``: unsigned LEB128 in its minimal form, below 2**64 (counts, seqs).
- ``u32``/``u64``: big-endian, fixed width (Merkle node ids, HLCs).
- ``bytes``: varuint length, then the bytes. ``str``: ``bytes`` holding UTF-8.
- ``hash``: ``bytes`` of exactly 32 (a Merkle node hash or a document digest).
- a tuple: varuint count, then the items. A count the remaining payload
  cannot hold is refused before anything is allocated.

Every field is checked when a message is built, whether by the caller or by
the decoder: region names and document ids as :mod:`crdtdb.ids` says, HLCs
and seqs in 1..2**63-1 (0 is allowed only where it means "nothing yet": the
contiguous seq and HLC of ``Ack`` and ``Frontier``). Update, state vector and
diff bytes are carried, not parsed: the store checks them when it applies
them.

Messages (type byte, name, payload):

====  ============  =========================================================
0x01  Hello         protocol_version varuint, region str, nonce bytes(32)
0x02  Auth          region str, certificate bytes (PEM), signature bytes
0x03  AuthOk        region str
0x04  Error         code str, message str
0x10  Records       count, then per record: doc_id str, hlc u64, origin str,
                    seq varuint, update bytes (non-empty), kind varuint
                    (0 write, 1 repair, 2 unchecked; see crdtdb.records)
0x11  Ack           origin str, seq varuint (highest contiguous held, may be 0)
0x12  Heartbeat     hlc u64
0x13  Frontier      count, then per origin: region str, seq varuint, hlc u64;
                    then frontier_hlc u64 (the sender's min over origins)
0x14  Clocks        count, then per region: region str, hlc u64
0x26  MerkleHashes  salt varuint, fanout varuint (4 or 16), count, then each
                    parent node id as the gap from the previous one
                    (varuint); then hashes bytes: 3 (MERKLE_HASH_BYTES) per
                    node, the root's with no parents, else per parent its 16
                    children or its 4 quads (a quad's: its 4 nodes)
0x23  LeafList      salt varuint, final varuint (0 or 1), count, then each
                    leaf as a gap; then per leaf: entries bytes, 5 per
                    document (2-byte id hash slice, 3-byte digest slice)
0x24  Wants         count, then each list position as a gap; then a client
                    table (count, client id varuint each); then per entry:
                    a state vector as its length + 1 (0: no such document)
                    and (client's index in the table, clock) varuint pairs,
                    and with one the 4-byte id check and the 3-byte delete-set
                    slice
0x27  Answers       a client table as in Wants; count, then per entry: flags
                    varuint (1 id, 2 diff, 4 diff sent apart, 8 ask, 16 ask
                    with "same state vector"), then doc_id str, diff bytes,
                    state vector (as in Wants), each if flagged
0x28  Fills         count, then per ask: diff bytes (empty: none here)
0x25  Diffs         count, then per document: doc_id str, update bytes
====  ============  =========================================================
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Final, NoReturn, Self

from crdtdb.errors import InvalidRecordError
from crdtdb.hlc import Hlc
from crdtdb.ids import validate_doc_id, validate_region
from crdtdb.records import KINDS, UpdateRecord

from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "FRAME_VERSION",
    "HASH_BYTES",
    "HEADER_BYTES",
    "MAGIC",
    "MAX_BULK_MESSAGE_BYTES",
    "MAX_MESSAGE_BYTES",
    "MESSAGE_TYPES",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "Answers",
    "Auth",
    "AuthOk",
    "Clocks",
    "Diffs",
    "Error",
    "Fills",
    "FrameDecoder",
    "Frontier",
    "Heartbeat",
    "Hello",
    "LeafList",
    "MerkleHashes",
    "Message",
    "Records",
    "Wants",
    "check_version",
    "decode_frame",
    "encode",
    "error_message",
]

MAGIC: Final = b"CD"
FRAME_VERSION: Final = 1
PROTOCOL_VERSION: Final = 4
HEADER_BYTES: Final = 8
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
MAX_BULK_MESSAGE_BYTES: Final = 256 * 1024 * 1024
"""The largest message on a bulk lane: one document's update or diff."""
HASH_BYTES: Final = 32
NONCE_BYTES: Final = 32

MAX_U32: Final = (1 << 32) - 1
MAX_INT63: Final = (1 << 63) - 1  # what SQLite INTEGER holds
_HEADER = struct.Struct(">2sBBI")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)


# ------------------------------------------------------------------ payload codec


class Writer:
    """Appends payload fields to a buffer (internal; the inverse of :class:`Reader`)."""

    __slots__ = ("_out",)

    def __init__(self) -> None:
        self._out = bytearray()

    def varuint(self, value: int) -> None:
        while value >= 0x80:
            self._out.append((value & 0x7F) | 0x80)
            value >>= 7
        self._out.append(value)

    def u32(self, value: int) -> None:
        self._out += _U32.pack(value)

    def u64(self, value: int) -> None:
        self._out += _U64.pack(value)

    def blob(self, data: bytes) -> None:
        self.varuint(len(data))
        self._out += data

    def raw(self, data: bytes) -> None:
        """Bytes of a width both sides know, with no length."""
        self._out += data

    def text(self, value: str) -> None:
        self.blob(value.encode("utf-8"))

    def getvalue(self) -> bytes:
        return bytes(self._out)


class Reader:
    """Reads payload fields, refusing anything truncated or malformed (internal)."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def fail(self, problem: str) -> NoReturn:
        raise RemoteProtocolError(
            f"malformed {self._what} payload at byte {self._pos}: {problem}", code="bad_payload"
        )

    def take(self, size: int) -> bytes:
        start, end = self._pos, self._pos + size
        if end > len(self._data):
            self.fail(f"truncated: needs {size} bytes, {self.remaining()} left")
        self._pos = end
        return self._data[start:end]

    def varuint(self) -> int:
        pos = self._pos
        if pos < len(self._data) and self._data[pos] < 0x80:  # the common one-byte case
            self._pos = pos + 1
            return self._data[pos]
        return self._long_varuint()

    def _long_varuint(self) -> int:
        value = shift = 0
        for index in range(10):  # 10 LEB128 bytes hold 64 bits
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return self._minimal(value, byte, index)
        self.fail("varuint longer than 10 bytes")

    def _minimal(self, value: int, last: int, index: int) -> int:
        if index and not last:
            self.fail("varuint not in its shortest form")
        if value > (1 << 64) - 1:
            self.fail("varuint above 2**64-1")
        return value

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def blob(self) -> bytes:
        return self.take(self.varuint())

    def text(self) -> str:
        data = self.blob()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.fail(f"text is not valid UTF-8 ({exc.reason} at byte {exc.start})")

    def count(self, item_min_bytes: int) -> int:
        """A tuple's length, refused if the rest of the payload cannot hold that many items."""
        count = self.varuint()
        if count * item_min_bytes > self.remaining():
            self.fail(
                f"claims {count} items of at least {item_min_bytes} bytes each,"
                f" only {self.remaining()} bytes left"
            )
        return count

    def expect_end(self) -> None:
        if self.remaining():
            self.fail(f"{self.remaining()} trailing bytes after the last field")


# ---------------------------------------------------------------- field checks


def _refuse(problem: str) -> NoReturn:
    raise LocalProtocolError(problem, code="bad_payload")


def _check_int(name: str, value: object, low: int = 1, high: int = MAX_INT63) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _refuse(f"{name} must be an int in {low}..{high}, got {value!r}")


def _check_bytes(name: str, value: object, size: int | None = None) -> None:
    if not isinstance(value, bytes):
        _refuse(f"{name} must be bytes, got {type(value).__name__}")
    if size is not None and len(value) != size:
        _refuse(f"{name} must be {size} bytes, got {len(value)}")


def _check_region(name: str, value: object) -> None:
    try:
        validate_region(value)
    except ValueError as exc:
        _refuse(f"{name}: {exc}")


def _check_doc_id(value: object) -> None:
    try:
        validate_doc_id(value)
    except ValueError as exc:
        _refuse(str(exc))


def _check_tuple(name: str, value: object) -> tuple[object, ...]:
    if not isinstance(value, tuple):
        _refuse(f"{name} must be a tuple, got {type(value).__name__}")
    return value


def _check_rows(name: str, value: object, width: int) -> tuple[tuple[object, ...], ...]:
    """``value`` as a tuple of tuples of ``width`` items each."""
    rows = _check_tuple(name, value)
    for row in rows:
        if not isinstance(row, tuple) or len(row) != width:
            _refuse(f"each item of {name} must be a tuple of {width}, got {row!r:.80}")
    return rows  # type: ignore[return-value]  # each row was checked just above


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        _refuse(f"{name} must be a str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _refuse(f"{name} is not valid Unicode text: {value!r:.80}")


def _check_record(record: object) -> None:
    if not isinstance(record, UpdateRecord):
        _refuse(f"records must hold UpdateRecord, got {type(record).__name__}")
    try:
        record.validated()
    except InvalidRecordError as exc:
        _refuse(str(exc))


def _check_doc_pairs(name: str, docs: object, size: int | None = None) -> None:
    for doc_id, data in _check_rows(name, docs, 2):
        _check_doc_id(doc_id)
        _check_bytes(f"{name} of {doc_id}", data, size)


# -------------------------------------------------------------------- messages


class Message:
    """Base of the wire messages: frozen slotted dataclasses with a type byte and pure codecs.

    Subclasses check their fields in ``__post_init__`` (raising
    :class:`LocalProtocolError`) and implement ``_write`` and ``_read``;
    :meth:`decode_payload` turns a refusal of decoded fields into a
    :class:`RemoteProtocolError`, because then the peer is to blame.
    """

    __slots__ = ()
    TYPE: ClassVar[int]

    def encode_payload(self) -> bytes:
        writer = Writer()
        self._write(writer)
        return writer.getvalue()

    @classmethod
    def decode_payload(cls, data: bytes) -> Self:
        reader = Reader(data, cls.__name__)
        try:
            message = cls._read(reader)
        except LocalProtocolError as exc:
            raise RemoteProtocolError(
                f"invalid {cls.__name__}: {exc}", code="bad_payload"
            ) from None
        reader.expect_end()
        return message

    def _write(self, writer: Writer) -> None:
        raise NotImplementedError

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """The first message of each side: the protocol version it speaks, its region, a nonce.

    ``nonce`` is 32 fresh random bytes from the caller; the peer's ``Auth``
    signs both nonces, which binds the proof to this connection.
    """

    TYPE = 0x01
    protocol_version: int
    region: str
    nonce: bytes

    def __post_init__(self) -> None:
        _check_int("protocol_version", self.protocol_version, high=MAX_U32)
        _check_region("region", self.region)
        _check_bytes("nonce", self.nonce, NONCE_BYTES)

    def _write(self, writer: Writer) -> None:
        writer.varuint(self.protocol_version)
        writer.text(self.region)
        writer.blob(self.nonce)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(reader.varuint(), reader.text(), reader.blob())


@dataclass(frozen=True, slots=True)
class Auth(Message):
    """The dialing side's proof of identity: its certificate (PEM) and a signature."""

    TYPE = 0x02
    region: str
    certificate: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_region("region", self.region)
        _check_bytes("certificate", self.certificate)
        _check_bytes("signature", self.signature)
        if not self.certificate or not self.signature:
            _refuse("Auth needs a certificate and a signature, got an empty one")

    def _write(self, writer: Writer) -> None:
        writer.text(self.region)
        writer.blob(self.certificate)
        writer.blob(self.signature)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(reader.text(), reader.blob(), reader.blob())


@dataclass(frozen=True, slots=True)
class AuthOk(Message):
    """The listening side accepted the proof; replication may start."""

    TYPE = 0x03
    region: str

    def __post_init__(self) -> None:
        _check_region("region", self.region)

    def _write(self, writer: Writer) -> None:
        writer.text(self.region)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(reader.text())


@dataclass(frozen=True, slots=True)
class Error(Message):
    """A refusal: a stable ``code`` (``snake_case``) and a message for the operator.

    Codes the receiver does not know are still accepted: a newer peer may
    have more of them.
    """

    TYPE = 0x04
    code: str
    message: str

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not _ERROR_CODE.fullmatch(self.code):
            _refuse(f"error code must be 1-64 of a-z, 0-9, '_', got {self.code!r:.80}")
        _check_text("message", self.message)

    def _write(self, writer: Writer) -> None:
        writer.text(self.code)
        writer.text(self.message)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(reader.text(), reader.text())


_RECORD_MIN_BYTES = 4 + 8 + 2 + 1 + 2 + 1  # doc_id "c/k", hlc, origin, seq, update, kind


@dataclass(frozen=True, slots=True)
class Records(Message):
    """A batch of log records pushed to the peer (any origins, in seq order per origin)."""

    TYPE = 0x10
    records: tuple[UpdateRecord, ...]

    def __post_init__(self) -> None:
        for record in _check_tuple("records", self.records):
            _check_record(record)

    def _write(self, writer: Writer) -> None:
        writer.varuint(len(self.records))
        for record in self.records:
            writer.text(record.doc_id)
            writer.u64(record.hlc)
            writer.text(record.origin)
            writer.varuint(record.seq)
            writer.blob(record.update)
            writer.varuint(record.kind)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        count = reader.count(_RECORD_MIN_BYTES)
        return cls(tuple(_read_record(reader) for _ in range(count)))


def _read_record(reader: Reader) -> UpdateRecord:
    return UpdateRecord(
        doc_id=reader.text(),
        hlc=int.__new__(Hlc, reader.u64()),  # a u64 is a valid HLC: no checks to repeat
        origin=reader.text(),
        seq=reader.varuint(),
        update=reader.blob(),
        kind=_read_kind(reader),
    )


def _read_kind(reader: Reader) -> int:
    kind = reader.varuint()
    if kind not in KINDS:
        reader.fail(f"unknown record kind {kind} (0 write, 1 repair, 2 unchecked)")
    return kind


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """The highest contiguous seq of ``origin`` the sender now holds (0: none yet)."""

    TYPE = 0x11
    origin: str
    seq: int

    def __post_init__(self) -> None:
        _check_region("origin", self.origin)
        _check_int("seq", self.seq, low=0)

    def _write(self, writer: Writer) -> None:
        writer.text(self.origin)
        writer.varuint(self.seq)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(reader.text(), reader.varuint())


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """An idle origin's clock: it will send nothing with an HLC at or below ``hlc``."""

    TYPE = 0x12
    hlc: int

    def __post_init__(self) -> None:
        _check_int("hlc", self.hlc)

    def _write(self, writer: Writer) -> None:
        writer.u64(self.hlc)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(Hlc(reader.u64()))


_FRONTIER_ENTRY_MIN_BYTES = 2 + 1 + 8  # region, seq, hlc


@dataclass(frozen=True, slots=True)
class Frontier(Message):
    """What the sender holds: per origin ``(region, contiguous seq, contiguous hlc)``.

    ``frontier_hlc`` is the sender's own ``C_X`` (the min over origins); 0 in
    any HLC or seq means "nothing yet". One entry per origin.
    """

    TYPE = 0x13
    complete: tuple[tuple[str, int, int], ...]
    frontier_hlc: int

    def __post_init__(self) -> None:
        for region, seq, hlc in _check_rows("complete", self.complete, 3):
            _check_region("origin", region)
            _check_int(f"contiguous seq of {region}", seq, low=0)
            _check_int(f"contiguous hlc of {region}", hlc, low=0)
        if len({entry[0] for entry in self.complete}) != len(self.complete):
            _refuse("Frontier lists an origin more than once")
        _check_int("frontier_hlc", self.frontier_hlc, low=0)

    def _write(self, writer: Writer) -> None:
        writer.varuint(len(self.complete))
        for region, seq, hlc in self.complete:
            writer.text(region)
            writer.varuint(seq)
            writer.u64(hlc)
        writer.u64(self.frontier_hlc)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        count = reader.count(_FRONTIER_ENTRY_MIN_BYTES)
        complete = tuple((reader.text(), reader.varuint(), Hlc(reader.u64())) for _ in range(count))
        return cls(complete, Hlc(reader.u64()))


@dataclass(frozen=True, slots=True)
class Clocks(Message):
    """Gossip of ``C_R`` per region R: R holds every update with an HLC at or below it.

    Each value only grows, so receivers keep the maximum per region; the global
    frontier is the minimum over all regions heard of.
    """

    TYPE = 0x14
    regions: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        for region, hlc in _check_rows("regions", self.regions, 2):
            _check_region("region", region)
            _check_int(f"clock of {region}", hlc, low=0)
        if len({entry[0] for entry in self.regions}) != len(self.regions):
            _refuse("Clocks lists a region more than once")

    def _write(self, writer: Writer) -> None:
        writer.varuint(len(self.regions))
        for region, hlc in self.regions:
            writer.text(region)
            writer.u64(hlc)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        count = reader.count(2 + 8)
        return cls(tuple((reader.text(), Hlc(reader.u64())) for _ in range(count)))


MERKLE_HASH_BYTES = 3
"""Tree hashes, document digests and delete-set digests travel truncated to this many
bytes. A node or document that differs is missed with probability 2**-24 per round
(about 1 round in 6,000 when 1,000 documents differ), and then caught by a later
round, which compares another slice."""
ID_HASH_BYTES = 2
"""A document in a ``LeafList`` is named by this many bytes of its id's hash."""
ID_CHECK_BYTES = 4
"""The ``Wants`` naming a listed document back carry this many bytes of another hash
of the id that they mean, so that a clash of the short id hashes never applies one
document's diff to another (it would then take 2**-32 more)."""
FANOUTS = (4, 16)


def merkle_slice(digest: bytes, salt: int) -> bytes:
    """The bytes of a 32-byte hash or digest that a round with ``salt`` compares."""
    offset = MERKLE_HASH_BYTES * (salt % (HASH_BYTES // MERKLE_HASH_BYTES))
    return digest[offset : offset + MERKLE_HASH_BYTES]


def _check_ascending(name: str, values: object, high: int) -> None:
    previous = -1
    for value in _check_tuple(name, values):
        _check_int(f"each of {name}", value, low=0, high=high)
        assert isinstance(value, int)
        if value <= previous:
            _refuse(f"{name} must be strictly ascending, got {value} after {previous}")
        previous = value


def _write_ascending(writer: Writer, values: tuple[int, ...]) -> None:
    """Count, then the first value and each gap to the next (varuints)."""
    writer.varuint(len(values))
    previous = -1
    for value in values:
        writer.varuint(value - previous - 1)
        previous = value


def _read_ascending(reader: Reader, high: int) -> tuple[int, ...]:
    values = []
    previous = -1
    for _ in range(reader.count(1)):
        previous += reader.varuint() + 1
        if previous > high:
            reader.fail(f"value {previous} above {high}")
        values.append(previous)
    return tuple(values)


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
        _check_int("salt", self.salt, low=0, high=255)
        if self.fanout not in FANOUTS:
            _refuse(f"fanout must be 4 or 16, got {self.fanout!r}")
        _check_ascending("parents", self.parents, MAX_U32)
        _check_bytes("hashes", self.hashes)
        count = self.fanout * len(self.parents) if self.parents else 1
        if len(self.hashes) != MERKLE_HASH_BYTES * count:
            _refuse(f"MerkleHashes carries {len(self.hashes)} hash bytes for {count} nodes")

    def _write(self, writer: Writer) -> None:
        writer.varuint(self.salt)
        writer.varuint(self.fanout)
        _write_ascending(writer, self.parents)
        writer.blob(self.hashes)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(
            reader.varuint(), reader.varuint(), _read_ascending(reader, MAX_U32), reader.blob()
        )


LEAF_ENTRY_BYTES = ID_HASH_BYTES + MERKLE_HASH_BYTES


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
        _check_int("salt", self.salt, low=0, high=255)
        if not isinstance(self.final, bool):
            _refuse(f"final must be a bool, got {type(self.final).__name__}")
        rows = _check_rows("leaves", self.leaves, 2)
        _check_ascending("leaf numbers", tuple(row[0] for row in rows), MAX_U32)
        for leaf, entries in rows:
            _check_bytes(f"entries of leaf {leaf}", entries)
            assert isinstance(entries, bytes)
            if len(entries) % LEAF_ENTRY_BYTES:
                _refuse(f"entries of leaf {leaf} are not {LEAF_ENTRY_BYTES} bytes each")

    def entries(self) -> int:
        return sum(len(data) // LEAF_ENTRY_BYTES for _, data in self.leaves)

    def _write(self, writer: Writer) -> None:
        writer.varuint(self.salt)
        writer.varuint(int(self.final))
        _write_ascending(writer, tuple(leaf for leaf, _ in self.leaves))
        for _, entries in self.leaves:
            writer.blob(entries)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        salt, final = reader.varuint(), reader.varuint()
        if final > 1:
            reader.fail(f"final must be 0 or 1, got {final}")
        leaves = _read_ascending(reader, MAX_U32)
        return cls(salt, bool(final), tuple((leaf, reader.blob()) for leaf in leaves))


def _sv_pairs(state_vector: bytes) -> list[tuple[int, int]]:
    """The (client, clock) pairs of a state vector in Yjs's encoding; refused unless it
    decodes whole, in shortest form (as Yrs writes it), so that it re-encodes exactly."""
    reader = Reader(state_vector, "state vector")
    try:
        pairs = [(reader.varuint(), reader.varuint()) for _ in range(reader.count(2))]
        reader.expect_end()
    except RemoteProtocolError as exc:
        _refuse(f"not a state vector: {exc}")
    return pairs


class _Clients:
    """The client ids of a message's state vectors, each written once.

    A state vector then travels as its length + 1 (0: none) and (client's
    index in the table, clock) pairs: client ids are random 53-bit numbers,
    8 bytes each, shared by most documents of a message.
    """

    def __init__(self, state_vectors: list[bytes]) -> None:
        self.pairs = {sv: _sv_pairs(sv) for sv in state_vectors if sv}
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
    def read_table(reader: Reader) -> list[bytes]:
        """The table's client ids, each already in its varuint encoding."""
        table = []
        for _ in range(reader.count(1)):
            encoded = Writer()
            encoded.varuint(reader.varuint())
            table.append(encoded.getvalue())
        return table

    @staticmethod
    def read(reader: Reader, table: list[bytes]) -> bytes:
        """A state vector back in Yjs's encoding (empty bytes: none)."""
        size = reader.varuint()
        if not size:
            return b""
        if (size - 1) * 2 > reader.remaining():
            reader.fail(
                f"claims a state vector of {size - 1} clients, {reader.remaining()} bytes left"
            )
        out = Writer()
        out.varuint(size - 1)
        for _ in range(size - 1):
            index = reader.varuint()
            if index >= len(table):
                reader.fail(f"client index {index} outside a table of {len(table)}")
            out.raw(table[index])
            out.varuint(reader.varuint())
        return out.getvalue()


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
        rows = _check_rows("wants", self.wants, 4)
        _check_ascending("want positions", tuple(row[0] for row in rows), MAX_U32)
        for position, state_vector, check, deletes in rows:
            _check_bytes(f"state vector of entry {position}", state_vector)
            assert isinstance(state_vector, bytes)
            if state_vector:
                _sv_pairs(state_vector)
            held = bool(state_vector)
            _check_bytes(f"id check of entry {position}", check, ID_CHECK_BYTES * held)
            _check_bytes(f"delete-set slice of entry {position}", deletes, MERKLE_HASH_BYTES * held)

    def _write(self, writer: Writer) -> None:
        _write_ascending(writer, tuple(row[0] for row in self.wants))
        clients = _Clients([row[1] for row in self.wants])
        clients.write_table(writer)
        for _, state_vector, check, deletes in self.wants:
            clients.write(writer, state_vector)
            writer.raw(check)
            writer.raw(deletes)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        positions = _read_ascending(reader, MAX_U32)
        table = _Clients.read_table(reader)
        wants = []
        for position in positions:
            state_vector = _Clients.read(reader, table)
            held = bool(state_vector)
            check = reader.take(ID_CHECK_BYTES * held)
            wants.append((position, state_vector, check, reader.take(MERKLE_HASH_BYTES * held)))
        return cls(tuple(wants))


_HAS_ID, _HAS_DIFF, _APART, _ASKS, _ASKS_SAME = 1, 2, 4, 8, 16
SAME_STATE_VECTOR = b""
"""In an ``Answers`` entry's ask: "my state vector is the one you sent"."""


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
        for doc_id, diff, apart, ask in _check_rows("answers", self.answers, 4):
            if doc_id != "":
                _check_doc_id(doc_id)
            _check_bytes("diff", diff)
            if not isinstance(apart, bool):
                _refuse(f"apart must be a bool, got {type(apart).__name__}")
            if apart and diff:
                _refuse("a diff sent apart carries no bytes here")
            if ask is not None:
                _check_bytes("ask", ask)
                assert isinstance(ask, bytes)
                if ask:
                    _sv_pairs(ask)

    def _write(self, writer: Writer) -> None:
        clients = _Clients([ask for *_, ask in self.answers if ask])
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
        table = _Clients.read_table(reader)
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
                ask = SAME_STATE_VECTOR if flags & _ASKS_SAME else _Clients.read(reader, table)
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
        for diff in _check_tuple("diffs", self.diffs):
            _check_bytes("diff", diff)

    def _write(self, writer: Writer) -> None:
        writer.varuint(len(self.diffs))
        for diff in self.diffs:
            writer.blob(diff)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(tuple(reader.blob() for _ in range(reader.count(1))))


_DOC_MIN_BYTES = 4  # a doc id is at least "c/k" behind its length byte


def _write_doc_pairs(writer: Writer, docs: tuple[tuple[str, bytes], ...]) -> None:
    writer.varuint(len(docs))
    for doc_id, data in docs:
        writer.text(doc_id)
        writer.blob(data)


def _read_doc_pairs(reader: Reader, value_min_bytes: int) -> tuple[tuple[str, bytes], ...]:
    count = reader.count(_DOC_MIN_BYTES + value_min_bytes)
    return tuple((reader.text(), reader.blob()) for _ in range(count))


@dataclass(frozen=True, slots=True)
class Diffs(Message):
    """Per document, a pycrdt update holding what the peer's state vector lacked."""

    TYPE = 0x25
    docs: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        _check_doc_pairs("update", self.docs)

    def _write(self, writer: Writer) -> None:
        _write_doc_pairs(writer, self.docs)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(_read_doc_pairs(reader, 1))


MESSAGE_TYPES: Final[Mapping[int, type[Message]]] = MappingProxyType(
    {
        kind.TYPE: kind
        for kind in (
            Hello,
            Auth,
            AuthOk,
            Error,
            Records,
            Ack,
            Heartbeat,
            Frontier,
            Clocks,
            MerkleHashes,
            LeafList,
            Wants,
            Answers,
            Fills,
            Diffs,
        )
    }
)
"""Every message class by its type byte."""


# --------------------------------------------------------------------- framing


def encode(message: Message, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """The frame carrying ``message``; refuses a payload over ``max_message_bytes``."""
    if MESSAGE_TYPES.get(getattr(message, "TYPE", -1)) is not type(message):
        raise LocalProtocolError(f"not a wire message: {message!r:.80}", code="unknown_type")
    payload = message.encode_payload()
    if len(payload) > max_message_bytes:
        raise LocalProtocolError(
            f"{type(message).__name__} payload is {len(payload)} bytes, over the limit of"
            f" {max_message_bytes}: send it in smaller batches",
            code="too_large",
        )
    return _HEADER.pack(MAGIC, FRAME_VERSION, message.TYPE, len(payload)) + payload


class FrameDecoder:
    """Turns a byte stream, fed in chunks of any size, into messages.

    Call :meth:`feed` with what arrived, then :meth:`next_message` until it
    returns None. A framing error (bad magic, version, type or length) breaks
    the decoder: the stream cannot be resynchronised, so it raises the same
    error on every later call, and the connection should be closed. A
    ``bad_payload`` error consumes just that frame; the decoder stays usable
    (whether to go on talking to such a peer is the caller's choice).
    """

    def __init__(self, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        if isinstance(max_message_bytes, bool) or not 0 < max_message_bytes <= MAX_U32:
            raise ValueError(f"max_message_bytes must be in 1..{MAX_U32}, not {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._header: tuple[type[Message], int] | None = None
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Add received bytes; refuses a bad header as soon as its bytes are here."""
        self._raise_if_broken()
        self._buffer += data
        self._current_header()

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes are fed."""
        self._raise_if_broken()
        header = self._current_header()
        if header is None or len(self._buffer) < HEADER_BYTES + header[1]:
            return None
        kind, length = header
        with memoryview(self._buffer) as view:
            payload = bytes(view[HEADER_BYTES : HEADER_BYTES + length])
        del self._buffer[: HEADER_BYTES + length]
        self._header = None
        return kind.decode_payload(payload)

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise self._error

    def _current_header(self) -> tuple[type[Message], int] | None:
        if self._header is None and self._buffer:
            try:
                self._header = _parse_header(bytes(self._buffer[:HEADER_BYTES]), self)
            except RemoteProtocolError as exc:
                self._error = exc
                raise
        return self._header


def _parse_header(head: bytes, decoder: FrameDecoder) -> tuple[type[Message], int] | None:
    """The message class and payload length of a frame header, None while incomplete."""
    _check_prefix(head)
    if len(head) < HEADER_BYTES:
        return None
    _, _, kind, length = _HEADER.unpack(head)
    if length > decoder.max_message_bytes:
        raise RemoteProtocolError(
            f"{MESSAGE_TYPES[kind].__name__} frame announces {length} payload bytes, over the"
            f" limit of {decoder.max_message_bytes}",
            code="too_large",
        )
    return MESSAGE_TYPES[kind], length


def _check_prefix(head: bytes) -> None:
    """Refuse the magic, version and type bytes as soon as each has arrived."""
    if not MAGIC.startswith(head[:2]):
        raise RemoteProtocolError(
            f"not a crdtdb frame: starts with {head[:2]!r}, expected {MAGIC!r}", code="bad_frame"
        )
    if len(head) > 2 and head[2] != FRAME_VERSION:
        raise RemoteProtocolError(
            f"peer uses wire frame version {head[2]}, this node speaks {FRAME_VERSION}:"
            " run the same crdtdb release on both regions",
            code="bad_version",
        )
    if len(head) > 3 and head[3] not in MESSAGE_TYPES:
        raise RemoteProtocolError(f"unknown message type 0x{head[3]:02x}", code="unknown_type")


def decode_frame(data: bytes, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """The message in ``data``, which must be exactly one complete frame."""
    decoder = FrameDecoder(max_message_bytes=max_message_bytes)
    decoder.feed(data)
    message = decoder.next_message()
    if message is None:
        raise RemoteProtocolError(
            f"incomplete frame: {len(data)} bytes do not hold the whole message", code="bad_frame"
        )
    if decoder.buffered:
        raise RemoteProtocolError(
            f"{decoder.buffered} bytes after the end of the frame", code="bad_frame"
        )
    return message


# ------------------------------------------------------------------ handshake


def check_version(hello: Hello) -> int:
    """The protocol version to speak with the peer that sent ``hello``, or refuse it."""
    if hello.protocol_version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"region {hello.region!r} speaks protocol version {hello.protocol_version}, this node"
            f" speaks {PROTOCOL_VERSION}: upgrade the older of the two",
            code="bad_version",
        )
    return PROTOCOL_VERSION


def error_message(error: ProtocolError) -> Error:
    """The ``Error`` message telling the peer about ``error``."""
    return Error(error.code, error.message)
