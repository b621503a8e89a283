"""The payload codec: fields in and out of bytes, and the base of every message.

:class:`Writer` and :class:`Reader` hold the field encodings listed in the
package docstring. Varuints are lib0's unsigned LEB128, the encoding of Yjs
state vectors, so they are :mod:`crdtdb.yjs`'s: one writer, and its canonical
reader (shortest form, below 2**64), because a value must have one encoding
for decoded messages to re-encode to the bytes they came from.

A :class:`Reader` refuses anything truncated or malformed with a
:class:`~crdtdb.sync.errors.RemoteProtocolError` naming the byte where it saw
the problem; it allocates nothing a count claims before checking that the
rest of the payload can hold it.
"""

from __future__ import annotations

import struct
from typing import ClassVar, Final, NoReturn, Self

from crdtdb.yjs import read_canonical_varuint, write_varuint

from ..errors import LocalProtocolError, RemoteProtocolError

__all__ = ["MAX_U32", "Message", "Reader", "Writer"]

MAX_U32: Final = (1 << 32) - 1
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Writer:
    """Appends payload fields to a buffer (internal; the inverse of :class:`Reader`)."""

    __slots__ = ("_out",)

    def __init__(self) -> None:
        self._out = bytearray()

    def varuint(self, value: int) -> None:
        write_varuint(self._out, value)

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

    def ascending(self, values: tuple[int, ...]) -> None:
        """Strictly ascending ints: count, then the first value and each gap to the next."""
        self.varuint(len(values))
        previous = -1
        for value in values:
            self.varuint(value - previous - 1)
            previous = value

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
        data, pos = self._data, self._pos
        if pos < len(data) and data[pos] < 0x80:  # the common one-byte case
            self._pos = pos + 1
            return data[pos]
        try:
            value, self._pos = read_canonical_varuint(data, pos)
        except ValueError as exc:
            self.fail(str(exc))
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

    def ascending(self, high: int) -> tuple[int, ...]:
        """What :meth:`Writer.ascending` wrote, refused past ``high``."""
        values = []
        previous = -1
        for _ in range(self.count(1)):
            previous += self.varuint() + 1
            if previous > high:
                self.fail(f"value {previous} above {high}")
            values.append(previous)
        return tuple(values)

    def expect_end(self) -> None:
        if self.remaining():
            self.fail(f"{self.remaining()} trailing bytes after the last field")


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
