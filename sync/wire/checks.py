"""Field checks run by every message's ``__post_init__``, whoever builds it.

Each refusal is a :class:`~crdtdb.sync.errors.LocalProtocolError`: the caller
asked to send something invalid. When the decoder built the message,
:meth:`.codec.Message.decode_payload` turns it into a
:class:`~crdtdb.sync.errors.RemoteProtocolError`, since then the peer is to
blame. Names and numbers are checked by the core's own rules, so the wire
cannot drift from them: region names and document ids by :mod:`crdtdb.ids`,
records by :meth:`crdtdb.records.UpdateRecord.validated` (the decoder is the
edge where a record from the network is checked, once: see :func:`check_record`),
state vectors by :func:`crdtdb.yjs.decode_state_vector`.
"""

from __future__ import annotations

from typing import Final, NoReturn

from crdtdb.errors import InvalidRecordError
from crdtdb.ids import validate_doc_id, validate_region
from crdtdb.records import UpdateRecord
from crdtdb.yjs import decode_state_vector

from ..errors import LocalProtocolError

__all__ = [
    "MAX_INT63",
    "check_ascending",
    "check_bytes",
    "check_doc_id",
    "check_doc_pairs",
    "check_int",
    "check_record",
    "check_region",
    "check_rows",
    "check_state_vector",
    "check_text",
    "check_tuple",
    "refuse",
]

MAX_INT63: Final = (1 << 63) - 1  # what SQLite INTEGER holds


def refuse(problem: str) -> NoReturn:
    raise LocalProtocolError(problem, code="bad_payload")


def check_int(name: str, value: object, low: int = 1, high: int = MAX_INT63) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        refuse(f"{name} must be an int in {low}..{high}, got {value!r}")


def check_bytes(name: str, value: object, size: int | None = None) -> None:
    if not isinstance(value, bytes):
        refuse(f"{name} must be bytes, got {type(value).__name__}")
    if size is not None and len(value) != size:
        refuse(f"{name} must be {size} bytes, got {len(value)}")


def check_region(name: str, value: object) -> None:
    try:
        validate_region(value)
    except ValueError as exc:
        refuse(f"{name}: {exc}")


def check_doc_id(value: object) -> None:
    try:
        validate_doc_id(value)
    except ValueError as exc:
        refuse(str(exc))


def check_tuple(name: str, value: object) -> tuple[object, ...]:
    if not isinstance(value, tuple):
        refuse(f"{name} must be a tuple, got {type(value).__name__}")
    return value


def check_rows(name: str, value: object, width: int) -> tuple[tuple[object, ...], ...]:
    """``value`` as a tuple of tuples of ``width`` items each."""
    rows = check_tuple(name, value)
    for row in rows:
        if not isinstance(row, tuple) or len(row) != width:
            refuse(f"each item of {name} must be a tuple of {width}, got {row!r:.80}")
    return rows  # type: ignore[return-value]  # each row was checked just above


def check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        refuse(f"{name} must be a str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        refuse(f"{name} is not valid Unicode text: {value!r:.80}")


def check_record(record: object) -> None:
    """Every field of a record, by the rule the store applies to records from elsewhere.

    ``validated()`` remembers that the record passed, so the store's
    ``apply_remote_many`` (the edge for records from an API caller) does not
    check a decoded record again.
    """
    if not isinstance(record, UpdateRecord):
        refuse(f"records must hold UpdateRecord, got {type(record).__name__}")
    try:
        record.validated()
    except InvalidRecordError as exc:
        refuse(str(exc))


def check_doc_pairs(name: str, docs: object, size: int | None = None) -> None:
    for doc_id, data in check_rows(name, docs, 2):
        check_doc_id(doc_id)
        check_bytes(f"{name} of {doc_id}", data, size)


def check_ascending(name: str, values: object, high: int) -> None:
    previous = -1
    for value in check_tuple(name, values):
        check_int(f"each of {name}", value, low=0, high=high)
        assert isinstance(value, int)
        if value <= previous:
            refuse(f"{name} must be strictly ascending, got {value} after {previous}")
        previous = value


def check_state_vector(name: str, value: bytes) -> list[tuple[int, int]]:
    """The (client, clock) pairs of a state vector, refused unless it is one in its
    canonical encoding (as Yrs writes it), so that it re-encodes to the same bytes."""
    try:
        return decode_state_vector(value)
    except ValueError as exc:
        refuse(f"{name} is not a state vector: {exc}")
