"""The error tree every crdtdb refusal comes from.

Split by who is to blame (as h11 splits local and remote protocol errors):

- ``UsageError``: the caller passed something wrong (bad id, bad value,
  closed database). Fix the call.
- ``RemoteDataError``: data that came from elsewhere (a peer region, a
  replication record) was refused. Nothing was applied.
- ``StoreError``: the directory on disk is not what was asked for.

Every error carries a short stable ``code`` so the wire protocol and the CLI
can report it without parsing messages, and every message says what to do.
"""

from __future__ import annotations

import reprlib

__all__ = [
    "BootstrappingError",
    "ClientIdCollisionError",
    "ClockSkewError",
    "CrdtdbError",
    "DatabaseClosedError",
    "DocumentTooDeepError",
    "HistoryCompactedError",
    "InvalidDocIdError",
    "InvalidHlcError",
    "InvalidRecordError",
    "InvalidRegionError",
    "InvalidUpdateError",
    "InvalidValueError",
    "NoStoreError",
    "NotAStoreError",
    "RegionLeavingError",
    "RegionMismatchError",
    "RemoteDataError",
    "ReservedCollectionError",
    "SchemaVersionError",
    "StoreError",
    "StoreFullError",
    "StoreIOError",
    "StoreReadOnlyError",
    "TransactionError",
    "UsageError",
    "shown",
]

SHOWN_CHARS = 100
"""How much of a caller's input an error message echoes at most (about)."""


def shown(value: object) -> str:
    """``repr(value)`` for an error message, cut to about :data:`SHOWN_CHARS` characters.

    A message quotes what was wrong so that the caller can find it, but a
    10 MB string passed by mistake must not come back as a 10 MB message.
    """
    if isinstance(value, str | bytes) and len(value) > SHOWN_CHARS:
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:SHOWN_CHARS]!r}... ({len(value)} {unit})"
    text = _SHORT.repr(value)  # bounded work too: a few items, a few levels deep
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}..."


_SHORT = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHORT.maxlevel = 3
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = SHOWN_CHARS


class CrdtdbError(Exception):
    """Base of every error crdtdb raises on purpose."""

    code: str = "error"
    reported: bool = False
    """Already shown to the user (as a JSON log line, say): the CLI prints nothing more."""


class UsageError(CrdtdbError, ValueError):
    """The caller asked for something invalid; nothing was changed."""

    code = "usage"


class InvalidDocIdError(UsageError):
    code = "invalid_doc_id"


class ReservedCollectionError(InvalidDocIdError):
    """A write to a reserved collection (``_cluster``) through the ordinary API."""

    code = "reserved_collection"


class InvalidRegionError(UsageError):
    code = "invalid_region"


class InvalidValueError(UsageError, TypeError):
    code = "invalid_value"


class InvalidHlcError(UsageError):
    code = "invalid_hlc"


class DatabaseClosedError(UsageError):
    code = "closed"


class TransactionError(UsageError):
    code = "transaction"


class HistoryCompactedError(UsageError):
    code = "history_compacted"


class RemoteDataError(CrdtdbError):
    """Data from another region or process was refused; state is unchanged."""

    code = "remote_data"


class InvalidRecordError(RemoteDataError, ValueError):
    code = "invalid_record"


class InvalidUpdateError(RemoteDataError, ValueError):
    code = "invalid_update"


class ClockSkewError(RemoteDataError):
    code = "clock_skew"


class ClientIdCollisionError(RemoteDataError):
    """Two origins wrote under one Yjs client id: one's items would hide the other's."""

    code = "client_id_collision"
    details: tuple[int, str, str, int, str] = (0, "", "", 0, "")
    """(client id, origin of the refused record, origin the id is bound to, seq, doc id)."""


class RegionLeavingError(CrdtdbError):
    """A region that left (or was removed from) the cluster refuses local writes."""

    code = "region_leaving"

    def __init__(self, message: str, region: str) -> None:
        super().__init__(
            f"{message}: it takes no more writes (its last record is final, so that every"
            f" region keeps all it wrote); write through another region; nothing was stored"
        )
        self.region = region


class DocumentTooDeepError(CrdtdbError):
    """A stored document nests too deeply to be read as JSON. Writes through crdtdb stop at
    100 levels; a deeper one was made elsewhere (pycrdt directly, another region's writer).
    It is kept and replicated as it is: only reading it whole is refused."""

    code = "too_deep"


class StoreError(CrdtdbError):
    """The data directory cannot be used as asked."""

    code = "store"


class NotAStoreError(StoreError):
    code = "not_a_store"


class NoStoreError(StoreError):
    """The directory holds no store yet, and no region was named to create one."""

    code = "no_store"


class SchemaVersionError(StoreError):
    code = "schema_version"


class RegionMismatchError(StoreError):
    code = "region_mismatch"


class StoreFullError(StoreError):
    """The disk (or the file system's quota) holding the store is full."""

    code = "store_full"


class StoreReadOnlyError(StoreError):
    """The store's files or directory cannot be written (permissions, a read-only mount)."""

    code = "store_read_only"


class StoreIOError(StoreError):
    """The operating system failed a read or write of the store (a vanished directory,
    a failing disk)."""

    code = "store_io"


class BootstrappingError(StoreError):
    """The region's daemon is bootstrapping the directory from a peer's snapshot."""

    code = "bootstrapping"
