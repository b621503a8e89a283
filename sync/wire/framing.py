"""Frames: the 8-byte header around each payload, the message table, encode and decode.

The decoder checks the header as soon as its bytes arrive, so a bad magic,
version, type or length is refused before any of the payload is buffered.
The header version changes only if this frame layout changes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ..errors import LocalProtocolError, RemoteProtocolError
from .antientropy import Answers, Diffs, Fills, LeafList, MerkleHashes, Wants
from .codec import MAX_U32, Message
from .handshake import Auth, AuthOk, Error, Hello
from .records import Ack, Certificates, Clocks, Frontier, Heartbeat, Records
from .snapshot import SnapshotChunk, SnapshotOffer, SnapshotPull

__all__ = [
    "FRAME_VERSION",
    "HEADER_BYTES",
    "MAGIC",
    "MAX_BULK_MESSAGE_BYTES",
    "MAX_MESSAGE_BYTES",
    "MESSAGE_TYPES",
    "FrameDecoder",
    "decode_frame",
    "encode",
]

MAGIC: Final = b"CD"
FRAME_VERSION: Final = 1
HEADER_BYTES: Final = 8
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
MAX_BULK_MESSAGE_BYTES: Final = 256 * 1024 * 1024
"""The largest message on a bulk lane: one document's update or diff."""
_HEADER = struct.Struct(">2sBBI")

MESSAGE_TYPES: Final[Mapping[int, type[Message]]] = MappingProxyType(
    {
        kind.TYPE: kind
        for kind in (
            Hello,
            Auth,
            AuthOk,
            Error,
            Records,
            Certificates,
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
            SnapshotPull,
            SnapshotOffer,
            SnapshotChunk,
        )
    }
)
"""Every message class by its type byte."""


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
