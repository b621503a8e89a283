"""The handshake and refusals: ``Hello``, ``Auth``, ``AuthOk``, ``Error``; version checks.

``Hello``'s layout is frozen across protocol versions (it is how two nodes
learn which version the other speaks); everything after it is versioned by
``Hello.protocol_version`` (see :func:`check_version`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Self

from ..errors import ProtocolError, RemoteProtocolError
from .checks import check_bytes, check_int, check_region, check_text, refuse
from .codec import MAX_U32, Message, Reader, Writer

__all__ = [
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "Auth",
    "AuthOk",
    "Error",
    "Hello",
    "check_version",
    "error_message",
]

PROTOCOL_VERSION: Final = 6
NONCE_BYTES: Final = 32
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)


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
        check_int("protocol_version", self.protocol_version, high=MAX_U32)
        check_region("region", self.region)
        check_bytes("nonce", self.nonce, NONCE_BYTES)

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
        check_region("region", self.region)
        check_bytes("certificate", self.certificate)
        check_bytes("signature", self.signature)
        if not self.certificate or not self.signature:
            refuse("Auth needs a certificate and a signature, got an empty one")

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
        check_region("region", self.region)

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
            refuse(f"error code must be 1-64 of a-z, 0-9, '_', got {self.code!r:.80}")
        check_text("message", self.message)

    def _write(self, writer: Writer) -> None:
        writer.text(self.code)
        writer.text(self.message)

    @classmethod
    def _read(cls, reader: Reader) -> Self:
        return cls(reader.text(), reader.text())


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
