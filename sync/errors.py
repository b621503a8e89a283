"""The error tree of replication, split by who is to blame (as h11 splits it).

- :class:`RemoteProtocolError`: the peer sent something we refuse (bad
  framing, an unknown message type, a malformed field, a message out of
  turn). Nothing it sent in that message was applied; close the connection
  unless the error says the stream is still usable.
- :class:`LocalProtocolError`: we were asked to send something invalid (a
  bad region name, an oversized batch). It is a bug or a misuse on this
  side; nothing was sent.

Both carry a short stable ``code`` (``"bad_frame"``, ``"too_large"``, ...) that
goes into the wire ``Error`` message, and an ``error_code`` int for transports
that close with a number (a QUIC application error code: 0 stays "no error").
They also slot into the core tree: a remote error is a
:class:`crdtdb.errors.RemoteDataError`, a local one a
:class:`crdtdb.errors.UsageError`, so ``except CrdtdbError`` catches them too.

:class:`StartupError` is the odd one out: not a message but the machine. A
daemon cannot start as configured (its data directory is already served by
another daemon, its port is taken); nothing was changed, and the message says
what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from crdtdb.errors import CrdtdbError, RemoteDataError, UsageError

__all__ = [
    "ERROR_CODES",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "StartupError",
]

ERROR_CODES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "protocol": 1,  # anything without a more specific code
        "bad_frame": 2,  # wrong magic, or bytes that are not a frame
        "bad_version": 3,  # a frame or protocol version we do not speak
        "unknown_type": 4,  # a message type byte we do not know
        "too_large": 5,  # a payload over the size limit
        "bad_payload": 6,  # a payload that does not decode to a valid message
        "unexpected_message": 7,  # a valid message, out of turn
        "bad_region": 8,  # a region that is not the one expected here
        "auth_failed": 9,  # the peer's proof of identity was refused
        "too_many_streams": 10,  # more bulk lanes (QUIC streams) than the protocol allows
        "not_a_member": 11,  # a CA-signed region that no member added (crdtdb.membership)
        "removed": 12,  # a region removed from the cluster
        "retired_certificate": 13,  # a certificate a newer one of its region replaced
    }
)
"""Stable numbers of the protocol error codes. Never renumber; only append."""


class ProtocolError(CrdtdbError):
    """A replication message was refused. ``code`` says why, ``str(exc)`` says what to do."""

    code: str = "protocol"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    @property
    def error_code(self) -> int:
        """The code as a number for the wire; unknown codes count as the generic one."""
        return ERROR_CODES.get(self.code, ERROR_CODES["protocol"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


class RemoteProtocolError(ProtocolError, RemoteDataError):
    """The peer sent something invalid; what it sent was not applied."""


class LocalProtocolError(ProtocolError, UsageError):
    """We were asked to build or send an invalid message; nothing was sent."""


class StartupError(CrdtdbError):
    """The daemon cannot start here and now (data directory in use, port taken)."""

    code = "startup"
