"""Log replication and the frontier: ``Records`` (with ``Seal``), ``Certificates``, ``Ack``,
``Heartbeat``, ``Frontier``, ``Clocks``.

A record from the network is checked here, once, when ``Records`` is built
by the decoder (see :func:`.checks.check_record`); the session and the store
take it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from crdtdb.hlc import Hlc
from crdtdb.records import UpdateRecord

from .checks import (
    check_bytes,
    check_int,
    check_record,
    check_region,
    check_rows,
    check_tuple,
    refuse,
)
from .codec import Message, Reader, Writer

__all__ = [
    "CHAIN_HASH_BYTES",
    "Ack",
    "Certificates",
    "Clocks",
    "Frontier",
    "Heartbeat",
    "Records",
    "Seal",
]

_RECORD_MIN_BYTES = 4 + 8 + 2 + 1 + 2 + 1  # doc_id "c/k", hlc, origin, seq, update, kind
CHAIN_HASH_BYTES = 32
"""A chain hash (``Seal.base``) and a key fingerprint (``Seal.key``): SHA-256."""
MAX_SIGNATURE_BYTES = 255
_SEAL_MIN_BYTES = 2 + 1 + 1 + 33 + 33 + 2  # origin, first, last, base, key, signature
MAX_CERTIFICATE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Seal:
    """The origin's signature over its records ``first..last`` (see :mod:`..signing`)."""

    origin: str
    first: int
    last: int
    base: bytes
    """``h(first-1)``: the origin's chain hash before the run."""
    key: bytes
    """SHA-256 fingerprint of the certificate whose key signed."""
    signature: bytes

    def __post_init__(self) -> None:
        check_region("origin", self.origin)
        check_int("first", self.first)
        check_int("last", self.last)
        if self.last < self.first:
            refuse(f"a seal's last seq {self.last} is below its first {self.first}")
        check_bytes("base", self.base, CHAIN_HASH_BYTES)
        check_bytes("key", self.key, CHAIN_HASH_BYTES)
        check_bytes("signature", self.signature)
        if not 0 < len(self.signature) <= MAX_SIGNATURE_BYTES:
            refuse(f"a seal's signature must be 1 to {MAX_SIGNATURE_BYTES} bytes")

    def write(self, writer: Writer) -> None:
        writer.text(self.origin)
        writer.varuint(self.first)
        writer.varuint(self.last)
        writer.blob(self.base)
        writer.blob(self.key)
        writer.blob(self.signature)

    @classmethod
    def read(cls, reader: Reader) -> Seal:
        return cls(
            reader.text(),
            reader.varuint(),
            reader.varuint(),
            reader.blob(),
            reader.blob(),
            reader.blob(),
        )


_FRONTIER_ENTRY_MIN_BYTES = 2 + 1 + 8  # region, seq, hlc


@dataclass(frozen=True, slots=True)
class Records(Message):
    """A batch of log records pushed to the peer (any origins, in seq order per origin),
    and the origins' seals over them (each record in exactly one seal's run; the
    receiver checks that, see :func:`..signing.match_seals`)."""

    TYPE = 0x10
    records: tuple[UpdateRecord, ...]
    seals: tuple[Seal, ...] = ()

    def __post_init__(self) -> None:
        for record in check_tuple("records", self.records):
            check_record(record)
        for seal in check_tuple("seals", self.seals):
            if not isinstance(seal, Seal):
                refuse(f"seals must be Seal, got {type(seal).__name__}")

    def _write(self, writer: Writer) -> None:
        writer.varuint(len(self.records))
        for record in self.records:
            writer.text(record.doc_id)
            writer.u64(record.hlc)
            writer.text(record.origin)
            writer.varuint(record.seq)
            writer.blob(record.update)
            writer.varuint(record.kind)
        writer.varuint(len(self.seals))
        for seal in self.seals:
            seal.write(writer)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        count = reader.count(_RECORD_MIN_BYTES)
        records = tuple(_read_record(reader) for _ in range(count))
        seals = tuple(Seal.read(reader) for _ in range(reader.count(_SEAL_MIN_BYTES)))
        return cls(records, seals)


