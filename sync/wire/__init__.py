"""The replication wire protocol: versioned, length-prefixed messages, pure encode/decode.

The modules, by concern: :mod:`.codec` (payload fields: varuints, fixed
widths, bytes, text; the ``Message`` base), :mod:`.checks` (field checks),
:mod:`.handshake`, :mod:`.records` (log replication and the frontier),
:mod:`.antientropy` and :mod:`.framing` (headers, ``encode``,
``FrameDecoder``). Import from this package: its names are the public ones.

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
edit from a repair when it checks who writes under which Yjs client id;
version 5 signs records: ``Records`` carries its origins' seals (a hash
chain per origin, its head signed with the origin's certificate key, see
:mod:`..signing`) and ``Certificates`` the certificates they were made
with; version 6 adds bootstrap by snapshot (``SnapshotPull``,
``SnapshotOffer``, ``SnapshotChunk``, see :mod:`.snapshot`). Nodes of
versions 1 to 5 are refused at ``Hello`` with a message naming both versions
and saying to upgrade the older one.

Payload fields:

- ``varuint``: unsigned LEB128 in its minimal form, below 2**64 (counts, seqs);
  the varuint of Yjs state vectors, read and written by :mod:`crdtdb.yjs`.
- ``u32``/``u64``: big-endian, fixed width (Merkle node ids, HLCs).
- ``bytes``: varuint length, then the bytes. ``str``: ``bytes`` holding UTF-8.
- ``hash``: ``bytes`` of exactly 32 (a Merkle node hash or a document digest).
- a tuple: varuint count, then the items. A count the remaining payload
  cannot hold is refused before anything is allocated.

Every field is checked when a message is built, whether by the caller or by
the decoder: region names and document ids as :mod:`crdtdb.ids` says, HLCs
and seqs in 1..2**63-1 (0 is allowed only where it means "nothing yet": the
contiguous seq and HLC of ``Ack`` and ``Frontier``), records as
``UpdateRecord.validated`` says (the decoder is where a record from the
network is checked; the store does not check it again), state vectors as
:func:`crdtdb.yjs.decode_state_vector` reads them. Update and diff bytes are
carried, not parsed: the store checks them when it applies them.

Messages (type byte, name, payload):

====  ============  =========================================================
0x01  Hello         protocol_version varuint, region str, nonce bytes(32)
0x02  Auth          region str, certificate bytes (PEM), signature bytes
0x03  AuthOk        region str
0x04  Error         code str, message str
0x10  Records       count, then per record: doc_id str, hlc u64, origin str,
                    seq varuint, update bytes (non-empty), kind varuint
                    (0 write, 1 repair, 2 unchecked; see crdtdb.records);
                    then count, then per seal: origin str, first varuint,
                    last varuint, base bytes(32), key bytes(32) (certificate
                    SHA-256), signature bytes (ECDSA P-256, DER, <= 255)
0x15  Certificates  count, then per certificate: PEM bytes (<= 64 KiB)
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
0x30  SnapshotPull  received u64 (0: send me a snapshot; else bytes held)
0x31  SnapshotOffer size u64, sha256 bytes(32), root bytes(32), schema varuint,
                    compression varuint (0 none, 1 zlib); first on the
                    sender's snapshot stream
0x32  SnapshotChunk offset u64 (in the file), data bytes (compressed as
                    offered; in order on that stream)
====  ============  =========================================================
"""

from __future__ import annotations

from .antientropy import FANOUTS as FANOUTS
from .antientropy import HASH_BYTES as HASH_BYTES
from .antientropy import ID_CHECK_BYTES as ID_CHECK_BYTES
from .antientropy import ID_HASH_BYTES as ID_HASH_BYTES
from .antientropy import LEAF_ENTRY_BYTES as LEAF_ENTRY_BYTES
from .antientropy import MERKLE_HASH_BYTES as MERKLE_HASH_BYTES
from .antientropy import SAME_STATE_VECTOR as SAME_STATE_VECTOR
from .antientropy import Answers as Answers
from .antientropy import Diffs as Diffs
from .antientropy import Fills as Fills
from .antientropy import LeafList as LeafList
from .antientropy import MerkleHashes as MerkleHashes
from .antientropy import Wants as Wants
from .antientropy import merkle_slice as merkle_slice
from .checks import MAX_INT63 as MAX_INT63
from .codec import MAX_U32 as MAX_U32
from .codec import Message as Message
from .codec import Reader as Reader
from .codec import Writer as Writer
from .framing import FRAME_VERSION as FRAME_VERSION
from .framing import HEADER_BYTES as HEADER_BYTES
from .framing import MAGIC as MAGIC
from .framing import MAX_BULK_MESSAGE_BYTES as MAX_BULK_MESSAGE_BYTES
from .framing import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from .framing import MESSAGE_TYPES as MESSAGE_TYPES
from .framing import FrameDecoder as FrameDecoder
from .framing import decode_frame as decode_frame
from .framing import encode as encode
from .handshake import NONCE_BYTES as NONCE_BYTES
from .handshake import PROTOCOL_VERSION as PROTOCOL_VERSION
from .handshake import Auth as Auth
from .handshake import AuthOk as AuthOk
from .handshake import Error as Error
from .handshake import Hello as Hello
from .handshake import check_version as check_version
from .handshake import error_message as error_message
from .records import CHAIN_HASH_BYTES as CHAIN_HASH_BYTES
from .records import Ack as Ack
from .records import Certificates as Certificates
from .records import Clocks as Clocks
from .records import Frontier as Frontier
from .records import Heartbeat as Heartbeat
from .records import Records as Records
from .records import Seal as Seal
from .snapshot import COMPRESSIONS as COMPRESSIONS
from .snapshot import SNAPSHOT_CHUNK_BYTES as SNAPSHOT_CHUNK_BYTES
from .snapshot import SnapshotChunk as SnapshotChunk
from .snapshot import SnapshotOffer as SnapshotOffer
from .snapshot import SnapshotPull as SnapshotPull

__all__ = [
    "CHAIN_HASH_BYTES",
    "COMPRESSIONS",
    "FANOUTS",
    "FRAME_VERSION",
    "HASH_BYTES",
    "HEADER_BYTES",
    "ID_CHECK_BYTES",
    "ID_HASH_BYTES",
    "LEAF_ENTRY_BYTES",
    "MAGIC",
    "MAX_BULK_MESSAGE_BYTES",
    "MAX_MESSAGE_BYTES",
    "MERKLE_HASH_BYTES",
    "MESSAGE_TYPES",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "SAME_STATE_VECTOR",
    "SNAPSHOT_CHUNK_BYTES",
    "Ack",
    "Answers",
    "Auth",
    "AuthOk",
    "Certificates",
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
    "Seal",
    "SnapshotChunk",
    "SnapshotOffer",
    "SnapshotPull",
    "Wants",
    "check_version",
    "decode_frame",
    "encode",
    "error_message",
    "merkle_slice",
]
