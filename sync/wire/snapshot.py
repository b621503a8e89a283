"""Bootstrap by snapshot (protocol 6): a joining region pulls a file-level copy of a peer's store.

The joining side sends ``SnapshotPull`` on the main lane once the handshake
is done, and again as the bytes arrive (it says how many it holds, which
paces the sender: it keeps at most a window of bytes unacknowledged). The
peer answers on a unidirectional stream of its own: one ``SnapshotOffer``
(the file's size, its SHA-256, the Merkle root its documents' digests make,
and the schema version it was written with), then ``SnapshotChunk`` frames
in order. See :mod:`crdtdb.sync.snapshot` (sending) and
:mod:`crdtdb.sync.bootstrap` (receiving, checking, installing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from .checks import check_bytes, check_int
from .codec import Message, Reader, Writer

__all__ = [
    "COMPRESSIONS",
    "NONE",
    "SNAPSHOT_CHUNK_BYTES",
    "ZLIB",
    "SnapshotChunk",
    "SnapshotOffer",
    "SnapshotPull",
]

SNAPSHOT_CHUNK_BYTES = 1 << 20
"""File bytes per ``SnapshotChunk`` (before compression)."""
NONE, ZLIB = 0, 1
COMPRESSIONS = ("none", "zlib")
"""How a chunk's data is carried: as is, or zlib-compressed (level 1: an SQLite store of
small documents shrinks about 3x, at some 80 MB/s of one core, which a QUIC stream in
Python does not reach)."""


@dataclass(frozen=True, slots=True)
class SnapshotPull(Message):
    """Send me a snapshot of your store (``received`` 0), or: I hold its first ``received``
    bytes (later pulls, which pace the sender)."""

    TYPE = 0x30
    received: int

    def __post_init__(self) -> None:
        check_int("received", self.received, low=0)

    def _write(self, writer: Writer) -> None:
        writer.u64(self.received)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(reader.u64())


@dataclass(frozen=True, slots=True)
class SnapshotOffer(Message):
    """What follows on this stream: ``size`` bytes of an SQLite file with this SHA-256,
    whose documents' digests make Merkle ``root``, written at schema ``schema``; each
    chunk's data compressed as ``compression`` says (``COMPRESSIONS``)."""

    TYPE = 0x31
    size: int
    sha256: bytes
    root: bytes
    schema: int
    compression: int = ZLIB

    def __post_init__(self) -> None:
        check_int("size", self.size)
        check_bytes("sha256", self.sha256, 32)
        check_bytes("root", self.root, 32)
        check_int("schema", self.schema)
        check_int("compression", self.compression, low=0, high=len(COMPRESSIONS) - 1)

    def _write(self, writer: Writer) -> None:
        writer.u64(self.size)
        writer.blob(self.sha256)
        writer.blob(self.root)
        writer.varuint(self.schema)
        writer.varuint(self.compression)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(reader.u64(), reader.blob(), reader.blob(), reader.varuint(), reader.varuint())


@dataclass(frozen=True, slots=True)
class SnapshotChunk(Message):
    """The file's bytes from ``offset`` on (chunks come in order, without gaps), compressed
    as the offer said."""

    TYPE = 0x32
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        check_int("offset", self.offset, low=0)
        check_bytes("data", self.data)

    def _write(self, writer: Writer) -> None:
        writer.u64(self.offset)
        writer.blob(self.data)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(reader.u64(), reader.blob())