def _read_record(reader: Reader) -> UpdateRecord:
    """A record as it came: its fields are checked by ``Records.__post_init__``."""
    return UpdateRecord(
        doc_id=reader.text(),
        hlc=int.__new__(Hlc, reader.u64()),  # range checked with the other fields
        origin=reader.text(),
        seq=reader.varuint(),
        update=reader.blob(),
        kind=reader.varuint(),
    )


@dataclass(frozen=True, slots=True)
class Certificates(Message):
    """Region certificates (PEM) the sender's seals are made with, sent before the
    first ``Records`` that need them; the receiver checks each against the cluster CA."""

    TYPE = 0x15
    certificates: tuple[bytes, ...]

    def __post_init__(self) -> None:
        for pem in check_tuple("certificates", self.certificates):
            check_bytes("certificate", pem)
            assert isinstance(pem, bytes)
            if not 0 < len(pem) <= MAX_CERTIFICATE_BYTES:
                refuse(f"a certificate must be 1 to {MAX_CERTIFICATE_BYTES} bytes")

    def _write(self, writer: Writer) -> None:
        writer.varuint(len(self.certificates))
        for pem in self.certificates:
            writer.blob(pem)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        count = reader.count(2)
        return cls(tuple(reader.blob() for _ in range(count)))


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """The highest contiguous seq of ``origin`` the sender now holds (0: none yet)."""

    TYPE = 0x11
    origin: str
    seq: int

    def __post_init__(self) -> None:
        check_region("origin", self.origin)
        check_int("seq", self.seq, low=0)

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
        check_int("hlc", self.hlc)

    def _write(self, writer: Writer) -> None:
        writer.u64(self.hlc)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(Hlc(reader.u64()))


@dataclass(frozen=True, slots=True)
class Frontier(Message):
    """What the sender holds: per origin ``(region, contiguous seq, contiguous hlc)``.

    ``frontier_hlc`` is the sender's own ``C_X`` (the min over origins); 0 in
    any HLC or seq means "nothing yet". One entry per origin.

    ``linked`` names the regions the sender has an established session with
    right now: a region relays an origin's records to it only when the origin
    is not among them (see :mod:`..relay`).
    """

    TYPE = 0x13
    complete: tuple[tuple[str, int, int], ...]
    frontier_hlc: int
    linked: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for region, seq, hlc in check_rows("complete", self.complete, 3):
            check_region("origin", region)
            check_int(f"contiguous seq of {region}", seq, low=0)
            check_int(f"contiguous hlc of {region}", hlc, low=0)
        if len({entry[0] for entry in self.complete}) != len(self.complete):
            refuse("Frontier lists an origin more than once")
        check_int("frontier_hlc", self.frontier_hlc, low=0)
        for region in check_tuple("linked", self.linked):
            check_region("linked region", region)
        if len(set(self.linked)) != len(self.linked):
            refuse("Frontier lists a linked region more than once")

    def _write(self, writer: Writer) -> None:
        writer.varuint(len(self.complete))
        for region, seq, hlc in self.complete:
            writer.text(region)
            writer.varuint(seq)
            writer.u64(hlc)
        writer.u64(self.frontier_hlc)
        writer.varuint(len(self.linked))
        for region in self.linked:
            writer.text(region)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        count = reader.count(_FRONTIER_ENTRY_MIN_BYTES)
        complete = tuple((reader.text(), reader.varuint(), Hlc(reader.u64())) for _ in range(count))
        frontier_hlc = Hlc(reader.u64())
        linked = tuple(reader.text() for _ in range(reader.count(2)))
        return cls(complete, frontier_hlc, linked)


@dataclass(frozen=True, slots=True)
class Clocks(Message):
    """Gossip of ``C_R`` per region R: R holds every update with an HLC at or below it.

    Each value only grows, so receivers keep the maximum per region; the global
    frontier is the minimum over all regions heard of.
    """

    TYPE = 0x14
    regions: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        for region, hlc in check_rows("regions", self.regions, 2):
            check_region("region", region)
            check_int(f"clock of {region}", hlc, low=0)
        if len({entry[0] for entry in self.regions}) != len(self.regions):
            refuse("Clocks lists a region more than once")

    def _write(self, writer: Writer) -> None:
        writer.varuint(len(self.regions))
        for region, hlc in self.regions:
            writer.text(region)
            writer.u64(hlc)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        count = reader.count(2 + 8)
        return cls(tuple((reader.text(), Hlc(reader.u64())) for _ in range(count)))
