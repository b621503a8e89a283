"""Reading Yjs v1 update bytes: which clients an update writes, and what it waits for.

pycrdt applies updates but says nothing about one that it holds back because
the items it builds on have not arrived. The store needs two facts that only
the bytes hold:

- **what a stuck update waits for**, so that it is retried when that arrives
  and not on every change of the document (retrying every stuck update after
  every record made delivery out of causal order cost quadratic time);
- **which Yjs client ids an update writes items under**, so that a client id
  used by two regions is caught (see ``Database`` and the ``clients`` table).

The layout read here is Yjs's update format v1 (lib0 encoding), as Yrs writes
it: a count of client blocks, each ``(struct count, client, first clock)``
followed by its structs, then the delete set. Each struct is a GC range, a
Skip range (a gap the update does not carry) or an item whose info byte says
which of origin, right origin, parent and parent key follow, and whose low
five bits give the kind of content. Item lengths are in Yjs clock units (UTF-16
code units for strings). Only what is needed is decoded; content is skipped.

It also owns the one codec of lib0's unsigned varints (LEB128) and of state
vectors (a count, then ``(client, clock)`` varuint pairs) that the Merkle
digests and the replication wire share. Two readers of one encoding, on
purpose: :func:`read_varuint` takes a varuint as Yrs reads it (any length),
for walking updates that Yrs may accept; :func:`read_canonical_varuint`
refuses all but the shortest form below 2**64, for bytes from a peer that
must mean one thing and re-encode to themselves.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Collection
from dataclasses import dataclass

__all__ = [
    "MAX_VARUINT",
    "UpdateShape",
    "authors",
    "decode_state_vector",
    "encode_state_vector",
    "read_canonical_varuint",
    "read_pairs",
    "read_varuint",
    "shape",
    "write_varuint",
]

MAX_VARUINT = (1 << 64) - 1
"""The largest varuint :func:`read_canonical_varuint` takes (Yrs's client ids are u64)."""

_GC, _SKIP = 0, 10
_HAS_ORIGIN, _HAS_RIGHT_ORIGIN, _HAS_PARENT_SUB = 0x80, 0x40, 0x20
_XML_ELEMENT, _XML_HOOK = 3, 5  # type refs followed by a name


def read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 at ``pos``: (value, position after it); IndexError if cut short."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def read_pairs(data: bytes, pos: int) -> tuple[list[tuple[int, int]], int]:
    """A count, then that many pairs of varuints (a state vector, say)."""
    count, pos = read_varuint(data, pos)
    pairs = []
    for _ in range(count):
        first, pos = read_varuint(data, pos)
        second, pos = read_varuint(data, pos)
        pairs.append((first, second))
    return pairs, pos


def read_canonical_varuint(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 at ``pos`` in its shortest form, at most MAX_VARUINT.

    Returns (value, position after it); ValueError if it is cut short, longer
    than 10 bytes, padded with a zero byte, or above 2**64-1.
    """
    value = shift = 0
    try:
        while (byte := data[pos]) >= 0x80:
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if shift == 70:  # 10 LEB128 bytes hold 64 bits
                raise ValueError("varuint longer than 10 bytes")
    except IndexError:
        raise ValueError("truncated varuint") from None
    if not shift:
        return byte, pos + 1
    if not byte:
        raise ValueError("varuint not in its shortest form")
    value |= byte << shift
    if value > MAX_VARUINT:
        raise ValueError("varuint above 2**64-1")
    return value, pos + 1


def write_varuint(out: bytearray, value: int) -> None:
    """Append ``value`` (a non-negative int) as an unsigned LEB128 in its shortest form."""
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def decode_state_vector(data: bytes) -> list[tuple[int, int]]:
    """The (client, clock) pairs of a state vector in Yjs's v1 encoding, in its order.

    ValueError unless ``data`` is exactly one state vector with every number in
    its shortest form, as Yrs writes it; so :func:`encode_state_vector` of the
    pairs gives ``data`` back. A count the bytes cannot hold is refused before
    anything is read (a pair takes at least 2 bytes).
    """
    count, pos = read_canonical_varuint(data, 0)
    if count * 2 > len(data) - pos:
        raise ValueError(f"claims {count} clients, {len(data) - pos} bytes left")
    pairs = []
    for _ in range(count):
        client, pos = read_canonical_varuint(data, pos)
        clock, pos = read_canonical_varuint(data, pos)
        pairs.append((client, clock))
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} trailing bytes after the state vector")
    return pairs


def encode_state_vector(pairs: Collection[tuple[int, int]]) -> bytes:
    """The state vector holding ``pairs`` (client, clock), in their order, in Yjs's v1 encoding."""
    out = bytearray()
    write_varuint(out, len(pairs))
    for client, clock in pairs:
        write_varuint(out, client)
        write_varuint(out, clock)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class UpdateShape:
    """What an update's structs carry and what they build on."""

    ranges: dict[int, list[tuple[int, int]]]
    """Per client, the ``[start, end)`` clock ranges of the structs it carries (no gaps)."""
    needs: list[tuple[int, int]]
    """(client, clock): the update can be integrated only once that clock of that
    client is held: the items its items point at (origins, parents) and, for each
    run of structs, the clock just before it. Ids the update carries itself are left out."""

    def first_unmet(self, clocks: dict[int, int]) -> tuple[int, int] | None:
        """The first need not covered by ``clocks`` (a state vector: client -> next clock)."""
        for client, clock in self.needs:
            if clocks.get(client, 0) <= clock:
                return client, clock
        return None


def shape(update: bytes) -> UpdateShape:
    """Decode the structs of a v1 update; ValueError if it is not one this reader knows."""
    try:
        return _Reader(update).read()
    except (IndexError, struct.error, UnicodeDecodeError):
        raise ValueError("truncated or malformed Yjs update") from None


class _Reader:
    __slots__ = ("data", "pos", "ranges", "refs")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.ranges: dict[int, list[tuple[int, int]]] = {}
        self.refs: list[tuple[int, int]] = []

    def varuint(self) -> int:
        value, self.pos = read_varuint(self.data, self.pos)
        return value

    def skip_bytes(self) -> bytes:
        size = self.varuint()
        start, self.pos = self.pos, self.pos + size
        if self.pos > len(self.data):
            raise IndexError
        return self.data[start : self.pos]

    def read(self) -> UpdateShape:
        for _ in range(self.varuint()):
            structs, client, clock = self.varuint(), self.varuint(), self.varuint()
            follows_gap = True
            for _ in range(structs):
                info = self.data[self.pos]
                self.pos += 1
                length = self.struct(info)
                if info & 0x1F == _SKIP:
                    follows_gap = True
                else:
                    if follows_gap and clock > 0:
                        self.refs.append((client, clock - 1))
                    follows_gap = False
                    self.add_range(client, clock, clock + length)
                clock += length
        refs = [ref for ref in self.refs if not self.carries(*ref)]
        return UpdateShape(self.ranges, refs)

    def add_range(self, client: int, start: int, end: int) -> None:
        ranges = self.ranges.setdefault(client, [])
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))

    def carries(self, client: int, clock: int) -> bool:
        return any(start <= clock < end for start, end in self.ranges.get(client, ()))

    def struct(self, info: int) -> int:
        """Read one struct after its info byte; return its length in clock units."""
        kind = info & 0x1F
        if kind in (_GC, _SKIP):
            return self.varuint()
        if info & _HAS_ORIGIN:
            self.refs.append((self.varuint(), self.varuint()))
        if info & _HAS_RIGHT_ORIGIN:
            self.refs.append((self.varuint(), self.varuint()))
        if not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN):
            if self.varuint() == 1:
                self.skip_bytes()  # a root type, by name
            else:
                self.refs.append((self.varuint(), self.varuint()))
            if info & _HAS_PARENT_SUB:
                self.skip_bytes()
        return self.content(kind)

    def content(self, kind: int) -> int:
        if kind == 1:  # deleted
            return self.varuint()
        if kind == 2:  # JSON strings
            count = self.varuint()
            for _ in range(count):
                self.skip_bytes()
            return count
        if kind == 4:  # string: its length in UTF-16 code units
            return len(self.skip_bytes().decode("utf-8").encode("utf-16-le")) // 2
        if kind in (3, 5):  # binary, embed
            self.skip_bytes()
        elif kind == 6:  # format: key, value
            self.skip_bytes()
            self.skip_bytes()
        elif kind == 7:  # a shared type
            if self.varuint() in (_XML_ELEMENT, _XML_HOOK):
                self.skip_bytes()
        elif kind == 8:  # Any values
            count = self.varuint()
            for _ in range(count):
                self.any()
            return count
        elif kind == 9:  # a subdocument: guid, options
            self.skip_bytes()
            self.any()
        else:
            raise ValueError(f"unknown Yjs content kind {kind}")
        return 1

    def any(self) -> None:
        """Skip one lib0 ``Any`` value."""
        tag = self.data[self.pos]
        self.pos += 1
        if tag in (127, 126, 121, 120):  # undefined, null, false, true
            return
        if tag == 125:  # signed varint
            while self.data[self.pos] & 0x80:
                self.pos += 1
            self.pos += 1
        elif tag == 124:
            self.pos += 4
        elif tag in (123, 122):
            self.pos += 8
        elif tag in (119, 116):  # string, bytes
            self.skip_bytes()
        elif tag == 118:  # object
            for _ in range(self.varuint()):
                self.skip_bytes()
                self.any()
        elif tag == 117:  # array
            for _ in range(self.varuint()):
                self.any()
        else:
            raise ValueError(f"unknown lib0 Any tag {tag}")
        if self.pos > len(self.data):
            raise IndexError


def authors(update: bytes) -> list[int]:
    """The client ids an update carries items of, in its order.

    An edit made in one process carries items of that process's client only,
    one block, read without walking the structs. For more blocks (a merged
    update, a repair) the structs are walked; a content kind this reader does
    not know stops the walk, and only the clients read so far are returned.
    """
    try:
        blocks, pos = read_varuint(update, 0)
        if blocks == 1:
            _, pos = read_varuint(update, pos)
            return [read_varuint(update, pos)[0]]
    except IndexError:  # cut short: no item to bind; applying it refuses it, typed
        return []
    if blocks == 0:
        return []
    reader = _Reader(update)
    with contextlib.suppress(ValueError, IndexError, struct.error, UnicodeDecodeError):
        reader.read()
    return list(reader.ranges)
